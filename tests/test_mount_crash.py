"""kill -9 of the daemon at any moment of an ingest: closed files survive, nothing dangles.

close() commits a file to the index, so every file whose close() returned before the
kill must come back byte for byte on the next mount — with no repair step — and the
index must never reference a chunk whose bytes are missing.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from gffs.index import ChunkMap, Index
from gffs.index.records import from_u64
from gffs_backends.local import chunk_path
from mountutil import Mount

KIB, MIB = 1 << 10, 1 << 20


def sizes(rng: random.Random, n: int) -> list[int]:
    """Log-uniform between 1 KiB and 3 MiB: many small files, some crossing blocks."""
    return [int(KIB * (3 * KIB) ** rng.random()) for _ in range(n)]


def write_file(path: Path, data: bytes, piece: int = 256 * KIB, fsync: bool = False) -> None:
    with open(path, "wb", buffering=0) as f:
        for off in range(0, len(data), piece):
            f.write(data[off:off + piece])
        if fsync:
            os.fsync(f.fileno())


def verify_closed(flow: Path, closed: dict[str, bytes]) -> None:
    listing = set(os.listdir(flow))
    missing = sorted(set(closed) - listing)
    assert not missing, f"closed files missing after the crash: {missing}"
    for name, data in closed.items():
        got = (flow / name).read_bytes()
        assert len(got) == len(data), f"{name}: {len(got)} bytes, expected {len(data)}"
        assert got == data, f"{name}: content differs after the crash"


def read_all(flow: Path) -> None:
    """Every file that exists, finished or not, reads without an error."""
    for dirpath, _dirs, files in os.walk(flow):
        for name in files:
            p = Path(dirpath) / name
            with open(p, "rb") as f:
                while f.read(4 * MIB):
                    pass
            os.stat(p)


def check_index(m: Mount) -> None:
    """Unmounted store: every block's chunk has a record, every record's file exists,
    refcounts equal the number of blocks pointing at each chunk."""
    assert not m.is_mounted()
    idx = Index(m.data_dir / "index", readonly=True)
    try:
        cm = ChunkMap(idx)
        with idx.read() as txn:
            records = dict(cm.all_chunks(txn))
            refs: Counter[bytes] = Counter()
            for key, digest in txn.cursor(db=idx.db["blocks"]):
                refs[bytes(digest)] += 1
                assert bytes(digest) in records, (
                    f"block (ino {from_u64(key[:8])}, #{from_u64(key[8:])}) references chunk "
                    f"{bytes(digest).hex()} that has no record")
            garbage = [bytes(k) for k, _ in txn.cursor(db=idx.db["garbage"])]
        for digest, rec in records.items():
            h = digest.hex()
            assert rec.locations, f"chunk {h} has no location"
            for loc in rec.locations:
                assert loc.backend == "local", loc
                f = chunk_path(m.data_dir / "local" / "chunks", h)
                assert f.is_file(), f"chunk {h} is referenced but its file {f} is missing"
                assert f.stat().st_size == rec.stored_size, f"chunk {h}: stored size differs"
            assert rec.refcount == refs[digest], (
                f"chunk {h}: refcount {rec.refcount} but {refs[digest]} blocks reference it")
        assert not garbage, f"{len(garbage)} garbage rows left after a clean unmount"
    finally:
        idx.close()


def test_kill9_at_fixed_points_of_an_ingest(mounted):
    rng = random.Random(1234)
    flow = mounted.path / "ingest"
    flow.mkdir()
    closed: dict[str, bytes] = {}
    kill_after = {5, 20, 45}
    for i, size in enumerate(sizes(rng, 60), start=1):
        name = f"img{i:03d}.raw"
        data = rng.randbytes(size)
        write_file(flow / name, data)
        closed[name] = data
        if i in kill_after:
            mounted.kill9()
            assert not mounted.is_mounted()
            mounted.mount()  # no repair step: it just mounts
            verify_closed(flow, closed)
    verify_closed(flow, closed)
    mounted.remount()
    verify_closed(flow, closed)
    mounted.unmount()
    check_index(mounted)
    mounted.mount()
    assert "Traceback" not in mounted.log_text()


class Ingest(threading.Thread):
    """Writes files in the background; records exactly which ones were fully closed."""

    def __init__(self, flow: Path, seed: int, prefix: str, large_every: int = 5) -> None:
        super().__init__(daemon=True)
        self.large_every = large_every
        self.flow, self.rng, self.prefix = flow, random.Random(seed), prefix
        self.closed: dict[str, bytes] = {}
        self.started_names: list[str] = []
        self.stop = threading.Event()
        self.mid_large = threading.Event()     # a large file is being written
        self.closing_large = threading.Event() # a large file's close() has been called
        self.error: BaseException | None = None

    def run(self) -> None:
        i = 0
        try:
            while not self.stop.is_set():
                i += 1
                large = bool(self.large_every) and i % self.large_every == 0
                size = self.rng.randint(18 * MIB, 30 * MIB) if large else sizes(self.rng, 1)[0]
                name = f"{self.prefix}{i:04d}.raw"
                data = self.rng.randbytes(size)
                self.started_names.append(name)
                f = open(self.flow / name, "wb", buffering=0)
                try:
                    for off in range(0, size, 512 * KIB):
                        f.write(data[off:off + 512 * KIB])
                        if large and off >= 3 * MIB:
                            self.mid_large.set()
                finally:
                    if large:
                        self.closing_large.set()
                    f.close()
                self.closed[name] = data
        except OSError:
            pass  # the daemon died under us: expected
        except BaseException as exc:  # pragma: no cover - reported by the test
            self.error = exc


@pytest.mark.parametrize("moment,seed", [("random", 1), ("random", 2), ("random", 3),
                                         ("small_files", 6), ("small_files", 7),
                                         ("mid_large_write", 4), ("during_close", 5)])
def test_kill9_while_writing(mounted, moment, seed):
    flow = mounted.path / "live"
    flow.mkdir()
    rng = random.Random(seed)
    all_closed: dict[str, bytes] = {}
    for round_ in range(5):
        w = Ingest(flow, seed * 100 + round_, f"r{round_}-",
                   large_every=0 if moment == "small_files" else 5)
        w.start()
        if moment == "mid_large_write":
            assert w.mid_large.wait(60), "writer never reached a large file"
            time.sleep(rng.uniform(0, 0.05))
        elif moment == "during_close":
            assert w.closing_large.wait(120), "writer never closed a large file"
            time.sleep(rng.uniform(0, 0.01))
        else:  # random moment: mid-write, mid-flush, between close and the next open...
            time.sleep(rng.uniform(0.02, 1.0))
        mounted.kill9()
        w.stop.set()
        w.join(60)
        assert not w.is_alive(), "writer thread hung after the daemon died"
        assert w.error is None, repr(w.error)
        all_closed.update(w.closed)
        unfinished = [n for n in w.started_names if n not in w.closed]
        print(f"round {round_}: {len(w.closed)} closed, unfinished {unfinished}")
        mounted.mount()
        verify_closed(flow, all_closed)
        read_all(flow)
        # unfinished files may be there (any content) or absent; each must be deletable
        for name in w.started_names:
            if name not in w.closed and (flow / name).exists():
                os.unlink(flow / name)
    mounted.unmount()
    check_index(mounted)
    mounted.mount()
    verify_closed(flow, all_closed)


def test_fsync_then_kill9_keeps_data(mounted):
    flow = mounted.path / "sync"
    flow.mkdir()
    rng = random.Random(7)
    data = rng.randbytes(3 * MIB + 123)
    fd = os.open(flow / "synced.raw", os.O_WRONLY | os.O_CREAT, 0o644)
    assert os.write(fd, data) == len(data)
    os.fsync(fd)
    mounted.kill9()  # killed while the file is still open: fsync alone must suffice
    with pytest.raises(OSError):
        os.write(fd, b"more")
    try:
        os.close(fd)
    except OSError:
        pass  # the connection is gone; close may report it
    mounted.mount()
    assert (flow / "synced.raw").read_bytes() == data
    small = rng.randbytes(5000)
    write_file(flow / "small.raw", small, fsync=True)
    mounted.kill9()
    mounted.mount()
    assert (flow / "small.raw").read_bytes() == small
    assert (flow / "synced.raw").read_bytes() == data
    mounted.unmount()
    check_index(mounted)
    mounted.mount()
