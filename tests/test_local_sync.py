"""LocalBackend.sync(): the chunk files of a group commit are fsynced together, not in turn.

One fsync after the other waits for one journal commit each; the group commit
keeps FUSE requests waiting while it syncs the last chunks, so the sync must issue
them concurrently (the filesystem then commits them together).
"""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from gffs_backends import local
from gffs_backends.local import LocalBackend


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


@pytest.fixture
def backend(tmp_path: Path) -> LocalBackend:
    b = LocalBackend("a", tmp_path / "store")
    for i in range(40):
        b._put(f"{i:08x}" + "ab" * 28, b"chunk %d" % i)
    return b


def test_fsyncs_of_one_sync_overlap(backend, monkeypatch):
    """Two fsyncs of one sync are in progress at the same moment (a barrier both must
    reach: fsyncs issued one after the other would break it after 30 s)."""
    meet = threading.Barrier(2, timeout=30)
    real_fsync = os.fsync
    met: list[int] = []
    lock = threading.Lock()
    chosen = [0]

    def fsync(fd: int) -> None:
        with lock:
            first_two = os.path.isfile(_fd_path(fd)) and chosen[0] < 2
            chosen[0] += first_two
        if first_two:
            met.append(meet.wait())
        real_fsync(fd)

    monkeypatch.setattr(local.os, "fsync", fsync)
    backend._sync()
    assert sorted(met) == [0, 1]
    assert not backend._unsynced


def test_a_failed_sync_keeps_its_files_for_the_next(backend, monkeypatch):
    real_fsync = os.fsync
    synced: set[str] = set()
    fail = [True]

    def fsync(fd: int) -> None:
        path = _fd_path(fd)
        if fail[0] and os.path.isfile(path):
            fail[0] = False
            raise OSError(errno.EIO, "injected")
        real_fsync(fd)
        synced.add(path)

    monkeypatch.setattr(local.os, "fsync", fsync)
    with pytest.raises(OSError):
        backend._sync()
    assert len(backend._unsynced) == 40      # none forgotten: the commit retries them
    backend._sync()
    files = {p for p in synced if os.path.isfile(p)}
    assert len(files) == 40 and not backend._unsynced


def test_a_chunk_deleted_before_its_sync_is_skipped(backend):
    victim = next(iter(backend._unsynced))
    victim.unlink()
    backend._sync()
    assert not backend._unsynced
