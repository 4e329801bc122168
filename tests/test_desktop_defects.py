"""Two defects found while browsing flows in file managers (issue 14)."""

from __future__ import annotations

import pytest

from mountutil import FUSE_AVAILABLE, SKIP_REASON, gffs_cli
from test_mount_thumbnails import jpeg

pytestmark = pytest.mark.skipif(not FUSE_AVAILABLE, reason=SKIP_REASON)


def process_state(pid: int) -> str:
    """The kernel's state letter for *pid* ("" when it is gone; "Z": exited, not reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def test_umount_returns_only_once_the_daemon_has_exited(mount_factory):
    """The daemon releases the store lock before it has finished exiting (interpreter
    shutdown, the analysis process): umount used to return seconds before that."""
    m = mount_factory()
    flow = m.path / "f"
    flow.mkdir()
    for i in range(5):
        (flow / f"{i}.jpg").write_bytes(jpeg(i))
    pid = m.pid()
    assert pid and process_state(pid) not in ("", "Z")
    res = gffs_cli("umount", str(m.path))
    assert res.returncode == 0, res.stderr
    assert process_state(pid) in ("", "Z", "X"), "gffs umount returned while the daemon still ran"
    assert "data is safe" in m.log_text()
