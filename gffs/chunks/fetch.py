"""The chunk store's read path: cache, the first good copy (verified), bad copies queued for repair."""

from __future__ import annotations

import errno
import logging

import trio

from gffs.chunks import codec
from gffs.chunks.state import StoreState
from gffs.errors import FsError
from gffs.index.records import Location
from gffs_backends.base import BackendError, ObjectMissing

log = logging.getLogger("gffs.chunks.store")


class FetchPath(StoreState):
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
                if codec.decode_is_free(stored):   # encrypted raw: the tag verified it
                    data = codec.decode(stored, digest)
                else:
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
