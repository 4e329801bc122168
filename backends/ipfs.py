"""IPFS backend: chunks added to and pinned on a Kubo node through its HTTP RPC API.

Every object is added with ``/api/v0/add?pin=true`` and fixed import settings
(chunker ``size-262144``, sha2-256, balanced layout; CIDv1 with raw leaves by
default, or CIDv0); the CID is the locator. The key -> CID mapping lives in the
node's MFS, one entry per object ``<mfs_dir>/<key[:2]>/<key>.<put time>``, so
objects are found by key (``get(key)`` without locator, ``list()`` for gc) and
the put time survives for gc's age check. The MFS entry is the record of what
this backend holds; the pin keeps the blocks (MFS contents survive ``ipfs repo
gc`` as well).

Nothing the node returns is trusted: the CID of every object is recomputed
locally (the same UnixFS DAG Kubo builds) at put and at get, so a node that stored
or returned different bytes, or a truncated stream, is caught here.

Metadata objects (index backups) are MFS files ``<mfs_dir>/meta/<name>`` added
without a pin (MFS is a garbage-collection root of its own); list() only walks the
two-hex-digit fan-out directories, so it never returns them.

The RPC calls are blocking ``requests`` calls run in worker threads under
``trio.fail_after(timeout)``; connection errors, timeouts and 5xx answers raise
BackendUnavailable. See docs/backends/ipfs.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable
from urllib.parse import urlsplit

import requests
import trio

from gffs_backends.base import (Backend, BackendError, BackendFull, BackendUnavailable, Capacity,
                                MalformedAnswer, ObjectInfo, ObjectMissing, answers_checked,
                                answers_checked_class,
                                check_meta_name, check_meta_prefix, in_thread, with_retry)

DEFAULT_API = "/ip4/127.0.0.1/tcp/5001"     # Kubo's default Addresses.API
CHUNKER_SIZE = 262144                       # Kubo's default chunker, size-262144
MAX_LINKS = 174                             # UnixFS balanced layout: links per node
OPTIONS = {"api", "timeout", "mfs_dir", "cid_version", "trusted", "auth_token",
           "username", "password"}

_KEY_RE = re.compile(r"[0-9a-f]{8,128}")
_ENTRY_RE = re.compile(r"([0-9a-f]{8,128})\.(\d{1,12})")
_MFS_SEGMENT_RE = re.compile(r"[A-Za-z0-9._@+-]+")
_CID_RE = re.compile(r"[A-Za-z0-9]{10,200}")

# Kubo error messages meaning "this node does not have it" (command errors are HTTP 500).
_MISSING = ("not found locally", "could not find", "not pinned", "file does not exist",
            "no link named", "does not exist")
_FULL = ("no space left on device", "disk quota exceeded")


class IpfsCorrupt(ObjectMissing):
    """The node answered with bytes that do not hash to the CID: this copy is unusable."""


# CIDs, multibase, and the UnixFS DAG Kubo builds ----------------------------------------

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_SHA2_256 = 0x12
_DAG_PB = 0x70
_RAW = 0x55


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("bad varint")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, pos
        shift += 7


def b58encode(raw: bytes) -> str:
    n = int.from_bytes(raw, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    return "1" * (len(raw) - len(raw.lstrip(b"\0"))) + out


def b58decode(text: str) -> bytes:
    n = 0
    for c in text:
        i = _B58.find(c)
        if i < 0:
            raise ValueError("not base58btc")
        n = n * 58 + i
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * (len(text) - len(text.lstrip("1"))) + body


def parse_cid(cid: str) -> tuple[int, int, bytes]:
    """(version, codec, sha2-256 digest) of a CIDv0 or base32 CIDv1; ValueError otherwise."""
    if len(cid) == 46 and cid.startswith("Qm"):
        mh = b58decode(cid)
        version, codec = 0, _DAG_PB
    elif cid.startswith("b") and cid[1:].islower():
        body = cid[1:].upper()
        raw = base64.b32decode(body + "=" * (-len(body) % 8))
        version, pos = _read_varint(raw, 0)
        codec, pos = _read_varint(raw, pos)
        if version != 1:
            raise ValueError("unsupported CID version")
        mh = raw[pos:]
    else:
        raise ValueError("not a CIDv0 or base32 CIDv1")
    if len(mh) != 34 or mh[0] != _SHA2_256 or mh[1] != 32:
        raise ValueError("multihash is not sha2-256")
    if codec not in (_DAG_PB, _RAW):
        raise ValueError("codec is neither dag-pb nor raw")
    return version, codec, mh[2:]


def _pb_bytes(field: int, value: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(value)) + value


def _pb_uint(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _unixfs_file(filesize: int, data: bytes = b"", blocksizes: list[int] | None = None) -> bytes:
    out = _pb_uint(1, 2)                            # Type = File
    if data:
        out += _pb_bytes(2, data)
    out += _pb_uint(3, filesize)
    for size in blocksizes or ():
        out += _pb_uint(4, size)                    # repeated, not packed (proto2)
    return out


class _Node:
    __slots__ = ("cid", "filesize", "tsize")

    def __init__(self, cid: bytes, tsize: int, filesize: int) -> None:
        self.cid, self.tsize, self.filesize = cid, tsize, filesize


def _pb_node(version: int, links: list[_Node], data: bytes) -> _Node:
    """A dag-pb node (links first, then data: the canonical dag-pb field order)."""
    body = b"".join(_pb_bytes(2, _pb_bytes(1, c.cid) + _pb_bytes(2, b"") + _pb_uint(3, c.tsize))
                    for c in links) + _pb_bytes(1, data)
    mh = bytes([_SHA2_256, 32]) + hashlib.sha256(body).digest()
    cid = mh if version == 0 else _varint(1) + _varint(_DAG_PB) + mh
    return _Node(cid, len(body) + sum(c.tsize for c in links), sum(c.filesize for c in links))


def unixfs_cid(data: bytes | memoryview, cid_version: int = 1) -> str:
    """The CID ``ipfs add`` gives *data* with this backend's import settings.

    CIDv0: dag-pb leaves. CIDv1: raw leaves. Both: 256 KiB chunks, balanced layout with
    at most 174 links per node, sha2-256. A file of one chunk is its leaf itself.
    """
    return cid_text(unixfs_file_root(data, cid_version)[0])


def cid_text(cid: bytes) -> str:
    """A binary CID as Kubo prints it: base58btc for CIDv0 (a bare multihash), base32 else."""
    if cid[:2] == bytes([_SHA2_256, 32]) and len(cid) == 34:
        return b58encode(cid)
    return "b" + base64.b32encode(cid).decode().lower().rstrip("=")


DIR_SHARD_THRESHOLD = 262144   # Kubo's Internal.UnixFSShardingSizeThreshold default (256 KiB)


HAMT_FANOUT = 256              # Kubo's default shard width
_MURMUR3_64 = 0x22            # the multicodec of the HAMT's hash function


def unixfs_dir_root(entries: list[tuple[str, bytes, int]], cid_version: int = 0) -> tuple[bytes, int]:
    """(binary CID, cumulative DAG size) of a UnixFS directory of *entries* (name, binary
    CID, cumulative size), as Kubo builds it: a plain directory (links sorted by name
    bytes, Data = UnixFS Directory) while the links' names and CIDs add up to less than
    Kubo's sharding threshold, else a HAMT-sharded directory (:func:`_hamt_shard`)."""
    links = [(n.encode(), c, t) for n, c, t in entries]
    if sum(len(n) + len(c) for n, c, _ in links) >= DIR_SHARD_THRESHOLD:
        return _hamt_shard([(_murmur3_64(n).to_bytes(8, "big"), n, c, t) for n, c, t in links],
                           0, cid_version)
    return _dag_pb(sorted(links), _pb_uint(1, 1), cid_version)


def _dag_pb(links: list[tuple[bytes, bytes, int]], unixfs: bytes, version: int) -> tuple[bytes, int]:
    """A dag-pb node of (name, CID, tsize) links in the given order and UnixFS data."""
    body = b"".join(_pb_bytes(2, _pb_bytes(1, c) + _pb_bytes(2, n) + _pb_uint(3, t))
                    for n, c, t in links) + _pb_bytes(1, unixfs)
    mh = bytes([_SHA2_256, 32]) + hashlib.sha256(body).digest()
    cid = mh if version == 0 else _varint(1) + _varint(_DAG_PB) + mh
    return cid, len(body) + sum(t for _, _, t in links)


def _hamt_shard(items: list[tuple[bytes, bytes, bytes, int]], depth: int,
                version: int) -> tuple[bytes, int]:
    """One HAMT shard (UnixFS Type HAMTShard, fanout 256, murmur3-x64-64 of the name):
    byte *depth* of an entry's hash picks its slot; a slot with one entry links it as
    ``<slot, 2 upper-case hex digits><name>``, a slot with several a sub-shard as
    ``<slot>``. Links in slot order; Data holds the bitfield of used slots (big-endian,
    leading zero bytes dropped), the hash function and the fanout."""
    slots: dict[int, list[tuple[bytes, bytes, bytes, int]]] = {}
    for item in items:
        slots.setdefault(item[0][depth], []).append(item)
    links = []
    for slot in sorted(slots):
        group, prefix = slots[slot], b"%02X" % slot
        if len(group) == 1:
            _h, name, cid, tsize = group[0]
            links.append((prefix + name, cid, tsize))
        else:
            links.append((prefix, *_hamt_shard(group, depth + 1, version)))
    bits = sum(1 << slot for slot in slots)
    bitfield = bits.to_bytes((bits.bit_length() + 7) // 8, "big")
    data = _pb_uint(1, 5) + _pb_bytes(2, bitfield) + _pb_uint(5, _MURMUR3_64) + \
        _pb_uint(6, HAMT_FANOUT)
    return _dag_pb(links, data, version)


def _murmur3_64(data: bytes) -> int:
    """The first 64 bits of MurmurHash3 x64-128 (seed 0), as Go's murmur3.Sum64."""
    m = (1 << 64) - 1
    c1, c2 = 0x87C37B91114253D5, 0x4CF5AD432745937F

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (64 - r))) & m

    def fmix(k: int) -> int:
        k ^= k >> 33
        k = (k * 0xFF51AFD7ED558CCD) & m
        k ^= k >> 33
        k = (k * 0xC4CEB9FE1A85EC53) & m
        return k ^ (k >> 33)

    h1 = h2 = 0
    n = len(data)
    for i in range(0, n - n % 16, 16):
        k1 = int.from_bytes(data[i:i + 8], "little")
        k2 = int.from_bytes(data[i + 8:i + 16], "little")
        h1 ^= (rotl((k1 * c1) & m, 31) * c2) & m
        h1 = (rotl(h1, 27) + h2) & m
        h1 = (h1 * 5 + 0x52DCE729) & m
        h2 ^= (rotl((k2 * c2) & m, 33) * c1) & m
        h2 = (rotl(h2, 31) + h1) & m
        h2 = (h2 * 5 + 0x38495AB5) & m
    tail = data[n - n % 16:]
    if len(tail) > 8:
        k2 = int.from_bytes(tail[8:], "little")
        h2 ^= (rotl((k2 * c2) & m, 33) * c1) & m
    if tail:
        k1 = int.from_bytes(tail[:8], "little")
        h1 ^= (rotl((k1 * c1) & m, 31) * c2) & m
    h1 ^= n
    h2 ^= n
    h1 = (h1 + h2) & m
    h2 = (h2 + h1) & m
    h1, h2 = fmix(h1), fmix(h2)
    return (h1 + h2) & m


def unixfs_file_root(data: bytes | memoryview, cid_version: int = 1) -> tuple[bytes, int]:
    """(binary CID, cumulative DAG size) of the file DAG :func:`unixfs_cid` describes."""
    data = memoryview(data)
    pos = 0

    def leaf() -> _Node:
        nonlocal pos
        chunk = bytes(data[pos:pos + CHUNKER_SIZE])
        pos += len(chunk)
        if cid_version == 1:
            mh = bytes([_SHA2_256, 32]) + hashlib.sha256(chunk).digest()
            return _Node(_varint(1) + _varint(_RAW) + mh, len(chunk), len(chunk))
        node = _pb_node(0, [], _unixfs_file(len(chunk), chunk))
        node.filesize = len(chunk)
        return node

    def internal(children: list[_Node]) -> _Node:
        return _pb_node(cid_version, children,
                        _unixfs_file(sum(c.filesize for c in children), b"",
                                     [c.filesize for c in children]))

    def fill(children: list[_Node], depth: int) -> _Node:
        while len(children) < MAX_LINKS and pos < len(data):
            children.append(leaf() if depth == 1 else fill([], depth - 1))
        return internal(children)

    root = leaf()
    depth = 1
    while pos < len(data):
        root = fill([root], depth)
        depth += 1
    return root.cid, root.tsize


# API address ----------------------------------------------------------------------------

def multiaddr_to_url(addr: str) -> str:
    """``/ip4/127.0.0.1/tcp/5001[/http|/https]`` (or /ip6, /dns, /dns4, /dns6) -> URL."""
    parts = addr.strip().split("/")
    if len(parts) < 5 or parts[0] != "" or parts[3] != "tcp":
        raise ValueError(f"unsupported API multiaddr {addr!r} (want /ip4/HOST/tcp/PORT)")
    proto, host, port = parts[1], parts[2], parts[4]
    if proto not in ("ip4", "ip6", "dns", "dns4", "dns6") or not host:
        raise ValueError(f"unsupported API multiaddr {addr!r} (want /ip4/HOST/tcp/PORT)")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad TCP port in API multiaddr {addr!r}")
    rest = [p for p in parts[5:] if p]
    scheme = "http"
    if rest in (["https"], ["tls", "http"]):
        scheme = "https"
    elif rest not in ([], ["http"]):
        raise ValueError(f"unsupported API multiaddr {addr!r} (want /ip4/HOST/tcp/PORT)")
    if proto == "ip6":
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def api_url(api: str) -> str:
    """The base URL for an ``api`` option: a multiaddr or an http(s) URL."""
    if api.startswith("/"):
        return multiaddr_to_url(api)
    parts = urlsplit(api)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"'api' must be a multiaddr like {DEFAULT_API} or an http(s) URL")
    if parts.username or parts.password:
        raise ValueError("'api' must not hold credentials; use 'username'/'password' or "
                         "'auth_token'")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError("'api' URL has a bad port") from None
    return api.rstrip("/")


def api_file() -> Path:
    """``$IPFS_PATH/api`` (default ``~/.ipfs/api``): where a running Kubo daemon writes its
    API address, as Kubo's own clients read it."""
    return Path(os.environ.get("IPFS_PATH") or "~/.ipfs").expanduser() / "api"




# the backend ----------------------------------------------------------------------------

@answers_checked_class
class IpfsBackend(Backend):
    #: True when pinned objects on this node count as a trusted copy (a node you run).
    trusted: bool = True

    def __init__(self, name: str, api: str | None = None, *, timeout: float = 30.0,
                 mfs_dir: str | None = None, cid_version: int = 1, trusted: bool = True,
                 auth_token: str | None = None, username: str | None = None,
                 password: str | None = None) -> None:
        super().__init__(name)
        self._api_from_file = api is None
        self.base_url = api_url(api) if api is not None else self._read_api_file()
        self.timeout = float(timeout)
        if mfs_dir is None:
            if not _MFS_SEGMENT_RE.fullmatch(name) or name in (".", ".."):
                raise ValueError(f"backend {name!r}: set 'mfs_dir' (the name is not a "
                                 "usable MFS directory name)")
            mfs_dir = f"/gffs/{name}"
        self.mfs_dir = _check_mfs_dir(mfs_dir)
        if cid_version not in (0, 1):
            raise ValueError("'cid_version' must be 0 or 1")
        self.cid_version = cid_version
        self.trusted = bool(trusted)
        self._session = requests.Session()
        host = urlsplit(self.base_url).hostname or ""
        if host in ("localhost", "::1") or host.startswith("127."):
            self._session.trust_env = False  # never send loopback RPC calls through a proxy
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=32)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        if auth_token is not None:
            self._session.headers["Authorization"] = (
                auth_token if " " in auth_token.strip() else f"Bearer {auth_token}")
        elif username is not None:
            self._session.auth = (username, password or "")
        self._known_dirs: set[str] = set()

    @property
    def rpc_credentials(self) -> tuple[dict[str, str] | None, tuple[str, str] | None]:
        """Headers and basic auth the RPC calls carry (for another HTTP client of this node)."""
        token = self._session.headers.get("Authorization")
        return ({"Authorization": token} if token else None), self._session.auth

    def __repr__(self) -> str:   # no credentials
        return f"IpfsBackend({self.name!r}, {self.base_url!r}, mfs_dir={self.mfs_dir!r})"

    @classmethod
    def from_config(cls, name: str, options: dict) -> "IpfsBackend":
        where = f"backend {name!r}"
        unknown = sorted(set(options) - OPTIONS)
        if unknown:
            raise ValueError(f"{where}: unknown option {unknown[0]!r} "
                             f"(known: {', '.join(sorted(OPTIONS))})")
        kw: dict[str, Any] = {}
        for opt in ("api", "mfs_dir", "auth_token", "username", "password"):
            if opt in options:
                if not isinstance(options[opt], str) or not options[opt]:
                    raise ValueError(f"{where}: {opt!r} must be a non-empty string")
                kw[opt] = options[opt]
        if "timeout" in options:
            t = options["timeout"]
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 3600:
                raise ValueError(f"{where}: 'timeout' must be a number of seconds in (0, 3600]")
            kw["timeout"] = float(t)
        if "cid_version" in options:
            if options["cid_version"] not in (0, 1) or isinstance(options["cid_version"], bool):
                raise ValueError(f"{where}: 'cid_version' must be 0 or 1")
            kw["cid_version"] = options["cid_version"]
        if "trusted" in options:
            if not isinstance(options["trusted"], bool):
                raise ValueError(f"{where}: 'trusted' must be true or false")
            kw["trusted"] = options["trusted"]
        if ("password" in kw) != ("username" in kw):
            raise ValueError(f"{where}: 'username' and 'password' go together")
        if "auth_token" in kw and "username" in kw:
            raise ValueError(f"{where}: give either 'auth_token' or 'username'/'password'")
        if any(c in kw.get("auth_token", "") + kw.get("username", "") for c in "\r\n"):
            raise ValueError(f"{where}: credentials must not contain line breaks")
        try:
            return cls(name, **kw)
        except ValueError as exc:
            msg = str(exc)
            raise ValueError(msg if msg.startswith(where) else f"{where}: {msg}") from None

    # plumbing ---------------------------------------------------------------------------
    def _read_api_file(self) -> str:
        path = api_file()
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            return multiaddr_to_url(DEFAULT_API)
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror}") from None
        try:
            return api_url(text)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def _check_key(self, key: str) -> str:
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise BackendError(f"{self.name}: invalid object key {key!r}")
        return key

    def _check_cid(self, cid: str) -> str:
        if not isinstance(cid, str) or not _CID_RE.fullmatch(cid):
            raise BackendError(f"{self.name}: invalid CID locator {cid!r}")
        try:
            parse_cid(cid)
        except ValueError as exc:
            raise BackendError(f"{self.name}: unusable CID locator {cid!r}: {exc}") from None
        return cid

    def _rpc(self, cmd: str, params: list[tuple[str, str]], *, upload: bytes | None = None,
             filename: str = "file", parts: list[tuple] | None = None) -> requests.Response:
        """One blocking RPC call; a Response with status 200 or a BackendError.

        *parts*: a multipart body of several files (``requests`` file tuples), as
        ``add`` of a directory takes it."""
        url = f"{self.base_url}/api/v0/{cmd}"
        files = parts if parts is not None else \
            {"file": (filename, upload, "application/octet-stream")} if upload is not None else None
        try:
            resp = self._session.post(url, params=params, files=files,
                                      timeout=(min(self.timeout, 10.0), self.timeout))
            if resp.status_code == 200:
                _ = resp.content          # read the whole body inside the timeout
                return resp
        except requests.ConnectionError as exc:
            if self._api_from_file:       # the daemon may have restarted on another port
                try:
                    self.base_url = self._read_api_file()
                except ValueError:
                    pass
            raise BackendUnavailable(f"{self.name}: IPFS API at {self.base_url} unreachable "
                                     f"({type(exc).__name__})") from None
        except requests.Timeout:
            raise BackendUnavailable(f"{self.name}: IPFS API at {self.base_url} timed out "
                                     f"({cmd})") from None
        except requests.RequestException as exc:
            raise BackendUnavailable(f"{self.name}: IPFS API call {cmd} failed "
                                     f"({type(exc).__name__})") from None
        message = _error_message(resp)
        status = resp.status_code
        low = message.lower()
        if status == 500 and any(m in low for m in _MISSING):
            raise ObjectMissing(f"{self.name}: {cmd}: {message}")
        if any(m in low for m in _FULL):
            raise BackendFull(f"{self.name}: IPFS node is out of space: {message}")
        if status >= 500:
            raise BackendUnavailable(f"{self.name}: {cmd} failed ({status}): {message}")
        if status in (401, 403):
            raise BackendError(f"{self.name}: IPFS API refused {cmd} ({status}): check "
                               "'auth_token' or 'username'/'password'")
        raise BackendError(f"{self.name}: {cmd} answered HTTP {status}: {message} "
                           "(is this a Kubo RPC API?)")

    def _json(self, cmd: str, params: list[tuple[str, str]], **kw) -> Any:
        resp = self._rpc(cmd, params, **kw)
        try:
            return json.loads(resp.content) if resp.content.strip() else {}
        except ValueError:
            raise MalformedAnswer(f"{self.name}: {cmd} answered something that is not JSON") \
                from None

    async def _run(self, fn: Callable, *args) -> Any:
        """A blocking RPC call in a worker thread, bounded by the timeout (not retried:
        a node that does not answer now is skipped by health)."""
        with answers_checked(self.name, fn.__name__.strip("_")):
            return await with_retry(lambda: in_thread(fn, *args), timeout=self.timeout,
                                    classify=self._classify)

    def _classify(self, exc: BaseException) -> BackendError:
        if isinstance(exc, trio.TooSlowError):
            return BackendUnavailable(f"{self.name}: IPFS API at {self.base_url} gave no answer "
                                      f"within {self.timeout:g} s")
        raise exc   # requests' errors are translated in _rpc; parse errors by answers_checked

    # MFS index of the objects --------------------------------------------------------------
    def _fan_dir(self, key: str) -> str:
        return f"{self.mfs_dir}/{key[:2]}"

    def _ls(self, path: str) -> list[dict]:
        try:
            out = self._json("files/ls", [("arg", path), ("long", "true"), ("U", "true")])
        except ObjectMissing:
            return []
        entries = out.get("Entries") if isinstance(out, dict) else None
        if entries is None:
            return []
        if not isinstance(entries, list):
            raise MalformedAnswer(f"{self.name}: files/ls answered an unexpected shape")
        return [e for e in entries if isinstance(e, dict) and isinstance(e.get("Name"), str)]

    def _entries(self, key: str, listing: list[dict] | None = None) -> list[tuple[str, int, int, str]]:
        """(entry name, size, put time, CID) of every MFS entry of *key*."""
        if listing is None:
            listing = self._ls(self._fan_dir(key))
        found = []
        for e in listing:
            m = _ENTRY_RE.fullmatch(e["Name"])
            if m and m.group(1) == key:
                if not isinstance(e.get("Hash"), str):
                    raise MalformedAnswer(f"{self.name}: files/ls answered {e['Name']} "
                                          "without its CID")
                found.append((e["Name"], int(e.get("Size") or 0), int(m.group(2)), e["Hash"]))
        return sorted(found, key=lambda t: t[2])

    def _ensure_dir(self, path: str) -> None:
        if path in self._known_dirs:
            return
        try:
            self._json("files/mkdir", [("arg", path), ("parents", "true")])
        except BackendError as exc:
            if "already exists" not in str(exc):
                raise
        self._known_dirs.add(path)

    # blocking operations ----------------------------------------------------------------
    def _add(self, what: str, data: bytes, *, pin: bool) -> str:
        """``add`` *data*; its CID, checked against the one computed here."""
        expected = unixfs_cid(data, self.cid_version)
        params = [("pin", "true" if pin else "false"), ("cid-version", str(self.cid_version)),
                  ("raw-leaves", "true" if self.cid_version == 1 else "false"),
                  ("chunker", f"size-{CHUNKER_SIZE}"), ("hash", "sha2-256"),
                  ("progress", "false"), ("quieter", "true")]
        resp = self._rpc("add", params, upload=bytes(data), filename=what.rsplit(" ", 1)[-1])
        cid = None
        for line in resp.content.splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and isinstance(obj.get("Hash"), str):
                cid = obj["Hash"]
        if cid is None:
            raise MalformedAnswer(f"{self.name}: add answered no CID for {what}")
        if cid != expected:
            if pin:
                self._unpin_quietly(cid)
            raise BackendError(f"{self.name}: the node stored {what} as {cid}, expected "
                               f"{expected}: it got other bytes or imports with other settings")
        return cid

    def _put(self, key: str, data: bytes) -> str:
        cid = self._add(f"chunk {key[:16]}", data, pin=True)
        fan = self._fan_dir(key)
        path = f"{fan}/{key}.{int(time.time())}"
        for attempt in (1, 2):
            try:
                self._ensure_dir(fan)
                self._json("files/cp", [("arg", f"/ipfs/{cid}"), ("arg", path),
                                        ("offline", "true")])
                return cid
            except BackendError as exc:
                if "already has entry" in str(exc):   # the same put within the same second
                    return cid
                self._known_dirs.discard(fan)         # removed behind our back? make it again
                if attempt == 2 or not isinstance(exc, ObjectMissing):
                    if not isinstance(exc, BackendUnavailable) and not self._entries(key):
                        self._unpin_quietly(cid)
                    if isinstance(exc, ObjectMissing):
                        raise BackendError(f"{self.name}: cannot record chunk {key[:16]} in "
                                           f"MFS: {exc}") from None
                    raise
        raise AssertionError("unreachable")

    def _unpin_quietly(self, cid: str) -> None:
        try:
            self._json("pin/rm", [("arg", cid)])
        except BackendError:
            pass

    def _is_pinned(self, cid: str) -> bool:
        try:
            out = self._json("pin/ls", [("arg", cid), ("type", "recursive"), ("offline", "true")])
        except ObjectMissing:
            return False
        keys = out.get("Keys") if isinstance(out, dict) else None
        return isinstance(keys, dict) and cid in keys

    def _get(self, key: str, locator: str) -> bytes:
        cid = self._check_cid(locator) if locator else None
        if cid is None or not self._is_pinned(cid):
            entries = self._entries(key)
            if not entries:
                raise ObjectMissing(f"{self.name}: chunk {key} is not on the IPFS node")
            if cid is None or cid not in {e[3] for e in entries}:
                cid = entries[0][3]
            try:   # held in MFS but its pin went (another store unpinned the same CID)
                self._json("pin/add", [("arg", cid), ("offline", "true")])
            except ObjectMissing:
                raise ObjectMissing(f"{self.name}: chunk {key} ({cid}) lost its blocks") from None
        return self._cat(f"chunk {key[:16]}", cid)

    def _cat(self, what: str, cid: str) -> bytes:
        """The bytes of *cid*, verified against it (IpfsCorrupt when they differ)."""
        data = self._rpc("cat", [("arg", cid), ("offline", "true")]).content
        version, codec, _ = parse_cid(cid)
        if unixfs_cid(data, version) != cid and not (
                codec == _RAW and hashlib.sha256(data).digest() == parse_cid(cid)[2]):
            raise IpfsCorrupt(f"{self.name}: the node returned {len(data)} bytes for {what} "
                              f"that do not match its CID {cid}")
        return data

    def _delete_entries(self, key: str, locator: str, listing: list[dict] | None) -> None:
        cids = {locator} if locator else set()
        for name, _size, _t, cid in self._entries(key, listing):
            try:
                self._json("files/rm", [("arg", f"{self._fan_dir(key)}/{name}")])
            except ObjectMissing:
                pass
            cids.add(cid)
        for cid in cids:
            try:
                self._json("pin/rm", [("arg", cid)])
            except ObjectMissing:
                pass

    def _delete(self, key: str, locator: str) -> None:
        self._delete_entries(key, locator, None)

    def _delete_many(self, items: list[tuple[str, str]]) -> None:
        by_dir: dict[str, list[tuple[str, str]]] = {}
        for key, locator in items:
            by_dir.setdefault(self._fan_dir(key), []).append((key, locator))
        for fan, group in by_dir.items():
            listing = self._ls(fan)
            for key, locator in group:
                self._delete_entries(key, locator, listing)

    def _stat(self, key: str) -> ObjectInfo | None:
        entries = self._entries(key)
        if not entries:
            return None
        _name, size, put_time, _cid = entries[0]
        return ObjectInfo(key, size, float(put_time))

    def _list_dir(self, fan: str) -> list[ObjectInfo]:
        seen: dict[str, ObjectInfo] = {}
        for e in self._ls(f"{self.mfs_dir}/{fan}"):
            m = _ENTRY_RE.fullmatch(e["Name"])
            if not m or not m.group(1).startswith(fan):
                continue
            key, put_time = m.group(1), float(m.group(2))
            if key not in seen or seen[key].mtime > put_time:
                seen[key] = ObjectInfo(key, int(e.get("Size") or 0), put_time)
        return list(seen.values())

    # metadata objects: MFS files under <mfs_dir>/meta ---------------------------------------------
    def _meta_path(self, name: str) -> str:
        return f"{self.mfs_dir}/meta/{check_meta_name(self.name, name)}"

    def _put_meta(self, name: str, data: bytes) -> None:
        path = self._meta_path(name)
        parent = path.rsplit("/", 1)[0]
        cid = self._add(f"metadata object {name}", data, pin=False)
        for attempt in (1, 2):
            self._ensure_dir(parent)
            try:
                self._json("files/rm", [("arg", path)])
            except ObjectMissing:
                pass
            try:
                self._json("files/cp", [("arg", f"/ipfs/{cid}"), ("arg", path),
                                        ("offline", "true")])
                return
            except ObjectMissing:
                self._known_dirs.discard(parent)      # removed behind our back: make it again
                if attempt == 2:
                    raise

    def _get_meta(self, name: str) -> bytes:
        path = self._meta_path(name)
        entries = self._ls(path)
        if len(entries) != 1 or entries[0].get("Type") == 1 or \
                not isinstance(entries[0].get("Hash"), str):
            raise ObjectMissing(f"{self.name}: metadata object {name} is missing")
        try:
            return self._cat(f"metadata object {name}", self._check_cid(entries[0]["Hash"]))
        except IpfsCorrupt as exc:
            raise BackendError(str(exc)) from None

    def _list_meta(self, prefix: str) -> list[str]:
        names: list[str] = []

        def walk(rel: str) -> None:
            for e in self._ls(f"{self.mfs_dir}/meta/{rel}".rstrip("/")):
                name = f"{rel}{e['Name']}"
                if e.get("Type") == 1:
                    if prefix.startswith(name + "/") or name.startswith(prefix):
                        walk(name + "/")
                elif name.startswith(prefix):
                    names.append(name)
        walk("")
        return sorted(names)

    def _delete_meta(self, name: str) -> None:
        try:
            self._json("files/rm", [("arg", self._meta_path(name))])
        except ObjectMissing:
            pass

    def _capacity(self) -> Capacity | None:
        out = self._json("repo/stat", [("size-only", "true")])
        try:
            used, total = int(out["RepoSize"]), int(out["StorageMax"])
        except (KeyError, TypeError, ValueError):
            raise MalformedAnswer(f"{self.name}: repo/stat answered an unexpected shape") from None
        if total <= 0:
            return None
        return Capacity(total, max(0, total - used))

    # async interface ----------------------------------------------------------------------
    async def put(self, key: str, data: bytes) -> str:
        self._check_key(key)
        return await self._run(self._put, key, data)

    async def get(self, key: str, locator: str = "") -> bytes:
        self._check_key(key)
        return await self._run(self._get, key, locator)

    async def delete(self, key: str, locator: str = "") -> None:
        self._check_key(key)
        if locator:
            self._check_cid(locator)
        await self._run(self._delete, key, locator)

    async def delete_many(self, items: list[tuple[str, str]]) -> None:
        for key, locator in items:
            self._check_key(key)
            if locator:
                self._check_cid(locator)
        if items:
            await self._run(self._delete_many, items)

    async def stat(self, key: str, locator: str = "") -> ObjectInfo | None:
        self._check_key(key)
        return await self._run(self._stat, key)

    async def list(self) -> AsyncIterator[ObjectInfo]:  # type: ignore[override]
        fans = [e["Name"] for e in await self._run(self._ls, self.mfs_dir)
                if re.fullmatch(r"[0-9a-f]{2}", e["Name"])]
        for fan in sorted(fans):
            for info in await self._run(self._list_dir, fan):
                yield info

    async def put_meta(self, name: str, data: bytes) -> None:
        check_meta_name(self.name, name)
        await self._run(self._put_meta, name, bytes(data))

    async def get_meta(self, name: str) -> bytes:
        check_meta_name(self.name, name)
        return await self._run(self._get_meta, name)

    async def list_meta(self, prefix: str = "") -> list[str]:
        check_meta_prefix(self.name, prefix)
        return await self._run(self._list_meta, prefix)

    async def delete_meta(self, name: str) -> None:
        check_meta_name(self.name, name)
        await self._run(self._delete_meta, name)

    async def check(self) -> None:
        """The node answers `version` (RPC API reachable, credentials accepted)."""
        await self._run(self._json, "version", [])

    async def capacity(self) -> Capacity | None:
        return await self._run(self._capacity)

    async def sync(self) -> None:
        """Nothing to do: Kubo's add and files/cp (flush=true) return once stored."""

    async def close(self) -> None:
        self._session.close()


def _error_message(resp: requests.Response) -> str:
    """The one-line message of a Kubo error answer ({"Message", "Code", "Type"})."""
    try:
        obj = json.loads(resp.content)
        if isinstance(obj, dict) and isinstance(obj.get("Message"), str):
            return obj["Message"].strip().splitlines()[0][:300] if obj["Message"].strip() else "?"
    except ValueError:
        pass
    text = resp.content[:200].decode("utf-8", "replace").strip()
    return text.splitlines()[0] if text else resp.reason or "no message"


def _check_mfs_dir(path: str) -> str:
    segments = path.split("/")
    if not path.startswith("/") or len(segments) < 2 or not all(
            _MFS_SEGMENT_RE.fullmatch(s) and s not in (".", "..") for s in segments[1:]):
        raise ValueError(f"'mfs_dir' must be an absolute MFS path like /gffs/NAME, got {path!r}")
    return path
