"""The chunk store's background work: garbage deletion, repair and the upload queue.

A mounted filesystem runs it under its background nursery; anything else holding a
ChunkStore (gffs-admin without a mount) can run the same loops or one pass of them.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable

import trio

from gffs.chunks.store import ChunkStore

log = logging.getLogger("gffs.fs.filesystem")   # the name these messages always had

GARBAGE_INTERVAL = 2.0          # seconds: garbage becomes deletable once its drop is durable
REPAIR_INTERVAL = 5.0           # seconds between passes over the repair queue
UNMOUNT_UPLOAD_WAIT = 120.0     # seconds an unmount spends uploading staged chunks


class StoreLoops:
    """Garbage, repair and upload loops over one chunk store.

    *before_garbage* runs at the start of each garbage pass (the filesystem retries
    its failed purges there, so their chunks are deleted in the same pass).
    """

    def __init__(self, chunks: ChunkStore,
                 before_garbage: Callable[[], Awaitable[None]] | None = None) -> None:
        self.chunks = chunks
        self.before_garbage = before_garbage
        self.garbage_wakeup = trio.Event()

    def wake_garbage(self) -> None:
        """Something lost a reference: run a garbage pass soon."""
        self.garbage_wakeup.set()

    async def collect_garbage(self) -> None:
        """Delete every queued garbage chunk whose drop is durable (one full pass)."""
        while await self.chunks.delete_garbage():
            pass

    def start(self, nursery: trio.Nursery) -> None:
        """Run the three loops in *nursery* until it is cancelled."""
        nursery.start_soon(self.garbage_loop)
        nursery.start_soon(self.repair_loop)
        nursery.start_soon(self.chunks.run_uploads)  # staged chunks -> remote backends

    async def garbage_loop(self) -> None:
        """Delete unreferenced chunks (once their drop is durable), now and on wake-up."""
        while True:
            with trio.move_on_after(GARBAGE_INTERVAL):
                await self.garbage_wakeup.wait()
            self.garbage_wakeup = trio.Event()
            try:
                if self.before_garbage is not None:
                    await self.before_garbage()
                await self.collect_garbage()
            except Exception:
                log.exception("garbage deletion failed; will retry")
            await trio.sleep(0.2)

    async def repair_loop(self) -> None:
        """Bring under-replicated chunks back to their copy count, now and then."""
        while True:
            with trio.move_on_after(REPAIR_INTERVAL):
                await self.chunks.repair_wakeup.wait()
            self.chunks.repair_wakeup = trio.Event()
            try:
                repaired, pending = await self.chunks.repair()
                if repaired:
                    log.info("repaired %d chunks, %d still waiting", repaired, pending)
            except Exception:
                log.exception("repair failed; will retry")
            await trio.sleep(1.0)

    async def drain(self) -> None:
        """Unmount: upload what is staged (bounded in time)."""
        await self.chunks.drain_uploads(UNMOUNT_UPLOAD_WAIT)
