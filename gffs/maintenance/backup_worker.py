"""The full pass of an index backup runs in a worker process.

The full pass (backup_snapshot.snapshot_copy: a compact copy of the whole index,
then the cut of every table) reads every page of the live index and of the copy:
in the daemon that was the daemon's peak RSS at a million files (966 MB, twice the
435 MB data.mdb). Here a worker (``python -m gffs.maintenance.backup_worker``,
machinery in index_worker.py) opens the live index read-only, makes the copy and
cuts it; each piece's plaintext (unless every target holds it already) goes to a
spool file the daemon passed down, and the worker tells the daemon each piece as
it closes, so the daemon encodes and uploads while the cut goes on. The pipe is
the back-pressure: a worker ahead of the uploads blocks on its next message.

The daemon keeps what needs its state: the change tracker's hand-off (the changes
are taken before the worker starts, so the copy holds at least that state), the
encoding of pieces (keys), the uploads and the manifest. A worker that dies is a
:class:`BackupFailed` of this backup, which gives the changes back like any other
failed backup; the incremental pass (snapshot_changes) stays in the daemon, since
it reads only around what changed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from gffs.maintenance import backup_format as fmt
from gffs.maintenance.index_worker import IndexWorker, WorkerFailed, serve


class BackupFailed(WorkerFailed):
    """The backup's worker process failed or died: this backup has no result."""


def _serve(setup: dict, receive: Callable[[], Any], send: Callable[[Any], None]) -> None:
    from gffs.index import Index
    from gffs.maintenance.backup_snapshot import snapshot_copy

    fmt.TARGET_PIECE, fmt.MAX_PIECE = setup["rule"]     # the daemon's: its cuts must match
    index = Index(Path(setup["index"]), readonly=True)
    everywhere: frozenset[str] = setup["everywhere"]
    spool, at = setup["spool_fd"], 0

    def emit(table: str, sha: str, size: int, plain: Callable[[], bytes]) -> None:
        nonlocal at
        if sha in everywhere:
            send(("piece", (table, sha, size, None)))
            return
        data = plain()
        os.pwrite(spool, data, at)
        send(("piece", (table, sha, size, at)))
        at += len(data)

    cache = setup["cache"]
    info, pieces = snapshot_copy(index, Path(setup["workdir"]), emit,
                                 Path(cache) if cache else None)
    send(("done", (info, pieces)))


def worker_main() -> int:
    """``python -m gffs.maintenance.backup_worker``: one full pass, then exit."""
    return serve(_serve)


class FullPass(IndexWorker):
    """The daemon's handle: ``async with FullPass(...) as w: async for piece in w.pieces()``."""

    command = [sys.executable, "-m", "gffs.maintenance.backup_worker"]  # (tests replace it)
    failure = BackupFailed
    what = "the index backup's worker process"
    consequence = "this backup has no result; the next one is a full pass again"

    def __init__(self, index_dir: Path, workdir: Path, cache: Path | None,
                 everywhere: frozenset[str], spool_fd: int, env: Any = None) -> None:
        super().__init__({"index": str(index_dir), "workdir": str(workdir),
                          "cache": str(cache) if cache else None, "everywhere": everywhere,
                          "spool_fd": spool_fd,
                          "rule": (fmt.TARGET_PIECE, fmt.MAX_PIECE)}, pass_fds=(spool_fd,), env=env)
        self.result: tuple[dict[str, Any], dict[str, list]] | None = None

    async def pieces(self) -> AsyncIterator[tuple[str, str, int, int | None]]:
        """Each piece as the worker cuts it: (table, sha256, size, spool offset or None when
        every target holds it); then :attr:`result` is (manifest info, the pieces cut)."""
        while True:
            kind, payload = await self.receive()
            if kind == "done":
                self.result = payload
                return
            yield payload


if __name__ == "__main__":
    sys.exit(worker_main())
