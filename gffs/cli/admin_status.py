"""`gffs-admin status`: figures, backends (checked), flows, copies short, queues.

Reads the index directly (LMDB allows readers beside the mounted daemon) and
asks every backend whether it is usable (Backend.check). Figures come from
maintained counters, never a walk: copies per backend are kept by ChunkMap;
chunks short of or beyond their policy and per-flow totals come from the census
the last full rebalance plan (dry runs too) saved, with its time; ``--full``
walks the store to count them now. Imported only when the command runs: it
pulls in trio, LMDB and the configured backends.
"""

from __future__ import annotations

import argparse
import json
import stat
import sys
import time

import trio

from gffs.config import Config
from gffs.errors import ConfigError
from gffs.index import ChunkMap, Index, Namespace, ROOT_INO
from gffs.index.env import COPY_CENSUS, DRAINING, LOGICAL_BYTES, N_CHUNKS, N_INODES, STORED_BYTES
from gffs.maintenance.control import commit_mounted
from gffs.maintenance.progress import human_bytes
from gffs.store import StoreLock, build_placement, check_backends, open_backends
from gffs_backends.base import BackendError


def cmd_status(cfg: Config, args: argparse.Namespace) -> int:
    result = status(cfg, full=getattr(args, "full", False))
    print(json.dumps(result, indent=2)) if args.json else print_status(result)
    return 0


def status(cfg: Config, full: bool = False) -> dict:
    if not (cfg.index_dir / "data.mdb").exists():
        raise ConfigError(f"no gffs store at {cfg.data_dir}")
    holder = _holder(cfg)
    problem = commit_mounted(cfg.data_dir) if holder else None
    if problem:
        print(f"gffs-admin: the mount daemon did not commit ({problem}); figures may be "
              "a second old", file=sys.stderr)
    index = Index(cfg.index_dir, readonly=True)
    try:
        ns, cm = Namespace(index), ChunkMap(index)
        with index.read() as txn:
            flows = [name.decode(errors="replace") for _c, name, ino in ns.entries(txn, ROOT_INO)
                     if not name.startswith(b".") and stat.S_ISDIR(ns.get(txn, ino).mode)]
            result = {
                "store": str(cfg.data_dir),
                "mounted": holder,
                "inodes": index.counter(txn, N_INODES),
                "chunks": index.counter(txn, N_CHUNKS),
                "logical_bytes": index.counter(txn, LOGICAL_BYTES),
                "stored_bytes": index.counter(txn, STORED_BYTES),
                "garbage_pending": txn.stat(index.db["garbage"])["entries"],
                "repair_pending": cm.repair_count(txn),
                "images_analysed": txn.stat(index.db["imagefacts"])["entries"],
                "images_waiting": txn.stat(index.db["imagequeue"])["entries"],
                "flows": flows,
            }
            per_backend = cm.backend_counts(txn)
            census = index.meta_json(txn, COPY_CENSUS)
            draining = sorted(index.meta_json(txn, DRAINING, []))
        if per_backend is None:      # a store not mounted since the counters came in
            per_backend = cm.count_backends()
        backends = open_backends(cfg)
        if full:
            from gffs.maintenance.rebalance import make_plan  # the chunk store: only here
            placement = build_placement(cfg, backends)
            placement.draining = set(draining)
            census = make_plan(index, placement, backends).census()
        result["copies"] = {"per_backend": per_backend, "draining": draining,
                            "under": census["under"] if census else None,
                            "over": census["over"] if census else None,
                            "counted_at": census["at"] if census else None}
        result["flow_totals"] = census.get("flows", {}) if census else {}
    finally:
        index.close()

    async def capacities() -> dict:
        problems = await check_backends(backends, cfg.backend_timeout)
        optional = {bc.name for bc in cfg.backends if bc.optional}
        out = {}
        for name, b in backends.items():
            cap, health = None, "ok"
            if name in problems:
                health = (f"{'optional, ' if name in optional else ''}"
                          f"unusable: {problems[name]}")
            else:
                try:
                    with trio.fail_after(cfg.backend_timeout):
                        cap = await b.capacity()
                except (BackendError, trio.TooSlowError) as exc:
                    health = f"unreachable: {exc or 'timeout'}"
            held = result["copies"]["per_backend"].get(name, {"chunks": 0, "bytes": 0})
            out[name] = {"type": type(b).__name__, "health": health,
                         "total": cap.total if cap else None, "free": cap.free if cap else None,
                         "chunks": held["chunks"], "bytes": held["bytes"],
                         "draining": name in result["copies"]["draining"]}
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
    print(f"chunks     {s['chunks']}  ({human_bytes(s['logical_bytes'])} of data in "
          f"{human_bytes(s['stored_bytes'])} stored, compression {ratio:.2f}x)")
    print(f"garbage    {s['garbage_pending']} chunks waiting for deletion")
    print(f"repair     {s['repair_pending']} chunks below their copy count (queued)")
    print(f"images     {s['images_analysed']} analysed, {s['images_waiting']} waiting for analysis")
    print(f"flows      {len(s['flows'])}: {', '.join(s['flows'][:20])}")
    for name, t in list(s["flow_totals"].items())[:20]:
        print(f"flow       {name}: {t['files']} files, {human_bytes(t['bytes'])}")
    c = s["copies"]
    if c["under"] is None:
        print("copies     not counted yet (gffs-admin status --full, or rebalance --dry-run)")
    else:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(c["counted_at"]))
        print(f"copies     {c['under']} chunks below their copy count, {c['over']} with copies "
              f"no policy wants, as of {when} (gffs-admin rebalance fixes both)")
    for name, b in s["backends"].items():
        cap = f"{human_bytes(b['free'])} free of {human_bytes(b['total'])}" if b["total"] else "capacity unknown"
        drain = ", DRAINING" if b["draining"] else ""
        print(f"backend    {name} ({b['type']}): {b['health']}{drain}, {b['chunks']} chunks "
              f"({human_bytes(b['bytes'])}), {cap}")
    for name, held in c["per_backend"].items():
        if name not in s["backends"]:
            print(f"backend    {name}: not in the config, still named by {held['chunks']} chunks")

