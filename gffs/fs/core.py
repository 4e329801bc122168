"""What every room of the filesystem shares: its state, inode lifetime (lookups,
purges of unlinked inodes) and the small helpers the rooms use.

The rooms (namespace_ops, datapath, xattrs) are classes over FsCore that call each
other through self; gffs/fs/filesystem.py combines them behind the Filesystem facade.
"""

from __future__ import annotations

import errno
import os
import logging
import stat
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable

import trio

from gffs.chunks.service import StoreLoops
from gffs.chunks.store import ChunkStore
from gffs.errors import FsError
from gffs.fs import sharedthumbs
from gffs.fs.imagexattrs import ImageXattrs
from gffs.fs.openfiles import FileBuffer
from gffs.fs import views as views_dir
from gffs.fs.sharedthumbs import DIRNAME as THUMB_DIR
from gffs.fs.sharedthumbs import VIRTUAL_BASE, SharedThumbnails, is_virtual
from gffs.fs.views import Views
from gffs.images.facts import ImageFacts
from gffs.index import ChunkMap, Index, Namespace, ROOT_INO
from gffs.index.errors import IndexFailure
from gffs.index.records import InodeRecord

log = logging.getLogger("gffs.fs.filesystem")


@dataclass(slots=True)
class Caller:
    """Who asks: the kernel's request context reduced to what we use."""

    uid: int = 0
    gid: int = 0


@dataclass(slots=True)
class Handle:
    ino: int
    flags: int


def _now() -> int:
    return time.time_ns()


class FsCore:
    """The filesystem's state and the inode lifetime every room needs."""

    def __init__(self, index: Index, chunks: ChunkStore, *, read_only: bool = False,
                 analyze_images: bool = True) -> None:
        self.index = index
        self.ns = Namespace(index)
        self.cm = ChunkMap(index)
        self.chunks = chunks
        self.block_size = index.block_size
        self.read_only = read_only
        self.buffers: dict[int, FileBuffer] = {}
        self.handles: dict[int, Handle] = {}
        self.lookups: Counter[int] = Counter()
        self._next_fh = 1
        self._zero_block = bytes(self.block_size)
        self.loops = StoreLoops(chunks, self._retry_purges)  # garbage, repair, uploads
        self._purge_later: set[int] = set()  # inodes whose purge failed (retried in background)
        self._background: trio.Nursery | None = None  # write-behind and read-ahead tasks
        self.images = ImageFacts(index, chunks, self._read_committed, self._flow_of_ino,
                                 enabled=analyze_images and not read_only)
        self.image_xattrs = ImageXattrs(index)
        self.thumbs = SharedThumbnails(index, chunks)
        self.views = Views(index, self.images.views)
        self.thumb_files: dict[int, bytes] = {}   # fh -> bytes of an open thumbnail
        # file -> the file listed after it by the last readdir of its directory: a reader
        # going through a flow in order gets the next file's first blocks ahead of time
        self._next_listed: OrderedDict[int, int] = OrderedDict()
        # the FUSE layer sets this: forget the kernel's cached pages of an inode
        self.drop_kernel_cache: Callable[[int], None] = lambda ino: None
        # counters since mount (user.gf.stats.* on the root): chunk loads by purpose prove
        # that browsing thumbnails reads no original; write requests, how big writes come
        self.stats: Counter[str] = Counter()

    # helpers -------------------------------------------------------------------
    def _writable(self) -> None:
        if self.read_only:
            raise FsError(errno.EROFS)

    def _virtual(self, ino: int) -> SharedThumbnails | Views:
        """The owner of a virtual node: .views or .sh_thumbnails."""
        return self.thumbs if ino >= VIRTUAL_BASE else self.views

    def view_dir_path(self, ino: int) -> bytes | None:
        """``.views/by-tag/alps``: where a .views directory is under the mount point (None
        for any other inode, or one no longer known)."""
        if not is_virtual(ino) or self._virtual(ino) is not self.views:
            return None
        try:
            return os.path.join(views_dir.DIRNAME, *self.views.node(ino))
        except FsError:
            return None

    def attr(self, ino: int) -> InodeRecord:
        if is_virtual(ino):
            return self._virtual(ino).attr(ino)
        with self.index.read() as txn:
            rec = self.ns.get(txn, ino)
        return self._overlay(ino, rec)

    def stored_bytes(self, ino: int) -> int | None:
        """Bytes the inode's stored blocks cost (st_blocks); None for a virtual file."""
        if is_virtual(ino):
            return None
        with self.index.read() as txn:
            return self.cm.stored_blocks(txn, ino)[1]

    def _overlay(self, ino: int, rec: InodeRecord) -> InodeRecord:
        buf = self.buffers.get(ino)
        if buf is not None and buf.meta_dirty:
            rec.size = buf.size
            rec.mtime_ns = max(rec.mtime_ns, buf.mtime_ns)
            rec.ctime_ns = max(rec.ctime_ns, buf.ctime_ns)
        return rec

    def _dir(self, txn, ino: int) -> InodeRecord:
        rec = self.ns.get(txn, ino)
        if not stat.S_ISDIR(rec.mode):
            raise FsError(errno.ENOTDIR)
        return rec

    @staticmethod
    def _is_virtual_name(parent: int, name: bytes) -> bool:
        """*name* in *parent* is a virtual directory: .sh_thumbnails (every directory of a
        flow has one) or .views (in the root). A real entry of that name, made before gffs
        had them, keeps it."""
        return name == THUMB_DIR if parent != ROOT_INO else name == views_dir.DIRNAME

    def _refuse_virtual_name(self, parent: int, name: bytes) -> None:
        if self._is_virtual_name(parent, name):
            (sharedthumbs.refuse if parent != ROOT_INO else views_dir.refuse)()

    def _not_virtual(self, *inos: int) -> None:
        """Nothing in .sh_thumbnails or .views can be changed: EACCES, as their modes say
        (root too)."""
        for ino in inos:
            if is_virtual(ino):
                (sharedthumbs.refuse if ino >= VIRTUAL_BASE else views_dir.refuse)()

    def remember(self, ino: int) -> None:
        """The kernel now holds one more lookup reference to *ino*."""
        self.lookups[ino] += 1

    def remember_all(self, inos: Iterable[int]) -> None:
        """The kernel now holds one more lookup reference to each of *inos* (a readdirplus reply)."""
        self.lookups.update(inos)

    def forget(self, items: list[tuple[int, int]]) -> None:
        for ino, n in items:
            left = self.lookups[ino] - n
            if left > 0:
                self.lookups[ino] = left
                continue
            self.lookups.pop(ino, None)
            if is_virtual(ino):
                self._virtual(ino).forget(ino)
            elif ino not in self.buffers and not self.read_only:
                self._purge_quietly(ino)

    def _purge_quietly(self, ino: int) -> None:
        """Purge an unlinked inode from a path that has nobody to report to (forget,
        write-behind, last release): a failure is logged and retried in the background
        (the inode is in `orphans`, so a restart purges it too)."""
        try:
            self._purge_if_unlinked(ino)
        except (FsError, IndexFailure) as exc:
            log.warning("purging unlinked inode %d failed, will retry: %s", ino, exc)
            self._purge_later.add(ino)

    async def _retry_purges(self) -> None:
        """Purges that failed before (run at the start of each garbage pass)."""
        for ino in sorted(self._purge_later):
            await self.index.available()
            self._purge_later.discard(ino)
            if ino not in self.buffers and not self.lookups.get(ino):
                self._purge_quietly(ino)

    def _purge_if_unlinked(self, ino: int) -> None:
        with self.index.read() as txn:
            if not self.ns.exists(txn, ino) or self.ns.get(txn, ino).nlink > 0:
                return
        self._purge(ino)

    def _purge(self, ino: int) -> None:
        """Delete an inode nobody links to or holds open; its chunks lose a reference."""
        with self.index.write() as txn:
            if self.ns.exists(txn, ino):
                self._delete_inode(txn, ino)
        self.loops.wake_garbage()

    def _delete_inode(self, txn, ino: int) -> None:
        """Remove an inode and everything keyed by it; its chunks lose a reference."""
        self.cm.drop_blocks(txn, ino)
        self.images.forget_inode(txn, ino)
        self.ns.delete_inode(txn, ino)

    def _release_inode_later(self, txn, ino: int, rec: InodeRecord) -> bool:
        """After nlink hit 0: purge now (True) unless the kernel or a handle still holds it."""
        self.images.views.refresh(txn, ino, gone=True)   # out of .views at once
        if self.lookups.get(ino) or ino in self.buffers:
            self.ns.add_orphan(txn, ino)
            return False
        self._delete_inode(txn, ino)
        return True
