"""Secondary index of the ``.views`` directories: files by capture date, camera, place, tag
and NFT collection, kept in the transactions that change those facts.

Tables (all keys sort so that one directory of a view is one key range):

- ``viewrows``: view path + u64 inode -> the entry's name. A view path is the
  view's name and its directory components, each followed by NUL
  (``by-date\\0 2024\\0 05\\0 01\\0``), so the children of a view directory are
  found by skipping from one component to the next (one seek per child) and a
  leaf's files are one range, in inode order.
- ``inoviews``: u64 inode + view path -> empty: which rows an inode has, so a
  change replaces exactly them.
- ``cidinodes``: content id + u64 inode -> empty: the inodes holding a content,
  so facts stored for a content reach every file with it (hard links share the
  inode, copies share the content).

Facts (date, camera, place) belong to the content and arrive after the
analysis; tags (``user.xdg.tags``) and the NFT collection (``user.nft.chain``
+ ``user.nft.contract``) belong to the inode. Every hook recomputes the
inode's rows from what the index holds in that transaction, so the order in
which facts and attributes arrive does not matter.
"""

from __future__ import annotations

import math
from typing import Iterator

import lmdb

from gffs.index.env import Index
from gffs.index.images import ImageIndex
from gffs.index.records import from_u64, u64

VIEWS: dict[str, int] = {"by-date": 3, "by-camera": 1, "by-place": 1, "by-tag": 1,
                         "by-collection": 1}
"""View name -> depth of its directories above the files."""

TAGS = b"user.xdg.tags"
NFT_CHAIN, NFT_CONTRACT = b"user.nft.chain", b"user.nft.contract"
VIEW_XATTRS = frozenset({TAGS, NFT_CHAIN, NFT_CONTRACT})   # a change refreshes the inode's rows
PLACE_CELL = 0.1                  # degrees: about 11 km north-south
BUILT_MARKER = b"views_built"     # meta: the tables cover every inode
_EXTENSIONS = {"jpeg": ".jpg", "png": ".png", "gif": ".gif", "tiff": ".tif", "webp": ".webp",
               "heic": ".heic", "avif": ".avif"}
_MAX_COMPONENT = 200              # bytes of one directory name (NAME_MAX is 255)

Path = tuple[bytes, ...]


def component(text: str) -> bytes | None:
    """A directory name made from *text*: no NUL, slash or control characters, not . or ..,
    at most 200 bytes; None when nothing is left."""
    cleaned = "".join(" " if (c < " " or c in "/\x7f") else c for c in text).strip()
    raw = cleaned.encode()[:_MAX_COMPONENT].decode(errors="ignore").encode()
    return raw if raw and raw not in (b".", b"..") else None


def place_cell(lat: float, lon: float) -> str:
    """The name of the 0.1 degree cell holding a position: its south-west corner."""
    south = math.floor(lat / PLACE_CELL + 1e-9) * PLACE_CELL
    west = math.floor(lon / PLACE_CELL + 1e-9) * PLACE_CELL
    return (f"{abs(south):.1f}{'N' if south >= 0 else 'S'} "
            f"{abs(west):.1f}{'E' if west >= 0 else 'W'}")


def camera(make: str, model: str) -> str:
    """``Canon EOS 80D``: the model alone when it already names the maker."""
    make, model = make.strip(), model.strip()
    if make and model and model.lower().startswith(make.split()[0].lower()):
        return model
    return f"{make} {model}".strip()


def fact_paths(facts: dict[str, str] | None) -> list[Path]:
    """The view directories an image with *facts* appears in."""
    if not facts or "error" in facts:
        return []
    out: list[Path] = []
    when = facts.get("capture_time", "")
    if len(when) >= 10 and when[4] == "-" and when[7] == "-":
        out.append((b"by-date", when[:4].encode(), when[5:7].encode(), when[8:10].encode()))
    cam = component(camera(facts.get("camera_make", ""), facts.get("camera_model", "")))
    if cam:
        out.append((b"by-camera", cam))
    try:
        out.append((b"by-place", place_cell(float(facts["gps_lat"]), float(facts["gps_lon"]))
                    .encode()))
    except (KeyError, ValueError):
        pass
    return out


def xattr_paths(tags: bytes | None, chain: bytes | None, contract: bytes | None) -> list[Path]:
    """The view directories a file with these attributes appears in."""
    out: list[Path] = []
    for tag in (tags or b"").decode(errors="replace").split(","):
        name = component(tag)
        if name:
            out.append((b"by-tag", name))
    if chain and contract:
        name = component(f"{chain.decode(errors='replace')}:{contract.decode(errors='replace')}")
        if name:
            out.append((b"by-collection", name))
    return out


def entry_name(ino: int, facts: dict[str, str] | None) -> bytes:
    """``2024-05-01 08.30.15 #1234.jpg``: capture time (so names sort by it), the inode
    number (unique, and what a lookup resolves) and the format's extension."""
    facts = facts or {}
    when = facts.get("capture_time", "")[:19]
    stamp = (when.replace("T", " ").replace(":", ".") + " ") if len(when) == 19 else ""
    return f"{stamp}#{ino}{_EXTENSIONS.get(facts.get('format', ''), '')}".encode()


def ino_of_name(name: bytes) -> int | None:
    """The inode number an entry name carries (None if it has none)."""
    head, sep, tail = name.rpartition(b"#")
    digits = tail.split(b".", 1)[0]
    return int(digits) if sep and digits.isdigit() and len(digits) < 20 else None


def _key(path: Path) -> bytes:
    return b"".join(c + b"\0" for c in path)


class ViewIndex:
    def __init__(self, index: Index) -> None:
        self.index = index
        self.enabled = all(n in index.db for n in ("viewrows", "inoviews", "cidinodes"))
        if self.enabled:
            self._rows = index.db["viewrows"]
            self._of_ino = index.db["inoviews"]
            self._cid_inos = index.db["cidinodes"]
        self._images = ImageIndex(index)
        self._cids = index.db["contentids"]
        self._xattrs = index.db["xattrs"]

    # maintenance hooks (inside the caller's write transaction) --------------------------
    def content_set(self, txn: lmdb.Transaction, ino: int, old: bytes | None,
                    new: bytes | None) -> None:
        """An inode's content id changed (a closing flush) or went (*new* None)."""
        if not self.enabled:
            return
        if old is not None:
            txn.delete(old + u64(ino), db=self._cid_inos)
        if new is not None:
            txn.put(new + u64(ino), b"", db=self._cid_inos)
        self.refresh(txn, ino, gone=new is None)

    def facts_stored(self, txn: lmdb.Transaction, cid: bytes) -> None:
        """Facts of a content arrived: every file holding it gets its rows."""
        if not self.enabled:
            return
        for ino in self._inodes_of(txn, cid):
            self.refresh(txn, ino)

    def refresh(self, txn: lmdb.Transaction, ino: int, gone: bool = False) -> None:
        """Replace the inode's rows with what its facts and attributes say now."""
        if not self.enabled:
            return
        prefix = u64(ino)
        for path_key in list(self._path_keys(txn, ino)):
            txn.delete(prefix + path_key, db=self._of_ino)
            txn.delete(path_key + prefix, db=self._rows)
        if gone:
            return
        for path_key, name in self.expected_rows(txn, ino).items():
            txn.put(path_key + prefix, name, db=self._rows)
            txn.put(prefix + path_key, b"", db=self._of_ino)

    def expected_rows(self, txn: lmdb.Transaction, ino: int) -> dict[bytes, bytes]:
        """View path key -> entry name: the rows *ino* should have, from its content's
        facts and its attributes as the index holds them (refresh writes them; fsck
        compares them)."""
        cid = txn.get(u64(ino), db=self._cids)
        facts = self._images.facts(txn, bytes(cid)) if cid is not None else None
        paths = fact_paths(facts) + xattr_paths(*(self._xattr(txn, ino, n)
                                                  for n in (TAGS, NFT_CHAIN, NFT_CONTRACT)))
        name = entry_name(ino, facts)
        return {_key(path): name for path in dict.fromkeys(paths)}

    def rows_of(self, txn: lmdb.Transaction, ino: int) -> dict[bytes, bytes | None]:
        """View path key -> entry name of the rows *ino* has (None: its ``inoviews`` row
        has no ``viewrows`` row)."""
        out: dict[bytes, bytes | None] = {}
        for path_key in self._path_keys(txn, ino):
            raw = txn.get(path_key + u64(ino), db=self._rows)
            out[path_key] = bytes(raw) if raw is not None else None
        return out

    def _path_keys(self, txn: lmdb.Transaction, ino: int) -> Iterator[bytes]:
        """The view path keys of *ino*'s rows, from ``inoviews``."""
        prefix = u64(ino)
        cur = txn.cursor(db=self._of_ino)
        if cur.set_range(prefix):
            for key, _ in cur:
                if key[:8] != prefix:
                    break
                yield bytes(key[8:])

    def rebuild(self, txn: lmdb.Transaction) -> int:
        """Build every row from the index (a store made before views, once); returns inodes."""
        if not self.enabled:
            return 0
        for db in (self._rows, self._of_ino, self._cid_inos):   # (journalled: key by key)
            for key in [bytes(k) for k, _ in txn.cursor(db=db)]:
                txn.delete(key, db=db)
        inos = set()
        for key, cid in txn.cursor(db=self._cids):
            txn.put(bytes(cid) + bytes(key), b"", db=self._cid_inos)
            inos.add(from_u64(key))
        for key, _ in txn.cursor(db=self._xattrs):
            if bytes(key[8:]) in VIEW_XATTRS:
                inos.add(from_u64(key[:8]))
        for ino in sorted(inos):
            self.refresh(txn, ino)
        self.index.set_meta_json(txn, BUILT_MARKER, True)
        return len(inos)

    def built(self, txn: lmdb.Transaction) -> bool:
        return self.index.meta_json(txn, BUILT_MARKER) is not None

    # reading -------------------------------------------------------------------------
    def children(self, txn: lmdb.Transaction, path: Path, start: bytes = b"") -> Iterator[bytes]:
        """Distinct next components below a view directory that is not a leaf, sorted,
        from *start* on."""
        if not self.enabled:
            return
        prefix = _key(path)
        cur = txn.cursor(db=self._rows)
        seek = prefix + start
        while cur.set_range(seek):
            key = bytes(cur.key())
            if not key.startswith(prefix):
                return
            comp = key[len(prefix):key.index(b"\0", len(prefix))]
            yield comp
            seek = prefix + comp + b"\x01"   # past every key of this child

    def files(self, txn: lmdb.Transaction, path: Path,
              after_ino: int = 0) -> Iterator[tuple[int, bytes]]:
        """(inode, entry name) of a leaf view directory, in inode order, after *after_ino*."""
        if not self.enabled:
            return
        prefix = _key(path)
        cur = txn.cursor(db=self._rows)
        if not cur.set_range(prefix + u64(after_ino + 1)):
            return
        for key, value in cur:
            if not key.startswith(prefix) or len(key) != len(prefix) + 8:
                return
            yield from_u64(key[len(prefix):]), bytes(value)

    def file(self, txn: lmdb.Transaction, path: Path, ino: int) -> bytes | None:
        """The entry name of *ino* in a leaf view directory, None if it is not there."""
        if not self.enabled:
            return None
        raw = txn.get(_key(path) + u64(ino), db=self._rows)
        return bytes(raw) if raw is not None else None

    # helpers -------------------------------------------------------------------------
    def _inodes_of(self, txn: lmdb.Transaction, cid: bytes) -> list[int]:
        cur = txn.cursor(db=self._cid_inos)
        out = []
        if cur.set_range(cid):
            for key, _ in cur:
                if key[:32] != cid:
                    break
                out.append(from_u64(key[32:]))
        return out

    def _xattr(self, txn: lmdb.Transaction, ino: int, name: bytes) -> bytes | None:
        raw = txn.get(u64(ino) + name, db=self._xattrs)
        return bytes(raw) if raw is not None else None
