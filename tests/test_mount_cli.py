"""The ways a user mounts and stops gffs: fstab helper, -o ro, SIGTERM, umount errors."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import pytest

from mountutil import FUSE_AVAILABLE, SKIP_REASON, Mount, gffs_cli

pytestmark = pytest.mark.skipif(not FUSE_AVAILABLE, reason=SKIP_REASON)


def test_fstab_helper_mounts_with_data_dir_option(tmp_path):
    m = Mount(tmp_path)
    m.path.mkdir()
    try:
        res = subprocess.run([sys.executable, "-m", "gffs.cli.mount_helper", "gffs", str(m.path),
                              "-o", f"rw,nofail,data_dir={m.data_dir}"],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert m.is_mounted()
        (m.path / "flow").mkdir()
        assert os.listdir(m.path) == ["flow"]
    finally:
        m.cleanup()


def test_read_only_mount_refuses_writes(mount_factory):
    m = mount_factory()
    (m.path / "flow").mkdir()
    (m.path / "flow" / "a.jpg").write_bytes(b"jpeg")
    m.unmount()
    m.opts = ["ro"]
    m.mount()
    assert (m.path / "flow" / "a.jpg").read_bytes() == b"jpeg"
    with pytest.raises(OSError) as e:
        (m.path / "flow" / "b.jpg").write_bytes(b"x")
    assert e.value.errno == errno.EROFS


def test_sigterm_unmounts_and_keeps_data(mount_factory):
    m = mount_factory()
    (m.path / "flow").mkdir()
    data = os.urandom(2_000_000)
    (m.path / "flow" / "a.jpg").write_bytes(data)
    pid = m.pid()
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while m.is_mounted() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not m.is_mounted()
    m.mount()
    assert (m.path / "flow" / "a.jpg").read_bytes() == data


def test_umount_of_something_else_is_a_clear_error(tmp_path):
    res = gffs_cli("umount", str(tmp_path))
    assert res.returncode == 1 and "is not mounted" in res.stderr


def test_mount_over_the_remains_of_a_crashed_daemon(mount_factory):
    m = mount_factory()
    (m.path / "flow").mkdir()
    (m.path / "flow" / "a.jpg").write_bytes(b"kept")
    pid = m.pid()
    os.kill(pid, signal.SIGKILL)
    while os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z":
        time.sleep(0.02)
    with pytest.raises(OSError) as e:
        os.listdir(m.path)
    assert e.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    res = gffs_cli("mount", str(m.path), "--data-dir", str(m.data_dir))
    assert res.returncode == 0, res.stderr
    assert "crashed daemon" in res.stderr
    assert (m.path / "flow" / "a.jpg").read_bytes() == b"kept"
