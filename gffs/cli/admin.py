"""`gffs-admin` — look after a store.

    gffs-admin [--config FILE] [--data-dir DIR] COMMAND ...
    status [--json]                      figures, backends, flows, copies short, queues
    rebalance [--dry-run] [--flow F] [--time-limit 2h] [--size-limit 50G] [--json]
    backend drain NAME [--cancel] [--dry-run] [limits] [--json]
    gc [--min-age SECONDS] [--json]

status reads the index directly (LMDB allows readers beside the mounted
daemon). The maintenance commands run inside the mount daemon through its
control socket when the store is mounted, and open the store here when not:
the same code either way (gffs/maintenance). Exit codes: 0 done, 1 failed or
problems left, 2 bad usage/config, 3 stopped at a limit (run again to go on),
4 plan refused (nothing changed), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import json
import stat
import sys

import trio

from gffs.config import Config, load_config
from gffs.errors import ConfigError, StoreLockedError
from gffs.index import ChunkMap, Index, Namespace, ROOT_INO
from gffs.index.env import DRAINING, LOGICAL_BYTES, N_CHUNKS, N_INODES, STORED_BYTES
from gffs.maintenance.progress import human_bytes
from gffs.maintenance.rebalance import chunk_flows, wanted_copies
from gffs.placement import Placement
from gffs.store import StoreLock, build_placement, open_backends
from gffs_backends.base import BackendError

# Modules adding subcommands: each has register(subparsers); a subcommand sets
# handler=fn(cfg, args) -> exit code with set_defaults.
ADMIN_EXTENSIONS: list[str] = ["gffs.cli.admin_jobs", "gffs.cli.admin_nft", "gffs.cli.admin_index",
                                "gffs.cli.admin_fsck", "gffs.cli.admin_key"]



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
        backends = open_backends(cfg)
        result["copies"] = copy_census(index, build_placement(cfg, backends))
    finally:
        index.close()

    async def capacities() -> dict:
        out = {}
        for name, b in backends.items():
            try:
                with trio.fail_after(cfg.backend_timeout):
                    cap = await b.capacity()
                health = "ok"
            except (BackendError, trio.TooSlowError) as exc:
                cap, health = None, f"unreachable: {exc or 'timeout'}"
            held = result["copies"]["per_backend"].get(name, {"chunks": 0, "bytes": 0})
            out[name] = {"type": type(b).__name__, "health": health,
                         "total": cap.total if cap else None, "free": cap.free if cap else None,
                         "chunks": held["chunks"], "bytes": held["bytes"],
                         "draining": name in result["copies"]["draining"]}
            await b.close()
        return out
    result["backends"] = trio.run(capacities)
    return result


def copy_census(index: Index, placement: Placement) -> dict:
    """Copies per backend, and chunks short of / beyond what their policies want."""
    with index.read() as txn:
        placement.draining = set(index.meta_json(txn, DRAINING, []))
    flows = chunk_flows(index)
    per_backend: dict[str, dict[str, int]] = {}
    under = over = 0
    with index.read() as txn:
        for digest, rec in ChunkMap(index).all_chunks(txn):
            wanted, required = wanted_copies(placement, digest, flows.get(digest))
            have = {loc.backend for loc in rec.locations}
            for name in have:
                held = per_backend.setdefault(name, {"chunks": 0, "bytes": 0})
                held["chunks"] += 1
                held["bytes"] += rec.stored_size
            under += sum(placement.trusted(n) for n in have & set(wanted)) < required
            over += bool(have - set(wanted))
    return {"per_backend": per_backend, "under": under, "over": over,
            "draining": sorted(placement.draining)}


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
    print(f"chunks     {s['chunks']}  ({human_bytes(s['logical_bytes'])} of data in "
          f"{human_bytes(s['stored_bytes'])} stored, compression {ratio:.2f}x)")
    print(f"garbage    {s['garbage_pending']} chunks waiting for deletion")
    print(f"repair     {s['repair_pending']} chunks below their copy count (queued)")
    print(f"images     {s['images_analysed']} analysed, {s['images_waiting']} waiting for analysis")
    print(f"flows      {len(s['flows'])}: {', '.join(s['flows'][:20])}")
    c = s["copies"]
    print(f"copies     {c['under']} chunks below their copy count, {c['over']} with copies "
          f"no policy wants (gffs-admin rebalance fixes both)")
    for name, b in s["backends"].items():
        cap = f"{human_bytes(b['free'])} free of {human_bytes(b['total'])}" if b["total"] else "capacity unknown"
        drain = ", DRAINING" if b["draining"] else ""
        print(f"backend    {name} ({b['type']}): {b['health']}{drain}, {b['chunks']} chunks "
              f"({human_bytes(b['bytes'])}), {cap}")
    for name, held in c["per_backend"].items():
        if name not in s["backends"]:
            print(f"backend    {name}: not in the config, still named by {held['chunks']} chunks")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gffs-admin", description="administer a gffs store")
    p.add_argument("--config")
    p.add_argument("--data-dir")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("status", help="chunks, bytes, flows, backends")
    s.add_argument("--json", action="store_true")
    for module in ADMIN_EXTENSIONS:
        importlib.import_module(module).register(sub)
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.data_dir)
        if getattr(args, "handler", None) is not None:
            return args.handler(cfg, args)
        result = status(cfg)
        print(json.dumps(result, indent=2)) if args.json else print_status(result)
        return 0
    except ConfigError as exc:
        print(f"gffs-admin: {exc}", file=sys.stderr)
        return 2
    except StoreLockedError as exc:
        print(f"gffs-admin: {exc}; unmount it first (gffs umount MOUNTPOINT)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
