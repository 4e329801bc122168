"""``/.views``: read-only virtual directories listing the same files by what is known of them.

::

    .views/by-date/2024/05/01/2024-05-01 08.30.15 #1234.jpg
    .views/by-camera/Canon EOS 80D/…
    .views/by-place/48.1N 11.5E/…          0.1 degree cells, no reverse geocoding
    .views/by-tag/alps/…                   each tag of user.xdg.tags
    .views/by-collection/ethereum:0xab…/…  user.nft.chain:user.nft.contract

The files are the real ones (lookup answers the file's own inode, so reading,
``stat`` and hard links from a view to a flow behave as for the file itself);
the directories are virtual nodes from :data:`VIEWS_BASE` up, kept while the
kernel holds them, like ``.sh_thumbnails``. Listings come from the secondary
index gffs/index/views.py: one key range per directory, one seek per child of
an upper directory, so they do not grow with the size of the store. Entry
names carry the inode number, so a lookup is one key read. ``.views`` is not
listed by ``readdir`` of the mount's root (``cp -r``, ``du``, ``find`` of the
mount never walk it: every file would be counted twice); looked up by name it
is always there. Every change inside is EACCES (for root too), as for
``.sh_thumbnails``.
"""

from __future__ import annotations

import errno
import stat
from typing import Iterator

from gffs.errors import FsError
from gffs.fs.sharedthumbs import VIEWS_BASE
from gffs.index import ROOT_INO, Index, Namespace
from gffs.index.records import InodeRecord
from gffs.index.views import VIEWS, ViewIndex, ino_of_name

DIRNAME = b".views"
_VIEW_NAMES = [name.encode() for name in VIEWS]

Path = tuple[bytes, ...]


def refuse() -> None:
    raise FsError(errno.EACCES, ".views is read-only (its directories are computed by gffs)")


class Views:
    def __init__(self, index: Index, views: ViewIndex) -> None:
        self.index = index
        self.ns = Namespace(index)
        self.views = views
        self._paths: dict[int, Path] = {}
        self._inos: dict[Path, int] = {}
        self._next = VIEWS_BASE

    # inode numbers ------------------------------------------------------------------
    def _ino(self, path: Path) -> int:
        ino = self._inos.get(path)
        if ino is None:
            ino = self._inos[path] = self._next
            self._paths[ino] = path
            self._next += 1
        return ino

    def node(self, ino: int) -> Path:
        path = self._paths.get(ino)
        if path is None:
            raise FsError(errno.ENOENT, "view directory no longer known")
        return path

    def forget(self, ino: int) -> None:
        path = self._paths.pop(ino, None)
        if path is not None:
            self._inos.pop(path, None)

    @staticmethod
    def _is_leaf(path: Path) -> bool:
        return bool(path) and len(path) - 1 == VIEWS[path[0].decode()]

    def _linked(self, txn, ino: int) -> InodeRecord | None:
        """The file's record, None once it is unlinked (kept open, or rows of a purged inode)."""
        if not self.ns.exists(txn, ino):
            return None
        rec = self.ns.get(txn, ino)
        return rec if rec.nlink > 0 else None

    def _exists(self, txn, path: Path) -> bool:
        if len(path) <= 1:
            return not path or path[0] in _VIEW_NAMES
        return next(iter(self.views.children(txn, path[:-1], start=path[-1])), None) == path[-1]

    # FUSE-facing operations ---------------------------------------------------------
    def lookup(self, parent: int, name: bytes) -> tuple[int, InodeRecord]:
        """*name* in a view directory (a file answers its own inode), or ``.views`` in the root."""
        with self.index.read() as txn:
            if parent == ROOT_INO:
                path: Path = ()
            else:
                here = self.node(parent)
                if name == b".":
                    path = here
                elif name == b"..":
                    if not here:
                        return ROOT_INO, self.ns.get(txn, ROOT_INO)
                    path = here[:-1]
                elif self._is_leaf(here):
                    ino = ino_of_name(name)
                    rec = self._linked(txn, ino) if ino is not None else None
                    if rec is None or self.views.file(txn, here, ino) != name:
                        raise FsError(errno.ENOENT)
                    return ino, rec
                else:
                    path = here + (name,)
                    if not self._exists(txn, path):
                        raise FsError(errno.ENOENT)
            return self._ino(path), self._attr(txn)

    def attr(self, ino: int) -> InodeRecord:
        self.node(ino)
        with self.index.read() as txn:
            return self._attr(txn)

    def _attr(self, txn) -> InodeRecord:
        """Every view directory: r-x for everyone the root lets in, owned like the root."""
        root = self.ns.get(txn, ROOT_INO)
        return InodeRecord(stat.S_IFDIR | (root.mode & 0o555), root.uid, root.gid, 2, 0,
                           root.atime_ns, root.mtime_ns, root.ctime_ns, 0, ROOT_INO)

    def opendir(self, ino: int) -> None:
        self.node(ino)

    async def open(self, ino: int, writing: bool) -> bytes:
        self.node(ino)
        raise FsError(errno.EISDIR)

    def readdir(self, ino: int, after: int) -> Iterator[tuple[bytes, int, InodeRecord, int]]:
        """Entries after cookie *after*: subdirectories (cookie = position + 1), or the
        files of a leaf (cookie = their inode number, so changes never shift a listing)."""
        path = self.node(ino)
        with self.index.read() as txn:
            if self._is_leaf(path):
                for file_ino, name in self.views.files(txn, path, after):
                    rec = self._linked(txn, file_ino)
                    if rec is not None:
                        yield name, file_ino, rec, file_ino
                return
            attr = self._attr(txn)
            names = _VIEW_NAMES if not path else self.views.children(txn, path)
            for cookie, name in enumerate(names, 1):
                if cookie > after:
                    yield name, self._ino(path + (name,)), attr, cookie
