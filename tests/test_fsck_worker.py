"""fsck's index scans run in a worker process: a worker that dies is a clear failure of the
fsck run (never of the caller), and cancelling the run (Ctrl-C, a dropped control
connection) kills the worker. That the worker finds the same problems as before is what
test_fsck.py, test_fsck_mount.py and test_fsck_s3.py check: every run goes through it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import trio

from mountutil import pid_alive
from fsck_util import Damage, fsck, make_config, populate
from gffs.index.records import u64
from gffs.maintenance.fsck import fsck_job
from gffs.maintenance.fsck_worker import ScanFailed, ScanWorker
from gffs.maintenance.progress import Progress
from gffs.store import Store

# The real worker, except that in the views phase it writes its pid to MARK, then
# kills itself with SIGKILL ("kill") or hangs ("hang").
WRAPPER = """
import os, signal, sys, time
from pathlib import Path
import gffs.maintenance.fsck_worker as w
mode, mark = sys.argv[1], Path(sys.argv[2])
real = w.run_phase
def run_phase(index, ctx, phase, tick, state):
    if phase == "views":
        mark.write_text(str(os.getpid()))
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(600)
    return real(index, ctx, phase, tick, state)
w.run_phase = run_phase
sys.exit(w.worker_main())
"""


@pytest.fixture
def cfg(tmp_path):
    cfg = make_config(tmp_path, copies=1)
    populate(cfg, {f"f/{i}.bin": os.urandom(2000) for i in range(20)})
    return cfg


def wrapped(monkeypatch, tmp_path: Path, mode: str) -> Path:
    script, mark = tmp_path / "worker.py", tmp_path / "worker.pid"
    script.write_text(WRAPPER)
    monkeypatch.setattr(ScanWorker, "command", [sys.executable, str(script), mode, str(mark)])
    return mark


def test_a_killed_worker_fails_the_run_and_the_next_run_works(cfg, tmp_path, monkeypatch):
    with Damage(cfg) as d, d.index.write() as txn:   # a problem the namespace phase finds
        txn.put(u64(999) + b"ghost", u64(999) + u64(77), db=d.db["dirents"])
    mark = wrapped(monkeypatch, tmp_path, "kill")

    async def main(store: Store) -> None:
        with pytest.raises(ScanFailed, match=r"worker process exited \(code -9\)"):
            await fsck_job(store, {}, Progress())

    store = Store(cfg, "test")
    try:
        trio.run(main, store)
    finally:
        store.close()
    assert mark.exists() and not pid_alive(int(mark.read_text()))
    monkeypatch.undo()
    result = fsck(cfg)
    assert result["summary"]["dirent_in_missing_dir"]["found"] == 1


def test_cancelling_the_run_kills_the_worker(cfg, tmp_path, monkeypatch):
    mark = wrapped(monkeypatch, tmp_path, "hang")

    async def main(store: Store) -> None:
        with trio.move_on_after(120) as scope:   # a failure, not the way this test ends
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fsck_job, store, {}, Progress())
                while not mark.exists() or not mark.read_text():
                    await trio.sleep(0.05)
                nursery.cancel_scope.cancel()    # as Ctrl-C or a dropped connection does
        assert not scope.cancelled_caught

    store = Store(cfg, "test")
    try:
        trio.run(main, store)
    finally:
        store.close()
    assert not pid_alive(int(mark.read_text()))
