#!/usr/bin/env python3
"""Core gffs benchmark: the same workloads on a gffs mount and on a plain directory.

Run as root from the repository root::

    python benchmarks/bench_core.py            # full size (a few minutes)
    python benchmarks/bench_core.py --quick    # smoke run (seconds)
    python benchmarks/bench_core.py --json results.json

Everything lives in one temporary work directory (``--workdir``, default /tmp):
the source files, the plain directory and the gffs store with its mount point,
so gffs and "plain" write to the same disk. The script always unmounts and
deletes the work directory, also on Ctrl-C or an error, and always exits 0:
it measures, it does not test. PASS/MISS only says whether a target is met.

How each figure is taken, and why:

1. Ingest of large images (MB/s, MB = 10^6 bytes). Incompressible files that
   look like JPEGs (JPEG magic + random bytes; gffs skips compression for
   them, as for real photos) are generated once into a source directory and
   read once so both copies read the source from the page cache. The timed
   step is ``cp -r SRC DEST`` for DEST = a new flow in the mount and a new
   directory next to it. It ends when cp exits, i.e. after every close():
   in gffs close() returns only once the chunks are written and the index
   change journaled (group commit: durable within ~1 s); on the plain directory the data
   is only in the page cache. That asymmetry is the user-visible reality of
   "cp is done", so it is kept, not corrected. ``sync`` runs (untimed)
   between steps so one step's writeback does not slow down the next.
2. Ingest of small files (files/s): the same with ~30 KiB files, where the
   per-file cost (lookup, create, flush, release, index commits) dominates.
3. ``ls -l`` of a directory with many entries (seconds). The entries are
   created untimed (tiny files written from Python). Both sides then run
   ``ls -l DIR > /dev/null`` (LC_ALL=C, so no locale-dependent sorting cost)
   twice: "cold" is the first run after the gffs remount (kernel dentry and
   attribute caches empty) with the page cache dropped before each side's
   first run, so the LMDB pages and the ext4 directory blocks both come from
   disk; "warm" is the immediately following second run of each side.
4. Cold read-back of the large images (MB/s): gffs is unmounted and remounted
   (empty block cache, no kernel page cache for the mount), the page cache is
   dropped (``sync; echo 3 > /proc/sys/vm/drop_caches``) before each side,
   then every file is read with 1 MiB ``readinto`` calls. The byte count is
   checked so a short read cannot look fast.
5. Peak RSS of the gffs daemon (MB): VmHWM from /proc/PID/status, read just
   before every unmount (each remount starts a new daemon); the maximum over
   all daemons is reported, the per-phase values go to the JSON file.

Targets: ingest and read-back throughput ratio gffs/plain >= 0.5, ``ls -l``
time ratio gffs/plain <= 3, daemon peak RSS < 200 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Callable

MB = 1_000_000
JPEG_MAGIC = b"\xff\xd8\xff\xe0"
READ_SIZE = 1 << 20


@dataclass(frozen=True)
class Sizes:
    n_big: int
    big_bytes: int
    n_small: int
    small_bytes: int
    n_entries: int


FULL = Sizes(n_big=100, big_bytes=2 << 20, n_small=3000, small_bytes=30 << 10, n_entries=10_000)
QUICK = Sizes(n_big=20, big_bytes=2 << 20, n_small=500, small_bytes=30 << 10, n_entries=2000)


@dataclass
class Row:
    name: str
    unit: str
    gffs: float
    plain: float | None
    higher_is_better: bool
    target: str
    ratio: float | None = None
    passed: bool | None = None
    want: float | None = None   # the ratio to reach, when not the default 0.5 / 3


@dataclass
class Results:
    sizes: dict[str, int]
    rows: list[Row] = field(default_factory=list)
    rss_by_phase_mb: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    host: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# a gffs mount driven through the CLI, like a user would


class GffsMount:
    """One store under ``root``: ``mount()``, ``unmount()``, ``cleanup()``, ``peak_rss_mb()``."""

    def __init__(self, root: Path, config: Path | None = None) -> None:
        self.path = root / "mnt"
        self.data_dir = root / "data"
        self.config = config

    def _cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gffs.cli.main", *args],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def mount(self) -> None:
        extra = ["--config", str(self.config)] if self.config else []
        res = self._cli("mount", str(self.path), "--data-dir", str(self.data_dir), *extra)
        if res.returncode != 0:
            raise RuntimeError(f"gffs mount failed: {res.stderr.strip()}")

    def is_mounted(self) -> bool:
        target = str(self.path)
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == target for line in f)

    def pid(self) -> int | None:
        try:
            m = re.search(r"pid (\d+)", (self.data_dir / "gffs.lock").read_text())
        except FileNotFoundError:
            return None
        return int(m.group(1)) if m else None

    def peak_rss_mb(self) -> float | None:
        """VmHWM (peak resident set) of the running daemon, in MB."""
        pid = self.pid()
        if pid is None:
            return None
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return None
        m = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        return int(m.group(1)) * 1024 / MB if m else None

    def unmount(self) -> None:
        if self.is_mounted():
            res = self._cli("umount", str(self.path))
            if res.returncode != 0:
                raise RuntimeError(f"gffs umount failed: {res.stderr.strip()}")

    def remount(self) -> None:
        self.unmount()
        self.mount()

    def cleanup(self) -> None:
        """Best effort, for the error path: unmount, lazily if need be, kill a leftover daemon."""
        pid = self.pid()
        try:
            if self.is_mounted():
                self._cli("umount", str(self.path), "--timeout", "30", timeout=60)
        except Exception:
            pass
        if self.is_mounted():
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
        if pid is not None and Path(f"/proc/{pid}").exists():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ---------------------------------------------------------------------------
# helpers


def drop_caches(results: Results) -> bool:
    """sync, then drop the page cache, dentries and inodes; note it once if impossible."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError as exc:
        note = f"could not drop caches ({exc.strerror}): 'cold' figures are warm"
        if note not in results.notes:
            results.notes.append(note)
        return False


def make_files(directory: Path, count: int, approx_size: int, rng: random.Random,
               prefix: str) -> int:
    """``count`` incompressible JPEG-looking files of approx_size +/- 3 %; returns total bytes."""
    directory.mkdir(parents=True)
    total = 0
    spread = approx_size * 3 // 100
    for i in range(count):
        size = approx_size + rng.randint(-spread, spread)
        (directory / f"{prefix}{i:05d}.jpg").write_bytes(JPEG_MAGIC + os.urandom(size - 4))
        total += size
    return total


def read_tree(directory: Path) -> int:
    """Read every file of a directory with 1 MiB reads; returns the bytes read."""
    view = memoryview(bytearray(READ_SIZE))
    total = 0
    for name in sorted(os.listdir(directory)):
        with open(directory / name, "rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    return total


def timed(cmd: list[str], **kwargs: Any) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, **kwargs)
    return time.perf_counter() - t0


def timed_cp(src: Path, dest: Path) -> float:
    read_tree(src)  # source in the page cache for both sides
    os.sync()
    seconds = timed(["cp", "-r", str(src), str(dest)])
    os.sync()       # untimed: do not let this step's writeback slow the next
    return seconds


def timed_cp_durable(src: Path, dest: Path) -> float:
    """cp, then sync: until the data is on stable storage (gffs's chunk files and
    index live on the local disk, which sync(1) flushes too)."""
    read_tree(src)
    os.sync()
    t0 = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(dest)], check=True)
    os.sync()
    return time.perf_counter() - t0


def timed_parallel_cp(src: Path, dests: list[Path]) -> float:
    """Several cp -r of the same tree at once (one per destination); wall time."""
    read_tree(src)
    os.sync()
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["cp", "-r", str(src), str(d)]) for d in dests]
    if any(p.wait() != 0 for p in procs):
        raise RuntimeError("a parallel cp failed")
    seconds = time.perf_counter() - t0
    os.sync()
    return seconds


class NullFsMount:
    """benchmarks/nullfs.py mounted at *path*: the do-nothing pyfuse3 reference."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "NullFsMount":
        self.path.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("nullfs.py")),
                                      str(self.path)])
        deadline = time.monotonic() + 60
        while not os.path.ismount(self.path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the null pyfuse3 filesystem did not mount")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def timed_ls(directory: Path) -> float:
    env = dict(os.environ, LC_ALL="C")
    return timed(["ls", "-l", str(directory)], stdout=subprocess.DEVNULL, env=env)


def record_rss(mount: GffsMount, results: Results, phase: str) -> None:
    rss = mount.peak_rss_mb()
    if rss is not None:
        results.rss_by_phase_mb[phase] = round(rss, 1)


# ---------------------------------------------------------------------------
# the benchmark


def run(work: Path, sizes: Sizes, results: Results, log: Callable[[str], None]) -> None:
    rng = random.Random(1234)
    src, plain = work / "src", work / "plain"
    plain.mkdir()
    mount = GffsMount(work / "gffs")
    log(f"generating {sizes.n_big} large and {sizes.n_small} small source files in {src}")
    big_total = make_files(src / "big", sizes.n_big, sizes.big_bytes, rng, "img")
    small_total = make_files(src / "small", sizes.n_small, sizes.small_bytes, rng, "thumb")
    results.sizes.update(big_total_bytes=big_total, small_total_bytes=small_total)

    try:
        mount.mount()
        mnt = mount.path

        # 1. large-image ingest
        log("1/5 ingest of large images")
        t_plain = timed_cp(src / "big", plain / "big")
        t_gffs = timed_cp(src / "big", mnt / "big")
        big_mib = sizes.big_bytes >> 20
        results.rows.append(Row(f"ingest {sizes.n_big} x {big_mib} MiB images", "MB/s",
                                big_total / MB / t_gffs, big_total / MB / t_plain, True,
                                "ratio >= 0.5"))

        # 2. small-file ingest
        log("2/5 ingest of small files")
        t_plain = timed_cp(src / "small", plain / "small")
        t_gffs = timed_cp(src / "small", mnt / "small")
        small_kib = sizes.small_bytes >> 10
        results.rows.append(Row(f"ingest {sizes.n_small} x {small_kib} KiB files", "files/s",
                                sizes.n_small / t_gffs, sizes.n_small / t_plain, True,
                                "ratio >= 0.5"))
        # the same cp into a pyfuse3 filesystem that does nothing: what the FUSE round
        # trips and the pyfuse3/trio request loop allow before any work (issue target:
        # 2,000 files/s absolute, which is above this ceiling on some machines)
        with NullFsMount(work / "nullfs") as null:
            t_null = timed_cp(src / "small", null.path / "small")
        results.rows.append(Row(f"  same, vs a do-nothing pyfuse3 fs", "files/s",
                                sizes.n_small / t_gffs, sizes.n_small / t_null, True,
                                "ratio >= 0.8", want=0.8))
        results.notes.append(f"small-file ingest target 2,000 files/s: gffs "
                             f"{sizes.n_small / t_gffs:.0f}, do-nothing pyfuse3 fs "
                             f"{sizes.n_small / t_null:.0f} files/s on this machine")

        # 2b. the same, until durable; and four cp into four flows at once
        log("2b/5 ingest until durable (cp; sync), four cp at once")
        t_plain = timed_cp_durable(src / "big", plain / "big-durable")
        t_gffs = timed_cp_durable(src / "big", mnt / "big-durable")
        results.rows.append(Row(f"ingest {sizes.n_big} x {big_mib} MiB, cp; sync", "MB/s",
                                big_total / MB / t_gffs, big_total / MB / t_plain, True,
                                "ratio >= 0.5"))
        t_one = timed_cp(src / "small", mnt / "small-one")
        t_four = timed_parallel_cp(src / "small", [mnt / f"small-par{i}" for i in range(4)])
        results.rows.append(Row(f"4 cp at once vs 1 ({sizes.n_small} x {small_kib} KiB)",
                                "files/s", 4 * sizes.n_small / t_four, sizes.n_small / t_one,
                                True, "ratio >= 1.5", want=1.5))

        # 3. ls -l of a large directory
        log(f"3/5 creating {sizes.n_entries} entries (untimed), then ls -l")
        for base in (plain / "many", mnt / "many"):
            base.mkdir()
            for i in range(sizes.n_entries):
                (base / f"entry{i:06d}.jpg").write_bytes(JPEG_MAGIC + b"%06d" % i)
        os.sync()
        record_rss(mount, results, "ingest + entry creation")
        mount.remount()
        drop_caches(results)
        gffs_cold = timed_ls(mnt / "many")
        gffs_warm = timed_ls(mnt / "many")
        drop_caches(results)
        plain_cold = timed_ls(plain / "many")
        plain_warm = timed_ls(plain / "many")
        results.rows.append(Row(f"ls -l {sizes.n_entries} entries, cold", "s",
                                gffs_cold, plain_cold, False, "ratio <= 3"))
        results.rows.append(Row(f"ls -l {sizes.n_entries} entries, warm", "s",
                                gffs_warm, plain_warm, False, "ratio <= 3"))

        # 4. cold read-back
        log("4/5 cold read-back of the large images")
        record_rss(mount, results, "ls -l")
        mount.remount()
        drop_caches(results)
        t0 = time.perf_counter()
        n_gffs = read_tree(mnt / "big")
        t_gffs = time.perf_counter() - t0
        drop_caches(results)
        t0 = time.perf_counter()
        n_plain = read_tree(plain / "big")
        t_plain = time.perf_counter() - t0
        if n_gffs != big_total or n_plain != big_total:
            raise RuntimeError(f"read-back returned {n_gffs} (gffs) / {n_plain} (plain) bytes, "
                               f"expected {big_total}")
        results.rows.append(Row(f"cold read-back {sizes.n_big} x {big_mib} MiB", "MB/s",
                                big_total / MB / t_gffs, big_total / MB / t_plain, True,
                                "ratio >= 0.5"))

        # 5. peak RSS, just before the final unmount
        log("5/5 daemon peak RSS")
        record_rss(mount, results, "cold read-back")
        peak = max(results.rss_by_phase_mb.values(), default=float("nan"))
        results.rows.append(Row("daemon peak RSS (VmHWM)", "MB", peak, None, False, "< 200 MB"))
        mount.unmount()
    finally:
        mount.cleanup()


def judge(rows: list[Row]) -> None:
    for r in rows:
        if r.plain is not None:
            r.ratio = r.gffs / r.plain if r.plain else float("inf")
            if r.want is not None:
                r.passed = r.ratio >= r.want if r.higher_is_better else r.ratio <= r.want
            else:
                r.passed = r.ratio >= 0.5 if r.higher_is_better else r.ratio <= 3
        else:
            r.passed = r.gffs < 200


def print_table(results: Results, reference: str = "plain", name_width: int = 34,
                footer: str | None = None) -> None:
    """One row per measurement: gffs, the reference, their ratio, the target, PASS/MISS."""
    head = f"{'measurement':<{name_width}} {'unit':>7} {'gffs':>10} {reference:>10} " \
           f"{'ratio':>7}  {'target':<13} result"
    print(head)
    print("-" * len(head))
    for r in results.rows:
        ref = f"{r.plain:10.3f}" if r.plain is not None else f"{'-':>10}"
        ratio = f"{r.ratio:7.2f}" if r.ratio is not None else f"{'-':>7}"
        verdict = "-" if r.passed is None else ("PASS" if r.passed else "MISS")
        print(f"{r.name:<{name_width}} {r.unit:>7} {r.gffs:10.3f} {ref} {ratio}  "
              f"{r.target:<13} {verdict}")
    if footer:
        print(footer)
    if results.rss_by_phase_mb:
        print("peak RSS per daemon: " + ", ".join(f"{k}: {v:.1f} MB"
                                                   for k, v in results.rss_by_phase_mb.items()))
    for note in results.notes:
        print(f"note: {note}")


# ---------------------------------------------------------------------------
# what every benchmark script's main() does


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """--quick, --json FILE, --workdir DIR; scripts add their own options."""
    p = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--workdir", metavar="DIR", default="/tmp",
                   help="where the temporary work directory is created (default /tmp)")
    return p


def new_results(sizes: Any, cls: type[Results] = Results) -> Results:
    results = cls(sizes=asdict(sizes) if hasattr(sizes, "__dataclass_fields__") else dict(sizes),
                  host={"kernel": platform.release(), "python": platform.python_version(),
                        "cpus": str(os.cpu_count())})
    if os.geteuid() != 0:
        results.notes.append("not root: page cache cannot be dropped")
    return results


def run_benchmark(results: Results, args: argparse.Namespace, prefix: str,
                  body: Callable[[Path], None], judge: Callable[[list[Row]], None],
                  show: Callable[[Results], None], keep: Path | None = None) -> int:
    """Run *body* in a fresh work directory that is always removed; report; exit 0.

    With *keep*, *body* runs in that directory instead and it is left in place (a
    store built once and measured again by later runs).
    A benchmark measures, it does not test: an interruption or an error becomes a
    note on the results, never a failure.
    """
    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
    work = keep if keep is not None else Path(tempfile.mkdtemp(prefix=prefix, dir=args.workdir))
    log(f"work directory {work}")
    try:
        body(work)
    except KeyboardInterrupt:
        results.notes.append("interrupted: results incomplete")
    except Exception as exc:  # noqa: BLE001
        results.notes.append(f"aborted: {type(exc).__name__}: {exc}")
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    judge(results.rows)
    show(results)
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(results), indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = bench_parser(__doc__).parse_args(argv)
    sizes = QUICK if args.quick else FULL
    results = new_results(sizes)
    return run_benchmark(results, args, "gffs-bench-", lambda work: run(work, sizes, results, log),
                         judge, print_table)


if __name__ == "__main__":
    sys.exit(main())
