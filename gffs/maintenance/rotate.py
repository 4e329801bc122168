"""Key rotation: every object on the encrypted backends re-sealed under a new store key.

The first run makes the new key (gffs/crypto/rotation.py): from then on every
put seals under it, and reads open objects of either key (locators carry the
tag of the key that sealed them; an untagged one is tried under each key).
Then each recorded copy sealed under the old key is rewritten in place through
ChunkMover.replace_copy (put under the new key → read back and verify → record
the new locator → delete the old object, each step behind an intent row), and
each index backup object is re-sealed (put under the new key, then delete the
old one). Resumable: the locators in the index are the progress, a cursor in
``meta`` makes a run stopped at --time-limit/--size-limit (exit 3) or killed
continue where it was; a rerun of ``key rotate`` continues the same rotation.
The old key leaves the key file only when a final scan finds no copy and no
backup object still under it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import trio

from gffs.chunks.moves import ChunkMover, MoveFailed
from gffs.crypto import rotation
from gffs.crypto.seal import SealError, StoreKey
from gffs.index import ChunkMap, Index
from gffs.index.records import Location
from gffs.maintenance.jobs import EXIT_FAILED, EXIT_LIMIT, JobRefused, job
from gffs.maintenance.progress import Progress
from gffs.store import Store
from gffs_backends.base import BackendError

log = logging.getLogger(__name__)

ROTATE_CURSOR = b"rotate_cursor"   # meta JSON: hex digest of the last chunk window done
WINDOW = 16                        # chunks in flight at once
ROUNDS = 3                         # plans per run: puts racing the key switch get a second pass


@dataclass(frozen=True)
class Rewrite:
    digest: bytes
    backend: str
    locator: str              # as recorded now (maybe untagged)
    size: int


def plan(index: Index, backends: set[str], tag: str | None) -> list[Rewrite]:
    """Recorded copies on *backends* not sealed under the key *tag* (None: every copy
    there, what a rotation starting now would rewrite); blocking, for a worker thread."""
    out = []
    for digest, rec in ChunkMap.scan_chunks(index):
        for loc in rec.locations:
            if loc.backend in backends and (tag is None or not loc.locator.startswith(f"k{tag}:")):
                out.append(Rewrite(digest, loc.backend, loc.locator, rec.stored_size))
    return out


def _ordered(todo: list[Rewrite], cursor: str | None) -> list[Rewrite]:
    """After the cursor first, then wrapped round to the start (the plan is in digest order)."""
    if not cursor:
        return todo
    start = next((i for i, r in enumerate(todo) if r.digest.hex() > cursor), len(todo))
    return todo[start:] + todo[:start]


class Rotator:
    """Rewrites copies on encrypted backends (*only*: on these) until all are under *key*."""

    def __init__(self, store: Store, key: StoreKey, only: set[str] | None = None) -> None:
        self.store, self.key = store, key
        self.crypt = {n: b for n, b in rotation.crypt_backends(store).items()
                      if only is None or n in only}
        self.mover = ChunkMover(store.chunks)
        self.done = {"copies_rewritten": 0, "bytes_rewritten": 0, "backup_objects_resealed": 0}
        self.failures: list[str] = []

    def _set_location(self, r: Rewrite, locator: str) -> None:
        cm = self.store.chunks.chunkmap
        with self.store.index.write() as txn:
            rec = cm.chunk(txn, r.digest)
            if rec is not None and Location(r.backend, r.locator) in rec.locations:
                cm.set_locations(txn, r.digest, [Location(r.backend, locator)
                                                 if loc == Location(r.backend, r.locator) else loc
                                                 for loc in rec.locations])

    async def rewrite(self, r: Rewrite) -> None:
        """One copy under the new key; an untagged locator is first tagged with its key."""
        backend = self.crypt[r.backend]
        chunks = self.store.chunks
        chunks.pin([r.digest])
        try:
            old = await chunks.call(backend, "resolve", r.digest.hex(), r.locator)
            if old is None:
                raise MoveFailed(f"{r.digest.hex()[:16]}: no object on {r.backend}")
            if old != r.locator:
                self._set_location(r, old)   # the truth, more precisely: which key sealed it
            if backend.key_tag(old) == self.key.tag:
                return
            stored = await self.mover.read_stored(r.digest)
            if await self.mover.replace_copy(r.digest, r.backend, old, stored):
                self.done["copies_rewritten"] += 1
                self.done["bytes_rewritten"] += r.size
        except (MoveFailed, BackendError) as exc:
            self.failures.append(str(exc))
            log.warning("key rotate: %s", exc)
        finally:
            chunks.unpin([r.digest])

    async def chunks(self, progress: Progress, deadline: float | None,
                     size_limit: int | None) -> str | None:
        """Rewrite what the plan finds, in windows; the limit that stopped it, or None."""
        index = self.store.index
        for _round in range(ROUNDS):
            todo = await trio.to_thread.run_sync(plan, index, set(self.crypt), self.key.tag)
            if not todo:
                return None
            with index.read() as txn:
                todo = _ordered(todo, index.meta_json(txn, ROTATE_CURSOR))
            progress.begin("key rotate", len(todo), sum(r.size for r in todo), unit="copies")
            for start in range(0, len(todo), WINDOW):
                if deadline is not None and time.monotonic() >= deadline:
                    return "time-limit"
                if size_limit is not None and self.done["bytes_rewritten"] >= size_limit:
                    return "size-limit"
                window = todo[start:start + WINDOW]
                async with trio.open_nursery() as nursery:
                    for r in window:
                        nursery.start_soon(self.rewrite, r)
                progress.advance(items=len(window), nbytes=sum(r.size for r in window))
                with index.write() as txn:
                    index.set_meta_json(txn, ROTATE_CURSOR, window[-1].digest.hex())
            with index.write() as txn:
                index.set_meta_json(txn, ROTATE_CURSOR, None)
            if self.failures:
                return None
        return None

    async def backups(self) -> int:
        """Re-seal every metadata object still under an old key (or, on a migrating
        backend, in the clear); how many remain."""
        left = 0
        for name, backend in sorted(self.crypt.items()):
            try:
                found = await backend.sealed_meta("")
            except BackendError as exc:
                self.failures.append(f"{name}: listing its index backups: {exc}")
                left += 1
                continue
            for meta, key, stored in found:
                if key is self.key:
                    continue
                try:
                    data = await backend.inner.get_meta(stored)
                    if key is not None:
                        data = key.open_meta(meta, data)
                    await backend.put_meta(meta, data)
                    await backend.inner.delete_meta(stored)
                    self.done["backup_objects_resealed"] += 1
                except (BackendError, SealError) as exc:
                    self.failures.append(f"{name}: index backup object {meta}: {exc}")
                    left += 1
        return left


async def migrate(store: Store, progress: Progress, deadline: float | None,
                  size_limit: int | None) -> dict:
    """Rebalance's part of turning ``encrypt`` on for a backend holding plaintext: each
    plaintext copy there rewritten sealed; the migration ends when none is left."""
    from gffs.crypto.setup import end_migration, migrating_backends
    key = rotation.current_key(store)
    names = migrating_backends(store.index) & set(rotation.crypt_backends(store))
    if key is None or not names:
        return {}
    rotor = Rotator(store, key, names)
    stopped = await rotor.chunks(progress, deadline, size_limit)
    left = 0 if stopped else await rotor.backups()
    out = {"migrating": sorted(names), **rotor.done, "failures": rotor.failures,
           "stopped": stopped}
    if not stopped and not left and not rotor.failures and not await trio.to_thread.run_sync(
            plan, store.index, names, key.tag):
        end_migration(store.index, names)
        for b in rotor.crypt.values():
            b.plaintext = False
        out["migrated"] = sorted(names)
    return out


@job("key-rotate")
async def key_rotate(store: Store, args: dict, progress: Progress) -> dict:
    """Re-seal everything under a new key. args: dry_run, time_limit, size_limit."""
    key = rotation.current_key(store)
    if key is None:
        raise JobRefused("no backend of this store is encrypted: there is no key to rotate")
    if args.get("dry_run"):
        todo = await trio.to_thread.run_sync(plan, store.index, set(rotation.crypt_backends(store)),
                                             key.tag if key.previous else None)
        return {"dry_run": True, "rotating": bool(key.previous), "copies_to_rewrite": len(todo),
                "bytes_to_rewrite": sum(r.size for r in todo)}
    continuing = bool(key.previous)
    if not continuing:
        key = rotation.begin(store)
        progress.note(f"new key {key.key_id}; back it up again with 'gffs-admin key export'")
    rotor = Rotator(store, key)
    settled = await rotor.mover.settle()
    t, s = args.get("time_limit"), args.get("size_limit")
    deadline = time.monotonic() + float(t) if t else None
    stopped = await rotor.chunks(progress, deadline, int(s) if s else None)
    result: dict = {"key_id": key.key_id, "continued": continuing, "settled": settled,
                    **rotor.done, "stopped": stopped}
    if stopped:
        return {**result, "failures": rotor.failures, "exit_code": EXIT_LIMIT}
    left = await rotor.backups()
    remaining = len(await trio.to_thread.run_sync(plan, store.index, set(rotor.crypt), key.tag))
    result.update(failures=rotor.failures, copies_left=remaining, backup_objects_left=left)
    if remaining or left or rotor.failures:
        return {**result, "exit_code": EXIT_FAILED}
    result["retired"] = rotation.retire(store, key)
    return result
