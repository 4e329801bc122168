"""pyfuse3 Operations: a thin translation layer over :class:`Filesystem`.

Every handler goes through :func:`_guard`, so no exception ever escapes to
pyfuse3 as anything but a FUSEError with a proper errno: FsError keeps its
errno, anything unexpected is logged and becomes EIO (the mount survives).
"""

from __future__ import annotations

import errno
import functools
import logging
from typing import Any, Callable

import pyfuse3
import trio

from gffs.errors import FsError
from gffs.fs.desktopthumbs import DesktopThumbnails, Listing
from gffs.fs.errnos import fs_error
from gffs.fs.filesystem import Caller, Filesystem
from gffs.fs.listings import DirListing, ListingCache
from gffs.fs.sharedthumbs import is_virtual
from gffs.index.errors import IndexFailure
from gffs.index.records import InodeRecord

log = logging.getLogger(__name__)

ATTR_TIMEOUT = 1.0
ENTRY_TIMEOUT = 1.0
MAX_REQUEST = 1 << 20   # the kernel's largest FUSE write (256 pages of max_pages_limit)


def _guard(func: Callable) -> Callable:
    @functools.wraps(func)
    async def wrapper(self: "Operations", *args: Any) -> Any:
        try:
            await self.fs.index.available()   # not while a group commit holds the index
            return await func(self, *args)
        except pyfuse3.FUSEError:
            raise
        except (FsError, IndexFailure) as exc:
            if isinstance(exc, IndexFailure):   # raised outside the Filesystem facade
                exc = fs_error(exc)
            if exc.errno in (errno.EIO, errno.ENOSPC):
                log.error("%s: %s", func.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno) from None
        except Exception:
            log.exception("unexpected error in %s%r", func.__name__, args[:2])
            raise pyfuse3.FUSEError(errno.EIO) from None
    return wrapper


def entry_attributes(ino: int, rec: InodeRecord, stored: int | None,
                     io_size: int) -> pyfuse3.EntryAttributes:
    """*stored*: bytes the file's stored blocks cost (holes cost nothing), which
    st_blocks reports; None (a virtual file) counts its size. *io_size* is st_blksize,
    the I/O size programs prefer: cp writes in pieces of that size."""
    e = pyfuse3.EntryAttributes()
    e.st_ino = ino
    e.generation = 0
    e.entry_timeout = ENTRY_TIMEOUT
    e.attr_timeout = ATTR_TIMEOUT
    e.st_mode = rec.mode
    e.st_nlink = rec.nlink
    e.st_uid = rec.uid
    e.st_gid = rec.gid
    e.st_rdev = rec.rdev
    e.st_size = rec.size
    e.st_blksize = io_size
    e.st_blocks = -(-(rec.size if stored is None else stored) // 512)
    e.st_atime_ns = rec.atime_ns
    e.st_mtime_ns = rec.mtime_ns
    e.st_ctime_ns = rec.ctime_ns
    return e


def _invalidate_soon(ino: int) -> None:
    """Make the kernel drop its cached pages of *ino* (changes a failed close did not
    store). In a thread: the kernel may call back into us while it invalidates."""
    def invalidate() -> None:
        try:
            pyfuse3.invalidate_inode(ino, False)
        except OSError as exc:   # the kernel no longer knows the inode: nothing cached
            log.debug("invalidate inode %d: %s", ino, exc)

    trio.lowlevel.start_thread_soon(invalidate, lambda _outcome: None)


def _caller(ctx: pyfuse3.RequestContext) -> Caller:
    return Caller(ctx.uid, ctx.gid)


class Operations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, fs: Filesystem, mountpoint: str = "") -> None:
        super().__init__()
        self.fs = fs
        # thumbnails into the lister's own cache; needs the mount point for the URIs
        self.desktop = DesktopThumbnails(fs.index, fs.chunks, mountpoint, fs.stats, fs.spawn,
                                         fs.thumbs.pngs)
        self._listings: dict[int, Listing] = {}   # directory handle -> who opened it
        self.listings = ListingCache(fs.index.listing_writes)   # replies of whole listings
        self._next_dir_fh = 1
        fs.drop_kernel_cache = _invalidate_soon
        # st_blksize = one block: cp and most tools then write a whole chunk per request
        # instead of eight 128 KiB ones (each also a security.capability getxattr)
        self.io_size = min(fs.block_size, MAX_REQUEST)

    def _entry(self, ino: int, rec: InodeRecord) -> pyfuse3.EntryAttributes:
        self.fs.remember(ino)
        return self._attributes(ino, rec)

    def _attributes(self, ino: int, rec: InodeRecord) -> pyfuse3.EntryAttributes:
        return entry_attributes(ino, rec, self.fs.stored_bytes(ino), self.io_size)

    @_guard
    async def lookup(self, parent_inode, name, ctx=None):
        try:
            ino, rec = self.fs.lookup(parent_inode, name)
        except FsError as exc:
            if exc.errno != errno.ENOENT:
                raise
            # a negative entry the kernel may cache: every create goes through
            # this kernel, which drops the negative entry itself
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0
            negative.entry_timeout = ENTRY_TIMEOUT
            return negative
        return self._entry(ino, rec)

    async def forget(self, inode_list):
        try:
            await self.fs.index.available()
            self.fs.forget(inode_list)
        except Exception:
            log.exception("forget failed")

    @_guard
    async def getattr(self, inode, ctx=None):
        return self._attributes(inode, self.fs.attr(inode))

    @_guard
    async def setattr(self, inode, attr, fields, fh, ctx):
        rec = await self.fs.setattr(
            inode,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            ctime_ns=attr.st_ctime_ns if fields.update_ctime else None)
        return self._attributes(inode, rec)

    @_guard
    async def readlink(self, inode, ctx):
        return self.fs.readlink(inode)

    @_guard
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        return self._entry(*self.fs.mknod(parent_inode, name, mode, rdev, _caller(ctx)))

    @_guard
    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._entry(*self.fs.mkdir(parent_inode, name, mode, _caller(ctx)))

    @_guard
    async def unlink(self, parent_inode, name, ctx):
        self.fs.unlink(parent_inode, name)

    @_guard
    async def rmdir(self, parent_inode, name, ctx):
        self.fs.rmdir(parent_inode, name)

    @_guard
    async def symlink(self, parent_inode, name, target, ctx):
        return self._entry(*self.fs.symlink(parent_inode, name, target, _caller(ctx)))

    @_guard
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self.fs.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    @_guard
    async def link(self, inode, new_parent_inode, new_name, ctx):
        return self._entry(inode, self.fs.link(inode, new_parent_inode, new_name))

    @_guard
    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=await self.fs.open(inode, flags))

    @_guard
    async def create(self, parent_inode, name, mode, flags, ctx):
        fh, ino, rec = self.fs.create(parent_inode, name, mode, flags, _caller(ctx))
        return pyfuse3.FileInfo(fh=fh), self._entry(ino, rec)

    @_guard
    async def read(self, fh, off, size):
        return await self.fs.read(fh, off, size)

    @_guard
    async def write(self, fh, off, buf):
        return await self.fs.write(fh, off, buf)

    @_guard
    async def flush(self, fh):
        await self.fs.flush(fh)

    @_guard
    async def fsync(self, fh, datasync):
        await self.fs.fsync(fh)

    @_guard
    async def release(self, fh):
        await self.fs.release(fh)

    @_guard
    async def opendir(self, inode, ctx):
        self.fs.opendir(inode)
        fh = self._next_dir_fh
        self._next_dir_fh += 1
        self._listings[fh] = Listing(inode, ctx.pid, ctx.uid, ctx.gid)
        return fh

    @_guard
    async def readdir(self, fh, start_id, token):
        listing = self._listings.get(fh)
        if listing is None:
            raise FsError(errno.EBADF)
        # replies without thumbnail work for the lister can come from the listing cache
        cacheable = not is_virtual(listing.ino) and not self.desktop.watches(listing)
        if cacheable and (kept := self.listings.current(listing.ino)) is not None:
            self._reply_kept(kept, start_id, token)
            return
        fill = self.listings.filling(listing.ino, start_id) if cacheable else None
        replied = []
        reply, io_size = pyfuse3.readdir_reply, self.io_size
        at_end, buffers = True, self.fs.buffers
        try:
            for name, ino, rec, cookie, stored in self.fs.readdir(listing.ino, start_id):
                attrs = entry_attributes(ino, rec, stored, io_size)
                if not reply(token, name, attrs, cookie):
                    at_end = False
                    break
                replied.append((name, ino, rec))
                if fill is not None:
                    if buffers and ino in buffers:   # attributes the index does not hold yet
                        self.listings.discard(listing.ino)
                        fill = None
                    else:
                        fill.cookies.append(cookie)
                        fill.entries.append((name, ino, attrs))
        except BaseException:
            self.listings.discard(listing.ino)
            raise
        self.fs.remember_all(ino for _, ino, _ in replied)   # only what the reply carries
        if fill is not None:
            self.listings.filled(listing.ino, fill, at_end)
        # the reply reaches the lister when this returns: thumbnails first
        if replied and not is_virtual(listing.ino):
            await self.desktop.listed(listing, replied)
        elif replied and (view_path := self.fs.view_dir_path(listing.ino)) is not None:
            await self.desktop.listed(listing, replied, view_path)

    def _reply_kept(self, kept: DirListing, start_id: int, token) -> None:
        """A readdir reply from a kept listing; files with an open buffer answered fresh."""
        reply, buffers = pyfuse3.readdir_reply, self.fs.buffers
        cookies, entries = kept.cookies, kept.entries
        first = i = kept.after(start_id)
        for i in range(first, len(entries)):
            name, ino, attrs = entries[i]
            if buffers and ino in buffers:
                attrs = self._attributes(ino, self.fs.attr(ino))
            if not reply(token, name, attrs, cookies[i]):
                break
        else:
            i = len(entries)
        self.fs.remember_all(entries[k][1] for k in range(first, i))

    @_guard
    async def releasedir(self, fh):
        self._listings.pop(fh, None)

    @_guard
    async def fsyncdir(self, fh, datasync):
        await self.fs.chunks.sync()

    @_guard
    async def statfs(self, ctx):
        figures = await self.fs.statfs()
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = figures["bsize"]
        s.f_blocks = figures["blocks"]
        s.f_bfree = figures["bfree"]
        s.f_bavail = figures["bavail"]
        s.f_files = figures["files"]
        s.f_ffree = s.f_favail = figures["ffree"]
        s.f_namemax = figures["namemax"]
        return s

    @_guard
    async def getxattr(self, inode, name, ctx):
        return self.fs.getxattr(inode, name)

    @_guard
    async def setxattr(self, inode, name, value, ctx):
        self.fs.setxattr(inode, name, value)

    @_guard
    async def listxattr(self, inode, ctx):
        return self.fs.listxattr(inode)

    @_guard
    async def removexattr(self, inode, name, ctx):
        self.fs.removexattr(inode, name)

    @_guard
    async def access(self, inode, mode, ctx):
        return True
