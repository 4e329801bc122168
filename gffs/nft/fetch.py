"""Fetching what a token points at: untrusted URIs under size limits and a deadline.

Token and media URIs come from contracts anyone can deploy, so nothing here
trusts them: only https, http, ipfs, ar and data URIs are followed (file:,
javascript: and the rest are refused with a message saying so), every body is
read in small pieces against a byte limit and an overall deadline, redirects
are few and stay on http(s), and JSON is parsed as data with depth and size
checks. Nothing fetched is ever executed.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

import requests
import urllib3

from gffs.config import Config
from gffs_backends.ipfs import IpfsBackend

FOLLOWED = ("https://", "http://", "ipfs://", "ar://", "data:")
MAX_JSON_DEPTH = 32
MAX_JSON_ITEMS = 100_000
MAX_REDIRECTS = 5
_CID = re.compile(r"^[A-Za-z0-9]{10,200}$")
_PATH = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")


class NftError(Exception):
    """A token could not be resolved; the message is one line for the user."""


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


@dataclass
class Fetcher:
    """Reads token URIs with the limits of an [nft] config."""

    timeout: float = 20.0
    ipfs_api: str | None = None          # Kubo RPC base URL (an ipfs backend's node)
    ipfs_headers: dict[str, str] | None = None
    ipfs_auth: tuple[str, str] | None = None
    ipfs_gateway: str | None = None
    arweave_gateway: str = "https://arweave.net"

    @classmethod
    def from_config(cls, cfg: Config) -> "Fetcher":
        nft = cfg.nft
        f = cls(timeout=float(nft.timeout), ipfs_gateway=nft.ipfs_gateway,
                arweave_gateway=nft.arweave_gateway)
        backend = next((b for b in cfg.backends if b.name == nft.ipfs_backend), None)
        if backend is not None:
            try:
                node = IpfsBackend.from_config(backend.name, backend.options)
            except ValueError as exc:
                raise NftError(str(exc)) from None
            f.ipfs_api = node.base_url
            f.ipfs_headers, f.ipfs_auth = node.rpc_credentials
        return f

    # one entry point ----------------------------------------------------------------
    def fetch(self, uri: str, limit: int, what: str) -> bytes:
        """The bytes behind *uri* (at most *limit*), or NftError naming *what* failed."""
        if not isinstance(uri, str) or not uri.startswith(FOLLOWED):
            scheme = uri.split(":", 1)[0] if isinstance(uri, str) and ":" in uri else repr(uri)[:40]
            raise NftError(f"{what}: refusing to follow a {scheme[:20]}: URI "
                           "(only https, http, ipfs, ar and data URIs are followed)")
        if any(c.isspace() or ord(c) < 32 for c in uri):
            raise NftError(f"{what}: the URI contains spaces or control characters")
        if uri.startswith("data:"):
            return data_uri_bytes(uri, limit, what)
        if uri.startswith("ipfs://"):
            cid, path = _ipfs_parts(uri, what)
            if self.ipfs_api:
                return self._http("POST", f"{self.ipfs_api}/api/v0/cat", limit, what,
                                  params={"arg": cid + path, "length": str(limit + 1)},
                                  headers=self.ipfs_headers, auth=self.ipfs_auth)
            if self.ipfs_gateway:
                return self._http("GET", f"{self.ipfs_gateway}/ipfs/{cid}{path}", limit, what)
            raise NftError(f"{what}: {uri} needs an IPFS node: configure an ipfs backend or "
                           "[nft] ipfs_gateway")
        if uri.startswith("ar://"):
            tx = uri[len("ar://"):]
            if not _PATH.match(tx) or ".." in tx or not tx:
                raise NftError(f"{what}: malformed ar:// URI")
            return self._http("GET", f"{self.arweave_gateway}/{tx}", limit, what)
        return self._http("GET", uri, limit, what)

    def fetch_json(self, uri: str, limit: int, what: str) -> dict[str, Any]:
        return parse_json_object(self.fetch(uri, limit, what), what)

    def get_json(self, url: str, params: dict[str, str], limit: int, what: str) -> Any:
        """GET an API answer (JSON of any shape); None when the API has no such object."""
        raw = self._http("GET", url, limit, what, params=params, missing_ok=True)
        return None if raw is None else parse_json(raw, what)

    # HTTP -----------------------------------------------------------------------------
    def _http(self, method: str, url: str, limit: int, what: str, *,
              params: dict[str, str] | None = None, headers: dict[str, str] | None = None,
              auth: tuple[str, str] | None = None, missing_ok: bool = False) -> Any:
        deadline = time.monotonic() + self.timeout
        with requests.Session() as session:
            session.trust_env = not is_loopback(url)   # no proxy for loopback
            session.max_redirects = MAX_REDIRECTS
            hdrs = {"Accept-Encoding": "identity", **(headers or {})}
            try:
                resp = session.request(method, url, params=params, headers=hdrs, auth=auth,
                                       stream=True, timeout=(min(self.timeout, 10.0), self.timeout))
                with resp:
                    if resp.status_code in (204, 404) and missing_ok:
                        return None             # TzKT answers 204 for "no such object"
                    if resp.status_code != 200:
                        raise NftError(f"{what}: {_short(url)} answered HTTP {resp.status_code}")
                    length = resp.headers.get("Content-Length", "")
                    if length.isdigit() and int(length) > limit:
                        raise NftError(f"{what}: {length} bytes is over the limit of {limit}")
                    return _read_limited(resp.raw, limit, deadline, what, self.timeout)
            except requests.exceptions.InvalidSchema:
                raise NftError(f"{what}: {_short(url)} redirects to a refused scheme") from None
            except requests.TooManyRedirects:
                raise NftError(f"{what}: {_short(url)}: more than {MAX_REDIRECTS} redirects") from None
            except (requests.Timeout, urllib3.exceptions.TimeoutError):
                raise NftError(f"{what}: {_short(url)} gave no answer within "
                               f"{self.timeout:g} s") from None
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                raise NftError(f"{what}: cannot fetch {_short(url)} ({type(exc).__name__})") from None


def _read_limited(raw: urllib3.HTTPResponse, limit: int, deadline: float, what: str,
                  timeout: float) -> bytes:
    """Read a body one socket read at a time, so a server dripping bytes meets the deadline."""
    buf = bytearray()
    while True:
        if time.monotonic() > deadline:
            raise NftError(f"{what}: the server took longer than {timeout:g} s to send it")
        piece = raw.read1(65536, decode_content=True)
        if not piece:
            return bytes(buf)
        buf += piece
        if len(buf) > limit:
            raise NftError(f"{what}: larger than the limit of {limit} bytes")


def _short(url: str) -> str:
    return url if len(url) <= 120 else url[:117] + "..."


def _ipfs_parts(uri: str, what: str) -> tuple[str, str]:
    rest = uri[len("ipfs://"):]
    if rest.startswith("ipfs/"):
        rest = rest[len("ipfs/"):]     # the legacy ipfs://ipfs/CID form
    cid, slash, path = rest.partition("/")
    if not _CID.match(cid) or not _PATH.match(path) or ".." in path.split("/"):
        raise NftError(f"{what}: malformed ipfs:// URI")
    return cid, slash + path


def data_uri_bytes(uri: str, limit: int, what: str) -> bytes:
    """Decode a ``data:[type][;base64],payload`` URI (RFC 2397) of at most *limit* bytes."""
    header, comma, payload = uri[len("data:"):].partition(",")
    if not comma:
        raise NftError(f"{what}: malformed data: URI (no comma)")
    if len(payload) > limit * 4 // 3 + 8:
        raise NftError(f"{what}: larger than the limit of {limit} bytes")
    if header.lower().endswith(";base64"):
        try:
            data = base64.b64decode(unquote_to_bytes(payload), validate=True)
        except (binascii.Error, ValueError):
            raise NftError(f"{what}: data: URI with broken base64") from None
    else:
        data = unquote_to_bytes(payload)
    if len(data) > limit:
        raise NftError(f"{what}: larger than the limit of {limit} bytes")
    return data


def parse_json_object(raw: bytes, what: str) -> dict[str, Any]:
    """Parse untrusted JSON that must be an object."""
    value = parse_json(raw, what)
    if not isinstance(value, dict):
        raise NftError(f"{what}: JSON {type(value).__name__} where an object was expected")
    return value


def parse_json(raw: bytes, what: str) -> Any:
    """Parse untrusted JSON with depth and size sanity checks."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise NftError(f"{what}: not UTF-8 text") from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise NftError(f"{what}: JSON nested too deeply") from None
    except ValueError as exc:
        raise NftError(f"{what}: not valid JSON ({str(exc).splitlines()[0][:80]})") from None
    _check_shape(value, what)
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_shape(value: Any, what: str) -> None:
    items = 0
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise NftError(f"{what}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else ()
        for child in children:
            items += 1
            if items > MAX_JSON_ITEMS:
                raise NftError(f"{what}: JSON with more than {MAX_JSON_ITEMS} values")
            stack.append((child, depth + 1))
