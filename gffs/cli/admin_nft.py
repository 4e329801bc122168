"""`gffs-admin nft link|refresh|scan`: fetch token data into user.nft.* attributes.

    gffs-admin nft link FILE --chain ethereum --contract 0x... --token 42
                            [--standard erc721|erc1155|fa2] [--owner ADDRESS] [--json]
    gffs-admin nft refresh FILE|DIR [--json]
    gffs-admin nft scan --owner ADDRESS [--chain CHAIN] [--contract ADDRESS ...]
                        [--import-to FLOW] [--json]

All three work through a mounted gffs (attributes are set with setxattr, so
the filesystem validates them); scan also reads the index read-only.
Exit codes: 0 done, 1 a token or file failed (the others were done), 2 usage
or configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from gffs.nft.validate import CHAINS, STANDARDS

if TYPE_CHECKING:   # the chain clients (web3 and friends) load only when an nft command runs
    from gffs.config import Config
    from gffs.nft.link import Linked
    from gffs.nft.scan import ScanResult


def register(sub: argparse._SubParsersAction) -> None:
    nft = sub.add_parser("nft", help="link files to NFTs (Ethereum ERC-721/1155, Tezos FA2)")
    cmds = nft.add_subparsers(dest="nft_command", required=True)

    link = cmds.add_parser("link", help="fetch a token's owner and metadata into FILE's attributes")
    link.add_argument("file")
    link.add_argument("--chain", required=True, choices=sorted(CHAINS))
    link.add_argument("--contract", required=True)
    link.add_argument("--token", required=True, help="token id (decimal)")
    link.add_argument("--standard", choices=sorted(STANDARDS),
                      help="default: asked from the contract (ERC-165)")
    link.add_argument("--owner", help="the holder to record when a token has several")
    link.add_argument("--json", action="store_true")
    link.set_defaults(handler=cmd_link)

    refresh = cmds.add_parser("refresh", help="fetch again for a linked file, or every one in DIR")
    refresh.add_argument("path")
    refresh.add_argument("--json", action="store_true")
    refresh.set_defaults(handler=cmd_refresh)

    sc = cmds.add_parser("scan", help="link every token OWNER holds whose media is in the store")
    sc.add_argument("--owner", required=True)
    sc.add_argument("--chain", choices=sorted(CHAINS),
                    help="default: ethereum for 0x addresses, tezos for tz/KT1 addresses")
    sc.add_argument("--contract", action="append", default=[],
                    help="only tokens of this contract (repeatable)")
    sc.add_argument("--import-to", metavar="FLOW",
                    help="write media the store lacks into this flow and link it")
    sc.add_argument("--json", action="store_true")
    sc.set_defaults(handler=cmd_scan)


def _fail(message: str) -> None:
    print(f"gffs-admin nft: {message}", file=sys.stderr)


def _summary(linked: Linked) -> str:
    v = linked.values
    owner = v.get("owner", "no single owner")
    name = f", {v['name']!r}" if "name" in v else ""
    return f"{linked.ref} ({v['standard']}, owner {owner}{name})"


def _notes(notes: list[str]) -> None:
    for note in notes:
        print(f"  note: {note}", file=sys.stderr)


def cmd_link(cfg: Config, args: argparse.Namespace) -> int:
    from gffs.nft.fetch import Fetcher, NftError
    from gffs.nft.link import link_file, token_ref
    try:
        ref = token_ref(args.chain, args.contract, args.token, args.standard, args.owner)
    except NftError as exc:
        _fail(str(exc))
        return 2
    try:
        linked = link_file(args.file, ref, cfg, Fetcher.from_config(cfg))
    except NftError as exc:
        _fail(f"{args.file}: {exc}; nothing changed")
        return 1
    if args.json:
        print(json.dumps({"file": args.file, "values": linked.values, "notes": linked.notes}))
    else:
        print(f"linked {args.file} to {_summary(linked)}")
        _notes(linked.notes)
    return 0


def cmd_refresh(cfg: Config, args: argparse.Namespace) -> int:
    from gffs.nft.fetch import Fetcher, NftError
    from gffs.nft.link import link_file, linked_files, stored_ref
    try:
        fetcher = Fetcher.from_config(cfg)
    except NftError as exc:
        _fail(str(exc))
        return 2
    out: list[dict[str, Any]] = []
    failed = 0
    for path in linked_files(args.path):
        try:
            ref = stored_ref(path)
            if ref is None:
                if path == args.path:
                    raise NftError("not linked to a token (use nft link)")
                continue
            linked = link_file(path, ref, cfg, fetcher)
        except (NftError, OSError) as exc:
            failed += 1
            message = str(exc) if isinstance(exc, NftError) else exc.strerror
            out.append({"file": path, "error": message})
            if not args.json:
                _fail(f"{path}: {message}; left as it was")
            continue
        out.append({"file": path, "values": linked.values, "notes": linked.notes})
        if not args.json:
            print(f"refreshed {path}: {_summary(linked)}")
            _notes(linked.notes)
    if args.json:
        print(json.dumps(out))
    return 1 if failed else 0


def cmd_scan(cfg: Config, args: argparse.Namespace) -> int:
    from gffs.nft.fetch import Fetcher, NftError
    from gffs.nft.link import check_values
    from gffs.maintenance.control import commit_mounted
    from gffs.nft.scan import scan
    chain = args.chain or ("ethereum" if args.owner.startswith("0x") else "tezos")
    try:
        check_values({"chain": chain, "owner": args.owner}, "")
        for c in args.contract:
            check_values({"chain": chain, "contract": c}, "")
    except NftError as exc:
        _fail(str(exc))
        return 2

    def report(r: ScanResult) -> None:
        if args.json:
            return
        where = ", ".join(r.paths) if r.paths else r.message
        print(f"{r.status:9} {r.token}: {where}")
        _notes(r.notes)

    try:
        results = scan(cfg, Fetcher.from_config(cfg), chain, args.owner, args.contract,
                       args.import_to, report, commit_mounted)
    except NftError as exc:
        _fail(str(exc))
        return 1
    if args.json:
        print(json.dumps([r.__dict__ for r in results]))
    else:
        counts = {s: sum(r.status == s for r in results)
                  for s in ("linked", "imported", "missing", "skipped", "failed")}
        print(", ".join(f"{n} {s}" for s, n in counts.items()))
    return 1 if any(r.status == "failed" for r in results) else 0
