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
from gffs.index.views import ViewIndex
from gffs.index.namespace import check_name
from gffs.index.records import ChunkRecord, InodeRecord, Location
from gffs.maintenance.jobs import JobRefused, job
from gffs.maintenance.progress import Progress
from gffs.share.manifest import Manifest, ManifestError, SharedFile, parse
from gffs.share.private import MANIFEST_NAME, SealError, parse_share
from gffs.share.source import share_source
from gffs_backends.base import BackendError
from gffs.share.backend import SHARES_META, IpfsShareBackend, share_locator



def _shared_chunk(source: str, cid: str, offset: int, length: int, size: int,
                  key_tag: str = "") -> ChunkRecord:
    """A chunk of *size* plaintext bytes at ``cid[offset:offset+length]`` on the share."""
    return ChunkRecord(0, size, size + 1, CODEC_RAW,
                       [Location(source, share_locator(cid, offset, length, key_tag))])


def _block_chunk(source: str, m: Manifest, f, block: tuple, tag: str) -> ChunkRecord:
    idx, _sha, length = block[:3]
    if m.private:
        return _shared_chunk(source, block[3], 0, block[4], length, tag)
    return _shared_chunk(source, f.cid, idx * m.block_size, length, length)


class FlowWriter:
    """Makes a manifest's directories and files inside one write transaction *txn*."""

    def __init__(self, store, txn, m: Manifest, source: str, key=None) -> None:
        self.ns, self.cm = Namespace(store.index), ChunkMap(store.index)
        self.images = ImageIndex(store.index)
        self.views = ViewIndex(store.index)
        self.txn, self.m, self.source = txn, m, source
        self.tag = key.tag if key is not None else ""
        self.root = self.ns.get(txn, ROOT_INO)
        self.now = time.time_ns()
        self.dirs: dict[str, int] = {}

    def make_dir(self, parent: int, seg: str, path: str) -> int:
        ns, txn, now = self.ns, self.txn, self.now
        check_name(seg.encode())
        prec = ns.get(txn, parent)
        ino = ns.new_inode(txn, InodeRecord(stat.S_IFDIR | 0o755, self.root.uid, self.root.gid,
                                            2, 0, now, now, now, 0, parent))
        ns.add_entry(txn, parent, seg.encode(), ino)
        prec.nlink += 1
        prec.mtime_ns = prec.ctime_ns = now
        ns.put(self.txn, parent, prec)
        self.dirs[path] = ino
        return ino

    def parent_of(self, path: str) -> tuple[int, bytes]:
        """The directory *path* goes in (made if missing) and its last name."""
        segs = path.split("/")
        parent = self.dirs[""]
        for i, seg in enumerate(segs[:-1]):
            sub = "/".join(segs[: i + 1])
            if sub not in self.dirs:
                found = self.ns.lookup(self.txn, parent, seg.encode())
                self.dirs[sub] = found if found is not None else self.make_dir(parent, seg, sub)
            parent = self.dirs[sub]
        check_name(segs[-1].encode())
        return parent, segs[-1].encode()

    def make_file(self, f: SharedFile, parent: int) -> int:
        """A new inode holding *f* (blocks on the share, facts, thumbnails, xattrs), unlinked."""
        ns, cm, images, txn = self.ns, self.cm, self.images, self.txn
        ino = ns.new_inode(txn, InodeRecord(stat.S_IFREG | f.mode, self.root.uid, self.root.gid,
                                            1, f.size, f.mtime_ns, f.mtime_ns, self.now, 0, parent))
        for block in f.blocks:
            cm.set_block(txn, ino, block[0], bytes.fromhex(block[1]),
                         _block_chunk(self.source, self.m, f, block, self.tag))
        for xname, value in f.xattrs.items():
            ns.set_xattr(txn, ino, xname.encode(), value.encode())
        content_id = content_id_of(f)
        images.set_content_id(txn, ino, content_id)
        new_facts = bool(f.facts) and images.facts(txn, content_id) is None
        if new_facts:
            images.set_facts(txn, content_id, f.facts)
        # .views: the file by its date, camera, place, tags (as a flow's own file gets them
        # when it is closed and analysed); new facts reach every file holding the content
        self.views.content_set(txn, ino, None, content_id)
        if new_facts:
            self.views.facts_stored(txn, content_id)
        for size_name, t in f.thumbnails.items():
            if images.thumbnail(txn, content_id, size_name) is None:
                images.set_thumbnail(txn, content_id, size_name, bytes.fromhex(t.sha256),
                                     _shared_chunk(self.source, t.cid, 0,
                                                   t.sealed_length or t.length, t.length,
                                                   self.tag),
                                     t.width, t.height, t.length)
        return ino

    def record(self, store, name: str, key=None, follow: str | None = None) -> None:
        shares = store.index.meta_json(self.txn, SHARES_META, {})
        entry = {"manifest": self.m.manifest_cid, "root": self.m.root, "source": self.source}
        if key is not None:     # kept like the flow's other metadata (docs/SHARING.md)
            entry["key"] = key.master.hex()
        if follow:
            entry["follow"] = follow
        shares[name] = entry
        store.index.set_meta_json(self.txn, SHARES_META, shares)


def content_id_of(f: SharedFile) -> bytes:
    return content_id_from_blocks(f.size, sorted((b[0], bytes.fromhex(b[1])) for b in f.blocks))


def make_flow(store, m: Manifest, name: str, source: str, key=None,
              follow: str | None = None) -> int:
    """Create flow *name* from *m* in one transaction; the number of files made."""
    with store.index.write() as txn:
        w = FlowWriter(store, txn, m, source, key)
        if w.ns.lookup(txn, ROOT_INO, name.encode()) is not None:
            raise JobRefused(f"a flow named {name!r} exists already (import --as another name)")
        w.make_dir(ROOT_INO, name, "")
        for f in m.files:
            parent, leaf = w.parent_of(f.path)
            if w.ns.lookup(txn, parent, leaf) is not None:
                raise JobRefused(f"the manifest lists {f.path!r} twice")
            w.ns.add_entry(txn, parent, leaf, w.make_file(f, parent))
        w.record(store, name, key, follow)
    return len(m.files)


async def fetch_manifest(source: IpfsShareBackend, share: str) -> tuple[Manifest, Any]:
    """The manifest of a CID or ``gffs-share:`` string, and its share key (or None)."""
    try:
        cid, key = parse_share(share)
    except ValueError as exc:
        raise JobRefused(str(exc)) from None
    try:
        body = await source.fetch(cid)
        m = parse(key.open_meta(MANIFEST_NAME, body) if key is not None else body)
    except SealError:
        raise JobRefused(f"{cid}: not a private share this key opens") from None
    except ManifestError as exc:
        hint = " (a private share: import the gffs-share: string)" if key is None else ""
        raise JobRefused(f"{cid}: {exc}{hint}") from None
    except BackendError as exc:
        raise JobRefused(f"cannot fetch the manifest {cid}: {exc}") from None
    if m.private != (key is not None):
        raise JobRefused(f"{cid}: the manifest says private={m.private}, but a key was "
                         f"{'given' if key else 'not given'}")
    m.manifest_cid = cid
    if key is not None:
        source.keys[key.tag] = key
    return m, key


@job("flow-import")
async def import_flow(store, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Import the manifest ``args["cid"]`` as flow ``args["as"]`` (default: its own name)."""
    if store.read_only:
        raise JobRefused("the store is mounted read-only")
    source = share_source(store, args.get("via"))
    progress.begin("fetching the manifest")
    m, key = await fetch_manifest(source, args["cid"])
    name = args.get("as") or m.flow
    try:
        check_name(name.encode())
        made = make_flow(store, m, name, source.name, key)
    except FsError as exc:
        raise JobRefused(f"the manifest has an unusable name: {exc}") from None
    await store.index.durable()
    return {"flow": name, "files": made, "bytes": sum(f.size for f in m.files),
            "manifest": m.manifest_cid, "root": m.root, "private": m.private}


