"""`gffs-admin flow publish FLOW`: the flow as a UnixFS directory plus a manifest, on IPFS.

The directory is built the way ``ipfs add -r`` builds it with Kubo's defaults (CIDv0,
256 KiB chunks, dag-pb leaves, balanced layout, plain directories): its CID is computed
here from the store's blocks before anything is uploaded, and the node's answer must
equal it (a node that imported other bytes or with other settings is caught). The
manifest (gffs/share/manifest.py) is added beside it; its CID is what importers need.
Thumbnails are added as their own files (PNG), so listing an imported flow's thumbnails
never needs an image block.
"""

from __future__ import annotations

import hashlib
import stat
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import trio

from gffs.index import ROOT_INO, ChunkMap, Namespace
from gffs.index.images import ImageIndex
from gffs.maintenance.jobs import JobRefused, job
from gffs.maintenance.progress import Progress
from gffs.share.gps import strip_gps
from gffs.share.manifest import Manifest, SharedFile, Thumb
from gffs.share.private import MANIFEST_NAME, new_share_key, seal_block, share_string
from gffs.share.source import share_source
from gffs_backends.base import BackendError
from gffs_backends.ipfs import (CHUNKER_SIZE, IpfsBackend, cid_text, unixfs_cid,
                                unixfs_dir_root, unixfs_file_root)

PUBLISHED_XATTRS = (b"user.xdg.", b"user.nft.")
GPS_FACTS = ("gps_lat", "gps_lon", "gps_alt")
_ADD_PARAMS = [("pin", "true"), ("cid-version", "0"), ("raw-leaves", "false"),
               ("chunker", f"size-{CHUNKER_SIZE}"), ("hash", "sha2-256"),
               ("wrap-with-directory", "false"), ("progress", "false"), ("quieter", "true")]


@dataclass
class _Dir:
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)   # name -> (CID, tsize)
    dirs: dict[str, "_Dir"] = field(default_factory=dict)

    def root(self) -> tuple[bytes, int]:
        entries = [(n, *c) for n, c in self.files.items()]
        entries += [(n, *d.root()) for n, d in self.dirs.items()]
        return unixfs_dir_root(entries, 0)


def _walk(store, flow_ino: int) -> list[tuple[str, int]]:
    """(relative path, ino) of every regular file under the flow, directories first."""
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


async def _file_bytes(store, ino: int, size: int) -> tuple[bytes, list[tuple[int, str, int]]]:
    cm, bs = ChunkMap(store.index), store.index.block_size
    with store.index.read() as txn:
        blocks = list(cm.blocks(txn, ino))
    data = bytearray(size)
    listed = []
    for idx, digest in blocks:
        if idx * bs >= size:
            continue
        block = bytes(await store.chunks.load(digest))[: size - idx * bs]
        data[idx * bs: idx * bs + len(block)] = block
        listed.append((idx, digest.hex(), len(block)))
    return bytes(data), listed


def _cleaned(path: str, data: bytes, block_size: int) -> tuple[bytes, list[tuple[int, str, int]]]:
    """The GPS-free copy of a file and its block list (all-zero blocks are holes)."""
    try:
        cleaned = strip_gps(data)
    except ValueError as exc:
        raise JobRefused(f"{path}: cannot strip its GPS position: {exc}") from None
    if cleaned is None:
        raise JobRefused(f"{path}: holds a GPS position that --strip-gps cannot remove (only "
                         "JPEG EXIF is cleaned); move it out of the flow or use --allow-gps")
    blocks = []
    for idx, start in enumerate(range(0, len(cleaned), block_size)):
        block = cleaned[start:start + block_size]
        if block.count(0) != len(block):
            blocks.append((idx, hashlib.sha256(block).hexdigest(), len(block)))
    return cleaned, blocks


def _add_one(ipfs: IpfsBackend, name: str, data: bytes) -> str:
    """``add`` one file (Kubo's defaults); its CID, checked against the one computed here."""
    expected = unixfs_cid(data, 0)
    got = _answered_root(ipfs._rpc("add", _ADD_PARAMS, upload=data, filename=quote(name, "")))
    if got != expected:
        raise BackendError(f"{ipfs.name}: the node added {name} as {got}, expected {expected}")
    return got


def _add_tree(ipfs: IpfsBackend, flow: str, files: dict[str, bytes], expected: str) -> str:
    """``add`` the flow as one directory (multipart: directories before their files)."""
    parts: list[tuple] = [("file", (quote(flow, ""), b"", "application/x-directory"))]
    seen_dirs: set[str] = set()
    for path, data in sorted(files.items()):
        segs = path.split("/")
        for i in range(1, len(segs)):
            d = "/".join(segs[:i])
            if d not in seen_dirs:
                seen_dirs.add(d)
                parts.append(("file", (quote(f"{flow}/{d}", ""), b"", "application/x-directory")))
        parts.append(("file", (quote(f"{flow}/{path}", ""), data, "application/octet-stream")))
    got = _answered_root(ipfs._rpc("add", _ADD_PARAMS, parts=parts))
    if got != expected:
        raise BackendError(f"{ipfs.name}: the node added flow {flow} as {got}, expected "
                           f"{expected}: it imports with other settings")
    return got


def _answered_root(resp) -> str:
    """The last CID of an ``add`` answer (the top directory comes last)."""
    import json
    cid = None
    for line in resp.content.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("Hash"), str):
            cid = obj["Hash"]
    if cid is None:
        raise BackendError("add answered no CID")
    return cid


def _sealed_objects(key, shared: list[SharedFile], contents: dict[str, bytes],
                    pngs: dict[str, bytes], block_size: int) -> dict[str, bytes]:
    """Private share: every block and thumbnail sealed under *key*; the entries of
    *shared* get their sealed objects' CIDs. Returns object name -> sealed bytes."""
    objects: dict[str, bytes] = {}

    def seal(sha: str, plain: bytes) -> tuple[str, int]:
        name, sealed = seal_block(key, sha, plain)
        objects[name] = sealed
        return cid_text(unixfs_file_root(sealed, 0)[0]), len(sealed)

    for f in shared:
        data = contents[f.path]
        f.blocks = [(i, sha, n, *seal(sha, data[i * block_size:i * block_size + n]))
                    for i, sha, n in f.blocks]
        for t in f.thumbnails.values():
            t.cid, t.sealed_length = seal(t.sha256, pngs[t.sha256])
    return objects


def _tree_of(files: dict[str, bytes]) -> _Dir:
    tree = _Dir()
    for path, data in files.items():
        node = tree
        for seg in path.split("/")[:-1]:
            node = node.dirs.setdefault(seg, _Dir())
        node.files[path.rsplit("/", 1)[-1]] = unixfs_file_root(data, 0)
    return tree


@job("flow-publish", writes=False)
async def publish(store, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Publish flow ``args["flow"]``; ``allow_gps`` publishes files that hold GPS positions,
    ``strip_gps`` cleaned copies of them,
    ``private`` seals everything under a new share key (the result's ``share``)."""
    flow = args["flow"]
    ipfs = share_source(store, args.get("via"))
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
    progress.begin("reading the flow", total_items=len(entries))
    contents: dict[str, bytes] = {}
    pngs: dict[str, bytes] = {}
    shared: list[SharedFile] = []
    for path, ino in entries:
        with store.index.read() as txn:
            rec = ns.get(txn, ino)
            facts = images.facts_of(txn, ino) or {}
            content_id = images.content_id(txn, ino)
            thumbs = images.thumbnails(txn, content_id) if content_id else {}
            xattrs = {n.decode(): bytes(ns.get_xattr(txn, ino, n) or b"").decode("utf-8", "replace")
                      for n in ns.xattr_names(txn, ino) if n.startswith(PUBLISHED_XATTRS)}
        data, blocks = await _file_bytes(store, ino, rec.size)
        if args.get("strip_gps") and path in gps:
            data, blocks = _cleaned(path, data, store.index.block_size)
            facts = {k: v for k, v in facts.items() if k not in GPS_FACTS}
        contents[path] = data
        shared_thumbs = {}
        for size_name, row in thumbs.items():
            png = bytes(await store.chunks.load(row.digest))
            sha = hashlib.sha256(png).hexdigest()
            pngs[sha] = png
            shared_thumbs[size_name] = Thumb("", sha, row.width, row.height, len(png))
        shared.append(SharedFile(path, rec.size, rec.mode & 0o777, rec.mtime_ns, "",
                                 blocks, facts, xattrs, shared_thumbs))
        progress.advance(1, rec.size)
    progress.begin("adding to IPFS")
    key = new_share_key() if args.get("private") else None
    tree = await trio.to_thread.run_sync(_tree_of, contents)
    for f in shared:
        node = tree
        for seg in f.path.split("/")[:-1]:
            node = node.dirs[seg]
        f.cid = cid_text(node.files[f.path.rsplit("/", 1)[-1]][0])
    if key is None:
        thumb_cids = {sha: await ipfs._run(_add_one, ipfs, f"{sha[:16]}.png", png)
                      for sha, png in pngs.items()}
        for f in shared:
            for t in f.thumbnails.values():
                t.cid = thumb_cids[t.sha256]
        published = contents
    else:
        published = await trio.to_thread.run_sync(_sealed_objects, key, shared, contents, pngs,
                                                  store.index.block_size)
        tree = _tree_of(published)
    expected = cid_text(tree.root()[0])
    root = await ipfs._run(_add_tree, ipfs, flow, published, expected)
    manifest = Manifest(flow, root, store.index.block_size, time.time_ns(), shared,
                        private=key is not None)
    body = manifest.to_json()
    if key is not None:
        body = key.seal_meta(MANIFEST_NAME, body)
    manifest_cid = await ipfs._run(_add_one, ipfs, "gffs-share.json", body)
    result = {"flow": flow, "root": root, "manifest": manifest_cid, "files": len(shared),
              "bytes": sum(f.size for f in shared), "gps_files": len(gps),
              "private": key is not None}
    if key is not None:
        result["share"] = share_string(manifest_cid, key)
    if args.get("ipns"):
        from gffs.share.follow import publish_name
        result["ipns"] = await ipfs._run(publish_name, ipfs, flow, manifest_cid)
    return result
