"""`gffs-admin rebalance | backend drain | gc`: maintenance jobs from the command line."""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gffs.config import Config


def cli_run(*args: Any, **kw: Any) -> int:
    """gffs.maintenance.runner.cli_run, imported when a job runs (it loads trio and LMDB)."""
    from gffs.maintenance.jobs import add_job_modules
    from gffs.maintenance.runner import cli_run as run
    from gffs.share import JOB_MODULES as SHARE_JOBS
    add_job_modules(SHARE_JOBS)
    return run(*args, **kw)

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(text: str) -> int:
    """'50G', '500M', '1.5T', '4096' (binary units, optional trailing B/iB)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 500M, 50G)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_duration(text: str) -> float:
    """'2h', '30m', '45s', '1d', '90' (seconds)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text, re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 30m, 2h)")
    return float(m.group(1)) * _SECONDS[m.group(2).lower()]


def _limit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--time-limit", type=parse_duration, help="stop cleanly after this long (exit 3)")
    p.add_argument("--size-limit", type=parse_size, help="stop after copying this much (exit 3)")
    p.add_argument("--json", action="store_true")


def render_rebalance(r: dict[str, Any]) -> None:
    from gffs.maintenance.progress import human_bytes
    verb = "would move" if r.get("dry_run") else "to move"
    print(f"checked {r['chunks_checked']} chunks; {r['chunks_to_move']} {verb}, "
          f"{human_bytes(r['bytes_to_copy'])} to copy")
    for pair, nbytes in sorted(r["plan"].items()):
        print(f"  {pair}: {human_bytes(nbytes)}")
    if r.get("dry_run"):
        return
    print(f"moved {r['chunks']} chunks: {r['copies_added']} copies added "
          f"({human_bytes(r['copied_bytes'])}), {r['copies_removed']} removed")
    for failure in r["failures"][:20]:
        print(f"  not done: {failure}")
    if r["stopped"]:
        print(f"stopped at the {r['stopped']}: run it again to continue")
    if "copies_left" in r:
        state = "drained" if r["drained"] else f"still holds {r['copies_left']} chunk copies"
        print(f"backend {r['backend']}: {state}")


def _rebalance(cfg: Config, args: argparse.Namespace) -> int:
    return cli_run(cfg, "rebalance", {"dry_run": args.dry_run, "flow": args.flow,
                                      "time_limit": args.time_limit, "size_limit": args.size_limit},
                   json_output=args.json, render=render_rebalance)


def _drain(cfg: Config, args: argparse.Namespace) -> int:
    def render(r: dict[str, Any]) -> None:
        if "chunks_checked" in r:
            render_rebalance(r)
        else:
            print(f"backend {r['backend']}: no longer draining")
    return cli_run(cfg, "drain", {"backend": args.name, "cancel": args.cancel,
                                  "dry_run": args.dry_run, "time_limit": args.time_limit,
                                  "size_limit": args.size_limit},
                   json_output=args.json, render=render)


def _gc(cfg: Config, args: argparse.Namespace) -> int:
    from gffs.maintenance.gc import GC_MIN_AGE
    def render(r: dict[str, Any]) -> None:
        print(f"deleted {r['garbage_deleted']} queued and {r['unreferenced_deleted']} "
              f"unreferenced chunks; {r['image_rows_dropped']} stale image rows")
        for name in r["backends_failed"]:
            print(f"  {name}: could not be listed; run gc again when it is back")
    min_age = GC_MIN_AGE if args.min_age is None else args.min_age
    return cli_run(cfg, "gc", {"min_age": min_age}, json_output=args.json, render=render)


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("rebalance", help="move chunks to where the placement policy wants them")
    r.add_argument("--flow", help="only chunks of this flow")
    _limit_options(r)
    r.set_defaults(handler=_rebalance)

    b = sub.add_parser("backend", help="backend maintenance")
    bsub = b.add_subparsers(dest="backend_command", required=True)
    d = bsub.add_parser("drain", help="move every chunk off a backend before removing it")
    d.add_argument("name")
    d.add_argument("--cancel", action="store_true", help="stop draining (new data may go there again)")
    _limit_options(d)
    d.set_defaults(handler=_drain)

    g = sub.add_parser("gc", help="delete chunks nothing references")
    g.add_argument("--min-age", type=float,
                   help="only delete unreferenced objects older than this many seconds "
                        "(default: an hour)")
    g.add_argument("--json", action="store_true")
    g.set_defaults(handler=_gc)
