"""The Drive session: per-thread HTTP clients with one token refresh, every request
through with_retry (timeout, error classification, backoff), the folder and ids, create
pacing, single-file uploads, ranged reads and deletes."""

from __future__ import annotations

import contextvars
import hashlib
import http.client
import io
import json
import logging
import socket
import time
from datetime import datetime
from typing import Callable, TypeVar
from urllib.parse import urlsplit

import trio

from gffs_backends.base import (Backend, BackendError, BackendFull, BackendUnavailable,
                                EndpointRefused, MalformedAnswer, ObjectMissing, in_thread,
                                retry_at_check, with_retry)
from gffs_backends.gdrive_pack import valid_id


log = logging.getLogger("gffs_backends.gdrive")
T = TypeVar("T")

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


class DriveRefused(EndpointRefused):
    """Nothing listens at the API endpoint (refused, or its host does not resolve)."""


# set while check() runs: a mount's check retries temporary failures, but not a refusal
_CHECKING: contextvars.ContextVar[bool] = contextvars.ContextVar("gdrive_checking",
                                                                  default=False)


class DailyLimitReached(BackendUnavailable):
    """Drive's daily upload quota is used up: temporary, but not worth retrying today."""


def _retry_now(err: BackendError) -> bool:
    """Retry at once (with backoff): a temporary failure, except an exhausted daily quota
    and an answer that makes no sense (asking again gets the same)."""
    if _CHECKING.get() and not retry_at_check(err):
        return False        # a wrong api_endpoint or no network: say so at once
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


class DriveSession(Backend):
    """The request layer of DriveBackend (state is set up by DriveBackend.__init__)."""

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
        if isinstance(exc, (ConnectionRefusedError, socket.gaierror,
                            httplib2.ServerNotFoundError)):
            return DriveRefused(f"{prefix}: connection failed ({type(exc).__name__})")
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
