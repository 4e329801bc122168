"""A do-nothing pyfuse3 filesystem: the ceiling of any pyfuse3 + trio daemon here.

bench_core measures small-file ingest into it beside gffs and a plain directory:
it answers each request the way gffs must (lookup, create, write, flush, release,
getattr, getxattr) with the least work Python can do, keeping file bytes in a dict.
What it reaches is what the FUSE round trips and the pyfuse3/trio request loop
cost on this machine before a filesystem does anything. Not part of gffs.

    python benchmarks/nullfs.py MOUNTPOINT     # runs until unmounted
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time

import pyfuse3
import trio

ROOT = pyfuse3.ROOT_INODE


class NullFs(pyfuse3.Operations):
    enable_writeback_cache = False

    def __init__(self) -> None:
        super().__init__()
        now = time.time_ns()
        self.attrs: dict[int, pyfuse3.EntryAttributes] = {ROOT: self._attr(ROOT, stat.S_IFDIR | 0o755, now)}
        self.names: dict[tuple[int, bytes], int] = {}
        self.data: dict[int, bytearray] = {}
        self.next_ino = ROOT + 1

    @staticmethod
    def _attr(ino: int, mode: int, now: int) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino, e.st_mode, e.st_nlink = ino, mode, 1
        e.st_uid, e.st_gid = os.getuid(), os.getgid()
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = now
        e.entry_timeout = e.attr_timeout = 1.0
        e.st_blksize = 128 * 1024
        return e

    def _new(self, parent: int, name: bytes, mode: int) -> pyfuse3.EntryAttributes:
        ino, self.next_ino = self.next_ino, self.next_ino + 1
        self.attrs[ino] = e = self._attr(ino, mode, time.time_ns())
        self.names[parent, name] = ino
        return e

    async def lookup(self, parent_inode, name, ctx=None):
        ino = self.names.get((parent_inode, name))
        if ino is None:
            e = pyfuse3.EntryAttributes()
            e.st_ino, e.entry_timeout = 0, 1.0
            return e
        return self.attrs[ino]

    async def getattr(self, inode, ctx=None):
        return self.attrs[inode]

    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._new(parent_inode, name, stat.S_IFDIR | (mode & 0o7777))

    async def create(self, parent_inode, name, mode, flags, ctx):
        e = self._new(parent_inode, name, stat.S_IFREG | (mode & 0o7777))
        self.data[e.st_ino] = bytearray()
        return pyfuse3.FileInfo(fh=e.st_ino), e

    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=inode)

    async def write(self, fh, off, buf):
        data = self.data[fh]
        data[off:off + len(buf)] = buf
        self.attrs[fh].st_size = len(data)
        return len(buf)

    async def read(self, fh, off, size):
        return bytes(self.data[fh][off:off + size])

    async def flush(self, fh):
        pass

    async def release(self, fh):
        pass

    async def getxattr(self, inode, name, ctx):
        raise pyfuse3.FUSEError(errno.ENODATA)

    async def opendir(self, inode, ctx):
        return inode


def main() -> None:
    mountpoint = sys.argv[1]
    pyfuse3.init(NullFs(), mountpoint, ["fsname=nullfs", "default_permissions"])
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
