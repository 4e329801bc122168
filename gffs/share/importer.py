"""`gffs-admin flow import CID --as NAME`: a published flow appears at once, no image read.

One write transaction makes the flow's directories and files from the manifest: each
file's block list names chunks whose one location is a byte range of the publisher's
UnixFS file on the ``ipfs-share`` source (untrusted, read-only); image facts, thumbnails
(located the same way) and ``user.xdg.*`` / ``user.nft.*`` xattrs are written as they
were published, so nothing is queued for analysis and listing the flow with its
thumbnails fetches no image block. Reads fetch a block on first use, verify its SHA-256
and cache it; ``flow pin`` copies every block to the store's own backends.
"""

from __future__ import annotations

import stat
import time
from typing import Any

from gffs.chunks.codec import CODEC_RAW
from gffs.errors import FsError
from gffs.index import ROOT_INO, ChunkMap, Namespace
from gffs.index.images import ImageIndex, content_id_from_blocks
from gffs.index.namespace import check_name
from gffs.index.records import ChunkRecord, InodeRecord, Location
from gffs.maintenance.jobs import JobRefused, job
from gffs.maintenance.progress import Progress
from gffs.share.manifest import Manifest, ManifestError, parse
from gffs.share.source import share_source
from gffs_backends.base import BackendError
from gffs_backends.ipfs_share import share_locator

SHARES_META = b"shares"     # meta JSON: flow name -> {"manifest", "root", "source"}


def _shared_chunk(source: str, cid: str, offset: int, length: int) -> ChunkRecord:
    return ChunkRecord(0, length, length + 1, CODEC_RAW,
                       [Location(source, share_locator(cid, offset, length))])


def _make_flow(store, m: Manifest, name: str, source: str) -> int:
    """Create flow *name* from *m* in one transaction; the number of files made."""
    ns, cm, images = Namespace(store.index), ChunkMap(store.index), ImageIndex(store.index)
    now = time.time_ns()
    with store.index.write() as txn:
        root = ns.get(txn, ROOT_INO)
        if ns.lookup(txn, ROOT_INO, name.encode()) is not None:
            raise JobRefused(f"a flow named {name!r} exists already (import --as another name)")
        dirs: dict[str, int] = {}

        def mkdir(parent: int, seg: str, key: str) -> int:
            prec = ns.get(txn, parent)
            ino = ns.new_inode(txn, InodeRecord(stat.S_IFDIR | 0o755, root.uid, root.gid, 2, 0,
                                                now, now, now, 0, parent))
            ns.add_entry(txn, parent, seg.encode(), ino)
            prec.nlink += 1
            prec.mtime_ns = prec.ctime_ns = now
            ns.put(txn, parent, prec)
            dirs[key] = ino
            return ino

        mkdir(ROOT_INO, name, "")
        for f in m.files:
            segs = f.path.split("/")
            for seg in segs:
                check_name(seg.encode())
            parent = dirs[""]
            for i, seg in enumerate(segs[:-1]):
                key = "/".join(segs[: i + 1])
                parent = dirs.get(key) or mkdir(parent, seg, key)
            if ns.lookup(txn, parent, segs[-1].encode()) is not None:
                raise JobRefused(f"the manifest lists {f.path!r} twice")
            ino = ns.new_inode(txn, InodeRecord(stat.S_IFREG | f.mode, root.uid, root.gid, 1,
                                                f.size, f.mtime_ns, f.mtime_ns, now, 0, parent))
            ns.add_entry(txn, parent, segs[-1].encode(), ino)
            for idx, digest, length in f.blocks:
                cm.set_block(txn, ino, idx, bytes.fromhex(digest),
                             _shared_chunk(source, f.cid, idx * m.block_size, length))
            for xname, value in f.xattrs.items():
                ns.set_xattr(txn, ino, xname.encode(), value.encode())
            content_id = content_id_from_blocks(
                f.size, sorted((i, bytes.fromhex(d)) for i, d, _ in f.blocks))
            images.set_content_id(txn, ino, content_id)
            if f.facts and images.facts(txn, content_id) is None:
                images.set_facts(txn, content_id, f.facts)
            for size_name, t in f.thumbnails.items():
                if images.thumbnail(txn, content_id, size_name) is None:
                    images.set_thumbnail(txn, content_id, size_name, bytes.fromhex(t.sha256),
                                         _shared_chunk(source, t.cid, 0, t.length),
                                         t.width, t.height, t.length)
        shares = store.index.meta_json(txn, SHARES_META, {})
        shares[name] = {"manifest": m.manifest_cid, "root": m.root, "source": source}
        store.index.set_meta_json(txn, SHARES_META, shares)
    return len(m.files)


@job("flow-import")
async def import_flow(store, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Import the manifest ``args["cid"]`` as flow ``args["as"]`` (default: its own name)."""
    if store.read_only:
        raise JobRefused("the store is mounted read-only")
    source = share_source(store, args.get("via"))
    progress.begin("fetching the manifest")
    try:
        m = parse(await source.fetch(args["cid"]))
    except ManifestError as exc:
        raise JobRefused(f"{args['cid']}: {exc}") from None
    except BackendError as exc:
        raise JobRefused(f"cannot fetch the manifest {args['cid']}: {exc}") from None
    m.manifest_cid = args["cid"]
    name = args.get("as") or m.flow
    try:
        check_name(name.encode())
        made = _make_flow(store, m, name, source.name)
    except FsError as exc:
        raise JobRefused(f"the manifest has an unusable name: {exc}") from None
    except KeyError as exc:
        raise JobRefused(f"the manifest is inconsistent: {exc}") from None
    await store.index.durable()
    return {"flow": name, "files": made, "bytes": sum(f.size for f in m.files),
            "manifest": args["cid"], "root": m.root}


