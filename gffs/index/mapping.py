"""Give back the index pages a process mapped: MADV_DONTNEED over LMDB's map.

LMDB reads through a read-only shared mapping of data.mdb, so every page a scan
touches stays in the process's RSS (up to data.mdb's size, 435 MB at a million
files) although the kernel holds it in the page cache anyway. ``madvise(
MADV_DONTNEED)`` drops the process's page-table entries of the range: the pages
stay cached, the next read of one is a minor fault, nothing is lost (the map is
shared and read-only; LMDB writes with write(2)). Called every few thousand rows
of a scan that must run in the daemon, it keeps the scan from raising the
daemon's RSS, and so its peak (VmHWM), which a release afterwards cannot lower.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
from pathlib import Path

import lmdb

log = logging.getLogger(__name__)

MADV_DONTNEED = 4
_libc: ctypes.CDLL | None = None


def _madvise() -> ctypes._CFuncPtr | None:
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        except OSError:
            return None
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _libc.madvise.restype = ctypes.c_int
    return _libc.madvise


def map_ranges(data_file: Path) -> list[tuple[int, int]]:
    """(start, end) of this process's mappings of *data_file*, from /proc/self/maps (LMDB's
    ``env.info()["map_addr"]`` is the address of a fixed map only: 0 here)."""
    want = str(data_file.resolve())
    out = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].rstrip("\n") == want:
                    start, end = parts[0].split("-")
                    out.append((int(start, 16), int(end, 16)))
    except OSError:
        pass
    return out


def release(env: lmdb.Environment) -> bool:
    """Drop this process's mapped pages of *env*'s data file; False where not possible."""
    madvise = _madvise()
    ranges = map_ranges(Path(env.path()) / "data.mdb")
    if madvise is None or not ranges:
        return False
    used = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    for start, end in ranges:       # (one map, but only the part the file fills has pages)
        length = min(end - start, used + mmap.PAGESIZE)
        length -= length % mmap.PAGESIZE
        if madvise(start, length, MADV_DONTNEED) != 0:
            log.debug("madvise of the index map failed: errno %d", ctypes.get_errno())
            return False
    return True


class Releaser:
    """For a scan that must run in the daemon: :func:`release` after every *every* rows it
    read (random lookups touch about a page each, so the RSS a scan adds stays near
    *every* pages whatever the index's size)."""

    def __init__(self, env: lmdb.Environment, every: int = 4096) -> None:
        self.env = env
        self.every = every
        self.pending = 0

    def __call__(self, rows: int) -> None:
        self.pending += rows
        if self.pending >= self.every:
            self.pending = 0
            release(self.env)
