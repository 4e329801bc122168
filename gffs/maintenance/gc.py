"""gc: reclaim what nothing references, never what may still be in flight.

Four kinds of leftovers: chunks in the garbage queue (refcount reached 0),
objects on a backend that no index row names (a crash between put and commit),
steps of interrupted moves (intent rows), and image facts / thumbnails of
contents no file has any more. Backend objects younger than *min_age* are kept:
a put may be in flight in a process we cannot see (JuiceFS uses the same rule).
"""

from __future__ import annotations

import time

import trio

from gffs.chunks.moves import ChunkMover
from gffs.index.images import ImageIndex
from gffs.maintenance.jobs import job
from gffs.maintenance.progress import Progress
from gffs.store import Store
from gffs_backends.base import BackendError

GC_MIN_AGE = 3600.0
SWEEP_BATCH = 500


@job("gc")
async def gc(store: Store, args: dict, progress: Progress) -> dict:
    """args: min_age (seconds, default one hour)."""
    min_age = float(args.get("min_age", GC_MIN_AGE))
    progress.begin("gc: garbage queue", unit="chunks")
    queued = 0
    while n := await store.chunks.delete_garbage():
        queued += n
        progress.advance(items=n)
    settled = await ChunkMover(store.chunks).settle()
    unreferenced, failed = await _sweep_backends(store, time.time() - min_age, progress)
    for backend in store.backends.values():
        if backend.is_local:   # only local disks keep temp files of a put that died
            await trio.to_thread.run_sync(backend.remove_stale_temps, min_age)
    images = _drop_dead_image_rows(store)
    await store.chunks.sync()
    return {"garbage_deleted": queued, "unreferenced_deleted": unreferenced,
            "moves_settled": settled, "image_rows_dropped": images,
            "backends_failed": failed, "exit_code": 1 if failed else 0}


async def _sweep_backends(store: Store, cutoff: float, progress: Progress) -> tuple[int, list[str]]:
    deleted, failed = 0, []
    release = store.index.releaser()    # each listed object is a lookup in the chunk table
    for backend in store.backends.values():
        progress.begin(f"gc: unreferenced objects on {backend.name}", unit="objects")
        batch: list[bytes] = []
        try:
            async for info in backend.list():
                progress.advance(items=1)
                if info.mtime > cutoff:
                    continue
                try:
                    digest = bytes.fromhex(info.key)
                except ValueError:
                    continue
                if len(digest) != 32:
                    continue
                batch.append(digest)
                if len(batch) >= SWEEP_BATCH:
                    deleted += await store.chunks.delete_unrecorded(backend, batch)
                    release(len(batch))
                    batch = []
            deleted += await store.chunks.delete_unrecorded(backend, batch)
        except BackendError as exc:
            progress.note(f"gc: {backend.name} skipped: {exc}")
            failed.append(backend.name)
    return deleted, failed


def _drop_dead_image_rows(store: Store) -> int:
    """Facts and thumbnails whose content no inode has any more (their chunks unref'd)."""
    with store.index.write() as txn:
        return ImageIndex(store.index).drop_unused(txn)
