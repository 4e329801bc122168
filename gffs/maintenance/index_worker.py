"""Full scans of the index run in a worker process that opens the index read-only.

At a million files the index (data.mdb) is over 400 MB: a scan in the daemon faults
every page of it into the daemon's own mapping, so its RSS (and its peak, VmHWM)
grows by the size of the index, and the Python structures a scan builds add their
heap and garbage-collection pauses beside the FUSE requests. A worker process
(``python -m gffs.maintenance.<module>``, a fresh interpreter: the trio daemon is
never forked) keeps the mapped pages, the heap and its collections out of the
daemon. LMDB allows readers in other processes; each read transaction of the worker
sees the committed state.

This module is the machinery every such worker shares (fsck_worker.py,
backup_worker.py, plan_worker.py): length-prefixed pickles on the worker's
stdin/stdout (the worker's own fd 1 is pointed at stderr, so a stray print cannot
corrupt the stream), the daemon's handle that starts the process and kills it when
the work is done, cancelled (Ctrl-C, a dropped control connection) or failed, and
:class:`WorkerFailed` for a worker that died or raised: a failure of that one job,
never of the daemon.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import traceback
from typing import IO, Any, Callable, Sequence

import trio

HEADER = struct.Struct("<Q")
NICE = 10       # a worker's CPU priority below the daemon's: FUSE requests are served first


class WorkerFailed(RuntimeError):
    """The worker process failed or died: the job it served has no result."""


# the worker process ---------------------------------------------------------------------
class Ticker:
    """Counts rows a worker scanned; every few thousand, hands the count to *flush_to*
    (one progress message per batch, not per row)."""

    def __init__(self, flush_to: Callable[[int], None], every: int = 4096) -> None:
        self.flush_to = flush_to
        self.every = every
        self.pending = 0

    def __call__(self, items: int = 1) -> None:
        self.pending += items
        if self.pending >= self.every:
            self.flush()

    def flush(self) -> None:
        n, self.pending = self.pending, 0
        if n:
            self.flush_to(n)


def frame(obj: Any) -> bytes:
    """One message as it travels either way: its length, then its pickle."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


def write(out: IO[bytes], obj: Any) -> None:
    out.write(frame(obj))
    out.flush()


def read(inp: IO[bytes]) -> Any:
    head = inp.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    (n,) = HEADER.unpack(head)
    return pickle.loads(inp.read(n))


def serve(main: Callable[[dict, Callable[[], Any], Callable[[Any], None]], None]) -> int:
    """A worker's ``__main__``: read the setup, run ``main(setup, receive, send)``.

    An exception in *main* is sent to the daemon as ``("error", traceback)``.
    """
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)      # print() goes to stderr, never into the message stream
    os.nice(NICE)      # on a busy machine a scan waits, not the stat beside it
    inp = sys.stdin.buffer
    setup = read(inp)
    if setup is None:
        return 0
    try:
        main(setup, lambda: read(inp), lambda obj: write(out, obj))
    except Exception:  # noqa: BLE001 (reported to the daemon, which fails the job)
        write(out, ("error", traceback.format_exc()))
        return 1
    return 0


# the daemon side --------------------------------------------------------------------------
class IndexWorker:
    """The daemon's handle on one worker process: ``async with``, then :meth:`send` and
    :meth:`receive`. Subclasses name the ``command``, what the worker does (``what``)
    and what its failure means (``consequence``)."""

    command: list[str] = []
    failure: type[WorkerFailed] = WorkerFailed
    what = "the index worker"
    consequence = "the job has no result"

    def __init__(self, setup: Any, pass_fds: Sequence[int] = (), env: Any = None) -> None:
        """*env*: the daemon's LMDB environment of the index the worker reads, whose reader
        table is cleared of the worker's slot if it was killed inside a read transaction
        (a stale slot would stop LMDB from reusing pages, and data.mdb would grow)."""
        self.setup = setup
        self.pass_fds = tuple(pass_fds)
        self.env = env
        self.proc: trio.Process | None = None
        self._buf = bytearray()

    async def __aenter__(self) -> "IndexWorker":
        self.proc = await trio.lowlevel.open_process(
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            pass_fds=self.pass_fds)
        await self.send(self.setup)
        return self

    async def __aexit__(self, *exc: object) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()      # done, cancelled or failed: the worker has nothing to finish
            await proc.wait()
            if self.env is not None:
                self.env.reader_check()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    await stream.aclose()

    async def send(self, obj: Any) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        try:
            await self.proc.stdin.send_all(frame(obj))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise self.failure(await self._death()) from None

    async def _receive_exactly(self, n: int) -> bytes | None:
        assert self.proc is not None and self.proc.stdout is not None
        while len(self._buf) < n:
            chunk = await self.proc.stdout.receive_some(max(1 << 16, n - len(self._buf)))
            if not chunk:
                return None
            self._buf += chunk
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    async def receive(self) -> tuple[str, Any]:
        """The worker's next ``(kind, payload)``; its ``("error", ...)`` is raised."""
        head = await self._receive_exactly(HEADER.size)
        body = None if head is None else await self._receive_exactly(HEADER.unpack(head)[0])
        if body is None:
            raise self.failure(await self._death())
        if len(body) < 1 << 16:
            kind, payload = pickle.loads(body)
        else:           # a big result: off the loop
            kind, payload = await trio.to_thread.run_sync(pickle.loads, body)
        if kind == "error":
            raise self.failure(f"{self.what} failed:\n{payload}")
        return kind, payload

    async def _death(self) -> str:
        assert self.proc is not None
        code = await self.proc.wait()
        return f"{self.what} exited (code {code}) before it finished: {self.consequence}"
