"""``.sh_thumbnails``: the freedesktop *shared thumbnail repository*, virtual, in every directory.

Inside each directory of a flow, ``.sh_thumbnails/{normal,large,x-large}/<md5>.png``
is the thumbnail of the file whose name has that MD5, exactly where the
freedesktop thumbnail spec tells file managers to look for thumbnails shipped
next to the originals (read-only media, network shares). Nothing is stored per
directory: a thumbnail file is made on open from the thumbnail chunk of the
file's content (one per content id, see gffs.index.images) with the file's
``Thumb::URI`` (its name) and ``Thumb::MTime`` inserted, so the same photo in
two flows, under two names, is one stored thumbnail and two correct PNGs.

The directory is never listed by ``readdir`` of its parent (``cp -r``,
``rsync``, ``du`` and ``find`` do not see it; file managers look it up by
name), answers only lookups, and refuses every change with EACCES. Nodes get
inode numbers from :data:`VIRTUAL_BASE` up, kept while the kernel holds them.
Only index reads and one chunk load and rendering (on open) happen here: a thumbnail that
does not exist yet is ENOENT, never computed on the request path.
"""

from __future__ import annotations

import errno
import hashlib
import re
import stat
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterator
from urllib.parse import quote

from gffs.chunks.store import ChunkStore
from gffs.errors import FsError
from gffs.fs.thumbpngs import ThumbnailPngs
from gffs.images.thumbnails import SIZE_NAMES, file_text_length, with_file_text
from gffs.images.usercache import URI_SAFE
from gffs.index import ROOT_INO, Index, Namespace
from gffs.index.errors import NotFound
from gffs.index.images import ImageIndex, ThumbnailRow
from gffs.index.records import InodeRecord

DIRNAME = b".sh_thumbnails"
VIRTUAL_BASE = 1 << 62            # real inode numbers are allocated from 2 upwards
VIEWS_BASE = 1 << 61              # .views directories (gffs/fs/views.py): up to VIRTUAL_BASE
XATTR_PREFIX = b"user.gf.thumbnail."
MAX_CACHED_DIRS = 64              # name maps kept (each costs ~100 bytes per entry)
_THUMB_NAME = re.compile(rb"[0-9a-f]{32}\.png")

REPO, SIZE_DIR, THUMB = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Node:
    kind: int
    dir_ino: int          # the real directory whose repository this is
    size: str = ""        # SIZE_DIR, THUMB: "normal", "large" or "x-large"
    name: bytes = b""     # THUMB: "<md5>.png"


@dataclass(slots=True)
class _Target:
    """What a thumbnail file shows: the original's inode, attributes, row and Thumb::URI."""

    ino: int
    rec: InodeRecord
    row: ThumbnailRow
    uri: bytes

    @property
    def mtime_s(self) -> int:
        return self.rec.mtime_ns // 1_000_000_000

    @property
    def length(self) -> int:
        return self.row.length + file_text_length(self.uri, self.mtime_s)


@dataclass(slots=True)
class _NameMap:
    """One directory's names by the MD5s file managers ask for (built once, then kept current)."""

    ctime_ns: int
    by_md5: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)  # md5 -> (name, URI)
    by_name: dict[bytes, int] = field(default_factory=dict)               # name -> ino
    by_ino: dict[int, bytes] = field(default_factory=dict)                 # ino -> a name
    pending: set[bytes] = field(default_factory=set)                       # names changed since

    def add(self, name: bytes, ino: int) -> None:
        self.by_name[name] = ino
        self.by_ino.setdefault(ino, name)
        for uri in uri_forms(name):
            self.by_md5[hashlib.md5(uri).hexdigest()] = (name, uri)

    def remove(self, name: bytes) -> None:
        ino = self.by_name.pop(name, None)
        if ino is not None:
            if self.by_ino.get(ino) == name:
                del self.by_ino[ino]
            for uri in uri_forms(name):
                self.by_md5.pop(hashlib.md5(uri).hexdigest(), None)


def uri_forms(name: bytes) -> list[bytes]:
    """The spellings of a name whose MD5 names its thumbnail: the URI-escaped form the
    spec means ("the filename part of the URI") and the raw name many tools hash."""
    escaped = quote(name, safe=URI_SAFE).encode()
    return [escaped] if escaped == name else [escaped, name]


def thumbnail_name(name: bytes) -> bytes:
    """The file name of *name*'s thumbnail inside ``.sh_thumbnails/<size>/``."""
    return hashlib.md5(uri_forms(name)[0]).hexdigest().encode() + b".png"


def is_virtual(ino: int) -> bool:
    """A node of .sh_thumbnails or .views (no index row: FsCore._virtual says whose)."""
    return ino >= VIEWS_BASE


def refuse() -> None:
    raise FsError(errno.EACCES, ".sh_thumbnails is read-only (thumbnails are made by gffs)")


class SharedThumbnails:
    def __init__(self, index: Index, chunks: ChunkStore) -> None:
        self.index = index
        self.ns = Namespace(index)
        self.images = ImageIndex(index)
        self.chunks = chunks
        self.pngs = ThumbnailPngs(chunks)   # rendered from the stored sources, shared
        self._nodes: dict[int, Node] = {}
        self._inos: dict[Node, int] = {}
        self._next = VIRTUAL_BASE
        self._maps: OrderedDict[int, _NameMap] = OrderedDict()

    # inode numbers ------------------------------------------------------------------
    def _ino(self, node: Node) -> int:
        ino = self._inos.get(node)
        if ino is None:
            ino = self._inos[node] = self._next
            self._nodes[ino] = node
            self._next += 1
        return ino

    def node(self, ino: int) -> Node:
        node = self._nodes.get(ino)
        if node is None:
            raise FsError(errno.ENOENT, "virtual node no longer known")
        return node

    def forget(self, ino: int) -> None:
        """The kernel dropped its last reference: the number may be reused for nothing else."""
        node = self._nodes.pop(ino, None)
        if node is not None:
            self._inos.pop(node, None)

    # names of a real directory --------------------------------------------------------
    def changed(self, dir_ino: int, name: bytes) -> None:
        """An entry of *dir_ino* was added, removed or replaced (called by every namespace change)."""
        m = self._maps.get(dir_ino)
        if m is not None:
            m.pending.add(name)

    def _name_map(self, txn, dir_ino: int, dir_rec: InodeRecord) -> _NameMap:
        m = self._maps.get(dir_ino)
        if m is not None and (m.pending or m.ctime_ns == dir_rec.ctime_ns):
            for name in m.pending:   # all removals first: a rename within the directory
                m.remove(name)       # must not drop the new name's reverse entry
            for name in m.pending:
                ino = self.ns.lookup(txn, dir_ino, name)
                if ino is not None:
                    m.add(name, ino)
            m.pending.clear()
            m.ctime_ns = dir_rec.ctime_ns
            self._maps.move_to_end(dir_ino)
            return m
        m = _NameMap(dir_rec.ctime_ns)  # new, or changed behind our back: rebuild
        for _cookie, name, ino in self.ns.entries(txn, dir_ino):
            m.add(name, ino)
        self._maps[dir_ino] = m
        while len(self._maps) > MAX_CACHED_DIRS:
            self._maps.popitem(last=False)
        return m

    # resolving ----------------------------------------------------------------------
    def _real_dir(self, txn, dir_ino: int) -> InodeRecord:
        rec = self.ns.get(txn, dir_ino)
        if not stat.S_ISDIR(rec.mode) or rec.nlink == 0:
            raise FsError(errno.ENOENT, "directory was removed")
        return rec

    def _row(self, txn, ino: int, size: str) -> tuple[InodeRecord, ThumbnailRow] | None:
        rec = self.ns.get(txn, ino)
        if not stat.S_ISREG(rec.mode):
            return None
        cid = self.images.content_id(txn, ino)
        row = self.images.thumbnail(txn, cid, size) if cid is not None else None
        return (rec, row) if row is not None else None

    def _target(self, txn, node: Node) -> _Target:
        """The file a thumbnail node shows now (names can change under a kept inode)."""
        dir_rec = self._real_dir(txn, node.dir_ino)
        found = self._name_map(txn, node.dir_ino, dir_rec).by_md5.get(node.name[:32].decode())
        if found is not None:
            name, uri = found
            ino = self.ns.lookup(txn, node.dir_ino, name)
            got = self._row(txn, ino, node.size) if ino is not None else None
            if got is not None:
                return _Target(ino, got[0], got[1], uri)
        raise FsError(errno.ENOENT, "no thumbnail (not an image, or not analysed yet)")

    def has_repository(self, txn, dir_ino: int) -> bool:
        """Directories inside flows have one; the top level holds only flows."""
        return dir_ino != ROOT_INO and stat.S_ISDIR(self.ns.get(txn, dir_ino).mode)

    # FUSE-facing operations ---------------------------------------------------------
    def lookup(self, parent: int, name: bytes) -> tuple[int, InodeRecord]:
        """Lookup of *name* in a virtual directory, or of ``.sh_thumbnails`` in a real one."""
        with self.index.read() as txn:
            if not is_virtual(parent):
                node = Node(REPO, parent)
            else:
                pnode = self.node(parent)
                if name == b".":
                    node = pnode
                elif name == b"..":
                    if pnode.kind == REPO:
                        return pnode.dir_ino, self.ns.get(txn, pnode.dir_ino)
                    node = Node(REPO, pnode.dir_ino)
                elif pnode.kind == REPO and name.decode(errors="replace") in SIZE_NAMES:
                    node = Node(SIZE_DIR, pnode.dir_ino, name.decode())
                elif pnode.kind == SIZE_DIR and _THUMB_NAME.fullmatch(name):
                    node = Node(THUMB, pnode.dir_ino, pnode.size, name)
                else:
                    raise FsError(errno.ENOENT)
            rec = self._attr(txn, node)
        return self._ino(node), rec

    def attr(self, ino: int) -> InodeRecord:
        with self.index.read() as txn:
            return self._attr(txn, self.node(ino))

    def _attr(self, txn, node: Node) -> InodeRecord:
        dir_rec = self._real_dir(txn, node.dir_ino)
        if node.kind != THUMB:
            # readable and searchable by whoever may read the directory itself, never writable
            mode = stat.S_IFDIR | (dir_rec.mode & 0o555)
            return InodeRecord(mode, dir_rec.uid, dir_rec.gid, 2 + 3 * (node.kind == REPO), 0,
                               dir_rec.atime_ns, dir_rec.mtime_ns, dir_rec.ctime_ns, 0,
                               node.dir_ino)
        t = self._target(txn, node)
        # a thumbnail shows the picture: readable by exactly who may read the original
        return InodeRecord(stat.S_IFREG | (t.rec.mode & 0o444), t.rec.uid, t.rec.gid, 1, t.length,
                           t.rec.atime_ns, t.rec.mtime_ns, t.rec.ctime_ns, 0, node.dir_ino)

    def readdir(self, ino: int, after: int) -> Iterator[tuple[bytes, int, InodeRecord, int]]:
        """Entries after cookie *after*: the size directories, or the thumbnails that exist.

        A generator, like the real readdir: the kernel takes a few dozen entries
        per call, so a directory of 10,000 images is not resolved for each call.
        """
        node = self.node(ino)
        if node.kind == THUMB:
            raise FsError(errno.ENOTDIR)
        with self.index.read() as txn:
            self._real_dir(txn, node.dir_ino)
            for child, name, cookie in self._children(txn, node, after):
                try:
                    attr = self._attr(txn, child)
                except (FsError, NotFound):  # two names with the same MD5, or gone meanwhile
                    continue
                yield name, self._ino(child), attr, cookie

    def _children(self, txn, node: Node, after: int) -> Iterator[tuple[Node, bytes, int]]:
        if node.kind == REPO:
            for i, size in enumerate(SIZE_NAMES, 1):
                if i > after:
                    yield Node(SIZE_DIR, node.dir_ino, size), size.encode(), i
            return
        # cookie = 2 * the entry's own cookie + which spelling of its name (stable offsets)
        first, skip = after >> 1, after & 1
        for cookie, name, child in self.ns.entries(txn, node.dir_ino, max(first - 1, 0)):
            if self._row(txn, child, node.size) is None:
                continue
            for form, uri in enumerate(uri_forms(name)):
                if after and cookie == first and form <= skip:
                    continue
                thumb = hashlib.md5(uri).hexdigest().encode() + b".png"
                yield Node(THUMB, node.dir_ino, node.size, thumb), thumb, 2 * cookie + form

    def opendir(self, ino: int) -> None:
        if self.node(ino).kind == THUMB:
            raise FsError(errno.ENOTDIR)

    async def open(self, ino: int, writing: bool) -> bytes:
        """The bytes of a thumbnail file: its stored PNG with the file's text chunks."""
        node = self.node(ino)
        if node.kind != THUMB:
            raise FsError(errno.EISDIR)
        if writing:
            refuse()
        with self.index.read() as txn:
            t = self._target(txn, node)
        try:
            return with_file_text(await self.pngs.png(t.row), t.uri, t.mtime_s)
        except ValueError as exc:
            raise FsError(errno.EIO, f"thumbnail chunk {t.row.digest.hex()[:16]}: {exc}") from None

    # xattrs of real files: where their thumbnails are ----------------------------------
    def xattr_names(self, txn, cid: bytes | None) -> list[bytes]:
        """Thumbnail attribute names of a content (inside the caller's listxattr transaction)."""
        rows = self.images.thumbnails(txn, cid) if cid is not None else {}
        return [XATTR_PREFIX + size.encode() for size in SIZE_NAMES if size in rows]

    def xattr(self, ino: int, name: bytes) -> bytes:
        """``.sh_thumbnails/<size>/<md5>.png``, relative to the file's directory.

        The name is the file's name in the directory it was created in (or last
        moved into); a hard link under another name has its own MD5.
        """
        size = name[len(XATTR_PREFIX):].decode(errors="replace")
        with self.index.read() as txn:
            rec = self.ns.get(txn, ino)
            if size not in SIZE_NAMES or self._row(txn, ino, size) is None:
                raise FsError(errno.ENODATA)
            own = None
            if rec.parent and self.ns.exists(txn, rec.parent):
                prec = self.ns.get(txn, rec.parent)
                if stat.S_ISDIR(prec.mode):
                    own = self._name_map(txn, rec.parent, prec).by_ino.get(ino)
        if own is None:
            raise FsError(errno.ENODATA)
        return DIRNAME + b"/" + size.encode() + b"/" + thumbnail_name(own)
