"""Rebalance throughput against a plain copy of the same bytes, in the same run.

    python benchmarks/bench_rebalance.py [--quick] [--mb 500] [--workdir DIR]

A store is filled through a real mount with incompressible 2 MiB files on
local backend `a` (unmounted afterwards). Then:

1. local → local: the placement changes to backend `b` and `gffs-admin
   rebalance` moves every chunk (copy, read back and verify, record, delete
   the old copy). Reference: copying the same chunk files into a plain
   directory with shutil and one sync.
2. local → S3: the placement changes to an S3 backend (moto server in its own
   process) and rebalance moves every chunk again. Reference: boto3
   put_object of the same chunk files, 4 at a time (gffs moves 4 per backend).

Each row prints MB/s for gffs and the reference and the ratio. It measures and
does not test: it always exits 0. Everything is removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import MB, Results, Row, make_files  # noqa: E402
from bench_s3 import (ConfiguredMount, MotoServer, dummy_aws_env, new_buckets,  # noqa: E402
                      restore_env, s3_client, REGION)

import random  # noqa: E402

TARGET_RATIO = 0.5


def write_config(root: Path, endpoint: str, buckets: list[str], target: str) -> Path:
    path = root / "gffs.toml"
    path.write_text(f"""[store]
analyze_images = false

[backends.a]
type = "local"
path = "{root / 'a'}"

[backends.b]
type = "local"
path = "{root / 'b'}"

[backends.s3]
type = "s3"
buckets = {json.dumps(buckets)}
endpoint_url = "{endpoint}"
region = "{REGION}"

[placement]
copies = 1
backends = ["{target}"]
""")
    return path


def chunk_files(backend_dir: Path) -> list[Path]:
    return [p for p in (backend_dir / "chunks").rglob("*") if p.is_file() and len(p.name) == 64]


def rebalance(mount: ConfiguredMount) -> tuple[float, dict]:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "gffs.cli.admin", "--config", str(mount.config),
                          "--data-dir", str(mount.data_dir), "rebalance", "--json"],
                         capture_output=True, text=True, timeout=3600)
    elapsed = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"rebalance failed ({res.returncode}): {res.stderr.strip()[-500:]}")
    return elapsed, json.loads(res.stdout)


def plain_copy(files: list[Path], dest: Path) -> float:
    dest.mkdir(parents=True)
    t0 = time.perf_counter()
    for f in files:
        shutil.copyfile(f, dest / f.name)
    os.sync()
    return time.perf_counter() - t0


def boto3_upload(client, bucket: str, files: list[Path]) -> float:
    def put(f: Path) -> None:
        client.put_object(Bucket=bucket, Key=f.name, Body=f.read_bytes())
    t0 = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(put, files))
    return time.perf_counter() - t0


def run(work: Path, total_mb: int, results: Results, log) -> None:
    saved_env = dummy_aws_env(work)
    moto = MotoServer(work / "moto.log")
    mount = None
    try:
        log("starting the moto S3 server")
        moto.start()
        client = s3_client(moto.endpoint)
        root = work / "store"
        root.mkdir()
        buckets = new_buckets(client, 2)
        src = work / "src"
        n = max(1, total_mb * MB // (2 << 20))
        total = make_files(src, n, 2 << 20, random.Random(1), "img")
        log(f"filling the store with {n} files, {total / MB:.0f} MB, on backend a")
        mount = ConfiguredMount(root, write_config(root, moto.endpoint, buckets, "a"))
        mount.mount()
        (mount.path / "flow").mkdir()
        subprocess.run(["cp", "-r", str(src), str(mount.path / "flow")], check=True)
        mount.unmount()
        files = chunk_files(root / "a")
        nbytes = sum(f.stat().st_size for f in files)

        log("1/2 reference: plain copy of the chunk files")
        ref = nbytes / MB / plain_copy(files, work / "plain")
        log("1/2 gffs-admin rebalance a → b")
        write_config(root, moto.endpoint, buckets, "b")
        elapsed, out = rebalance(mount)
        results.rows.append(Row("rebalance local → local", "MB/s", out["copied_bytes"] / MB / elapsed,
                                ref, True, f"ratio >= {TARGET_RATIO}"))
        results.notes.append(f"local → local moved {out['chunks']} chunks, "
                             f"{out['copied_bytes'] / MB:.0f} MB in {elapsed:.1f} s")

        files = chunk_files(root / "b")
        log("2/2 reference: boto3 put_object of the chunk files, 4 at a time")
        ref = nbytes / MB / boto3_upload(client, new_buckets(client, 1)[0], files)
        log("2/2 gffs-admin rebalance b → s3")
        write_config(root, moto.endpoint, buckets, "s3")
        elapsed, out = rebalance(mount)
        results.rows.append(Row("rebalance local → S3 (moto)", "MB/s",
                                out["copied_bytes"] / MB / elapsed, ref, True,
                                f"ratio >= {TARGET_RATIO}"))
        results.notes.append(f"local → S3 moved {out['chunks']} chunks, "
                             f"{out['copied_bytes'] / MB:.0f} MB in {elapsed:.1f} s")
        client.close()
    finally:
        if mount is not None:
            mount.cleanup()
        moto.stop()
        restore_env(saved_env)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="100 MB instead of 500 MB")
    p.add_argument("--mb", type=int, help="how much data to move (default 500)")
    p.add_argument("--workdir", default="/tmp")
    args = p.parse_args(argv)
    total_mb = args.mb or (100 if args.quick else 500)
    results = Results(sizes={"mb": total_mb})

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    work = Path(tempfile.mkdtemp(prefix="gffs-bench-rebalance-", dir=args.workdir))
    try:
        run(work, total_mb, results, log)
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'measurement':<30} {'unit':>5} {'gffs':>8} {'plain':>8} {'ratio':>6}  target")
    for r in results.rows:
        ratio = r.gffs / r.plain if r.plain else float("nan")
        print(f"{r.name:<30} {r.unit:>5} {r.gffs:8.1f} {r.plain:8.1f} {ratio:6.2f}  {r.target} "
              f"{'PASS' if ratio >= TARGET_RATIO else 'MISS'}")
    for note in results.notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
