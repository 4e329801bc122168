"""`gffs-admin` — look after a store.

    gffs-admin [--config FILE] [--data-dir DIR] COMMAND ...
    status [--json] [--full]             figures, backends, flows, copies short, queues
    rebalance [--dry-run] [--flow F] [--time-limit 2h] [--size-limit 50G] [--json]
    backend drain NAME [--cancel] [--dry-run] [limits] [--json]
    gc [--min-age SECONDS] [--json]
    fsck, index backup|list|restore, nft link|refresh|scan
    flow publish|import|pin               share flows over IPFS (docs/SHARING.md)

The maintenance commands run inside the mount daemon through its control
socket when the store is mounted, and open the store here when not: the same
code either way (gffs/maintenance). Exit codes: gffs/exitcodes.py.

Startup is kept cheap (no trio, LMDB, web3, boto3 or Google client before a
command runs): the modules below only declare their arguments at import, and
import what they need inside their handlers. tests/test_cli_startup.py holds
them to it.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from gffs.exitcodes import EXIT_FAILED, EXIT_USAGE, run_cli

if TYPE_CHECKING:
    import argparse

    from gffs.config import Config

# Modules adding subcommands: each has register(subparsers); a subcommand sets
# handler=fn(cfg, args) -> exit code with set_defaults.
ADMIN_EXTENSIONS: list[str] = ["gffs.cli.admin_jobs", "gffs.cli.admin_nft", "gffs.cli.admin_index",
                                "gffs.cli.admin_fsck", "gffs.cli.admin_key",
                                "gffs.cli.admin_flow"]


def _status(cfg: "Config", args: "argparse.Namespace") -> int:
    from gffs.cli.admin_status import cmd_status
    return cmd_status(cfg, args)


def build_parser() -> "argparse.ArgumentParser":
    import argparse
    import importlib
    p = argparse.ArgumentParser(prog="gffs-admin", description="administer a gffs store")
    p.add_argument("--config")
    p.add_argument("--data-dir")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("status", help="chunks, bytes, flows, backends")
    s.add_argument("--json", action="store_true")
    s.add_argument("--full", action="store_true",
                   help="count chunks short of / beyond their policy now (walks the store)")
    s.set_defaults(handler=_status)
    for module in ADMIN_EXTENSIONS:
        importlib.import_module(module).register(sub)
    return p


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from gffs.config import load_config
    from gffs.errors import ConfigError, StoreLockedError
    try:
        cfg = load_config(args.config, args.data_dir)
        return args.handler(cfg, args)
    except ConfigError as exc:
        print(f"gffs-admin: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreLockedError as exc:
        print(f"gffs-admin: {exc}; unmount it first (gffs umount MOUNTPOINT)", file=sys.stderr)
        return EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    return run_cli("gffs-admin", lambda: _run(argv))


if __name__ == "__main__":
    sys.exit(main())
