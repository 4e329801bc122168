"""Encryption through real mounts: nothing readable on the backends, damage never served.

A local disk with ``encrypt = true`` and S3 on a moto server (encrypted by
default) hold two copies of every chunk. Every object on both, chunks and
index backups, is scanned for a marker string, the photo's bytes and its chunk
hashes. Damaged, truncated and swapped objects give the other copy or EIO;
a missing or wrong key stops the mount with one line and exit 2; a fresh
machine restores the encrypted index backup only once it has the key.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures_s3 import TEST_REGION
from gffs.crypto import keyfile
from gffs.crypto.seal import AES_GCM, CHACHA, FORMAT_ENV, StoreKey
from gffs.index import Index
from gffs_backends.local import chunk_path
from mountutil import gffs_cli

pytestmark = pytest.mark.usefixtures("s3_env")

MARKER = "ZEBRA-MARKER-41c9e2"
BLOCK = 1 << 20


def write_config(path: Path, local_dir: Path, endpoint: str, buckets: list[str],
                 copies: int = 2) -> Path:
    path.write_text(f"""
[store]
backend_timeout = 10
analyze_images = false

[backends.local]
type = "local"
path = "{local_dir}"
encrypt = true

[backends.s3]
type = "s3"
buckets = {json.dumps(buckets)}
endpoint_url = "{endpoint}"
region = "{TEST_REGION}"
timeout = 10

[placement]
copies = {copies}
backends = ["local", "s3"]
""")
    return path


def admin(config: Path, data_dir: Path, *args: str, env: dict | None = None):
    return subprocess.run([sys.executable, "-m", "gffs.cli.admin", "--config", str(config),
                           "--data-dir", str(data_dir), *args],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def photo(testdata_dir: Path | None) -> bytes:
    """A real camera JPEG when the team's testdata is there, else a generated one (> 1 block)."""
    if testdata_dir is not None:
        for p in sorted((testdata_dir / "exif-samples" / "jpg").glob("*.jpg")):
            if p.stat().st_size > 100_000:
                return p.read_bytes()
    return b"\xff\xd8\xff\xe0" + os.urandom(BLOCK + 300_000)


def _testdata_or_none() -> Path | None:
    from conftest import TESTDATA
    return TESTDATA if TESTDATA.is_dir() else None


def every_object(local_dir: Path, s3_admin, buckets: list[str]) -> dict[str, bytes]:
    """Name -> bytes of every object both backends hold (chunks, metadata, markers)."""
    out = {}
    for dirpath, _d, files in os.walk(local_dir):
        for f in files:
            p = os.path.join(dirpath, f)
            out[f"local:{os.path.relpath(p, local_dir)}"] = Path(p).read_bytes()
    for b in buckets:
        for page in s3_admin.get_paginator("list_objects_v2").paginate(Bucket=b):
            for o in page.get("Contents", []):
                out[f"s3:{b}/{o['Key']}"] = s3_admin.get_object(Bucket=b, Key=o["Key"])["Body"].read()
    return out


def store_key_of(data_dir: Path) -> tuple[str, StoreKey]:
    index = Index(data_dir / "index", readonly=True)
    try:
        sid = index.store_id
    finally:
        index.close()
    return sid, keyfile.read_key(sid)


def block_ids(data: bytes) -> list[str]:
    return [hashlib.sha256(data[i:i + BLOCK]).hexdigest() for i in range(0, len(data), BLOCK)]


def local_object(local_dir: Path, name: str) -> Path:
    return chunk_path(local_dir / "chunks", name)


@pytest.fixture
def setup(tmp_path, moto_server, s3_buckets):
    buckets = s3_buckets(2)
    cfg = write_config(tmp_path / "gffs.toml", tmp_path / "local", moto_server, buckets)
    return cfg, tmp_path / "local", buckets


def test_marker_and_photo_never_appear_in_backend_bytes_or_names(setup, mount_factory, s3_admin):
    cfg, local_dir, buckets = setup
    m = mount_factory(config=cfg)
    image = photo(_testdata_or_none())
    flow = m.path / f"flow-{MARKER}"
    flow.mkdir()
    (flow / f"{MARKER}.jpg").write_bytes(image)
    (flow / "notes.txt").write_text((MARKER + "\n") * 20_000)   # compressible: zstd, then sealed
    os.setxattr(flow / "notes.txt", "user.xdg.comment", MARKER.encode())
    res = admin(cfg, m.data_dir, "index", "backup")
    assert res.returncode == 0, res.stderr
    m.remount()   # cold cache: reads go to the (encrypted) backends
    assert (flow / f"{MARKER}.jpg").read_bytes() == image
    m.unmount()   # and the backup at unmount

    objects = every_object(local_dir, s3_admin, buckets)
    assert sum(n.startswith("s3:") for n in objects) > 3 and sum(n.startswith("local:") for n in objects) > 3
    assert any("/index/" in n or n.startswith("local:meta/index") for n in objects)  # backups are there
    hashes = block_ids(image) + block_ids(((MARKER + "\n") * 20_000).encode())
    windows = [image[i:i + 32] for i in range(0, len(image) - 32, len(image) // 50)]
    for name, raw in objects.items():
        assert MARKER not in name and MARKER.encode() not in raw, name
        assert not any(h in name or h.encode() in raw or bytes.fromhex(h) in raw for h in hashes), name
        assert not any(w in raw for w in windows), name


def test_damaged_copies_read_the_other_copy_then_eio_never_wrong_bytes(setup, mount_factory, s3_admin):
    cfg, local_dir, buckets = setup
    m = mount_factory(config=cfg)
    a, b = os.urandom(200_000), os.urandom(200_000)
    (m.path / "f").mkdir()
    (m.path / "f" / "a.bin").write_bytes(a)
    (m.path / "f" / "b.bin").write_bytes(b)
    m.unmount()
    _sid, key = store_key_of(m.data_dir)
    name_a, name_b = key.chunk_name(block_ids(a)[0]), key.chunk_name(block_ids(b)[0])
    pa, pb = local_object(local_dir, name_a), local_object(local_dir, name_b)
    pb.write_bytes(pa.read_bytes())                      # swapped: A's bytes under B's name
    pa.write_bytes(pa.read_bytes()[:-7])                 # truncated
    m.mount()
    assert (m.path / "f" / "a.bin").read_bytes() == a    # both from S3
    assert (m.path / "f" / "b.bin").read_bytes() == b
    m.unmount()
    assert "authentication failed" in m.log_text() or "not a sealed object" in m.log_text()
    # now the S3 copies too: B altered, A swapped for B's bytes
    bucket_of = {}
    for bk in buckets:
        for o in s3_admin.list_objects_v2(Bucket=bk).get("Contents", []):
            bucket_of[o["Key"].rsplit("/", 1)[-1]] = (bk, o["Key"])
    (ba, ka), (bb, kb) = bucket_of[name_a], bucket_of[name_b]
    raw_b = bytearray(s3_admin.get_object(Bucket=bb, Key=kb)["Body"].read())
    s3_admin.put_object(Bucket=ba, Key=ka, Body=bytes(raw_b))
    raw_b[100] ^= 0x40
    s3_admin.put_object(Bucket=bb, Key=kb, Body=bytes(raw_b))
    for p in (pa, pb):      # and the local copies may have been repaired meanwhile: damage again
        if p.exists():
            p.write_bytes(p.read_bytes()[:-1])
    m.mount()
    for name in ("a.bin", "b.bin"):
        with pytest.raises(OSError) as exc:
            (m.path / "f" / name).read_bytes()
        assert exc.value.errno == errno.EIO


def test_missing_or_wrong_key_stops_the_mount_with_exit_2(setup, mount_factory):
    cfg, _local_dir, _buckets = setup
    m = mount_factory(config=cfg)
    (m.path / "f").mkdir()
    (m.path / "f" / "x").write_bytes(b"hello")
    m.unmount()
    sid, key = store_key_of(m.data_dir)
    path = keyfile.key_path(sid)
    path.rename(path.with_suffix(".away"))
    res = gffs_cli(*m._args())
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "gffs-admin key import" in res.stderr
    assert not path.exists()                   # never silently made anew
    keyfile.write_key_file(path, keyfile.encode_key(sid, StoreKey(os.urandom(32))))
    res = gffs_cli(*m._args())
    assert res.returncode == 2 and "wrong key file" in res.stderr, res.stderr
    path.unlink()
    path.with_suffix(".away").rename(path)
    m.mount()
    assert (m.path / "f" / "x").read_bytes() == b"hello"


def test_restore_on_a_fresh_machine_needs_the_key(setup, mount_factory, tmp_path, monkeypatch,
                                                  s3_admin):
    cfg, _local_dir, buckets = setup
    m = mount_factory(config=cfg)
    files = {"a.jpg": photo(_testdata_or_none()), "b.txt": MARKER.encode() * 1000}
    (m.path / "f").mkdir()
    for n, data in files.items():
        (m.path / "f" / n).write_bytes(data)
    res = admin(cfg, m.data_dir, "key", "export", str(tmp_path / "exported.key"))
    assert res.returncode == 0, res.stderr
    m.unmount()
    # a new machine: no data dir, no key; the same config, the S3 buckets
    fresh = tmp_path / "fresh"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "fresh-config"))
    res = admin(cfg, fresh / "data", "index", "restore", "--from", "s3")
    assert res.returncode != 0
    assert "no key for it" in res.stderr + res.stdout and "gffs-admin key import" in res.stderr + res.stdout
    assert not (fresh / "data" / "index" / "data.mdb").exists()
    res = admin(cfg, fresh / "data", "key", "import", str(tmp_path / "exported.key"))
    assert res.returncode == 0, res.stderr
    # a tampered newest manifest is detected, never used
    versions = [(bk, o["Key"]) for bk in buckets
                for o in s3_admin.list_objects_v2(Bucket=bk).get("Contents", [])
                if "/versions/" in o["Key"]]
    assert versions
    bk, k = versions[0]
    good = s3_admin.get_object(Bucket=bk, Key=k)["Body"].read()
    s3_admin.put_object(Bucket=bk, Key=k, Body=good[:-1] + bytes([good[-1] ^ 1]))
    res = admin(cfg, fresh / "data", "index", "list", "--from", "s3", "--json")
    assert res.returncode == 0 and "unreadable" in res.stdout, res.stdout + res.stderr
    s3_admin.put_object(Bucket=bk, Key=k, Body=good)
    res = admin(cfg, fresh / "data", "index", "restore", "--from", "s3")
    assert res.returncode == 0, res.stdout + res.stderr
    m2 = mount_factory(config=cfg, name="fresh")
    assert m2.data_dir == fresh / "data"
    for n, data in files.items():
        assert (m2.path / "f" / n).read_bytes() == data


def test_gc_and_fsck_map_encrypted_objects_to_chunks(setup, mount_factory):
    """gc and fsck list names they cannot invert: live chunks must stay, a stray must go."""
    cfg, local_dir, _buckets = setup
    m = mount_factory(config=cfg)
    data = os.urandom(3 * BLOCK)
    (m.path / "f").mkdir()
    (m.path / "f" / "big").write_bytes(data)
    m.unmount()
    _sid, key = store_key_of(m.data_dir)
    stray_id = hashlib.sha256(b"a crash leftover").hexdigest()
    stray = local_object(local_dir, key.chunk_name(stray_id))
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(key.seal_chunk(stray_id, b"\x00a crash leftover"))
    res = admin(cfg, m.data_dir, "fsck", "--min-age", "0", "--json")
    assert res.returncode == 1, res.stdout + res.stderr      # the stray is a problem ...
    found = json.loads(res.stdout)["summary"]
    assert set(found) == {"object_unrecorded"} and found["object_unrecorded"]["found"] == 1
    res = admin(cfg, m.data_dir, "gc", "--min-age", "0", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["unreferenced_deleted"] == 1   # ... and only it goes
    assert not stray.exists()
    res = admin(cfg, m.data_dir, "fsck", "--verify-data", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    m.mount()
    assert (m.path / "f" / "big").read_bytes() == data


def sealed_formats(local_dir: Path) -> dict[str, int]:
    """Object name -> first byte (the sealed-object format) of every local chunk object."""
    return {p.name: p.read_bytes()[0] for p in (local_dir / "chunks").glob("*/*") if p.is_file()}


def test_a_format_1_store_mounted_in_format_2_reads_repairs_verifies_and_collects(
        setup, mount_factory, monkeypatch):
    """Stores written before format 2 keep their objects; new writes, repairs and puts of
    the same chunk come in format 2 under the same names, and every tool opens both."""
    cfg, local_dir, _buckets = setup
    monkeypatch.setenv(FORMAT_ENV, "1")
    m = mount_factory(config=cfg)
    old = {f"old{i}.bin": os.urandom(BLOCK + 50_000 * (i + 1)) for i in range(2)}
    (m.path / "f").mkdir()
    for n, data in old.items():
        (m.path / "f" / n).write_bytes(data)
    m.unmount()
    assert set(sealed_formats(local_dir).values()) == {CHACHA}
    monkeypatch.setenv(FORMAT_ENV, "2")
    m.mount()
    for n, data in old.items():
        assert (m.path / "f" / n).read_bytes() == data
    new = {"new.bin": os.urandom(2 * BLOCK)}
    (m.path / "f" / "new.bin").write_bytes(new["new.bin"])
    m.unmount()
    sid, key = store_key_of(m.data_dir)
    formats = sealed_formats(local_dir)
    assert {formats[key.chunk_name(h)] for h in block_ids(old["old0.bin"])} == {CHACHA}
    assert {formats[key.chunk_name(h)] for h in block_ids(new["new.bin"])} == {AES_GCM}
    marker = json.loads((local_dir / "meta" / "crypt" / f"{sid}.json").read_bytes())
    assert marker["formats"] == [CHACHA, AES_GCM]
    # lose a format-1 copy: the repair re-puts it from S3 in format 2, under the same name
    lost = local_object(local_dir, key.chunk_name(block_ids(old["old1.bin"])[0]))
    lost.unlink()
    res = admin(cfg, m.data_dir, "fsck", "--repair", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["summary"]["copy_missing"]["found"] == 1
    assert lost.read_bytes()[0] == AES_GCM
    # strays of both formats go, nothing live does
    for fmt in (CHACHA, AES_GCM):
        stray_id = hashlib.sha256(b"a crash leftover %d" % fmt).hexdigest()
        stray = local_object(local_dir, key.chunk_name(stray_id))
        stray.parent.mkdir(parents=True, exist_ok=True)
        sealer = StoreKey(key.master, write_format=fmt)
        stray.write_bytes(sealer.seal_chunk(stray_id, b"\x00a crash leftover"))
    res = admin(cfg, m.data_dir, "gc", "--min-age", "0", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(res.stdout)["unreferenced_deleted"] == 2
    res = admin(cfg, m.data_dir, "fsck", "--verify-data", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    assert set(sealed_formats(local_dir).values()) == {CHACHA, AES_GCM}
    m.mount()
    for n, data in {**old, **new}.items():
        assert (m.path / "f" / n).read_bytes() == data
