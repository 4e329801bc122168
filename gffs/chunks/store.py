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
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

import trio

from gffs.chunks import codec
from gffs.chunks.staging import Staging
from gffs.errors import FsError
from gffs.index import ChunkMap, Index
from gffs.index.records import ChunkRecord, Location
from gffs.placement import Placement
from gffs.placement.policy import STAGING
from gffs_backends.base import (Backend, BackendError, BackendFull, BackendUnavailable,
                                ObjectMissing)

log = logging.getLogger(__name__)

INLINE_HASH_LIMIT = 64 * 1024  # smaller blocks are cheaper to hash than a thread hop
REPAIR_PARALLEL = 8            # chunks repaired at once (lets packing backends batch)
UPLOAD_PARALLEL = 16           # staged chunks uploaded at once


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
        self.repair_wakeup = trio.Event()
        self._limiter = trio.CapacityLimiter(io_threads)
        self.timeout = backend_timeout
        self.health = placement.health

    async def call(self, backend: Backend, op: str, *args):
        """One backend operation, bounded in time, with its outcome recorded in health."""
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

    # writing -------------------------------------------------------------------
    async def store(self, data: bytes, try_compress: bool, flow: str | None = None) -> StoredChunk:
        """Make *data* safe in the backends (or find it already stored) and pin it.

        The caller must call :meth:`release` after the transaction that references
        the chunk has committed (or failed), and queue a repair for a chunk that
        comes back ``short``.
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
            targets = self.placement.targets(len(data), digest, flow)
            staged = self._stage(digest, len(stored), flow, targets)
            if staged:
                targets = [b for b in targets if self.placement.is_local(b.name)]
            try:
                record.locations = await self._put_safely(
                    digest, stored, targets or [self.backends[STAGING]])
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

    def _stage(self, digest: bytes, size: int, flow: str | None, targets: list[Backend]) -> bool:
        """Whether the remote copies of a new chunk are left to the upload queue: when
        the policy names a remote target and the staging area has room for it."""
        if self.staging is None or all(self.placement.is_local(b.name) for b in targets):
            return False
        return self.staging.reserve(digest, size, flow)

    async def _put_safely(self, digest: bytes, stored: bytes, targets: list[Backend]) -> list[Location]:
        """Put to the targets; if none took it, to a fallback (local first). ≥ 1 copy or raise."""
        locations, errors = await self._put_to(digest.hex(), stored, targets)
        if not locations:
            for backend in self.placement.fallbacks({b.name for b in targets}):
                locations, more = await self._put_to(digest.hex(), stored, [backend])
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

    async def _put_to(self, key: str, stored: bytes,
                      targets: list[Backend]) -> tuple[list[Location], list[BackendError]]:
        results: dict[str, str] = {}
        errors: list[BackendError] = []

        async def put_one(backend: Backend) -> None:
            try:
                results[backend.name] = await self.call(backend, "put", key, stored)
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

    def pin(self, digests: list[bytes]) -> None:
        """Keep chunks from garbage deletion while something outside a write works on them."""
        for d in digests:
            self._pins[d] += 1

    def pinned(self, digest: bytes) -> bool:
        return digest in self._pins or digest in self._deleting

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
        failures: list[str] = []
        bad: list[str] = []
        tried: set[str] = set()
        # a second look at the record: a rebalance may have moved the copy we read
        for _attempt in range(2):
            with self.index.read() as txn:
                rec = self.chunkmap.known(txn, digest)
            if rec is None:
                log.error("chunk %s is referenced but has no record in the index", key)
                raise FsError(errno.EIO, f"chunk {key[:16]} has no record")
            fresh = {loc.backend: loc for loc in rec.locations if loc.backend not in tried}
            if not fresh:
                break
            tried.update(fresh)
            data = await self._fetch_from(digest, fresh, failures, bad)
            if data is not None:
                if bad:
                    self._drop_bad_copies(digest, bad)
                return data
        log.error("no good copy of chunk %s: %s", key[:16], "; ".join(failures))
        raise FsError(errno.EIO, f"no good copy of chunk {key[:16]} ({'; '.join(failures)})")

    async def _fetch_from(self, digest: bytes, by_name: dict[str, Location], failures: list[str],
                          bad: list[str]) -> bytes | memoryview | None:
        """The first good copy among *by_name*, or None (reasons appended to *failures*)."""
        key = digest.hex()
        for name in self.placement.read_order(list(by_name)):
            loc, backend = by_name[name], self.backends.get(name)
            if backend is None:
                failures.append(f"{name}: not configured")
                continue
            try:
                stored = await self.call(backend, "get", key, loc.locator)
                data = await trio.to_thread.run_sync(codec.decode, stored, digest,
                                                     limiter=self._limiter)
            except (ObjectMissing, codec.CorruptChunk) as exc:
                failures.append(f"{name}: {exc}")
                bad.append(name)
                log.error("copy of chunk %s on backend %s is bad: %s", key[:16], name, exc)
            except BackendError as exc:
                failures.append(f"{name}: {exc}")
                log.warning("chunk %s: backend %s failed: %s", key[:16], name, exc)
            else:
                return data
        return None

    def _drop_bad_copies(self, digest: bytes, bad: list[str]) -> None:
        """Forget copies that proved missing or corrupt and queue their re-creation."""
        if self.index.readonly:     # -o ro changes nothing; fsck --repair fixes it later
            return
        with self.index.write() as txn:
            rec = self.chunkmap.chunk(txn, digest)
            if rec is None:
                return
            # only copies still on record: one a rebalance removed meanwhile is not "bad"
            bad = [loc.backend for loc in rec.locations if loc.backend in bad]
            rec.locations = [loc for loc in rec.locations if loc.backend not in bad]
            if bad and rec.locations:
                self.chunkmap.set_locations(txn, digest, rec.locations)
                self.chunkmap.queue_repair(txn, digest, None, restore=bad)
        self.repair_wakeup.set()

    # repairing ------------------------------------------------------------------
    async def repair(self, limit: int = 200) -> tuple[int, int]:
        """Bring queued chunks back to their copy count; returns (repaired, still pending).

        A chunk whose wanted backends are down stays queued (the queue is in the
        index, so it survives restarts) and is retried on the next call. A read-only
        store (-o ro) repairs nothing: that would write to the backends and the index.
        """
        if self.index.readonly:
            return 0, 0
        with self.index.read() as txn:
            rows = self.chunkmap.repair_rows(txn, limit, self._repair_after)
        self._repair_after = rows[-1][0] if len(rows) >= limit else b""
        outcome = {"repaired": 0, "pending": 0}
        limiter = trio.CapacityLimiter(REPAIR_PARALLEL)

        async def one(digest: bytes, flow: str | None, restore: list[str]) -> None:
            async with limiter:
                done = await self._repair_guarded(digest, flow, restore)
            outcome["repaired" if done else "pending"] += 1

        async with trio.open_nursery() as nursery:
            for row in rows:
                nursery.start_soon(one, *row)
        return outcome["repaired"], outcome["pending"]

    async def _repair_guarded(self, digest: bytes, flow: str | None, restore: list[str]) -> bool:
        """One chunk's repair, unless the repair or upload queue already works on it."""
        if digest in self._in_repair:
            return False
        self._in_repair.add(digest)
        self.pin([digest])  # a rebalance settling intents must not delete our put
        try:
            return await self._repair_one(digest, flow, restore)
        except (BackendError, FsError, codec.CorruptChunk) as exc:
            log.warning("repair of chunk %s postponed: %s", digest.hex()[:16], exc)
            return False
        finally:
            self.unpin([digest])
            self._in_repair.discard(digest)

    async def run_uploads(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The upload queue: copy staged chunks to their backends as soon as their
        transaction has committed, UPLOAD_PARALLEL at a time; runs until cancelled.

        A chunk whose upload fails stays in ``repair`` (it is in the index, so a
        kill -9 and a remount resume it) and the repair loop retries it later.
        """
        if self.staging is None or self.index.readonly:  # -o ro uploads nothing
            task_status.started()
            return
        await self._resume_staging()
        limiter = trio.CapacityLimiter(UPLOAD_PARALLEL)

        async def upload(digest: bytes, flow: str | None, token: object) -> None:
            try:
                await self._repair_guarded(digest, flow, [])
            finally:
                limiter.release_on_behalf_of(token)

        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                for digest, flow in await self.staging.take():
                    token = object()     # (one digest may be queued again while in flight)
                    await limiter.acquire_on_behalf_of(token)
                    nursery.start_soon(upload, digest, flow, token)

    async def drain_uploads(self, seconds: float) -> None:
        """Unmount: make the copies still waiting (staged uploads first of all) for up
        to *seconds*; what is left (a backend down, no time) continues at the next mount."""
        if self.staging is None:
            return
        with trio.move_on_after(seconds):
            while True:
                repaired, pending = await self.repair()
                if not pending:
                    return
                if not repaired:
                    if not self._in_repair:
                        return          # the rest waits for backends that are down
                    await trio.sleep(0.1)

    async def _resume_staging(self) -> None:
        """After a restart: count and queue the staged chunks on record; delete staged
        files no record names (a crash between their write and the commit, or between
        dropping the staged location and deleting the file) that predate this process."""
        assert self.staging is not None
        started = time.time() - 1.0
        stray: list[bytes] = []
        async for info in self.staging.backend.list():
            digest = bytes.fromhex(info.key)
            with self.index.read() as txn:
                rec = self.chunkmap.known(txn, digest)
                flow = self.chunkmap.repair_flow(txn, digest)
            if rec is not None and any(loc.backend == STAGING for loc in rec.locations):
                self.staging.reserve(digest, info.size, flow)
                self.staging.ready(digest)
            elif info.mtime < started and not self.pinned(digest):
                stray.append(digest)
        if stray:
            await self.call(self.staging.backend, "delete_many", [(d.hex(), "") for d in stray])
            log.info("deleted %d staged chunks no record names", len(stray))

    async def _repair_one(self, digest: bytes, flow: str | None, restore: list[str]) -> bool:
        with self.index.read() as txn:
            rec = self.chunkmap.chunk(txn, digest)
        if rec is None:  # deleted meanwhile (or never committed: a staged chunk's flush failed)
            with self.index.write() as txn:
                self.chunkmap.done_repair(txn, digest)
            if self.staging is not None:
                self.staging.done(digest)
            return True
        policy = self.placement.policy_for(flow)
        have = {loc.backend for loc in rec.locations}
        wanted = [b.name for b in self.placement.ranked(digest, flow)]
        missing = [n for n in restore if n not in have and n in self.backends]
        # copies that count: where the policy wants them, on backends we trust
        placed = sum(self.placement.trusted(n) for n in have & set(wanted))
        for name in wanted:
            if placed >= policy.copies:
                break
            if name not in have and self.placement.trusted(name):
                if name not in missing:
                    missing.append(name)
                placed += 1
        missing = [n for n in missing if self.health.writable(n)]
        if missing:
            stored = await self._stored_copy(digest, rec)
            for name in missing:
                try:
                    locator = await self.call(self.backends[name], "put", digest.hex(), stored)
                except BackendError as exc:
                    log.warning("repair of chunk %s on %s failed: %s", digest.hex()[:16], name, exc)
                    continue
                with self.index.write() as txn:
                    self.chunkmap.add_location(txn, digest, Location(name, locator))
                have.add(name)
        counted = sum(self.placement.trusted(n) for n in have & set(wanted))
        complete = counted >= policy.copies and all(n in have for n in restore if n in self.backends)
        if complete:
            with self.index.write() as txn:
                self.chunkmap.done_repair(txn, digest)
                staged = self._forget_staged_copy(txn, digest)
            try:
                if staged is not None:
                    # the staged copy goes only once the record naming the remote copies is
                    # durable: a power loss falls back to the durable index, which must
                    # still find the chunk where it says
                    await self.index.durable()
                    await self.call(self.backends[STAGING], "delete", digest.hex(), staged.locator)
            except BackendError as exc:  # a stray file: deleted at the next start
                log.warning("staged copy of chunk %s not deleted: %s", digest.hex()[:16], exc)
            finally:  # after the delete: the area's files never exceed what is counted
                if self.staging is not None:
                    self.staging.done(digest)
        return complete

    def _forget_staged_copy(self, txn, digest: bytes) -> Location | None:
        """Drop the staged location of a chunk whose backends hold their copies now."""
        rec = self.chunkmap.chunk(txn, digest)
        staged = next((loc for loc in rec.locations if loc.backend == STAGING), None) if rec else None
        if staged is None or len(rec.locations) < 2:
            return None
        self.chunkmap.set_locations(txn, digest, [l for l in rec.locations if l is not staged])
        return staged

    async def _stored_copy(self, digest: bytes, rec: ChunkRecord) -> bytes:
        """The stored form of a chunk from a verified good copy."""
        for name in self.placement.read_order([loc.backend for loc in rec.locations]):
            loc = next(l for l in rec.locations if l.backend == name)
            backend = self.backends.get(name)
            if backend is None:
                continue
            try:
                stored = await self.call(backend, "get", digest.hex(), loc.locator)
                await trio.to_thread.run_sync(codec.decode, stored, digest, limiter=self._limiter)
                return stored
            except (BackendError, codec.CorruptChunk):
                continue
        raise FsError(errno.EIO, f"no good copy of chunk {digest.hex()[:16]} to repair from")

    # deleting -------------------------------------------------------------------
    async def delete_garbage(self, limit: int = 1000) -> int:
        """Delete unreferenced chunks from their backends; return how many went (none if read-only)."""
        if self.index.readonly:
            return 0
        # only what neither the durable index nor the open group references: a
        # power loss falls back to the durable state, which must not lose a chunk
        await self.index.available()
        unused, self._unused = self._unused, []
        with self.index.read_committed() as durable, self.index.read() as txn:
            rows = [(d, r) for d, r in self.chunkmap.garbage(durable, limit)
                    if d not in self._pins and d not in self._deleting
                    and self.chunkmap.is_garbage(txn, d)]
            seen = {d for d, _ in rows}
            for sc in unused:
                if sc.digest in self._pins or sc.digest in self._deleting or sc.digest in seen:
                    continue
                if self.chunkmap.known(txn, sc.digest) is not None:
                    continue
                if self.chunkmap.chunk(durable, sc.digest) is not None:
                    self._unused.append(sc)   # dropped, but not durably yet: later
                    continue
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
                    await self.call(backend, "delete_many", items)
                except BackendError as exc:
                    log.warning("garbage deletion on backend %s failed, will retry: %s", name, exc)
                    failed.update(key for key, _ in items)
            for d, _ in rows:
                self.cache.discard(d)
                if self.staging is not None and d.hex() not in failed:
                    self.staging.done(d)
            await self.index.available()
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

    async def delete_unrecorded(self, backend: Backend, digests: list[bytes]) -> int:
        """Delete objects the index does not know (crash leftovers); returns how many.

        Checked again right before the delete, and marked as being deleted so a
        writer storing the same bytes now waits and puts them again afterwards.
        """
        with self.index.read() as txn:
            doomed = [d for d in digests if not self.pinned(d)
                      and self.chunkmap.known(txn, d) is None]
        events = {d: trio.Event() for d in doomed}
        self._deleting.update(events)
        try:
            if doomed:
                await self.call(backend, "delete_many", [(d.hex(), "") for d in doomed])
        finally:
            for d, ev in events.items():
                del self._deleting[d]
                ev.set()
        return len(doomed)

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
