"""Rebalance throughput against a plain copy of the same bytes, in the same run.

    python benchmarks/bench_rebalance.py [--quick] [--mb 500] [--json FILE] [--workdir DIR]

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

import json
import os
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import (MB, GffsMount, Results, Row, bench_parser, log,  # noqa: E402
                        make_files, new_results, print_table, run_benchmark)
from bench_s3 import (REGION, MotoServer, dummy_aws_env, new_buckets, restore_env,  # noqa: E402
                      s3_client)

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


def rebalance(mount: GffsMount) -> tuple[float, dict]:
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


def run(work: Path, total_mb: int, results: Results) -> None:
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
        mount = GffsMount(root, write_config(root, moto.endpoint, buckets, "a"))
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


def judge(rows: list[Row]) -> None:
    for r in rows:
        r.ratio = r.gffs / r.plain if r.plain else float("nan")
        r.passed = r.ratio >= TARGET_RATIO


def main(argv: list[str] | None = None) -> int:
    p = bench_parser(__doc__)
    p.add_argument("--mb", type=int, help="how much data to move (default 500; --quick 100)")
    args = p.parse_args(argv)
    total_mb = args.mb or (100 if args.quick else 500)
    results = new_results({"mb": total_mb})
    return run_benchmark(results, args, "gffs-bench-rebalance-",
                         lambda work: run(work, total_mb, results), judge,
                         lambda r: print_table(r, reference="copy", name_width=30))


if __name__ == "__main__":
    sys.exit(main())
