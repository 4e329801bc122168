"""Index.releaser drops the index pages a scan mapped from the process's RSS (MADV_DONTNEED
over LMDB's map): the data reads the same afterwards, and the scan's RSS growth stays
bounded by the release interval, not by the index's size."""

from __future__ import annotations

import os
from pathlib import Path

from gffs.index import Index
from gffs.index.mapping import map_ranges, release


def rss_file_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile:"))


def filled(tmp_path: Path, n: int = 60_000) -> Index:
    index = Index(tmp_path / "index")
    with index.env.begin(write=True) as txn:   # about 40 MB of values
        for i in range(n):
            txn.put(b"%08d" % i, os.urandom(600), db=index.db["xattrs"])
    return index


def scan(index: Index, release_every: int | None = None) -> tuple[int, int]:
    """(rows, the largest RssFile growth seen during a full scan) in kB."""
    base, peak, rows = rss_file_kb(), 0, 0
    releaser = index.releaser(release_every) if release_every else None
    with index.env.begin() as txn:
        for _k, _v in txn.cursor(db=index.db["xattrs"]):
            rows += 1
            if releaser is not None:
                releaser(1)
            if rows % 1000 == 0:
                peak = max(peak, rss_file_kb() - base)
    return rows, peak


def test_release_drops_the_mapped_pages_and_the_data_reads_the_same(tmp_path):
    index = filled(tmp_path)
    try:
        assert map_ranges(tmp_path / "index" / "data.mdb")
        with index.env.begin() as txn:
            before = list(txn.cursor(db=index.db["xattrs"]))
        release(index.env)
        rows, grown = scan(index)
        assert rows == 60_000 and grown > 20_000, grown     # the scan mapped ~40 MB
        mapped = rss_file_kb()
        assert release(index.env)
        assert rss_file_kb() < mapped - 20_000
        with index.env.begin() as txn:
            assert list(txn.cursor(db=index.db["xattrs"])) == before
    finally:
        index.close()


def test_a_scan_with_a_releaser_stays_small(tmp_path):
    index = filled(tmp_path)
    try:
        release(index.env)
        rows, grown = scan(index, release_every=2000)       # ~1.2 MB of rows between releases
        assert rows == 60_000 and grown < 10_000, grown
    finally:
        index.close()
