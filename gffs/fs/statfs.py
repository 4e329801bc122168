"""What statfs (df) reports: the figures the backends know, nothing made up.

Bounded backends (local disks, an IPFS repo with StorageMax, a Drive quota) report
total and free; their sum is what df shows, as for any filesystem on those disks.
A backend without a limit (S3, an unlimited Drive) has no free figure to report. The
used figure is then what gffs itself stores (one copy of every chunk, compressed,
deduplicated: exact, from the index counter), and free is the bounded backends' free
plus UNBOUNDED_FREE, a sentinel: zero would make file managers refuse every copy
("not enough space"), and a plausible number (the old "1 TiB") reads as a real limit
that never shrinks. 1 EiB cannot be mistaken for a disk: df shows ``1.0E`` available.
When no backend answers at all, nothing can be written now: free is 0.
"""

from __future__ import annotations

from gffs.chunks.store import StoreCapacity

BSIZE = 4096
UNBOUNDED_FREE = 1 << 60   # bytes; "no known limit" (df: 1.0E)
MIN_FREE_INODES = 1 << 20


def statfs_figures(cap: StoreCapacity, *, stored: int, logical: int,
                   n_inodes: int) -> dict[str, int]:
    """Block and inode figures for statvfs, in BSIZE blocks."""
    if cap.unbounded or not cap.total:
        free = cap.free + (UNBOUNDED_FREE if cap.unbounded else 0)
        free_blocks = free // BSIZE
        blocks = -(-stored // BSIZE) + free_blocks
    else:
        free_blocks = cap.free // BSIZE
        blocks = cap.total // BSIZE
    free_inodes = max(free_blocks, MIN_FREE_INODES)
    return {"bsize": BSIZE, "blocks": blocks, "bfree": free_blocks, "bavail": free_blocks,
            "files": n_inodes + free_inodes, "ffree": free_inodes, "namemax": 255,
            "logical": logical, "stored": stored}
