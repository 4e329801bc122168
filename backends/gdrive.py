"""Google Drive backend (Drive API v3 through google-api-python-client).

Drive creates about 2 files per second and uploads about 750 GiB per day per
user, so small chunks are *packed*: concurrent puts collect in a batch for up to
``pack_wait`` seconds (or until the batch holds ``pack_size`` bytes or 1024
members), then one task uploads the batch as one Drive file and every put of the
batch returns its locator ``pack:<fileId>:<offset>:<length>``. A put returns only
once Drive has answered the create with the file's size and MD5 matching what
was sent. Chunks of at least half the pack size are stored alone as
``file:<fileId>`` (a Drive file named by the key).

A pack carries its own member index (after the data) and its tombstones (a
bitmap in appProperties), so ``list()`` works from Drive alone after a restart.
A deleted member is marked dead; the pack file is deleted with its last member.
Reads of a packed chunk fetch only its byte range. See docs/backends/gdrive.md.

Metadata objects (index backups) are Drive files in the same folder named by the
object's name, appProperties gffs="meta"; list() yields only gffs="chunk" files
and pack members, so it never returns them. A put creates the new file first and
then deletes older files of that name.

Every blocking client call runs in a worker thread (one httplib2.Http per
thread: httplib2 is not thread-safe) through base.with_retry, each attempt
bounded by ``timeout``; 403 rate-limit answers, 429, 5xx, timeouts and
connection errors are retried with exponential backoff with jitter for at most
``retry_time`` seconds, then raise BackendUnavailable.

The code is in four rooms: gdrive_session.py (HTTP, token refresh, retries,
folder, pacing, single uploads), gdrive_batch.py (packs, caches, locator-less
lookups), gdrive_auth.py (credentials and the authorize command) and this file
(configuration and the Backend interface).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter, OrderedDict, deque
from pathlib import Path
from typing import AsyncIterator
from urllib.parse import urlsplit

import trio

from gffs_backends.base import (BackendError, Capacity, ObjectInfo, ObjectMissing,
                                answers_checked_class, check_meta_name, check_meta_prefix)
from gffs_backends.gdrive_auth import DRIVE_SCOPE, _authorize, load_credentials
from gffs_backends.gdrive_batch import DrivePacking, _Batch, _Flight, _Pack
from gffs_backends.gdrive_fresh import RecentWrites
from gffs_backends.gdrive_pack import Loc, encode_dead, valid_key
from gffs_backends.gdrive_session import (CONFIG_KEYS, CREATE_BURST, FILE_FIELDS, LIST_FIELDS,
                                          _CHECKING, DailyLimitReached, _rfc3339, error_reason)

log = logging.getLogger("gffs_backends.gdrive")

__all__ = ["DRIVE_SCOPE", "DailyLimitReached", "DriveBackend", "error_reason", "load_credentials"]


@answers_checked_class
class DriveBackend(DrivePacking):
    def __init__(self, name: str, *, folder: str, credentials, api_endpoint: str | None = None,
                 pack_size: int = 8 << 20, pack_wait: float = 0.5, timeout: float = 30.0,
                 retry_time: float = 40.0, backoff: float = 0.5, backoff_max: float = 16.0,
                 max_uploads: int = 3, max_creates_per_s: float = 2.0) -> None:
        super().__init__(name)
        from googleapiclient.discovery import build
        self.folder = folder
        self.pack_size = pack_size
        self.large = max(1, pack_size // 2)
        self.pack_wait = pack_wait
        self.timeout = timeout
        self.retry_time = retry_time
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.api_endpoint = api_endpoint
        self.create_rate = max_creates_per_s
        self._bucket = (float(CREATE_BURST), time.monotonic())   # tokens, when
        self._pace_lock = trio.Lock()
        self._creds = credentials
        opts = {"api_endpoint": api_endpoint} if api_endpoint else None
        self._svc = build("drive", "v3", credentials=credentials, static_discovery=True,
                          client_options=opts, cache_discovery=False)
        # the client keeps https for media-upload URLs when api_endpoint is plain http
        self._plain = urlsplit(api_endpoint).netloc if api_endpoint and \
            api_endpoint.startswith("http://") else None
        self._tls = threading.local()
        self._https: list = []
        self._http_lock = threading.Lock()
        self._cred_lock = threading.Lock()
        self._folder_id: str | None = None
        self._folder_lock = trio.Lock()
        self._ids: deque[str] = deque()
        self._ids_lock = trio.Lock()
        self._uploads = trio.CapacityLimiter(max_uploads)
        self._open: _Batch | None = None
        self._pending: dict[str, _Batch] = {}
        self._flights: dict[str, _Flight] = {}
        self._recent: OrderedDict[str, list[str]] = OrderedDict()
        self._written = RecentWrites()     # what a lagging files.list may not show yet
        self._packs: OrderedDict[str, _Pack] = OrderedDict()
        self._pack_locks: dict[str, trio.Lock] = {}
        self.stats: Counter[str] = Counter()   # retries, creates, ranged_reads, scans
        self.delays: list[float] = []          # the last backoff sleeps (tests, diagnostics)

    def __repr__(self) -> str:
        return f"<DriveBackend {self.name!r} folder={self.folder!r}>"

    @classmethod
    def from_config(cls, name: str, options: dict) -> "DriveBackend":
        where = f"backend {name!r}"
        extra = sorted(set(options) - CONFIG_KEYS)
        if extra:
            raise ValueError(f"{where}: unknown option {extra[0]!r}")
        folder = options.get("folder")
        if not isinstance(folder, str) or not folder.strip():
            raise ValueError(f"{where}: 'folder' (a Drive folder name or id) is required")
        cred = options.get("credentials")
        if not isinstance(cred, str) or not cred:
            raise ValueError(f"{where}: 'credentials' (path of a service-account key or "
                             f"installed-app token file) is required")
        endpoint = options.get("api_endpoint")
        if endpoint is not None and (not isinstance(endpoint, str)
                                     or not endpoint.startswith(("http://", "https://"))
                                     or not urlsplit(endpoint).netloc):
            raise ValueError(f"{where}: 'api_endpoint' must be an http(s) URL")

        def number(key: str, default: float, lo: float, hi: float) -> float:
            v = options.get(key, default)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise ValueError(f"{where}: '{key}' must be a number between {lo:g} and {hi:g}")
            return float(v)
        pack_mb = number("pack_size_mb", 8, 1, 1024)
        pack_wait = number("pack_wait", 0.5, 0, 10)
        timeout = number("timeout", 30, 0.1, 3600)
        retry_time = number("retry_time", 40, 0, 3600)
        rate = number("max_creates_per_s", 2, 0, 1000)
        creds = load_credentials(Path(cred).expanduser(), where)
        return cls(name, folder=folder.strip(), credentials=creds, api_endpoint=endpoint,
                   pack_size=int(pack_mb * (1 << 20)), pack_wait=pack_wait, timeout=timeout,
                   retry_time=retry_time, max_creates_per_s=rate)

    # the Backend interface --------------------------------------------------------------------
    async def put(self, key: str, data: bytes) -> str:
        self._check_key(key)
        data = bytes(data)
        known = self._recent.get(key)
        if known:
            return known[0]
        if len(data) >= self.large:
            return await self._put_single(key, data)
        return await self._put_packed(key, data)

    async def get(self, key: str, locator: str = "") -> bytes:
        self._check_key(key)
        locs = await self._locate(key, locator)
        err: BackendError = ObjectMissing(f"{self.name}: chunk {key} is missing")
        for loc in locs:
            try:
                return await self._get_at(key, loc)
            except ObjectMissing as exc:
                err = exc
        raise err

    async def _get_at(self, key: str, loc: Loc) -> bytes:
        missing = ObjectMissing(f"{self.name}: chunk {key} is missing")
        if loc.kind == "file":
            try:
                return await self._call("read", lambda h: self._exec(
                    h, self._files().get_media(fileId=loc.file_id, supportsAllDrives=True)))
            except ObjectMissing:
                raise missing from None
        try:
            pack = await self._pack(loc.file_id)
            if loc.offset + loc.length > pack.ixo:
                raise missing
            if pack.dead:
                await self._members(pack)
                i = pack.member_at(key, loc.offset, loc.length)
                if i is None or i in pack.dead:
                    raise missing
            if loc.length == 0:
                return b""
            return await self._read_range(pack.id, loc.offset, loc.length)
        except ObjectMissing:
            self._drop_pack(loc.file_id)
            raise missing from None

    async def stat(self, key: str, locator: str = "") -> ObjectInfo | None:
        self._check_key(key)
        for loc in await self._locate(key, locator):
            if loc.kind == "file":
                try:
                    meta = await self._call("stat", lambda h: self._exec(h, self._files().get(
                        fileId=loc.file_id, fields=FILE_FIELDS, supportsAllDrives=True)))
                except ObjectMissing:
                    continue
                if meta.get("name") == key and not meta.get("trashed"):
                    return ObjectInfo(key, int(meta.get("size", 0)), _rfc3339(meta.get("createdTime")))
                continue
            try:
                pack = await self._pack(loc.file_id)
                if loc.offset + loc.length > pack.ixo:
                    continue
                if pack.dead or pack.members is not None:
                    await self._members(pack)
                    i = pack.member_at(key, loc.offset, loc.length)
                    if i is None or i in pack.dead:
                        continue
            except ObjectMissing:
                self._drop_pack(loc.file_id)
                continue
            return ObjectInfo(key, loc.length, pack.mtime)
        return None

    async def delete(self, key: str, locator: str = "") -> None:
        await self.delete_many([(key, locator)])

    async def delete_many(self, items: list[tuple[str, str]]) -> None:
        for key, _ in items:
            self._check_key(key)
        bare = await self._locate_many([k for k, loc in items if not loc])
        by_pack: dict[str, list[tuple[str, Loc]]] = {}
        for key, locator in items:
            self._written.deleted(key)
            for loc in ([self._parse(locator)] if locator else bare[key]):
                if loc.kind == "file":
                    await self._delete_single(key, loc.file_id)
                    self._forget(key, str(loc))
                else:
                    by_pack.setdefault(loc.file_id, []).append((key, loc))
        for pid, dels in by_pack.items():
            await self._tombstone(pid, dels)

    async def _delete_single(self, key: str, fid: str) -> None:
        """Delete a chunk stored alone, after checking the Drive file is that chunk."""
        try:
            meta = await self._call("stat", lambda h: self._exec(h, self._files().get(
                fileId=fid, fields=FILE_FIELDS, supportsAllDrives=True)))
        except ObjectMissing:
            return
        if meta.get("name") != key or (meta.get("appProperties") or {}).get("gffs") != "chunk":
            log.error("%s: locator file:%s does not hold chunk %s; not deleted", self.name, fid, key)
            return
        await self._delete_file(fid)

    async def _tombstone(self, pid: str, dels: list[tuple[str, Loc]]) -> None:
        lock = self._pack_locks.setdefault(pid, trio.Lock())
        try:
            async with lock:
                for key, loc in dels:
                    self._forget(key, str(loc))
                try:
                    pack = await self._pack(pid)
                    await self._members(pack)  # fails with ObjectMissing for a vanished pack
                except ObjectMissing:
                    self._drop_pack(pid)
                    return
                idx = set()
                for key, loc in dels:
                    i = pack.member_at(key, loc.offset, loc.length)
                    if i is not None:
                        idx.add(i)
                dead = pack.dead | idx
                if dead == pack.dead:
                    return
                if len(dead) >= pack.n:
                    await self._delete_file(pid)
                    self._drop_pack(pid)
                    log.debug("%s: deleted pack %s (all %d members dead)", self.name, pid, pack.n)
                    return
                props = encode_dead(dead, pack.n)
                try:
                    await self._call("tombstone update", lambda h: self._exec(h, self._files().update(
                        fileId=pid, body={"appProperties": props}, fields="id",
                        supportsAllDrives=True)))
                except ObjectMissing:
                    self._drop_pack(pid)
                    return
                pack.dead = dead
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._pack_locks.pop(pid, None)

    async def list(self) -> AsyncIterator[ObjectInfo]:  # type: ignore[override]
        seen: set[bytes] = set()
        listed: set[str] = set()
        async for page in self._pages():
            infos: list[ObjectInfo] = []
            packs = []
            for meta in page:
                props = meta.get("appProperties") or {}
                if props.get("gffs") == "chunk" and valid_key(meta.get("name")):
                    infos.append(ObjectInfo(meta["name"], int(meta.get("size", 0)),
                                            _rfc3339(meta.get("createdTime"))))
                elif props.get("gffs") == "pack":
                    packs.append(meta)
            for pack, members in await self._page_members(packs):
                infos.extend(ObjectInfo(k, n, pack.mtime) for i, (k, _o, n) in enumerate(members)
                             if i not in pack.dead)
            for info in infos:
                raw = bytes.fromhex(info.key) if len(info.key) % 2 == 0 else info.key.encode()
                if raw not in seen:
                    seen.add(raw)
                    listed.add(info.key)
                    yield info
        for info in self._written.unlisted(listed):     # not in Drive's list index yet
            yield info

    # metadata objects -----------------------------------------------------------------------
    async def _meta_files(self, name: str) -> list[dict]:
        """Drive files holding metadata object *name*, newest first."""
        folder = await self._folder()
        # no quoting needed: check_meta_name admits neither quotes nor backslashes
        q = f"name = '{name}' and '{folder}' in parents and trashed = false"
        res = await self._call("meta lookup", lambda h: self._exec(h, self._files().list(
            q=q, fields=LIST_FIELDS, pageSize=100, supportsAllDrives=True,
            includeItemsFromAllDrives=True)))
        found = [m for m in res.get("files", [])
                 if (m.get("appProperties") or {}).get("gffs") == "meta" and m.get("name") == name]
        found = self._written.meta_files(name, found)
        return sorted(found, key=lambda m: _rfc3339(m.get("createdTime")), reverse=True)

    async def put_meta(self, name: str, data: bytes) -> None:
        check_meta_name(self.name, name)
        older = await self._meta_files(name)
        async with self._uploads:
            info = await self._create("meta upload", {"name": name,
                                                      "appProperties": {"gffs": "meta"}},
                                      bytes(data))
        self._written.wrote_meta(name, dict(info, name=name, appProperties={"gffs": "meta"}))
        for meta in older:
            await self._delete_file(meta["id"])

    async def get_meta(self, name: str) -> bytes:
        check_meta_name(self.name, name)
        for meta in await self._meta_files(name):
            try:
                return await self._call("meta read", lambda h, fid=meta["id"]: self._exec(
                    h, self._files().get_media(fileId=fid, supportsAllDrives=True)))
            except ObjectMissing:
                continue        # replaced meanwhile: try the next one
        raise ObjectMissing(f"{self.name}: metadata object {name} is missing")

    async def list_meta(self, prefix: str = "") -> list[str]:
        check_meta_prefix(self.name, prefix)
        names: set[str] = set()
        async for page in self._pages():
            names.update(m["name"] for m in page
                         if (m.get("appProperties") or {}).get("gffs") == "meta"
                         and isinstance(m.get("name"), str) and m["name"].startswith(prefix))
        return sorted(names | self._written.meta_names(prefix))

    async def delete_meta(self, name: str) -> None:
        check_meta_name(self.name, name)
        for meta in await self._meta_files(name):
            await self._delete_file(meta["id"])
        self._written.deleted_meta(name)

    async def check(self) -> None:
        """The folder can be found (or created under its name, as the first put would).

        Temporary failures are retried as for any request; a refused endpoint is not."""
        token = _CHECKING.set(True)
        try:
            await self._folder()
        finally:
            _CHECKING.reset(token)

    async def capacity(self) -> Capacity | None:
        res = await self._call("about", lambda h: self._exec(h, self._svc.about().get(
            fields="storageQuota")))
        quota = res.get("storageQuota") or {}
        if "limit" not in quota:        # unlimited (or a shared drive): Drive does not say
            return None
        total = int(quota["limit"])
        return Capacity(total, max(0, total - int(quota.get("usage", 0))))

    async def sync(self) -> None:
        """Nothing to do: a put returns only after Drive confirmed the upload."""

    async def close(self) -> None:
        with self._http_lock:
            https, self._https = self._https, []
        for h in https:
            h.close()


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "authorize":
        sys.exit(_authorize(sys.argv[2:]))
    print("usage: python -m gffs_backends.gdrive authorize CLIENT_SECRETS.json TOKEN_FILE",
          file=sys.stderr)
    sys.exit(2)
