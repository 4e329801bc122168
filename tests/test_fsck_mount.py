"""`gffs-admin fsck` on a mounted store: it runs inside the daemon (control socket), finds a
copy deleted behind the daemon's back and a crash leftover, and --repair fixes both while
the files stay readable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fsck_util import object_path
from gffs.index import ChunkMap, Index

pytestmark = pytest.mark.mount


def admin(m, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gffs.cli.admin", "--config", str(m.config),
                           "--data-dir", str(m.data_dir), "fsck", *args],
                          capture_output=True, text=True, timeout=300)


def chunk_digests(data_dir: Path) -> list[bytes]:
    index = Index(data_dir / "index", readonly=True)
    try:
        with index.read() as txn:
            return [d for d, _r in ChunkMap(index).all_chunks(txn)]
    finally:
        index.close()


def test_fsck_through_the_mounted_daemon(mount_factory, tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    config = root / "gffs.toml"
    config.write_text("[store]\nanalyze_images = false\n\n" + "".join(
        f'[backends.{n}]\ntype = "local"\npath = "{root / n}"\n\n' for n in ("a", "b"))
        + "[placement]\ncopies = 2\n")
    m = mount_factory(config=config)
    data = os.urandom(1_500_000)
    (m.path / "trip").mkdir()
    (m.path / "trip" / "big.jpg").write_bytes(data)
    clean = admin(m)
    assert clean.returncode == 0 and clean.stdout.strip().endswith("clean"), clean.stdout

    victim = chunk_digests(m.data_dir)[0]
    object_path(root / "a", victim).unlink()  # a copy vanishes behind the daemon's back
    stray = object_path(root / "b", bytes(32))
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"\x00left by a crash")
    old = time.time() - 7200
    os.utime(stray, (old, old))

    found = admin(m, "--json")
    assert found.returncode == 1, found.stderr
    result = json.loads(found.stdout)
    assert {k: v["found"] for k, v in result["summary"].items()} == {
        "copy_missing": 1, "object_unrecorded": 1}
    assert m.is_mounted()  # ran in the daemon: gffs-admin could not have opened the store

    fixed = admin(m, "--repair", "--json")
    assert fixed.returncode == 0, fixed.stderr + fixed.stdout
    assert json.loads(fixed.stdout)["fixed"] == 2
    assert object_path(root / "a", victim).exists() and not stray.exists()
    again = admin(m, "--verify-data")
    assert again.returncode == 0 and "clean" in again.stdout, again.stdout
    assert (m.path / "trip" / "big.jpg").read_bytes() == data
