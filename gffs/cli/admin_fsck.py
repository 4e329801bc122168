"""`gffs-admin fsck [--repair] [--verify-data] [--incremental [--chunks N] [--time-limit S]]`.

Runs the registered fsck job where the store is (inside the mount daemon when
mounted, else here). Exit code 0: nothing left to fix; 1: problems remain
(found without --repair, or not repairable); 2: bad arguments or config;
130: interrupted (a rerun of --incremental continues where it stopped).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from gffs.cli.admin_jobs import cli_run, parse_duration

if TYPE_CHECKING:
    from gffs.config import Config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fsck", help="check the index and the backends; --repair fixes",
                       description="Check the index against itself and against the backends.")
    p.add_argument("--repair", action="store_true",
                   help="fix what can be fixed (from other copies); list what cannot")
    p.add_argument("--verify-data", action="store_true",
                   help="fetch every copy and check its SHA-256 (reads all stored bytes)")
    p.add_argument("--incremental", action="store_true",
                   help="check the next slice of chunks against the backends (resumes "
                        "where the last incremental run stopped, wraps around)")
    p.add_argument("--chunks", type=int,
                   help="chunks per incremental run (default 10000)")
    p.add_argument("--time-limit", type=parse_duration,
                   help="time an incremental run may spend on the backends (90, 30m, 2h)")
    p.add_argument("--min-age", type=parse_duration,
                   help="report (and with --repair delete) unrecorded objects only when "
                        "older than this (default 1 h; 90, 30m, 2h)")
    p.add_argument("--json", action="store_true", help="machine-readable result on stdout")
    p.set_defaults(handler=run)


def run(cfg: Config, args: argparse.Namespace) -> int:
    from gffs.maintenance.fsck import options
    from gffs.maintenance.fsck_backends import Options
    from gffs.maintenance.fsck_report import render
    defaults = Options()
    job_args = {"verify_data": args.verify_data, "incremental": args.incremental,
                "chunks": defaults.max_chunks if args.chunks is None else args.chunks,
                "time_limit": args.time_limit,
                "min_age": defaults.min_age if args.min_age is None else args.min_age}
    try:
        options(job_args, args.repair)
    except ValueError as exc:
        print(f"gffs-admin fsck: {exc}", file=sys.stderr)
        return 2
    return cli_run(cfg, "fsck-repair" if args.repair else "fsck", job_args,
                   json_output=args.json, render=render)
