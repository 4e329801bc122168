"""Admin work at scale: maintained counters, planning off the trio thread, short backup reads.

Real stores (Store + Filesystem + local backends), no FUSE. Nothing here measures time:
the ordering tests use events, so they fail by construction when planning blocks the
trio thread, however fast the machine is.
"""

from __future__ import annotations

import hashlib
import os
import random

import trio

from gffs.cli.admin_status import status as admin_status
from gffs.config import load_config
from gffs.fs.filesystem import Caller, Filesystem
from gffs.index import ROOT_INO, ChunkMap
from gffs.index.records import Location
from gffs.maintenance import backup as backup_mod
from gffs.maintenance import rebalance as rebalance_mod
from gffs.maintenance.backup import backup_index
from gffs.maintenance.fsck import fsck_job, fsck_repair_job
from gffs.maintenance.progress import Progress
from gffs.store import Store

USER = Caller(1000, 1000)


TWO_DISKS_BOTH = """[placement]
copies = 1
backends = ["a", "b"]
"""


def two_disk_store(tmp_path, placement: str = TWO_DISKS_BOTH) -> Store:
    """Local backends a and b; *placement*: the config's placement tables."""
    cfg = tmp_path / "gffs.toml"
    cfg.write_text(f"""
[store]
data_dir = "{tmp_path / 'data'}"
analyze_images = false
index_backup_to = ["a"]

[backends.a]
type = "local"
path = "{tmp_path / 'a'}"

[backends.b]
type = "local"
path = "{tmp_path / 'b'}"

{placement}""")
    os.chmod(cfg, 0o600)
    backup_mod._STATES.clear()
    return Store(load_config(cfg), "test")


async def random_operations(store: Store, fs: Filesystem, rnd: random.Random, n: int) -> None:
    """Creates, overwrites (with dedup), truncates, unlinks and location changes."""
    cm = store.chunks.chunkmap
    d, _ = fs.mkdir(ROOT_INO, f"flow{rnd.random():.6f}".encode(), 0o755, USER)
    names: list[bytes] = []
    pool = [rnd.randbytes(rnd.randint(1, 5000)) for _ in range(8)]   # shared contents dedup
    for i in range(n):
        op = rnd.random()
        if op < 0.5 or not names:
            name = f"f{i}".encode()
            fh, _ino, _ = fs.create(d, name, 0o644, os.O_RDWR, USER)
            await fs.write(fh, 0, rnd.choice(pool) if rnd.random() < 0.5 else rnd.randbytes(900))
            await fs.release(fh)
            names.append(name)
        elif op < 0.7:
            fs.unlink(d, names.pop(rnd.randrange(len(names))))
        elif op < 0.8:
            ino, _ = fs.lookup(d, rnd.choice(names))
            await fs.truncate(ino, 0)
        else:   # what rebalance and repair do: add a copy, or forget one
            with store.index.read() as txn:
                digests = [dg for dg, _r in cm.all_chunks(txn)]
            if not digests:
                continue
            digest = rnd.choice(digests)
            with store.index.write() as txn:
                rec = cm.chunk(txn, digest)
                if rnd.random() < 0.5:
                    cm.add_location(txn, digest, Location(rnd.choice("ab"), ""))
                elif len(rec.locations) > 1:
                    cm.set_locations(txn, digest, rec.locations[1:])
        if rnd.random() < 0.2:
            await store.chunks.delete_garbage()


def test_backend_counters_equal_a_full_walk_after_random_operations(tmp_path):
    store = two_disk_store(tmp_path)
    try:
        async def main() -> None:
            fs = Filesystem(store.index, store.chunks, analyze_images=False)
            await fs.start(1000, 1000)
            for seed in range(3):
                await random_operations(store, fs, random.Random(seed), 60)
                with store.index.read() as txn:
                    kept = store.chunks.chunkmap.backend_counts(txn)
                assert kept == store.chunks.chunkmap.count_backends(), seed
            await fs.shutdown()
        trio.run(main)
        with store.index.read() as txn:
            assert sum(h["chunks"] for h in store.chunks.chunkmap.backend_counts(txn).values())
    finally:
        store.close()


def test_store_without_counters_gets_them_counted_once_and_fsck_checks_them(tmp_path):
    store = two_disk_store(tmp_path)
    try:
        async def fill() -> None:
            fs = Filesystem(store.index, store.chunks, analyze_images=False)
            await fs.start(1000, 1000)
            await random_operations(store, fs, random.Random(5), 40)
            await fs.shutdown()
        trio.run(fill)
        truth = store.chunks.chunkmap.count_backends()
        with store.index.write() as txn:        # what a store from before the counters has
            for name in truth:
                txn.delete(b"backend:" + name.encode(), db=store.index.db["meta"])
            txn.delete(b"backend_counts", db=store.index.db["meta"])
    finally:
        store.close()
    store = two_disk_store(tmp_path)        # opening counts them
    try:
        cm = store.chunks.chunkmap
        with store.index.read() as txn:
            assert cm.backend_counts(txn) == truth
        with store.index.write() as txn:        # damage one: fsck finds it, --repair fixes it
            cm.add_backend_count(txn, "a", 3, 77)
        found = trio.run(fsck_job, store, {}, Progress())
        assert found["summary"]["counter_wrong"] == {"found": 1, "fixed": 0}, found
        fixed = trio.run(fsck_repair_job, store, {}, Progress())
        assert fixed["summary"]["counter_wrong"] == {"found": 1, "fixed": 1}, fixed
        with store.index.read() as txn:
            assert cm.backend_counts(txn) == truth
    finally:
        store.close()


# (That planning leaves the trio thread free: it runs in a worker process now, see
# test_index_workers.py::test_cancelling_a_rebalance_kills_its_planning_worker.)


def test_backup_keeps_no_read_transaction_on_the_live_index_while_uploading(tmp_path,
                                                                            monkeypatch):
    """Uploads are slow (Drive): while one is in progress, the live index has no reader."""
    store = two_disk_store(tmp_path)
    readers: list[str] = []
    backend = store.backends["a"]
    real_put = backend.put_meta

    async def watching_put(name: str, data: bytes) -> None:
        if name.startswith("index/pieces/"):
            readers.append(store.index.env.readers())
        await real_put(name, data)

    monkeypatch.setattr(backend, "put_meta", watching_put)
    try:
        async def main() -> None:
            fs = Filesystem(store.index, store.chunks, analyze_images=False)
            await fs.start(1000, 1000)
            await random_operations(store, fs, random.Random(9), 30)
            await fs.shutdown()
            await backup_index(store, Progress())
        trio.run(main)
        assert readers
        for table in readers:   # "pid thread txnid" rows; an active reader has a txnid
            active = [row for row in table.splitlines()[1:] if row.split()[-1] != "-"]
            assert not active, table
    finally:
        store.close()


def test_status_reads_counters_and_the_last_plans_census(tmp_path):
    store = two_disk_store(tmp_path)
    try:
        async def main() -> None:
            fs = Filesystem(store.index, store.chunks, analyze_images=False)
            await fs.start(1000, 1000)
            d, _ = fs.mkdir(ROOT_INO, b"pics", 0o755, USER)
            for i in range(5):
                fh, _ino, _ = fs.create(d, f"p{i}".encode(), 0o644, os.O_RDWR, USER)
                await fs.write(fh, 0, bytes([i + 1]) * (100 + i))
                await fs.release(fh)
            await fs.shutdown()
        trio.run(main)
        cfg = store.cfg
        truth = store.chunks.chunkmap.count_backends()
    finally:
        store.close()
    before = admin_status(cfg)
    assert before["copies"]["under"] is None      # no plan has counted them yet
    assert before["copies"]["per_backend"] == truth
    store = two_disk_store(tmp_path)
    try:
        trio.run(rebalance_mod.rebalance, store, {"dry_run": True}, Progress())
    finally:
        store.close()
    after = admin_status(cfg)
    assert after["copies"]["under"] == 0 and after["copies"]["over"] == 0
    assert after["flow_totals"] == {"pics": {"files": 5, "bytes": sum(100 + i for i in range(5))}}
    assert after["backends"]["a"]["chunks"] + after["backends"]["b"]["chunks"] == 5


def test_planning_keeps_per_chunk_state_only_for_flows_with_their_own_policy(tmp_path):
    """A store of default-policy flows plans with no per-chunk map (memory at a million
    chunks); a chunk shared with a flow of its own policy still gets both policies'
    copies, --flow still plans exactly that flow's chunks, a hard link counts once."""
    store = two_disk_store(tmp_path, """[placement]
copies = 1
backends = ["a"]

[placement.flows.archive]
copies = 1
backends = ["b"]
""")
    contents = {"shared": b"s" * 700, "plain": b"p" * 800, "archive": b"r" * 900}
    try:
        async def main() -> None:
            fs = Filesystem(store.index, store.chunks, analyze_images=False)
            await fs.start(1000, 1000)
            for flow, names in (("plain", ("shared", "plain")), ("archive", ("shared", "archive"))):
                d, _ = fs.mkdir(ROOT_INO, flow.encode(), 0o755, USER)
                for name in names:
                    fh, _ino, _ = fs.create(d, name.encode(), 0o644, os.O_RDWR, USER)
                    await fs.write(fh, 0, contents[name])
                    await fs.release(fh)
            plain = fs.lookup(ROOT_INO, b"plain")[0]
            fs.link(fs.lookup(plain, b"plain")[0], plain, b"again")
            await fs.shutdown()
        trio.run(main)
        digest = {name: hashlib.sha256(data).digest()
                  for name, data in contents.items()}

        flows, members = rebalance_mod.chunk_flows(store.index, None, set(), None)
        assert flows == {} and members is None     # no flow has a policy of its own
        totals: dict = {}
        flows, members = rebalance_mod.chunk_flows(store.index, totals, {"archive"}, "plain")
        assert flows == {digest["shared"]: frozenset({"archive", None}),
                         digest["archive"]: frozenset({"archive"})}
        assert members == {digest["shared"], digest["plain"]}
        assert totals == {"plain": {"files": 2, "bytes": 1500},
                          "archive": {"files": 2, "bytes": 1600}}

        only = trio.run(rebalance_mod.rebalance, store, {"dry_run": True, "flow": "plain"},
                        Progress())
        assert only["chunks_checked"] == 2
        trio.run(rebalance_mod.rebalance, store, {}, Progress())
        with store.index.read() as txn:
            where = {name: {loc.backend for loc in store.chunks.chunkmap.chunk(txn, dg).locations}
                     for name, dg in digest.items()}
        assert where == {"shared": {"a", "b"}, "plain": {"a"}, "archive": {"b"}}
        again = trio.run(rebalance_mod.rebalance, store, {"dry_run": True}, Progress())
        assert again["chunks_to_move"] == 0 and again["chunks_checked"] == 3
    finally:
        store.close()
