"""Namespace operations: lookup, attributes, creating, linking, removing and renaming
entries, directory listings. One index write transaction per change."""

from __future__ import annotations

import errno
import stat
from typing import Iterator

from gffs.errors import FsError
from gffs.fs.core import Caller, FsCore, _now
from gffs.fs.sharedthumbs import is_virtual
from gffs.index import ROOT_INO
from gffs.index.namespace import check_name
from gffs.index.records import InodeRecord

LISTED_MAX = 20_000             # "next file in its directory" links kept for read-ahead
LISTING_BATCH = 256             # directory entries read from the index together by readdir
RENAME_NOREPLACE = 1            # Linux renameat2 flags
RENAME_EXCHANGE = 2


class NamespaceOps(FsCore):
    def lookup(self, parent: int, name: bytes) -> tuple[int, InodeRecord]:
        if name not in (b".", b".."):
            check_name(name)
        if is_virtual(parent):
            return self._virtual(parent).lookup(parent, name)
        with self.index.read() as txn:
            prec = self._dir(txn, parent)
            if name == b".":
                ino = parent
            elif name == b"..":
                ino = prec.parent or ROOT_INO
            else:
                found = self.ns.lookup(txn, parent, name)
                if found is None:
                    if self._is_virtual_name(parent, name):
                        return (self.thumbs if parent != ROOT_INO else self.views).lookup(
                            parent, name)
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
            if self.ns.lookup(txn, parent, name) is not None or self._is_virtual_name(parent, name):
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
                    or self._is_virtual_name(new_parent, new_name)):
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
        self.loops.wake_garbage()

    def _child(self, txn, parent: int, name: bytes) -> tuple[InodeRecord, int]:
        """The parent directory's record and the inode *name* points to (ENOENT if none)."""
        prec = self._dir(txn, parent)
        ino = self.ns.lookup(txn, parent, name)
        if ino is None:
            self._refuse_virtual_name(parent, name)
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
            if target is None:
                self._refuse_virtual_name(new_parent, new_name)
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
        self.loops.wake_garbage()

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
            return self._virtual(ino).opendir(ino)
        with self.index.read() as txn:
            self._dir(txn, ino)

    def readdir(self, ino: int, after_cookie: int
                ) -> Iterator[tuple[bytes, int, InodeRecord, int, int | None]]:
        """(name, ino, attributes, cookie, stored bytes) for entries after *after_cookie*:
        what a readdirplus reply carries (stored bytes: st_blocks; None for a virtual entry).

        A directory's .sh_thumbnails and the root's .views are not listed: copies,
        backups and du must not descend into them; they are looked up by name.
        Entries are read :data:`LISTING_BATCH` at a time (a reply takes thousands), each
        batch with a few cursors: a lookup per entry was most of a big listing's cost."""
        if is_virtual(ino):
            for name, child, rec, cookie in self._virtual(ino).readdir(ino, after_cookie):
                yield name, child, rec, cookie, None
            return
        with self.index.read() as txn:
            while True:
                batch = self.ns.listing(txn, ino, after_cookie, LISTING_BATCH)
                stored = self.cm.stored_bytes_of(txn, [child for _, _, child, _ in batch])
                self._remember_order([child for _, _, child, rec in batch
                                      if stat.S_ISREG(rec.mode)])
                buffers = self.buffers
                for (cookie, name, child, rec), st in zip(batch, stored):
                    yield name, child, self._overlay(child, rec) if buffers else rec, cookie, st
                if len(batch) < LISTING_BATCH:
                    return
                after_cookie = batch[-1][0]

    def _remember_order(self, files: list[int]) -> None:
        """Each listed file -> the file listed after it (read-ahead of the next file)."""
        listed = self._next_listed
        for ino in files[:-1]:
            listed.pop(ino, None)      # re-listed: it moves to the recent end
        listed.update(zip(files, files[1:]))
        while len(listed) > LISTED_MAX:
            listed.popitem(last=False)
