"""A read-only mount (-o ro) writes nothing: not to the index, not to any backend.

The store is prepared with work a read-write daemon would do at once: a chunk in the
garbage queue (its copies still on both backends) and a chunk queued for repair (its
copy on one backend lost). Mounted -o ro, every file is read, the repair interval
passes a few times, and every writing gffs-admin job is asked for over the control
socket; afterwards the index (LMDB transaction id, data file mtime) and both backends
(every file, size and mtime) are exactly as before.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gffs.exitcodes import EXIT_REFUSED
from gffs.fs.filesystem import REPAIR_INTERVAL
from gffs.index import ChunkMap, Index, Namespace, ROOT_INO
from gffs_backends.local import chunk_path
from mountutil import FUSE_AVAILABLE, SKIP_REASON

pytestmark = pytest.mark.skipif(not FUSE_AVAILABLE, reason=SKIP_REASON)

FILES = {f"f{i}.jpg": os.urandom(200_000 + i) for i in range(3)}


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def index_state(data_dir: Path) -> tuple[int, int, int, int]:
    """(last txn id, data.mdb mtime, garbage rows, repair rows)."""
    index = Index(data_dir / "index", readonly=True)
    try:
        cm = ChunkMap(index)
        with index.read() as txn:
            counts = len(cm.garbage(txn)), cm.repair_count(txn)
        return (index.env.info()["last_txnid"],
                (data_dir / "index" / "data.mdb").stat().st_mtime_ns, *counts)
    finally:
        index.close()


def admin(m, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gffs.cli.admin", "--config", str(m.config),
                           "--data-dir", str(m.data_dir), *args], capture_output=True, text=True,
                          timeout=120)


def queue_work(data_dir: Path, backends: Path) -> None:
    """gone.jpg's chunk to garbage; f0.jpg's copy on b lost and queued for repair."""
    index = Index(data_dir / "index")
    try:
        ns, cm = Namespace(index), ChunkMap(index)
        with index.write() as txn:
            flow = ns.lookup(txn, ROOT_INO, b"flow")
            gone = ns.lookup(txn, flow, b"gone.jpg")
            cm.set_block(txn, gone, 0, None)            # unreferenced: the row goes to garbage
            f0 = ns.lookup(txn, flow, b"f0.jpg")
            digest = cm.block(txn, f0, 0)
            rec = cm.chunk(txn, digest)
            cm.set_locations(txn, digest, [loc for loc in rec.locations if loc.backend != "b"])
            cm.queue_repair(txn, digest, "flow", restore=["b"])
    finally:
        index.close()
    chunk_path(backends / "b" / "chunks", digest.hex()).unlink()


def test_read_only_mount_writes_nothing(tmp_path, mount_factory):
    backends = tmp_path / "backends"
    cfg = tmp_path / "gffs.toml"
    cfg.write_text(f'[store]\nbackend_retry_max = 2\n\n'
                   f'[backends.a]\ntype = "local"\npath = "{backends / "a"}"\n\n'
                   f'[backends.b]\ntype = "local"\npath = "{backends / "b"}"\n\n'
                   f'[placement]\ncopies = 2\nbackends = ["a", "b"]\n')
    m = mount_factory(config=cfg)
    (m.path / "flow").mkdir()
    for name, data in {**FILES, "gone.jpg": os.urandom(300_000)}.items():
        (m.path / "flow" / name).write_bytes(data)
    m.unmount()
    queue_work(m.data_dir, backends)
    before = index_state(m.data_dir), tree(backends)
    assert before[0][2:] == (1, 1)                     # one garbage row, one repair row

    m.opts = ["ro"]
    m.mount()
    for name, data in FILES.items():
        assert (m.path / "flow" / name).read_bytes() == data
    for job in (["gc"], ["rebalance"], ["fsck", "--repair"], ["fsck", "--incremental"],
                ["index", "backup"], ["backend", "drain", "a"]):
        res = admin(m, *job)
        assert res.returncode == EXIT_REFUSED, (job, res.stderr)
        assert "read-only" in res.stderr and len(res.stderr.strip().splitlines()) == 1, job
    check = admin(m, "fsck", "--json")                 # read-only jobs still work
    assert check.returncode in (0, 1) and '"found"' in check.stdout, check.stderr
    assert admin(m, "status").returncode == 0
    time.sleep(2 * REPAIR_INTERVAL + 2)                # the repair loop would have run by now
    m.unmount()
    assert (index_state(m.data_dir), tree(backends)) == before
