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
thread: httplib2 is not thread-safe) under ``trio.fail_after(timeout)``; 403
rate-limit answers, 429, 5xx, timeouts and connection errors are retried with
exponential backoff with jitter for at most ``retry_time`` seconds, then
raise BackendUnavailable.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import logging
import os
import stat
import sys
import threading
import time
import uuid
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import AsyncIterator, Callable, TypeVar
from urllib.parse import urlsplit

import trio

from gffs_backends.base import (Backend, BackendError, BackendFull, BackendUnavailable, Capacity,
                                MalformedAnswer, ObjectInfo, ObjectMissing, answers_checked_class,
                                check_meta_name, check_meta_prefix, in_thread, with_retry)
from gffs_backends.gdrive_fresh import RecentWrites
from gffs_backends.gdrive_pack import (MAX_MEMBERS, Loc, build_pack, encode_dead, pack_props,
                                       parse_index, parse_locator, parse_pack_props, valid_id,
                                       valid_key)

log = logging.getLogger(__name__)
T = TypeVar("T")

DRIVE_SCOPE = "https://www.googleapis.com/auth/drive"
FOLDER_MIME = "application/vnd.google-apps.folder"
OCTET = "application/octet-stream"
RESUMABLE_MIN = 5 << 20          # Drive: multipart up to 5 MB, resumable above
FILE_FIELDS = "id,name,size,createdTime,md5Checksum,trashed,appProperties"
LIST_FIELDS = f"nextPageToken,files({FILE_FIELDS})"
ID_BATCH = 100
RECENT_KEYS = 65536              # key -> locators remembered for locator-less calls
PACK_CACHE = 256                 # pack metadata (and member lists) kept in memory
RATE_REASONS = {"rateLimitExceeded", "userRateLimitExceeded"}
FULL_REASONS = {"storageQuotaExceeded", "teamDriveFileLimitExceeded",
                "numChildrenInNonRootLimitExceeded"}
CONFIG_KEYS = {"folder", "credentials", "api_endpoint", "pack_size_mb", "pack_wait", "timeout",
               "retry_time", "max_creates_per_s"}
CREATE_BURST = 5                 # file creates allowed back to back before pacing starts

def _camel(upper_snake: str) -> str:
    head, *rest = upper_snake.lower().split("_")
    return head + "".join(w.capitalize() for w in rest)


def error_reason(content: bytes) -> str:
    """The reason of a Drive error body, in the classic camelCase spelling, from either
    form Google answers: ``error.errors[0].reason`` (``userRateLimitExceeded``), or the
    newer one without ``errors[]``: the ``reason`` of a google.rpc.ErrorInfo in
    ``error.details`` (``USER_RATE_LIMIT_EXCEEDED``), else ``error.status``
    (``RESOURCE_EXHAUSTED`` is a rate limit), else a message saying "rate limit"."""
    try:
        err = json.loads(content).get("error", {})
        classic = (err.get("errors") or [{}])[0].get("reason")
        if isinstance(classic, str) and classic:
            return classic
        for detail in err.get("details") or []:
            if isinstance(detail, dict) and isinstance(detail.get("reason"), str):
                return _camel(detail["reason"])
        status = str(err.get("status") or "")
        if status == "RESOURCE_EXHAUSTED" or "rate limit" in str(err.get("message", "")).lower():
            return "rateLimitExceeded"
        return status
    except (ValueError, AttributeError, TypeError, IndexError):
        return ""


class DailyLimitReached(BackendUnavailable):
    """Drive's daily upload quota is used up: temporary, but not worth retrying today."""


def _retry_now(err: BackendError) -> bool:
    """Retry at once (with backoff): a temporary failure, except an exhausted daily quota
    and an answer that makes no sense (asking again gets the same)."""
    return err.temporary and not isinstance(err, (DailyLimitReached, MalformedAnswer))


async def _in_thread(fn: Callable[[], T]) -> T:
    return await in_thread(fn)


def _rfc3339(text: str | None) -> float:
    if not text:
        return 0.0
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


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


def load_credentials(path: Path, where: str):
    """google-auth credentials from a service-account key or an installed-app token file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ValueError(f"{where}: credentials file {path} does not exist") from None
    except OSError as exc:
        raise ValueError(f"{where}: cannot stat credentials file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{where}: credentials file {path} is not a regular file")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"{where}: credentials file {path} is accessible by other users "
                         f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{where}: cannot read credentials file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{where}: credentials file {path} is not UTF-8 JSON") from None
    try:
        info = json.loads(text)
    except ValueError:
        raise ValueError(f"{where}: credentials file {path} is not valid JSON") from None
    if not isinstance(info, dict):
        raise ValueError(f"{where}: credentials file {path} is not a JSON object")
    if info.get("type") == "service_account":
        missing = [k for k in ("client_email", "private_key", "token_uri") if not info.get(k)]
        if missing:
            raise ValueError(f"{where}: service-account key {path} lacks {', '.join(missing)}")
        from google.oauth2 import service_account
        try:
            return service_account.Credentials.from_service_account_info(info, scopes=[DRIVE_SCOPE])
        except Exception:   # the library's message could quote key material: say nothing of it
            raise ValueError(f"{where}: service-account key {path} has an unusable "
                             f"private_key") from None
    if "installed" in info or "web" in info:
        raise ValueError(f"{where}: {path} is an OAuth client-secrets file, not a token; create "
                         f"a token file with: python -m gffs_backends.gdrive authorize {path} TOKEN")
    if info.get("type", "authorized_user") == "authorized_user":
        missing = [k for k in ("client_id", "client_secret", "refresh_token") if not info.get(k)]
        if missing:
            raise ValueError(f"{where}: installed-app token file {path} lacks {', '.join(missing)}")
        import google.oauth2.credentials
        try:
            creds = google.oauth2.credentials.Credentials.from_authorized_user_info(info)
        except Exception:
            raise ValueError(f"{where}: installed-app token file {path} is malformed") from None
        # google-auth ignores the file's token_uri (always Google's); honour it when given
        uri = info.get("token_uri")
        if isinstance(uri, str) and uri.startswith(("https://", "http://")) \
                and uri != creds.token_uri:
            creds = creds.with_token_uri(uri)
        return creds
    raise ValueError(f"{where}: credentials file {path} is neither a service-account key "
                     f"nor an installed-app token file")


@answers_checked_class
class DriveBackend(Backend):
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

    # threads, http, retries -------------------------------------------------------------------
    def _http(self):
        h = getattr(self._tls, "http", None)
        if h is None:
            import google_auth_httplib2
            import httplib2
            raw = httplib2.Http(timeout=self.timeout)
            h = google_auth_httplib2.AuthorizedHttp(self._creds, http=raw)
            self._tls.http = h
            with self._http_lock:
                self._https.append(raw)
        return h

    def _exec(self, http, req):
        if self._plain and req.uri.startswith("https://") and urlsplit(req.uri).netloc == self._plain:
            req.uri = "http://" + req.uri[len("https://"):]
        return req.execute(http=http)

    def _run(self, fn: Callable[[object], T]) -> T:
        """In a worker thread: this thread's http, a valid token (refreshed once, locked)."""
        http = self._http()
        if not self._creds.valid:
            import google_auth_httplib2
            with self._cred_lock:
                if not self._creds.valid:
                    self._creds.refresh(google_auth_httplib2.Request(http.http))
        return fn(http)

    def _translate(self, what: str, exc: BaseException) -> BackendError:
        """The BackendError of a failed request (retried when _retry_now says so)."""
        from google.auth import exceptions as gexc
        from googleapiclient.errors import HttpError
        import httplib2
        prefix = f"{self.name}: Drive {what}"
        if isinstance(exc, HttpError):
            status = exc.resp.status
            reason = error_reason(exc.content)
            text = f"{prefix} failed: HTTP {status}{' ' + reason if reason else ''}"
            if status == 404:
                return ObjectMissing(f"{prefix}: not found (HTTP 404)")
            if status == 429 or (status == 403 and reason in RATE_REASONS):
                return BackendUnavailable(f"{text} (rate limited)")
            if status == 403 and reason in FULL_REASONS:
                return BackendFull(f"{prefix}: Drive is full ({reason})")
            if status == 403 and reason == "dailyLimitExceeded":
                return DailyLimitReached(f"{text} (daily limit; retry tomorrow)")
            if status >= 500 or status == 408:
                return BackendUnavailable(text)
            if status == 401:
                return BackendError(f"{prefix}: credentials rejected (HTTP 401)")
            return BackendError(text)
        if isinstance(exc, trio.TooSlowError):
            return BackendUnavailable(f"{prefix} timed out after {self.timeout:g}s")
        if isinstance(exc, gexc.RefreshError):
            if getattr(exc, "retryable", False):
                return BackendUnavailable(f"{prefix}: token refresh failed temporarily")
            return BackendError(f"{self.name}: Drive credentials were rejected by the token "
                                f"endpoint (revoked or invalid key/token)")
        if isinstance(exc, gexc.TransportError):
            return BackendUnavailable(f"{prefix}: cannot reach the token endpoint")
        if isinstance(exc, (OSError, httplib2.HttpLib2Error, http.client.HTTPException)):
            return BackendUnavailable(f"{prefix}: connection failed ({type(exc).__name__})")
        if isinstance(exc, (ValueError, KeyError, TypeError)):   # malformed answers
            return MalformedAnswer(f"{prefix}: unexpected answer ({type(exc).__name__})")
        raise exc

    async def _call(self, what: str, fn: Callable[[object], T]) -> T:
        """Run ``fn(http)`` in a worker thread, retrying temporary failures with backoff."""
        return await with_retry(lambda: _in_thread(lambda: self._run(fn)), timeout=self.timeout,
                                classify=lambda exc: self._translate(what, exc),
                                retry_time=self.retry_time, backoff=self.backoff,
                                backoff_max=self.backoff_max, retry_if=_retry_now,
                                on_retry=self._note_retry)

    def _note_retry(self, err: BackendError, attempt: int, delay: float) -> None:
        self.stats["retries"] += 1
        self.delays = (self.delays + [delay])[-32:]
        log.warning("%s; retry %d in %.2fs", err, attempt, delay)

    def _files(self):
        return self._svc.files()

    # folder, ids ------------------------------------------------------------------------------
    async def _folder(self) -> str:
        if self._folder_id is None:
            async with self._folder_lock:
                if self._folder_id is None:
                    self._folder_id = await self._resolve_folder()
        return self._folder_id

    async def _resolve_folder(self) -> str:
        name = self.folder
        if valid_id(name) and len(name) >= 25:
            try:
                meta = await self._call("folder lookup", lambda h: self._exec(h, self._files().get(
                    fileId=name, fields="id,mimeType,trashed", supportsAllDrives=True)))
            except ObjectMissing:
                meta = None
            if meta is not None:
                if meta.get("mimeType") != FOLDER_MIME or meta.get("trashed"):
                    raise BackendError(f"{self.name}: Drive item {name} is not a folder")
                return meta["id"]
        esc = name.replace("\\", "\\\\").replace("'", "\\'")
        q = f"name = '{esc}' and mimeType = '{FOLDER_MIME}' and trashed = false"
        res = await self._call("folder lookup", lambda h: self._exec(h, self._files().list(
            q=q, fields="files(id,name)", pageSize=10, supportsAllDrives=True,
            includeItemsFromAllDrives=True)))
        found = res.get("files", [])
        if len(found) > 1:
            raise BackendError(f"{self.name}: {len(found)} Drive folders are named {name!r}; "
                               f"put the folder's id in the config")
        if found:
            return found[0]["id"]
        meta = await self._call("folder create", lambda h: self._exec(h, self._files().create(
            body={"name": name, "mimeType": FOLDER_MIME}, fields="id", supportsAllDrives=True)))
        log.info("%s: created Drive folder %r (%s)", self.name, name, meta["id"])
        return meta["id"]

    async def _new_id(self) -> str:
        while not self._ids:
            async with self._ids_lock:
                if not self._ids:
                    res = await self._call("generateIds", lambda h: self._exec(
                        h, self._files().generateIds(count=ID_BATCH, space="drive", type="files")))
                    self._ids.extend(i for i in res.get("ids", []) if valid_id(i))
        return self._ids.popleft()

    # uploads ----------------------------------------------------------------------------------
    async def _pace(self) -> None:
        """Token bucket: at most ``create_rate`` file creates per second after a short burst
        (Drive sustains about 2 creates/s; going faster only earns 403 rate-limit answers)."""
        if self.create_rate <= 0:
            return
        async with self._pace_lock:
            tokens, when = self._bucket
            now = time.monotonic()
            tokens = min(float(CREATE_BURST), tokens + (now - when) * self.create_rate)
            if tokens < 1:
                await trio.sleep((1 - tokens) / self.create_rate)
                tokens, now = 1.0, time.monotonic()
            self._bucket = (tokens - 1, now)

    async def _create(self, what: str, meta: dict, body: bytes) -> dict:
        """Create a Drive file with content, idempotently (client-generated id: a retry of a
        create that did land answers 409 and is then confirmed with a get)."""
        from googleapiclient.http import MediaIoBaseUpload
        folder = await self._folder()
        fid = await self._new_id()
        meta = dict(meta, id=fid, parents=[folder], mimeType=OCTET)
        md5 = await _in_thread(lambda: hashlib.md5(body).hexdigest())
        await self._pace()

        def run(h):
            media = MediaIoBaseUpload(io.BytesIO(body), mimetype=OCTET,
                                      resumable=len(body) > RESUMABLE_MIN)
            req = self._files().create(body=meta, media_body=media, fields=FILE_FIELDS,
                                       supportsAllDrives=True)
            try:
                return self._exec(h, req)
            except Exception as exc:
                if getattr(getattr(exc, "resp", None), "status", None) != 409:
                    raise
            return self._exec(h, self._files().get(fileId=fid, fields=FILE_FIELDS,
                                                   supportsAllDrives=True))
        info = await self._call(what, run)
        self.stats["creates"] += 1
        if not isinstance(info, dict) or info.get("id") != fid:
            raise MalformedAnswer(f"{self.name}: Drive {what}: the answer does not name the "
                                  f"file created")
        if int(info.get("size", -1)) != len(body) or info.get("md5Checksum", md5) != md5:
            try:
                await self._delete_file(fid)
            except BackendError:
                pass
            raise BackendUnavailable(f"{self.name}: Drive {what}: stored size/checksum differ "
                                     f"from what was sent; upload discarded")
        return info

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

    async def _read_range(self, fid: str, off: int, length: int, what: str = "read") -> bytes:
        def run(h):
            req = self._files().get_media(fileId=fid, supportsAllDrives=True)
            req.headers["range"] = f"bytes={off}-{off + length - 1}"
            return self._exec(h, req)
        data = await self._call(what, run)
        self.stats["ranged_reads"] += 1
        if len(data) != length:
            if len(data) >= off + length:       # the server ignored Range
                return data[off:off + length]
            raise BackendUnavailable(f"{self.name}: Drive {what}: short read "
                                     f"({len(data)} of {length} bytes)")
        return data

    async def _delete_file(self, fid: str) -> None:
        try:
            await self._call("delete", lambda h: self._exec(h, self._files().delete(
                fileId=fid, supportsAllDrives=True)))
        except ObjectMissing:
            pass

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
        """The folder can be found (or created under its name, as the first put would)."""
        await self._folder()

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


# `python -m gffs_backends.gdrive authorize CLIENT_SECRETS TOKEN_FILE` ----------------------------

def _authorize(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m gffs_backends.gdrive authorize CLIENT_SECRETS.json TOKEN_FILE",
              file=sys.stderr)
        return 2
    from google_auth_oauthlib.flow import InstalledAppFlow
    secrets_path, token_path = argv
    flow = InstalledAppFlow.from_client_secrets_file(secrets_path, scopes=[DRIVE_SCOPE])
    creds = flow.run_local_server(port=0, open_browser=False)
    info = json.loads(creds.to_json())
    info["type"] = "authorized_user"
    fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f)
    os.chmod(token_path, 0o600)
    print(f"token written to {token_path} (mode 600)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "authorize":
        sys.exit(_authorize(sys.argv[2:]))
    print("usage: python -m gffs_backends.gdrive authorize CLIENT_SECRETS.json TOKEN_FILE",
          file=sys.stderr)
    sys.exit(2)
