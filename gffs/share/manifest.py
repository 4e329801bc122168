"""The share manifest: what an importer needs to make a flow without reading one image.

A manifest is a UnixFS file of UTF-8 JSON (format ``gffs-share``, version 1), published
beside the flow's UnixFS directory; its CID is what a publisher hands out. Layout (see
docs/SHARING.md for every field)::

    {"format": "gffs-share", "version": 1, "flow": "landscapes", "root": "<dir CID>",
     "block_size": 1048576, "published_ns": 1700000000000000000,
     "files": [{"path": "a.jpg", "size": 123, "mode": 420, "mtime_ns": ..., "cid": "<file CID>",
                "blocks": [[0, "<sha256 hex>", 1048576], ...],
                "facts": {...}, "xattrs": {"user.xdg.tags": "sunset"},
                "thumbnails": {"normal": {"cid": ..., "sha256": ..., "width": 128, "height": 96,
                                          "length": 4321}}}]}

Block *i* of a file is the byte range ``[i * block_size, i * block_size + length)`` of the
file's UnixFS CID: the importer records it as a chunk located there (ipfs-share locator),
and a read verifies the SHA-256 as every read does. Absent blocks are holes (zeros).

A private share (``"private": true``) is the same document sealed under the share key
(gffs/share/private.py); each block entry then has two more fields, the CID and length
of the block's sealed object, and a thumbnail's ``cid``/``sealed_length`` name its
sealed object: the plaintext files are not published at all.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

FORMAT = "gffs-share"
VERSION = 1
_HEX64 = re.compile(r"[0-9a-f]{64}")
_CID = re.compile(r"[A-Za-z0-9]{10,200}")


class ManifestError(ValueError):
    """A manifest this version cannot use (one line, says what is wrong)."""


@dataclass
class Thumb:
    cid: str
    sha256: str
    width: int
    height: int
    length: int
    sealed_length: int = 0                     # private shares: the sealed object's length


@dataclass
class SharedFile:
    path: str                                  # relative to the flow, "/"-separated
    size: int
    mode: int
    mtime_ns: int
    cid: str
    blocks: list[tuple]                        # (index, sha256 hex, length[, object CID, length])
    facts: dict[str, str] = field(default_factory=dict)
    xattrs: dict[str, str] = field(default_factory=dict)
    thumbnails: dict[str, Thumb] = field(default_factory=dict)


@dataclass
class Manifest:
    flow: str
    root: str
    block_size: int
    published_ns: int
    files: list[SharedFile]
    manifest_cid: str = ""                     # where it was fetched from (not serialized)
    private: bool = False

    def to_json(self) -> bytes:
        files = [{"path": f.path, "size": f.size, "mode": f.mode, "mtime_ns": f.mtime_ns,
                  "cid": f.cid, "blocks": [list(b) for b in f.blocks], "facts": f.facts,
                  "xattrs": f.xattrs,
                  "thumbnails": {k: vars(t) for k, t in sorted(f.thumbnails.items())}}
                 for f in self.files]
        return json.dumps({"format": FORMAT, "version": VERSION, "flow": self.flow,
                           "root": self.root, "block_size": self.block_size,
                           "published_ns": self.published_ns, "files": files,
                           "private": self.private},
                          sort_keys=True, separators=(",", ":")).encode()


def parse(data: bytes) -> Manifest:
    """The manifest in *data*; ManifestError naming the first thing that is wrong."""
    try:
        obj = json.loads(data)
    except ValueError:
        raise ManifestError("the share manifest is not JSON") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ManifestError("not a gffs share manifest (format is not 'gffs-share')")
    if obj.get("version") != VERSION:
        raise ManifestError(f"share manifest version {obj.get('version')!r}: this gffs reads "
                            f"version {VERSION}")
    try:
        bs = _int(obj["block_size"], "block_size", 1)
        files = [_file(f, bs) for f in _list(obj["files"], "files")]
        private = obj.get("private", False) is True
        files = [f for f in files if _sealed_complete(f, private)]
        return Manifest(_str(obj["flow"], "flow"), _cid(obj["root"], "root"), bs,
                        _int(obj.get("published_ns", 0), "published_ns"), files,
                        private=private)
    except KeyError as exc:
        raise ManifestError(f"share manifest lacks {exc.args[0]!r}") from None


def _file(f: Any, bs: int) -> SharedFile:
    if not isinstance(f, dict):
        raise ManifestError("a files entry is not an object")
    path = _str(f["path"], "path")
    if path.startswith("/") or any(p in ("", ".", "..") for p in path.split("/")):
        raise ManifestError(f"unsafe path {path!r} in the share manifest")
    size = _int(f["size"], "size")
    blocks = []
    for b in _list(f["blocks"], "blocks"):
        if not (isinstance(b, list) and len(b) in (3, 5)):
            raise ManifestError(f"{path}: a block is not [index, sha256, length(, CID, length)]")
        idx, digest, length = _int(b[0], "block index"), b[1], _int(b[2], "block length", 1)
        if not (isinstance(digest, str) and _HEX64.fullmatch(digest)):
            raise ManifestError(f"{path}: block {idx} has no SHA-256")
        if length > bs or idx * bs + length > size:
            raise ManifestError(f"{path}: block {idx} lies beyond the file")
        sealed = (_cid(b[3], "sealed block CID"), _int(b[4], "sealed length", 1)) \
            if len(b) == 5 else ()
        blocks.append((idx, digest, length, *sealed))
    thumbs = {}
    for name, t in _dict(f.get("thumbnails", {}), "thumbnails").items():
        if not isinstance(t, dict) or not _HEX64.fullmatch(str(t.get("sha256", ""))):
            raise ManifestError(f"{path}: thumbnail {name!r} is malformed")
        thumbs[name] = Thumb(_cid(t.get("cid"), "thumbnail cid"), t["sha256"],
                             _int(t.get("width"), "width"), _int(t.get("height"), "height"),
                             _int(t.get("length"), "length", 1),
                             _int(t.get("sealed_length", 0), "sealed_length"))
    return SharedFile(path, size, _int(f.get("mode", 0o644), "mode") & 0o777,
                      _int(f.get("mtime_ns", 0), "mtime_ns"), _cid(f["cid"], "cid"), blocks,
                      _strings(f.get("facts", {}), "facts"), _strings(f.get("xattrs", {}), "xattrs"),
                      thumbs)


def _sealed_complete(f: SharedFile, private: bool) -> bool:
    """Every block and thumbnail of a private share names its sealed object; none of a
    public one does."""
    if any((len(b) == 5) != private for b in f.blocks) or \
            any((t.sealed_length > 0) != private for t in f.thumbnails.values()):
        raise ManifestError(f"{f.path}: sealed objects do not match the share's privacy")
    return True


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str) or not v:
        raise ManifestError(f"share manifest: {what} is not a string")
    return v


def _cid(v: Any, what: str) -> str:
    if not isinstance(v, str) or not _CID.fullmatch(v):
        raise ManifestError(f"share manifest: {what} is not a CID")
    return v


def _int(v: Any, what: str, minimum: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ManifestError(f"share manifest: {what} is not a number >= {minimum}")
    return v


def _list(v: Any, what: str) -> list:
    if not isinstance(v, list):
        raise ManifestError(f"share manifest: {what} is not a list")
    return v


def _dict(v: Any, what: str) -> dict:
    if not isinstance(v, dict):
        raise ManifestError(f"share manifest: {what} is not an object")
    return v


def _strings(v: Any, what: str) -> dict[str, str]:
    d = _dict(v, what)
    if not all(isinstance(k, str) and isinstance(x, str) for k, x in d.items()):
        raise ManifestError(f"share manifest: {what} holds values that are not strings")
    return d
