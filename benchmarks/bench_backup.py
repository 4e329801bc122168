"""Index backup: the cut around changes next to the full passes, on the same state.

    python benchmarks/bench_backup.py [--files N] [--changed C] [--spread] [--workdir DIR]
                                      [--store DIR]

Builds N tiny files without FUSE (bench_scale.build_offline: one flow, 10,000
per directory; with --store, once into DIR, reused by later runs), backs the
index up once to a local backend (the process's first backup: a full pass),
then three times: changes C files (an xattr each: consecutive ones, or with
--spread evenly spread over the store) and times, on that same state (the
tracked changes, the cut in memory and the cache file restored before each,
order rotated), the backup that cuts only around the changes (new), the full
pass with the fingerprint cache (the old incremental path), and a full pass
without a cache. Best of 3 each, with how long each held the live index's read
transaction; then ``env.copy(compact=True)`` alone. Measures, never fails: exit 0.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import PER_DIR, build_offline, write_config  # noqa: E402

from gffs.config import load_config  # noqa: E402
from gffs.fs.filesystem import Caller, Filesystem  # noqa: E402
from gffs.index import ROOT_INO  # noqa: E402
from gffs.maintenance.backup import CACHE_FILE, backup_index  # noqa: E402
from gffs.index.changes import Changes  # noqa: E402
from gffs.maintenance.backup import _state  # noqa: E402
from gffs.maintenance.progress import Progress  # noqa: E402
from gffs.store import Store  # noqa: E402


REPEAT = 3


def timed_backup(store: Store) -> tuple[float, dict]:
    t0 = time.monotonic()
    result = trio.run(lambda: backup_index(store, Progress()))
    return time.monotonic() - t0, result


def change(store: Store, n_files: int, changed: int, spread: bool, tag: bytes) -> None:
    """An xattr on *changed* files: consecutive ones (a batch tagged together), or spread
    evenly over the store (the worst case: every piece of the touched tables changes)."""
    async def main() -> None:
        fs = Filesystem(store.index, store.chunks, analyze_images=False)
        await fs.start(0, 0)
        flow, _ = fs.lookup(ROOT_INO, b"bulk")
        step = max(1, n_files // changed) if spread else 1
        for i in range(0, step * changed, step):
            d, _ = fs.lookup(flow, f"d{i // PER_DIR:04d}".encode())
            ino, _ = fs.lookup(d, f"i{i:07d}.jpg".encode())
            fs.setxattr(ino, b"user.xdg.tags", tag)
        await fs.shutdown()
    trio.run(main)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=100_000)
    p.add_argument("--changed", type=int, default=1000)
    p.add_argument("--spread", action="store_true",
                   help="change files spread over the store, not consecutive ones")
    p.add_argument("--workdir", default="/tmp")
    p.add_argument("--store", help="build the store in this directory once and reuse it "
                   "(kept afterwards; each run changes other xattr values)")
    args = p.parse_args()
    results: dict[str, dict] = {}
    if args.store:                      # reuse a built store (kept afterwards)
        work = Path(args.store)
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="gffs-bench-backup-", dir=args.workdir))
    marker = work / f"built-{args.files}"
    try:
        config = write_config(work)
        if not marker.exists():
            build_offline(config, args.files)
            marker.touch()
        cfg = load_config(str(config))
        store = Store(cfg, "bench_backup")
        try:
            first, r0 = timed_backup(store)
            cache = cfg.data_dir / CACHE_FILE
            tracker, state = store.index.changes, _state(store)
            best = {"changes": float("inf"), "fingerprint": float("inf"), "full": float("inf")}
            read = dict(best)
            for rep in range(REPEAT):
                change(store, args.files, args.changed, args.spread,
                       f"changed-{time.time_ns()}".encode())
                # the same state for each variant: the changes, the cut in memory, the cache
                saved = Changes()
                saved.merge(tracker._pending)
                pieces, before = state.pieces, cache.read_bytes()
                order = ["changes", "fingerprint", "full"]
                for how in order[rep % 2:] + order[:rep % 2]:
                    with tracker.lock:
                        tracker._pending = Changes()
                        tracker._pending.merge(saved)
                    state.pieces = pieces
                    cache.write_bytes(before)
                    if how != "changes":
                        tracker.doubt()         # a full pass: the old path
                    if how == "full":
                        cache.unlink()
                    took, r = timed_backup(store)
                    assert r["pass"] == ("changes" if how == "changes" else "full"), r
                    if took < best[how]:
                        best[how], read[how] = took, r["read_seconds"]
                    results[how] = r
            copy_dir = work / "copy"
            shutil.rmtree(copy_dir, ignore_errors=True)
            copy_dir.mkdir()
            t0 = time.monotonic()
            store.index.env.copy(str(copy_dir), compact=True)
            copy = time.monotonic() - t0
            size = (copy_dir / "data.mdb").stat().st_size
            shutil.rmtree(copy_dir, ignore_errors=True)
        finally:
            store.close()
        r1, r2 = results["changes"], results["full"]
        print(f"files {args.files}, changed {args.changed} ({'spread' if args.spread else 'consecutive'}), "
              f"index copy {size / 1e6:.1f} MB, {r1['pieces']} pieces; best of {REPEAT}; "
              f"uptime: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
        print(f"first backup of the process (full pass)    {first:7.2f} s  "
              f"({r0['pieces_reused']} pieces reused from the cache file)")
        print(f"after the changes, cut around them (new)   {best['changes']:7.2f} s  "
              f"(read txn {read['changes']:.2f} s, {r1['pieces_reused']} pieces reused unread)")
        print(f"  full pass, fingerprint cache (old path)  {best['fingerprint']:7.2f} s  "
              f"(read txn = env.copy {read['fingerprint']:.2f} s)")
        print(f"  full pass, no cache                      {best['full']:7.2f} s  "
              f"(same pieces: {r2['backends'][0]['unchanged']})")
        print(f"  env.copy(compact=True) alone             {copy:7.2f} s")
        print(f"old / new: {best['fingerprint'] / best['changes']:.1f} x, "
              f"full / new: {best['full'] / best['changes']:.1f} x")
    finally:
        if not args.store:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
