"""`gffs-admin flow follow NAME --as FLOW`: a flow that follows an IPNS name's later publishes.

The IPNS name (``flow publish --ipns``) points at the flow's newest manifest. Following
resolves it through the store's IPFS node: the first time the flow is imported, later
(a rerun, or the mount daemon every ``FOLLOW_INTERVAL``) a new manifest is applied in one
transaction: new files appear, changed files get a new inode behind the same name, files
the publisher removed go. A replaced or removed inode is never changed in place: it is
unlinked like a file another process deleted (kept while open, purged when released or
at the next mount), so a reader in the middle of a file reads its old version whole.
``--stop`` unfollows: the flow stays as it is, a plain imported flow.
"""

from __future__ import annotations

import logging
import stat
from typing import Any

import trio

from gffs.index import ROOT_INO
from gffs.maintenance.jobs import JobRefused, job
from gffs.maintenance.progress import Progress
from gffs.share.backend import SHARES_META
from gffs.share.importer import FlowWriter, content_id_of, fetch_manifest, make_flow
from gffs.share.manifest import Manifest
from gffs.share.private import parse_share, share_key, share_string
from gffs.share.backend import IPNS_RE
from gffs.share.source import share_source
from gffs_backends.base import BackendError

log = logging.getLogger("gffs.share")
FOLLOW_INTERVAL = 600.0        # seconds between the daemon's looks at followed names


def _unlink(w: FlowWriter, parent: int, leaf: bytes) -> None:
    """Drop one name; an inode without names waits in `orphans` for its last user."""
    ino = w.ns.remove_entry(w.txn, parent, leaf)
    rec = w.ns.get(w.txn, ino)
    rec.nlink -= 1
    rec.ctime_ns = w.now
    w.ns.put(w.txn, ino, rec)
    if rec.nlink == 0:
        w.ns.add_orphan(w.txn, ino)


def _files_of(w: FlowWriter, top: int) -> dict[str, tuple[int, bytes, int]]:
    """path -> (parent, name, ino) of every regular file under the flow."""
    out: dict[str, tuple[int, bytes, int]] = {}
    todo = [("", top)]
    while todo:
        prefix, ino = todo.pop()
        for _cookie, name, child in w.ns.entries(w.txn, ino):
            mode = w.ns.get(w.txn, child).mode
            path = prefix + name.decode(errors="surrogateescape")
            if stat.S_ISDIR(mode):
                w.dirs[path] = child
                todo.append((path + "/", child))
            elif stat.S_ISREG(mode):
                out[path] = (ino, name, child)
    return out


def apply_update(store, flow: str, m: Manifest, source: str, key, follow: str) -> dict[str, int]:
    """Make flow *flow* what manifest *m* lists, in one transaction."""
    counts = {"added": 0, "changed": 0, "removed": 0}
    with store.index.write() as txn:
        w = FlowWriter(store, txn, m, source, key)
        top = w.ns.lookup(txn, ROOT_INO, flow.encode())
        if top is None:
            raise JobRefused(f"flow {flow!r} is gone; follow it again to import it anew")
        w.dirs[""] = top
        have = _files_of(w, top)
        for f in m.files:
            parent, leaf = w.parent_of(f.path)
            old = have.pop(f.path, None)
            if old is not None and w.images.content_id(txn, old[2]) == content_id_of(f):
                continue
            ino = w.make_file(f, parent)
            if old is None:
                w.ns.add_entry(txn, parent, leaf, ino)
                counts["added"] += 1
            else:
                _unlink(w, parent, leaf)
                w.ns.add_entry(txn, parent, leaf, ino)
                counts["changed"] += 1
        for parent, leaf, _ino in have.values():
            _unlink(w, parent, leaf)
            counts["removed"] += 1
        w.record(store, flow, key, follow)
    return counts


@job("flow-follow")
async def follow(store, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Follow IPNS name ``args["name"]`` as flow ``args["as"]``; ``stop`` unfollows; ``key``
    (a private share's ``gffs-share:`` string) opens a private flow's manifests."""
    if store.read_only:
        raise JobRefused("the store is mounted read-only")
    with store.index.read() as txn:
        shares = store.index.meta_json(txn, SHARES_META, {})
    if args.get("stop"):
        flow = args.get("as") or args["name"]
        if "follow" not in shares.get(flow, {}):
            raise JobRefused(f"flow {flow!r} follows nothing")
        with store.index.write() as txn:
            shares = store.index.meta_json(txn, SHARES_META, {})
            del shares[flow]["follow"]
            store.index.set_meta_json(txn, SHARES_META, shares)
        return {"flow": flow, "stopped": True}
    name = args["name"]
    if not IPNS_RE.fullmatch(name):
        raise JobRefused(f"{name!r} is not an IPNS name")
    source = share_source(store, args.get("via"))
    progress.begin(f"resolving /ipns/{name}")
    try:
        cid = await source.resolve(name)
    except BackendError as exc:
        raise JobRefused(f"cannot resolve /ipns/{name}: {exc}") from None
    entry = shares.get(args.get("as") or "")
    share = cid
    if entry is not None and entry.get("key"):     # a followed private share keeps its key
        share = share_string(cid, share_key(bytes.fromhex(entry["key"])))
    elif args.get("key"):                          # the first follow of a private share
        try:
            key = parse_share(args["key"])[1]
        except ValueError as exc:
            raise JobRefused(str(exc)) from None
        if key is None:
            raise JobRefused("--key wants the gffs-share: string of the private share")
        share = share_string(cid, key)
    m, key = await fetch_manifest(source, share)
    flow = args.get("as") or m.flow
    entry = shares.get(flow)
    if entry is None:
        made = make_flow(store, m, flow, source.name, key, follow=name)
        result: dict[str, Any] = {"flow": flow, "manifest": cid, "added": made, "changed": 0,
                                  "removed": 0}
    elif entry.get("follow") != name:
        raise JobRefused(f"flow {flow!r} exists and does not follow {name}")
    elif entry.get("manifest") == cid:
        result = {"flow": flow, "manifest": cid, "added": 0, "changed": 0, "removed": 0}
    else:
        result = {"flow": flow, "manifest": cid,
                  **apply_update(store, flow, m, source.name, key, name)}
    await store.index.durable()
    return result


async def follow_loop(store, interval: float = FOLLOW_INTERVAL) -> None:
    """In the mount daemon: look at every followed name every *interval* seconds."""
    from gffs.maintenance.progress import Progress as Quiet
    while True:
        await trio.sleep(interval)
        with store.index.read() as txn:
            shares = store.index.meta_json(txn, SHARES_META, {})
        for flow, entry in shares.items():
            if "follow" not in entry:
                continue
            try:
                r = await follow(store, {"name": entry["follow"], "as": flow,
                                         "via": entry.get("source")}, Quiet())
                if r["added"] or r["changed"] or r["removed"]:
                    log.info("followed flow %s updated: %s", flow, r)
            except (JobRefused, BackendError) as exc:
                log.warning("followed flow %s not updated: %s", flow, exc)
