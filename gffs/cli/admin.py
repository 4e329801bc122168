"""`gffs-admin` — look after a store.

    gffs-admin status [--data-dir DIR] [--config FILE] [--json]
    gffs-admin gc     [--data-dir DIR] [--config FILE] [--min-age SECONDS]

status reads the index directly (LMDB allows readers beside the mounted
daemon). gc needs the store to itself: it refuses while the store is mounted.
"""

from __future__ import annotations

import argparse
import importlib
import json
import stat
import sys
import time

import trio

from gffs.config import Config, load_config
from gffs.errors import ConfigError, StoreLockedError
from gffs.index import ChunkMap, Index, Namespace, ROOT_INO
from gffs.index.env import LOGICAL_BYTES, N_CHUNKS, N_INODES, STORED_BYTES
from gffs.store import Store, StoreLock, open_backends
from gffs_backends.base import BackendError
from gffs_backends.local import LocalBackend

# Modules adding subcommands: each has register(subparsers); a subcommand sets
# handler=fn(cfg, args) -> exit code with set_defaults.
ADMIN_EXTENSIONS: list[str] = []

GC_MIN_AGE = 3600.0  # never delete objects younger than this: a put may be in flight


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def status(cfg: Config) -> dict:
    if not (cfg.index_dir / "data.mdb").exists():
        raise ConfigError(f"no gffs store at {cfg.data_dir}")
    index = Index(cfg.index_dir, readonly=True)
    try:
        ns, cm = Namespace(index), ChunkMap(index)
        with index.read() as txn:
            flows = [name.decode(errors="replace") for _c, name, ino in ns.entries(txn, ROOT_INO)
                     if not name.startswith(b".") and stat.S_ISDIR(ns.get(txn, ino).mode)]
            result = {
                "store": str(cfg.data_dir),
                "mounted": _holder(cfg),
                "inodes": index.counter(txn, N_INODES),
                "chunks": index.counter(txn, N_CHUNKS),
                "logical_bytes": index.counter(txn, LOGICAL_BYTES),
                "stored_bytes": index.counter(txn, STORED_BYTES),
                "garbage_pending": len(cm.garbage(txn, limit=1_000_000)),
                "repair_pending": cm.repair_count(txn),
                "images_analysed": txn.stat(index.db["imagefacts"])["entries"],
                "images_waiting": txn.stat(index.db["imagequeue"])["entries"],
                "flows": flows,
            }
    finally:
        index.close()
    backends = open_backends(cfg)

    async def capacities() -> dict:
        out = {}
        for name, b in backends.items():
            try:
                with trio.fail_after(cfg.backend_timeout):
                    cap = await b.capacity()
                health = "ok"
            except (BackendError, trio.TooSlowError) as exc:
                cap, health = None, f"unreachable: {exc or 'timeout'}"
            out[name] = {"type": type(b).__name__, "health": health,
                         "total": cap.total if cap else None, "free": cap.free if cap else None}
            await b.close()
        return out
    result["backends"] = trio.run(capacities)
    return result


def _holder(cfg: Config) -> str | None:
    try:
        text = cfg.lock_file.read_text().strip()
    except FileNotFoundError:
        return None
    return text if text and not StoreLock.wait_free(cfg.lock_file, 0) else None


def print_status(s: dict) -> None:
    print(f"store      {s['store']}  ({s['mounted'] or 'not mounted'})")
    print(f"inodes     {s['inodes']}")
    ratio = s["logical_bytes"] / s["stored_bytes"] if s["stored_bytes"] else 1.0
    print(f"chunks     {s['chunks']}  ({_human(s['logical_bytes'])} of data in "
          f"{_human(s['stored_bytes'])} stored, compression {ratio:.2f}x)")
    print(f"garbage    {s['garbage_pending']} chunks waiting for deletion")
    print(f"repair     {s['repair_pending']} chunks below their copy count (queued)")
    print(f"images     {s['images_analysed']} analysed, {s['images_waiting']} waiting for analysis")
    print(f"flows      {len(s['flows'])}: {', '.join(s['flows'][:20])}")
    for name, b in s["backends"].items():
        cap = f"{_human(b['free'])} free of {_human(b['total'])}" if b["total"] else "capacity unknown"
        print(f"backend    {name} ({b['type']}): {b['health']}, {cap}")


def gc(cfg: Config, min_age: float) -> dict:
    """Delete garbage-queue chunks and objects no index row mentions (older than *min_age*)."""
    store = Store(cfg, "gffs-admin gc")
    try:
        async def run() -> dict:
            queued = 0
            while n := await store.chunks.delete_garbage():
                queued += n
            cm = store.chunks.chunkmap
            cutoff = time.time() - min_age
            orphans = 0
            for backend in store.backends.values():
                doomed = []
                async for info in backend.list():
                    if info.mtime > cutoff:
                        continue
                    try:
                        digest = bytes.fromhex(info.key)
                    except ValueError:
                        continue
                    with store.index.read() as txn:
                        if cm.known(txn, digest) is None:
                            doomed.append((info.key, ""))
                await backend.delete_many(doomed)
                orphans += len(doomed)
                if isinstance(backend, LocalBackend):
                    await trio.to_thread.run_sync(backend.remove_stale_temps, min_age)
            await store.chunks.sync()
            return {"garbage_deleted": queued, "unreferenced_deleted": orphans}
        return trio.run(run)
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gffs-admin", description="administer a gffs store")
    p.add_argument("--config")
    p.add_argument("--data-dir")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("status", help="chunks, bytes, flows, backends")
    s.add_argument("--json", action="store_true")
    g = sub.add_parser("gc", help="delete chunks nothing references (store must be unmounted)")
    g.add_argument("--min-age", type=float, default=GC_MIN_AGE,
                   help="only delete unreferenced objects older than this many seconds")
    g.add_argument("--json", action="store_true")
    for module in ADMIN_EXTENSIONS:
        importlib.import_module(module).register(sub)
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.data_dir)
        if getattr(args, "handler", None) is not None:
            return args.handler(cfg, args)
        if args.command == "status":
            result = status(cfg)
            print(json.dumps(result, indent=2)) if args.json else print_status(result)
        else:
            result = gc(cfg, args.min_age)
            if args.json:
                print(json.dumps(result))
            else:
                print(f"deleted {result['garbage_deleted']} queued and "
                      f"{result['unreferenced_deleted']} unreferenced chunks")
        return 0
    except ConfigError as exc:
        print(f"gffs-admin: {exc}", file=sys.stderr)
        return 2
    except StoreLockedError as exc:
        print(f"gffs-admin: {exc}; unmount it first (gffs umount MOUNTPOINT)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
