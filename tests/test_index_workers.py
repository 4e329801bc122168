"""The index backup's full pass and rebalance's planning run in worker processes
(backup_worker.py, plan_worker.py): they give what the in-process code gives, a worker
that dies fails that one job cleanly (the store keeps serving, the next run works), and
cancelling the job kills its worker."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import trio

from mountutil import pid_alive
from gffs.fs.filesystem import Filesystem
from gffs.index import ROOT_INO
from gffs.maintenance.backup import backup_index
from gffs.maintenance.backup_worker import BackupFailed, FullPass
from gffs.maintenance.plan_worker import PlanFailed, Planner
from gffs.maintenance.progress import Progress
from gffs.maintenance.rebalance import make_plan, ordered, rebalance
from gffs.store import Store
from test_index_backup import (assert_restores, backup, full_cut, manifest_pieces,  # noqa: F401
                               populate, cfg, store)
from test_scale_admin import USER, two_disk_store

# The real worker, except that it writes its pid to MARK when it gets to work (the backup:
# at its first piece, after the copy; the plan: instead of planning), then kills itself
# with SIGKILL ("kill") or hangs ("hang").
WRAPPER = """
import os, signal, sys, time
from pathlib import Path
which, mode, mark = sys.argv[1], sys.argv[2], Path(sys.argv[3])
def stop(*args, **kwargs):
    mark.write_text(str(os.getpid()))
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(600)
if which == "backup":
    import gffs.maintenance.backup_snapshot as s
    import gffs.maintenance.backup_worker as w
    real = s.snapshot
    s.snapshot = lambda index, emit, cached: real(index, stop, cached)
else:
    import gffs.maintenance.rebalance as r
    import gffs.maintenance.plan_worker as w
    r.make_plan = stop
sys.exit(w.worker_main())
"""


def wrapped(monkeypatch, tmp_path: Path, worker: type, which: str, mode: str) -> Path:
    script, mark = tmp_path / "worker.py", tmp_path / f"{which}.pid"
    script.write_text(WRAPPER)
    monkeypatch.setattr(worker, "command", [sys.executable, str(script), which, mode, str(mark)])
    return mark


async def still_serves(store: Store, name: bytes) -> None:
    """The store takes a new file and reads it back."""
    fs = Filesystem(store.index, store.chunks, analyze_images=False)
    await fs.start(1000, 1000)
    d, _ = fs.mkdir(ROOT_INO, name, 0o755, USER)
    fh, ino, _ = fs.create(d, b"x.jpg", 0o644, os.O_RDWR, USER)
    await fs.write(fh, 0, b"pixels" * 100)
    await fs.release(fh)
    fh = await fs.open(ino, os.O_RDONLY)
    assert await fs.read(fh, 0, 600) == b"pixels" * 100
    await fs.release(fh)
    await fs.shutdown()


def moved_store(tmp_path: Path) -> Store:
    """Files written with one copy on a or b, then a policy of two copies: every chunk moves."""
    store = two_disk_store(tmp_path)
    try:
        for i in range(3):
            trio.run(still_serves, store, f"flow{i}".encode())
        populate(store, 40)
    finally:
        store.close()
    return two_disk_store(tmp_path, '[placement]\ncopies = 2\nbackends = ["a", "b"]\n')


# backups ------------------------------------------------------------------------------
def test_a_killed_backup_worker_fails_the_backup_and_the_next_one_is_complete(
        tmp_path, cfg, store, monkeypatch):
    populate(store, 200)
    mark = wrapped(monkeypatch, tmp_path, FullPass, "backup", "kill")
    with pytest.raises(BackupFailed, match=r"worker process exited \(code -9\)"):
        backup(store)
    assert not pid_alive(int(mark.read_text()))
    assert not store.index.env.readers().splitlines()[1:]   # its reader slot was cleared
    trio.run(still_serves, store, b"after")
    monkeypatch.undo()
    again = backup(store)                  # the taken changes were not lost: a full pass
    assert again["exit_code"] == 0 and again["pass"] == "full", again
    assert manifest_pieces(tmp_path, again["backends"][0]["version"]) == full_cut(store)
    populate(store, 3, seed=2)
    assert backup(store)["pass"] == "changes"
    assert_restores(store, cfg)


def test_cancelling_a_backup_kills_its_worker(tmp_path, cfg, store, monkeypatch):
    populate(store, 50)
    mark = wrapped(monkeypatch, tmp_path, FullPass, "backup", "hang")

    async def main() -> None:
        with trio.move_on_after(120) as scope:   # a failure, not the way this test ends
            async with trio.open_nursery() as nursery:
                nursery.start_soon(backup_index, store, Progress())
                while not mark.exists() or not mark.read_text():
                    await trio.sleep(0.05)
                nursery.cancel_scope.cancel()    # as Ctrl-C or a dropped connection does
        assert not scope.cancelled_caught
    trio.run(main)
    assert not pid_alive(int(mark.read_text()))
    monkeypatch.undo()
    assert backup(store)["exit_code"] == 0


# planning -----------------------------------------------------------------------------
class PhaseLog(Progress):
    """Records the phases begun and the items counted."""

    def __init__(self) -> None:
        super().__init__()
        self.phases: list[tuple] = []

    def begin(self, what, total_items=None, total_bytes=None, unit="items") -> None:
        super().begin(what, total_items, total_bytes, unit)
        self.phases.append((what, total_items, unit))

    def show(self, final: bool) -> None:
        pass


def test_the_planning_worker_plans_what_the_daemon_would(tmp_path):
    store = moved_store(tmp_path)
    try:
        plan = make_plan(store.index, store.placement, store.backends)
        assert len(plan.moves) > 40
        cursor = sorted(m.digest for m in plan.moves)[len(plan.moves) // 2].hex()

        async def main() -> tuple:
            async with Planner(store.index.path, store.placement, set(store.backends), None,
                               cursor, store.index.env, batch=7) as planner:
                summary = await planner.plan(shown)
                batches = [b async for b in planner.moves()]
            return summary, batches
        shown = PhaseLog()
        summary, batches = trio.run(main)
        # planning is a progress phase of its own: every inode and chunk row it read
        with store.index.read() as txn:
            rows = sum(txn.stat(store.index.db[t])["entries"] for t in ("inodes", "chunks"))
        assert shown.phases == [("planning", rows, "rows")]
        assert rows - 1 <= shown.items <= rows        # (the root is not walked)
        want = plan.summary()
        assert {**summary.census, "at": 0} == {**want.census, "at": 0}
        summary.census = want.census
        assert summary == want
        assert all(len(b) <= 7 for b in batches) and len(batches) > 1
        assert [m for b in batches for m in b] == ordered(plan.moves, cursor)
        result = trio.run(rebalance, store, {}, Progress())   # and the run moves them all
        assert result["chunks"] == len(plan.moves) and not result["failures"], result
        assert not make_plan(store.index, store.placement, store.backends).moves
    finally:
        store.close()


def test_a_killed_planning_worker_fails_the_run_and_the_store_keeps_serving(tmp_path,
                                                                          monkeypatch):
    store = moved_store(tmp_path)
    try:
        mark = wrapped(monkeypatch, tmp_path, Planner, "plan", "kill")
        with pytest.raises(PlanFailed, match=r"worker process exited \(code -9\)"):
            trio.run(rebalance, store, {}, Progress())
        assert not pid_alive(int(mark.read_text()))
        trio.run(still_serves, store, b"after")
        monkeypatch.undo()
        result = trio.run(rebalance, store, {}, Progress())
        assert result["chunks"] > 40 and not result["failures"], result
    finally:
        store.close()


def test_cancelling_a_rebalance_kills_its_planning_worker(tmp_path, monkeypatch):
    store = moved_store(tmp_path)
    try:
        mark = wrapped(monkeypatch, tmp_path, Planner, "plan", "hang")

        async def main() -> None:
            with trio.move_on_after(120) as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(rebalance, store, {"dry_run": True}, Progress())
                    while not mark.exists() or not mark.read_text():
                        await trio.sleep(0.05)
                    await still_serves(store, b"meanwhile")   # the planning blocks nothing
                    nursery.cancel_scope.cancel()
            assert not scope.cancelled_caught
        trio.run(main)
        assert not pid_alive(int(mark.read_text()))
    finally:
        store.close()
