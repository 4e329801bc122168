"""Permission checks through the kernel (default_permissions) for another user."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from mountutil import FUSE_AVAILABLE, SKIP_REASON, Mount

NOBODY = 65534


def _as_nobody(func) -> int:
    """Run *func* in a child process as uid/gid 65534; return 0 or the errno it hit."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            func()
        except OSError as exc:
            code = exc.errno or 255
        except BaseException:
            code = 255
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.fixture
def shared_mount():
    """A mount another user can reach (pytest's tmp dirs are private to root)."""
    if not FUSE_AVAILABLE:
        pytest.skip(SKIP_REASON)
    root = Path(tempfile.mkdtemp(prefix="gffs-perm-"))
    os.chmod(root, 0o755)
    m = Mount(root, opts=["allow_other"])
    try:
        yield m.mount()
    finally:
        m.cleanup()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_mode_bits_are_enforced(shared_mount):
    m = shared_mount
    flow = m.path / "private"
    flow.mkdir(mode=0o755)
    secret = flow / "secret.jpg"
    secret.write_bytes(b"x")
    os.chmod(secret, 0o600)
    assert _as_nobody(lambda: open(secret, "rb").read()) == errno.EACCES
    os.chmod(secret, 0o644)
    assert _as_nobody(lambda: open(secret, "rb").read()) == 0
    assert _as_nobody(lambda: open(secret, "ab").write(b"y")) == errno.EACCES
    assert _as_nobody(lambda: os.chown(secret, NOBODY, NOBODY)) == errno.EPERM
    assert _as_nobody(lambda: (flow / "new").write_bytes(b"")) == errno.EACCES
    os.chmod(flow, 0o1777)  # sticky, world-writable
    assert _as_nobody(lambda: (flow / "mine").write_bytes(b"ok")) == 0
    assert os.stat(flow / "mine").st_uid == NOBODY
    assert _as_nobody(lambda: os.unlink(secret)) in (errno.EPERM, errno.EACCES)
