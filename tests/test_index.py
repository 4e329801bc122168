"""The LMDB index on its own: records, schema, namespace, chunk map, ENOSPC.

No chunk store, no backend, no filesystem: only gffs.index on a tmp LMDB.
"""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

import gffs.index.env as envmod
from gffs.errors import ConfigError
from gffs.index.errors import IndexFull, NotASymlink, NotFound
from gffs.index import ROOT_INO, ChunkMap, Index, Namespace
from gffs.index.env import LOGICAL_BYTES, N_CHUNKS, N_INODES, SCHEMA_VERSION, STORED_BYTES
from gffs.index.images import ImageIndex
from gffs.index.records import ChunkRecord, InodeRecord, Location, u64


@pytest.fixture
def index(tmp_path):
    idx = Index(tmp_path / "index")
    yield idx
    idx.close()


@pytest.fixture
def ns(index):
    n = Namespace(index)
    n.ensure_root(0, 0)
    return n


@pytest.fixture
def cm(index):
    return ChunkMap(index)


def h(n: int) -> bytes:
    return hashlib.sha256(str(n).encode()).digest()


def file_rec() -> InodeRecord:
    return InodeRecord(stat.S_IFREG | 0o644, 1000, 1000, 1, 0)


# records -------------------------------------------------------------------------

def test_inode_record_round_trip():
    rec = InodeRecord(stat.S_IFDIR | 0o2755, 4294967295, 12345, 3, 1 << 45,
                      -5, 1_700_000_000_123_456_789, 0, 0x0801, 77)
    assert InodeRecord.unpack(rec.pack()) == rec


@pytest.mark.parametrize("locations", [
    [],
    [Location("local", "")],
    [Location("local", ""), Location("s3-eu", "bucket/key?v=3"),
     Location("ipfs", "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi")],
    [Location("Sicherung-Größe", "örtlich/ключ/日本"), Location("😀", "🦀" * 50)],
])
def test_chunk_record_round_trip(locations):
    rec = ChunkRecord(7, 1 << 20, 12345, 1, locations)
    back = ChunkRecord.unpack(rec.pack())
    assert back == rec
    assert back.locations == locations


def test_chunk_record_unpack_from_memoryview():
    rec = ChunkRecord(1, 10, 11, 0, [Location("é", "ü")])
    assert ChunkRecord.unpack(memoryview(rec.pack())) == rec


# schema ----------------------------------------------------------------------------

def test_schema_version_stored(tmp_path):
    idx = Index(tmp_path / "i")
    try:
        with idx.read() as txn:
            assert txn.get(b"schema", db=idx.db["meta"]) == u64(SCHEMA_VERSION)
        assert idx.block_size == envmod.DEFAULT_BLOCK_SIZE
        store_id = idx.store_id
    finally:
        idx.close()
    idx = Index(tmp_path / "i")  # reopening keeps the identity
    try:
        assert idx.store_id == store_id
    finally:
        idx.close()


def test_wrong_schema_refused(tmp_path):
    idx = Index(tmp_path / "i")
    with idx.write() as txn:
        txn.put(b"schema", u64(SCHEMA_VERSION + 1), db=idx.db["meta"])
    idx.close()
    with pytest.raises(ConfigError, match="schema"):
        Index(tmp_path / "i")


# namespace ---------------------------------------------------------------------------

def test_root_created_once(index, ns):
    ns.ensure_root(5, 5)
    with index.read() as txn:
        root = ns.get(txn, ROOT_INO)
        assert stat.S_ISDIR(root.mode) and root.uid == 0
        assert index.counter(txn, N_INODES) == 1


def test_entries_add_lookup_remove(index, ns):
    with index.write() as txn:
        a = ns.new_inode(txn, file_rec())
        b = ns.new_inode(txn, file_rec())
        ns.add_entry(txn, ROOT_INO, b"a", a)
        ns.add_entry(txn, ROOT_INO, "b-ü".encode(), b)
    with index.read() as txn:
        assert ns.lookup(txn, ROOT_INO, b"a") == a
        assert ns.lookup(txn, ROOT_INO, "b-ü".encode()) == b
        assert ns.lookup(txn, ROOT_INO, b"c") is None
        assert [n for _, n, _ in ns.entries(txn, ROOT_INO)] == [b"a", "b-ü".encode()]
        assert index.counter(txn, N_INODES) == 3
    with index.write() as txn:
        assert ns.remove_entry(txn, ROOT_INO, b"a") == a
        with pytest.raises(NotFound):
            ns.remove_entry(txn, ROOT_INO, b"a")
    with index.read() as txn:
        assert ns.lookup(txn, ROOT_INO, b"a") is None
        assert [(n, i) for _, n, i in ns.entries(txn, ROOT_INO)] == [("b-ü".encode(), b)]


def test_replace_entry_keeps_cookie(index, ns):
    with index.write() as txn:
        a = ns.new_inode(txn, file_rec())
        b = ns.new_inode(txn, file_rec())
        ns.add_entry(txn, ROOT_INO, b"x", a)
    with index.read() as txn:
        [(cookie, _, _)] = list(ns.entries(txn, ROOT_INO))
    with index.write() as txn:
        ns.replace_entry(txn, ROOT_INO, b"x", b)
    with index.read() as txn:
        assert list(ns.entries(txn, ROOT_INO)) == [(cookie, b"x", b)]


def test_missing_inode_is_enoent(index, ns):
    with index.read() as txn:
        with pytest.raises(NotFound):
            ns.get(txn, 999)
        assert not ns.exists(txn, 999)


def test_readdir_cookies_stable_while_mutating(index, ns):
    """Page through entries(after_cookie) while adding/removing: entries present
    throughout are each seen exactly once, cookies strictly increase."""
    with index.write() as txn:
        d = ns.new_inode(txn, InodeRecord(stat.S_IFDIR | 0o755, 0, 0, 2, parent=ROOT_INO))
        ns.add_entry(txn, ROOT_INO, b"d", d)
        ino = ns.new_inode(txn, file_rec())
        for i in range(200):
            ns.add_entry(txn, d, b"f%03d" % i, ino)
    stable = {b"f%03d" % i for i in range(200) if i % 3 != 0}   # never touched
    removable = [b"f%03d" % i for i in range(200) if i % 3 == 0]
    seen: list[bytes] = []
    cookies: list[int] = []
    after = 0
    step = 0
    while True:
        with index.read() as txn:
            page = []
            for entry in ns.entries(txn, d, after):
                page.append(entry)
                if len(page) == 7:
                    break
        if not page:
            break
        for cookie, name, _ in page:
            seen.append(name)
            cookies.append(cookie)
        after = page[-1][0]
        # mutate between pages: remove a couple, add some new ones
        with index.write() as txn:
            for _ in range(2):
                if removable:
                    ns.remove_entry(txn, d, removable.pop())
            if step < 20:
                ns.add_entry(txn, d, b"new%03d" % step, ino)
        step += 1
    assert cookies == sorted(cookies) and len(set(cookies)) == len(cookies)
    assert len(seen) == len(set(seen)), "an entry was returned twice"
    assert stable <= set(seen), f"skipped: {sorted(stable - set(seen))[:5]}"


def test_is_empty_dir(index, ns):
    with index.write() as txn:
        d = ns.new_inode(txn, InodeRecord(stat.S_IFDIR | 0o755, 0, 0, 2, parent=ROOT_INO))
        d2 = ns.new_inode(txn, InodeRecord(stat.S_IFDIR | 0o755, 0, 0, 2, parent=ROOT_INO))
        ns.add_entry(txn, ROOT_INO, b"d", d)
        ns.add_entry(txn, ROOT_INO, b"d2", d2)
    with index.read() as txn:
        assert ns.is_empty_dir(txn, d)
        assert ns.is_empty_dir(txn, d2)
        assert not ns.is_empty_dir(txn, ROOT_INO)
    with index.write() as txn:
        f = ns.new_inode(txn, file_rec())
        ns.add_entry(txn, d, b"f", f)
    with index.read() as txn:
        assert not ns.is_empty_dir(txn, d)
        assert ns.is_empty_dir(txn, d2)   # a neighbour's entries do not count
    with index.write() as txn:
        ns.remove_entry(txn, d, b"f")
    with index.read() as txn:
        assert ns.is_empty_dir(txn, d)


def test_xattrs(index, ns):
    with index.write() as txn:
        a = ns.new_inode(txn, file_rec())
        b = ns.new_inode(txn, file_rec())
        ns.set_xattr(txn, a, b"user.one", b"1")
        ns.set_xattr(txn, a, b"user.two", b"")
        ns.set_xattr(txn, a, b"user.bin", bytes(range(256)))
        ns.set_xattr(txn, b, b"user.other", b"x")
    with index.read() as txn:
        assert ns.get_xattr(txn, a, b"user.one") == b"1"
        assert ns.get_xattr(txn, a, b"user.two") == b""
        assert ns.get_xattr(txn, a, b"user.bin") == bytes(range(256))
        assert ns.get_xattr(txn, a, b"user.none") is None
        assert sorted(ns.xattr_names(txn, a)) == [b"user.bin", b"user.one", b"user.two"]
        assert list(ns.xattr_names(txn, b)) == [b"user.other"]
        assert list(ns.xattr_names(txn, 12345)) == []
    with index.write() as txn:
        ns.set_xattr(txn, a, b"user.one", b"changed")
        assert ns.remove_xattr(txn, a, b"user.two")
        assert not ns.remove_xattr(txn, a, b"user.two")
    with index.read() as txn:
        assert ns.get_xattr(txn, a, b"user.one") == b"changed"
        assert sorted(ns.xattr_names(txn, a)) == [b"user.bin", b"user.one"]
    with index.write() as txn:
        ns.delete_inode(txn, a)
    with index.read() as txn:
        assert list(ns.xattr_names(txn, a)) == []
        assert list(ns.xattr_names(txn, b)) == [b"user.other"]


def test_symlinks(index, ns):
    with index.write() as txn:
        a = ns.new_inode(txn, InodeRecord(stat.S_IFLNK | 0o777, 0, 0, 1, 3))
        ns.set_symlink(txn, a, b"../t")
    with index.read() as txn:
        assert ns.symlink_target(txn, a) == b"../t"
        with pytest.raises(NotASymlink):
            ns.symlink_target(txn, ROOT_INO)


def test_orphans(index, ns):
    with index.write() as txn:
        inos = [ns.new_inode(txn, file_rec()) for _ in range(3)]
        for i in inos:
            ns.add_orphan(txn, i)
    with index.read() as txn:
        assert sorted(ns.orphans(txn)) == inos
        assert index.counter(txn, N_INODES) == 4
    with index.write() as txn:
        ns.delete_inode(txn, inos[1])
    with index.read() as txn:
        assert sorted(ns.orphans(txn)) == [inos[0], inos[2]]
        assert not ns.exists(txn, inos[1])
        assert index.counter(txn, N_INODES) == 3


def test_inode_numbers_never_reused(index, ns):
    with index.write() as txn:
        a = ns.new_inode(txn, file_rec())
        ns.delete_inode(txn, a)
        b = ns.new_inode(txn, file_rec())
    assert b > a > ROOT_INO


# chunk map ------------------------------------------------------------------------------

def crec(size: int, stored: int, locs=None) -> ChunkRecord:
    return ChunkRecord(0, size, stored, 1, locs or [Location("local", "")])


def counters(index) -> tuple[int, int, int]:
    with index.read() as txn:
        return (index.counter(txn, N_CHUNKS), index.counter(txn, LOGICAL_BYTES),
                index.counter(txn, STORED_BYTES))


def check_counters(index, cm) -> None:
    """Counters equal the sums over the live chunk table."""
    with index.read() as txn:
        live = list(cm.all_chunks(txn))
    assert counters(index) == (len(live), sum(r.size for _, r in live),
                               sum(r.stored_size for _, r in live))


def test_refcounts_and_garbage(index, cm):
    x, y = h(1), h(2)
    locs = [Location("local", ""), Location("fern-ß", "loc/ä")]
    with index.write() as txn:
        cm.set_block(txn, 10, 0, x, crec(100, 60, locs))
        cm.set_block(txn, 10, 1, y, crec(50, 50))
        cm.set_block(txn, 11, 0, x, None)        # known now: no record needed
        cm.set_block(txn, 11, 0, x, None)        # same digest again: no change
    with index.read() as txn:
        assert cm.chunk(txn, x).refcount == 2
        assert cm.chunk(txn, y).refcount == 1
        assert cm.block(txn, 10, 1) == y
        assert list(cm.blocks(txn, 10)) == [(0, x), (1, y)]
        assert list(cm.blocks(txn, 10, 1)) == [(1, y)]
        assert list(cm.blocks(txn, 12)) == []
    assert counters(index) == (2, 150, 110)
    check_counters(index, cm)

    with index.write() as txn:
        cm.drop_blocks(txn, 10)
    with index.read() as txn:
        assert cm.chunk(txn, x).refcount == 1
        assert cm.chunk(txn, y) is None
        garbage = dict(cm.garbage(txn))
        assert list(garbage) == [y]
        assert cm.known(txn, y) is not None
        assert list(cm.blocks(txn, 10)) == []
    assert counters(index) == (1, 100, 60)
    check_counters(index, cm)

    with index.write() as txn:
        cm.set_block(txn, 11, 0, None)           # make it a hole
    with index.read() as txn:
        assert cm.chunk(txn, x) is None
        garbage = dict(cm.garbage(txn))
        assert set(garbage) == {x, y}
        assert garbage[x].locations == locs      # locations travel to garbage
        assert garbage[x].refcount == 0
        assert cm.block(txn, 11, 0) is None
    assert counters(index) == (0, 0, 0)
    check_counters(index, cm)


def test_garbage_resurrection(index, cm):
    x = h(3)
    locs = [Location("a", "1"), Location("b", "2")]
    with index.write() as txn:
        cm.set_block(txn, 20, 0, x, crec(1000, 400, locs))
        cm.drop_blocks(txn, 20)
    with index.read() as txn:
        assert [d for d, _ in cm.garbage(txn)] == [x]
    with index.write() as txn:
        # ref without a record: the garbage row is enough
        cm.set_block(txn, 21, 5, x, None)
    with index.read() as txn:
        rec = cm.chunk(txn, x)
        assert rec.refcount == 1 and rec.locations == locs and rec.size == 1000
        assert cm.garbage(txn) == []
    assert counters(index) == (1, 1000, 400)
    check_counters(index, cm)
    with index.write() as txn:
        cm.forget_garbage(txn, x)   # harmless: not in garbage
        assert cm.chunk(txn, x) is not None


def test_ref_unknown_without_record(index, cm):
    with index.write() as txn:
        with pytest.raises(KeyError):
            cm.set_block(txn, 1, 0, h(9), None)


def test_drop_blocks_from_start(index, cm):
    with index.write() as txn:
        for i in range(5):
            cm.set_block(txn, 30, i, h(100 + i), crec(10, 10))
        cm.drop_blocks(txn, 30, 3)
    with index.read() as txn:
        assert [i for i, _ in cm.blocks(txn, 30)] == [0, 1, 2]
    assert counters(index) == (3, 30, 30)
    check_counters(index, cm)


def test_add_location(index, cm):
    x = h(4)
    with index.write() as txn:
        cm.set_block(txn, 1, 0, x, crec(10, 10))
        cm.add_location(txn, x, Location("second", "l2"))
        cm.add_location(txn, x, Location("second", "l2"))
    with index.read() as txn:
        assert cm.chunk(txn, x).locations == [Location("local", ""), Location("second", "l2")]


def test_counters_random_ops(index, cm):
    """Many random set_block/drop_blocks operations keep the counters exact."""
    import random
    rnd = random.Random(1)
    for _ in range(40):
        with index.write() as txn:
            for _ in range(10):
                ino, idx = rnd.randrange(1, 6), rnd.randrange(4)
                if rnd.random() < 0.15:
                    cm.drop_blocks(txn, ino, rnd.randrange(4))
                elif rnd.random() < 0.2:
                    cm.set_block(txn, ino, idx, None)
                else:
                    n = rnd.randrange(12)
                    cm.set_block(txn, ino, idx, h(n), crec(100 + n, 50 + n))
    check_counters(index, cm)
    # refcount = number of blocks pointing at the chunk
    with index.read() as txn:
        refs: dict[bytes, int] = {}
        for ino in range(1, 6):
            for _, d in cm.blocks(txn, ino):
                refs[d] = refs.get(d, 0) + 1
        assert {d: r.refcount for d, r in cm.all_chunks(txn)} == refs
        assert not set(refs) & {d for d, _ in cm.garbage(txn)}


# ENOSPC ---------------------------------------------------------------------------------------

def test_map_full_becomes_enospc(tmp_path, monkeypatch):
    monkeypatch.setattr(envmod, "MAP_SIZE", 1 << 20)
    idx = Index(tmp_path / "small")
    try:
        ns = Namespace(idx)
        ns.ensure_root(0, 0)
        committed = []
        with pytest.raises(IndexFull):
            for i in range(10_000):
                with idx.write() as txn:
                    ino = ns.new_inode(txn, file_rec())
                    ns.add_entry(txn, ROOT_INO, b"file-%06d" % i, ino)
                    ns.set_xattr(txn, ino, b"user.pad", os.urandom(2000))
                committed.append((i, ino))
        assert len(committed) > 10
        # still readable and consistent: exactly the committed entries, counters match
        with idx.read() as txn:
            names = [n for _, n, _ in ns.entries(txn, ROOT_INO)]
            assert names == [b"file-%06d" % i for i, _ in committed]
            assert idx.counter(txn, N_INODES) == len(committed) + 1
            for i, ino in committed[-3:]:
                assert ns.lookup(txn, ROOT_INO, b"file-%06d" % i) == ino
                assert ns.exists(txn, ino)
        # a small write still fits or fails cleanly with ENOSPC again, never anything else
        try:
            with idx.write() as txn:
                ns.remove_entry(txn, ROOT_INO, b"file-%06d" % committed[0][0])
        except IndexFull:
            pass
    finally:
        idx.close()
    # and the environment reopens fine
    idx = Index(tmp_path / "small")
    try:
        with idx.read() as txn:
            assert Namespace(idx).lookup(txn, ROOT_INO, b"file-%06d" % committed[-1][0]) is not None
    finally:
        idx.close()


def test_write_other_errors_propagate(index):
    with pytest.raises(ValueError):
        with index.write() as txn:
            txn.put(b"k", b"v", db=index.db["meta"])
            raise ValueError("boom")
    with index.read() as txn:
        assert txn.get(b"k", db=index.db["meta"]) is None   # rolled back


def test_block_size_is_chosen_at_creation_and_kept(tmp_path):
    from gffs.index import Index as _Index
    idx = _Index(tmp_path / "bs", block_size=4 << 20)
    assert idx.block_size == 4 << 20
    idx.close()
    again = _Index(tmp_path / "bs")  # default asked, the store keeps its own
    assert again.block_size == 4 << 20
    again.close()


def test_repair_rows_continue_after_a_key_and_wrap_round(index, cm):
    digests = sorted(h(n) for n in range(5))
    with index.write() as txn:
        for d in digests:
            cm.queue_repair(txn, d, "flow", restore=["s3"])
    with index.read() as txn:
        first = [r[0] for r in cm.repair_rows(txn, 2)]
        second = [r[0] for r in cm.repair_rows(txn, 2, after=first[-1])]
        wrapped = [r[0] for r in cm.repair_rows(txn, 2, after=digests[3])]
        everything = [r[0] for r in cm.repair_rows(txn, 10, after=digests[2])]
    assert first == digests[:2] and second == digests[2:4]
    assert wrapped == [digests[4], digests[0]]
    assert everything == digests[3:] + digests[:3]


def test_image_rows_of_contents_no_file_has_are_dropped_with_their_thumbnail_refs(index, cm):
    images = ImageIndex(index)
    live, dead, thumb = h(1), h(2), h(3)
    with index.write() as txn:
        images.set_content_id(txn, 5, live)
        images.set_facts(txn, live, {"width": "1"})
        images.set_facts(txn, dead, {"width": "2"})
        images.set_thumbnail(txn, dead, "normal", thumb, ChunkRecord(0, 10, 10, 0), 1, 1, 10)
        images.queue(txn, dead, 6, 100)
    with index.read() as txn:
        assert list(images.thumbnail_chunks(txn)) == [thumb]
        assert cm.chunk(txn, thumb).refcount == 1
    with index.write() as txn:
        assert images.drop_unused(txn) == 3
    with index.read() as txn:
        assert images.facts(txn, live) == {"width": "1"} and images.facts(txn, dead) is None
        assert not images.thumbnails(txn, dead) and not images.queued(txn)
        assert cm.chunk(txn, thumb) is None and thumb in [d for d, _ in cm.garbage(txn)]
