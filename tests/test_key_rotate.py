"""Key rotation through real mounts: killed and rerun, mounted with limits, nothing left under the old key.

Two encrypted local disks hold two copies of every chunk. ``gffs-admin key
rotate`` is killed (SIGKILL) inside a put and inside a delete, then rerun; every
file reads meanwhile (either key's objects) and afterwards, and a scan of both
disks finds every chunk object and index backup object under the new key,
none under the old one, and the old key gone from the key file. The store is
written in sealed-object format 1 and the killed rotation runs in format 2, so a
rotation also moves a store across formats.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gffs.crypto import keyfile
from gffs.crypto.seal import AES_GCM, CHACHA, FORMAT_ENV, StoreKey
from gffs.index import ChunkMap, Index
from test_mount_crypt import admin

ROOT = Path(__file__).parent.parent


def write_config(tmp: Path) -> Path:
    cfg = tmp / "gffs.toml"
    cfg.write_text(f"""
[store]
analyze_images = false

[backends.a]
type = "local"
path = "{tmp / 'a'}"
encrypt = true

[backends.b]
type = "local"
path = "{tmp / 'b'}"
encrypt = true

[placement]
copies = 2
backends = ["a", "b"]
""")
    return cfg


def key_doc(data_dir: Path) -> tuple[str, dict]:
    index = Index(data_dir / "index", readonly=True)
    try:
        sid = index.store_id
    finally:
        index.close()
    return sid, json.loads(keyfile.key_path(sid).read_text())


def chunk_ids(data_dir: Path) -> list[str]:
    index = Index(data_dir / "index", readonly=True)
    try:
        with index.read() as txn:
            return [d.hex() for d in ChunkMap(index).all_digests(txn)]
    finally:
        index.close()


def assert_all_under(tmp: Path, data_dir: Path, new: StoreKey, old: StoreKey,
                     fmt: int | None = None) -> None:
    """Every chunk object is a known chunk under *new* (in format *fmt* if given); every
    backup object opens under *new*."""
    ids = chunk_ids(data_dir)
    new_names = {new.chunk_name(i): i for i in ids}
    old_names = {old.chunk_name(i) for i in ids}
    for disk in ("a", "b"):
        chunks = [p for p in (tmp / disk / "chunks").rglob("*") if p.is_file()]
        assert len([p for p in chunks if p.suffix != ".tmp"]) >= len(ids)
        for p in chunks:
            name = p.name.split(".")[0]    # a kill -9 may leave "<name>.<thread>.tmp" of a put
            assert name not in old_names, p
            if p.suffix != ".tmp":          # (a temp file may be cut short by the kill)
                assert new.open_chunk(new_names[name], p.read_bytes())
                assert fmt is None or p.read_bytes()[0] == fmt, p
        meta = [p for p in (tmp / disk / "meta").rglob("*")
                if p.is_file() and "crypt" not in p.relative_to(tmp / disk / "meta").parts]
        assert meta, "the index backups are there"
        for p in meta:
            name = str(p.relative_to(tmp / disk / "meta"))
            assert old.plain_meta_name(name) is None, name
            plain = new.plain_meta_name(name)
            assert plain is not None and new.open_meta(plain, p.read_bytes()) is not None, name


def crash_rotate(cfg: Path, data_dir: Path, step: str, nth: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.rebalance_crasher", step, str(nth), "--",
                           "--config", str(cfg), "--data-dir", str(data_dir), "key", "rotate"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.fixture
def filled(tmp_path, mount_factory, monkeypatch):
    monkeypatch.setenv(FORMAT_ENV, str(CHACHA))
    cfg = write_config(tmp_path)
    m = mount_factory(config=cfg)
    files = {f"f{i}": os.urandom(200_000 + i * 70_000) for i in range(6)}
    files["big"] = os.urandom(2_500_000)
    (m.path / "flow").mkdir()
    for n, data in files.items():
        (m.path / "flow" / n).write_bytes(data)
    res = admin(cfg, m.data_dir, "index", "backup")
    assert res.returncode == 0, res.stderr
    return cfg, m, files


def read_all(m, files: dict[str, bytes]) -> None:
    for n, data in files.items():
        assert (m.path / "flow" / n).read_bytes() == data, n


@pytest.mark.parametrize("step,nth", [("put-after", 3), ("delete-before", 2)])
def test_rotation_killed_then_rerun_reads_everything_and_leaves_nothing_under_the_old_key(
        filled, tmp_path, step, nth, monkeypatch):
    cfg, m, files = filled
    m.unmount()
    sid, before = key_doc(m.data_dir)
    old = keyfile.read_key(sid)
    monkeypatch.setenv(FORMAT_ENV, str(AES_GCM))    # written in format 1, rotated in 2
    res = crash_rotate(cfg, m.data_dir, step, nth)
    assert res.returncode == -9, res.stdout + res.stderr
    _sid, during = key_doc(m.data_dir)
    assert during["previous_key_ids"] == [before["key_id"]]   # both keys open objects now
    m.mount()               # a cold mount in the middle: old and new objects both read
    read_all(m, files)
    m.unmount()
    res = admin(cfg, m.data_dir, "key", "rotate", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert out["continued"] and out["retired"] == [before["key_id"]]
    assert sum(out["settled"].values()) >= 1       # the killed step left its intent row
    _sid, after = key_doc(m.data_dir)
    assert after["key_id"] == during["key_id"] and "previous_key_ids" not in after
    new = keyfile.read_key(sid)
    assert not new.previous
    assert_all_under(tmp_path, m.data_dir, new, old, AES_GCM)
    res = admin(cfg, m.data_dir, "fsck", "--verify-data", "--min-age", "0", "--json")
    assert res.returncode == 0, res.stdout + res.stderr       # no strays, nothing missing
    m.mount()
    read_all(m, files)


def test_rotation_in_the_mount_daemon_stops_at_the_size_limit_and_a_rerun_finishes(
        filled, tmp_path):
    cfg, m, files = filled
    sid, before = key_doc(m.data_dir)
    old = keyfile.read_key(sid)
    res = admin(cfg, m.data_dir, "key", "rotate", "--dry-run", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    planned = json.loads(res.stdout)
    assert not planned["rotating"] and planned["copies_to_rewrite"] > 16   # more than one window
    res = admin(cfg, m.data_dir, "key", "rotate", "--size-limit", "1", "--json")
    assert res.returncode == 3, res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert out["stopped"] == "size-limit"
    assert 0 < out["copies_rewritten"] < planned["copies_to_rewrite"]
    m.remount()       # a new daemon: it never put the old-key objects itself
    res = admin(cfg, m.data_dir, "gc", "--min-age", "0", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["unreferenced_deleted"] == 0   # old-key copies are no strays
    later = os.urandom(300_000)            # written under the new key while the rotation pauses
    (m.path / "flow" / "later").write_bytes(later)
    files["later"] = later
    m.remount()
    read_all(m, files)
    res = admin(cfg, m.data_dir, "key", "rotate", "--dry-run", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["rotating"], res.stderr
    res = admin(cfg, m.data_dir, "key", "rotate", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["retired"] == [before["key_id"]]
    m.unmount()
    new = keyfile.read_key(sid)
    assert new.key_id != old.key_id and not new.previous
    assert_all_under(tmp_path, m.data_dir, new, old)
    m.mount()
    read_all(m, files)
