"""Honest figures without a mount: per-inode stored blocks (st_blocks) and statfs."""

from __future__ import annotations

import hashlib

import pytest
import trio

from gffs.chunks.store import ChunkStore, StoreCapacity
from gffs.fs.filesystem import Caller, Filesystem
from gffs.fs.statfs import BSIZE, UNBOUNDED_FREE, statfs_figures
from gffs.index import ChunkMap, Index
from gffs.index.env import STORED_BYTES
from gffs.index.records import ChunkRecord, u64
from gffs.placement import Placement
from gffs_backends.local import LocalBackend

from fixtures_s3 import s3_factory

ROOT = Caller(0, 0)


def chunk(data: bytes, stored: int) -> tuple[bytes, ChunkRecord]:
    return hashlib.sha256(data).digest(), ChunkRecord(0, len(data), stored, 1)


def test_stored_blocks_follow_set_and_drop(tmp_path):
    index = Index(tmp_path / "index")
    cm = ChunkMap(index)
    a, ra = chunk(b"a" * 1000, 100)
    b, rb = chunk(b"b" * 1000, 2000)       # stored larger than plain: counts the plaintext
    try:
        with index.write() as txn:
            assert cm.stored_blocks(txn, 7) == (0, 0)
            cm.set_block(txn, 7, 0, a, ra)
            cm.set_block(txn, 7, 5, b, rb)
            cm.set_block(txn, 8, 0, a, ra)          # dedup: counted in each file
            assert cm.stored_blocks(txn, 7) == (2, 1100)
            assert cm.stored_blocks(txn, 8) == (1, 100)
            cm.set_block(txn, 7, 5, a, ra)          # overwrite
            assert cm.stored_blocks(txn, 7) == (2, 200)
            cm.set_block(txn, 7, 0, None)           # becomes a hole
            assert cm.stored_blocks(txn, 7) == (1, 100)
            cm.drop_blocks(txn, 7)
            assert cm.stored_blocks(txn, 7) == (0, 0)
            assert txn.get(u64(7), db=index.db["inodeblocks"]) is None  # no row left behind
    finally:
        index.close()


def test_index_from_before_the_table_counts_by_scan_then_keeps_up(tmp_path):
    index = Index(tmp_path / "index")
    cm = ChunkMap(index)
    a, ra = chunk(b"a" * 1000, 300)
    b, rb = chunk(b"b" * 1000, 400)
    try:
        with index.write() as txn:
            cm.set_block(txn, 9, 0, a, ra)
            cm.set_block(txn, 9, 1, b, rb)
            txn.drop(index.db["inodeblocks"], delete=False)   # as an older gffs left it
            assert cm.stored_blocks(txn, 9) == (2, 700)       # fallback: range read
            cm.set_block(txn, 9, 2, a, ra)                    # first write builds the row
            assert bytes(txn.get(u64(9), db=index.db["inodeblocks"]))
            assert cm.stored_blocks(txn, 9) == (3, 1000)
            cm.drop_blocks(txn, 9, 1)
            assert cm.stored_blocks(txn, 9) == (1, 300)
    finally:
        index.close()


def test_an_older_index_without_the_table_opens_read_only_and_counts(tmp_path):
    index = Index(tmp_path / "index")
    a, ra = chunk(b"a" * 1000, 300)
    with index.write() as txn:
        ChunkMap(index).set_block(txn, 9, 0, a, ra)
        txn.drop(index.db["inodeblocks"], delete=True)        # as an older gffs made it
    index.close()
    ro = Index(tmp_path / "index", readonly=True)
    try:
        with ro.read() as txn:
            assert ChunkMap(ro).stored_blocks(txn, 9) == (1, 300)
    finally:
        ro.close()
    rw = Index(tmp_path / "index")                                # first mount: table made
    try:
        with rw.write() as txn:
            ChunkMap(rw).set_block(txn, 9, 1, a, ra)
            assert ChunkMap(rw).stored_blocks(txn, 9) == (2, 600)
    finally:
        rw.close()


def test_statfs_figures_of_bounded_unbounded_and_unreachable_stores():
    bounded = statfs_figures(StoreCapacity(100 * BSIZE, 40 * BSIZE, 0), stored=5 * BSIZE,
                             logical=0, n_inodes=3)
    assert (bounded["blocks"], bounded["bfree"], bounded["bavail"]) == (100, 40, 40)
    s3 = statfs_figures(StoreCapacity(0, 0, 1), stored=10 * BSIZE + 1, logical=0, n_inodes=3)
    assert s3["bfree"] == s3["bavail"] == UNBOUNDED_FREE // BSIZE
    assert s3["blocks"] - s3["bfree"] == 11                   # used = what gffs stores
    mixed = statfs_figures(StoreCapacity(100 * BSIZE, 40 * BSIZE, 1), stored=2 * BSIZE,
                           logical=0, n_inodes=3)
    assert mixed["bfree"] == 40 + UNBOUNDED_FREE // BSIZE
    assert mixed["blocks"] - mixed["bfree"] == 2
    down = statfs_figures(StoreCapacity(0, 0, 0), stored=3 * BSIZE, logical=0, n_inodes=3)
    assert (down["blocks"], down["bfree"], down["bavail"]) == (3, 0, 0)


def test_statfs_of_an_s3_store_reports_what_it_stores(tmp_path, request):
    """S3 knows no capacity: used is the stored bytes, free the unbounded sentinel."""
    backend = s3_factory(request, tmp_path)
    index = Index(tmp_path / "index")
    fs = Filesystem(index, ChunkStore(index, {"s3": backend}, Placement([backend])))

    async def main():
        await fs.start(0, 0)
        flow = fs.mkdir(1, b"flow", 0o755, ROOT)[0]
        fh, ino, _ = fs.create(flow, b"f", 0o644, 0o2, ROOT)
        await fs.write(fh, 0, bytes(range(256)) * 9000)
        await fs.flush(fh)
        await fs.release(fh)
        return await fs.statfs()
    try:
        figures = trio.run(main)
        with index.read() as txn:
            stored = index.counter(txn, STORED_BYTES)
        assert stored > 0
        assert figures["bfree"] == figures["bavail"] == UNBOUNDED_FREE // BSIZE
        assert figures["blocks"] - figures["bfree"] == -(-stored // BSIZE)
    finally:
        index.close()
