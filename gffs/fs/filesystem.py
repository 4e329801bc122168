"""POSIX filesystem logic over the index and the chunk store, without FUSE.

Methods take plain values and raise FsError; the FUSE layer above only
translates. Namespace changes are one LMDB transaction each, run on the trio
thread; file data is buffered per inode and committed on flush/fsync.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterator

import trio

from gffs.chunks import codec
from gffs.chunks.store import ChunkStore, StoredChunk
from gffs.errors import FsError
from gffs.fs.imagefacts import ImageFacts
from gffs.fs.statfs import statfs_figures
from gffs.fs.openfiles import FileBuffer
from gffs.fs import sharedthumbs
from gffs.fs.sharedthumbs import DIRNAME as THUMB_DIR
from gffs.fs.sharedthumbs import SharedThumbnails, is_virtual
from gffs.nft.validate import PREFIX as _NFT_PREFIX
from gffs.nft.validate import InvalidNftValue
from gffs.nft.validate import validate as validate_nft
from gffs.index import ChunkMap, Index, Namespace, ROOT_INO
from gffs.index.env import LOGICAL_BYTES, N_INODES, STORED_BYTES
from gffs.index.namespace import check_name
from gffs.index.records import InodeRecord

log = logging.getLogger(__name__)

XATTR_NAME_MAX = 255
XATTR_VALUE_MAX = 64 * 1024
XATTR_LIST_MAX = 64 * 1024
# security.* (SELinux labels, file capabilities) and system.* (POSIX ACLs) are not
# supported: answering ENOTSUP lets tools such as ls remember that per device
# instead of asking for every file.
XATTR_NAMESPACES = (b"user.", b"trusted.")
MAX_DIRTY_PER_FILE = 16 << 20   # flush a file's buffer early beyond this
MAX_FILE_SIZE = 1 << 50
GARBAGE_INTERVAL = 2.0          # seconds: garbage becomes deletable once its drop is durable
READ_AHEAD_BLOCKS = 8           # blocks loaded ahead of a sequential reader, in parallel
LISTED_MAX = 20_000             # "next file in its directory" links kept for read-ahead
REPAIR_INTERVAL = 5.0           # seconds between passes over the repair queue
UNMOUNT_UPLOAD_WAIT = 120.0     # seconds an unmount spends uploading staged chunks
NFT_PREFIX = _NFT_PREFIX.encode()
RENAME_NOREPLACE = 1            # Linux renameat2 flags
RENAME_EXCHANGE = 2
STATS_PREFIX = b"user.gf.stats."   # read-only counters on the mount's root directory
STATS = ("file_block_loads", "analysis_block_loads", "thumbnail_loads", "user_cache_writes")


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


class Filesystem:
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
        self._garbage_wakeup = trio.Event()
        self._purge_later: set[int] = set()  # inodes whose purge failed (retried in background)
        self._background: trio.Nursery | None = None  # write-behind and read-ahead tasks
        self.images = ImageFacts(index, chunks, self._read_committed, self._flow_of_ino,
                                 enabled=analyze_images and not read_only)
        self.thumbs = SharedThumbnails(index, chunks)
        self.thumb_files: dict[int, bytes] = {}   # fh -> bytes of an open thumbnail
        # file -> the file listed after it by the last readdir of its directory: a reader
        # going through a flow in order gets the next file's first blocks ahead of time
        self._next_listed: OrderedDict[int, int] = OrderedDict()
        # the FUSE layer sets this: forget the kernel's cached pages of an inode
        self.drop_kernel_cache: Callable[[int], None] = lambda ino: None
        # chunk loads by purpose since mount (user.gf.stats.* on the root): proves that
        # browsing thumbnails reads no original
        self.stats: Counter[str] = Counter()

    # lifecycle -----------------------------------------------------------------
    async def start(self, uid: int = 0, gid: int = 0) -> None:
        """Create the root if new; finish what a crash interrupted (small queues only)."""
        if self.read_only:
            return
        self.ns.ensure_root(uid, gid)
        await self._finish_deletions()

    async def _finish_deletions(self) -> None:
        """Purge unlinked-while-open inodes and delete queued garbage chunks."""
        with self.index.read() as txn:
            orphans = self.ns.orphans(txn)
        for ino in orphans:
            self._purge(ino)
        # garbage is deleted only once its drop is durable (power loss falls back to that)
        await self.index.durable()
        while await self.chunks.delete_garbage():
            pass

    async def run_background(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Garbage deletion and periodic sync; runs until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._garbage_loop)
            nursery.start_soon(self._repair_loop)
            nursery.start_soon(self.chunks.run_uploads)  # staged chunks -> remote backends
            self._background = self.images.nursery = nursery
            self.images.wake()  # images queued before a restart
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._background = self.images.nursery = None

    def spawn(self, task) -> bool:
        """Run *task* (an async function without arguments) in the background nursery;
        False when the filesystem is not running one (then the caller does it itself)."""
        if self._background is None:
            return False
        self._background.start_soon(task)
        return True

    async def _garbage_loop(self) -> None:
        """Delete unreferenced chunks (once their drop is durable), retry failed purges."""
        while True:
            with trio.move_on_after(GARBAGE_INTERVAL):
                await self._garbage_wakeup.wait()
            self._garbage_wakeup = trio.Event()
            try:
                for ino in sorted(self._purge_later):
                    await self.index.available()
                    self._purge_later.discard(ino)
                    if ino not in self.buffers and not self.lookups.get(ino):
                        self._purge_quietly(ino)
                while await self.chunks.delete_garbage():
                    pass
            except Exception:
                log.exception("garbage deletion failed; will retry")
            await trio.sleep(0.2)

    async def _repair_loop(self) -> None:
        """Bring under-replicated chunks back to their copy count, now and then."""
        while True:
            with trio.move_on_after(REPAIR_INTERVAL):
                await self.chunks.repair_wakeup.wait()
            self.chunks.repair_wakeup = trio.Event()
            try:
                repaired, pending = await self.chunks.repair()
                if repaired:
                    log.info("repaired %d chunks, %d still waiting", repaired, pending)
            except Exception:
                log.exception("repair failed; will retry")
            await trio.sleep(1.0)

    async def shutdown(self) -> None:
        """Flush every buffer and make everything durable (unmount)."""
        for ino in list(self.buffers):
            try:
                await self._flush(ino)
            except FsError as exc:
                log.error("could not flush inode %d at unmount: %s", ino, exc)
        if not self.read_only:
            await self.chunks.drain_uploads(UNMOUNT_UPLOAD_WAIT)
            await self._finish_deletions()
            await self.chunks.sync()
        self.images.close()
        await self.chunks.close()

    # helpers -------------------------------------------------------------------
    def _writable(self) -> None:
        if self.read_only:
            raise FsError(errno.EROFS)

    def attr(self, ino: int) -> InodeRecord:
        if is_virtual(ino):
            return self.thumbs.attr(ino)
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

    def _is_thumb_dir(self, parent: int, name: bytes) -> bool:
        """*name* in *parent* is the virtual .sh_thumbnails (every directory of a flow has one;
        a real entry of that name, made before gffs had them, keeps it)."""
        return name == THUMB_DIR and parent != ROOT_INO

    @staticmethod
    def _not_virtual(*inos: int) -> None:
        """Nothing in .sh_thumbnails can be changed: EACCES, as its modes say (root too)."""
        if any(is_virtual(ino) for ino in inos):
            sharedthumbs.refuse()

    def remember(self, ino: int) -> None:
        """The kernel now holds one more lookup reference to *ino*."""
        self.lookups[ino] += 1

    def forget(self, items: list[tuple[int, int]]) -> None:
        for ino, n in items:
            left = self.lookups[ino] - n
            if left > 0:
                self.lookups[ino] = left
                continue
            self.lookups.pop(ino, None)
            if is_virtual(ino):
                self.thumbs.forget(ino)
            elif ino not in self.buffers and not self.read_only:
                self._purge_quietly(ino)

    def _purge_quietly(self, ino: int) -> None:
        """Purge an unlinked inode from a path that has nobody to report to (forget,
        write-behind, last release): a failure is logged and retried in the background
        (the inode is in `orphans`, so a restart purges it too)."""
        try:
            self._purge_if_unlinked(ino)
        except FsError as exc:
            log.warning("purging unlinked inode %d failed, will retry: %s", ino, exc)
            self._purge_later.add(ino)

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
        self._garbage_wakeup.set()

    def _delete_inode(self, txn, ino: int) -> None:
        """Remove an inode and everything keyed by it; its chunks lose a reference."""
        self.cm.drop_blocks(txn, ino)
        self.images.forget_inode(txn, ino)
        self.ns.delete_inode(txn, ino)

    def _release_inode_later(self, txn, ino: int, rec: InodeRecord) -> bool:
        """After nlink hit 0: purge now (True) unless the kernel or a handle still holds it."""
        if self.lookups.get(ino) or ino in self.buffers:
            self.ns.add_orphan(txn, ino)
            return False
        self._delete_inode(txn, ino)
        return True

    # lookup and attributes -------------------------------------------------------
    def lookup(self, parent: int, name: bytes) -> tuple[int, InodeRecord]:
        if name not in (b".", b".."):
            check_name(name)
        if is_virtual(parent):
            return self.thumbs.lookup(parent, name)
        with self.index.read() as txn:
            prec = self._dir(txn, parent)
            if name == b".":
                ino = parent
            elif name == b"..":
                ino = prec.parent or ROOT_INO
            else:
                found = self.ns.lookup(txn, parent, name)
                if found is None:
                    if self._is_thumb_dir(parent, name):
                        return self.thumbs.lookup(parent, name)
                    raise FsError(errno.ENOENT)
                ino = found
            rec = self.ns.get(txn, ino)
        return ino, self._overlay(ino, rec)

    async def setattr(self, ino: int, *, mode: int | None = None, uid: int | None = None,
                      gid: int | None = None, size: int | None = None,
                      atime_ns: int | None = None, mtime_ns: int | None = None,
                      ctime_ns: int | None = None) -> InodeRecord:
        self._writable()
        self._not_virtual(ino)
        if size is not None:
            await self.truncate(ino, size)
        now = _now()
        with self.index.write() as txn:
            rec = self.ns.get(txn, ino)
            if mode is not None:
                rec.mode = stat.S_IFMT(rec.mode) | (mode & 0o7777)
            if uid is not None:
                rec.uid = uid
            if gid is not None:
                rec.gid = gid
            if atime_ns is not None:
                rec.atime_ns = atime_ns
            if mtime_ns is not None:
                rec.mtime_ns = mtime_ns
                buf = self.buffers.get(ino)
                if buf is not None:
                    buf.mtime_ns = mtime_ns
            rec.ctime_ns = ctime_ns if ctime_ns is not None else now
            self.ns.put(txn, ino, rec)
        return self._overlay(ino, rec)

    # creating entries ----------------------------------------------------------------
    def _new_node(self, parent: int, name: bytes, mode: int, caller: Caller, *,
                  rdev: int = 0, target: bytes | None = None) -> tuple[int, InodeRecord]:
        self._writable()
        check_name(name)
        self._not_virtual(parent)
        if parent == ROOT_INO and not stat.S_ISDIR(mode):
            raise FsError(errno.EPERM, "the top level holds only flows (directories)")
        now = _now()
        with self.index.write() as txn:
            prec = self._dir(txn, parent)
            if prec.nlink == 0:
                raise FsError(errno.ENOENT, "directory was removed")
            if self.ns.lookup(txn, parent, name) is not None or self._is_thumb_dir(parent, name):
                raise FsError(errno.EEXIST)
            gid = caller.gid
            if prec.mode & stat.S_ISGID:
                gid = prec.gid
                if stat.S_ISDIR(mode):
                    mode |= stat.S_ISGID
            is_dir = stat.S_ISDIR(mode)
            rec = InodeRecord(mode, caller.uid, gid, 2 if is_dir else 1, len(target or b""),
                              now, now, now, rdev, parent)
            ino = self.ns.new_inode(txn, rec)
            if target is not None:
                self.ns.set_symlink(txn, ino, target)
            self.ns.add_entry(txn, parent, name, ino)
            if is_dir:
                prec.nlink += 1
            self._touch_dir(txn, parent, prec, now)
        self.thumbs.changed(parent, name)
        return ino, rec

    def mkdir(self, parent: int, name: bytes, mode: int, caller: Caller) -> tuple[int, InodeRecord]:
        return self._new_node(parent, name, stat.S_IFDIR | (mode & 0o7777), caller)

    def mknod(self, parent: int, name: bytes, mode: int, rdev: int,
              caller: Caller) -> tuple[int, InodeRecord]:
        if stat.S_IFMT(mode) not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK,
                                     stat.S_IFCHR, stat.S_IFBLK):
            raise FsError(errno.EINVAL)
        return self._new_node(parent, name, mode, caller, rdev=rdev)

    def symlink(self, parent: int, name: bytes, target: bytes,
                caller: Caller) -> tuple[int, InodeRecord]:
        if len(target) > 4095:
            raise FsError(errno.ENAMETOOLONG, "symlink target longer than 4095 bytes")
        return self._new_node(parent, name, stat.S_IFLNK | 0o777, caller, target=target)

    def readlink(self, ino: int) -> bytes:
        if is_virtual(ino):
            raise FsError(errno.EINVAL, "not a symlink")
        with self.index.read() as txn:
            return self.ns.symlink_target(txn, ino)

    def link(self, ino: int, new_parent: int, new_name: bytes) -> InodeRecord:
        self._writable()
        check_name(new_name)
        self._not_virtual(ino, new_parent)
        now = _now()
        with self.index.write() as txn:
            rec = self.ns.get(txn, ino)
            if stat.S_ISDIR(rec.mode):
                raise FsError(errno.EPERM, "hard links to directories are not allowed")
            if new_parent == ROOT_INO:
                raise FsError(errno.EPERM, "the top level holds only flows (directories)")
            prec = self._dir(txn, new_parent)
            if prec.nlink == 0:
                raise FsError(errno.ENOENT)
            if (self.ns.lookup(txn, new_parent, new_name) is not None
                    or self._is_thumb_dir(new_parent, new_name)):
                raise FsError(errno.EEXIST)
            if rec.nlink >= 65000:
                raise FsError(errno.EMLINK)
            self.ns.add_entry(txn, new_parent, new_name, ino)
            rec.nlink += 1
            rec.ctime_ns = now
            self.ns.put(txn, ino, rec)
            self._touch_dir(txn, new_parent, prec, now)
        self.thumbs.changed(new_parent, new_name)
        return self._overlay(ino, rec)

    # removing entries ------------------------------------------------------------------
    def unlink(self, parent: int, name: bytes) -> None:
        self._writable()
        check_name(name)
        self._not_virtual(parent)
        now = _now()
        with self.index.write() as txn:
            prec, ino = self._child(txn, parent, name)
            rec = self.ns.get(txn, ino)
            if stat.S_ISDIR(rec.mode):
                raise FsError(errno.EISDIR)
            self.ns.remove_entry(txn, parent, name)
            self._touch_dir(txn, parent, prec, now)
            self._drop_link(txn, ino, rec, now)
        self.thumbs.changed(parent, name)
        self._garbage_wakeup.set()

    def _child(self, txn, parent: int, name: bytes) -> tuple[InodeRecord, int]:
        """The parent directory's record and the inode *name* points to (ENOENT if none)."""
        prec = self._dir(txn, parent)
        ino = self.ns.lookup(txn, parent, name)
        if ino is None:
            if self._is_thumb_dir(parent, name):
                sharedthumbs.refuse()
            raise FsError(errno.ENOENT)
        return prec, ino

    def _touch_dir(self, txn, ino: int, rec: InodeRecord, now: int) -> None:
        rec.mtime_ns = rec.ctime_ns = now
        self.ns.put(txn, ino, rec)

    def _drop_link(self, txn, ino: int, rec: InodeRecord, now: int) -> None:
        rec.nlink -= 1
        rec.ctime_ns = now
        self.ns.put(txn, ino, rec)
        if rec.nlink == 0:
            self._release_inode_later(txn, ino, rec)

    def rmdir(self, parent: int, name: bytes) -> None:
        self._writable()
        check_name(name)
        self._not_virtual(parent)
        now = _now()
        with self.index.write() as txn:
            prec, ino = self._child(txn, parent, name)
            rec = self._dir(txn, ino)
            if not self.ns.is_empty_dir(txn, ino):
                raise FsError(errno.ENOTEMPTY)
            self.ns.remove_entry(txn, parent, name)
            prec.nlink -= 1
            self._touch_dir(txn, parent, prec, now)
            rec.nlink = 0
            rec.ctime_ns = now
            self.ns.put(txn, ino, rec)
            self._release_inode_later(txn, ino, rec)
        self.thumbs.changed(parent, name)

    def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
               flags: int = 0) -> None:
        self._writable()
        check_name(old_name)
        check_name(new_name)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise FsError(errno.EINVAL, "unsupported rename flags (RENAME_WHITEOUT)")
        noreplace = bool(flags & RENAME_NOREPLACE)
        exchange = bool(flags & RENAME_EXCHANGE)
        self._not_virtual(old_parent, new_parent)
        now = _now()
        with self.index.write() as txn:
            op = self._dir(txn, old_parent)
            np = self._dir(txn, new_parent) if new_parent != old_parent else op
            _, ino = self._child(txn, old_parent, old_name)
            rec = self.ns.get(txn, ino)
            target = self.ns.lookup(txn, new_parent, new_name)
            if target is None and self._is_thumb_dir(new_parent, new_name):
                sharedthumbs.refuse()
            trec = self.ns.get(txn, target) if target is not None else None
            if new_parent == ROOT_INO and not stat.S_ISDIR(rec.mode):
                raise FsError(errno.EPERM, "the top level holds only flows (directories)")
            if target == ino:
                return  # same inode (hard links or same name): POSIX says do nothing
            if exchange:
                if trec is None:
                    raise FsError(errno.ENOENT)
                if old_parent == ROOT_INO and not stat.S_ISDIR(trec.mode):
                    raise FsError(errno.EPERM, "the top level holds only flows (directories)")
                self._check_not_ancestor(txn, ino, rec, new_parent)
                self._check_not_ancestor(txn, target, trec, old_parent)
                self.ns.replace_entry(txn, old_parent, old_name, target)
                self.ns.replace_entry(txn, new_parent, new_name, ino)
                self._reparent(txn, ino, rec, new_parent, old_parent, op, np, now)
                self._reparent(txn, target, trec, old_parent, new_parent, np, op, now)
            else:
                if trec is not None:
                    if noreplace:
                        raise FsError(errno.EEXIST)
                    if stat.S_ISDIR(rec.mode) and not stat.S_ISDIR(trec.mode):
                        raise FsError(errno.ENOTDIR)
                    if not stat.S_ISDIR(rec.mode) and stat.S_ISDIR(trec.mode):
                        raise FsError(errno.EISDIR)
                    if stat.S_ISDIR(trec.mode) and not self.ns.is_empty_dir(txn, target):
                        raise FsError(errno.ENOTEMPTY)
                self._check_not_ancestor(txn, ino, rec, new_parent)
                self.ns.remove_entry(txn, old_parent, old_name)
                if trec is not None:
                    self.ns.remove_entry(txn, new_parent, new_name)
                    if stat.S_ISDIR(trec.mode):
                        np.nlink -= 1
                        trec.nlink = 0
                        trec.ctime_ns = now
                        self.ns.put(txn, target, trec)
                        self._release_inode_later(txn, target, trec)
                    else:
                        self._drop_link(txn, target, trec, now)
                self.ns.add_entry(txn, new_parent, new_name, ino)
                self._reparent(txn, ino, rec, new_parent, old_parent, op, np, now)
            self._touch_dir(txn, old_parent, op, now)
            if new_parent != old_parent:
                self._touch_dir(txn, new_parent, np, now)
        self.thumbs.changed(old_parent, old_name)
        self.thumbs.changed(new_parent, new_name)
        self._garbage_wakeup.set()

    def _reparent(self, txn, ino: int, rec: InodeRecord, to_parent: int, from_parent: int,
                  from_rec: InodeRecord, to_rec: InodeRecord, now: int) -> None:
        """Update a moved inode's ctime and, for directories, parent link and nlinks."""
        rec.ctime_ns = now
        if to_parent != from_parent:
            rec.parent = to_parent  # files: the flow their new chunks are placed for
            if stat.S_ISDIR(rec.mode):
                from_rec.nlink -= 1
                to_rec.nlink += 1
        self.ns.put(txn, ino, rec)

    def _check_not_ancestor(self, txn, ino: int, rec: InodeRecord, new_parent: int) -> None:
        """Refuse to move a directory into itself or its own subtree."""
        if not stat.S_ISDIR(rec.mode):
            return
        cur = new_parent
        while cur != ROOT_INO and cur:
            if cur == ino:
                raise FsError(errno.EINVAL, "cannot move a directory into itself")
            cur = self.ns.get(txn, cur).parent
        if ino == ROOT_INO:
            raise FsError(errno.EINVAL)

    # directories ---------------------------------------------------------------------
    def opendir(self, ino: int) -> None:
        if is_virtual(ino):
            return self.thumbs.opendir(ino)
        with self.index.read() as txn:
            self._dir(txn, ino)

    def readdir(self, ino: int, after_cookie: int) -> Iterator[tuple[bytes, int, InodeRecord, int]]:
        """(name, ino, attributes, cookie) for entries after *after_cookie*.

        A directory's .sh_thumbnails is not listed: copies and backups must not
        descend into it; file managers look it up by name."""
        if is_virtual(ino):
            yield from self.thumbs.readdir(ino, after_cookie)
            return
        prev = None
        with self.index.read() as txn:
            for cookie, name, child in self.ns.entries(txn, ino, after_cookie):
                rec = self.ns.get(txn, child)
                if stat.S_ISREG(rec.mode):
                    if prev is not None:
                        self._remember_next(prev, child)
                    prev = child
                yield name, child, self._overlay(child, rec), cookie

    def _remember_next(self, ino: int, following: int) -> None:
        self._next_listed[ino] = following
        self._next_listed.move_to_end(ino)
        if len(self._next_listed) > LISTED_MAX:
            self._next_listed.popitem(last=False)

    # open files ------------------------------------------------------------------------
    def _buffer(self, ino: int) -> FileBuffer:
        buf = self.buffers.get(ino)
        if buf is None:
            with self.index.read() as txn:
                rec = self.ns.get(txn, ino)
                flow = self._flow_of(txn, ino, rec)
            buf = FileBuffer(ino, rec.size, rec.size, rec.mtime_ns, rec.ctime_ns, flow=flow)
            self.buffers[ino] = buf
        return buf

    def _flow_of(self, txn, ino: int, rec: InodeRecord) -> str | None:
        """Name of the flow (top-level directory) an inode was last linked into.

        Only needed when the placement has per-flow policies; a hard link in a
        second flow keeps the placement of the flow the file was created in.
        """
        if not self.chunks.placement.flows:
            return None
        for _ in range(4096):
            if rec.parent in (0, ROOT_INO):
                break
            try:
                ino, rec = rec.parent, self.ns.get(txn, rec.parent)
            except FsError:  # the directory it was created in is gone (it lives on as a link)
                return None
        if rec.parent != ROOT_INO:
            return None
        for _cookie, name, child in self.ns.entries(txn, ROOT_INO):
            if child == ino:
                return name.decode(errors="surrogateescape")
        return None

    def _flow_of_ino(self, ino: int) -> str | None:
        with self.index.read() as txn:
            return self._flow_of(txn, ino, self.ns.get(txn, ino))

    def _drop_buffer_if_idle(self, ino: int) -> None:
        buf = self.buffers.get(ino)
        if buf is not None and buf.open_count == 0 and not buf.needs_flush and not buf.storing:
            self._forget_stored_early(buf)
            del self.buffers[ino]
            if not self.lookups.get(ino) and not self.read_only:
                self._purge_quietly(ino)

    def _new_handle(self, ino: int, flags: int) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = Handle(ino, flags)
        self._buffer(ino).open_count += 1
        return fh

    async def open(self, ino: int, flags: int) -> int:
        writing = flags & os.O_ACCMODE != os.O_RDONLY or bool(flags & os.O_TRUNC)
        if writing:
            self._writable()
        if is_virtual(ino):
            return await self._open_thumbnail(ino, writing)
        with self.index.read() as txn:
            rec = self.ns.get(txn, ino)
        if stat.S_ISDIR(rec.mode):
            raise FsError(errno.EISDIR)
        fh = self._new_handle(ino, flags)
        if flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY:
            try:
                await self.truncate(ino, 0)
            except BaseException:
                await self.release(fh)
                raise
        return fh

    async def _open_thumbnail(self, ino: int, writing: bool) -> int:
        data = await self.thumbs.open(ino, writing)
        self.stats["thumbnail_loads"] += 1
        fh = self._next_fh
        self._next_fh += 1
        self.thumb_files[fh] = data
        return fh

    def create(self, parent: int, name: bytes, mode: int, flags: int,
               caller: Caller) -> tuple[int, int, InodeRecord]:
        ino, rec = self._new_node(parent, name, stat.S_IFREG | (mode & 0o7777), caller)
        fh = self._new_handle(ino, flags)
        self.buffers[ino].meta_dirty = True  # committed at close: even an empty file gets facts
        return fh, ino, rec

    def handle(self, fh: int) -> Handle:
        h = self.handles.get(fh)
        if h is None:
            raise FsError(errno.EBADF)
        return h

    async def read(self, fh: int, offset: int, length: int) -> bytes:
        thumb = self.thumb_files.get(fh)
        if thumb is not None:
            return thumb[offset:offset + length]
        ino = self.handle(fh).ino
        buf = self.buffers[ino]
        end = min(offset + length, buf.size)
        if offset >= end:
            return b""
        bs = self.block_size
        next_block = (end - 1) // bs + 1
        if (offset == buf.read_pos or offset == 0) and next_block != buf.ahead_of:
            # sequential (or starting out) and into a block not yet looked ahead of:
            # one index lookup per block, not per 128 KiB request
            buf.ahead_of = next_block
            self._read_ahead(ino, buf, next_block)
        parts = []
        for idx in range(offset // bs, (end - 1) // bs + 1):
            start = idx * bs
            block = await self._block(ino, idx, buf)
            lo, hi = max(offset, start) - start, min(end, start + bs) - start
            piece = block[lo:hi]
            if len(piece) < hi - lo:
                piece = bytes(piece) + bytes(hi - lo - len(piece))
            parts.append(piece)
        buf.read_pos = end
        return b"".join(parts)

    def _read_ahead(self, ino: int, buf: FileBuffer, first: int) -> None:
        """Sequential reader: start loading the next blocks before they are asked for.

        Each block is its own task, so a remote backend serves several at once (one
        GET's latency no longer paces the reader); the window is at most a quarter
        of the block cache, so read-ahead never evicts what it fetched.
        """
        if self._background is None:
            return
        window = min(READ_AHEAD_BLOCKS, max(1, self.chunks.cache.max_bytes // (4 * self.block_size)))
        last = -(-buf.committed_size // self.block_size)      # blocks of the file
        with self.index.read() as txn:
            digests = [self.cm.block(txn, ino, idx)
                       for idx in range(first, min(first + window, last)) if idx not in buf.dirty]
            following = self._next_listed.get(ino) if first + window > last else None
            for _hop in range(window):        # (empty files and renames may make a cycle)
                if following is None or len(digests) >= window or following in self.buffers:
                    break
                # the reader reaches the end: the next listed files' first blocks too
                for _, digest in self.cm.blocks(txn, following):
                    if len(digests) >= window:
                        break
                    digests.append(digest)
                following = self._next_listed.get(following)
        for digest in digests:
            if digest is not None and not self.chunks.cached(digest):
                self._background.start_soon(self._prefetch, digest)

    async def _prefetch(self, digest: bytes) -> None:
        self.stats["file_block_loads"] += 1
        try:
            await self.chunks.load(digest)
        except Exception as exc:  # the real read will report it
            log.debug("read-ahead of %s failed: %s", digest.hex()[:16], exc)

    async def _block(self, ino: int, idx: int, buf: FileBuffer) -> bytes | bytearray | memoryview:
        """Current content of one block: dirty buffer, else committed chunk, else hole."""
        data = buf.dirty.get(idx)
        if data is not None:
            return data
        with self.index.read() as txn:
            digest = self.cm.block(txn, ino, idx)
        if digest is None or idx * self.block_size >= buf.committed_size:
            return b""
        self.stats["file_block_loads"] += 1
        data = await self.chunks.load(digest)
        # a write may have dirtied the block while we waited
        return buf.dirty.get(idx, data)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        self._writable()
        h = self.handle(fh)
        buf = self.buffers[h.ino]
        if h.flags & os.O_APPEND:
            offset = buf.size
        if offset + len(data) > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG)
        if buf.try_compress is None and offset == 0 and data:
            buf.try_compress = not codec.is_precompressed(bytes(data[:16]))
        bs = self.block_size
        view = memoryview(data)
        pos = offset
        while view:
            idx, within = divmod(pos, bs)
            n = min(bs - within, len(view))
            block = buf.writable_block(idx)
            if block is None:
                if idx * bs >= buf.size or (within == 0 and (n == bs or pos + n >= buf.size)):
                    block = bytearray()
                else:
                    block = bytearray(await self._block(h.ino, idx, buf))
                    meanwhile = buf.writable_block(idx)  # another write landed while we loaded
                    block = meanwhile if meanwhile is not None else block
                buf.dirty[idx] = block
            if len(block) < within:
                block.extend(bytes(within - len(block)))
            block[within:within + n] = view[:n]
            buf.touch(idx)
            if within + n == bs and len(block) == bs:
                self._write_behind(buf, idx)
            pos += n
            view = view[n:]
        now = _now()
        buf.size = max(buf.size, offset + len(data))
        buf.mtime_ns = buf.ctime_ns = now
        buf.meta_dirty = True
        self.images.writing()
        if buf.dirty_bytes > MAX_DIRTY_PER_FILE:
            await self._flush(h.ino, final=False)
        return len(data)

    def _write_behind(self, buf: FileBuffer, idx: int) -> None:
        """A block just became full: store it now so close() has less to do."""
        if self._background is None or idx in buf.storing:
            return
        if buf.dirty[idx] == self._zero_block:
            return  # the flush records it as a hole, like any all-zero block
        done = buf.storing[idx] = trio.Event()
        version, data = buf.versions[idx], bytes(buf.dirty[idx])
        buf.dirty[idx] = data  # frozen: the flush snapshot shares it, no copy
        try_compress = buf.try_compress is not False

        async def store() -> None:
            try:
                sc = await self.chunks.store(data, try_compress, buf.flow)
            except Exception as exc:  # the flush stores it again and reports
                log.debug("write-behind of block %d failed: %s", idx, exc)
            else:
                old = buf.stored_early.pop(idx, None)
                if old is not None:
                    self.chunks.release([old[1]])
                buf.stored_early[idx] = (version, sc)
            finally:
                del buf.storing[idx]
                done.set()
                if buf.open_count == 0:
                    self._drop_buffer_if_idle(buf.ino)

        self._background.start_soon(store)

    def _forget_stored_early(self, buf: FileBuffer, keep: set[int] = frozenset()) -> None:
        for idx in [i for i in buf.stored_early if i not in keep]:
            self.chunks.release([buf.stored_early.pop(idx)[1]])
        self._garbage_wakeup.set()

    async def _read_committed(self, ino: int, size: int) -> bytes:
        """A closed file's committed bytes (for image analysis, off the FUSE path)."""
        bs = self.block_size
        with self.index.read() as txn:
            digests = dict(self.cm.blocks(txn, ino))
        parts = []
        for idx in range(-(-size // bs)):
            want = min(bs, size - idx * bs)
            if idx in digests:
                self.stats["analysis_block_loads"] += 1
            data = await self.chunks.load(digests[idx]) if idx in digests else b""
            parts.append(bytes(data[:want]).ljust(want, b"\0"))
        return b"".join(parts)

    async def truncate(self, ino: int, size: int) -> None:
        self._writable()
        if size > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG)
        with self.index.read() as txn:
            if not stat.S_ISREG(self.ns.get(txn, ino).mode):
                raise FsError(errno.EINVAL)
        buf = self._buffer(ino)
        try:
            async with buf.lock:
                bs = self.block_size
                last, within = divmod(size, bs)
                if within and size < buf.size and last not in buf.dirty:
                    # keep the head of the block that the new end cuts through
                    block = bytearray(await self._block(ino, last, buf))
                    buf.dirty.setdefault(last, block)
                buf.truncate(size, bs)
                buf.mtime_ns = buf.ctime_ns = _now()
            await self._flush(ino)
        finally:
            self._drop_buffer_if_idle(ino)

    async def _flush(self, ino: int, final: bool = True) -> None:
        """Commit an inode's buffer: store dirty blocks, then one index transaction.

        *final* flushes (close, fsync, truncate) also record the file's content
        id; early flushes of a file still being written do not.
        """
        buf = self.buffers.get(ino)
        if buf is None:
            return
        async with buf.lock:
            if not buf.needs_flush:
                return
            snap = buf.snapshot()
            size, mtime, ctime = buf.size, buf.mtime_ns, buf.ctime_ns
            try_compress = buf.try_compress is not False
            stored: dict[int, StoredChunk | None] = {}
            queued_image = False
            failed = True

            for event in [buf.storing[i] for i in snap if i in buf.storing]:
                await event.wait()
            early = {idx: sc for idx, (version, sc) in buf.stored_early.items()
                     if idx in snap and snap[idx][1] == version}
            self._forget_stored_early(buf, keep=set(early))
            buf.stored_early.clear()  # their pins now belong to this flush

            async def store_one(idx: int, data: bytes) -> None:
                if idx in early:
                    stored[idx] = early.pop(idx)
                elif data == self._zero_block[:len(data)]:
                    stored[idx] = None  # all zeros: a hole, no chunk
                else:
                    stored[idx] = await self.chunks.store(data, try_compress, buf.flow)

            try:
                async with trio.open_nursery() as nursery:
                    for idx, (data, _) in snap.items():
                        if idx * self.block_size < size:
                            nursery.start_soon(store_one, idx, data)
                await self.index.available()
                with self.index.write() as txn:
                    rec = self.ns.get(txn, ino)
                    for idx, sc in stored.items():
                        if sc is None:
                            self.cm.set_block(txn, ino, idx, None)
                        else:
                            self.cm.set_block(txn, ino, idx, sc.digest, sc.record)
                            if sc.short:
                                self.cm.queue_repair(txn, sc.digest, buf.flow)
                                self.chunks.repair_wakeup.set()
                    self.cm.drop_blocks(txn, ino, -(-size // self.block_size))
                    rec.size = size
                    rec.mtime_ns = max(rec.mtime_ns, mtime)
                    rec.ctime_ns = max(rec.ctime_ns, ctime)
                    self.ns.put(txn, ino, rec)
                    if final:
                        queued_image = self.images.record_content(txn, ino, size)
                failed = False
            except* FsError as group:
                raise group.exceptions[0] from None
            finally:
                buf.flush_failed = failed
                self.chunks.release([sc for sc in stored.values() if sc is not None])
                self.chunks.release(list(early.values()))
                self._garbage_wakeup.set()
            buf.mark_flushed(snap, size)
        if queued_image:
            self.images.wake()

    async def flush(self, fh: int) -> None:
        if fh not in self.thumb_files:
            await self._flush(self.handle(fh).ino)

    async def fsync(self, fh: int) -> None:
        if fh not in self.thumb_files:
            await self._flush(self.handle(fh).ino)
            await self.chunks.sync()

    async def release(self, fh: int) -> None:
        if self.thumb_files.pop(fh, None) is not None:
            return
        h = self.handles.pop(fh, None)
        if h is None:
            return
        buf = self.buffers.get(h.ino)
        if buf is None:
            return
        try:
            if not buf.flush_failed:   # else close() reported the failure: keep the old content
                await self._flush(h.ino)
        finally:
            buf.open_count -= 1
            if buf.needs_flush and buf.open_count == 0:
                if buf.flush_failed:
                    log.warning("inode %d: changes dropped after a failed flush; the previous "
                                "content is kept", h.ino)
                else:
                    log.error("inode %d: unflushed data dropped at release", h.ino)
                buf.dirty.clear()
                buf.meta_dirty = False
                self.drop_kernel_cache(h.ino)   # it still holds the written pages
            self._drop_buffer_if_idle(h.ino)

    # xattrs ----------------------------------------------------------------------------
    @staticmethod
    def _check_xattr_name(name: bytes) -> None:
        if len(name) > XATTR_NAME_MAX:
            raise FsError(errno.ERANGE, "xattr name longer than 255 bytes")
        if not name.startswith(XATTR_NAMESPACES):
            raise FsError(errno.ENOTSUP, "only user. and trusted. xattrs are stored")

    def getxattr(self, ino: int, name: bytes) -> bytes:
        self._check_xattr_name(name)
        if is_virtual(ino):
            self.thumbs.node(ino)
            raise FsError(errno.ENODATA)
        if self.images.is_ours(name):
            return self.images.get(ino, name)
        if name.startswith(sharedthumbs.XATTR_PREFIX):
            return self.thumbs.xattr(ino, name)
        if ino == ROOT_INO and name.startswith(STATS_PREFIX):
            counter = name[len(STATS_PREFIX):].decode(errors="replace")
            if counter not in STATS:
                raise FsError(errno.ENODATA)
            return str(self.stats[counter]).encode()
        with self.index.read() as txn:
            self.ns.get(txn, ino)
            value = self.ns.get_xattr(txn, ino, name)
        if value is None:
            raise FsError(errno.ENODATA)
        return value

    def setxattr(self, ino: int, name: bytes, value: bytes) -> None:
        self._writable()
        self._check_xattr_name(name)
        self._refuse_computed_xattr(ino, name)
        if len(value) > XATTR_VALUE_MAX:
            raise FsError(errno.E2BIG, "xattr value larger than 64 KiB")
        with self.index.write() as txn:
            rec = self.ns.get(txn, ino)
            if name.startswith(NFT_PREFIX):
                self._check_nft(txn, ino, name, value)
            names = list(self.ns.xattr_names(txn, ino))
            if name not in names and sum(len(n) + 1 for n in names) + len(name) + 1 > XATTR_LIST_MAX:
                raise FsError(errno.ENOSPC, "too many xattrs on this inode")
            self.ns.set_xattr(txn, ino, name, value)
            rec.ctime_ns = _now()
            self.ns.put(txn, ino, rec)

    def _check_nft(self, txn, ino: int, name: bytes, value: bytes) -> None:
        """user.nft.* values are validated; a bad one is EINVAL and nothing changes."""
        current = {}
        for other in self.ns.xattr_names(txn, ino):
            if other.startswith(NFT_PREFIX) and other != name:
                raw = self.ns.get_xattr(txn, ino, other) or b""
                current[other[len(NFT_PREFIX):].decode(errors="replace")] = raw.decode(
                    errors="replace")
        try:
            validate_nft(name[len(NFT_PREFIX):].decode(errors="replace"), value, current)
        except InvalidNftValue as exc:
            raise FsError(errno.EINVAL, str(exc)) from None

    def _refuse_computed_xattr(self, ino: int, name: bytes) -> None:
        """Image facts, thumbnail paths and counters are computed by gffs: EPERM to change."""
        self._not_virtual(ino)
        if (self.images.is_ours(name) or name.startswith(sharedthumbs.XATTR_PREFIX)
                or (ino == ROOT_INO and name.startswith(STATS_PREFIX))):
            self.images.refuse_change()

    def listxattr(self, ino: int) -> list[bytes]:
        if is_virtual(ino):
            self.thumbs.node(ino)
            return []
        with self.index.read() as txn:  # one transaction, one content id lookup
            self.ns.get(txn, ino)
            names = list(self.ns.xattr_names(txn, ino))
            cid = self.images.images.content_id(txn, ino)
            names += self.images.names(txn, cid) + self.thumbs.xattr_names(txn, cid)
        if ino == ROOT_INO:
            names += [STATS_PREFIX + k.encode() for k in STATS]
        return names

    def removexattr(self, ino: int, name: bytes) -> None:
        self._writable()
        self._check_xattr_name(name)
        self._refuse_computed_xattr(ino, name)
        with self.index.write() as txn:
            rec = self.ns.get(txn, ino)
            if not self.ns.remove_xattr(txn, ino, name):
                raise FsError(errno.ENODATA)
            rec.ctime_ns = _now()
            self.ns.put(txn, ino, rec)

    # statfs ----------------------------------------------------------------------------
    async def statfs(self) -> dict[str, int]:
        """Figures for df: see gffs/fs/statfs.py for what an unbounded store shows."""
        cap = await self.chunks.capacity()
        with self.index.read() as txn:
            n_inodes = self.index.counter(txn, N_INODES)
            logical = self.index.counter(txn, LOGICAL_BYTES)
            stored = self.index.counter(txn, STORED_BYTES)
        return statfs_figures(cap, stored=stored, logical=logical, n_inodes=n_inodes)
