"""The staging area on real mounts: close() of a file stored on S3 returns once its
chunks are on local disk; the upload queue puts them on S3 afterwards, also after a
kill -9; a small area makes writers wait for S3 instead of growing past its bound.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures_s3 import TEST_REGION
from gffs.index import ChunkMap, Index
from gffs.placement.policy import STAGING as STAGED

pytestmark = pytest.mark.usefixtures("s3_env")


def _config(path: Path, endpoint: str, buckets: list[str], staging_mb: int = 64) -> Path:
    path.write_text(f"""
[store]
analyze_images = false
staging_mb = {staging_mb}
backend_retry_max = 2

[backends.s3]
type = "s3"
buckets = {json.dumps(buckets)}
endpoint_url = "{endpoint}"
region = "{TEST_REGION}"
timeout = 4
optional = true        # some tests mount while S3 is unreachable

[placement]
copies = 1
backends = ["s3"]
""")
    return path


def _locations(data_dir: Path) -> dict[bytes, list[str]]:
    index = Index(data_dir / "index", readonly=True)
    try:
        with index.read() as txn:
            return {d: sorted(loc.backend for loc in rec.locations)
                    for d, rec in ChunkMap(index).all_chunks(txn)}
    finally:
        index.close()


def _staged_bytes(data_dir: Path) -> int:
    """Bytes of staged chunks (the staging area's layout marker is no chunk)."""
    return sum(f.stat().st_size for f in (data_dir / "staging" / "chunks").rglob("*")
               if f.is_file())


def _files(n: int, seed: int) -> dict[str, bytes]:
    rnd = random.Random(seed)
    return {f"f{i:03d}.jpg": b"\xff\xd8\xff\xe0" + rnd.randbytes(rnd.randint(1_000, 2_500_000))
            for i in range(n)}


def _wait_uploaded(data_dir: Path, mount, timeout: float = 90) -> dict[bytes, list[str]]:
    deadline = time.monotonic() + timeout
    while True:
        locs = _locations(data_dir)
        if locs and all(v == ["s3"] for v in locs.values()) and not _staged_bytes(data_dir):
            return locs
        assert time.monotonic() < deadline, f"uploads did not finish: {locs}\n{mount.log_tail()}"
        time.sleep(0.5)


def test_close_returns_while_s3_is_unreachable_and_uploads_resume_after_kill9(
        tmp_path, fault_proxy, mount_factory, s3_buckets):
    """Every connection to S3 is reset while the files are written: each close()
    still succeeds (the chunks are staged and recorded), reads are served from the
    staging area, and after a kill -9 the next mount uploads everything to S3 and
    drops the staged copies. Without staging an S3-only store gives EIO here."""
    proxy = fault_proxy(slowdown=0, reset=1.0, delay=0)
    m = mount_factory(config=_config(tmp_path / "gffs.toml", proxy.url, s3_buckets(2)))
    files = _files(8, seed=2)
    (m.path / "flow").mkdir()
    for name, data in files.items():
        with open(m.path / "flow" / name, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())            # durable on local disk, S3 unreachable
    for name, data in files.items():
        assert (m.path / "flow" / name).read_bytes() == data
    assert all(STAGED in v for v in _locations(m.data_dir).values())
    fsck = subprocess.run([sys.executable, "-m", "gffs.cli.admin", "--data-dir", str(m.data_dir),
                           "fsck", "--json"], capture_output=True, text=True, timeout=300)
    kinds = {f["kind"] for f in json.loads(fsck.stdout)["findings"]}
    assert "location_unknown_backend" not in kinds, fsck.stdout   # a staged copy is no stray
    m.kill9()
    proxy.rates["reset"] = 0.0                 # S3 is back
    m.mount()
    _wait_uploaded(m.data_dir, m)
    m.remount()
    for name, data in files.items():
        assert (m.path / "flow" / name).read_bytes() == data
    assert proxy.injected["reset"] > 0 and proxy.injected["forward"] > 0


def test_full_staging_area_slows_writers_instead_of_growing(tmp_path, fault_proxy,
                                                           mount_factory, s3_buckets):
    """A 2 MiB staging area and an S3 that answers every request after 0.3 s: 12 files
    (up to 2.5 MiB each) are written without an error, the area never holds more than
    its bound plus one chunk, and everything ends up on S3."""
    proxy = fault_proxy(slowdown=0, reset=0, delay=1.0, delay_s=0.3)
    m = mount_factory(config=_config(tmp_path / "gffs.toml", proxy.url, s3_buckets(1),
                                     staging_mb=2))
    files = _files(12, seed=3)
    (m.path / "flow").mkdir()
    peak = 0
    for name, data in files.items():
        (m.path / "flow" / name).write_bytes(data)
        peak = max(peak, _staged_bytes(m.data_dir))
    assert peak <= (2 << 20) + (1 << 20) + 64, peak
    _wait_uploaded(m.data_dir, m)
    proxy.enabled = False
    m.remount()
    for name, data in files.items():
        assert (m.path / "flow" / name).read_bytes() == data


def test_duplicate_ingest_sends_no_request_to_s3(tmp_path, fault_proxy, mount_factory,
                                                 s3_buckets):
    """Dedup is decided from the index: copying files whose chunks are stored already
    (into another flow) costs no PUT, no HEAD, no request to S3 at all."""
    proxy = fault_proxy(slowdown=0, reset=0, delay=0)
    m = mount_factory(config=_config(tmp_path / "gffs.toml", proxy.url, s3_buckets(1)))
    files = _files(6, seed=4)
    for flow in ("one", "two"):
        (m.path / flow).mkdir()
    for name, data in files.items():
        (m.path / "one" / name).write_bytes(data)
    _wait_uploaded(m.data_dir, m)
    before = sum(proxy.injected.values())
    for name, data in files.items():
        (m.path / "two" / name).write_bytes(data)
    time.sleep(2)        # an upload, had one been queued, starts at once
    assert sum(proxy.injected.values()) == before, proxy.injected
    for name, data in files.items():
        assert (m.path / "two" / name).read_bytes() == data


def test_clean_unmount_right_after_writes_leaves_no_staged_copy(tmp_path, fault_proxy,
                                                                mount_factory, s3_buckets):
    """Staged copies of uploaded chunks wait for the periodic commit before they go;
    a clean unmount just after the writes must still upload everything and delete
    every staged copy (not leave them for the next mount's stray sweep)."""
    proxy = fault_proxy(slowdown=0, reset=0, delay=0)
    m = mount_factory(config=_config(tmp_path / "gffs.toml", proxy.url, s3_buckets(1)))
    files = _files(10, seed=5)
    (m.path / "flow").mkdir()
    for name, data in files.items():
        (m.path / "flow" / name).write_bytes(data)
    m.unmount()
    locs = _locations(m.data_dir)
    assert locs and all(v == ["s3"] for v in locs.values()), locs
    assert _staged_bytes(m.data_dir) == 0
    m.mount()
    for name, data in files.items():
        assert (m.path / "flow" / name).read_bytes() == data
