"""The chunk store's repair path and upload queue: chunks back to their copy count,
staged chunks to their remote backends."""

from __future__ import annotations

import errno
import logging
import time

import trio

from gffs.chunks import codec
from gffs.chunks.state import StoreState, prepared_put
from gffs.errors import FsError
from gffs.index.errors import IndexFailure
from gffs.index.records import ChunkRecord, Location
from gffs.placement.policy import STAGING
from gffs_backends.base import Backend, BackendError

log = logging.getLogger("gffs.chunks.store")

REPAIR_PARALLEL = 8            # chunks repaired at once (lets packing backends batch)
UPLOAD_PARALLEL = 16           # staged chunks uploaded at once


class RepairPath(StoreState):
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
        except (BackendError, FsError, IndexFailure, codec.CorruptChunk) as exc:
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
            nursery.start_soon(self._run_staged_drops)
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
                if not pending or (not repaired and not self._in_repair):
                    break               # done, or the rest waits for backends that are down
                if not repaired:
                    await trio.sleep(0.1)
        if self._staged_drops:      # uploaded: their staged copies go now, not at the next mount
            batch = list(self._staged_drops)
            try:
                await self.index.durable()
            except IndexFailure as exc:  # the records may not be durable: keep the copies
                log.warning("%d staged copies kept until the next mount: %s", len(batch), exc)
                return
            await self._drop_staged(self._take_staged(batch))

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
            # an encrypted target seals in the hop that verifies the copy (no hop of its own)
            preparer = next((self.backends[n] for n in missing if self.backends[n].prepares_puts),
                            None)
            stored, prepared = await self.prepared_copy(digest, rec, preparer)
            for name in missing:
                try:
                    locator = await self.call(self.backends[name], "put_prepared", digest.hex(),
                                              stored, prepared)
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
            if staged is None:
                if self.staging is not None:
                    self.staging.done(digest)
            elif self._staged_deleter:      # the upload queue's deleter runs
                self._staged_drops.append((digest, staged.locator))
                self._staged_drops_wakeup.set()
            else:
                await self.index.durable()
                await self._drop_staged([(digest, staged.locator)])
        return complete

    async def _drop_staged(self, items: list[tuple[bytes, str]]) -> None:
        """Delete staged copies whose remote copies are on record, then uncount them.

        The caller has made that record durable first: a power loss falls back to the
        durable index, which must still find the chunk where it says."""
        try:
            with trio.CancelScope(shield=True):   # local unlinks: an unmount lets them end
                await self.call(self.backends[STAGING], "delete_many",
                                [(digest.hex(), locator) for digest, locator in items])
        except BackendError as exc:  # stray files: deleted at the next start
            log.warning("%d staged copies not deleted: %s", len(items), exc)
        finally:  # after the delete: the area's files never exceed what is counted
            if self.staging is not None:
                for digest, _ in items:
                    self.staging.done(digest)

    def _take_staged(self, batch: list[tuple[bytes, str]]) -> list[tuple[bytes, str]]:
        """Remove *batch* from the queue; the part of it still there (not taken meanwhile)."""
        queued, taken = set(self._staged_drops), set(batch)
        self._staged_drops[:] = [item for item in self._staged_drops if item not in taken]
        return [item for item in batch if item in queued]

    async def _run_staged_drops(self) -> None:
        """The upload queue's deleter: the staged copies of uploaded chunks, in batches
        after the next periodic group commit (one for every chunk uploaded meanwhile)
        instead of a commit forced per upload. Cancelled while it waits (unmount), the
        batch stays queued for drain_uploads."""
        self._staged_deleter = True
        try:
            while True:
                while not self._staged_drops:
                    await self._staged_drops_wakeup.wait()
                    self._staged_drops_wakeup = trio.Event()
                batch = list(self._staged_drops)
                await self.index.durable_soon()      # covers *batch*: queued before
                await self._drop_staged(self._take_staged(batch))
        finally:
            self._staged_deleter = False

    def _forget_staged_copy(self, txn, digest: bytes) -> Location | None:
        """Drop the staged location of a chunk whose backends hold their copies now."""
        rec = self.chunkmap.chunk(txn, digest)
        staged = next((loc for loc in rec.locations if loc.backend == STAGING), None) if rec else None
        if staged is None or len(rec.locations) < 2:
            return None
        self.chunkmap.set_locations(txn, digest, [l for l in rec.locations if l is not staged])
        return staged

    async def stored_copy(self, digest: bytes, rec: ChunkRecord) -> bytes:
        """The stored form of a chunk from a verified good copy."""
        return (await self.prepared_copy(digest, rec, None))[0]

    async def prepared_copy(self, digest: bytes, rec: ChunkRecord,
                            preparer: Backend | None) -> tuple[bytes, object | None]:
        """stored_copy, and *preparer*'s prepare_put of it made in the worker thread that
        verified it (Backend.put_prepared; None without a preparer)."""
        for name in self.placement.read_order([loc.backend for loc in rec.locations]):
            loc = next(l for l in rec.locations if l.backend == name)
            backend = self.backends.get(name)
            if backend is None:
                continue
            try:
                stored = await self.call(backend, "get", digest.hex(), loc.locator)
                return await trio.to_thread.run_sync(_verified, stored, digest, preparer,
                                                     limiter=self._limiter)
            except (BackendError, codec.CorruptChunk):
                continue
        raise FsError(errno.EIO, f"no good copy of chunk {digest.hex()[:16]} to repair from")


def _verified(stored: bytes, digest: bytes,
              preparer: Backend | None) -> tuple[bytes, object | None]:
    """*stored* checked against *digest* (CorruptChunk if not), as bytes (a view of a
    decrypted buffer: S3 wants bytes), and the preparer's work on it."""
    codec.decode(stored, digest)
    stored = bytes(stored)
    return stored, prepared_put(preparer, digest.hex(), stored)
