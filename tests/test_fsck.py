"""fsck on a Store without FUSE: each kind of damage injected into the index or a backend
is found, --repair fixes it (or says exactly what it cannot), and a second run is clean."""

from __future__ import annotations

import json
import os
import time

import pytest

from fsck_util import Damage, fsck, kinds, make_config, object_path, populate, read_back
from gffs.index.env import (LOGICAL_BYTES, N_CHUNKS, N_INODES, NEXT_COOKIE, NEXT_INO,
                            STORED_BYTES)
from gffs.index.records import Location, u64
from gffs.maintenance.fsck_backends import CURSOR_KEY

A_JPG = os.urandom(300_000)
B_BIN = os.urandom(2_500_000)  # three blocks
C_TXT = b"hello " * 1000
FILES = {"f1/a.jpg": A_JPG, "f1/sub/b.bin": B_BIN, "f2/c.txt": C_TXT}


@pytest.fixture
def store(tmp_path):
    cfg = make_config(tmp_path)
    inos = populate(cfg, FILES, links={"f2/a-link.jpg": "f1/a.jpg"}, symlinks={"f1/ln": "a.jpg"})
    return cfg, inos


def assert_clean(cfg) -> dict:
    result = fsck(cfg)
    assert result["clean"] and result["exit_code"] == 0, json.dumps(result["findings"], indent=1)
    return result


def repair_fixes_all(cfg, expected: dict[str, int]) -> dict:
    """fsck finds exactly *expected* (kind -> count), --repair fixes all, then it is clean."""
    found = fsck(cfg)
    assert {k: n for k, (n, _f) in kinds(found).items()} == expected, found["findings"]
    assert found["exit_code"] == 1 and not found["clean"]
    fixed = fsck(cfg, repair=True)
    assert {k: (n, n) for k, n in expected.items()} == kinds(fixed), fixed["findings"]
    assert fixed["exit_code"] == 0 and fixed["unfixed"] == 0
    assert_clean(cfg)
    return fixed


def test_clean_store_is_clean(store):
    cfg, _ = store
    result = assert_clean(cfg)
    assert result["checked"]["inodes"] == 8 and result["checked"]["chunks"] == 5
    assert result["checked"]["copies checked"] == 10
    assert result["checked"]["objects on a"] == result["checked"]["objects on b"] == 5


def test_refcounts_and_garbage(store):
    cfg, inos = store
    with Damage(cfg) as d:
        # three different chunks get three different kinds of damage
        c_digest = d.digests_of(inos["f2/c.txt"])[0]
        (c1, r1), (c2, r2) = [(c, r) for c, r in d.chunks() if c != c_digest][:2]
        with d.index.write() as txn:
            r1.refcount += 3
            txn.put(c1, r1.pack(), db=d.db["chunks"])
            # a live chunk also queued as garbage: gc would delete its copies
            txn.put(c2, u64(time.time_ns()) + r2.pack(), db=d.db["garbage"])
        # an unreferenced chunk kept as live: its file's blocks vanish
        with d.index.write() as txn:
            txn.delete(u64(inos["f2/c.txt"]) + u64(0), db=d.db["blocks"])
    repair_fixes_all(cfg, {"refcount_wrong": 2, "garbage_also_live": 1})
    with Damage(cfg) as d:
        with d.index.read() as txn:
            assert d.cm.chunk(txn, c1).refcount == r1.refcount - 3
            assert d.cm.chunk(txn, c_digest) is None
            assert c_digest in [g for g, _ in d.cm.garbage(txn)]
            assert d.index.counter(txn, N_CHUNKS) == 4


def test_counters_and_sequences(store):
    cfg, _ = store
    with Damage(cfg) as d, d.index.write() as txn:
        d.index.add_counter(txn, N_INODES, 5)
        d.index.add_counter(txn, LOGICAL_BYTES, -1000)
        txn.put(NEXT_INO, u64(3), db=d.db["meta"])
        txn.put(NEXT_COOKIE, u64(1), db=d.db["meta"])
    repair_fixes_all(cfg, {"counter_wrong": 2, "sequence_behind": 2})
    with Damage(cfg) as d, d.index.read() as txn:
        assert d.index.counter(txn, NEXT_INO) == 9
        assert d.index.counter(txn, LOGICAL_BYTES) == sum(r.size for _c, r in d.cm.all_chunks(txn))


def test_namespace_damage(store):
    cfg, inos = store
    with Damage(cfg) as d:
        with d.index.write() as txn:
            # 1. a file's inode row vanishes: its entry dangles, its blocks and xattr stay
            d.ns.set_xattr(txn, inos["f2/c.txt"], b"user.tag", b"x")
            txn.delete(u64(inos["f2/c.txt"]), db=d.db["inodes"])
            # 2. a cookie row lost, another one stale
            raw = txn.get(u64(inos["f1"]) + b"a.jpg", db=d.db["dirents"])
            txn.delete(u64(inos["f1"]) + raw[8:16], db=d.db["dircookies"])
            txn.put(u64(inos["f1"]) + u64(999), u64(inos["f1/a.jpg"]) + b"ghost",
                    db=d.db["dircookies"])
            # 3. wrong link count, wrong parent of a directory
            rec = d.ns.get(txn, inos["f1/a.jpg"])
            rec.nlink = 5
            d.ns.put(txn, inos["f1/a.jpg"], rec)
            rec = d.ns.get(txn, inos["f1/sub"])
            rec.parent = inos["f2"]
            d.ns.put(txn, inos["f1/sub"], rec)
            # 4. an orphan row for a linked file (the next mount would delete it)
            d.ns.add_orphan(txn, inos["f1/ln"])
    repair_fixes_all(cfg, {"dangling_dirent": 1, "rows_of_missing_inode": 1,
                           "dircookie_missing": 1, "dircookie_stale": 1, "nlink_wrong": 1,
                           "dir_parent_wrong": 1, "orphan_stale": 1, "counter_wrong": 1,
                           "sequence_behind": 1})
    with Damage(cfg) as d, d.index.read() as txn:
        assert d.ns.lookup(txn, inos["f2"], b"c.txt") is None
        assert list(d.cm.blocks(txn, inos["f2/c.txt"])) == []
        assert d.ns.get(txn, inos["f1/a.jpg"]).nlink == 2
        assert d.ns.get(txn, inos["f1/sub"]).parent == inos["f1"]
        names = [n for _c, n, _i in d.ns.entries(txn, inos["f1"])]
        assert sorted(names) == [b"a.jpg", b"ln", b"sub"]
        assert d.ns.orphans(txn) == []
    # counter_wrong: N_INODES; sequence_behind: the ghost's cookie 999 was never handed out
    assert read_back(cfg, ["f1/a.jpg", "f2/a-link.jpg"]) == {"f1/a.jpg": A_JPG,
                                                             "f2/a-link.jpg": A_JPG}


def test_unreachable_subtree_goes_to_lost_found(store):
    cfg, inos = store
    with Damage(cfg) as d, d.index.write() as txn:
        # f1/sub (holding b.bin) loses its entry; f1 keeps its nlink
        d.ns.remove_entry(txn, inos["f1"], b"sub")
    fixed = repair_fixes_all(cfg, {"unreachable_inode": 2, "nlink_wrong": 1})
    # the directory comes back as /lost+found/#ino, with its file inside
    sub = f"lost+found/#{inos['f1/sub']}"
    assert read_back(cfg, [f"{sub}/b.bin"]) == {f"{sub}/b.bin": B_BIN}
    assert any(f["kind"] == "unreachable_inode" and f["object"] == f"inode {inos['f1/sub']}"
               for f in fixed["findings"])


def test_dirent_in_missing_directory_and_lost_file(store):
    cfg, inos = store
    with Damage(cfg) as d, d.index.write() as txn:
        txn.delete(u64(inos["f1/sub"]), db=d.db["inodes"])  # the file b.bin loses its dir
        d.index.add_counter(txn, N_INODES, -1)
        rec = d.ns.get(txn, inos["f1"])
        rec.nlink -= 1
        d.ns.put(txn, inos["f1"], rec)
    repair_fixes_all(cfg, {"dangling_dirent": 1, "dirent_in_missing_dir": 1,
                           "unreachable_inode": 1, "nlink_wrong": 1})
    path = f"lost+found/#{inos['f1/sub/b.bin']}"
    assert read_back(cfg, [path]) == {path: B_BIN}


def test_unknown_chunk_restored_from_backend_copies(store):
    cfg, inos = store
    with Damage(cfg) as d:
        digest = d.digests_of(inos["f1/a.jpg"])[0]
        with d.index.write() as txn:
            rec = d.cm.chunk(txn, digest)
            txn.delete(digest, db=d.db["chunks"])  # the row is lost, both copies remain
            d.index.add_counter(txn, N_CHUNKS, -1)
            d.index.add_counter(txn, LOGICAL_BYTES, -rec.size)
            d.index.add_counter(txn, STORED_BYTES, -rec.stored_size)
            for loc in rec.locations:       # and the per-backend counters with it
                d.cm.add_backend_count(txn, loc.backend, -1, -rec.stored_size)
    found = fsck(cfg)
    assert kinds(found) == {"unknown_chunk": (1, 0)}
    assert "good copies on a, b" in found["findings"][0]["detail"]
    fixed = fsck(cfg, repair=True)
    assert kinds(fixed) == {"unknown_chunk": (1, 1)}
    assert_clean(cfg)
    with Damage(cfg) as d, d.index.read() as txn:
        assert d.cm.chunk(txn, digest).refcount == 1  # a.jpg and its hard link: one inode
    assert read_back(cfg, ["f2/a-link.jpg"]) == {"f2/a-link.jpg": A_JPG}


def test_unknown_chunk_without_copies_names_the_files(store, tmp_path):
    cfg, inos = store
    with Damage(cfg) as d:
        digest = d.digests_of(inos["f1/a.jpg"])[0]
        with d.index.write() as txn:
            d.cm.set_block(txn, inos["f1/a.jpg"], 0, None)  # unref: row to garbage...
            txn.put(u64(inos["f1/a.jpg"]) + u64(0), digest, db=d.db["blocks"])  # ...block back
            d.cm.forget_garbage(txn, digest)
    for name in ("a", "b"):
        object_path(tmp_path / name, digest).unlink()
    result = fsck(cfg, repair=True)
    assert kinds(result) == {"unknown_chunk": (1, 0)}
    assert result["exit_code"] == 1
    assert result["lost"] == [{"chunk": digest.hex(),
                               "files": ["f1/a.jpg", "f2/a-link.jpg"]}]


def test_unconfigured_backend_and_interrupted_move(store):
    cfg, inos = store
    with Damage(cfg) as d:
        digest = d.digests_of(inos["f2/c.txt"])[0]
        with d.index.write() as txn:
            d.cm.add_location(txn, digest, Location("retired", "x"))
            d.cm.add_intent(txn, digest, "a", "delete")
        with d.index.write() as txn:  # a step of a move that started two hours ago
            key = digest + b"a"
            row = json.loads(bytes(txn.get(key, db=d.db["moves"])))
            row["at"] -= 7200
            txn.put(key, json.dumps(row).encode(), db=d.db["moves"])
    repair_fixes_all(cfg, {"location_unknown_backend": 1, "interrupted_move": 1})
    with Damage(cfg) as d, d.index.read() as txn:
        assert {loc.backend for loc in d.cm.chunk(txn, digest).locations} == {"a", "b"}
        assert d.cm.intents(txn) == []


def test_missing_copy_is_restored_from_the_other(store, tmp_path):
    cfg, inos = store
    with Damage(cfg) as d:
        digests = d.digests_of(inos["f1/sub/b.bin"])
    object_path(tmp_path / "a", digests[1]).unlink()
    fixed = repair_fixes_all(cfg, {"copy_missing": 1})
    assert fixed["findings"][0]["object"] == f"chunk {digests[1].hex()}"
    assert object_path(tmp_path / "a", digests[1]).exists()
    assert read_back(cfg, ["f1/sub/b.bin"]) == {"f1/sub/b.bin": B_BIN}


def test_under_replicated_chunk_gets_its_copy_back(store, tmp_path):
    cfg, inos = store
    with Damage(cfg) as d:
        digest = d.digests_of(inos["f2/c.txt"])[0]
        with d.index.write() as txn:
            d.cm.set_locations(txn, digest, [Location("b", "")])
    object_path(tmp_path / "a", digest).unlink()
    repair_fixes_all(cfg, {"under_replicated": 1})
    assert object_path(tmp_path / "a", digest).exists()


def test_unrecorded_objects(store, tmp_path):
    cfg, inos = store
    stray = object_path(tmp_path / "a", bytes(range(32)))
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"\x00leftover of a crash")
    young = fsck(cfg)
    assert young["clean"] and any("younger than" in n for n in young["notes"])
    old = time.time() - 7200
    os.utime(stray, (old, old))
    # a copy the record forgot: the object is there, the location is not
    with Damage(cfg) as d:
        digest = d.digests_of(inos["f1/a.jpg"])[0]
        with d.index.write() as txn:
            d.cm.set_locations(txn, digest, [Location("a", "")])
    os.utime(object_path(tmp_path / "b", digest), (old, old))
    repair_fixes_all(cfg, {"object_unrecorded": 1, "copy_unrecorded": 1})
    assert not stray.exists()
    with Damage(cfg) as d, d.index.read() as txn:
        assert {loc.backend for loc in d.cm.chunk(txn, digest).locations} == {"a", "b"}


def test_verify_data_repairs_a_corrupt_copy(store, tmp_path):
    cfg, inos = store
    with Damage(cfg) as d:
        digest = d.digests_of(inos["f1/a.jpg"])[0]
    path = object_path(tmp_path / "b", digest)
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF
    path.write_bytes(bytes(data))
    assert fsck(cfg)["clean"]  # only --verify-data reads the bytes
    found = fsck(cfg, verify_data=True)
    assert kinds(found) == {"copy_corrupt": (1, 0)}
    assert found["findings"][0]["detail"] == "on b: hash mismatch"
    fixed = fsck(cfg, repair=True, verify_data=True)
    assert kinds(fixed) == {"copy_corrupt": (1, 1)}
    assert fsck(cfg, verify_data=True)["clean"]
    assert path.read_bytes() == object_path(tmp_path / "a", digest).read_bytes()


def test_verify_data_without_a_good_copy_names_the_files(store, tmp_path):
    cfg, inos = store
    with Damage(cfg) as d:
        digest = d.digests_of(inos["f1/a.jpg"])[0]
    for name in ("a", "b"):
        path = object_path(tmp_path / name, digest)
        path.write_bytes(path.read_bytes()[:-10])
    result = fsck(cfg, repair=True, verify_data=True)
    assert kinds(result) == {"copy_corrupt": (2, 0), "chunk_lost": (1, 0)}
    assert result["exit_code"] == 1
    assert result["lost"] == [{"chunk": digest.hex(), "files": ["f1/a.jpg", "f2/a-link.jpg"]}]


def test_incremental_walks_the_chunk_table_in_slices(tmp_path):
    cfg = make_config(tmp_path)
    files = {f"f/{i}.bin": os.urandom(5000) for i in range(25)}
    populate(cfg, files)
    with Damage(cfg) as d:
        digests = sorted(c for c, _r in d.chunks())
    victim = digests[22]  # in the third slice of ten
    object_path(tmp_path / "a", victim).unlink()
    seen = []
    for run in range(3):
        result = fsck(cfg, incremental=True, chunks=10)
        seen.append((result["incremental"]["chunks"], kinds(result)))
        assert result["checked"].get("objects on a") is None  # no listings
    # the third run reaches the end of the table after five chunks and goes on from its start
    assert seen == [(10, {}), (10, {}), (10, {"copy_missing": (1, 0)})]
    with Damage(cfg) as d, d.index.read() as txn:
        assert txn.get(CURSOR_KEY, db=d.db["meta"]) == digests[4]
    # a cursor in the middle wraps around to the start and stops where it began
    with Damage(cfg) as d, d.index.write() as txn:
        txn.put(CURSOR_KEY, digests[19], db=d.db["meta"])
    result = fsck(cfg, repair=True, incremental=True, chunks=100)
    inc = result["incremental"]
    assert inc["wrapped"] and inc["chunks"] == 25 and inc["to"] == digests[19].hex()
    assert kinds(result) == {"copy_missing": (1, 1)}
    assert object_path(tmp_path / "a", victim).exists()


def test_copy_count_follows_the_flow_policy(tmp_path):
    cfg = make_config(tmp_path, copies=1, extra='backends = ["a"]\n\n[placement.flows.nfts]\n'
                                                 'copies = 2\nbackends = ["a", "b"]\n')
    inos = populate(cfg, {"plain/x.bin": os.urandom(9000), "nfts/y.bin": os.urandom(9000)})
    assert_clean(cfg)
    with Damage(cfg) as d:
        x, y = (d.digests_of(inos[p])[0] for p in ("plain/x.bin", "nfts/y.bin"))
        with d.index.write() as txn:  # both lose their copy on b (x never had one)
            for digest in (x, y):
                rec = d.cm.chunk(txn, digest)
                d.cm.set_locations(txn, digest, [l for l in rec.locations if l.backend != "b"])
    found = fsck(cfg)
    assert kinds(found) == {"under_replicated": (1, 0)}
    assert found["findings"][0]["object"] == f"chunk {y.hex()}"
    assert found["findings"][0]["detail"] == "1 of 2 trusted copies"
    repair_fixes_all(cfg, {"under_replicated": 1})


def test_cancelled_incremental_run_continues_where_it_stopped(tmp_path):
    import trio

    from gffs.maintenance.fsck import fsck_job
    from gffs.maintenance.progress import Progress
    from gffs.store import Store

    cfg = make_config(tmp_path, copies=1)
    populate(cfg, {f"f/{i}": os.urandom(3000) for i in range(300)})
    with Damage(cfg) as d:
        digests = sorted(c for c, _r in d.chunks())

    class CancelAfterOneBatch(Progress):
        def __init__(self, scope: trio.CancelScope) -> None:
            super().__init__()
            self.scope = scope

        def advance(self, items: int = 0, nbytes: int = 0) -> None:
            super().advance(items, nbytes)
            if self.what == "checking copies":
                self.scope.cancel()  # as Ctrl-C or a dropped control connection does

    async def main(store: Store) -> None:
        with trio.CancelScope() as scope:
            await fsck_job(store, {"incremental": True, "chunks": 1000}, CancelAfterOneBatch(scope))
        assert scope.cancelled_caught

    store = Store(cfg, "test")
    try:
        trio.run(main, store)
    finally:
        store.close()
    with Damage(cfg) as d, d.index.read() as txn:
        stopped = bytes(txn.get(CURSOR_KEY, db=d.db["meta"]))
    done = digests.index(stopped) + 1
    assert 0 < done < 300
    result = fsck(cfg, incremental=True, chunks=1000)
    assert result["incremental"]["from"] == stopped.hex()
    assert result["incremental"]["chunks"] == 300 and result["incremental"]["wrapped"]


def test_views_tables_are_checked_against_facts_and_attributes(tmp_path):
    cfg = make_config(tmp_path)
    inos = populate(cfg, FILES, xattrs={"f1/a.jpg": {b"user.xdg.tags": b"alps,sunset"},
                                        "f2/c.txt": {b"user.xdg.tags": b"notes"}})
    assert assert_clean(cfg)["checked"]["view inodes"] == 3   # three contents, two tagged
    a, b, c = inos["f1/a.jpg"], inos["f1/sub/b.bin"], inos["f2/c.txt"]
    with Damage(cfg) as d:
        rows, of_ino, cid_inos = d.db["viewrows"], d.db["inoviews"], d.db["cidinodes"]
        with d.index.write() as txn:
            # a row lost: a.jpg would no longer be listed in .views/by-tag/sunset
            assert txn.delete(b"by-tag\0sunset\0" + u64(a), db=rows)
            # rows of an inode that is long gone: a ghost entry in by-tag/ghost
            txn.put(b"by-tag\0ghost\0" + u64(9999), b"#9999", db=rows)
            txn.put(u64(9999) + b"by-tag\0ghost\0", b"", db=of_ino)
            # a row without its inoviews twin: no change of c.txt would remove it
            txn.put(b"by-tag\0stale\0" + u64(c), b"#%d" % c, db=rows)
            # cidinodes: b.bin's row lost, and a row for a content c.txt does not hold
            cid_b = bytes(txn.get(u64(b), db=d.db["contentids"]))
            assert txn.delete(cid_b + u64(b), db=cid_inos)
            txn.put(b"\x01" * 32 + u64(c), b"", db=cid_inos)
    repair_fixes_all(cfg, {"view_rows_wrong": 2, "view_row_orphan": 1,
                           "content_inode_wrong": 2})
    with Damage(cfg) as d, d.index.read() as txn:
        rows = d.db["viewrows"]
        assert txn.get(b"by-tag\0sunset\0" + u64(a), db=rows) == b"#%d" % a
        assert txn.get(b"by-tag\0ghost\0" + u64(9999), db=rows) is None
        assert txn.get(b"by-tag\0stale\0" + u64(c), db=rows) is None
        assert txn.get(b"by-tag\0notes\0" + u64(c), db=rows) == b"#%d" % c
