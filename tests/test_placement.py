"""Placement, health, fallback writes and the repair queue — chunk store level, no FUSE."""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest
import trio

from faults import FaultyBackend
from gffs.chunks.store import ChunkStore, StoredChunk
from gffs.config import load_config
from gffs.errors import ConfigError
from gffs.index import ChunkMap, Index
from gffs.placement import FlowPolicy, Health, Placement
from gffs_backends.local import LocalBackend


class Env:
    """Three local disks behind fault wrappers: a, b (the policy) and c (fallback only)."""

    def __init__(self, tmp_path, copies=2, flows=None, timeout=60.0):
        self.tmp_path = tmp_path
        self.index = Index(tmp_path / "index")
        self.disks = {n: FaultyBackend(LocalBackend(n, tmp_path / n)) for n in "abc"}
        self.placement = Placement(list(self.disks.values()), copies,
                                   default_backends=["a", "b"], flows=flows)
        self.store = ChunkStore(self.index, dict(self.disks), self.placement,
                                backend_timeout=timeout)
        self.cm = ChunkMap(self.index)

    def commit(self, sc: StoredChunk, ino=1, idx=0, flow=None) -> None:
        with self.index.write() as txn:
            self.cm.set_block(txn, ino, idx, sc.digest, sc.record)
            if sc.short:
                self.cm.queue_repair(txn, sc.digest, flow)
        self.store.release([sc])

    def locations(self, digest):
        with self.index.read() as txn:
            return sorted(loc.backend for loc in self.cm.chunk(txn, digest).locations)

    def repair_rows(self):
        with self.index.read() as txn:
            return self.cm.repair_rows(txn)


def test_weights_spread_chunks_and_stay_stable():
    names = ["x", "y", "z"]
    backends = [LocalBackend.__new__(LocalBackend) for _ in names]
    for b, n in zip(backends, names, strict=True):
        b.name = n
    p = Placement(backends, 1, weights={"x": 2.0, "y": 1.0, "z": 1.0})
    digests = [os.urandom(32) for _ in range(4000)]
    counts = Counter(p.targets(1, d)[0].name for d in digests)
    assert 0.42 < counts["x"] / 4000 < 0.58 and counts["y"] > 800 and counts["z"] > 800
    again = Counter(p.targets(1, d)[0].name for d in digests)
    assert again == counts  # deterministic
    p2 = Placement(backends, 1, weights={"x": 2.0, "y": 1.0, "z": 2.0})
    moved = sum(p.targets(1, d)[0].name != p2.targets(1, d)[0].name for d in digests)
    assert moved < 0.3 * len(digests)  # a weight change moves only a share, not everything


def test_health_circuit_breaker():
    now = [0.0]
    h = Health(clock=lambda: now[0])
    assert h.available("s3")
    h.failed("s3", "connection refused")
    assert not h.available("s3") and "down" in h.describe("s3")
    now[0] += 2.5
    assert h.available("s3")
    h.failed("s3", "again")          # backoff doubles
    now[0] += 2.5
    assert not h.available("s3")
    h.succeeded("s3")
    assert h.available("s3")
    h.full("disk", "no space")
    assert h.available("disk") and not h.writable("disk")


def test_write_with_one_target_down_is_short_then_repaired(tmp_path):
    e = Env(tmp_path)

    async def main():
        e.disks["b"].down = True
        data = os.urandom(100_000)
        sc = await e.store.store(data, False)
        assert sc.short and [loc.backend for loc in sc.record.locations] == ["a"]
        e.commit(sc)
        assert [r[0] for r in e.repair_rows()] == [sc.digest]
        repaired, pending = await e.store.repair()
        assert (repaired, pending) == (0, 1)  # b still down: stays queued
        e.disks["b"].down = False
        e.store.health.succeeded("b")
        repaired, pending = await e.store.repair()
        assert (repaired, pending) == (1, 0)
        assert e.locations(sc.digest) == ["a", "b"]
        assert e.repair_rows() == []
    trio.run(main)


def test_all_targets_down_data_goes_to_fallback_and_queue_survives_restart(tmp_path):
    e = Env(tmp_path)

    async def main():
        e.disks["a"].down = e.disks["b"].down = True
        data = os.urandom(10_000)
        sc = await e.store.store(data, False)
        assert [loc.backend for loc in sc.record.locations] == ["c"]
        e.commit(sc)
        return sc.digest
    digest = trio.run(main)
    e.index.close()

    e2 = Env(tmp_path)  # a restart: new index handle, backends healthy again
    assert [r[0] for r in e2.repair_rows()] == [digest]

    async def repair():
        return await e2.store.repair()
    assert trio.run(repair) == (1, 0)
    assert e2.locations(digest) == ["a", "b", "c"]


def test_every_backend_down_is_eio_fast(tmp_path):
    from gffs.errors import FsError
    e = Env(tmp_path)
    for d in e.disks.values():
        d.down = True

    async def main():
        t = time.monotonic()
        with pytest.raises(FsError) as ei:
            await e.store.store(b"x" * 5000, False)
        assert ei.value.errno == 5 and time.monotonic() - t < 2
    trio.run(main)


def test_slow_backend_times_out_and_is_skipped(tmp_path):
    e = Env(tmp_path, timeout=0.3)

    async def main():
        e.disks["b"].delay = 600.0           # would hang the test if it were waited for
        with trio.fail_after(60):
            sc = await e.store.store(os.urandom(3000), False)
        assert sc.short and [loc.backend for loc in sc.record.locations] == ["a"]
        assert not e.store.health.available("b")
        asked = sum(e.disks["b"].calls.values())
        with trio.fail_after(60):
            sc2 = await e.store.store(os.urandom(3000), False)
        assert sc2.short and sum(e.disks["b"].calls.values()) == asked, "b was asked again"
    trio.run(main)


def test_corrupt_copy_is_served_from_other_and_repaired(tmp_path):
    e = Env(tmp_path)

    async def main():
        data = os.urandom(200_000)
        sc = await e.store.store(data, False)
        e.commit(sc)
        e.store.cache.discard(sc.digest)
        first, other = e.placement.read_order([loc.backend for loc in sc.record.locations])
        path = e.disks[first].inner._path(sc.digest.hex())  # damage the copy read first
        path.write_bytes(path.read_bytes()[:1000])
        assert bytes(await e.store.load(sc.digest)) == data
        assert e.locations(sc.digest) == [other]
        assert e.repair_rows() and e.repair_rows()[0][2] == [first]
        assert await e.store.repair() == (1, 0)
        assert e.locations(sc.digest) == ["a", "b"]
        e.store.cache.discard(sc.digest)
        e.disks[other].down = True
        assert bytes(await e.store.load(sc.digest)) == data  # the repaired copy is good
    trio.run(main)


def test_flow_policy_uses_its_backends(tmp_path):
    e = Env(tmp_path, copies=1, flows={"nfts": FlowPolicy(1, ["c"])})

    async def main():
        sc = await e.store.store(os.urandom(5000), False, "nfts")
        assert [loc.backend for loc in sc.record.locations] == ["c"]
        sc2 = await e.store.store(os.urandom(5000), False)
        assert sc2.record.locations[0].backend in ("a", "b")
    trio.run(main)


def test_placement_config(tmp_path):
    cfg_path = tmp_path / "gffs.toml"
    cfg_path.write_text("""
[backends.local]
type = "local"
path = "/tmp/x"
[backends.disk2]
type = "local"
path = "/tmp/y"
[placement]
copies = 2
weights = { disk2 = 3 }
[placement.flows.nfts]
copies = 1
backends = ["disk2"]
""")
    cfg = load_config(cfg_path)
    assert cfg.placement.copies == 2 and cfg.placement.weights == {"disk2": 3.0}
    assert cfg.flows["nfts"].backends == ["disk2"] and cfg.flows["nfts"].copies == 1
    for bad, msg in [("[placement]\ncopies = 3\n", "copies must be"),
                     ("[placement]\nbackends = ['nope']\n", "unknown backend 'nope'"),
                     ("[placement.flows.a]\nweights = { local = -1 }\n", "positive number"),
                     ("[placement.flows.a]\ncopy = 1\n", "unknown key 'copy'")]:
        cfg_path.write_text("[backends.local]\ntype='local'\npath='/tmp/x'\n" + bad)
        with pytest.raises(ConfigError) as ei:
            load_config(cfg_path)
        assert msg in str(ei.value) and "\n" not in str(ei.value)


def test_deferred_backend_is_copied_in_the_background(tmp_path):
    """A slow archive (deferred = true) never delays close(): the repair queue copies to it."""
    e = Env(tmp_path)
    e.disks["b"].deferred = True

    async def main():
        e.disks["b"].delay = 600.0   # an archive this slow would hang a close() that waited
        with trio.fail_after(60):
            sc = await e.store.store(os.urandom(50_000), False)
        e.disks["b"].delay = 0.0
        assert [loc.backend for loc in sc.record.locations] == ["a"] and sc.short
        e.commit(sc)
        assert await e.store.repair() == (1, 0)
        assert e.locations(sc.digest) == ["a", "b"]
    trio.run(main)


def test_deferred_option_in_config_is_not_passed_to_the_backend(tmp_path):
    from gffs.store import Store
    cfg_path = tmp_path / "gffs.toml"
    cfg_path.write_text(f"""
[backends.fast]
type = "local"
path = "{tmp_path / 'fast'}"
[backends.archive]
type = "local"
path = "{tmp_path / 'archive'}"
deferred = true
[placement]
copies = 2
""")
    store = Store(load_config(cfg_path, str(tmp_path / "data")), "test")
    try:
        assert store.placement.deferred("archive") and not store.placement.deferred("fast")
        assert [b.name for b in store.placement.targets(10, b"x" * 32)] == ["fast"]
    finally:
        store.close()


def test_capacity_skips_a_down_backend_instead_of_hanging(tmp_path):
    e = Env(tmp_path, timeout=0.3)

    async def main():
        total, free, _unbounded = await e.store.capacity()
        assert total > 0 and 0 < free <= total
        e.disks["b"].delay = 5.0
        t = time.monotonic()
        await e.store.capacity()
        assert time.monotonic() - t < 2
        assert not e.store.health.available("b")
    trio.run(main)
