"""A large store: mount time, `ls -l` of a big flow, admin commands and the stat latency beside them.

    sudo python benchmarks/bench_scale.py [--quick] [--files N] [--mount-files M]
                                          [--json FILE] [--workdir DIR]
                                          [--keep DIR | --reuse DIR] [--no-admin]

1. Build: N tiny images (default 1,000,000; --quick 100,000) through the Filesystem
   layer without FUSE (Store + Filesystem in this process, one flow `bulk`, 10,000
   per directory), then M (default 100,000; --quick 10,000) through the real mount
   into one directory of flow `big`.
2. Mount time after dropping the page cache; `ls -l` of the `big` directory cold
   and warm; the daemon's peak RSS.
3. Each admin command in turn (status, rebalance --dry-run, fsck, gc, index
   backup) while a thread stat()s a file on the mount in a loop: the command's
   time, the worst stat latency during it (the FUSE requests must not wait
   for admin work), the daemon's largest RssAnon sampled meanwhile (its heap) and
   its peak RSS (VmHWM) after it: which command raised the peak (VmRSS also counts
   the index pages LMDB maps, up to data.mdb's size).
4. 1,000 files changed (an xattr each) then one more index backup: its time.
5. The index size (data.mdb).

Each row prints the figure and its target, PASS or MISS. It measures and does not
test: it always exits 0, and always unmounts and removes its work directory —
except with --keep DIR: the store is built in DIR and left there, and a later
--reuse DIR skips step 1 (sizes come from DIR/bench_scale.json) and measures steps
2-5 exactly as a fresh run would. Before it does, it removes what a run leaves
(backend b's index backups, the backup piece cache and copy), so the first backup
is again a full one; the 1,000 changes set a value new to each run.
--no-admin stops after step 2 (mount and `ls -l`): quick iterations on listing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from gffs.index import Namespace
from gffs.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import (GffsMount, Results, Row, bench_parser, drop_caches, log,  # noqa: E402
                        new_results, print_table, record_rss, run_benchmark, timed_ls)

PER_DIR = 10_000
CHANGED = 1_000
KEPT = "bench_scale.json"   # in a --keep directory: the sizes it was built with


@dataclass
class Sizes:
    files: int
    mount_files: int


def write_config(root: Path) -> Path:
    path = root / "gffs.toml"
    path.write_text(f"""[store]
data_dir = "{root / 'data'}"
analyze_images = false
index_backup_interval = 0
index_backup_to = ["b"]

[backends.a]
type = "local"
path = "{root / 'a'}"

[backends.b]
type = "local"
path = "{root / 'b'}"

[placement]
copies = 1
backends = ["a"]
""")
    return path


def build_offline(config: Path, n: int, batch: int = 1000) -> float:
    """N distinct tiny files without FUSE; files per second.

    Directories are made through the Filesystem class; files go through the
    layers its flush uses (ChunkStore.store, then Namespace and ChunkMap rows in
    one write transaction), *batch* files per transaction, so a million files
    take minutes rather than a million commits.
    """
    from gffs.config import load_config
    from gffs.fs.filesystem import Caller, Filesystem
    from gffs.index import ROOT_INO
    from gffs.index.records import InodeRecord

    store = Store(load_config(str(config)), "bench_scale build")
    user = Caller(0, 0)
    ns, cm = Namespace(store.index), store.chunks.chunkmap

    async def files(d: int, first: int, count: int) -> None:
        stored = [None] * count
        limit = trio.CapacityLimiter(32)

        async def one(k: int) -> None:
            async with limit:
                data = b"\xff\xd8\xff" + (first + k).to_bytes(8, "big")
                stored[k] = await store.chunks.store(data, False, "bulk")

        async with trio.open_nursery() as nursery:
            for k in range(count):
                nursery.start_soon(one, k)
        now = time.time_ns()
        try:
            with store.index.write() as txn:
                for k, sc in enumerate(stored):
                    rec = InodeRecord(stat.S_IFREG | 0o644, 0, 0, 1, sc.record.size, now, now,
                                      now, 0, d)
                    ino = ns.new_inode(txn, rec)
                    ns.add_entry(txn, d, f"i{first + k:07d}.jpg".encode(), ino)
                    cm.set_block(txn, ino, 0, sc.digest, sc.record)
        finally:
            store.chunks.release(stored)

    async def main() -> None:
        fs = Filesystem(store.index, store.chunks, analyze_images=False)
        await fs.start(0, 0)
        flow, _ = fs.mkdir(ROOT_INO, b"bulk", 0o755, user)
        for start in range(0, n, PER_DIR):
            d, _ = fs.mkdir(flow, f"d{start // PER_DIR:04d}".encode(), 0o755, user)
            log(f"offline: {start}/{n} files")
            for first in range(start, min(start + PER_DIR, n), batch):
                await files(d, first, min(batch, n - first, start + PER_DIR - first))
        await fs.shutdown()

    t0 = time.monotonic()
    try:
        trio.run(main)
    finally:
        store.close()
    return n / (time.monotonic() - t0)


def anon_rss_mb(pid: int | None) -> float | None:
    """RssAnon of *pid*: its heap, without the mapped index pages VmRSS also counts
    (LMDB reads through mmap, so a full scan maps the whole data.mdb into VmRSS)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, TypeError):
        return None
    m = re.search(r"^RssAnon:\s+(\d+) kB", status, re.M)
    return int(m.group(1)) / 1024 if m else None


class StatProbe:
    """A thread stat()ing one file on the mount in a loop; the worst latency seen, and
    the daemon's largest RssAnon sampled meanwhile (every 50th round)."""

    def __init__(self, path: Path, pid: int | None = None) -> None:
        self.path, self.worst, self._stop = path, 0.0, threading.Event()
        self.pid, self.anon_mb = pid, 0.0
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        rounds = 0
        while not self._stop.is_set():
            t0 = time.monotonic()
            os.stat(self.path)
            self.worst = max(self.worst, time.monotonic() - t0)
            if rounds % 50 == 0:
                self.anon_mb = max(self.anon_mb, anon_rss_mb(self.pid) or 0.0)
            rounds += 1
            time.sleep(0.002)

    def __enter__(self) -> "StatProbe":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def admin(config: Path, *args: str) -> float:
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "gffs.cli.admin", "--config", str(config), *args],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=3600, check=False)
    return time.monotonic() - t0


def row(results: Results, name: str, unit: str, value: float, target: str,
        limit: float | None = None) -> None:
    r = Row(name, unit, value, None, False, target)
    r.passed = None if limit is None else value < limit
    results.rows.append(r)


def build(work: Path, config: Path, m: GffsMount, sizes: Sizes, results: Results) -> None:
    """Step 1: the offline files, then the files through the mount (left unmounted)."""
    m.path.mkdir()
    log(f"building {sizes.files} files without FUSE")
    rate = build_offline(config, sizes.files)
    row(results, f"build without FUSE ({sizes.files} files)", "files/s", rate, "-")
    m.mount()
    big = m.path / "big" / "all"
    big.mkdir(parents=True)
    log(f"writing {sizes.mount_files} files through the mount")
    t0 = time.monotonic()
    for i in range(sizes.mount_files):
        (big / f"m{i:06d}.jpg").write_bytes(b"\xff\xd8\xff" + i.to_bytes(8, "big") + b"m")
    row(results, f"create through the mount ({sizes.mount_files})", "files/s",
        sizes.mount_files / (time.monotonic() - t0), "-")
    m.unmount()


def forget_backups(work: Path) -> None:
    """Remove what an earlier run's index backups left, so a reused store backs up in full."""
    from gffs.maintenance.backup import SNAPSHOT_DIR
    from gffs.maintenance.backup_snapshot import CACHE_FILE

    shutil.rmtree(work / "b", ignore_errors=True)
    (work / "b").mkdir()
    shutil.rmtree(work / "data" / SNAPSHOT_DIR, ignore_errors=True)
    (work / "data" / CACHE_FILE).unlink(missing_ok=True)


def run(work: Path, sizes: Sizes, results: Results, reuse: bool = False,
        keep: bool = False, admin_part: bool = True) -> None:
    config = write_config(work)
    m = GffsMount(work, config)
    try:
        if reuse:
            log(f"reusing the store in {work} ({sizes.files} + {sizes.mount_files} files)")
            results.notes.append(f"reused the store built in {work}")
            if m.is_mounted():
                raise RuntimeError(f"{m.path} is mounted: unmount it before --reuse")
            forget_backups(work)
        else:
            build(work, config, m, sizes, results)
            if keep:
                (work / KEPT).write_text(json.dumps({"files": sizes.files,
                                                     "mount_files": sizes.mount_files}) + "\n")
        big = m.path / "big" / "all"
        drop_caches(results)
        t0 = time.monotonic()
        m.mount()
        row(results, "mount after a cold cache", "s", time.monotonic() - t0, "< 1 s", 1.0)
        drop_caches(results)
        row(results, f"ls -l of {sizes.mount_files} entries, cold", "s", timed_ls(big), "< 2 s", 2.0)
        row(results, f"ls -l of {sizes.mount_files} entries, warm", "s", timed_ls(big), "< 1 s", 1.0)
        if not admin_part:
            m.unmount()
            return
        probe_file = big / "m000000.jpg"
        for name, args in (("status", ["status"]), ("rebalance --dry-run", ["rebalance", "--dry-run"]),
                           ("fsck", ["fsck"]), ("gc", ["gc"]), ("index backup", ["index", "backup"])):
            log(f"gffs-admin {name}")
            with StatProbe(probe_file, m.pid()) as probe:
                took = admin(config, *args)
            if name == "status":
                row(results, f"gffs-admin {name}", "s", took, "< 1 s", 1.0)
            else:
                row(results, f"gffs-admin {name}", "s", took, "-")
            row(results, f"  worst stat during {name}", "ms", probe.worst * 1000, "< 100 ms", 100)
            row(results, f"  daemon RssAnon during {name}", "MB", probe.anon_mb, "-")
            peak = m.peak_rss_mb()
            if peak is not None:
                row(results, f"  daemon peak RSS after {name}", "MB", peak, "-")
        log(f"changing {CHANGED} files, then backing up")
        changed = f"changed {time.time_ns()}".encode()   # new on a reused store too
        for i in range(min(CHANGED, sizes.mount_files)):
            os.setxattr(big / f"m{i:06d}.jpg", "user.xdg.tags", changed)
        row(results, f"index backup after {CHANGED} changes", "s",
            admin(config, "index", "backup"), "-")
        record_rss(m, results, "daemon")
        rss = results.rss_by_phase_mb.get("daemon")
        if rss is not None:
            row(results, "daemon peak RSS", "MB", rss, "< 300 MB", 300)
        m.unmount()
        row(results, "index size (data.mdb)", "MB",
            (work / "data" / "index" / "data.mdb").stat().st_size / 1e6, "-")
    finally:
        m.cleanup()


def main(argv: list[str] | None = None) -> int:
    p = bench_parser(__doc__)
    p.add_argument("--files", type=int, help="files built without FUSE (default 1,000,000)")
    p.add_argument("--mount-files", type=int, help="files through the mount (default 100,000)")
    kept = p.add_mutually_exclusive_group()
    kept.add_argument("--keep", metavar="DIR", type=Path,
                      help="build the store in DIR (new or empty) and leave it there")
    kept.add_argument("--reuse", metavar="DIR", type=Path,
                      help="measure the store an earlier --keep DIR built, without building")
    p.add_argument("--no-admin", action="store_true",
                   help="stop after mount and ls -l (skip admin commands, backup, index size)")
    args = p.parse_args(argv)
    sizes = Sizes(100_000, 10_000) if args.quick else Sizes(1_000_000, 100_000)
    sizes.files = args.files or sizes.files
    sizes.mount_files = args.mount_files or sizes.mount_files
    if args.reuse is not None:
        try:
            built = json.loads((args.reuse / KEPT).read_text())
        except (OSError, ValueError) as exc:
            p.error(f"--reuse {args.reuse}: not a store kept by --keep ({exc})")
        sizes = Sizes(built["files"], built["mount_files"])
    elif args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        p.error(f"--keep {args.keep}: not empty")
    results = new_results(sizes)
    reuse, keep = args.reuse is not None, args.keep is not None
    return run_benchmark(results, args, "gffs-bench-scale-",
                         lambda work: run(work, sizes, results, reuse, keep, not args.no_admin),
                         lambda rows: None, lambda r: print_table(r, name_width=40),
                         keep=args.reuse or args.keep)


if __name__ == "__main__":
    sys.exit(main())
