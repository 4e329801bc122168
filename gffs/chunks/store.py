"""The chunk store: content-addressed put/get/delete across the placement's backends.

It owns three in-memory things the index cannot: *pins* (hashes a writer is
about to reference, which garbage deletion must not remove), the set of
deletions in flight, and an LRU cache of decoded blocks. Hashing, compression
and backend I/O all run in worker threads, never on the trio loop.

Every backend call goes through :meth:`ChunkStore.call`: bounded by a timeout
and recorded in the placement's health, so a backend that is down is skipped
quickly instead of stalling writers and readers. A write that cannot reach all
the copies its policy asks for completes once one copy is safe (on a fallback
backend if needed) and queues the chunk for repair; reads fail over between
copies and queue a bad copy for repair.

A chunk bound only for remote backends (S3, IPFS, ...) is *staged* on local disk
when the store has a staging area (gffs/chunks/staging.py): the writer returns
once it is there, and :meth:`run_uploads` copies it to its backends in parallel.
"""

from __future__ import annotations

import errno
import logging

import trio

from gffs.chunks import codec
from gffs.chunks.cache import BlockCache
from gffs.chunks.fetch import FetchPath
from gffs.chunks.garbage import GarbagePath
from gffs.chunks.repair import REPAIR_PARALLEL, UPLOAD_PARALLEL, RepairPath
from gffs.chunks.state import StoreCapacity, StoredChunk, prepared_put
from gffs.errors import FsError
from gffs.index.records import ChunkRecord, Location
from gffs.placement.policy import STAGING
from gffs_backends.base import Backend, BackendError, BackendFull

log = logging.getLogger("gffs.chunks.store")

__all__ = ["BlockCache", "ChunkStore", "StoreCapacity", "StoredChunk", "REPAIR_PARALLEL",
           "UPLOAD_PARALLEL"]

INLINE_HASH_LIMIT = 64 * 1024  # smaller blocks are cheaper to hash than a thread hop


class ChunkStore(FetchPath, RepairPath, GarbagePath):
    """Content-addressed put/get/delete across the placement's backends (see the module doc)."""

    # writing -------------------------------------------------------------------
    async def store(self, data: bytes, try_compress: bool, flow: str | None = None) -> StoredChunk:
        """Make *data* safe in the backends (or find it already stored) and pin it.

        The caller must call :meth:`release` after the transaction that references
        the chunk has committed (or failed), and queue a repair for a chunk that
        comes back ``short``.
        """
        prepared: object | None = None
        if len(data) <= INLINE_HASH_LIMIT:
            digest, codec_id, stored = codec.encode_and_hash(data, try_compress)
        else:
            digest, codec_id, stored, prepared = await trio.to_thread.run_sync(
                self._encode, data, try_compress, self._preparer(flow), limiter=self._limiter)
        self._pins[digest] += 1
        try:
            await self.wait_deleted(digest)
            with self.index.read() as txn:
                known = self.chunkmap.known(txn, digest)
            if known is not None:
                return StoredChunk(digest, known)
            record = ChunkRecord(0, len(data), len(stored), codec_id)
            targets = self.placement.targets(len(data), digest, flow)
            staged = self._stage(digest, len(stored), flow, targets)
            if staged:
                targets = [b for b in targets if self.placement.is_local(b.name)]
            try:
                record.locations = await self._put_safely(
                    digest, stored, targets or [self.backends[STAGING]], prepared)
            except BaseException:
                # cancelled or failed midway: some backend may hold the bytes anyway
                record.locations = [Location(name) for name in self.backends]
                self._unused.append(StoredChunk(digest, record, fresh=True))
                if staged and self.staging is not None:
                    self.staging.done(digest)
                raise
            self.cache.put(digest, bytes(data))
            want = self.placement.policy_for(flow).copies
            trusted = sum(self.placement.trusted(loc.backend) for loc in record.locations)
            return StoredChunk(digest, record, fresh=True, short=staged or trusted < want,
                               staged=staged)
        except BaseException:
            self.unpin([digest])
            raise

    def _preparer(self, flow: str | None) -> Backend | None:
        """A backend of the flow's policy that does work ahead of a put (an encrypted one
        seals) and is written before close() returns (not deferred, not staged)."""
        for name in self.placement.policy_for(flow).backends:
            b = self.backends.get(name)
            if (b is not None and b.prepares_puts and not b.deferred
                    and (self.staging is None or b.is_local)):
                return b
        return None

    def _encode(self, data: bytes, try_compress: bool,
                preparer: Backend | None) -> tuple[bytes, int, bytes, object | None]:
        """encode_and_hash, and in the same worker thread the preparer's work on the
        stored bytes (sealing a chunk costs about half of hashing it; a second thread
        hop per block would add its latency to every write). Skipped for a chunk the
        committed index already has (a duplicate is not put); one only in the open
        group just costs a wasted seal."""
        digest, codec_id, stored = codec.encode_and_hash(data, try_compress)
        prepared = None
        if preparer is not None:
            with self.index.read_committed() as txn:
                known = self.chunkmap.known(txn, digest) is not None
            if not known:
                prepared = prepared_put(preparer, digest.hex(), stored)
        return digest, codec_id, stored, prepared

    def _stage(self, digest: bytes, size: int, flow: str | None, targets: list[Backend]) -> bool:
        """Whether the remote copies of a new chunk are left to the upload queue: when
        the policy names a remote target and the staging area has room for it."""
        if self.staging is None or all(self.placement.is_local(b.name) for b in targets):
            return False
        return self.staging.reserve(digest, size, flow)

    async def _put_safely(self, digest: bytes, stored: bytes, targets: list[Backend],
                          prepared: object | None = None) -> list[Location]:
        """Put to the targets; if none took it, to a fallback (local first). ≥ 1 copy or raise.

        *prepared*: a backend's prepare_put of *stored* (Backend.put_prepared)."""
        locations, errors = await self._put_to(digest.hex(), stored, targets, prepared)
        if not locations:
            for backend in self.placement.fallbacks({b.name for b in targets}):
                locations, more = await self._put_to(digest.hex(), stored, [backend], prepared)
                errors += more
                if locations:
                    log.warning("chunk %s kept on %s until its backends are back",
                                digest.hex()[:16], backend.name)
                    break
        if not locations:
            if errors and all(isinstance(e, BackendFull) for e in errors):
                raise FsError(errno.ENOSPC, str(errors[0]))
            detail = "; ".join(str(e) for e in errors) or "no backend is available"
            raise FsError(errno.EIO, f"no backend accepted chunk {digest.hex()[:16]}: {detail}")
        return locations

    async def _put_to(self, key: str, stored: bytes, targets: list[Backend],
                      prepared: object | None = None) -> tuple[list[Location], list[BackendError]]:
        results: dict[str, str] = {}
        errors: list[BackendError] = []

        async def put_one(backend: Backend) -> None:
            try:
                if prepared is None:
                    results[backend.name] = await self.call(backend, "put", key, stored)
                else:
                    results[backend.name] = await self.call(backend, "put_prepared", key, stored,
                                                            prepared)
            except BackendError as exc:
                errors.append(exc)
                log.error("put of chunk %s to backend %s failed: %s", key[:16], backend.name, exc)

        async with trio.open_nursery() as nursery:
            for backend in targets:
                nursery.start_soon(put_one, backend)
        return [Location(b.name, results[b.name]) for b in targets if b.name in results], errors

    def release(self, chunks: list[StoredChunk]) -> None:
        """Unpin chunks after their commit; bytes stored for a commit that failed get deleted.

        A fresh chunk that no index row references once nobody pins it is queued
        and deleted by the next :meth:`delete_garbage` (a full disk must not stay
        full because of a flush that failed).
        """
        self.unpin([sc.digest for sc in chunks])
        self._unused.extend(sc for sc in chunks if sc.fresh and sc.digest not in self._pins)
        if self.staging is not None:
            for sc in chunks:
                if sc.staged:
                    self.staging.ready(sc.digest)

    async def capacity(self) -> StoreCapacity:
        """Total and free bytes over the backends that know theirs and answer in time,
        and how many answered that they have no known limit (S3, unlimited Drive).

        statfs must never hang on a backend that is down: each is asked through
        :meth:`call` (timeout, health) and skipped when unavailable.
        """
        total = free = unbounded = 0
        for backend in self.backends.values():
            if backend.name == STAGING or not self.health.available(backend.name):
                continue
            try:
                cap = await self.call(backend, "capacity")
            except BackendError:
                continue
            if cap is None:
                unbounded += 1
            else:
                total += cap.total
                free += cap.free
        return StoreCapacity(total, free, unbounded)

    async def close(self) -> None:
        """Release the backends' connections (unmount)."""
        for backend in self.backends.values():
            try:
                await backend.close()
            except Exception as exc:
                log.warning("closing backend %s: %s", backend.name, exc)

    async def sync_backends(self) -> None:
        """Make every chunk put so far durable (local fsyncs; remote puts already are).

        The index's group commit calls this before each commit, so the index never
        durably references a chunk whose bytes are not on stable storage."""
        for backend in self.backends.values():
            await backend.sync()

    async def sync(self) -> None:
        """Make every chunk written so far durable, then the index."""
        if self.index.group is None:
            await self.sync_backends()
        await self.index.durable()   # a group commit syncs the chunks first itself
