"""Index backup and restore on real stores (Index + ChunkStore + local backends), no FUSE.

What a user relies on: a restore brings back every record of every table; a backup
after a few changes uploads a few pieces; old versions go, the kept ones still
restore; damage is caught and leaves the store unchanged; a mounted store or an
existing index is never overwritten by accident; gc never deletes backups.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from faults import FaultyBackend
from gffs.config import load_config
from gffs.errors import StoreLockedError
from gffs.fs.filesystem import Caller, Filesystem
from gffs.chunks import codec
from gffs.index import ROOT_INO, ChunkMap, Index, Namespace
from gffs.index.env import DB_NAMES
from gffs.maintenance import backup as backup_mod
from gffs.maintenance import backup_format
from gffs.maintenance.backup import backup_if_changed, backup_index, list_versions
from gffs.maintenance.backup_format import PIECES, VERSIONS, BadBackup, records
from gffs.maintenance.backup_snapshot import snapshot
from gffs.maintenance.jobs import JobRefused
from gffs.maintenance.progress import Progress
from gffs.maintenance.restore import restore_index
from gffs.store import Store
from gffs_backends.local import LocalBackend

USER = Caller(1000, 1000)


def write_config(tmp_path: Path, keep: int = 10, scratch: bool = False, remote: str = "",
                 backup_to: str = "disk") -> Path:
    """A store in tmp/data whose chunks and backups go to tmp/disk (outside data_dir);
    with *scratch*, a second copy of every chunk also goes to a local disk inside data_dir;
    *remote* adds a backend table (named *backup_to* to send the backups there)."""
    cfg = tmp_path / "gffs.toml"
    second = f"""
[backends.scratch]
type = "local"
path = "{tmp_path / 'data' / 'scratch'}"
""" if scratch else ""
    cfg.write_text(f"""
[store]
data_dir = "{tmp_path / 'data'}"
analyze_images = false
index_backup_keep = {keep}
index_backup_to = ["{backup_to}"]

[backends.disk]
type = "local"
path = "{tmp_path / 'disk'}"
{second}{remote}
[placement]
copies = {2 if scratch else 1}
backends = {json.dumps(["disk", "scratch"] if scratch else ["disk"])}
""")
    os.chmod(cfg, 0o600)
    return cfg


def populate(store: Store, n_files: int, seed: int = 1, flow: bytes = b"flow") -> dict[str, bytes]:
    """Files with random contents and an xattr each, written through the Filesystem class."""
    rnd = random.Random(seed)
    files: dict[str, bytes] = {}

    async def main() -> None:
        fs = Filesystem(store.index, store.chunks, analyze_images=False)
        await fs.start(1000, 1000)
        try:
            d, _ = fs.mkdir(ROOT_INO, flow, 0o755, USER)
        except Exception:
            d, _ = fs.lookup(ROOT_INO, flow)
        for i in range(n_files):
            data = rnd.randbytes(rnd.randint(100, 3000))
            name = f"img-{seed}-{i:05d}.jpg".encode()
            fh, ino, _ = fs.create(d, name, 0o644, os.O_RDWR, USER)
            await fs.write(fh, 0, data)
            await fs.release(fh)
            fs.setxattr(ino, b"user.xdg.tags", f"tag{i % 7},seed{seed}".encode())
            files[f"{flow.decode()}/{name.decode()}"] = data
    trio.run(main)
    return files


def dump(src: Path | Index) -> dict[str, list[tuple[bytes, bytes]]]:
    """Every record of every table (of an open index, or of the one at a path)."""
    index = src if isinstance(src, Index) else Index(src, readonly=True)
    try:
        with index.read() as txn:
            return {t: [(bytes(k), bytes(v)) for k, v in txn.cursor(db=index.db[t])]
                    for t in DB_NAMES}
    finally:
        if index is not src:
            index.close()


def backup(store: Store, **kw) -> dict:
    return trio.run(lambda: backup_index(store, Progress(), **kw))


def restore(cfg, source: str = "disk", **kw) -> dict:
    return trio.run(lambda: restore_index(cfg, source, Progress(), **kw))


def meta_names(tmp_path: Path, prefix: str) -> list[str]:
    return trio.run(LocalBackend("disk", tmp_path / "disk").list_meta, prefix)


@pytest.fixture
def cfg(tmp_path):
    return load_config(write_config(tmp_path))


@pytest.fixture
def store(cfg):
    backup_mod._STATES.clear()
    s = Store(cfg, "test")
    yield s
    s.close()


def wipe_data_dir(cfg) -> None:
    import shutil
    shutil.rmtree(cfg.data_dir)


def assert_restores(store, cfg) -> None:
    """Close the store, lose its data dir, restore the newest backup: every record is back."""
    before = dump(store.index)
    store.close()
    wipe_data_dir(cfg)
    restore(cfg)
    assert dump(cfg.index_dir) == before


def test_restore_brings_back_every_record_of_every_table(tmp_path, cfg, store):
    populate(store, 300)
    before = dump(store.index)
    result = backup(store)
    assert result["exit_code"] == 0, result
    assert result["backends"][0]["unchanged"] is False
    store.close()
    wipe_data_dir(cfg)
    report = restore(cfg)
    assert dump(cfg.index_dir) == before
    assert report["restored"] == result["backends"][0]["version"]
    assert report["check"]["lost"] == 0 and report["check"]["chunks"] > 0
    assert not list(cfg.data_dir.glob("index.restoring*"))


def piece_bytes(tmp_path: Path) -> dict[str, int]:
    root = tmp_path / "disk" / "meta" / "index" / "pieces"
    return {p.name: p.stat().st_size for p in root.iterdir()}


def test_second_backup_uploads_only_the_pieces_that_changed(tmp_path, cfg, store, monkeypatch):
    # 16 KiB pieces instead of 256 KiB, so that a test-sized index spans many of them
    monkeypatch.setattr(backup_format, "TARGET_PIECE", 4 << 10)
    populate(store, 1500)
    first = backup(store)
    assert first["pieces"] >= 120, first
    before = piece_bytes(tmp_path)
    populate(store, 1, seed=2)            # one more file: a few records in a few tables
    second = backup(store)
    new = {k: v for k, v in piece_bytes(tmp_path).items() if k not in before}
    assert second["backends"][0]["unchanged"] is False
    # about one per table touched (the views' cidinodes, viewrows and inoviews included)
    assert 0 < len(new) <= 15, (len(new), first["pieces"])
    assert sum(new.values()) < 0.15 * sum(before.values())
    third = backup(store)                 # nothing changed since
    assert third["backends"][0]["unchanged"] is True
    assert third["backends"][0]["version"] == second["backends"][0]["version"]
    assert len(meta_names(tmp_path, VERSIONS)) == 2


def test_retention_keeps_the_newest_versions_and_only_their_pieces(tmp_path):
    cfg = load_config(write_config(tmp_path, keep=2))
    backup_mod._STATES.clear()
    store = Store(cfg, "test")
    states = []
    try:
        for round_ in range(4):
            populate(store, 50, seed=round_)
            states.append(dump(store.index))
            assert backup(store)["exit_code"] == 0
    finally:
        store.close()
    versions = trio.run(list_versions, LocalBackend("disk", tmp_path / "disk"))
    assert len(versions) == 2
    disk = LocalBackend("disk", tmp_path / "disk")
    used = set()
    for v in versions:
        m = json.loads(trio.run(disk.get_meta, f"{VERSIONS}{v['version']}.json"))
        used |= {p["sha256"] for p in m["pieces"]}
    assert {n[len(PIECES):] for n in meta_names(tmp_path, PIECES)} == used
    # the older kept version restores to the state it was taken from
    wipe_data_dir(cfg)
    restore(cfg, version=versions[0]["version"])
    assert dump(cfg.index_dir) == states[2]
    restore(cfg, force=True)
    assert dump(cfg.index_dir) == states[3]


def test_restore_refuses_to_replace_an_index_without_force(tmp_path, cfg, store):
    populate(store, 20)
    backup(store)
    populate(store, 5, seed=9)            # written after the backup
    newer = dump(store.index)
    store.close()
    with pytest.raises(JobRefused, match="--force"):
        restore(cfg)
    assert dump(cfg.index_dir) == newer   # untouched
    report = restore(cfg, force=True)
    kept = Path(report["replaced"])
    assert kept.parent == cfg.data_dir and kept.name.startswith("index.replaced-")
    assert dump(kept) == newer            # the replaced index is kept, not deleted
    assert dump(cfg.index_dir) != newer


def test_restore_refuses_while_the_store_is_open(cfg, store):
    populate(store, 5)
    backup(store)
    with pytest.raises(StoreLockedError):
        restore(cfg, force=True)


def test_damaged_or_missing_piece_fails_and_changes_nothing(tmp_path, cfg, store):
    populate(store, 500)
    backup(store)
    store.close()
    wipe_data_dir(cfg)
    piece = sorted((tmp_path / "disk" / "meta" / "index" / "pieces").iterdir())[3]
    data = bytearray(piece.read_bytes())
    data[len(data) // 2] ^= 0xFF
    piece.write_bytes(bytes(data))
    with pytest.raises(BadBackup, match=f"piece {piece.name[:16]}.*damaged"):
        restore(cfg)
    assert not cfg.index_dir.exists()
    assert not list(cfg.data_dir.glob("index.restoring*"))
    piece.unlink()
    with pytest.raises(BadBackup, match="missing"):
        restore(cfg)
    assert not cfg.index_dir.exists()


def test_manifest_of_another_schema_is_refused(tmp_path, cfg, store):
    populate(store, 5)
    version = backup(store)["backends"][0]["version"]
    store.close()
    wipe_data_dir(cfg)
    path = tmp_path / "disk" / "meta" / "index" / "versions" / f"{version}.json"
    m = json.loads(path.read_text())
    m["schema"] = 99
    path.write_text(json.dumps(m))
    with pytest.raises(BadBackup, match="no index backups"):
        restore(cfg)
    assert not cfg.index_dir.exists()


def test_a_failing_backend_is_reported_and_the_others_are_backed_up(tmp_path, cfg, store):
    populate(store, 20)
    bad = FaultyBackend(LocalBackend("bad", tmp_path / "bad"), down=True)
    targets = {"disk": store.backends["disk"], "bad": bad}
    result = backup(store, targets=targets)
    assert result["exit_code"] == 1
    by_name = {r["backend"]: r for r in result["backends"]}
    assert "error" in by_name["bad"] and "down" in by_name["bad"]["error"]
    assert "error" not in by_name["disk"]
    # the automatic backup retries while a target is behind, and succeeds once it is back
    bad.down = False
    again = trio.run(backup_if_changed, store, targets)
    assert again is not None and again["exit_code"] == 0
    assert trio.run(bad.inner.list_meta, VERSIONS)
    assert trio.run(backup_if_changed, store, targets) is None   # nothing changed since


def test_restore_reports_chunks_without_a_copy_and_their_files(tmp_path):
    cfg = load_config(write_config(tmp_path, scratch=True))
    backup_mod._STATES.clear()
    store = Store(cfg, "test")
    try:
        files = populate(store, 40)
        backup(store)
    finally:
        store.close()
    wipe_data_dir(cfg)             # takes the scratch disk with it: one copy of each chunk
    lost = sorted(files)[:3]
    disk = LocalBackend("disk", tmp_path / "disk")
    first = restore(cfg)["check"]
    assert first["lost"] == 0 and first["fewer_copies"] == first["chunks"] > 0
    # now lose the other copy of three files' chunks too
    index = Index(cfg.index_dir, readonly=True)
    ns, cm = Namespace(index), ChunkMap(index)
    with index.read() as txn:
        flow_ino = ns.lookup(txn, ROOT_INO, b"flow")
        for path in lost:
            ino = ns.lookup(txn, flow_ino, path.split("/")[1].encode())
            for _i, digest in cm.blocks(txn, ino):
                trio.run(disk.delete, digest.hex())
    index.close()
    report = restore(cfg, force=True)["check"]
    assert report["lost"] == 3 and report["files_affected"] == 3
    assert report["examples"] == [f"/{p}" for p in lost]


def test_backups_survive_gc(tmp_path, cfg, store):
    populate(store, 30)
    backup(store)
    store.close()
    before = meta_names(tmp_path, "")
    res = subprocess.run([sys.executable, "-m", "gffs.cli.admin", "--config",
                          str(tmp_path / "gffs.toml"), "gc", "--min-age", "0", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert meta_names(tmp_path, "") == before and before


def test_pieces_hold_whole_records_in_key_order(tmp_path, cfg, store):
    populate(store, 400)
    backup(store)
    disk = LocalBackend("disk", tmp_path / "disk")
    (name,) = meta_names(tmp_path, VERSIONS)
    m = json.loads(trio.run(disk.get_meta, name))
    by_table: dict[str, list[bytes]] = {}
    for p in m["pieces"]:
        stored = trio.run(disk.get_meta, PIECES + p["sha256"])
        plain = bytes(codec.decode(stored, bytes.fromhex(p["sha256"])))
        assert len(plain) == p["size"] and len(stored) == p["stored"]
        by_table.setdefault(p["table"], []).extend(k for k, _v in records(plain))
    for table, keys in by_table.items():
        assert keys == sorted(keys) and len(keys) == m["tables"][table]


@pytest.mark.parametrize("kind", ["ipfs", "gdrive"])
def test_backup_and_restore_through_ipfs_and_drive(tmp_path, request, kind):
    """The same pipeline over the other backends' metadata objects (a real Kubo node,
    the loopback Drive endpoint), configured as a user would."""
    if kind == "ipfs":
        server = request.getfixturevalue("kubo")
        table = f"""
[backends.remote]
type = "ipfs"
api = "{server.multiaddr}"
mfs_dir = "/gffs/restore-{tmp_path.name[-20:]}"
"""
    else:
        from fixtures_gdrive import token_file
        server = request.getfixturevalue("drive")
        cred = token_file(server, tmp_path / "drive-token.json")
        table = f"""
[backends.remote]
type = "gdrive"
folder = "restore-{tmp_path.name[-20:]}"
credentials = "{cred}"
api_endpoint = "{server.url}"
max_creates_per_s = 0
"""
    cfg = load_config(write_config(tmp_path, remote=table, backup_to="remote"))
    backup_mod._STATES.clear()
    store = Store(cfg, "test")
    try:
        populate(store, 200)
        before = dump(store.index)
        first = backup(store)
        assert first["exit_code"] == 0, first
        populate(store, 3, seed=4)
        after = dump(store.index)
        assert backup(store)["exit_code"] == 0
    finally:
        store.close()
    wipe_data_dir(cfg)
    versions = restore(cfg, "remote", version=first["backends"][0]["version"])
    assert dump(cfg.index_dir) == before and versions["check"]["lost"] == 0
    restore(cfg, "remote", force=True)
    assert dump(cfg.index_dir) == after


def change_many_tables(store: Store) -> None:
    """New files, a deleted one, a renamed one, changed xattrs: records in most tables move."""
    populate(store, 30, seed=5, flow=b"other")

    async def main() -> None:
        fs = Filesystem(store.index, store.chunks, analyze_images=False)
        await fs.start(1000, 1000)
        d, _ = fs.lookup(ROOT_INO, b"flow")
        fs.unlink(d, b"img-1-00007.jpg")
        fs.rename(d, b"img-1-00100.jpg", d, b"moved.jpg")
        for i in range(1, 500, 111):   # not 7 (deleted) nor 100 (renamed)
            ino, _ = fs.lookup(d, f"img-1-{i:05d}.jpg".encode())
            fs.setxattr(ino, b"user.xdg.tags", b"changed")
    trio.run(main)


def full_cut(store: Store) -> list[tuple[str, str]]:
    """(table, sha256) of every piece a full cut of the committed index makes now."""
    got: list[tuple[str, str]] = []
    snapshot(store.index, lambda table, sha, _size, _plain: got.append((table, sha)), {})
    return got


def manifest_pieces(tmp_path: Path, version: str) -> list[tuple[str, str]]:
    disk = LocalBackend("disk", tmp_path / "disk")
    m = json.loads(trio.run(disk.get_meta, f"{VERSIONS}{version}.json"))
    return [(p["table"], p["sha256"]) for p in m["pieces"]]


def test_incremental_backup_equals_a_full_one_and_restores_the_same_records(
        tmp_path, cfg, store, monkeypatch):
    monkeypatch.setattr(backup_format, "TARGET_PIECE", 4 << 10)
    populate(store, 1200)
    first = backup(store)
    assert first["pieces_reused"] == 0 and first["pieces"] >= 60, first
    change_many_tables(store)
    cuts = []
    real = backup_format.ends_piece
    monkeypatch.setattr(backup_format, "ends_piece", lambda *a: cuts.append(1) or real(*a))
    incremental = backup(store)
    # most pieces were recognised whole; only the records around the changes were cut (a tag
    # change also touches three places of the views' tables: viewrows, inoviews)
    assert incremental["pieces_reused"] >= 0.5 * incremental["pieces"], incremental
    n_records = sum(json.loads(trio.run(
        LocalBackend("disk", tmp_path / "disk").get_meta,
        f"{VERSIONS}{incremental['backends'][0]['version']}.json"))["tables"].values())
    assert len(cuts) < 0.5 * n_records, (len(cuts), n_records)
    assert incremental["pass"] == "changes", incremental
    assert manifest_pieces(tmp_path, incremental["backends"][0]["version"]) == full_cut(store)
    # a full pass of the same state (no cache, changes unknown) makes exactly the same pieces
    (cfg.data_dir / backup_mod.CACHE_FILE).unlink()
    store.index.changes.doubt()
    full = backup(store)
    assert full["pieces_reused"] == 0 and full["pass"] == "full"
    assert full["backends"][0]["unchanged"] is True       # same pieces: no new manifest
    vid = incremental["backends"][0]["version"]
    assert full["backends"][0]["version"] == vid
    assert_restores(store, cfg)


def test_incremental_backup_uploads_only_changed_pieces(tmp_path, cfg, store, monkeypatch):
    monkeypatch.setattr(backup_format, "TARGET_PIECE", 4 << 10)
    populate(store, 750)
    first = backup(store)
    before = piece_bytes(tmp_path)
    puts = []
    real_put = LocalBackend.put_meta

    async def counting_put(self, name, data):
        puts.append(name)
        return await real_put(self, name, data)
    monkeypatch.setattr(LocalBackend, "put_meta", counting_put)
    populate(store, 1, seed=2)
    second = backup(store)
    new = set(piece_bytes(tmp_path)) - set(before)
    uploaded = [n for n in puts if n.startswith(PIECES)]
    assert sorted(n[len(PIECES):] for n in uploaded) == sorted(new)
    assert 0 < len(uploaded) <= 15, (len(uploaded), first["pieces"])   # (views' tables too)
    assert second["pieces_reused"] >= second["pieces"] - 2 * len(uploaded), second


def test_a_stale_or_damaged_piece_cache_costs_time_not_correctness(tmp_path, cfg, store,
                                                                    monkeypatch):
    monkeypatch.setattr(backup_format, "TARGET_PIECE", 4 << 10)
    populate(store, 500)
    backup(store)
    cache = cfg.data_dir / backup_mod.CACHE_FILE
    stale = cache.read_bytes()
    change_many_tables(store)
    reference = backup(store)             # with the right cache
    (cfg.data_dir / backup_mod.CACHE_FILE).write_bytes(stale)   # one version behind
    store.index.changes.doubt()           # (a full pass reads the cache file)
    again = backup(store)
    assert again["backends"][0]["unchanged"] is True, again
    cache.write_bytes(b"{not json")
    store.index.changes.doubt()
    assert backup(store)["backends"][0]["version"] == reference["backends"][0]["version"]
    doc = json.loads(stale)               # a cache whose hashes lie about every piece
    for pieces in doc["tables"].values():
        for p in pieces:
            p[2] = "0" * 64
    cache.write_text(json.dumps(doc))
    store.index.changes.doubt()
    assert backup(store)["backends"][0]["version"] == reference["backends"][0]["version"]


OLD_BACKUP = Path(__file__).parent / "data" / "index-backup-v1"


def test_restore_of_a_backup_written_before_the_piece_cache(tmp_path):
    """tests/data/index-backup-v1 was written by the per-record cutter (see its make.py)."""
    import shutil
    shutil.copytree(OLD_BACKUP / "disk", tmp_path / "disk")
    cfg = load_config(write_config(tmp_path))
    report = restore(cfg)
    expected = json.loads((OLD_BACKUP / "records.json").read_text())
    restored = {t: recs for t, recs in dump(cfg.index_dir).items()
                if recs or t in expected}     # tables newer than the backup: made empty
    assert restored == {t: [(bytes.fromhex(k), bytes.fromhex(v)) for k, v in recs]
                        for t, recs in expected.items()}
    assert report["check"]["lost"] == 0 and report["check"]["chunks"] > 0
    # and the next backup of the restored store reuses the old pieces (the rule is unchanged)
    backup_mod._STATES.clear()
    store = Store(cfg, "test")
    try:
        assert backup(store)["backends"][0]["unchanged"] is True
    finally:
        store.close()


# --- backups that read only around what changed (gffs/index/changes.py) ------------------

PROTECTED_META = {b"schema", b"store_id", b"block_size", b"created_ns"}


def random_changes(store: Store, rnd: random.Random, n: int) -> None:
    """*n* puts, overwrites and deletes in every table, many at or next to the first keys
    of the last backup's pieces (where a cut begins), in a few write transactions. Values
    in ``chunks`` are other records' (restore reads that table)."""
    pieces = backup_mod._state(store).pieces or {}
    index = store.index
    for table in DB_NAMES:
        db = index.db[table]
        with index.read() as txn:
            records = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=db)]
        keys = [k for k, _v in records]

        def value(n: int) -> bytes:
            return rnd.choice(records)[1] if table == "chunks" else rnd.randbytes(n)
        firsts = [p.first for p in pieces.get(table, [])]
        with index.write() as txn:
            for _ in range(n):
                what = rnd.random()
                if table == "meta":
                    txn.put(b"test-%d" % rnd.randrange(50), rnd.randbytes(rnd.randrange(1, 300)),
                            db=db)
                elif what < 0.25 and firsts:                   # a piece's first key goes
                    txn.delete(rnd.choice(firsts), db=db)
                elif what < 0.4 and firsts:                    # a record just before a cut
                    k = keys.index(f) - 1 if (f := rnd.choice(firsts)) in keys else -1
                    if k >= 0:
                        txn.delete(keys[k], db=db)
                elif what < 0.6 and keys:                      # overwritten
                    txn.put(rnd.choice(keys), value(rnd.randrange(0, 2000)), db=db)
                elif what < 0.75 and keys:
                    txn.delete(rnd.choice(keys), db=db)
                elif records or table != "chunks":             # new, anywhere in key order
                    txn.put(rnd.randbytes(rnd.randrange(1, 40)),
                            value(rnd.randrange(0, 1500)), db=db)


def empty_table(store: Store, table: str) -> None:
    with store.index.read() as txn:
        keys = [bytes(k) for k in txn.cursor(db=store.index.db[table]).iternext(values=False)]
    with store.index.write() as txn:
        for k in keys:
            txn.delete(k, db=store.index.db[table])


def check_like_a_full_cut(tmp_path: Path, store: Store, result: dict, how: str = "changes"
                          ) -> None:
    assert result["exit_code"] == 0, result
    assert result["pass"] == how, result
    version = result["backends"][0]["version"]
    assert manifest_pieces(tmp_path, version) == full_cut(store)


def test_random_changes_in_every_table_give_the_pieces_of_a_full_cut(tmp_path, cfg, store,
                                                                     monkeypatch):
    monkeypatch.setattr(backup_format, "TARGET_PIECE", 2 << 10)
    populate(store, 300)
    check_like_a_full_cut(tmp_path, store, backup(store), how="full")
    rnd = random.Random(13)
    reads = []
    real = backup_format.ends_piece
    monkeypatch.setattr(backup_format, "ends_piece", lambda *a: reads.append(1) or real(*a))
    for rounds in range(8):
        random_changes(store, rnd, 1 + rounds % 3)
        if rounds == 2:
            empty_table(store, "xattrs")                       # a table emptied
        if rounds == 4:                                        # ... and filled again
            with store.index.write() as txn:
                for i in range(40):
                    txn.put(b"x%03d" % i, rnd.randbytes(300), db=store.index.db["xattrs"])
        reads.clear()
        result = backup(store)
        decided = len(reads)
        check_like_a_full_cut(tmp_path, store, result)
        assert result["pieces_reused"] > 0, result
    # the cut decided only records around changes (the last round: a few keys per table)
    reads.clear()
    full_cut(store)
    assert decided < 0.5 * len(reads), (decided, len(reads))
    # and the result restores
    assert_restores(store, cfg)


def test_a_restart_or_an_unseen_commit_makes_one_full_pass(tmp_path, cfg, store, monkeypatch):
    monkeypatch.setattr(backup_format, "TARGET_PIECE", 4 << 10)
    populate(store, 200)
    check_like_a_full_cut(tmp_path, store, backup(store), how="full")
    rnd = random.Random(5)
    random_changes(store, rnd, 2)
    check_like_a_full_cut(tmp_path, store, backup(store))
    # a write the tracker does not see (as another process's would be): the ids jump
    with store.index.env.begin(write=True) as txn:
        txn.put(b"unseen", b"1", db=store.index.db["xattrs"])
    check_like_a_full_cut(tmp_path, store, backup(store), how="full")
    with store.index.env.begin(write=True) as txn:      # ... also followed by a seen one
        txn.put(b"unseen", b"2", db=store.index.db["xattrs"])
    random_changes(store, rnd, 2)
    check_like_a_full_cut(tmp_path, store, backup(store), how="full")
    random_changes(store, rnd, 2)
    check_like_a_full_cut(tmp_path, store, backup(store))
    # a restart knows nothing: one full pass (reusing the cache file), then incremental again
    store.close()
    backup_mod._STATES.clear()
    again = Store(cfg, "test")
    try:
        random_changes(again, rnd, 2)
        result = backup(again)
        check_like_a_full_cut(tmp_path, again, result, how="full")
        assert result["pieces_reused"] > 0
        random_changes(again, rnd, 2)
        check_like_a_full_cut(tmp_path, again, backup(again))
    finally:
        again.close()


def test_a_failed_backup_gives_its_changes_back(tmp_path, cfg, store, monkeypatch):
    monkeypatch.setattr(backup_format, "TARGET_PIECE", 4 << 10)
    populate(store, 200)
    backup(store)
    rnd = random.Random(8)
    random_changes(store, rnd, 3)
    real_put = LocalBackend.put_meta
    uploads = []

    async def failing_put(self, name, data):
        if name.startswith(PIECES):
            uploads.append(name)
            if len(uploads) == 2:                  # the second piece: mid-upload
                raise backup_mod.BackendError("injected")
        return await real_put(self, name, data)
    monkeypatch.setattr(LocalBackend, "put_meta", failing_put)
    failed = backup(store)
    assert failed["exit_code"] == 1 and len(uploads) >= 2, failed
    monkeypatch.setattr(LocalBackend, "put_meta", real_put)
    random_changes(store, rnd, 2)                  # more changes after the failure
    check_like_a_full_cut(tmp_path, store, backup(store))
    # a cut that raises (a bug): the next backup is a full pass
    random_changes(store, rnd, 2)

    def broken(*_a, **_k):
        raise RuntimeError("injected")
    monkeypatch.setattr(backup_mod, "snapshot_changes", broken)
    with pytest.raises(Exception):
        backup(store)
    monkeypatch.undo()
    monkeypatch.setattr(backup_format, "TARGET_PIECE", 4 << 10)
    check_like_a_full_cut(tmp_path, store, backup(store), how="full")


def test_group_commit_changes_reach_the_backup_that_sees_them(tmp_path, cfg, store,
                                                              monkeypatch):
    """Under group commit (a mount) a backup reads the committed state: changes merged but
    not yet committed are neither in it nor lost for the next one."""
    from gffs.index import commit as commit_mod
    monkeypatch.setattr(backup_format, "TARGET_PIECE", 4 << 10)
    monkeypatch.setattr(commit_mod, "COMMIT_INTERVAL", 3600.0)   # commits only when asked
    populate(store, 200)
    backup(store)
    db = store.index.db["xattrs"]

    async def nothing() -> None:
        pass

    async def main() -> list[dict]:
        out = []
        async with store.index.grouped(nothing):
            with store.index.write() as txn:
                txn.put(b"grouped-a", b"1", db=db)
            await store.index.durable()
            with store.index.write() as txn:          # merged, not committed
                txn.put(b"grouped-b", b"2", db=db)
                txn.delete(b"grouped-a", db=db)
            out.append(await backup_index(store, Progress()))
            out.append(full_cut(store))
            await store.index.durable()
            out.append(await backup_index(store, Progress()))
            out.append(full_cut(store))
        return out

    first, cut1, second, cut2 = trio.run(main)
    for result, cut in ((first, cut1), (second, cut2)):
        assert result["exit_code"] == 0 and result["pass"] == "changes", result
        assert manifest_pieces(tmp_path, result["backends"][0]["version"]) == cut
    assert cut1 != cut2
    with store.index.read() as txn:
        assert txn.get(b"grouped-b", db=db) == b"2" and txn.get(b"grouped-a", db=db) is None
