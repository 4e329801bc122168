"""Startup time of the command-line tools against `python -c pass`, in the same run.

    python benchmarks/bench_startup.py [--quick] [--runs N] [--json FILE] [--workdir DIR]

Each command runs N times (default 15; --quick 5) in a fresh interpreter, alternating
with `python -c pass` so both see the same machine load; the row shows the median wall
time of each and their ratio. Target: gffs-admin (and gffs) start within 0.3 s; on a
shared, loaded machine a bare interpreter alone may take a good part of that, so a
row passes when the tool's time beyond `python -c pass` is under 0.3 s. Commands: `gffs-admin --help`, `gffs-admin status` of an
empty local store, `gffs --help`, and `gffs umount` of a path that is not mounted (the
whole command, exit 1). Then `python -X importtime` of `gffs-admin status` lists the
imports that cost most (cumulative). The commands run without PYTHONDONTWRITEBYTECODE,
as an installed gffs does: the warm-up run writes the .pyc files that later runs load.
It measures and does not test: it always exits 0.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import (Results, Row, bench_parser, log, new_results,  # noqa: E402
                        print_table, run_benchmark)

TARGET_S = 0.3
PY = sys.executable
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def commands(work: Path) -> dict[str, list[str]]:
    return {
        "gffs-admin --help": [PY, "-m", "gffs.cli.admin", "--help"],
        "gffs-admin status (local store)": [PY, "-m", "gffs.cli.admin", "--data-dir",
                                            str(work / "store"), "status"],
        "gffs --help": [PY, "-m", "gffs.cli.main", "--help"],
        "gffs umount (not mounted)": [PY, "-m", "gffs.cli.main", "umount", str(work / "none")],
    }


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, env=ENV)
    return time.perf_counter() - t


def importtime_summary(cmd: list[str], top: int = 12) -> list[tuple[float, str]]:
    """The *top* imports by cumulative time (seconds), top-level packages only."""
    res = subprocess.run([PY, "-X", "importtime", *cmd[1:]], capture_output=True, text=True,
                         env=ENV)
    rows = []
    for line in res.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = (part.strip() for part in line.split(":", 1)[1].split("|"))
        if "." not in name.strip():
            rows.append((int(cumulative) / 1e6, name.strip()))
    return sorted(rows, reverse=True)[:top]


def run(work: Path, runs: int, results: Results) -> None:
    from gffs.index import Index
    Index(work / "store" / "index").close()
    for name, cmd in commands(work).items():
        wall(cmd)                                   # warm the page cache (.pyc files)
        tool, base = [], []
        for _ in range(runs):
            tool.append(wall(cmd))
            base.append(wall([PY, "-c", "pass"]))
        t, b = statistics.median(tool), statistics.median(base)
        log(f"{name}: {t:.3f} s, python -c pass {b:.3f} s")
        results.rows.append(Row(name, "s", t, b, False, f"+{TARGET_S} s max"))
    status = commands(work)["gffs-admin status (local store)"]
    results.notes.append("python -X importtime, gffs-admin status, top-level imports by "
                         "cumulative time: " + ", ".join(f"{n} {s * 1000:.0f} ms"
                                                         for s, n in importtime_summary(status)))


def judge(rows: list[Row]) -> None:
    for r in rows:
        r.ratio = r.gffs / r.plain if r.plain else None
        r.passed = r.gffs - (r.plain or 0.0) < TARGET_S


def show(results: Results) -> None:
    print_table(results, reference="py pass")


def main(argv: list[str] | None = None) -> int:
    p = bench_parser(__doc__)
    p.add_argument("--runs", type=int, help="runs per command (default 15; --quick 5)")
    args = p.parse_args(argv)
    runs = args.runs or (5 if args.quick else 15)
    results = new_results({"runs": runs})
    return run_benchmark(results, args, "gffs-bench-startup-",
                         lambda work: run(work, runs, results), judge, show)


if __name__ == "__main__":
    sys.exit(main())
