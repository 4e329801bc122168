"""`gffs-admin flow publish | import | follow | pin`: share flows peer to peer (docs/SHARING.md)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from gffs.cli.admin_jobs import cli_run

if TYPE_CHECKING:
    from gffs.config import Config


def _publish(cfg: Config, args: argparse.Namespace) -> int:
    def render(r: dict[str, Any]) -> None:
        what = r.get("share") or r["manifest"]
        print(what)
        if r.get("ipns"):
            print(f"IPNS name {r['ipns']} points at it; follow it with: gffs-admin flow follow "
                  f"{r['ipns']}")
        print(f"flow {r['flow']}: {r['files']} files, directory {r['root']}; import it "
              f"elsewhere with: gffs-admin flow import {what}"
              + ("  (private: whoever has this string can read the flow)" if r["private"] else ""))
    return cli_run(cfg, "flow-publish", {"flow": args.flow, "allow_gps": args.allow_gps,
                                         "via": args.via, "private": args.key or args.new_key,
                                         "new_key": args.new_key, "strip_gps": args.strip_gps,
                                         "ipns": args.ipns},
                   json_output=args.json, render=render)


def _import(cfg: Config, args: argparse.Namespace) -> int:
    def render(r: dict[str, Any]) -> None:
        print(f"flow {r['flow']}: {r['files']} files imported (blocks are fetched on first read)")
    return cli_run(cfg, "flow-import", {"cid": args.cid, "as": args.as_name, "via": args.via},
                   json_output=args.json, render=render)


def _follow(cfg: Config, args: argparse.Namespace) -> int:
    def render(r: dict[str, Any]) -> None:
        if r.get("stopped"):
            print(f"flow {r['flow']}: no longer follows anything (its files stay)")
        else:
            print(f"flow {r['flow']}: at {r['manifest']}; {r['added']} added, {r['changed']} "
                  f"changed, {r['removed']} removed")
    return cli_run(cfg, "flow-follow", {"name": args.name, "as": args.as_name, "via": args.via,
                                        "stop": args.stop, "key": args.key},
                   json_output=args.json, render=render)


def _pin(cfg: Config, args: argparse.Namespace) -> int:
    def render(r: dict[str, Any]) -> None:
        state = "all copied" if not r["left"] else f"{r['left']} not fetched yet (run it again)"
        print(f"flow {r['flow']}: {r['chunks']} chunks, {state}")
    return cli_run(cfg, "flow-pin", {"flow": args.flow}, json_output=args.json, render=render)


def register(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser("flow", help="share flows over IPFS: publish, import, follow, pin")
    fsub = f.add_subparsers(dest="flow_command", required=True)
    p = fsub.add_parser("publish", help="publish a flow; prints the manifest CID to share")
    p.add_argument("flow")
    p.add_argument("--allow-gps", action="store_true",
                   help="publish even files whose EXIF holds GPS positions")
    p.add_argument("--strip-gps", action="store_true",
                   help="publish copies of JPEGs with their GPS positions removed")
    p.add_argument("--ipns", action="store_true",
                   help="also point the flow's IPNS name at this version (for followers)")
    p.add_argument("--key", action="store_true",
                   help="private share: seal it under the flow's share key, made the first "
                        "time (prints gffs-share:...)")
    p.add_argument("--new-key", action="store_true",
                   help="private share under a new share key (the old string opens only "
                        "what was published before)")
    i = fsub.add_parser("import", help="make a flow from a published manifest CID")
    i.add_argument("cid", help="the manifest CID, or the gffs-share: string of a private share")
    i.add_argument("--as", dest="as_name", help="flow name here (default: the publisher's)")
    w = fsub.add_parser("follow", help="import a flow from an IPNS name and keep it updated")
    w.add_argument("name", help="the IPNS name (k51...), or with --stop the flow")
    w.add_argument("--as", dest="as_name", help="flow name here (default: the publisher's)")
    w.add_argument("--stop", action="store_true", help="unfollow: keep the flow as it is")
    w.add_argument("--key", help="a private share: its gffs-share: string (the key is kept)")
    n = fsub.add_parser("pin", help="copy every block of a flow to this store's own backends")
    n.add_argument("flow")
    for s, handler in ((p, _publish), (i, _import), (w, _follow), (n, _pin)):
        if s is not n:
            s.add_argument("--via", help="the ipfs-share backend to use (when several)")
        s.add_argument("--json", action="store_true")
        s.set_defaults(handler=handler)
