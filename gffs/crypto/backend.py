"""CryptBackend: any Backend with sealed objects under keyed names.

The chunk store, placement, moves, gc and fsck see an ordinary backend named by
chunk ids; the backend underneath only ever sees HMAC names and AEAD ciphertext
(gffs/crypto/seal.py). A copy that fails authentication raises
ObjectCorrupt, an ObjectMissing: the chunk store treats it as a bad copy, reads
another one and queues a repair, never returns its bytes.

Names cannot be turned back into chunk ids, so list() maps them through the
chunk ids the index knows (``known_ids``, set by the Store) and the ids this
process put recently. A listed name that maps to no id is a stray (a crash
leftover): it is yielded under its stored name, and delete() of that name
deletes it as it is, so gc and fsck remove strays the way they do unencrypted.

Each backend also holds a plaintext marker ``crypt/<store id>.json`` (store id,
key id, the sealed-object formats that may be present): the first operation
checks it, so a wrong key is one clear error instead of every chunk failing,
and a fresh machine can tell which store's key a backend needs. A marker
written before formats existed (no ``formats``) means format 1 only.
"""

from __future__ import annotations

import functools
import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Iterable

import trio

from gffs.crypto.seal import CHACHA, CIPHERS, SealError, StoreKey, sealed_size
from gffs_backends.base import (Backend, BackendError, Capacity, ObjectInfo, ObjectMissing,
                                check_meta_name, check_meta_prefix, in_thread)

MARKER_DIR = "crypt/"
RECENT_NAMES = 65536        # names of recent puts remembered for list()
SEAL_INLINE = 16 * 1024     # smaller objects are sealed on the trio thread
_KEY_RE = re.compile(r"[0-9a-f]{8,128}")
TAG_LEN = 8                 # hex digits of the key id in a locator: "k<tag>:<inner locator>"
_TAG_RE = re.compile(rf"k[0-9a-f]{{{TAG_LEN}}}:")
PLAIN_TAG = "p:"            # locator prefix of a plaintext object on a migrating backend


@dataclass(frozen=True, slots=True)
class PreSealed:
    """A chunk sealed ahead (prepare_put) by *sealer* for chunk id *key*."""
    sealer: StoreKey
    key: str
    sealed: bytearray


class ObjectCorrupt(ObjectMissing):
    """The object exists but fails authentication: no usable copy here."""


class KeyMismatch(BackendError):
    """The backend's data belongs to another key (or store) than the one we have."""


def marker_name(store_id: str) -> str:
    return f"{MARKER_DIR}{store_id}.json"


def marker_formats(doc: dict) -> set[int]:
    """The sealed-object formats a marker says may be present (no list: an older
    marker, format 1 only; unknown entries are kept out)."""
    found = doc.get("formats", [CHACHA])
    return {f for f in found if f in CIPHERS} if isinstance(found, list) else {CHACHA}


class CryptBackend(Backend):
    """Encrypts object bytes and names on the way into *inner*, checks them on the way out."""

    prepares_puts = True   # sealing: the chunk store does it in its hashing thread

    def __init__(self, inner: Backend, store_id: str | None, key: StoreKey | None,
                 known_ids: Callable[[], Iterable[bytes]] | None = None,
                 find_key: Callable[[str], StoreKey | None] | None = None,
                 plaintext: bool = False) -> None:
        """*store_id* and *key* None: learn them from the backend's marker (a fresh
        machine restoring its index), with *find_key(store_id)* giving our key files.
        *plaintext*: the backend is migrating to encryption and may still hold
        chunks in the clear under their own ids (read, listed and deleted as such)."""
        super().__init__(inner.name)
        self.inner = inner
        self.store_id = store_id
        self.key = key
        self.known_ids = known_ids
        self.find_key = find_key
        self.plaintext = plaintext
        self._recent: OrderedDict[str, str] = OrderedDict()   # name -> chunk id
        self._strays: set[str] = set()
        self._checked = False
        self._check_lock = trio.Lock()

    def __getattr__(self, attr: str) -> Any:
        # rpc_credentials, test hooks...: whatever else the wrapped backend has
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(attr)
        return getattr(inner, attr)

    # the wrapped backend's properties: encryption changes none of them
    @property
    def is_local(self) -> bool:  # type: ignore[override]
        return self.inner.is_local

    @property
    def trusted(self) -> bool:  # type: ignore[override]
        return self.inner.trusted

    @property
    def deferred(self) -> bool:  # type: ignore[override]
        return self.inner.deferred

    @property
    def read_only(self) -> bool:  # type: ignore[override]
        return self.inner.read_only

    def remove_stale_temps(self, older_than: float) -> int:
        return self.inner.remove_stale_temps(older_than)

    async def check(self) -> None:
        """The wrapped backend is usable (the key is checked at first use, which may
        write the marker: a check must change nothing, -o ro mounts check too)."""
        await self.inner.check()

    # the key check -------------------------------------------------------------------
    async def _check(self) -> None:
        """Once per process: the marker says this key, or there is none yet (we write it)."""
        if self._checked:
            return
        async with self._check_lock:
            if self._checked:
                return
            if self.key is None:
                await self._adopt_marker()
            name = marker_name(self.store_id)
            try:
                doc = json.loads(await self.inner.get_meta(name))
            except ObjectMissing:
                doc = None
            except ValueError:
                raise KeyMismatch(f"{self.name}: damaged encryption marker {name}") from None
            if doc is None:
                await self._write_marker(name, set())
            elif doc.get("key_id") in {k.key_id for k in self.key.previous}:
                await self._write_marker(name, marker_formats(doc))  # a rotation began: new key
            elif doc.get("key_id") != self.key.key_id:
                raise KeyMismatch(f"{self.name}: its data of store {self.store_id} is encrypted "
                                  f"with key {doc.get('key_id')}, not with key {self.key.key_id} "
                                  f"(wrong key file?)")
            elif self.key.write_format not in marker_formats(doc) and not self.read_only:
                await self._write_marker(name, marker_formats(doc))  # our puts add a format
            self._checked = True

    async def _write_marker(self, name: str, formats: set[int]) -> None:
        """The marker naming our key and *formats* plus the one our puts write."""
        formats = sorted(formats | {self.key.write_format})
        await self.inner.put_meta(name, json.dumps(
            {"store_id": self.store_id, "key_id": self.key.key_id,
             "cipher": CIPHERS[self.key.write_format], "formats": formats,
             "ciphers": [CIPHERS[f] for f in formats], "names": "HMAC-SHA256"}).encode())

    async def _adopt_marker(self) -> None:
        """Without a store id: the store whose marker is here and whose key we hold."""
        ids = [n[len(MARKER_DIR):-len(".json")] for n in await self.inner.list_meta(MARKER_DIR)
               if n.endswith(".json")]
        if not ids:
            raise KeyMismatch(f"{self.name}: holds no encrypted gffs store (no {MARKER_DIR} marker)")
        for sid in ids:
            key = self.find_key(sid) if self.find_key else None
            if key is not None:
                self.store_id, self.key = sid, key
                return
        raise KeyMismatch(f"{self.name}: holds encrypted data of store {', '.join(ids)}, and "
                          f"there is no key for it: import it with 'gffs-admin key import FILE'")

    def _check_key(self, key: str) -> None:
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise BackendError(f"{self.name}: invalid object key {key!r}")

    def _name(self, key: str, stray_ok: bool = False) -> str:
        self._check_key(key)
        if stray_ok and key in self._strays:
            return key
        return self.key.chunk_name(key)

    def _sealers(self, locator: str) -> tuple[list[StoreKey | None], str]:
        """The keys that may have sealed the object at *locator* (None: stored in the
        clear), and the inner locator.

        put() prefixes locators with ``k<key tag>:``, so an object names its key;
        ``p:`` names a plaintext object of a migrating backend; an untagged
        locator (written before either existed) may be any of those, sealed
        first. A tag of no key we hold: a retired key."""
        if _TAG_RE.match(locator):
            tag, inner = locator[1:TAG_LEN + 1], locator[TAG_LEN + 2:]
            return [k for k in self.key.ring() if k.tag == tag], inner
        if locator.startswith(PLAIN_TAG):
            return [None], locator[len(PLAIN_TAG):]
        return [*self.key.ring(), *([None] if self.plaintext else [])], locator

    def key_tag(self, locator: str) -> str | None:
        """The tag of the key an object's *locator* names (None: untagged or plaintext)."""
        return locator[1:TAG_LEN + 1] if _TAG_RE.match(locator) else None

    @staticmethod
    def _object_name(k: StoreKey | None, key: str) -> str:
        return key if k is None else k.chunk_name(key)

    @staticmethod
    def _tagged(k: StoreKey | None, inner: str) -> str:
        return f"{PLAIN_TAG}{inner}" if k is None else f"k{k.tag}:{inner}"

    async def _run(self, fn: Callable[..., bytes], *args: Any) -> bytes:
        if sum(len(a) for a in args if isinstance(a, (bytes, bytearray, memoryview))) <= SEAL_INLINE:
            return fn(*args)
        return await in_thread(fn, *args)

    # chunks -----------------------------------------------------------------------------
    def prepare_put(self, key: str, data: bytes) -> PreSealed | None:
        """Seal in the caller's worker thread: one object serves every encrypted backend
        of the store (they share the key), and put_prepared needs no hop of its own."""
        sealer = self.key
        if sealer is None:      # learnt from the marker at the first operation
            return None
        self._check_key(key)
        return PreSealed(sealer, key, sealer.seal_chunk(key, data))

    async def put(self, key: str, data: bytes) -> str:
        return await self.put_prepared(key, data, None)

    async def put_prepared(self, key: str, data: bytes, prepared: object) -> str:
        await self._check()
        sealer = self.key
        name = self._name(key)
        if isinstance(prepared, PreSealed) and prepared.sealer is sealer and prepared.key == key:
            sealed = prepared.sealed
        else:
            sealed = await self._run(sealer.seal_chunk, key, data)
        locator = await self.inner.put(name, sealed)
        self._recent[name] = key
        self._recent.move_to_end(name)
        while len(self._recent) > RECENT_NAMES:
            self._recent.popitem(last=False)
        return self._tagged(sealer, locator)

    async def get(self, key: str, locator: str = "") -> bytes:
        await self._check()
        self._check_key(key)
        keys, inner = self._sealers(locator)
        missing: ObjectMissing | None = None
        for k in keys:
            try:
                if k is None:   # plaintext: the chunk store checks its hash, as unencrypted
                    return await self.inner.get(key, inner)
                # opened in the worker thread that read it (one hop per chunk)
                return await self.inner.get_then(k.chunk_name(key), inner,
                                                 functools.partial(k.open_chunk, key))
            except ObjectMissing as exc:
                missing = exc
                continue
            except SealError as exc:
                raise ObjectCorrupt(f"{self.name}: chunk {key[:16]}: {exc}") from None
        raise missing or ObjectMissing(f"{self.name}: chunk {key[:16]} is under a retired key")

    def _doomed(self, key: str, locator: str) -> list[tuple[str, str]]:
        """Inner (name, locator) pairs a delete of *key* at *locator* removes: the
        object under its tagged key, or under every key of the ring if untagged."""
        self._check_key(key)
        if key in self._strays:
            return [(key, locator)]
        keys, inner = self._sealers(locator)
        return [(self._object_name(k, key), inner) for k in keys]

    async def delete(self, key: str, locator: str = "") -> None:
        await self._check()
        for name, inner in self._doomed(key, locator):
            await self.inner.delete(name, inner)
            self._strays.discard(name)

    async def delete_many(self, items: list[tuple[str, str]]) -> None:
        await self._check()
        names = [pair for k, loc in items for pair in self._doomed(k, loc)]
        await self.inner.delete_many(names)
        self._strays.difference_update(n for n, _ in names)

    async def resolve(self, key: str, locator: str) -> str | None:
        """*locator* tagged with the key whose object exists (current first); None if none does."""
        await self._check()
        if self.key_tag(locator) is not None or locator.startswith(PLAIN_TAG):
            return locator
        self._check_key(key)
        keys, inner = self._sealers(locator)
        for k in keys:
            if await self.inner.stat(self._object_name(k, key), inner) is not None:
                return self._tagged(k, inner)
        return None

    @staticmethod
    def stored_size(n: int) -> int:
        """Bytes the backend holds for an object of *n* bytes: stat and list report these."""
        return sealed_size(n)

    async def stat(self, key: str, locator: str = "") -> ObjectInfo | None:
        await self._check()
        self._check_key(key)
        keys, inner = self._sealers(locator)
        for k in keys:
            info = await self.inner.stat(self._object_name(k, key), inner)
            if info is not None:
                return ObjectInfo(key, info.size, info.mtime)
        return None

    def _name_map(self) -> dict[str, str]:
        names = dict(self._recent)
        if self.known_ids is not None:
            ring = self.key.ring()   # during a rotation both forms are the chunk's, not strays
            for digest in self.known_ids():
                key = digest.hex()
                for k in ring:
                    names[k.chunk_name(key)] = key
                if self.plaintext:   # migrating: the plaintext object is the chunk's too
                    names[key] = key
        return names

    async def list(self) -> AsyncIterator[ObjectInfo]:
        await self._check()
        names = await trio.to_thread.run_sync(self._name_map)
        self._strays = set()
        async for info in self.inner.list():
            key = names.get(info.key)
            if key is None:
                self._strays.add(info.key)
                key = info.key
            yield ObjectInfo(key, info.size, info.mtime)

    # metadata objects -------------------------------------------------------------------
    def _meta_name(self, name: str, key: StoreKey | None = None) -> str:
        check_meta_name(self.name, name)
        if name.startswith(MARKER_DIR):
            raise BackendError(f"{self.name}: {MARKER_DIR} is reserved for encryption markers")
        try:
            return (key or self.key).meta_name(name)
        except ValueError as exc:
            raise BackendError(f"{self.name}: {exc}") from None

    async def put_meta(self, name: str, data: bytes) -> None:
        await self._check()
        stored = self._meta_name(name)
        await self.inner.put_meta(stored, await self._run(self.key.seal_meta, name, data))

    async def get_meta(self, name: str) -> bytes:
        """Under the current key, else under a key being rotated away."""
        await self._check()
        missing: ObjectMissing | None = None
        for k in [*self.key.ring(), *([None] if self.plaintext else [])]:
            try:
                sealed = await self.inner.get_meta(name if k is None else self._meta_name(name, k))
            except ObjectMissing as exc:
                missing = exc
                continue
            if k is None:
                return sealed   # from before encryption; backup code checks its hashes
            try:
                return await self._run(k.open_meta, name, sealed)
            except SealError as exc:
                raise ObjectCorrupt(f"{self.name}: metadata object {name}: {exc}") from None
        raise missing  # type: ignore[misc]  # the ring holds at least the current key

    async def list_meta(self, prefix: str = "") -> list[str]:
        check_meta_prefix(self.name, prefix)
        await self._check()
        return sorted({name for name, _k, _s in await self.sealed_meta(prefix)})

    async def sealed_meta(self, prefix: str = "") -> list[tuple[str, StoreKey | None, str]]:
        """(name, key that sealed it or None if in the clear, stored name) of each
        metadata object under *prefix*."""
        head = prefix[:prefix.rfind("/") + 1] if "/" in prefix else prefix
        found = []
        ring = self.key.ring()
        for stored in await self.inner.list_meta(head):
            for k in ring:
                name = k.plain_meta_name(stored)
                if name is not None:
                    if name.startswith(prefix):
                        found.append((name, k, stored))
                    break
            else:   # migrating: the store's metadata from before encryption, in the clear
                if self.plaintext and stored.startswith(prefix) and not stored.startswith(MARKER_DIR):
                    found.append((stored, None, stored))
        return found

    async def delete_meta(self, name: str) -> None:
        await self._check()
        for k in self.key.ring():
            await self.inner.delete_meta(self._meta_name(name, k))
        if self.plaintext:
            await self.inner.delete_meta(name)

    # the rest is the wrapped backend's -------------------------------------------------
    async def capacity(self) -> Capacity | None:
        return await self.inner.capacity()

    async def sync(self) -> None:
        await self.inner.sync()

    async def close(self) -> None:
        await self.inner.close()
