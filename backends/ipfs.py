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

The RPC session (address, credentials, error translation) is backends/kubo_rpc.py,
the local CID computation backends/unixfs.py. See docs/backends/ipfs.md.
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any, AsyncIterator

from gffs_backends.base import (Backend, BackendError, BackendUnavailable, Capacity,
                                MalformedAnswer, ObjectInfo, ObjectMissing,
                                answers_checked_class, check_meta_name, check_meta_prefix)
from gffs_backends.kubo_rpc import KuboRpc
from gffs_backends.unixfs import CHUNKER_SIZE, RAW_CODEC, parse_cid, unixfs_cid

OPTIONS = {"api", "timeout", "mfs_dir", "cid_version", "trusted", "auth_token",
           "username", "password"}

_KEY_RE = re.compile(r"[0-9a-f]{8,128}")
_ENTRY_RE = re.compile(r"([0-9a-f]{8,128})\.(\d{1,12})")
_MFS_SEGMENT_RE = re.compile(r"[A-Za-z0-9._@+-]+")
_CID_RE = re.compile(r"[A-Za-z0-9]{10,200}")


class IpfsCorrupt(ObjectMissing):
    """The node answered with bytes that do not hash to the CID: this copy is unusable."""


# the backend ----------------------------------------------------------------------------

@answers_checked_class
class IpfsBackend(KuboRpc, Backend):
    #: True when pinned objects on this node count as a trusted copy (a node you run).
    trusted: bool = True

    def __init__(self, name: str, api: str | None = None, *, timeout: float = 30.0,
                 mfs_dir: str | None = None, cid_version: int = 1, trusted: bool = True,
                 auth_token: str | None = None, username: str | None = None,
                 password: str | None = None) -> None:
        super().__init__(name)
        self._connect(api, timeout, auth_token, username, password)
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
        self._known_dirs: set[str] = set()

    def __repr__(self) -> str:   # no credentials
        return f"IpfsBackend({self.name!r}, {self.base_url!r}, mfs_dir={self.mfs_dir!r})"

    @classmethod
    def from_config(cls, name: str, options: dict) -> "IpfsBackend":
        where = f"backend {name!r}"
        reject_unknown_options(name, options, OPTIONS)
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
        cid = self._add_answer(resp, what)
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
                codec == RAW_CODEC and hashlib.sha256(data).digest() == parse_cid(cid)[2]):
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
        """The node answers `version` (RPC API reachable, credentials accepted); a
        temporary failure is retried, a refused address fails at once (KuboRpc._probe)."""
        await self._probe(self._json, "version", [])

    async def capacity(self) -> Capacity | None:
        return await self._run(self._capacity)

    async def sync(self) -> None:
        """Nothing to do: Kubo's add and files/cp (flush=true) return once stored."""

    async def close(self) -> None:
        self._session.close()


def reject_unknown_options(name: str, options: dict, known: set[str]) -> None:
    """ValueError naming the first option not in *known* (and listing those that are):
    the ``ipfs`` and ``ipfs-share`` types word it alike."""
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"backend {name!r}: unknown option {unknown[0]!r} "
                         f"(known: {', '.join(sorted(known))})")


def _check_mfs_dir(path: str) -> str:
    segments = path.split("/")
    if not path.startswith("/") or len(segments) < 2 or not all(
            _MFS_SEGMENT_RE.fullmatch(s) and s not in (".", "..") for s in segments[1:]):
        raise ValueError(f"'mfs_dir' must be an absolute MFS path like /gffs/NAME, got {path!r}")
    return path
