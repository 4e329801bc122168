#!/usr/bin/env python3
"""S3 benchmark: gffs over a moto S3 server next to plain boto3 on the same server.

Run as root from the repository root::

    python benchmarks/bench_s3.py            # full size (about a minute)
    python benchmarks/bench_s3.py --quick    # smoke run (seconds)
    python benchmarks/bench_s3.py --json results.json
    python benchmarks/bench_s3.py --faults   # also: ingest through a faulty S3

The script starts its own moto S3 server as a separate process on 127.0.0.1
(``moto_server -H 127.0.0.1 -p PORT``, or ``python -m moto.server`` when the
console script is missing) and waits until it answers. The process
environment gets dummy AWS credentials, ``AWS_EC2_METADATA_DISABLED=true``
and ``AWS_CONFIG_FILE`` / ``AWS_SHARED_CREDENTIALS_FILE`` pointing to files
that do not exist, so nothing is read from ``~/.aws`` and nothing reaches AWS.
The gffs daemons inherit that environment. Everything else lives in one
temporary work directory (``--workdir``, default /tmp): the source files, the
moto log and the gffs stores with their mount points. The script always
unmounts, stops the moto server and deletes the work directory, also on
Ctrl-C or an error, and always exits 0: it measures, it does not test.
PASS/MISS only says whether a target is met.

The dataset is generated once: incompressible files that look like JPEGs
(JPEG magic + random bytes, sizes +/- 3 %; gffs skips compression for them).
All throughput figures are MB/s with MB = 10^6 bytes.

1. Reference: a fresh bucket and one boto3 client with default settings. Every
   file is read from the page cache and uploaded with ``put_object``, one after
   the other, as ``cp`` copies one file after the other -> ingest MB/s. Then
   every object is read back with ``get_object`` -> read MB/s. moto keeps
   objects in memory, so there is no "cold" for the reference.
2. gffs with only the S3 backend (three fresh buckets, ``[placement] copies =
   1, backends = ["s3"]``; the index and data directory are local as always).
   Timed: ``cp -r SRC MNT/flow`` until cp exits (every close() returns once
   the file's chunks are on local disk - the staging area - and the index has
   committed). Then, timed separately, until every chunk is recorded on S3 and
   no staged copy is left ("until on S3", informational). Then a duplicate
   ingest: ``cp -r SRC MNT/flow2`` of the same files (every chunk is a dedup
   hit: no request to S3), target >= 3x the fresh ingest. Then unmount, remount
   (new daemon, empty block cache), drop the page cache and read every file with
   1 MiB ``readinto`` calls: every block comes from S3. Ratios gffs/boto3,
   target >= 0.8.
3. gffs with ``copies = 2`` over S3 (three more fresh buckets) + a local
   backend: the same ingest and read-back. Every chunk goes to both backends;
   reads take the first good copy in the placement's read order. Compared
   with the same boto3 reference, target >= 0.7 too (informational: it shows
   what the second copy costs or gains).
4. ``--faults``: the S3-only and the S3 + local ingests again, each into fresh
   buckets through a fault-injecting proxy (tests/s3_fault_proxy.py: 10 % of
   requests answered 503 SlowDown, 2 % of connections reset, 3 % delayed by
   2 s, seeded) and, for the same store layout, through the proxy with faults
   off: ratio faulty / clean ingest time, target <= 2. The files must read back
   identical (SHA-256 of every file).

Read-back byte counts are checked (a short read cannot look fast), and the
SHA-256 of a few files is compared with the source, untimed. The peak RSS of
the gffs daemon (VmHWM, read before every unmount) is reported as in
bench_core.py; target < 200 MB.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench_core import (
    MB,
    GffsMount,
    Results,
    Row,
    bench_parser,
    drop_caches,
    log,
    make_files,
    new_results,
    print_table,
    read_tree,
    record_rss,
    run_benchmark,
    timed_cp,
)

REGION = "us-east-1"
ACCESS_KEY = "bench-access-key"
SECRET_KEY = "bench-secret-key-not-a-real-one"
TARGET_RATIO = 0.8
DEDUP_RATIO = 3.0     # duplicate ingest vs a fresh one
FAULT_RATIO = 2.0     # ingest time under faults vs clean, at most
BLOCK_KB = 1024  # block size of the gffs stores (--block-size-kb)
RSS_LIMIT_MB = 200
AWS_VARS_TO_CLEAR = (
    "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")


@dataclass(frozen=True)
class Sizes:
    n_files: int
    file_bytes: int


FULL = Sizes(n_files=60, file_bytes=2 << 20)
QUICK = Sizes(n_files=15, file_bytes=2 << 20)


# ---------------------------------------------------------------------------
# environment, moto server, boto3


def dummy_aws_env(work: Path) -> dict[str, str]:
    """Set dummy credentials in os.environ (inherited by moto and gffs); returns the old values."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("AWS_") or k == "XDG_CONFIG_HOME"}
    for var in AWS_VARS_TO_CLEAR:
        os.environ.pop(var, None)
    os.environ.update(
        AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_DEFAULT_REGION=REGION, AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=str(work / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(work / "no-aws-credentials"),
        XDG_CONFIG_HOME=str(work / "config"))   # keys of encrypted bench stores stay in work
    return saved


def restore_env(saved: dict[str, str]) -> None:
    for k in [k for k in os.environ if k.startswith("AWS_") or k == "XDG_CONFIG_HOME"]:
        del os.environ[k]
    os.environ.update(saved)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """A moto S3 server in its own process (and process group): ``start()``, ``stop()``."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        exe = shutil.which("moto_server")
        cmd = [exe] if exe else [sys.executable, "-m", "moto.server"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([*cmd, "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}: "
                                   f"{self.log_tail()}")
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=1).close()
                return
            except urllib.error.HTTPError:
                return      # it answered, with an error status: good enough
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"moto server did not answer on {self.endpoint} within {timeout:g} s")

    def log_tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-5:])
        except FileNotFoundError:
            return ""

    def peak_rss_mb(self) -> float | None:
        if self.proc is None or self.proc.poll() is not None:
            return None
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / MB
        except FileNotFoundError:
            pass
        return None

    def stop(self) -> None:
        """Terminate the server's process group (only ours: it has its own session)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue


def s3_client(endpoint: str):
    import boto3
    return boto3.session.Session().client("s3", endpoint_url=endpoint, region_name=REGION)


def new_buckets(client, n: int) -> list[str]:
    tag = uuid.uuid4().hex[:10]
    names = [f"bench-{tag}-{i}" for i in range(n)]
    for b in names:
        client.create_bucket(Bucket=b)
    return names


# ---------------------------------------------------------------------------
# gffs


def write_config(path: Path, endpoint: str, buckets: list[str], copies: int,
                 local_dir: Path | None, block_kb: int = 1024) -> Path:
    local = f'[backends.local]\ntype = "local"\npath = "{local_dir}"\n' if local_dir else ""
    placement = ["s3"] if local_dir is None else ["local", "s3"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""[store]
block_size_kb = {block_kb}

{local}
[backends.s3]
type = "s3"
buckets = {json.dumps(buckets)}
endpoint_url = "{endpoint}"
region = "{REGION}"

[placement]
copies = {copies}
backends = {json.dumps(placement)}
""")
    return path


# ---------------------------------------------------------------------------
# helpers


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def sample_names(names: list[str]) -> list[str]:
    """First, middle and last file: the ones whose SHA-256 is checked."""
    return sorted({names[0], names[len(names) // 2], names[-1]})


def boto3_reference(client, src: Path, names: list[str], total: int) -> tuple[float, float]:
    """Sequential put_object then get_object of every file into a fresh bucket; (s, s)."""
    bucket, = new_buckets(client, 1)
    read_tree(src)      # source in the page cache, as for cp
    t0 = time.perf_counter()
    for name in names:
        with open(src / name, "rb") as f:
            client.put_object(Bucket=bucket, Key=name, Body=f.read())
    t_put = time.perf_counter() - t0
    got = 0
    t0 = time.perf_counter()
    for name in names:
        got += len(client.get_object(Bucket=bucket, Key=name)["Body"].read())
    t_get = time.perf_counter() - t0
    if got != total:
        raise RuntimeError(f"boto3 read-back returned {got} bytes, expected {total}")
    for name in sample_names(names):
        body = client.get_object(Bucket=bucket, Key=name)["Body"].read()
        if hashlib.sha256(body).hexdigest() != sha256_file(src / name):
            raise RuntimeError(f"boto3 read-back of {name} differs from the source")
    return t_put, t_get


def repair_pending(mount: GffsMount) -> int:
    """Chunks waiting for a copy (staged uploads included), read from the live index
    (LMDB readers in other processes are fine; `gffs-admin status` would cost seconds)."""
    from gffs.index import ChunkMap, Index
    index = Index(mount.data_dir / "index", readonly=True)
    try:
        with index.read() as txn:
            return ChunkMap(index).repair_count(txn)
    finally:
        index.close()


def wait_uploaded(mount: GffsMount, timeout: float = 900) -> float:
    """Seconds until no chunk waits for an upload (every copy where the policy wants it)."""
    t0 = time.perf_counter()
    while repair_pending(mount):
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"uploads not done after {timeout:g} s")
        time.sleep(0.05)
    return time.perf_counter() - t0


@dataclass
class Timings:
    ingest: float
    uploaded: float
    duplicate: float
    read: float


def gffs_ingest_and_read(mount: GffsMount, src: Path, names: list[str], total: int,
                         results: Results, label: str, check_all: bool = False) -> Timings:
    """cp -r into a new flow, wait for the uploads, cp again (duplicates), remount,
    drop caches, read back."""
    flow = mount.path / "bench"
    mount.mount()
    t_cp = timed_cp(src, flow)
    t_up = wait_uploaded(mount)
    record_rss(mount, results, f"{label}: ingest")
    t_dup = timed_cp(src, mount.path / "bench-again")
    wait_uploaded(mount)
    mount.remount()
    drop_caches(results)
    t0 = time.perf_counter()
    got = read_tree(flow)
    t_read = time.perf_counter() - t0
    if got != total:
        raise RuntimeError(f"{label}: gffs read-back returned {got} bytes, expected {total}")
    for name in names if check_all else sample_names(names):
        if sha256_file(flow / name) != sha256_file(src / name):
            raise RuntimeError(f"{label}: gffs read-back of {name} differs from the source")
    record_rss(mount, results, f"{label}: read-back")
    mount.unmount()
    return Timings(t_cp, t_up, t_dup, t_read)


def add_rows(results: Results, label: str, what: str, mb: float, t: Timings,
             ref_in: float, ref_out: float) -> None:
    results.rows += [
        Row(f"{label}: ingest {what} (cp)", "MB/s", mb / t.ingest, ref_in, True,
            f"ratio >= {TARGET_RATIO}"),
        Row(f"{label}: until on S3 (after cp)", "s", t.uploaded, None, False, "informational"),
        Row(f"{label}: duplicate ingest vs fresh", "MB/s", mb / t.duplicate, mb / t.ingest,
            True, f"ratio >= {DEDUP_RATIO:g}"),
        Row(f"{label}: read-back after remount", "MB/s", mb / t.read, ref_out, True,
            f"ratio >= {TARGET_RATIO}")]


def faulty_ingest(work: Path, endpoint: str, client, src: Path, names: list[str], total: int,
                  results: Results, label: str, local: bool) -> None:
    """Ingest time through the fault proxy vs through it with faults off (same layout)."""
    from s3_fault_proxy import FaultProxy
    seconds = {}
    for mode in ("clean", "faults"):
        proxy = FaultProxy(endpoint, seed=4) if mode == "faults" else FaultProxy(
            endpoint, slowdown=0, reset=0, delay=0)
        proxy.start()
        root = work / f"{label}-{mode}".replace(" ", "").replace("+", "-")
        cfg = write_config(root / "gffs.toml", proxy.url, new_buckets(client, 3),
                           copies=2 if local else 1, local_dir=root / "local" if local else None,
                           block_kb=BLOCK_KB)
        mount = GffsMount(root, cfg)
        try:
            t = gffs_ingest_and_read(mount, src, names, total, results,
                                     f"{label} {mode}", check_all=True)
        finally:
            mount.cleanup()
            proxy.stop()
        seconds[mode] = t.ingest
        if mode == "faults":
            results.notes.append(f"{label} under faults: injected {dict(proxy.injected)}; "
                                 f"until on S3 {t.uploaded:.1f} s")
    results.rows.append(Row(f"{label}: ingest time, faults vs clean", "s", seconds["faults"],
                            seconds["clean"], False, f"ratio <= {FAULT_RATIO:g}"))


# ---------------------------------------------------------------------------
# the benchmark


def run(work: Path, sizes: Sizes, results: Results, log: Callable[[str], None],
        faults: bool = False) -> None:
    rng = random.Random(4321)
    src = work / "src"
    log(f"generating {sizes.n_files} source files in {src}")
    total = make_files(src, sizes.n_files, sizes.file_bytes, rng, "img")
    names = sorted(os.listdir(src))
    results.sizes.update(total_bytes=total)
    mb = total / MB
    what = f"{sizes.n_files} x {sizes.file_bytes >> 20} MiB"

    saved_env = dummy_aws_env(work)
    moto = MotoServer(work / "moto.log")
    mounts: list[GffsMount] = []
    client = None
    try:
        log("starting the moto S3 server")
        moto.start()
        results.host["moto_endpoint"] = moto.endpoint
        client = s3_client(moto.endpoint)

        log("1/3 reference: boto3 put_object / get_object, sequential")
        ref_put, ref_get = boto3_reference(client, src, names, total)
        ref_in, ref_out = mb / ref_put, mb / ref_get

        log("2/3 gffs, S3 backend only (3 buckets, copies = 1)")
        cfg = write_config(work / "s3only" / "gffs.toml", moto.endpoint,
                           new_buckets(client, 3), copies=1, local_dir=None,
                           block_kb=BLOCK_KB)
        mounts.append(GffsMount(work / "s3only", cfg))
        t = gffs_ingest_and_read(mounts[-1], src, names, total, results, "S3 only")
        add_rows(results, "S3 only", what, mb, t, ref_in, ref_out)

        log("3/3 gffs, S3 + local, copies = 2")
        root = work / "s3local"
        cfg = write_config(root / "gffs.toml", moto.endpoint, new_buckets(client, 3),
                           copies=2, local_dir=root / "local", block_kb=BLOCK_KB)
        mounts.append(GffsMount(root, cfg))
        t = gffs_ingest_and_read(mounts[-1], src, names, total, results, "S3+local")
        add_rows(results, "S3+local x2", what, mb, t, ref_in, ref_out)

        if faults:
            for label, local in (("S3 only", False), ("S3+local x2", True)):
                log(f"faults: {label}, through the fault proxy (clean, then faulty)")
                faulty_ingest(work, moto.endpoint, client, src, names, total, results,
                              label, local)

        peak = max(results.rss_by_phase_mb.values(), default=float("nan"))
        results.rows.append(Row("daemon peak RSS (VmHWM)", "MB", peak, None, False,
                                f"< {RSS_LIMIT_MB} MB"))
        moto_rss = moto.peak_rss_mb()
        if moto_rss is not None:
            results.notes.append(f"moto server peak RSS {moto_rss:.0f} MB (informational)")
    finally:
        for m in mounts:
            m.cleanup()
        if client is not None:
            client.close()
        moto.stop()
        restore_env(saved_env)


def judge(rows: list[Row]) -> None:
    for r in rows:
        if r.plain is not None:
            r.ratio = r.gffs / r.plain if r.plain else float("inf")
            goal = float(r.target.split()[-1])
            r.passed = r.ratio <= goal if "<=" in r.target else r.ratio >= goal
        elif r.unit == "MB":
            r.passed = r.gffs < RSS_LIMIT_MB


def main(argv: list[str] | None = None) -> int:
    p = bench_parser(__doc__)
    p.add_argument("--block-size-kb", type=int, default=1024,
                   help="block size of the gffs stores (default: the gffs default, 1024)")
    p.add_argument("--faults", action="store_true",
                   help="also ingest through a fault-injecting proxy (503 SlowDown, resets, "
                        "delays) and compare with a clean run")
    args = p.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    global BLOCK_KB
    BLOCK_KB = args.block_size_kb
    results = new_results(sizes)
    for dist in ("moto", "boto3"):
        try:
            results.host[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            results.host[dist] = "not installed"
    return run_benchmark(results, args, "gffs-bench-s3-",
                         lambda work: run(work, sizes, results, log, args.faults), judge,
                         lambda r: print_table(r, reference="boto3", name_width=40))


if __name__ == "__main__":
    sys.exit(main())
