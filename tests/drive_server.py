"""A Google Drive v3 HTTP endpoint on loopback, for the gdrive backend's tests.

It answers what google-api-python-client sends: ``files.create`` (metadata only,
``uploadType=multipart`` and ``uploadType=resumable`` sessions, with Drive's
client-generated ids from ``files.generateIds``), ``files.get`` (metadata, or
``alt=media`` with ``Range``), ``files.list`` (``q`` with name / parents /
trashed / mimeType clauses, ``pageSize`` + ``pageToken``), ``files.update``
(appProperties, name, description), ``files.delete``, ``about.get``, and the
OAuth token endpoint (``/token``: service-account JWT grants, verified against
the registered public key, and refresh-token grants). ``fields=`` partial
responses are honoured, so a client that forgets to ask for a field does not get
it here either (as with the real API). Drive's appProperties limits (124 bytes
per key+value, 30 per app) are enforced.

Faults, for the next *count* matching requests (``ops`` restricts them, e.g.
``{"create", "upload"}``): ``inject("rate")`` 403 rateLimitExceeded,
``"user_rate"`` 403 userRateLimitExceeded, ``"429"``, ``"500"``, ``"503"``,
``"quota"`` 403 storageQuotaExceeded, ``"hang"`` (sleep ``seconds`` first),
``"drop"`` (close the connection without an answer), ``"drop_after"`` (carry the
request out, then close the connection without an answer: the client cannot
know it succeeded), ``"garbage"`` (carry the request out, then answer 200 with a JSON
that breaks the API's promises: no ``id``, non-numeric sizes and quota).
``corrupt_reads = n`` flips one byte in each of the next n media downloads.

Real Drive's habits, off by default (the fixtures want a fast, predictable server):
``list_lag = n`` keeps a new file out of ``files.list`` for the next n list calls,
``list_delay = s`` for s seconds (Drive's list index catches up with new files after
a while); ``unsorted = True`` answers listings in an arbitrary (but, across the pages
of one listing, stable) order instead of by creation time; ``error_form = "aip193"``
answers errors in the newer body without ``errors[]`` (``status`` and a
google.rpc.ErrorInfo ``reason`` in ``details``); ``pace(r, burst)`` models Drive's
create rate limit: more than r file creates per second (after a burst) get 403
userRateLimitExceeded, or 429 with ``pace(r, burst, "429")``.

``counts`` counts requests per operation (``create`` counts files actually
created with content), ``media_bytes`` the bytes served by downloads.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import secrets
import string
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

FOLDER_MIME = "application/vnd.google-apps.folder"
ID_CHARS = string.ascii_letters + string.digits + "-_"
API_OPS = frozenset({"create", "upload", "get", "media", "list", "update", "delete", "about",
                     "generateIds"})

FAULTS = {
    "rate": (403, "rateLimitExceeded", "Rate Limit Exceeded"),
    "user_rate": (403, "userRateLimitExceeded", "User Rate Limit Exceeded"),
    "429": (429, "rateLimitExceeded", "Too Many Requests"),
    "500": (500, "backendError", "Backend Error"),
    "503": (503, "backendError", "Service Unavailable"),
    "quota": (403, "storageQuotaExceeded", "The user's Drive storage quota has been exceeded."),
}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _new_id() -> str:
    return "1" + "".join(random.choice(ID_CHARS) for _ in range(32))


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message


@dataclass
class Fault:
    kind: str
    remaining: int
    ops: frozenset[str]
    seconds: float = 0.0


@dataclass
class StoredFile:
    meta: dict
    data: bytes | None = None
    hidden_lists: int = 0        # list calls that still leave it out (index lag)
    listed_from: float = 0.0     # monotonic time from which listings show it


@dataclass
class Session:
    meta: dict
    total: int | None
    data: bytearray = field(default_factory=bytearray)


# fields=... partial responses ---------------------------------------------------------------

def _split_top(s: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in s:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def parse_fields(spec: str) -> dict:
    """'a,b(c,d)' -> {'a': None, 'b': {'c': None, 'd': None}}; None means 'all of it'."""
    tree: dict = {}
    for item in _split_top(spec):
        if "(" in item:
            name, inner = item.split("(", 1)
            tree[name.strip()] = parse_fields(inner.rsplit(")", 1)[0])
        else:
            head, _, rest = item.partition("/")
            if rest:
                tree.setdefault(head, {}).update(parse_fields(rest))
            else:
                tree[item] = None
    return tree


def apply_fields(obj, tree):
    if tree is None or "*" in tree or not isinstance(obj, dict):
        return obj
    out = {}
    for k, sub in tree.items():
        if k in obj:
            v = obj[k]
            out[k] = [apply_fields(x, sub) for x in v] if isinstance(v, list) else apply_fields(v, sub)
    return out


DEFAULT_FILE_FIELDS = parse_fields("kind,id,name,mimeType")


# q=... --------------------------------------------------------------------------------------

_STR = r"'((?:[^'\\]|\\.)*)'"
_CLAUSES = [
    (re.compile(rf"^name\s*=\s*{_STR}$"), lambda m: lambda f: f["name"] == _unq(m.group(1))),
    (re.compile(rf"^{_STR}\s+in\s+parents$"),
     lambda m: lambda f: _unq(m.group(1)) in f.get("parents", [])),
    (re.compile(r"^trashed\s*=\s*(true|false)$"),
     lambda m: lambda f: f.get("trashed", False) == (m.group(1) == "true")),
    (re.compile(rf"^mimeType\s*=\s*{_STR}$"), lambda m: lambda f: f["mimeType"] == _unq(m.group(1))),
    (re.compile(rf"^mimeType\s*!=\s*{_STR}$"), lambda m: lambda f: f["mimeType"] != _unq(m.group(1))),
]


def _unq(s: str) -> str:
    return re.sub(r"\\(.)", r"\1", s)


def parse_q(q: str):
    parts = re.split(r"\s+and\s+(?=(?:[^']*'[^']*')*[^']*$)", q.strip())
    preds = []
    for part in parts:
        for rx, mk in _CLAUSES:
            m = rx.match(part.strip())
            if m:
                preds.append(mk(m))
                break
        else:
            raise ApiError(400, "invalidQuery", f"Invalid Value: unsupported query clause {part!r}")
    return lambda f: all(p(f) for p in preds)


def parse_multipart(body: bytes, boundary: bytes) -> list[tuple[dict, bytes]]:
    """Parts of a multipart/related body, payload bytes exact (the client's email generator
    writes "\n" line ends; a payload may itself end in "\r" or "\n")."""
    delim = b"--" + boundary
    first = body.find(delim)
    if first < 0:
        raise ApiError(400, "badRequest", "multipart body without its boundary")
    nl = b"\r\n" if body[first + len(delim):].startswith(b"\r\n") else b"\n"
    parts = body[first + len(delim):].split(nl + delim)
    out = []
    for p in parts:
        if p.startswith(b"--"):
            break
        if not p.startswith(nl):
            raise ApiError(400, "badRequest", "malformed multipart part")
        p = p[len(nl):]
        cut = p.find(nl + nl)
        if cut < 0:
            raise ApiError(400, "badRequest", "malformed multipart part")
        headers = {}
        for line in p[:cut].decode("latin-1").splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        out.append((headers, p[cut + 2 * len(nl):]))
    return out


class DriveServer:
    def __init__(self, quota_bytes: int = 1 << 40) -> None:
        self.lock = threading.RLock()
        self.files: dict[str, StoredFile] = {}
        self.generated: set[str] = set()
        self.sessions: dict[str, Session] = {}
        self.tokens: set[str] = {"test-token"}
        self.refresh_tokens: dict[str, tuple[str, str]] = {}
        self.sa_keys: dict[str, str] = {}
        self.faults: list[Fault] = []
        self.corrupt_reads = 0
        self.counts: Counter[str] = Counter()
        self.fault_answers: Counter[str] = Counter()
        self.media_bytes = 0
        self.ranges: list[str] = []
        self.quota_bytes = quota_bytes
        self.list_lag = 0
        self.list_delay = 0.0
        self.unsorted = False
        self.error_form = "classic"
        self.create_rate = 0.0
        self.create_burst = 3
        self.rate_answer = "user_rate"
        self._bucket = (0.0, 0.0)           # create tokens, when
        self._order_salt = secrets.token_bytes(8)
        self.httpd: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    # lifecycle -------------------------------------------------------------------------------
    def start(self) -> "DriveServer":
        server = self

        class Handler(_Handler):
            drive = server
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       name="drive-server", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(5)
            self.httpd = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def token_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    # test controls -------------------------------------------------------------------------------
    def inject(self, kind: str, count: int = 1, ops=None, seconds: float = 0.0) -> None:
        if kind not in FAULTS and kind not in ("hang", "drop", "drop_after", "garbage"):
            raise ValueError(kind)
        with self.lock:
            self.faults.append(Fault(kind, count, frozenset(ops or API_OPS), seconds))

    def clear_faults(self) -> None:
        """No faults, and none of real Drive's habits (lag, order, error form, pacing)."""
        with self.lock:
            self.faults.clear()
            self.fault_answers.clear()   # a test counts only what it injected itself
            self.corrupt_reads = 0
            self.list_lag, self.list_delay, self.unsorted = 0, 0.0, False
            self.error_form, self.create_rate, self.rate_answer = "classic", 0.0, "user_rate"

    def add_refresh_token(self, refresh_token: str, client_id: str, client_secret: str) -> None:
        with self.lock:
            self.refresh_tokens[refresh_token] = (client_id, client_secret)

    def add_service_account(self, client_email: str, public_pem: str) -> None:
        with self.lock:
            self.sa_keys[client_email] = public_pem

    def folder_id(self, name: str) -> str | None:
        with self.lock:
            for fid, f in self.files.items():
                if f.meta["name"] == name and f.meta["mimeType"] == FOLDER_MIME:
                    return fid
        return None

    def children(self, parent: str) -> list[dict]:
        with self.lock:
            return [dict(f.meta) for f in self.files.values() if parent in f.meta.get("parents", [])]

    def data_of(self, fid: str) -> bytes | None:
        with self.lock:
            f = self.files.get(fid)
            return None if f is None else f.data

    def remove(self, fid: str) -> None:
        with self.lock:
            self.files.pop(fid, None)

    # request processing (called from handler threads) -------------------------------------------
    def take_fault(self, op: str) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.remaining > 0 and op in f.ops:
                    f.remaining -= 1
                    self.fault_answers[f.kind] += 1
                    return f
        return None

    def pace(self, rate: float, burst: int = 3, answer: str = "user_rate") -> None:
        """Model Drive's create rate limit from now on, starting with a full burst."""
        with self.lock:
            self.create_rate, self.create_burst, self.rate_answer = rate, burst, answer
            self._bucket = (float(burst), time.monotonic())

    def take_create_token(self) -> None:
        """Drive's create rate limit (when ``create_rate`` is set): a token bucket."""
        if self.create_rate <= 0:
            return
        with self.lock:
            tokens, when = self._bucket
            now = time.monotonic()
            tokens = min(float(self.create_burst), tokens + (now - when) * self.create_rate)
            if tokens < 1:
                self._bucket = (tokens, now)
                self.fault_answers["paced"] += 1
                raise ApiError(*FAULTS[self.rate_answer])
            self._bucket = (tokens - 1, now)

    def _used(self) -> int:
        return sum(len(f.data or b"") for f in self.files.values())

    def _check_props(self, props: dict) -> None:
        if len(props) > 30:
            raise ApiError(400, "badRequest", "Too many appProperties (max 30)")
        for k, v in props.items():
            if v is not None and len(k.encode()) + len(str(v).encode()) > 124:
                raise ApiError(400, "badRequest",
                               f"The property {k} exceeds the maximum size of 124 bytes")

    def create(self, meta: dict, data: bytes | None) -> dict:
        with self.lock:
            fid = meta.get("id")
            if fid is not None:
                if fid in self.files:
                    raise ApiError(409, "fileIdInUse", "A file already exists with the provided ID.")
                if fid not in self.generated:
                    raise ApiError(400, "fileIdNotGenerated",
                                   "The provided file ID is not usable.")
            else:
                fid = _new_id()
            parents = meta.get("parents") or ["root"]
            for p in parents:
                if p != "root" and (p not in self.files
                                    or self.files[p].meta["mimeType"] != FOLDER_MIME):
                    raise ApiError(404, "notFound", f"File not found: {p}.")
            props = {k: str(v) for k, v in (meta.get("appProperties") or {}).items()
                     if v is not None}
            self._check_props(props)
            if data is not None and self._used() + len(data) > self.quota_bytes:
                raise ApiError(*FAULTS["quota"])
            now = _now()
            m = {"kind": "drive#file", "id": fid, "name": meta.get("name", "Untitled"),
                 "mimeType": meta.get("mimeType") or "application/octet-stream",
                 "parents": parents, "appProperties": props, "trashed": False,
                 "createdTime": now, "modifiedTime": now}
            if "description" in meta:
                m["description"] = meta["description"]
            if data is not None:
                m["size"] = str(len(data))
                m["md5Checksum"] = hashlib.md5(data).hexdigest()
                self.counts["create"] += 1
            self.files[fid] = StoredFile(m, data, self.list_lag,
                                         time.monotonic() + self.list_delay)
            return dict(m)

    def get(self, fid: str) -> StoredFile:
        with self.lock:
            f = self.files.get(fid)
            if f is None:
                raise ApiError(404, "notFound", f"File not found: {fid}.")
            return f

    def update(self, fid: str, body: dict) -> dict:
        with self.lock:
            f = self.get(fid)
            props = dict(f.meta.get("appProperties", {}))
            for k, v in (body.get("appProperties") or {}).items():
                if v is None:
                    props.pop(k, None)
                else:
                    props[k] = str(v)
            self._check_props(props)
            f.meta["appProperties"] = props
            for k in ("name", "description", "trashed"):
                if k in body:
                    f.meta[k] = body[k]
            f.meta["modifiedTime"] = _now()
            return dict(f.meta)

    def delete(self, fid: str) -> None:
        with self.lock:
            self.get(fid)
            todo = [fid]
            while todo:
                cur = todo.pop()
                self.files.pop(cur, None)
                todo.extend(k for k, f in self.files.items() if cur in f.meta.get("parents", []))

    def list(self, q: str | None, page_size: int, token: str | None) -> dict:
        pred = parse_q(q) if q else (lambda f: True)
        now = time.monotonic()
        with self.lock:
            visible = []
            for f in self.files.values():
                if f.hidden_lists > 0 or now < f.listed_from:
                    f.hidden_lists = max(0, f.hidden_lists - 1)
                    self.counts["unlisted"] += 1
                elif pred(f.meta):
                    visible.append(dict(f.meta))
            if self.unsorted:
                order = lambda m: hashlib.sha256(self._order_salt + m["id"].encode()).digest()
            else:
                order = lambda m: (m["createdTime"], m["id"])
            found = sorted(visible, key=order)
        start = int(token) if token else 0
        page = found[start:start + page_size]
        out = {"kind": "drive#fileList", "incompleteSearch": False, "files": page}
        if start + page_size < len(found):
            out["nextPageToken"] = str(start + page_size)
        return out

    def token(self, form: dict[str, str]) -> dict:
        from google.auth import jwt
        grant = form.get("grant_type")
        with self.lock:
            if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
                assertion = form.get("assertion", "")
                try:
                    claims = jwt.decode(assertion, verify=False)
                    pem = self.sa_keys[claims["iss"]]
                    # google-auth always addresses the grant to Google's token endpoint
                    jwt.decode(assertion, certs=pem,
                               audience=[self.token_uri, "https://oauth2.googleapis.com/token"])
                except Exception:
                    raise ApiError(400, "invalid_grant", "Invalid JWT Signature.") from None
                self.counts["token:jwt"] += 1
            elif grant == "refresh_token":
                want = self.refresh_tokens.get(form.get("refresh_token", ""))
                if want is None or want != (form.get("client_id"), form.get("client_secret")):
                    raise ApiError(400, "invalid_grant", "Token has been expired or revoked.")
                self.counts["token:refresh"] += 1
            else:
                raise ApiError(400, "unsupported_grant_type", "unsupported grant type")
            tok = "ya29." + secrets.token_urlsafe(24)
            self.tokens.add(tok)
        return {"access_token": tok, "expires_in": 3599, "token_type": "Bearer",
                "scope": "https://www.googleapis.com/auth/drive"}


def _garbage(obj):
    """*obj* with what the API promises broken: ids gone, numbers that are not numbers."""
    if isinstance(obj, list):
        return [_garbage(x) for x in obj]
    if not isinstance(obj, dict):
        return obj
    return {k: ("unlimited" if k in ("size", "limit", "usage", "usageInDrive") else _garbage(v))
            for k, v in obj.items() if k not in ("id", "ids")}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True      # headers and body go out in separate writes
    drive: DriveServer

    def log_message(self, *args) -> None:  # quiet
        pass

    # plumbing ------------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", ctype: str = "application/json",
              headers: dict | None = None) -> None:
        self.send_response(status)
        if body or status not in (204, 308):
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict | None = None) -> None:
        if getattr(self, "garbage", False) and status == 200:
            obj = _garbage(obj)
        self._send(status, json.dumps(obj).encode(), headers=headers)

    def _error(self, err: ApiError) -> None:
        if self.path.split("?")[0].endswith("/token"):
            self._json(err.status, {"error": err.reason, "error_description": err.message})
            return
        if self.drive.error_form == "aip193":
            status = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                      404: "NOT_FOUND", 409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED",
                      500: "INTERNAL", 503: "UNAVAILABLE"}.get(err.status, "UNKNOWN")
            snake = re.sub(r"(?<!^)(?=[A-Z])", "_", err.reason).upper()
            self._json(err.status, {"error": {
                "code": err.status, "message": err.message, "status": status,
                "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                             "reason": snake, "domain": "googleapis.com",
                             "metadata": {"service": "drive.googleapis.com"}}]}})
            return
        self._json(err.status, {"error": {
            "code": err.status, "message": err.message,
            "errors": [{"domain": "global", "reason": err.reason, "message": err.message}]}})

    def do_GET(self): self._handle()       # noqa: E704
    def do_POST(self): self._handle()      # noqa: E704
    def do_PUT(self): self._handle()       # noqa: E704
    def do_PATCH(self): self._handle()     # noqa: E704
    def do_DELETE(self): self._handle()    # noqa: E704

    def _handle(self) -> None:
        self.garbage = False                # handlers live on across keep-alive requests
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        parts = urlsplit(self.path)
        qs = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        path = parts.path
        upload = path.startswith("/upload/")
        if upload:
            path = path[len("/upload"):]
        if path.startswith("/drive/v3/"):
            path = path[len("/drive/v3"):]
        try:
            if path == "/token" and self.command == "POST":
                form = {k: v[-1] for k, v in parse_qs(body.decode()).items()}
                self._json(200, self.drive.token(form))
                return
            op = self._op(path, upload, qs)
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in self.drive.tokens:
                raise ApiError(401, "authError", "Invalid Credentials")
            self.drive.counts["req:" + op] += 1
            fault = self.drive.take_fault(op)
            if fault is not None and fault.kind == "garbage":
                self.garbage = True
            elif fault is not None:
                if fault.kind == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if fault.kind == "hang":
                    time.sleep(fault.seconds)
                elif fault.kind == "drop_after":
                    real, self.wfile = self.wfile, io.BytesIO()
                    try:
                        getattr(self, "_op_" + op)(path, qs, body)
                    except ApiError:
                        pass
                    finally:
                        self.wfile = real
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                else:
                    raise ApiError(*FAULTS[fault.kind])
            getattr(self, "_op_" + op)(path, qs, body)
        except ApiError as err:
            self._error(err)

    def _op(self, path: str, upload: bool, qs: dict) -> str:
        m = self.command
        if upload and path == "/files" and m == "POST":
            return "create"
        if upload and path == "/files" and m == "PUT" and "upload_id" in qs:
            return "upload"
        if path == "/files" and m == "POST":
            return "create"
        if path == "/files" and m == "GET":
            return "list"
        if path == "/files/generateIds" and m == "GET":
            return "generateIds"
        if path == "/about" and m == "GET":
            return "about"
        if path.startswith("/files/") and path.count("/") == 2:
            if m == "GET":
                return "media" if qs.get("alt") == "media" else "get"
            if m == "PATCH":
                return "update"
            if m == "DELETE":
                return "delete"
        raise ApiError(404, "notFound", f"no such endpoint {m} {path}")

    def _fields(self, qs: dict, default=DEFAULT_FILE_FIELDS):
        return parse_fields(qs["fields"]) if qs.get("fields") else default

    # operations ----------------------------------------------------------------------------------
    def _op_create(self, path, qs, body) -> None:
        d = self.drive
        kind = qs.get("uploadType")
        if kind in ("multipart", "media", "resumable"):
            d.take_create_token()
        ctype = self.headers.get("Content-Type", "")
        if kind == "multipart":
            m = re.search(r'boundary="?([^";]+)"?', ctype)
            if not m:
                raise ApiError(400, "badRequest", "multipart without boundary")
            parts = parse_multipart(body, m.group(1).encode())
            if len(parts) != 2:
                raise ApiError(400, "badRequest", f"multipart with {len(parts)} parts")
            meta = json.loads(parts[0][1] or b"{}")
            self._json(200, apply_fields(d.create(meta, parts[1][1]), self._fields(qs)))
        elif kind == "resumable":
            meta = json.loads(body or b"{}")
            total = self.headers.get("X-Upload-Content-Length")
            sid = secrets.token_hex(12)
            with d.lock:
                d.sessions[sid] = Session(meta, int(total) if total else None)
            fields = qs.get("fields", "")
            loc = (f"http://127.0.0.1:{d.port}/upload/drive/v3/files?uploadType=resumable"
                   f"&upload_id={sid}" + (f"&fields={fields}" if fields else ""))
            self._send(200, b"", headers={"Location": loc})
        elif kind == "media":
            self._json(200, apply_fields(d.create({}, body), self._fields(qs)))
        else:
            meta = json.loads(body or b"{}")
            self._json(200, apply_fields(d.create(meta, None), self._fields(qs)))

    def _op_upload(self, path, qs, body) -> None:
        d = self.drive
        with d.lock:
            s = d.sessions.get(qs["upload_id"])
        if s is None:
            raise ApiError(404, "notFound", "upload session expired")
        cr = self.headers.get("Content-Range", "")
        m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", cr)
        q = re.match(r"bytes \*/(\d+|\*)", cr)
        if m:
            start, end, total = int(m.group(1)), int(m.group(2)), m.group(3)
            if start != len(s.data) or end - start + 1 != len(body):
                raise ApiError(400, "badRequest", "Content-Range does not match the session")
            s.data += body
            if total != "*":
                s.total = int(total)
        elif not q:
            raise ApiError(400, "badRequest", "missing Content-Range")
        if s.total is not None and len(s.data) >= s.total:
            with d.lock:
                d.sessions.pop(qs["upload_id"], None)
            self._json(200, apply_fields(d.create(s.meta, bytes(s.data)), self._fields(qs)))
        else:
            hdr = {"Range": f"bytes=0-{len(s.data) - 1}"} if s.data else {}
            self._send(308, b"", headers=hdr)

    def _op_get(self, path, qs, body) -> None:
        f = self.drive.get(path.split("/")[2])
        self._json(200, apply_fields(dict(f.meta), self._fields(qs)))

    def _op_media(self, path, qs, body) -> None:
        d = self.drive
        f = d.get(path.split("/")[2])
        if f.data is None:
            raise ApiError(403, "fileNotDownloadable",
                           "Only files with binary content can be downloaded.")
        data, status, headers = f.data, 200, {}
        rng = self.headers.get("Range")
        if rng:
            d.ranges.append(rng)
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if not m:
                raise ApiError(400, "badRequest", "bad Range")
            a = int(m.group(1))
            b = int(m.group(2)) if m.group(2) else len(data) - 1
            if a >= len(data) or b < a:
                raise ApiError(416, "requestedRangeNotSatisfiable", "Request range not satisfiable")
            b = min(b, len(data) - 1)
            data, status = data[a:b + 1], 206
            headers["Content-Range"] = f"bytes {a}-{b}/{len(f.data)}"
        with d.lock:
            if d.corrupt_reads > 0 and data:
                d.corrupt_reads -= 1
                pos = len(data) // 2
                data = data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1:]
            d.media_bytes += len(data)
        self._send(status, data, ctype="application/octet-stream", headers=headers)

    def _op_list(self, path, qs, body) -> None:
        size = min(int(qs.get("pageSize") or 100), 1000)
        res = self.drive.list(qs.get("q"), size, qs.get("pageToken"))
        tree = self._fields(qs, parse_fields("kind,incompleteSearch,nextPageToken,"
                                             "files(kind,id,name,mimeType)"))
        self._json(200, apply_fields(res, tree))

    def _op_generateIds(self, path, qs, body) -> None:
        count = min(int(qs.get("count") or 10), 1000)
        ids = [_new_id() for _ in range(count)]
        with self.drive.lock:
            self.drive.generated.update(ids)
        self._json(200, {"kind": "drive#generatedIds", "space": qs.get("space", "drive"),
                         "ids": ids})

    def _op_update(self, path, qs, body) -> None:
        meta = self.drive.update(path.split("/")[2], json.loads(body or b"{}"))
        self._json(200, apply_fields(meta, self._fields(qs)))

    def _op_delete(self, path, qs, body) -> None:
        self.drive.delete(path.split("/")[2])
        self._send(204)

    def _op_about(self, path, qs, body) -> None:
        d = self.drive
        with d.lock:
            used = d._used()
        res = {"kind": "drive#about", "storageQuota": {
            "limit": str(d.quota_bytes), "usage": str(used), "usageInDrive": str(used)}}
        self._json(200, apply_fields(res, self._fields(qs, None)))
