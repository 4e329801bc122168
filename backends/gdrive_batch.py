"""Drive batching: small chunks packed into pack files (several puts per upload), the
in-memory maps of keys and packs, and lookups of chunks given without a locator."""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import AsyncIterator

import trio

from gffs_backends.base import BackendError, BackendUnavailable, ObjectInfo, ObjectMissing
from gffs_backends.gdrive_pack import (MAX_MEMBERS, Loc, build_pack, pack_props, parse_index,
                                       parse_locator, parse_pack_props, valid_key)
from gffs_backends.gdrive_session import (FILE_FIELDS, LIST_FIELDS, PACK_CACHE, RECENT_KEYS,
                                          DriveSession, _rfc3339)

log = logging.getLogger("gffs_backends.gdrive")


@dataclass
class _Pack:
    id: str
    size: int
    mtime: float
    n: int
    ixo: int
    ixl: int
    dead: set[int]
    members: list[tuple[str, int, int]] | None = None
    _where: dict[tuple[int, int], list[int]] | None = None

    def member_at(self, key: str, off: int, length: int) -> int | None:
        """Member number of *key* at that byte range (members must be loaded)."""
        if self._where is None:
            self._where = {}
            for i, (_k, o, n) in enumerate(self.members or ()):
                self._where.setdefault((o, n), []).append(i)
        for i in self._where.get((off, length), ()):
            if self.members[i][0] == key:
                return i
        return None


class _Batch:
    """Puts waiting to be uploaded together as one pack."""

    def __init__(self, deadline: float) -> None:
        self.members: dict[str, bytes] = {}
        self.size = 0
        self.deadline = deadline
        self.full = trio.Event()
        self.done = trio.Event()
        self.claimed = False       # one waiter has taken the upload on
        self.frozen = False        # member list snapshotted; no more changes
        self.waiters: Counter[str] = Counter()
        self.locators: dict[str, str] = {}
        self.error: BackendError | None = None


class _Flight:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.locator = ""
        self.error: BackendError | None = None


def _reraise(err: BackendError) -> BackendError:
    """A fresh copy of a shared error, so tasks do not share one traceback."""
    return type(err)(str(err))


class DrivePacking(DriveSession):
    """Packs, caches and locator-less lookups of DriveBackend."""

    async def _put_single(self, key: str, data: bytes) -> str:
        flight = self._flights.get(key)
        if flight is not None:
            await flight.done.wait()
            if flight.error is not None:
                raise _reraise(flight.error)
            return flight.locator
        flight = self._flights[key] = _Flight()
        try:
            with trio.CancelScope(shield=True):   # bounded by retry_time + timeout
                async with self._uploads:
                    info = await self._create("upload", {"name": key,
                                                         "appProperties": {"gffs": "chunk"}}, data)
            flight.locator = str(Loc("file", info["id"]))
            self._remember(key, flight.locator)
            self._written.wrote(ObjectInfo(key, len(data), time.time()))
            return flight.locator
        except BackendError as exc:
            flight.error = exc
            raise
        finally:
            if flight.error is None and not flight.locator:
                flight.error = BackendUnavailable(f"{self.name}: upload of {key[:16]} failed")
            del self._flights[key]
            flight.done.set()

    def _seal(self, batch: _Batch) -> None:
        if self._open is batch:
            self._open = None
        batch.full.set()

    async def _put_packed(self, key: str, data: bytes) -> str:
        batch = self._pending.get(key)
        if batch is None:
            batch = self._open
            if batch is not None and batch.members and (
                    batch.size + len(data) > self.pack_size or len(batch.members) >= MAX_MEMBERS):
                self._seal(batch)
                batch = None
            if batch is None:
                batch = self._open = _Batch(trio.current_time() + self.pack_wait)
            batch.members[key] = data
            batch.size += len(data)
            self._pending[key] = batch
            if batch.size >= self.pack_size or len(batch.members) >= MAX_MEMBERS:
                self._seal(batch)
        batch.waiters[key] += 1
        try:
            if not batch.claimed:
                with trio.move_on_at(batch.deadline):
                    await batch.full.wait()
            if not batch.claimed:
                batch.claimed = True
                with trio.CancelScope(shield=True):   # others wait for this upload
                    await self._upload_batch(batch)
            else:
                await batch.done.wait()
        finally:
            batch.waiters[key] -= 1
            if not batch.frozen and batch.waiters[key] <= 0 and key in batch.members:
                # every put of this key left before the upload started (cancelled)
                batch.size -= len(batch.members.pop(key))
                if self._pending.get(key) is batch:
                    del self._pending[key]
                if not batch.members and self._open is batch:
                    self._open = None
        if batch.error is not None:
            raise _reraise(batch.error)
        return batch.locators[key]

    async def _upload_batch(self, batch: _Batch) -> None:
        try:
            async with self._uploads:
                self._seal(batch)
                batch.frozen = True
                items = list(batch.members.items())
                if items:
                    batch.locators = await self._upload_pack(items)
        except BackendError as exc:
            batch.error = exc
        except BaseException as exc:
            batch.error = BackendError(f"{self.name}: pack upload failed ({type(exc).__name__})")
            raise
        finally:
            batch.frozen = True
            for k in batch.members:
                if self._pending.get(k) is batch:
                    del self._pending[k]
            batch.done.set()

    async def _upload_pack(self, items: list[tuple[str, bytes]]) -> dict[str, str]:
        body, entries, ixo, ixl = build_pack(items)
        name = f"pack-{uuid.uuid4().hex}"
        info = await self._create("pack upload", {"name": name,
                                                  "appProperties": pack_props(len(entries), ixo, ixl)},
                                  body)
        pid = info["id"]
        self._cache_pack(_Pack(pid, len(body), _rfc3339(info.get("createdTime")), len(entries),
                               ixo, ixl, set(), entries))
        locs = {}
        for key, off, n in entries:
            locs[key] = str(Loc("pack", pid, off, n))
            self._remember(key, locs[key])
            self._written.wrote(ObjectInfo(key, n, time.time()))
        log.debug("%s: pack %s holds %d chunks, %d bytes", self.name, pid, len(entries), len(body))
        return locs

    # in-memory maps ---------------------------------------------------------------------------
    def _remember(self, key: str, loc: str) -> None:
        locs = self._recent.setdefault(key, [])
        if loc not in locs:
            locs.append(loc)
        self._recent.move_to_end(key)
        while len(self._recent) > RECENT_KEYS:
            self._recent.popitem(last=False)

    def _forget(self, key: str, loc: str) -> None:
        locs = self._recent.get(key)
        if locs is not None:
            if loc in locs:
                locs.remove(loc)
            if not locs:
                del self._recent[key]

    def _cache_pack(self, pack: _Pack) -> None:
        self._packs[pack.id] = pack
        self._packs.move_to_end(pack.id)
        while len(self._packs) > PACK_CACHE:
            self._packs.popitem(last=False)

    def _drop_pack(self, pid: str) -> None:
        self._packs.pop(pid, None)

    def _pack_from_meta(self, meta: dict) -> _Pack:
        try:
            n, ixo, ixl, dead = parse_pack_props(meta.get("appProperties") or {})
            return _Pack(meta["id"], int(meta.get("size", 0)), _rfc3339(meta.get("createdTime")),
                         n, ixo, ixl, dead)
        except (ValueError, KeyError) as exc:
            raise BackendError(f"{self.name}: Drive file {meta.get('id')} is not a gffs pack") from exc

    async def _pack(self, pid: str) -> _Pack:
        pack = self._packs.get(pid)
        if pack is None:
            meta = await self._call("pack lookup", lambda h: self._exec(h, self._files().get(
                fileId=pid, fields=FILE_FIELDS, supportsAllDrives=True)))
            if meta.get("trashed"):
                raise ObjectMissing(f"{self.name}: Drive pack {pid} is in the trash")
            pack = self._pack_from_meta(meta)
            cached = self._packs.get(pid)      # loaded meanwhile by another task
            if cached is not None:
                return cached
            self._cache_pack(pack)
        return pack

    async def _members(self, pack: _Pack) -> list[tuple[str, int, int]]:
        if pack.members is None:
            raw = await self._read_range(pack.id, pack.ixo, pack.ixl, "pack index read")
            try:
                members = parse_index(raw, pack.ixo)
            except ValueError:
                raise BackendError(f"{self.name}: Drive pack {pack.id} has a damaged index") from None
            if len(members) != pack.n:
                raise BackendError(f"{self.name}: Drive pack {pack.id} index disagrees with its "
                                   f"member count")
            pack.members, pack._where = members, None
        return pack.members

    # lookups without a locator ----------------------------------------------------------------
    def _check_key(self, key: str) -> None:
        if not valid_key(key):
            raise BackendError(f"{self.name}: invalid object key {key!r}")

    def _parse(self, locator: str) -> Loc:
        try:
            return parse_locator(locator)
        except ValueError:
            raise BackendError(f"{self.name}: invalid Drive locator {locator!r}") from None

    async def _locate(self, key: str, locator: str) -> list[Loc]:
        if locator:
            return [self._parse(locator)]
        return (await self._locate_many([key]))[key]

    async def _locate_many(self, keys: list[str]) -> dict[str, list[Loc]]:
        """Locators of keys given without one: remembered puts, else one scan of the folder
        (admin paths only: the index always passes locators)."""
        out: dict[str, list[Loc]] = {}
        for key in keys:
            known = self._recent.get(key)
            if known is not None:
                out[key] = [self._parse(loc) for loc in known]
        todo = {k for k in keys if k not in out}
        if not todo:
            return out
        self.stats["scans"] += 1
        for k in todo:
            out[k] = []
        async for page in self._pages():
            packs = []
            for meta in page:
                props = meta.get("appProperties") or {}
                if props.get("gffs") == "chunk" and meta.get("name") in todo:
                    out[meta["name"]].append(Loc("file", meta["id"]))
                elif props.get("gffs") == "pack":
                    packs.append(meta)
            for pack, members in await self._page_members(packs):
                for i, (k, off, n) in enumerate(members):
                    if k in todo and i not in pack.dead:
                        out[k].append(Loc("pack", pack.id, off, n))
        for k in todo:
            for loc in out[k]:
                self._remember(k, str(loc))
        return out

    async def _pages(self) -> AsyncIterator[list[dict]]:
        folder = await self._folder()
        q = f"'{folder}' in parents and trashed = false"
        token = None
        while True:
            kw = {"q": q, "fields": LIST_FIELDS, "pageSize": 1000, "supportsAllDrives": True,
                  "includeItemsFromAllDrives": True}
            if token:
                kw["pageToken"] = token
            res = await self._call("list", lambda h, kw=kw: self._exec(h, self._files().list(**kw)))
            yield res.get("files", [])
            token = res.get("nextPageToken")
            if not token:
                return

    async def _page_members(self, metas: list[dict]) -> list[tuple[_Pack, list]]:
        """Member lists of the packs of one listing page, fetched a few at a time."""
        out: list = [None] * len(metas)
        limiter = trio.CapacityLimiter(4)

        async def one(i: int, meta: dict) -> None:
            async with limiter:
                pack = self._packs.get(meta["id"])
                if pack is None:
                    pack = self._pack_from_meta(meta)
                    self._cache_pack(pack)
                try:
                    out[i] = (pack, await self._members(pack))
                except ObjectMissing:       # deleted while we listed
                    self._drop_pack(pack.id)
        async with trio.open_nursery() as nursery:
            for i, meta in enumerate(metas):
                nursery.start_soon(one, i, meta)
        return [x for x in out if x is not None]
