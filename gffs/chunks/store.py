"""The chunk store: content-addressed put/get/delete across the placement's backends.

It owns three in-memory things the index cannot: *pins* (hashes a writer is
about to reference, which garbage deletion must not remove), the set of
deletions in flight, and an LRU cache of decoded blocks. Hashing, compression
and backend I/O all run in worker threads, never on the trio loop.
"""

from __future__ import annotations

import errno
import logging
from collections import Counter, OrderedDict
from dataclasses import dataclass

import trio

from gffs.chunks import codec
from gffs.errors import FsError
from gffs.index import ChunkMap, Index
from gffs.index.records import ChunkRecord, Location
from gffs.placement import Placement
from gffs_backends.base import Backend, BackendError, BackendFull

log = logging.getLogger(__name__)

INLINE_HASH_LIMIT = 64 * 1024  # smaller blocks are cheaper to hash than a thread hop


@dataclass(slots=True)
class StoredChunk:
    """A chunk whose bytes are safe in the backends, pinned until its commit."""

    digest: bytes
    record: ChunkRecord  # what the index must record if it does not know the chunk
    fresh: bool = False  # this call put the bytes (they are ours to delete if unused)


class BlockCache:
    """LRU of decoded block plaintext, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self._data: OrderedDict[bytes, bytes | memoryview] = OrderedDict()

    def __contains__(self, key: bytes) -> bool:
        return key in self._data

    def get(self, key: bytes) -> bytes | memoryview | None:
        data = self._data.get(key)
        if data is not None:
            self._data.move_to_end(key)
        return data

    def discard(self, key: bytes) -> None:
        old = self._data.pop(key, None)
        if old is not None:
            self.used -= len(old)

    def put(self, key: bytes, data: bytes | memoryview) -> None:
        if len(data) > self.max_bytes:
            return
        old = self._data.pop(key, None)
        if old is not None:
            self.used -= len(old)
        self._data[key] = data
        self.used += len(data)
        while self.used > self.max_bytes:
            _, evicted = self._data.popitem(last=False)
            self.used -= len(evicted)


class ChunkStore:
    def __init__(self, index: Index, backends: dict[str, Backend], placement: Placement,
                 cache_bytes: int = 32 << 20, io_threads: int = 4) -> None:
        self.index = index
        self.chunkmap = ChunkMap(index)
        self.backends = backends
        self.placement = placement
        self.cache = BlockCache(cache_bytes)
        self._pins: Counter[bytes] = Counter()
        self._deleting: dict[bytes, trio.Event] = {}
        self._loading: dict[bytes, trio.Event] = {}
        self._unused: list[StoredChunk] = []
        self._limiter = trio.CapacityLimiter(io_threads)

    # writing -------------------------------------------------------------------
    async def store(self, data: bytes, try_compress: bool) -> StoredChunk:
        """Make *data* safe in the backends (or find it already stored) and pin it.

        The caller must call :meth:`release` after the transaction that references
        the chunk has committed (or failed).
        """
        if len(data) <= INLINE_HASH_LIMIT:
            digest, codec_id, stored = codec.encode_and_hash(data, try_compress)
        else:
            digest, codec_id, stored = await trio.to_thread.run_sync(
                codec.encode_and_hash, data, try_compress, limiter=self._limiter)
        self._pins[digest] += 1
        try:
            while digest in self._deleting:
                await self._deleting[digest].wait()
            with self.index.read() as txn:
                known = self.chunkmap.known(txn, digest)
            if known is not None:
                return StoredChunk(digest, known)
            record = ChunkRecord(0, len(data), len(stored), codec_id)
            try:
                record.locations = await self._put_everywhere(digest.hex(), stored, len(data))
            except BaseException:
                # cancelled or failed midway: some backend may hold the bytes anyway
                record.locations = [Location(b.name) for b in self.placement.targets(len(data))]
                self._unused.append(StoredChunk(digest, record, fresh=True))
                raise
            self.cache.put(digest, bytes(data))
            return StoredChunk(digest, record, fresh=True)
        except BaseException:
            self.unpin([digest])
            raise

    async def _put_everywhere(self, key: str, stored: bytes, size: int) -> list[Location]:
        targets = self.placement.targets(size)
        results: dict[str, str] = {}
        errors: list[BackendError] = []

        async def put_one(backend: Backend) -> None:
            try:
                results[backend.name] = await backend.put(key, stored)
            except BackendError as exc:
                errors.append(exc)
                log.error("put of chunk %s to backend %s failed: %s", key[:16], backend.name, exc)

        async with trio.open_nursery() as nursery:
            for backend in targets:
                nursery.start_soon(put_one, backend)
        if not results:
            if any(isinstance(e, BackendFull) for e in errors):
                raise FsError(errno.ENOSPC, str(errors[0]))
            raise FsError(errno.EIO, f"no backend accepted chunk {key[:16]}: {errors[0]}")
        return [Location(b.name, results[b.name]) for b in targets if b.name in results]

    def release(self, chunks: list[StoredChunk]) -> None:
        """Unpin chunks after their commit; bytes stored for a commit that failed get deleted.

        A fresh chunk that no index row references once nobody pins it is queued
        and deleted by the next :meth:`delete_garbage` (a full disk must not stay
        full because of a flush that failed).
        """
        self.unpin([sc.digest for sc in chunks])
        self._unused.extend(sc for sc in chunks if sc.fresh and sc.digest not in self._pins)

    def unpin(self, digests: list[bytes]) -> None:
        for d in digests:
            self._pins[d] -= 1
            if self._pins[d] <= 0:
                del self._pins[d]

    # reading -------------------------------------------------------------------
    def cached(self, digest: bytes) -> bool:
        """True when the block is in the cache or already being loaded."""
        return digest in self.cache or digest in self._loading

    async def load(self, digest: bytes) -> bytes | memoryview:
        """Plaintext of a referenced chunk: cache, else the first good copy (verified)."""
        while True:
            data = self.cache.get(digest)
            if data is not None:
                return data
            pending = self._loading.get(digest)
            if pending is None:
                break
            await pending.wait()
        done = self._loading[digest] = trio.Event()
        try:
            data = await self._fetch(digest)
            self.cache.put(digest, data)
            return data
        finally:
            del self._loading[digest]
            done.set()

    async def _fetch(self, digest: bytes) -> bytes | memoryview:
        key = digest.hex()
        with self.index.read() as txn:
            rec = self.chunkmap.known(txn, digest)
        if rec is None:
            log.error("chunk %s is referenced but has no record in the index", key)
            raise FsError(errno.EIO, f"chunk {key[:16]} has no record")
        failures = []
        for loc in rec.locations:
            backend = self.backends.get(loc.backend)
            if backend is None:
                failures.append(f"{loc.backend}: not configured")
                continue
            try:
                stored = await backend.get(key, loc.locator)
                return await trio.to_thread.run_sync(codec.decode, stored, digest,
                                                     limiter=self._limiter)
            except (BackendError, codec.CorruptChunk) as exc:
                failures.append(f"{loc.backend}: {exc}")
                log.error("chunk %s from backend %s unusable: %s", key[:16], loc.backend, exc)
        raise FsError(errno.EIO, f"no good copy of chunk {key[:16]} ({'; '.join(failures)})")

    # deleting -------------------------------------------------------------------
    async def delete_garbage(self, limit: int = 1000) -> int:
        """Delete unreferenced chunks from their backends; return how many went."""
        with self.index.read() as txn:
            rows = [(d, r) for d, r in self.chunkmap.garbage(txn, limit)
                    if d not in self._pins and d not in self._deleting]
            unused, self._unused = self._unused, []
            seen = {d for d, _ in rows}
            for sc in unused:
                if (sc.digest not in self._pins and sc.digest not in self._deleting
                        and sc.digest not in seen and self.chunkmap.known(txn, sc.digest) is None):
                    rows.append((sc.digest, sc.record))
                    seen.add(sc.digest)
        if not rows:
            return 0
        events = {d: trio.Event() for d, _ in rows}
        self._deleting.update(events)
        deleted: list[bytes] = []
        try:
            by_backend: dict[str, list[tuple[str, str]]] = {}
            for d, rec in rows:
                for loc in rec.locations:
                    by_backend.setdefault(loc.backend, []).append((d.hex(), loc.locator))
            failed: set[str] = set()
            for name, items in by_backend.items():
                backend = self.backends.get(name)
                if backend is None:
                    continue  # a removed backend: nothing we can delete there
                try:
                    await backend.delete_many(items)
                except BackendError as exc:
                    log.warning("garbage deletion on backend %s failed, will retry: %s", name, exc)
                    failed.update(key for key, _ in items)
            for d, _ in rows:
                self.cache.discard(d)
            with self.index.write() as txn:
                for d, _ in rows:
                    if d.hex() not in failed:
                        self.chunkmap.forget_garbage(txn, d)
                        deleted.append(d)
        finally:
            for d, ev in events.items():
                del self._deleting[d]
                ev.set()
        return len(deleted)

    async def sync(self) -> None:
        """Make every chunk written so far durable, then the index."""
        for backend in self.backends.values():
            await backend.sync()
        await trio.to_thread.run_sync(self.index.sync)
