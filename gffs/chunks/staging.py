"""The staging area: a chunk bound for a remote backend waits on local disk for its upload.

Without it, close() of a file stored on S3 waits for every chunk's PUT, one file
after the other as ``cp`` goes. With it, a chunk whose policy names remote
backends only is written to ``<data_dir>/staging`` (a local backend, fsynced like
any other) and recorded there: the staged copy is a real location of the chunk
in the index, so reads, a kill -9 and a power loss (after fsync or the 5 s sync)
find it. The chunk is queued in ``repair`` in the same transaction, and the upload
queue (ChunkStore.run_uploads) copies it to the remote backends in parallel:
copy -> record the remote location -> drop the staged location -> delete the
staged file. A chunk whose policy also names a local backend needs no staged copy:
the local copy is written at once and the remote ones are made the same way.

The area is bounded: bytes waiting for an upload (staged or not) are counted, and
a chunk that does not fit is written to its remote backends before close() returns
(as without staging), so a full area slows writers down to the network's speed and
never fails them.
"""

from __future__ import annotations

from pathlib import Path

import trio

from gffs.placement.policy import STAGING
from gffs_backends.local import LocalBackend


class Staging:
    """Accounting of chunks waiting for their remote copies, and the upload queue."""

    def __init__(self, path: Path, limit_bytes: int) -> None:
        self.backend = LocalBackend(STAGING, path)
        self.limit = limit_bytes
        self.used = 0
        self._waiting: dict[bytes, tuple[int, str | None]] = {}  # digest -> (bytes, flow)
        self._ready: dict[bytes, str | None] = {}    # committed: upload them now
        self._wakeup = trio.Event()

    def reserve(self, digest: bytes, size: int, flow: str | None) -> bool:
        """Count *size* bytes for a chunk about to wait for its upload; False when full."""
        if digest in self._waiting:
            return True
        if self.used + size > self.limit and (self.used or not self.limit):
            return False
        self._waiting[digest] = (size, flow)
        self.used += size
        return True

    def waiting(self, digest: bytes) -> bool:
        return digest in self._waiting

    def ready(self, digest: bytes) -> None:
        """The transaction referencing the chunk has committed (or failed): upload now."""
        entry = self._waiting.get(digest)
        if entry is not None:
            self._ready[digest] = entry[1]
            self._wakeup.set()

    def done(self, digest: bytes) -> None:
        """The chunk's remote copies are recorded (or it is gone): its bytes no longer count."""
        entry = self._waiting.pop(digest, None)
        self._ready.pop(digest, None)
        if entry is not None:
            self.used -= entry[0]

    async def take(self) -> list[tuple[bytes, str | None]]:
        """Wait for chunks ready to upload and take them all."""
        while not self._ready:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
        batch, self._ready = list(self._ready.items()), {}
        return batch
