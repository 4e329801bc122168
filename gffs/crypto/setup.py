"""Where a store meets its key: wrapping the backends marked ``encrypt`` in CryptBackend.

The index records the id of the key its store's data is encrypted with
(``meta crypt_key_id``, restored with the index). Opening the store then:
no key file and no record -> first use: a new key is made and recorded; no key
file but a record -> refused ("import it"); a key file whose id differs from
the record -> refused ("wrong key"). Without an index (a fresh machine listing
or restoring backups) each wrapper learns the store id from its backend's marker.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gffs.crypto import keyfile
from gffs.crypto.backend import CryptBackend
from gffs.crypto.seal import StoreKey
from gffs.errors import ConfigError
from gffs_backends.base import Backend

if TYPE_CHECKING:
    from gffs.config import Config
    from gffs.index import Index

log = logging.getLogger("gffs.crypto")

KEY_ID_META = b"crypt_key_id"
MODES_META = b"crypt_backends"       # names of the backends whose objects are sealed
MIGRATING_META = b"crypt_migrating"  # ... of those, the ones that may still hold plaintext
_LOADED: dict[str, StoreKey] = {}    # store id -> key, so one process asks once


def encrypting(cfg: Config) -> bool:
    return any(bc.encrypt for bc in cfg.backends)


def cached_key(store_id: str) -> StoreKey | None:
    """The key of *store_id* from this process's cache or its key file (None: no file)."""
    key = _LOADED.get(store_id)
    if key is None:
        key = keyfile.read_key(store_id)
        if key is not None:
            _LOADED[store_id] = key
    return key


def remember_key(store_id: str, key: StoreKey) -> None:
    """*key* (with its ring) is now the store's: later wrappers of this process use it."""
    _LOADED[store_id] = key


def recorded_key_id(index: Index) -> str | None:
    with index.read() as txn:
        return index.meta_json(txn, KEY_ID_META)


def store_key(index: Index, create: bool = True) -> StoreKey:
    """The key of *index*'s store, made and recorded at first use; ConfigError if it is missing or wrong."""
    store_id, recorded = index.store_id, recorded_key_id(index)
    path = keyfile.key_path(store_id)
    key = cached_key(store_id)
    if key is None:
        if recorded is not None or not create or index.readonly:
            raise ConfigError(f"store {store_id} is encrypted and its key is not at {path}: "
                              f"import it with 'gffs-admin key import FILE'")
        key = keyfile.new_key()
        keyfile.write_key_file(path, keyfile.encode_key(store_id, key))
        _LOADED[store_id] = key
        log.warning("made a new encryption key for store %s at %s: back it up "
                    "(gffs-admin key export); without it the encrypted data is lost", store_id, path)
    if recorded is None and not index.readonly:
        with index.write() as txn:
            index.set_meta_json(txn, KEY_ID_META, key.key_id)
    elif recorded is not None and recorded in {k.key_id for k in key.previous}:
        # a rotation wrote its new key file, then stopped before recording the new id
        if not index.readonly:
            with index.write() as txn:
                index.set_meta_json(txn, KEY_ID_META, key.key_id)
    elif recorded is not None and recorded != key.key_id:
        raise ConfigError(f"{path} holds key {key.key_id}, but store {store_id} is encrypted "
                          f"with key {recorded}: wrong key file")
    return key


def check_modes(cfg: Config, index: Index) -> set[str]:
    """Refuse a config that turns ``encrypt`` off on a backend holding sealed chunks;
    turning it on for one holding plaintext starts a migration.

    Sealed objects read as plaintext would look missing, and gc would delete
    them as strays: the whole backend lost to one changed line. The other way
    round the backend is recorded as *migrating* (``meta crypt_migrating``): its
    wrapper reads both forms, gc counts both as the chunk's, and rebalance
    rewrites each plaintext copy sealed (gffs/maintenance/rotate.py). A backend
    holding nothing may change; the index records which backends are sealed.
    Returns the migrating backends.
    """
    with index.read() as txn:
        recorded = set(index.meta_json(txn, MODES_META, []))
        migrating = set(index.meta_json(txn, MIGRATING_META, []))
    configured = {bc.name for bc in cfg.backends}
    want = {bc.name for bc in cfg.backends if bc.encrypt}
    changed = (want ^ recorded) & configured
    if not changed:
        return migrating
    from gffs.index import ChunkMap
    holding: set[str] = set()
    with index.read() as txn:
        for _digest, rec in ChunkMap(index).all_chunks(txn):
            holding.update(loc.backend for loc in rec.locations if loc.backend in changed)
            if holding == changed:
                break
    for name in sorted((changed - want) & holding):
        raise ConfigError(f"{cfg.source} [backends.{name}]: encrypt = false, but it holds "
                          f"encrypted chunks of this store; set encrypt = true for it "
                          f"(or drain it first; see docs/ENCRYPTION.md)")
    started = changed & want & holding
    if not index.readonly:
        with index.write() as txn:
            index.set_meta_json(txn, MODES_META, sorted((recorded - configured) | want))
            if started:
                index.set_meta_json(txn, MIGRATING_META, sorted(migrating | started))
    for name in sorted(started):
        log.warning("backend %s: encrypt = true, and it holds plaintext chunks: "
                    "'gffs-admin rebalance' rewrites them encrypted", name)
    return migrating | started


def migrating_backends(index: Index) -> set[str]:
    """Encrypted backends that may still hold plaintext chunks of this store."""
    with index.read() as txn:
        return set(index.meta_json(txn, MIGRATING_META, []))


def end_migration(index: Index, names: set[str]) -> None:
    with index.write() as txn:
        index.set_meta_json(txn, MIGRATING_META,
                            sorted(set(index.meta_json(txn, MIGRATING_META, [])) - names) or None)


def wrap_backends(cfg: Config, backends: dict[str, Backend], index: Index | None = None,
                  store_id: str | None = None) -> dict[str, Backend]:
    """*backends* with each one the config marks ``encrypt`` wrapped in a CryptBackend."""
    plain = check_modes(cfg, index) if index is not None else set()
    names = {bc.name for bc in cfg.backends if bc.encrypt}
    if not names:
        return backends
    key = store_key(index) if index is not None else (
        cached_key(store_id) if store_id is not None else None)
    if store_id is not None and key is None:
        raise ConfigError(f"store {store_id} is encrypted and its key is not at "
                          f"{keyfile.key_path(store_id)}: import it with 'gffs-admin key import FILE'")
    sid = index.store_id if index is not None else store_id
    out = dict(backends)
    for name in names:
        wrapped = CryptBackend(backends[name], sid, key, find_key=cached_key,
                               plaintext=name in plain)
        out[name] = wrapped
    if index is not None:
        attach_index(out, index)
    return out


def attach_index(backends: dict[str, Backend], index: Index) -> None:
    """Let the encrypted backends' list() map names to the chunk ids *index* knows."""
    from gffs.index import ChunkMap
    cm = ChunkMap(index)

    def known_ids() -> list[bytes]:
        with index.read() as txn:
            return list(cm.all_digests(txn))

    for b in backends.values():
        if isinstance(b, CryptBackend):
            b.known_ids = known_ids


def preflight(cfg: Config) -> None:
    """Before a mount forks its daemon: the key of an existing encrypted store is here
    and right (ConfigError otherwise, exit 2); a passphrase asked on the terminal is
    handed to the daemon through the environment."""
    if not (cfg.index_dir / "data.mdb").exists():
        return
    import os
    from gffs.index import Index
    index = Index(cfg.index_dir, readonly=True)
    try:
        check_modes(cfg, index)
        if not encrypting(cfg):
            return
        path = keyfile.key_path(index.store_id)
        if path.exists() and os.environ.get(keyfile.PASSPHRASE_ENV) is None:
            doc = keyfile.parse_key_file(path.read_bytes(), str(path))
            if keyfile.needs_passphrase(doc):
                phrase = keyfile.ask_passphrase(f"passphrase of the gffs key {path}: ")
                if phrase is not None:
                    os.environ[keyfile.PASSPHRASE_ENV] = phrase
        if recorded_key_id(index):
            store_key(index, create=False)
    finally:
        index.close()
