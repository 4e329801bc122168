"""What every part of the chunk store shares: its state, pins and the one way to call a backend.

The store's paths (put in store.py, fetch, repair and uploads, garbage) are classes over
this one; ChunkStore combines them.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import trio

from gffs.chunks.cache import BlockCache
from gffs.chunks.staging import Staging
from gffs.index import ChunkMap, Index
from gffs.index.records import ChunkRecord
from gffs.placement import Placement
from gffs.placement.policy import STAGING
from gffs_backends.base import Backend, BackendError, BackendFull, BackendUnavailable


def prepared_put(preparer: Backend | None, key: str, stored: bytes) -> object | None:
    """*preparer*'s prepare_put of a chunk (blocking: a worker thread calls it), or None
    without a preparer or when it fails (the put itself will meet and report that)."""
    if preparer is None:
        return None
    try:
        return preparer.prepare_put(key, stored)
    except BackendError:
        return None


class StoreCapacity(NamedTuple):
    """Sums over the backends that answered; *unbounded* of them know no limit."""

    total: int
    free: int
    unbounded: int


@dataclass(slots=True)
class StoredChunk:
    """A chunk whose bytes are safe in the backends, pinned until its commit."""

    digest: bytes
    record: ChunkRecord  # what the index must record if it does not know the chunk
    fresh: bool = False  # this call put the bytes (they are ours to delete if unused)
    short: bool = False  # fewer copies than the policy wants: queue for repair on commit
    staged: bool = False  # its remote copies are made by the upload queue after the commit


class StoreState:
    """The chunk store's state; every backend call goes through :meth:`call`."""

    def __init__(self, index: Index, backends: dict[str, Backend], placement: Placement,
                 cache_bytes: int = 32 << 20, io_threads: int = 4,
                 backend_timeout: float = 60.0, staging: Staging | None = None) -> None:
        self.index = index
        self.chunkmap = ChunkMap(index)
        self.staging = staging
        # the staging area is a location like a backend's, but no configured backend
        # (gc, fsck, backups and rebalance plans work on the configured ones only)
        self.backends = dict(backends, **({STAGING: staging.backend} if staging else {}))
        self.placement = placement
        self.cache = BlockCache(cache_bytes)
        self._pins: Counter[bytes] = Counter()
        self._deleting: dict[bytes, trio.Event] = {}
        self._loading: dict[bytes, trio.Event] = {}
        self._unused: list[StoredChunk] = []
        self._repair_after = b""  # where the next repair round starts in the queue
        self._in_repair: set[bytes] = set()  # chunks the repair or upload queue works on
        # staged copies to delete once their remote copies are durable on record, and
        # whether the upload queue's deleter runs (RepairPath._run_staged_drops)
        self._staged_drops: list[tuple[bytes, str]] = []
        self._staged_deleter = False
        self._staged_drops_wakeup = trio.Event()
        self.repair_wakeup = trio.Event()
        self._limiter = trio.CapacityLimiter(io_threads)
        self.timeout = backend_timeout
        self.health = placement.health

    async def call(self, backend: Backend, op: str, *args):
        """One backend operation, bounded in time, with its outcome recorded in health.

        This deadline is the caller's, over the whole operation; a backend's own
        per-request timeout and retries (gffs_backends.base.with_retry) run inside it."""
        try:
            with trio.fail_after(self.timeout):
                result = await getattr(backend, op)(*args)
        except trio.TooSlowError:
            self.health.failed(backend.name, f"{op} timed out after {self.timeout:.0f} s")
            raise BackendUnavailable(f"{backend.name}: {op} timed out") from None
        except BackendFull as exc:
            self.health.full(backend.name, str(exc))
            raise
        except BackendUnavailable as exc:
            self.health.failed(backend.name, str(exc))
            raise
        self.health.succeeded(backend.name)
        return result

    def pin(self, digests: list[bytes]) -> None:
        """Keep chunks from garbage deletion while something outside a write works on them."""
        for d in digests:
            self._pins[d] += 1

    def pinned(self, digest: bytes) -> bool:
        return digest in self._pins or digest in self._deleting

    @contextmanager
    def deleting(self, digests: list[bytes]) -> Iterator[None]:
        """Mark chunks as being deleted from their backends for the block's duration: a
        writer storing the same bytes meanwhile waits (:meth:`wait_deleted`) and puts
        them again afterwards. The caller checks that none is pinned or marked already."""
        events = {d: trio.Event() for d in digests}
        self._deleting.update(events)
        try:
            yield
        finally:
            for d, ev in events.items():
                del self._deleting[d]
                ev.set()

    async def wait_deleted(self, digest: bytes) -> None:
        """Return once no deletion of *digest* is in flight."""
        while (pending := self._deleting.get(digest)) is not None:
            await pending.wait()

    def unpin(self, digests: list[bytes]) -> None:
        for d in digests:
            self._pins[d] -= 1
            if self._pins[d] <= 0:
                del self._pins[d]
