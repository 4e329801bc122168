"""The chunk store's delete path: garbage chunks and unrecorded objects, never one in use."""

from __future__ import annotations

import logging

import trio

from gffs.chunks.state import StoreState
from gffs_backends.base import Backend, BackendError

log = logging.getLogger("gffs.chunks.store")


class GarbagePath(StoreState):
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
