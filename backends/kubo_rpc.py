"""The HTTP RPC session to one Kubo node: its address, credentials, error translation.

Shared by the ``ipfs`` backend and the ``ipfs-share`` source (gffs/share/backend.py),
which talk to a node the same way. The calls are blocking ``requests`` calls run in
worker threads under ``trio.fail_after(timeout)``; connection errors, timeouts and
5xx answers raise BackendUnavailable, Kubo's "not found" messages ObjectMissing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import requests
import trio

from gffs_backends.base import (BackendError, BackendFull, BackendUnavailable, MalformedAnswer,
                                EndpointRefused, ObjectMissing, answers_checked, in_thread,
                                retry_at_check, with_retry)

DEFAULT_API = "/ip4/127.0.0.1/tcp/5001"     # Kubo's default Addresses.API

# Kubo error messages meaning "this node does not have it" (command errors are HTTP 500).
_MISSING = ("not found locally", "could not find", "not pinned", "file does not exist",
            "no link named", "does not exist")
_FULL = ("no space left on device", "disk quota exceeded")


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


class KuboRpc:
    """Mixin of a backend that talks to a Kubo node: ``_connect`` in ``__init__``, then
    ``_rpc`` / ``_json`` (blocking) inside ``_run`` (a bounded worker thread)."""

    name: str

    def _connect(self, api: str | None, timeout: float, auth_token: str | None,
                 username: str | None, password: str | None) -> None:
        """The address (*api*, else ``$IPFS_PATH/api``), timeout and credentialed session."""
        self._api_from_file = api is None
        self.base_url = api_url(api) if api is not None else self._read_api_file()
        self.timeout = float(timeout)
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

    @property
    def rpc_credentials(self) -> tuple[dict[str, str] | None, tuple[str, str] | None]:
        """Headers and basic auth the RPC calls carry (for another HTTP client of this node)."""
        token = self._session.headers.get("Authorization")
        return ({"Authorization": token} if token else None), self._session.auth

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
            if _refused(exc):
                raise ApiRefused(f"{self.name}: IPFS API at {self.base_url} unreachable "
                                 f"(connection refused or unknown host)") from None
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

    def _add_answer(self, resp: requests.Response, what: str = "") -> str:
        """The last CID of an ``add`` answer (one JSON line per added file; a directory's
        top comes last)."""
        cid = None
        for line in resp.content.splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and isinstance(obj.get("Hash"), str):
                cid = obj["Hash"]
        if cid is None:
            where = f" for {what}" if what else ""
            raise MalformedAnswer(f"{self.name}: add answered no CID{where}")
        return cid

    async def _run(self, fn: Callable, *args) -> Any:
        """A blocking RPC call in a worker thread, bounded by the timeout (not retried:
        a node that does not answer now is skipped by health)."""
        with answers_checked(self.name, fn.__name__.strip("_")):
            return await with_retry(lambda: in_thread(fn, *args), timeout=self.timeout,
                                    classify=self._classify)

    async def _probe(self, fn: Callable, *args) -> Any:
        """An RPC call for a mount's check: temporary failures (5xx, a reset, one attempt
        timing out) retried with backoff for up to half the timeout; a refused address or
        rejected credentials fail at once."""
        with answers_checked(self.name, fn.__name__.strip("_")):
            return await with_retry(
                lambda: in_thread(fn, *args), timeout=self.timeout, classify=self._classify,
                retry_time=self.timeout / 2, retry_raised=True,
                retry_if=retry_at_check)

    def _classify(self, exc: BaseException) -> BackendError:
        if isinstance(exc, trio.TooSlowError):
            return BackendUnavailable(f"{self.name}: IPFS API at {self.base_url} gave no answer "
                                      f"within {self.timeout:g} s")
        raise exc   # requests' errors are translated in _rpc; parse errors by answers_checked


class ApiRefused(EndpointRefused):
    """Nothing listens at the API address (refused, or the host does not resolve)."""


def _refused(exc: requests.ConnectionError) -> bool:
    """Whether *exc* failed to open a connection at all (urllib3's NewConnectionError:
    refused, unresolvable), not one that broke or timed out once open."""
    from urllib3.exceptions import NewConnectionError   # (a ConnectTimeoutError subclass:
    # urllib3 raises ConnectTimeoutError itself for a timeout, which is not a refusal)
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, NewConnectionError):
            return True
        seen = getattr(seen, "reason", None) or (seen.args[0] if seen.args and
                                                 isinstance(seen.args[0], BaseException)
                                                 else None)
    return False


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

