"""The key side of a rotation: a new key generation in the key file, wrappers switched to it.

``begin`` makes a new key, writes the key file with the new key first and the
old one after it (both open objects while objects are re-sealed), records the
new id in the index and switches every CryptBackend of the store to it, so
every put from then on seals under the new key. ``retire`` drops the old key
from the file once no object uses it. The file is written before the index
(store_key accepts a recorded id that is the file's previous key), so a crash
between the two leaves a store that opens. The object work is
gffs/maintenance/rotate.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gffs.crypto import keyfile
from gffs.crypto.backend import CryptBackend
from gffs.crypto.seal import StoreKey
from gffs.crypto.setup import KEY_ID_META, remember_key
from gffs.errors import ConfigError

if TYPE_CHECKING:
    from gffs.store import Store


def crypt_backends(store: Store) -> dict[str, CryptBackend]:
    return {n: b for n, b in store.backends.items() if isinstance(b, CryptBackend)}


def current_key(store: Store) -> StoreKey | None:
    """The key every encrypted backend of *store* seals with (they share one object)."""
    return next((b.key for b in crypt_backends(store).values()), None)


def _passphrase(store_id: str) -> str | None:
    """The passphrase of the existing key file (None: it has none), checked by unsealing."""
    path = keyfile.key_path(store_id)
    doc = keyfile.parse_key_file(path.read_bytes(), str(path))
    if not keyfile.needs_passphrase(doc):
        return None
    phrase = keyfile.ask_passphrase(f"passphrase of the gffs key {path}: ")
    if phrase is None:
        raise ConfigError(f"{path} is protected by a passphrase: set {keyfile.PASSPHRASE_ENV}")
    keyfile.unseal(doc, str(path), phrase)
    return phrase


def _write(store_id: str, key: StoreKey) -> None:
    raw = keyfile.encode_key(store_id, key, _passphrase(store_id))
    keyfile.write_key_file(keyfile.key_path(store_id), raw, replace=True)


def _switch(store: Store, key: StoreKey) -> None:
    for b in crypt_backends(store).values():
        b.key = key
        b._checked = False      # the next operation rewrites the marker for the new key
    remember_key(store.index.store_id, key)


def begin(store: Store) -> StoreKey:
    """Start a rotation: the new key (its ``previous`` holds the old one), now in use."""
    old = current_key(store)
    assert old is not None and not old.previous
    new = keyfile.new_key()
    new.previous = [old]
    _write(store.index.store_id, new)
    with store.index.write() as txn:
        store.index.set_meta_json(txn, KEY_ID_META, new.key_id)
    _switch(store, new)
    return new


def retire(store: Store, key: StoreKey) -> list[str]:
    """End the rotation: only *key* stays in the file and in use; the retired key ids."""
    gone = [k.key_id for k in key.previous]
    alone = StoreKey(key.master)
    _write(store.index.store_id, alone)
    _switch(store, alone)
    return gone
