#!/usr/bin/env python3
"""Encryption cost: ingest and cold read-back with encrypt on vs off, same run, same data.

    python benchmarks/bench_crypt.py [--quick] [--json FILE] [--workdir DIR]

Four stores, one backend each, copies = 1, incompressible 2 MiB JPEG-like
files: local disk with ``encrypt = false`` and ``true``, then S3 (a moto
server in its own process) with ``encrypt = false`` and ``true``. Each store:
``cp -r`` into a flow, remount, drop the page cache, read everything back and
check samples by SHA-256 (``bench_s3.gffs_ingest_and_read``). The table's
"gffs" column is the encrypted store, the reference column the unencrypted one;
target: ratio >= 0.9 (encryption costs at most 10 %). Measures, never fails.
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import (MB, GffsMount, Results, Row, bench_parser, log,  # noqa: E402
                        make_files, new_results, print_table, run_benchmark)
from bench_s3 import (FULL, QUICK, REGION, MotoServer, Sizes, dummy_aws_env,  # noqa: E402
                      gffs_ingest_and_read, new_buckets, restore_env, s3_client)

TARGET_RATIO = 0.9


def write_config(path: Path, backend: str, encrypt: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""[store]
analyze_images = false

[backends.b]
{backend}
encrypt = {"true" if encrypt else "false"}
""")
    return path


def run(work: Path, sizes: Sizes, results: Results) -> None:
    src = work / "src"
    log(f"generating {sizes.n_files} source files in {src}")
    total = make_files(src, sizes.n_files, sizes.file_bytes, random.Random(99), "img")
    names = sorted(os.listdir(src))
    mb = total / MB
    saved_env = dummy_aws_env(work)      # also keeps the stores' keys inside work
    moto = MotoServer(work / "moto.log")
    mounts: list[GffsMount] = []
    client = None
    try:
        moto.start()
        client = s3_client(moto.endpoint)
        kinds = {"local": lambda root: f'type = "local"\npath = "{root / "disk"}"',
                 "S3": lambda root: (f'type = "s3"\nbuckets = {json.dumps(new_buckets(client, 3))}\n'
                                     f'endpoint_url = "{moto.endpoint}"\nregion = "{REGION}"')}
        for kind, table in kinds.items():
            times = {}
            for encrypt in (False, True):
                root = work / f"{kind}-{'enc' if encrypt else 'plain'}"
                mounts.append(GffsMount(root, write_config(root / "gffs.toml", table(root), encrypt)))
                log(f"{kind}, encrypt = {encrypt}")
                times[encrypt] = gffs_ingest_and_read(mounts[-1], src, names, total, results,
                                                      f"{kind} encrypt={encrypt}")
            plain, enc = times[False], times[True]
            in_plain, out_plain, in_enc, out_enc = plain.ingest, plain.read, enc.ingest, enc.read
            results.rows.append(Row(f"{kind}: ingest, encrypted vs not", "MB/s", mb / in_enc,
                                    mb / in_plain, True, f"ratio >= {TARGET_RATIO}"))
            results.rows.append(Row(f"{kind}: cold read-back, encrypted vs not", "MB/s",
                                    mb / out_enc, mb / out_plain, True, f"ratio >= {TARGET_RATIO}"))
    finally:
        for m in mounts:
            m.cleanup()
        if client is not None:
            client.close()
        moto.stop()
        restore_env(saved_env)


def judge(rows: list[Row]) -> None:
    for row in rows:
        if row.plain:
            row.ratio = row.gffs / row.plain
            row.passed = row.ratio >= TARGET_RATIO


def main(argv: list[str] | None = None) -> int:
    args = bench_parser(__doc__).parse_args(argv)
    sizes = QUICK if args.quick else FULL
    results = new_results(sizes)
    return run_benchmark(results, args, "gffs-bench-crypt-", lambda work: run(work, sizes, results),
                         judge, lambda r: print_table(r, reference="unencrypted"))


if __name__ == "__main__":
    sys.exit(main())
