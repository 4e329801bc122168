#!/usr/bin/env python3
"""Encryption cost: ingest and cold read-back with encrypt on vs off, same run, same data.

    python benchmarks/bench_crypt.py [--quick] [--rounds N] [--json FILE] [--workdir DIR]

Two stores per backend kind, one backend each, copies = 1: local disk with
``encrypt = false`` and ``true``, then S3 (a moto server in its own process)
with ``encrypt = false`` and ``true``. Both stores of a kind stay mounted and
are measured in alternating rounds, so load from other processes (a shared
2-core machine swings single runs by 2x) hits both sides alike. Each round has
its own set of incompressible 2 MiB JPEG-like files (fresh chunks, no dedup);
per round and side, in alternating order (plain first in even rounds,
encrypted first in odd ones):

- ingest: ``cp -r`` of the round's set into the store (the timed figure), then
  until no upload is pending (untimed, but in the CPU figure);
- cold read-back: both stores remounted (empty block cache), page cache
  dropped before each side, every file of the round read with 1 MiB reads
  (byte count checked, SHA-256 of samples checked afterwards).

The throughput rows give the median MB/s of each side and, as ratio, the
median of the per-round ratios (encrypted / unencrypted throughput); target
ratio >= 0.9 (encryption costs at most 10 %). The CPU rows give the daemon's
CPU time (utime + stime from /proc/PID/stat, all threads) per MB, summed over
the rounds: it counts the work encryption adds and is far less sensitive to
load than wall time. Measures, never fails.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import (MB, GffsMount, Results, Row, bench_parser, drop_caches,  # noqa: E402
                        log, make_files, new_results, print_table, read_tree, record_rss,
                        run_benchmark, timed_cp)
from bench_s3 import (FULL, QUICK, REGION, MotoServer, Sizes, dummy_aws_env,  # noqa: E402
                      new_buckets, restore_env, s3_client, sample_names, sha256_file,
                      wait_uploaded)

TARGET_RATIO = 0.9
ROUNDS = 5
_TICK = os.sysconf("SC_CLK_TCK")
# row name -> median of the per-round ratios (judge() reports it instead of gffs/plain)
MEDIAN_RATIO: dict[str, float] = {}


def write_config(path: Path, backend: str, encrypt: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"""[store]
analyze_images = false

[backends.b]
{backend}
encrypt = {"true" if encrypt else "false"}
""")
    return path


def cpu_seconds(mount: GffsMount) -> float:
    """utime + stime of the mount's daemon (every thread), in seconds."""
    pid = mount.pid()
    if pid is None:
        raise RuntimeError(f"no daemon pid in {mount.data_dir / 'gffs.lock'}")
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICK   # fields 14 and 15 of stat(5)


@dataclass
class Side:
    """One store's per-round seconds and summed daemon CPU seconds."""
    mount: GffsMount
    ingest: list[float] = field(default_factory=list)
    read: list[float] = field(default_factory=list)
    ingest_cpu: float = 0.0
    read_cpu: float = 0.0


def ingest(side: Side, src: Path, dest: Path) -> None:
    cpu0 = cpu_seconds(side.mount)
    side.ingest.append(timed_cp(src, dest))
    wait_uploaded(side.mount)
    side.ingest_cpu += cpu_seconds(side.mount) - cpu0


def read_back(side: Side, flow: Path, expect: int, results: Results) -> None:
    drop_caches(results)
    cpu0 = cpu_seconds(side.mount)
    t0 = time.perf_counter()
    got = read_tree(flow)
    side.read.append(time.perf_counter() - t0)
    side.read_cpu += cpu_seconds(side.mount) - cpu0
    if got != expect:
        raise RuntimeError(f"read-back of {flow} returned {got} bytes, expected {expect}")


def measure_kind(kind: str, sides: dict[bool, Side], sets: list[tuple[Path, int]],
                 results: Results) -> None:
    for side in sides.values():
        side.mount.mount()
    for r, (src, total) in enumerate(sets):
        order = (False, True) if r % 2 == 0 else (True, False)
        log(f"{kind} round {r + 1}/{len(sets)}: ingest")
        for enc in order:
            ingest(sides[enc], src, sides[enc].mount.path / src.name)
        for side in sides.values():
            side.mount.remount()
        log(f"{kind} round {r + 1}/{len(sets)}: cold read-back")
        for enc in order:
            read_back(sides[enc], sides[enc].mount.path / src.name, total, results)
    for enc, side in sides.items():
        for src, _ in sets[:1]:
            for name in sample_names(sorted(os.listdir(src))):
                if sha256_file(side.mount.path / src.name / name) != sha256_file(src / name):
                    raise RuntimeError(f"{kind} encrypt={enc}: read-back of {name} differs")
        record_rss(side.mount, results, f"{kind} encrypt={enc}")
        side.mount.unmount()


def add_rows(kind: str, sides: dict[bool, Side], mb_per_round: float, rounds: int,
             results: Results) -> None:
    plain, enc = sides[False], sides[True]
    for what, p, e in (("ingest", plain.ingest, enc.ingest),
                       ("cold read-back", plain.read, enc.read)):
        name = f"{kind}: {what}, encrypted vs not"
        MEDIAN_RATIO[name] = statistics.median(tp / te for tp, te in zip(p, e))
        results.rows.append(Row(name, "MB/s", mb_per_round / statistics.median(e),
                                mb_per_round / statistics.median(p), True,
                                f"ratio >= {TARGET_RATIO}", want=TARGET_RATIO))
        spread = sorted(round(tp / te, 2) for tp, te in zip(p, e))
        results.notes.append(f"{name}: per-round ratios {spread}")
    mb = mb_per_round * rounds
    for what, p, e in (("ingest", plain.ingest_cpu, enc.ingest_cpu),
                       ("read-back", plain.read_cpu, enc.read_cpu)):
        results.rows.append(Row(f"{kind}: daemon CPU per MB, {what}", "ms/MB", 1000 * e / mb,
                                1000 * p / mb, False, "informational"))


def run(work: Path, sizes: Sizes, rounds: int, results: Results) -> None:
    rng = random.Random(99)
    sets = []
    for r in range(rounds):
        src = work / f"src{r}"
        sets.append((src, make_files(src, sizes.n_files, sizes.file_bytes, rng, "img")))
    log(f"generated {rounds} sets of {sizes.n_files} source files")
    mb_per_round = sets[0][1] / MB   # same sizes in every set (one rng, same spread)
    results.sizes.update(rounds=rounds)
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
            sides = {}
            for encrypt in (False, True):
                root = work / f"{kind}-{'enc' if encrypt else 'plain'}"
                mounts.append(GffsMount(root, write_config(root / "gffs.toml", table(root), encrypt)))
                sides[encrypt] = Side(mounts[-1])
            measure_kind(kind, sides, sets, results)
            mb = sum(total for _, total in sets) / MB
            add_rows(kind, sides, mb / rounds, rounds, results)
    finally:
        for m in mounts:
            m.cleanup()
        if client is not None:
            client.close()
        moto.stop()
        restore_env(saved_env)


def judge(rows: list[Row]) -> None:
    for row in rows:
        if row.want is not None and row.plain:
            row.ratio = MEDIAN_RATIO.get(row.name, row.gffs / row.plain)
            row.passed = row.ratio >= row.want
        elif row.plain:
            row.ratio = row.gffs / row.plain   # CPU: encrypted / unencrypted, informational


def load_footer(results: Results) -> str:
    end = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results.host["loadavg_end"] = end
    return f"load average (1, 5, 15 min) at start: {results.host['loadavg']}; at end: {end}"


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=ROUNDS,
                        help=f"alternating rounds per backend kind (default {ROUNDS})")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    results = new_results(sizes)
    results.host["loadavg"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return run_benchmark(results, args, "gffs-bench-crypt-",
                         lambda work: run(work, sizes, args.rounds, results),
                         judge, lambda r: print_table(r, reference="unencrypted", name_width=38,
                                                      footer=load_footer(r)))


if __name__ == "__main__":
    sys.exit(main())
