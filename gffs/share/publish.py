"""`gffs-admin flow publish FLOW`: the flow as a UnixFS directory plus a manifest, on IPFS.

The directory is built the way ``ipfs add -r`` builds it with Kubo's defaults (CIDv0,
256 KiB chunks, dag-pb leaves, balanced layout, plain directories): its CID is computed
here from the store's blocks before anything is uploaded, and the node's answer must
equal it (a node that imported other bytes or with other settings is caught). The
manifest (gffs/share/manifest.py) is added beside it; its CID is what importers need.
Thumbnails are added as their own files (PNG), so listing an imported flow's thumbnails
never needs an image block.

Two passes, one file in memory at a time: the first reads each file to compute its
CIDs and manifest entry, the second streams the files to the node, reading each again
(from the block cache or the backends) while it is sent.
"""

from __future__ import annotations

import hashlib
import stat
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import trio

from gffs.index import ROOT_INO, ChunkMap, Namespace
from gffs.index.images import ImageIndex
from gffs.maintenance.jobs import JobRefused, job
from gffs.maintenance.progress import Progress
from gffs.share.gps import strip_gps
from gffs.share.manifest import Manifest, SharedFile, Thumb
from gffs.share.private import MANIFEST_NAME, new_share_key, seal_block, share_key, share_string
from gffs.share.source import share_source
from gffs_backends.unixfs import cid_text, unixfs_dir_root, unixfs_file_root

PUBLISHED_XATTRS = (b"user.xdg.", b"user.nft.")
GPS_FACTS = ("gps_lat", "gps_lon", "gps_alt")
Loader = Callable[[], Awaitable[bytes]]


@dataclass
class _Dir:
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)   # name -> (CID, tsize)
    dirs: dict[str, "_Dir"] = field(default_factory=dict)

    def add(self, path: str, root: tuple[bytes, int]) -> None:
        node = self
        for seg in path.split("/")[:-1]:
            node = node.dirs.setdefault(seg, _Dir())
        node.files[path.rsplit("/", 1)[-1]] = root

    def root(self) -> tuple[bytes, int]:
        entries = [(n, *c) for n, c in self.files.items()]
        entries += [(n, *d.root()) for n, d in self.dirs.items()]
        return unixfs_dir_root(entries, 0)


def _walk(store, flow_ino: int) -> list[tuple[str, int]]:
    """(relative path, ino) of every regular file under the flow."""
    ns = Namespace(store.index)
    out: list[tuple[str, int]] = []
    todo = [("", flow_ino)]
    with store.index.read() as txn:
        while todo:
            prefix, ino = todo.pop()
            for _cookie, name, child in ns.entries(txn, ino):
                rec = ns.get(txn, child)
                path = prefix + name.decode()
                if stat.S_ISDIR(rec.mode):
                    todo.append((path + "/", child))
                elif stat.S_ISREG(rec.mode):
                    out.append((path, child))
    return sorted(out)


def _blocks_of(data: bytes, block_size: int) -> list[tuple[int, str, int]]:
    """(index, SHA-256, length) of each stored block; all-zero blocks are holes."""
    out = []
    for idx, start in enumerate(range(0, len(data), block_size)):
        block = data[start:start + block_size]
        if block.count(0) != len(block):
            out.append((idx, hashlib.sha256(block).hexdigest(), len(block)))
    return out


def _cleaned(path: str, data: bytes) -> bytes:
    """The GPS-free copy of a file (JobRefused when it cannot be made)."""
    try:
        cleaned = strip_gps(data)
    except ValueError as exc:
        raise JobRefused(f"{path}: cannot strip its GPS position: {exc}") from None
    if cleaned is None:
        raise JobRefused(f"{path}: holds a GPS position that --strip-gps cannot remove (only "
                         "JPEG EXIF is cleaned); move it out of the flow or use --allow-gps")
    return cleaned


class _Reader:
    """The published bytes of a flow's files: the store's content, cleaned if asked."""

    def __init__(self, store, strip: set[str]) -> None:
        self.store, self.strip = store, strip
        self.cm = ChunkMap(store.index)

    async def read(self, path: str, ino: int, size: int) -> bytes:
        bs = self.store.index.block_size
        with self.store.index.read() as txn:
            blocks = list(self.cm.blocks(txn, ino))
        data = bytearray(size)
        for idx, digest in blocks:
            if idx * bs < size:
                block = bytes(await self.store.chunks.load(digest))[: size - idx * bs]
                data[idx * bs: idx * bs + len(block)] = block
        return _cleaned(path, bytes(data)) if path in self.strip else bytes(data)

    def loader(self, path: str, ino: int, size: int,
               then: Callable[[bytes], bytes] = lambda d: d) -> Loader:
        async def load() -> bytes:
            return then(await self.read(path, ino, size))
        return load


PUBLISHED_KEYS = b"share_keys"     # meta JSON: flow -> hex share key of its private shares


def _share_key(store, flow: str, renew: bool):
    """The flow's share key: made at its first private publish and kept, so followers
    open later versions with the key they have; *renew* makes a new one (revocation for
    what is published from then on)."""
    with store.index.write() as txn:
        keys = store.index.meta_json(txn, PUBLISHED_KEYS, {})
        if renew or flow not in keys:
            keys[flow] = new_share_key().master.hex()
            store.index.set_meta_json(txn, PUBLISHED_KEYS, keys)
    return share_key(bytes.fromhex(keys[flow]))


@job("flow-publish")
async def publish(store, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Publish flow ``args["flow"]``. ``allow_gps``: files with GPS positions as they are;
    ``strip_gps``: cleaned copies of them; ``private``: sealed under the flow's share key
    (the result's ``share``; ``new_key`` makes a new one); ``ipns``: point the flow's IPNS
    name at it."""
    flow = args["flow"]
    source = share_source(store, args.get("via"))
    ns, images = Namespace(store.index), ImageIndex(store.index)
    with store.index.read() as txn:
        flow_ino = ns.lookup(txn, ROOT_INO, flow.encode())
    if flow_ino is None:
        raise JobRefused(f"no flow named {flow!r}")
    entries = _walk(store, flow_ino)
    with store.index.read() as txn:
        gps = [p for p, ino in entries
               if any(k in (images.facts_of(txn, ino) or {}) for k in GPS_FACTS)]
    if gps and not (args.get("allow_gps") or args.get("strip_gps")):
        raise JobRefused(f"{len(gps)} files hold GPS positions in their EXIF (first: {gps[0]}); "
                         "anyone could read where they were taken. Publish cleaned copies "
                         "with --strip-gps, or them as they are with --allow-gps")
    reader = _Reader(store, set(gps) if args.get("strip_gps") else set())
    key = _share_key(store, flow, renew=bool(args.get("new_key"))) if args.get("private") \
        else None
    bs = store.index.block_size
    tree, parts, shared = _Dir(), [], []
    thumb_png: dict[str, bytes] = {}          # public thumbnails: small, added one by one

    def add_part(name: str, data: bytes, load: Loader) -> tuple[str, int]:
        root = unixfs_file_root(data, 0)
        tree.add(name, root)
        parts.append((name, load))
        return cid_text(root[0]), len(data)

    progress.begin("reading the flow", total_items=len(entries))
    for path, ino in entries:
        with store.index.read() as txn:
            rec = ns.get(txn, ino)
            facts = images.facts_of(txn, ino) or {}
            content_id = images.content_id(txn, ino)
            thumbs = images.thumbnails(txn, content_id) if content_id else {}
            xattrs = {n.decode(): bytes(ns.get_xattr(txn, ino, n) or b"").decode("utf-8", "replace")
                      for n in ns.xattr_names(txn, ino) if n.startswith(PUBLISHED_XATTRS)}
        if path in reader.strip:
            facts = {k: v for k, v in facts.items() if k not in GPS_FACTS}
        data = await reader.read(path, ino, rec.size)
        blocks: list[tuple] = _blocks_of(data, bs)
        file_cid = cid_text(unixfs_file_root(data, 0)[0])
        if key is None:
            add_part(path, data, reader.loader(path, ino, rec.size))
        else:
            sealed_blocks = []
            for i, sha, n in blocks:
                name, sealed = seal_block(key, sha, data[i * bs:i * bs + n])
                load = reader.loader(path, ino, rec.size, _sealer(key, sha, i * bs, n))
                sealed_blocks.append((i, sha, n, *add_part(name, sealed, load)))
            blocks = sealed_blocks
        shared_thumbs = {}
        for size_name, row in thumbs.items():
            stored = bytes(await store.chunks.load(row.digest))    # a source: publish its PNG
            png = await trio.to_thread.run_sync(_served_png, stored, row.width, row.height,
                                                row.length)
            sha = hashlib.sha256(png).hexdigest()
            t = Thumb("", sha, row.width, row.height, len(png))
            if key is None:
                thumb_png[sha] = png
            else:
                name, sealed = seal_block(key, sha, png)
                t.cid, t.sealed_length = add_part(name, sealed, _const(sealed))
            shared_thumbs[size_name] = t
        shared.append(SharedFile(path, rec.size, rec.mode & 0o777, rec.mtime_ns, file_cid,
                                 blocks, facts, xattrs, shared_thumbs))
        progress.advance(1, rec.size)
        del data
    progress.begin("adding to IPFS", total_items=len(parts) + len(thumb_png))
    thumb_cids = {sha: await source.add_file(f"{sha[:16]}.png", png) for sha, png in thumb_png.items()}
    for f in shared:
        for t in f.thumbnails.values():
            t.cid = t.cid or thumb_cids[t.sha256]
    expected = cid_text(tree.root()[0])
    root = await source.add_directory(flow, _unique(parts), expected)
    manifest = Manifest(flow, root, bs, time.time_ns(), shared, private=key is not None)
    body = manifest.to_json()
    if key is not None:
        body = key.seal_meta(MANIFEST_NAME, body)
    manifest_cid = await source.add_file("gffs-share.json", body)
    result = {"flow": flow, "root": root, "manifest": manifest_cid, "files": len(shared),
              "bytes": sum(f.size for f in shared), "gps_files": len(gps),
              "private": key is not None}
    if key is not None:
        result["share"] = share_string(manifest_cid, key)
    if args.get("ipns"):
        result["ipns"] = await source.publish_name(f"gffs-{flow}", manifest_cid)
    return result


def _sealer(key, sha: str, start: int, length: int) -> Callable[[bytes], bytes]:
    """From a file's published bytes to the sealed object of one of its blocks."""
    return lambda data: seal_block(key, sha, data[start:start + length])[1]


def _const(data: bytes) -> Loader:
    async def load() -> bytes:
        return data
    return load


def _unique(parts: list[tuple[str, Loader]]) -> list[tuple[str, Loader]]:
    """One part per name (a private share's identical blocks are one sealed object)."""
    return list({name: (name, load) for name, load in parts}.values())


def _served_png(stored: bytes, width: int, height: int, length: int) -> bytes:
    """The PNG a mount serves for a thumbnail row (Pillow loads here, in a worker thread)."""
    from gffs.images.thumbsource import served_png
    return served_png(stored, width, height, length)
