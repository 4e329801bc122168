"""lazyfs: a passthrough FUSE filesystem that loses unsynced file data at a "power cut".

Run as its own process (``python tests/lazyfs.py BACKING MOUNTPOINT``; :class:`LazyFS` starts
and stops it for tests). Every request is passed to the backing directory, except file data:
written bytes are kept in memory per inode (a map of 4 KiB pages over the backing file) and
reach the backing file only on fsync/fdatasync of that file or on a clean unmount. Reads and
``stat`` see the pending data. :meth:`LazyFS.cut` is the power cut: SIGKILL of the process,
so every pending page is gone, the kernel answers ENOTCONN to everything still using the
mount, and the backing directory holds exactly what a disk would after the crash.

What it models, honestly:
- *Data loss, not metadata loss.* create, mkdir, rename, unlink, link, symlink, mknod, chmod,
  chown, utimens and truncate go to the backing directory at once and survive the cut, as if
  every directory had been fsynced. A chunk file renamed into place without an fsync of its
  data is therefore present but empty (or short) after the cut: the ext4 ``data=ordered``
  outcome. Losing a rename or a create is not modelled.
- Stricter than a kernel: nothing is ever written back in the background (ext4 would after
  ~30 s), so every unsynced byte is lost, however old.
- No sync(2)/syncfs (FUSE has no request for them; gffs uses neither).
- Shared mmap works (no direct_io; the kernel's page cache stays coherent because every
  write passes through this process, and open() drops the cache); LMDB's read-only map of
  data.mdb and its writable lock.mdb map work (tests/test_power_loss.py checks LMDB on it).
  Dirty mmap pages arrive as ordinary WRITEs: they are pending until fsync, like the rest.
- flock and POSIX locks are kept by the kernel (pyfuse3 does not ask for FUSE lock requests),
  which is correct for processes of one machine. No xattrs (ENOSYS), no RENAME_EXCHANGE.
- After the cut, descriptors still open on the dead mount can read pages the kernel had
  cached (every request fails with ENOTCONN): kill the programs using it first, as
  tests/test_power_loss.py does with the gffs daemon.
- Requests are served one at a time on the trio thread with blocking syscalls: slow, simple.
"""

from __future__ import annotations

import errno
import functools
import inspect
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

PAGE = 4096


def _fuse_main(backing: str, mountpoint: str) -> None:
    import pyfuse3
    import trio
    from pyfuse3 import FUSEError

    def guard(handler):
        """Every failure leaves a handler as an errno (a traceback would be EIO)."""
        @functools.wraps(handler)
        async def guarded(*args):
            try:
                return await handler(*args)
            except OSError as exc:
                raise FUSEError(exc.errno or errno.EIO) from None
            except KeyError:  # an inode or handle this process never handed out
                raise FUSEError(errno.ENOENT) from None
        return guarded

    class Pending:
        """A file's written-but-unsynced data: logical size plus the pages that differ."""

        def __init__(self, size: int) -> None:
            self.size = size
            self.pages: dict[int, bytearray] = {}

        def page(self, fd: int, p: int) -> bytearray:
            if p not in self.pages:
                base = os.pread(fd, PAGE, p * PAGE)
                self.pages[p] = bytearray(base.ljust(PAGE, b"\0"))
            return self.pages[p]

        def write(self, fd: int, off: int, buf: bytes) -> None:
            pos = 0
            while pos < len(buf):
                p, inner = divmod(off + pos, PAGE)
                n = min(PAGE - inner, len(buf) - pos)
                self.page(fd, p)[inner:inner + n] = buf[pos:pos + n]
                pos += n
            self.size = max(self.size, off + len(buf))

        def read(self, fd: int, off: int, size: int) -> bytes:
            end = min(off + size, self.size)
            if off >= end:
                return b""
            out = bytearray(os.pread(fd, end - off, off).ljust(end - off, b"\0"))
            for p in range(off // PAGE, (end - 1) // PAGE + 1):
                page = self.pages.get(p)
                if page is not None:
                    lo, hi = max(off, p * PAGE), min(end, (p + 1) * PAGE)
                    out[lo - off:hi - off] = page[lo - p * PAGE:hi - p * PAGE]
            return bytes(out)

        def truncate(self, length: int) -> None:
            for p in [p for p in self.pages if p * PAGE >= length]:
                del self.pages[p]
            p, inner = divmod(length, PAGE)
            if p in self.pages:
                self.pages[p][inner:] = bytes(PAGE - inner)
            self.size = length

        def flush_to(self, fd: int) -> None:
            for p in sorted(self.pages):
                n = min(PAGE, self.size - p * PAGE)
                if n > 0:
                    os.pwrite(fd, self.pages[p][:n], p * PAGE)
            os.ftruncate(fd, self.size)
            self.pages.clear()

    class LazyOps(pyfuse3.Operations):
        def __init__(self) -> None:
            super().__init__()
            self.root_ino = os.lstat(backing).st_ino
            self.paths: dict[int, bytes] = {pyfuse3.ROOT_INODE: os.fsencode(backing)}
            self.pending: dict[int, Pending] = {}
            self.files: dict[int, tuple[int, int]] = {}  # fh -> (ino, backing fd)

        # inodes and attributes ------------------------------------------------------
        def _ino(self, st: os.stat_result) -> int:
            return pyfuse3.ROOT_INODE if st.st_ino == self.root_ino else st.st_ino

        def _fd_of(self, ino: int) -> int | None:
            return next((fd for i, fd in self.files.values() if i == ino), None)

        def _stat(self, ino: int) -> os.stat_result:
            try:
                st = os.lstat(self.paths[ino])
                if self._ino(st) == ino:
                    return st
            except (KeyError, FileNotFoundError):
                pass
            fd = self._fd_of(ino)  # unlinked or moved away but still open
            if fd is None:
                raise FUSEError(errno.ENOENT)
            return os.fstat(fd)

        def _attrs(self, st: os.stat_result) -> "pyfuse3.EntryAttributes":
            a = pyfuse3.EntryAttributes()
            a.st_ino = self._ino(st)
            for f in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size",
                      "st_blksize", "st_blocks", "st_atime_ns", "st_mtime_ns", "st_ctime_ns"):
                setattr(a, f, getattr(st, f))
            if a.st_ino in self.pending:
                a.st_size = self.pending[a.st_ino].size
            a.attr_timeout = a.entry_timeout = 5
            return a

        def _entry(self, path: bytes, fresh: bool = False) -> "pyfuse3.EntryAttributes":
            st = os.lstat(path)
            ino = self._ino(st)
            self.paths[ino] = path
            if fresh:  # a new inode may reuse the number of a deleted one
                self.pending.pop(ino, None)
            return self._attrs(st)

        def _child(self, parent: int, name: bytes) -> bytes:
            return os.path.join(self.paths[parent], name)

        def _dropped_link(self, st: os.stat_result | None) -> None:
            """An entry of *st*'s inode went away: forget its data when that was the last."""
            if st is not None and not stat.S_ISDIR(st.st_mode) and st.st_nlink <= 1:
                if self._fd_of(self._ino(st)) is None:
                    self.pending.pop(self._ino(st), None)

        async def lookup(self, parent, name, ctx):
            return self._entry(self._child(parent, name))

        async def getattr(self, inode, ctx):
            return self._attrs(self._stat(inode))

        async def setattr(self, inode, attr, fields, fh, ctx):
            path = self.paths[inode]
            if fields.update_size:
                os.truncate(self.files[fh][1] if fh in self.files else path, attr.st_size)
                if inode in self.pending:
                    self.pending[inode].truncate(attr.st_size)
            if fields.update_mode:
                os.chmod(path, stat.S_IMODE(attr.st_mode))
            if fields.update_uid or fields.update_gid:
                os.lchown(path, attr.st_uid if fields.update_uid else -1,
                          attr.st_gid if fields.update_gid else -1)
            if fields.update_atime or fields.update_mtime:
                st = os.lstat(path)
                os.utime(path, ns=(attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                                   attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns),
                         follow_symlinks=False)
            return self._attrs(self._stat(inode))

        # namespace: applied to the backing directory at once --------------------------
        async def readlink(self, inode, ctx):
            return os.readlink(self.paths[inode])

        def _make(self, parent: int, name: bytes, ctx, make) -> "pyfuse3.EntryAttributes":
            path = self._child(parent, name)
            make(path)
            os.lchown(path, ctx.uid, ctx.gid)
            return self._entry(path, fresh=True)

        async def mknod(self, parent, name, mode, rdev, ctx):
            return self._make(parent, name, ctx, lambda p: os.mknod(p, mode, rdev))

        async def mkdir(self, parent, name, mode, ctx):
            return self._make(parent, name, ctx, lambda p: os.mkdir(p, mode))

        async def symlink(self, parent, name, target, ctx):
            return self._make(parent, name, ctx, lambda p: os.symlink(target, p))

        async def link(self, inode, new_parent, new_name, ctx):
            path = self._child(new_parent, new_name)
            os.link(self.paths[inode], path, follow_symlinks=False)
            return self._entry(path)

        async def unlink(self, parent, name, ctx):
            path = self._child(parent, name)
            st = os.lstat(path)
            os.unlink(path)
            self._dropped_link(st)

        async def rmdir(self, parent, name, ctx):
            os.rmdir(self._child(parent, name))

        async def rename(self, parent_old, name_old, parent_new, name_new, flags, ctx):
            if flags:
                raise FUSEError(errno.EINVAL)
            old, new = self._child(parent_old, name_old), self._child(parent_new, name_new)
            replaced = os.lstat(new) if os.path.lexists(new) else None
            os.replace(old, new)
            self._dropped_link(replaced)
            for ino, path in list(self.paths.items()):  # the entry and, for a dir, its subtree
                if path == old or path.startswith(old + b"/"):
                    self.paths[ino] = new + path[len(old):]

        # directories --------------------------------------------------------------------
        async def opendir(self, inode, ctx):
            return inode

        async def readdir(self, fh, start_id, token):
            names = sorted(os.listdir(self.paths[fh]))
            for i, name in enumerate(names[start_id:], start=start_id + 1):
                try:
                    attrs = self._entry(os.path.join(self.paths[fh], name))
                except FileNotFoundError:
                    continue
                if not pyfuse3.readdir_reply(token, name, attrs, i):
                    break

        async def statfs(self, ctx):
            v = os.statvfs(backing)
            s = pyfuse3.StatvfsData()
            for f in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                      "f_ffree", "f_favail", "f_namemax"):
                setattr(s, f, getattr(v, f))
            return s

        # file data: pending in memory until fsync ----------------------------------------
        async def open(self, inode, flags, ctx):
            fd = os.open(self.paths[inode], os.O_RDWR)  # whatever was asked: writes need reads
            self.files[fd] = (inode, fd)
            return pyfuse3.FileInfo(fh=fd)

        async def create(self, parent, name, mode, flags, ctx):
            path = self._child(parent, name)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | (flags & os.O_EXCL), mode)
            os.fchown(fd, ctx.uid, ctx.gid)
            attrs = self._entry(path, fresh=True)
            self.files[fd] = (attrs.st_ino, fd)
            return pyfuse3.FileInfo(fh=fd), attrs

        async def read(self, fh, off, size):
            ino, fd = self.files[fh]
            if ino in self.pending:
                return self.pending[ino].read(fd, off, size)
            return os.pread(fd, size, off)

        async def write(self, fh, off, buf):
            ino, fd = self.files[fh]
            if ino not in self.pending:
                self.pending[ino] = Pending(os.fstat(fd).st_size)
            self.pending[ino].write(fd, off, buf)
            return len(buf)

        async def fsync(self, fh, datasync):
            ino, fd = self.files[fh]
            if ino in self.pending:
                self.pending[ino].flush_to(fd)
                del self.pending[ino]
            os.fdatasync(fd) if datasync else os.fsync(fd)

        async def flush(self, fh):
            return None  # close() makes nothing durable

        async def release(self, fh):
            ino, fd = self.files.pop(fh)
            try:
                if os.fstat(fd).st_nlink == 0 and self._fd_of(ino) is None:
                    self.pending.pop(ino, None)  # last close of an unlinked file
            finally:
                os.close(fd)

        def sync_all(self) -> None:
            """Clean unmount: every pending page reaches the backing files."""
            for ino, pend in list(self.pending.items()):
                try:
                    fd = os.open(self.paths[ino], os.O_RDWR)
                except (KeyError, OSError):
                    continue
                try:
                    if self._ino(os.fstat(fd)) == ino:
                        pend.flush_to(fd)
                        os.fsync(fd)
                finally:
                    os.close(fd)
            self.pending.clear()

    for name, handler in list(vars(LazyOps).items()):
        if inspect.iscoroutinefunction(handler):
            setattr(LazyOps, name, guard(handler))
    ops = LazyOps()
    pyfuse3.init(ops, mountpoint, set(pyfuse3.default_options) | {"fsname=lazyfs"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)
        ops.sync_all()


def _mounted(mountpoint: Path) -> bool:
    target = os.fsencode(os.path.realpath(mountpoint))
    with open("/proc/self/mountinfo", "rb") as f:
        return any(line.split()[4] == target and b" - fuse" in line for line in f)


class LazyFS:
    """One lazyfs process: ``start()``, ``cut()`` (power loss), ``stop()`` (clean)."""

    def __init__(self, backing: Path, mountpoint: Path) -> None:
        self.backing, self.mountpoint = backing, mountpoint
        self.log = backing.with_name(backing.name + "-lazyfs.log")  # its stderr
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "LazyFS":
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, __file__, str(self.backing),
                                          str(self.mountpoint)], stderr=log)
        deadline = time.monotonic() + timeout
        while not _mounted(self.mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.cut()
                raise RuntimeError(f"lazyfs did not mount {self.mountpoint}:\n{self.log_tail()}")
            time.sleep(0.05)
        return self

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def cut(self) -> None:
        """Power cut: the process dies with every unsynced page; the dead mount is cleared.
        Raises if lazyfs had died by itself (a harness bug must not pass for a power cut)."""
        died = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
            elif self.proc.returncode != 0:
                died = self.proc.returncode
            self.proc.wait(60)
            self.proc = None
        if _mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True)
        if died is not None:
            raise RuntimeError(f"lazyfs had exited by itself ({died}):\n{self.log_tail()}")

    def stop(self) -> None:
        """Clean unmount: pending data is written to the backing files first."""
        if self.proc is not None and self.proc.poll() is None:
            subprocess.run(["fusermount3", "-u", str(self.mountpoint)], capture_output=True)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
        self.cut()


if __name__ == "__main__":
    _fuse_main(os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2]))
