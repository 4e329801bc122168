"""Moving copies of chunks between backends without ever losing one.

A copy is added as put → read back and verify the hash → record the location;
a copy is removed only after a check that enough verified copies stay on
record, as: forget the location → delete the object. Each backend step is
bracketed by an *intent* row in the index (`moves`), written before the call
and removed after the outcome is recorded, so every crash state is visible:

    crash after the put, before recording  → intent "put", location not recorded:
                                              settle() deletes the stray object
    crash after recording, before the drop  → extra copy, no intent: the next
                                              rebalance removes it
    crash after forgetting, before delete   → intent "delete": settle() deletes it

A copy is *replaced* in place (key rotation: same backend, new object) as
intent "replace" with the old locator → put → read back and verify → record
the new locator instead of the old → delete the old object. settle() then
deletes the old object if the new one is recorded; if the old one still is,
the new object is left for the rerun to put again (puts are idempotent).

Nothing here decides *where* copies should be; that is the rebalance plan.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import trio

from gffs.chunks import codec
from gffs.chunks.store import ChunkStore
from gffs.index.records import Location
from gffs_backends.base import BackendError

log = logging.getLogger(__name__)

PER_BACKEND = 4  # transfers at once per backend


class MoveFailed(Exception):
    """One step of a move failed; the index still describes every copy truthfully."""


class ChunkMover:
    def __init__(self, chunks: ChunkStore, per_backend: int = PER_BACKEND) -> None:
        self.chunks = chunks
        self.cm = chunks.chunkmap
        self.index = chunks.index
        self._limits: defaultdict[str, trio.CapacityLimiter] = defaultdict(
            lambda: trio.CapacityLimiter(per_backend))

    async def read_stored(self, digest: bytes) -> bytes:
        """The stored form of a live chunk from a verified good copy."""
        with self.index.read() as txn:
            rec = self.cm.chunk(txn, digest)
        if rec is None:
            raise MoveFailed(f"chunk {digest.hex()[:16]} was deleted meanwhile")
        try:
            return await self.chunks.stored_copy(digest, rec)
        except Exception as exc:
            raise MoveFailed(str(exc)) from None

    async def _put_verified(self, digest: bytes, name: str, stored: bytes, what: str) -> str:
        """Put *stored* on *name* and read it back against the hash; its locator.
        *what* names the step in a failure ("copy of {} to {}": chunk, backend)."""
        backend, key = self.chunks.backends[name], digest.hex()
        try:
            async with self._limits[name]:
                locator = await self.chunks.call(backend, "put", key, stored)
                echoed = await self.chunks.call(backend, "get", key, locator)
            await trio.to_thread.run_sync(codec.decode, echoed, digest)
        except (BackendError, codec.CorruptChunk) as exc:
            raise MoveFailed(f"{what.format(key[:16], name)}: {exc}") from None
        return locator

    async def add_copy(self, digest: bytes, dest: str, stored: bytes) -> bool:
        """Put, verify and record a copy on *dest*; False when the chunk died meanwhile."""
        with self.index.write() as txn:
            self.cm.add_intent(txn, digest, dest, "put")
        locator = await self._put_verified(digest, dest, stored, "copy of {} to {}")
        with self.index.write() as txn:
            live = self.cm.chunk(txn, digest) is not None
            if live:
                self.cm.add_location(txn, digest, Location(dest, locator))
                self.cm.drop_intent(txn, digest, dest)
        if not live:  # deleted while we copied: our copy is nobody's
            await self.delete_object(digest, dest, locator)
        return live

    async def replace_copy(self, digest: bytes, name: str, old: str, stored: bytes) -> bool:
        """Put *stored* again on *name*, verify it, record its locator instead of *old*,
        then delete the object at *old*; False when that copy is no longer recorded.

        *old* must name the old object alone (for an encrypted backend: a locator
        tagged with the old key), so its delete cannot touch the new one.
        """
        with self.index.write() as txn:
            self.cm.add_intent(txn, digest, name, "replace", old)
        locator = await self._put_verified(digest, name, stored, "rewrite of {} on {}")
        was = Location(name, old)
        with self.index.write() as txn:
            rec = self.cm.chunk(txn, digest)
            live = rec is not None and was in rec.locations
            if live:
                # the "replace" row stays until the old object is gone: settle() sees
                # the new locator recorded and deletes the old one
                self.cm.set_locations(txn, digest, [Location(name, locator) if loc == was else loc
                                                    for loc in rec.locations])
            else:   # deleted or moved meanwhile; the new object is gc's (never a recorded one)
                self.cm.drop_intent(txn, digest, name)
        if live:
            await self.index.durable()   # the new locator on record durably, then the old goes
            await self.delete_object(digest, name, old)
        return live

    async def remove_copies(self, digest: bytes, names: set[str], counted: set[str],
                            required: int) -> list[str]:
        """Forget and delete the copies on *names* if ≥ *required* trusted copies on
        *counted* backends stay on record; returns the backends emptied."""
        placement = self.chunks.placement
        with self.index.write() as txn:
            rec = self.cm.chunk(txn, digest)
            if rec is None:
                return []
            keep = [loc for loc in rec.locations if loc.backend not in names]
            staying = sum(placement.trusted(loc.backend) for loc in keep
                          if loc.backend in counted)
            doomed = [loc for loc in rec.locations if loc.backend in names]
            if staying < required or not doomed:
                return []
            self.cm.set_locations(txn, digest, keep)
            for loc in doomed:
                self.cm.add_intent(txn, digest, loc.backend, "delete", loc.locator)
        # the new locations and this forget must be durable before a copy goes: a power
        # loss must not fall back to an index that names only the deleted copy
        await self.index.durable()
        for loc in doomed:
            await self.delete_object(digest, loc.backend, loc.locator)
        return [loc.backend for loc in doomed]

    async def delete_object(self, digest: bytes, name: str, locator: str) -> None:
        """Delete one object named by an intent row, then drop the row.

        A backend no longer configured cannot be reached: the row is dropped
        and the object is left where it is. A failed delete keeps the row.
        """
        backend = self.chunks.backends.get(name)
        if backend is not None:
            await self.chunks.wait_deleted(digest)
            with self.chunks.deleting([digest]):
                try:
                    async with self._limits[name]:
                        await self.chunks.call(backend, "delete", digest.hex(), locator)
                except BackendError as exc:
                    log.warning("deleting copy of %s on %s postponed: %s", digest.hex()[:16],
                                name, exc)
                    return
        with self.index.write() as txn:
            self.cm.drop_intent(txn, digest, name)

    async def settle(self) -> dict[str, int]:
        """Finish what interrupted moves left: stray copies are deleted, recorded ones kept."""
        await self.index.durable()   # "recorded" must mean recorded durably
        with self.index.read() as txn:
            rows = self.cm.intents(txn)
        outcome = {"kept": 0, "deleted": 0, "busy": 0}
        for digest, name, row in rows:
            if self.chunks.pinned(digest):
                outcome["busy"] += 1
                continue
            with self.index.read() as txn:
                rec = self.cm.known(txn, digest)
            recorded = rec is not None and any(loc.backend == name for loc in rec.locations)
            if row.get("op") == "replace":
                # the old object goes once the new one is recorded in its place
                recorded = rec is not None and Location(name, row["locator"]) in rec.locations
            if recorded:
                with self.index.write() as txn:
                    self.cm.drop_intent(txn, digest, name)
                outcome["kept"] += 1
            else:
                await self.delete_object(digest, name, row.get("locator", ""))
                outcome["deleted"] += 1
        return outcome
