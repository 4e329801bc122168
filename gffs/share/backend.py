"""Read-only IPFS source of shared flows (type ``ipfs-share``): blocks of files someone published.

A private share's locator starts with ``k<key tag>/``: the object is sealed under that
share key (gffs/share/private.py), which ``keys`` must hold (``attach_index`` loads the keys
of the flows imported from this source); ``get`` opens it.

An imported flow's chunks are not copies this store made: they are byte ranges of the
publisher's UnixFS files, fetched through a Kubo node (its RPC API, as the ``ipfs``
backend talks to it) from whoever provides them on the IPFS network. A location's
locator is ``<file CID>:<offset>:<length>``; ``get`` answers ``cat`` of that range in the
chunk codec's raw form, so the chunk store verifies the SHA-256 as for every copy.

Nothing is ever written or deleted here: ``put`` refuses (placement never picks a
backend marked ``read_only``), ``delete`` forgets nothing on the network, ``list`` is
empty (gc and fsck find no unrecorded objects). Copies here are not trusted: they
count toward no policy until ``gffs-admin flow pin`` (or a rebalance) copies them to
the store's own backends. A publisher that is gone makes ``cat`` hang in Kubo: the
``timeout`` (default 30 s) turns that into BackendUnavailable, i.e. EIO, never a hang.
"""

from __future__ import annotations

import re
import uuid
from typing import AsyncIterator, Awaitable, Callable, Iterator
from urllib.parse import quote

import requests
import trio

from gffs.crypto.seal import SealError, StoreKey
from gffs.share.private import share_key
from gffs_backends.base import (BackendError, BackendUnavailable, MalformedAnswer, ObjectInfo,
                                ObjectMissing, answers_checked, answers_checked_class, in_thread)
from gffs_backends.ipfs import IpfsBackend, IpfsCorrupt, reject_unknown_options
from gffs_backends.unixfs import CHUNKER_SIZE, parse_cid, unixfs_cid

SHARES_META = b"shares"     # index meta JSON: flow name -> {"manifest", "root", "source", "key"}

OPTIONS = {"api", "timeout", "auth_token", "username", "password"}
_LOCATOR_RE = re.compile(r"(?:k([0-9a-f]{8})/)?([A-Za-z0-9]{10,200}):(\d{1,15}):(\d{1,10})")
MAX_OBJECT = 64 << 20          # a manifest or thumbnail fetched whole
IPNS_RE = re.compile(r"[A-Za-z0-9]{20,100}")
# ``ipfs add`` with Kubo's defaults (CIDv0, dag-pb leaves): what anybody's plain add makes
ADD_PARAMS = [("pin", "true"), ("cid-version", "0"), ("raw-leaves", "false"),
              ("chunker", f"size-{CHUNKER_SIZE}"), ("hash", "sha2-256"),
              ("wrap-with-directory", "false"), ("progress", "false"), ("quieter", "true")]


def share_locator(cid: str, offset: int, length: int, key_tag: str = "") -> str:
    """*key_tag*: the share key that sealed the object (private shares)."""
    return f"{f'k{key_tag}/' if key_tag else ''}{cid}:{offset}:{length}"


@answers_checked_class
class IpfsShareBackend(IpfsBackend):
    """``[backends.NAME] type = "ipfs-share"``, ``api`` as for ``ipfs``, ``timeout``."""

    trusted = False
    read_only = True

    def __init__(self, name: str, api: str | None = None, *, timeout: float = 30.0,
                 **kw) -> None:
        super().__init__(name, api, timeout=timeout, mfs_dir="/gffs-share-unused",
                         cid_version=0, trusted=False, **kw)
        self.keys: dict[str, StoreKey] = {}   # share key tag -> key (private shares)

    def attach_index(self, index) -> None:
        """Take the keys of the private shares this store imported from this source."""
        with index.read() as txn:
            shares = index.meta_json(txn, SHARES_META, {})
        for info in shares.values():
            if info.get("source") == self.name and info.get("key"):
                key = share_key(bytes.fromhex(info["key"]))
                self.keys[key.tag] = key

    @classmethod
    def from_config(cls, name: str, options: dict) -> "IpfsShareBackend":
        reject_unknown_options(name, options, OPTIONS)
        base = IpfsBackend.from_config(name, options)     # the same option checks
        base._session.close()
        return cls(name, options.get("api"), timeout=base.timeout, **_credentials(options))

    def __repr__(self) -> str:
        return f"IpfsShareBackend({self.name!r}, {self.base_url!r})"

    # blocking ---------------------------------------------------------------------------
    def _range(self, locator: str) -> tuple[str, int, int, str]:
        m = _LOCATOR_RE.fullmatch(locator or "")
        if not m:
            raise BackendError(f"{self.name}: invalid share locator {locator!r}")
        return self._check_cid(m.group(2)), int(m.group(3)), int(m.group(4)), m.group(1) or ""

    def _cat_range(self, cid: str, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` of *cid*, fetched from the network if need be."""
        data = self._rpc("cat", [("arg", cid), ("offset", str(offset)),
                                 ("length", str(length))]).content
        if len(data) != length:
            raise IpfsCorrupt(f"{self.name}: {cid} gave {len(data)} bytes at {offset}, "
                              f"expected {length}")
        return data

    def _fetch_object(self, cid: str) -> bytes:
        """A whole small object (a manifest), verified against its CID."""
        data = self._rpc("cat", [("arg", self._check_cid(cid)),
                                 ("length", str(MAX_OBJECT + 1))]).content
        if len(data) > MAX_OBJECT:
            raise BackendError(f"{self.name}: {cid} is larger than {MAX_OBJECT >> 20} MiB")
        if unixfs_cid(data, parse_cid(cid)[0]) != cid:
            raise IpfsCorrupt(f"{self.name}: the bytes of {cid} do not match it")
        return data

    # publishing (gffs/share/publish.py) ----------------------------------------------------
    def _add_file(self, name: str, data: bytes) -> str:
        expected = unixfs_cid(data, 0)
        got = self._add_answer(self._rpc("add", ADD_PARAMS, upload=data,
                                         filename=quote(name, "")))
        if got != expected:
            raise BackendError(f"{self.name}: the node added {name} as {got}, expected {expected}")
        return got

    async def add_file(self, name: str, data: bytes) -> str:
        """``add`` one file with Kubo's defaults (pinned); its CID, checked here."""
        return await self._run(self._add_file, name, data)

    async def add_directory(self, top: str, parts: list[tuple[str, Callable[[], Awaitable[bytes]]]],
                            expected: str) -> str:
        """``add`` a directory tree streamed part by part (each file's bytes come from its
        loader, on the trio thread, only while it is sent: memory stays one file). Its CID
        must be *expected*. No overall deadline: a large flow takes as long as it takes;
        each socket operation is bounded by the timeout."""
        boundary = uuid.uuid4().hex

        def head(path: str, ctype: str) -> bytes:
            return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                    f"filename=\"{quote(path, '')}\"\r\nContent-Type: {ctype}\r\n\r\n").encode()

        def body() -> Iterator[bytes]:
            yield head(top, "application/x-directory") + b"\r\n"
            made: set[str] = set()
            for path, load in sorted(parts, key=lambda p: p[0]):
                segs = path.split("/")
                for i in range(1, len(segs)):
                    d = "/".join(segs[:i])
                    if d not in made:
                        made.add(d)
                        yield head(f"{top}/{d}", "application/x-directory") + b"\r\n"
                yield head(f"{top}/{path}", "application/octet-stream")
                yield trio.from_thread.run(load)
                yield b"\r\n"
            yield f"--{boundary}--\r\n".encode()

        def send() -> str:
            url = f"{self.base_url}/api/v0/add"
            try:
                resp = self._session.post(
                    url, params=ADD_PARAMS, data=body(), timeout=(10.0, self.timeout),
                    headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
            except requests.RequestException as exc:
                raise BackendUnavailable(f"{self.name}: add of {top} failed "
                                         f"({type(exc).__name__})") from None
            if resp.status_code != 200:
                raise BackendError(f"{self.name}: add of {top} answered HTTP "
                                   f"{resp.status_code}: {resp.content[:200]!r}")
            return self._add_answer(resp)

        with answers_checked(self.name, "add"):
            got = await in_thread(send)
        if got != expected:
            raise BackendError(f"{self.name}: the node added {top} as {got}, expected "
                               f"{expected}: it imports with other settings")
        return got

    async def publish_name(self, key_name: str, cid: str) -> str:
        """Point the IPNS name of node key *key_name* (made once) at /ipfs/*cid*."""
        def work() -> str:
            try:
                self._json("key/gen", [("arg", key_name), ("type", "ed25519")])
            except BackendError as exc:
                if "already exists" not in str(exc):
                    raise
            out = self._json("name/publish", [("arg", f"/ipfs/{cid}"), ("key", key_name),
                                              ("allow-offline", "true")])
            name = out.get("Name") if isinstance(out, dict) else None
            if not isinstance(name, str) or not IPNS_RE.fullmatch(name):
                raise MalformedAnswer(f"{self.name}: name/publish answered no IPNS name")
            return name
        return await self._run(work)

    async def resolve(self, name: str) -> str:
        """The CID an IPNS name points at now."""
        def work() -> str:
            out = self._json("name/resolve", [("arg", f"/ipns/{name}"), ("recursive", "true")])
            path = out.get("Path") if isinstance(out, dict) else None
            if not isinstance(path, str) or not path.startswith("/ipfs/"):
                raise MalformedAnswer(f"{self.name}: /ipns/{name} resolved to {path!r}")
            return self._check_cid(path[len("/ipfs/"):])
        return await self._run(work)

    # interface ----------------------------------------------------------------------------
    async def put(self, key: str, data: bytes) -> str:
        raise BackendError(f"{self.name}: an ipfs-share source is read-only")

    async def get(self, key: str, locator: str = "") -> bytes:
        self._check_key(key)
        cid, offset, length, tag = self._range(locator)
        share_key = self.keys.get(tag) if tag else None
        if tag and share_key is None:
            raise BackendError(f"{self.name}: no share key {tag} for a private share's block")
        data = await self._run(self._cat_range, cid, offset, length)
        if share_key is None:
            return b"\0" + data        # the chunk codec's raw form (codec.CODEC_RAW)
        try:
            return bytes(share_key.open_chunk(key, data))
        except SealError as exc:       # altered, or not this share's object
            raise IpfsCorrupt(f"{self.name}: sealed block {key[:16]}: {exc}") from None

    async def fetch(self, cid: str) -> bytes:
        """The verified bytes of a whole published object (manifest, thumbnail)."""
        return await self._run(self._fetch_object, cid)

    async def delete(self, key: str, locator: str = "") -> None:
        """Nothing to delete: the publisher's objects are not ours."""

    async def delete_many(self, items: list[tuple[str, str]]) -> None:
        """Nothing to delete (see delete)."""

    async def stat(self, key: str, locator: str = "") -> ObjectInfo | None:
        self._check_key(key)
        if not locator:
            return None
        _cid, _offset, length, _tag = self._range(locator)
        return ObjectInfo(key, length + 1, 0.0)

    async def list(self) -> AsyncIterator[ObjectInfo]:  # type: ignore[override]
        return
        yield  # an async generator that yields nothing

    async def put_meta(self, name: str, data: bytes) -> None:
        raise BackendError(f"{self.name}: an ipfs-share source is read-only")

    async def get_meta(self, name: str) -> bytes:
        raise ObjectMissing(f"{self.name}: an ipfs-share source holds no metadata objects")

    async def list_meta(self, prefix: str = "") -> list[str]:
        return []

    async def delete_meta(self, name: str) -> None:
        """Nothing to delete."""

    async def capacity(self) -> None:
        return None


def _credentials(options: dict) -> dict:
    return {k: options[k] for k in ("auth_token", "username", "password") if k in options}
