"""Disaster recovery through real mounts: lose the data directory, restore the index, read back.

Ingest through a mount, unmount (or kill -9 the daemon after an automatic
backup), delete the whole data directory (index, lock, log: what a lost machine
takes with it), ``gffs-admin index restore --from BACKEND`` with nothing but the
config, mount again and compare every file, link, symlink and xattr byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures_s3 import TEST_REGION


def admin(config: Path, data_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gffs.cli.admin", "--config", str(config),
                           "--data-dir", str(data_dir), *args],
                          capture_output=True, text=True, timeout=300)


def write_config(path: Path, backend: str, interval: int = 600) -> Path:
    path.write_text(f"""
[store]
analyze_images = false
index_backup_interval = {interval}
{backend}
""")
    return path


def s3_config(path: Path, endpoint: str, buckets: list[str]) -> Path:
    return write_config(path, f"""
[backends.s3]
type = "s3"
buckets = {json.dumps(buckets)}
endpoint_url = "{endpoint}"
region = "{TEST_REGION}"
timeout = 10
""")


def local_config(path: Path, disk: Path, interval: int = 600) -> Path:
    return write_config(path, f"""
[backends.disk]
type = "local"
path = "{disk}"
""", interval)


def ingest(root: Path) -> dict[str, bytes]:
    """Files of many shapes in two flows: multi-block, empty, nested, a hard link across
    flows, a symlink, xattrs. Returns relative path -> contents of every regular file."""
    rnd = __import__("random").Random(11)
    files = {
        "landscapes/alps.jpg": b"\xff\xd8\xff\xe0" + rnd.randbytes(2_600_000),
        "landscapes/empty.jpg": b"",
        "landscapes/2023/summer/lake.png": b"\x89PNG\r\n\x1a\n" + rnd.randbytes(70_000),
        "landscapes/notes.txt": b"sunset over the lake\n" * 5000,
    }
    files.update({f"portraits/p{i:03d}.jpg": rnd.randbytes(rnd.randint(1, 300_000))
                  for i in range(40)})
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    os.setxattr(root / "landscapes/alps.jpg", "user.xdg.tags", b"sunset,alps")
    (root / "favourites").mkdir()
    os.link(root / "landscapes/alps.jpg", root / "favourites/alps.jpg")
    files["favourites/alps.jpg"] = files["landscapes/alps.jpg"]
    os.symlink("../landscapes/alps.jpg", root / "favourites/alps-link.jpg")   # the last inode
    return files


def check_tree(root: Path, files: dict[str, bytes]) -> None:
    found = {str(p.relative_to(root)) for p in root.rglob("*")
             if p.is_file() and not p.is_symlink()}
    assert found == set(files)
    for rel, data in files.items():
        assert (root / rel).read_bytes() == data, rel
    assert os.readlink(root / "favourites/alps-link.jpg") == "../landscapes/alps.jpg"
    assert (root / "favourites/alps-link.jpg").read_bytes() == files["landscapes/alps.jpg"]
    assert os.stat(root / "landscapes/alps.jpg").st_nlink == 2
    assert os.getxattr(root / "favourites/alps.jpg", "user.xdg.tags") == b"sunset,alps"


def lose_the_machine(m) -> None:
    assert not m.is_mounted()
    assert "Traceback" not in m.log_text(), m.log_tail(60)
    shutil.rmtree(m.data_dir)


def restore_and_check(m, config: Path, source: str, files: dict[str, bytes]) -> dict:
    listed = admin(config, m.data_dir, "index", "list", "--from", source, "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)[source], listed.stdout
    res = admin(config, m.data_dir, "index", "restore", "--from", source, "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["check"]["lost"] == 0 and report["check"]["chunks"] > 0, report
    m.mount()
    check_tree(m.path, files)
    return report


@pytest.mark.usefixtures("s3_env")
def test_restore_from_s3_after_losing_the_data_directory(tmp_path, mount_factory, moto_server,
                                                         s3_buckets):
    config = s3_config(tmp_path / "gffs.toml", moto_server, s3_buckets(3))
    m = mount_factory(config=config)
    files = ingest(m.path)
    res = admin(config, m.data_dir, "index", "restore", "--from", "s3")
    assert res.returncode == 1 and "unmount it first" in res.stderr    # mounted: refused
    m.unmount()                                   # the unmount backs the index up
    res = admin(config, m.data_dir, "index", "restore", "--from", "s3")
    assert res.returncode == 4 and "--force" in res.stderr             # index exists: refused
    lose_the_machine(m)
    restore_and_check(m, config, "s3", files)
    # the restored store goes on working: new writes, and the next backup is incremental
    (m.path / "landscapes" / "new.jpg").write_bytes(b"new after restore")
    res = admin(config, m.data_dir, "index", "backup", "--json")
    assert res.returncode == 0, res.stderr
    backed = json.loads(res.stdout)
    assert backed["backends"][0]["unchanged"] is False
    m.unmount()


def test_restore_from_a_local_backend_outside_the_data_directory(tmp_path, mount_factory):
    disk = tmp_path / "disk"
    config = local_config(tmp_path / "gffs.toml", disk)
    m = mount_factory(config=config)
    files = ingest(m.path)
    m.unmount()
    lose_the_machine(m)
    restore_and_check(m, config, "disk", files)
    m.unmount()
    # gc deletes what the index does not reference: never the backups
    res = admin(config, m.data_dir, "gc", "--min-age", "0", "--json")
    assert res.returncode == 0, res.stderr
    assert list((disk / "meta" / "index" / "versions").iterdir())
    m.mount()
    check_tree(m.path, files)


def test_automatic_backup_survives_a_crash(tmp_path, mount_factory):
    """No clean unmount: the periodic backup alone must bring the files back."""
    disk = tmp_path / "disk"
    config = local_config(tmp_path / "gffs.toml", disk, interval=1)
    m = mount_factory(config=config)
    files = ingest(m.path)
    versions = disk / "meta" / "index" / "versions"
    status = admin(config, m.data_dir, "status", "--json")
    assert status.returncode == 0, status.stderr
    live = {k: json.loads(status.stdout)[k] for k in ("inodes", "chunks", "logical_bytes")}
    deadline = time.monotonic() + 30
    while True:       # wait for a backup of the index as it is now (the symlink came last)
        res = admin(config, m.data_dir, "index", "list", "--from", "disk", "--json")
        listed = json.loads(res.stdout)["disk"] if res.returncode == 0 else []
        if listed and {k: listed[-1].get(k) for k in live} == live:
            break
        assert time.monotonic() < deadline, (res.stderr, listed, live, m.log_tail())
        time.sleep(0.5)
    n_versions = len(list(versions.iterdir()))
    time.sleep(2.5)   # an unchanged index is not backed up again
    assert len(list(versions.iterdir())) == n_versions
    m.kill9()
    lose_the_machine(m)
    restore_and_check(m, config, "disk", files)
    m.unmount()
