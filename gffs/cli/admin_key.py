"""`gffs-admin key init | show | export | import | change-passphrase | rotate`: the store key.

The key lives in ``$XDG_CONFIG_HOME/gffs/<store id>.key`` (docs/ENCRYPTION.md).
Without it the data on encrypted backends is unreadable, so ``export`` it to a
safe place once; ``import`` puts an exported file back (a new machine: import,
then ``index restore``). New passphrases come from ``$GFFS_NEW_KEY_PASSPHRASE``
or a prompt; an empty one stores the key unprotected. ``cryptography`` is
imported by these commands only, not at every gffs-admin start.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from gffs.cli.admin_jobs import _limit_options, cli_run
from gffs.config import Config
from gffs.errors import ConfigError

if TYPE_CHECKING:
    from gffs.crypto.seal import StoreKey

NEW_PASSPHRASE_ENV = "GFFS_NEW_KEY_PASSPHRASE"


def _store_id(cfg: Config, args: argparse.Namespace) -> str:
    if getattr(args, "store_id", None):
        return args.store_id
    if not (cfg.index_dir / "data.mdb").exists():
        raise ConfigError(f"no gffs store at {cfg.data_dir} (give --store-id)")
    from gffs.index import Index
    index = Index(cfg.index_dir, readonly=True)
    try:
        return index.store_id
    finally:
        index.close()


def _new_passphrase() -> str | None:
    if NEW_PASSPHRASE_ENV in os.environ:
        return os.environ[NEW_PASSPHRASE_ENV] or None
    if not sys.stdin.isatty():
        raise ConfigError(f"set {NEW_PASSPHRASE_ENV} (empty: no passphrase) or run on a terminal")
    import getpass
    first = getpass.getpass("new passphrase (empty: none): ")
    if first and getpass.getpass("again: ") != first:
        raise ConfigError("the two passphrases differ")
    return first or None


def _load(store_id: str) -> StoreKey:
    from gffs.crypto import keyfile
    key = keyfile.read_key(store_id)
    if key is None:
        raise ConfigError(f"no key for store {store_id} at {keyfile.key_path(store_id)}")
    return key


def _init(cfg: Config, args: argparse.Namespace) -> int:
    """Make the key now (instead of at the first mount), under the store lock."""
    from gffs.crypto import keyfile
    from gffs.crypto.setup import store_key
    from gffs.index import Index
    from gffs.store import StoreLock
    lock = StoreLock(cfg.lock_file)
    lock.acquire("gffs-admin key init")
    try:
        index = Index(cfg.index_dir, block_size=cfg.block_size_kb << 10)
        try:
            path = keyfile.key_path(index.store_id)
            if path.exists():
                print(f"store {index.store_id} already has a key at {path}")
                return 1
            key = store_key(index)
            phrase = _new_passphrase() if args.passphrase else None
            if phrase:
                keyfile.write_key_file(path, keyfile.encode_key(index.store_id, key, phrase),
                                       replace=True)
        finally:
            index.close()
    finally:
        lock.release()
    print(f"made key {key.key_id} for store {index.store_id} at {path}: back it up with "
          f"'gffs-admin key export FILE'")
    return 0


def _show(cfg: Config, args: argparse.Namespace) -> int:
    from gffs.crypto import keyfile
    sid = _store_id(cfg, args)
    path = keyfile.key_path(sid)
    if not path.exists():
        print(f"store {sid}: no key at {path}")
        return 1
    doc = keyfile.parse_key_file(path.read_bytes(), str(path))
    print(f"store {sid}: key {doc['key_id']} at {path}, "
          f"{'protected by a passphrase' if keyfile.needs_passphrase(doc) else 'no passphrase'}")
    return 0


def _export(cfg: Config, args: argparse.Namespace) -> int:
    from gffs.crypto import keyfile
    sid = _store_id(cfg, args)
    path = keyfile.key_path(sid)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"no key for store {sid} at {path}") from None
    keyfile.unseal(keyfile.parse_key_file(raw, str(path)), str(path))   # it opens: worth keeping
    keyfile.write_key_file(Path(args.file).expanduser(), raw, replace=args.force)
    print(f"exported the key of store {sid} to {args.file} (keep it safe: it opens the data)")
    return 0


def _import(cfg: Config, args: argparse.Namespace) -> int:
    from gffs.crypto import keyfile
    src = Path(args.file).expanduser()
    try:
        raw = src.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {src}: {exc.strerror}") from None
    doc = keyfile.parse_key_file(raw, str(src))
    key = keyfile.unseal(doc, str(src))
    dest = keyfile.key_path(doc["store_id"])
    if dest.exists():
        have = keyfile.parse_key_file(dest.read_bytes(), str(dest))
        if have["key_id"] == key.key_id:
            print(f"store {doc['store_id']}: key {key.key_id} is already at {dest}")
            return 0
        if not args.force:
            raise ConfigError(f"{dest} holds another key ({have['key_id']}) for store "
                              f"{doc['store_id']}: pass --force to replace it")
    keyfile.write_key_file(dest, raw, replace=True)
    print(f"imported key {key.key_id} of store {doc['store_id']} to {dest}")
    return 0


def _change_passphrase(cfg: Config, args: argparse.Namespace) -> int:
    from gffs.crypto import keyfile
    sid = _store_id(cfg, args)
    key = _load(sid)
    phrase = _new_passphrase()
    keyfile.write_key_file(keyfile.key_path(sid), keyfile.encode_key(sid, key, phrase),
                           replace=True)
    print(f"store {sid}: key {key.key_id} {'now under the new passphrase' if phrase else 'now without a passphrase'}")
    return 0


def _render_rotate(r: dict) -> None:
    if r.get("dry_run"):
        state = "a rotation is in progress" if r["rotating"] else "no rotation in progress"
        print(f"{state}; {r['copies_to_rewrite']} copies not under the current key")
        return
    print(f"key {r['key_id']}: rewrote {r['copies_rewritten']} copies, re-sealed "
          f"{r['backup_objects_resealed']} index backup objects")
    if r.get("stopped"):
        print(f"stopped at the {r['stopped']}; run 'gffs-admin key rotate' again to continue")
    elif "retired" in r:
        print(f"done: retired key {', '.join(r['retired'])}; export the key file again "
              f"(gffs-admin key export FILE): older exports no longer open the data")
    else:
        print(f"not finished: {r['copies_left']} copies and {r['backup_objects_left']} backup "
              f"objects are still under the old key; run it again")
    for failure in r.get("failures", [])[:10]:
        print(f"  {failure}")


def _rotate(cfg: Config, args: argparse.Namespace) -> int:
    return cli_run(cfg, "key-rotate", {"dry_run": args.dry_run, "time_limit": args.time_limit,
                                       "size_limit": args.size_limit},
                   json_output=args.json, render=_render_rotate)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("key", help="the store's encryption key (docs/ENCRYPTION.md)")
    ksub = p.add_subparsers(dest="key_command", required=True)
    i = ksub.add_parser("init", help="make the key now (otherwise the first mount does)")
    i.add_argument("--passphrase", action="store_true", help="protect it with a passphrase")
    i.set_defaults(handler=_init)
    s = ksub.add_parser("show", help="which key the store has, and where")
    s.set_defaults(handler=_show)
    e = ksub.add_parser("export", help="copy the key file somewhere safe")
    e.add_argument("file")
    e.add_argument("--force", action="store_true", help="replace FILE")
    e.set_defaults(handler=_export)
    m = ksub.add_parser("import", help="install an exported key file (new machine)")
    m.add_argument("file")
    m.add_argument("--force", action="store_true", help="replace a different key of that store")
    m.set_defaults(handler=_import)
    c = ksub.add_parser("change-passphrase", help="protect the key file with a new passphrase")
    c.set_defaults(handler=_change_passphrase)
    r = ksub.add_parser("rotate", help="re-encrypt everything under a new key (resumable)")
    _limit_options(r)
    r.set_defaults(handler=_rotate)
    for q in (s, e, c):
        q.add_argument("--store-id", help="a store whose index is not here")
