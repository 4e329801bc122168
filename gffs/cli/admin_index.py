"""`gffs-admin index backup | list | restore`: the index's backups on the backends.

backup runs the ``index-backup`` job (inside the mount daemon when mounted);
list only reads the backends (works anywhere, mounted or not, even on a fresh
machine); restore needs the store unmounted and refuses to replace an index
without --force.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from gffs.cli.admin_jobs import cli_run
from gffs.exitcodes import EXIT_FAILED, EXIT_OK

if TYPE_CHECKING:
    from gffs.config import Config


def render_backup(r: dict[str, Any]) -> None:
    from gffs.maintenance.progress import human_bytes
    s = r["summary"]
    print(f"index: {s['inodes']} inodes, {s['chunks']} chunks; {r['pieces']} pieces, "
          f"{human_bytes(r['bytes'])}")
    for b in r["backends"]:
        if "error" in b:
            print(f"  {b['backend']}: FAILED: {b['error']}")
            continue
        what = "unchanged since version" if b["unchanged"] else "new version"
        print(f"  {b['backend']}: {what} {b['version']}; deleted {b['versions_deleted']} old "
              f"versions and {b['pieces_deleted']} unused pieces")


def _backup(cfg: Config, args: argparse.Namespace) -> int:
    return cli_run(cfg, "index-backup", {"to": args.to}, json_output=args.json,
                   render=render_backup)


def _list(cfg: Config, args: argparse.Namespace) -> int:
    import trio

    from gffs.maintenance.backup import backup_targets, list_versions
    from gffs.maintenance.progress import human_bytes
    from gffs.store import open_backends
    from gffs_backends.base import BackendError
    backends = open_backends(cfg)

    async def run() -> dict[str, Any]:
        out: dict[str, Any] = {}
        names = [args.source] if args.source else list(backup_targets(cfg, backends))
        for name in names:
            try:
                out[name] = await list_versions(backends[name])
            except BackendError as exc:
                out[name] = {"error": str(exc)}
        for b in backends.values():
            await b.close()
        return out

    if args.source and args.source not in backends:
        print(f"gffs-admin index list: no backend named {args.source!r} "
              f"(configured: {', '.join(backends)})", file=sys.stderr)
        return EXIT_FAILED
    result = trio.run(run)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for name, versions in result.items():
            if isinstance(versions, dict):
                print(f"{name}: cannot list: {versions['error']}")
                continue
            print(f"{name}: {len(versions)} backup versions")
            for v in versions:
                if "error" in v:
                    print(f"  {v['version']}  {v['error']}")
                    continue
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v["created"] or 0))
                print(f"  {v['version']}  {when}  store {v['store_id'][:8]}  "
                      f"{v.get('inodes', '?')} inodes  {v.get('chunks', '?')} chunks  "
                      f"{v['pieces']} pieces ({human_bytes(v['stored_bytes'])})")
    failed = any(isinstance(v, dict) for v in result.values())
    return EXIT_FAILED if failed else EXIT_OK


def render_restore(r: dict[str, Any]) -> None:
    t = r["tables"]
    print(f"restored index version {r['restored']} of store {r['store_id']} from {r['from']}: "
          f"{t.get('inodes', 0)} inodes, {t.get('chunks', 0)} chunks")
    if r["replaced"]:
        print(f"the index it replaced is kept in {r['replaced']}")
    c = r.get("check")
    if c is None:
        return
    for name, err in c["unreachable_backends"].items():
        print(f"  backend {name} could not be listed ({err}): its copies are unchecked")
    for name in c["unknown_backends"]:
        print(f"  backend {name} is named by the index but not in the config")
    if c["lost"]:
        print(f"  {c['lost']} of {c['chunks']} chunks have no copy on any reachable backend "
              f"({c['lost_on_unconfigured_backends']} only on backends missing from the config); "
              f"{c['files_affected']} files read EIO where they use them:")
        for path in c["examples"]:
            print(f"    {path}")
    else:
        print(f"  every one of {c['chunks']} chunks has a copy on a configured backend")
    if c["fewer_copies"]:
        print(f"  {c['fewer_copies']} chunks lost some copies: "
              f"gffs-admin fsck --repair restores them from the others")
    if c["orphans_to_purge"]:
        print(f"  {c['orphans_to_purge']} files that were unlinked while open are purged "
              f"at the next mount")


def _restore(cfg: Config, args: argparse.Namespace) -> int:
    import trio

    from gffs.maintenance.backup_format import BadBackup
    from gffs.maintenance.restore import restore_index
    from gffs.maintenance.runner import cli_report
    from gffs_backends.base import BackendError

    def work(progress):
        return trio.run(lambda: restore_index(cfg, args.source, progress, version=args.version,
                                              force=args.force, check=not args.no_check))
    return cli_report("index restore", work, json_output=args.json, render=render_restore,
                      failures=(BadBackup, BackendError), interrupted="the store is unchanged")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="back up and restore the index (to/from the backends)")
    isub = p.add_subparsers(dest="index_command", required=True)
    b = isub.add_parser("backup", help="back the index up now (incremental, versioned)")
    b.add_argument("--to", action="append", metavar="BACKEND",
                   help="only this backend (repeatable; default: [store] index_backup_to or all)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(handler=_backup)
    ls = isub.add_parser("list", help="the backup versions on the backends")
    ls.add_argument("--from", dest="source", metavar="BACKEND")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(handler=_list)
    r = isub.add_parser("restore", help="rebuild the index from a backup (store unmounted)")
    r.add_argument("--from", dest="source", metavar="BACKEND", required=True)
    r.add_argument("--version", help="a version from 'index list' (default: the newest)")
    r.add_argument("--force", action="store_true",
                   help="replace an existing index (it is kept as index.replaced-<time>)")
    r.add_argument("--no-check", action="store_true",
                   help="do not list the backends afterwards to report chunks without a copy")
    r.add_argument("--json", action="store_true")
    r.set_defaults(handler=_restore)
