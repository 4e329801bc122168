"""The control socket without FUSE: a ControlServer on a real Store, clients over the socket."""

from __future__ import annotations

import io
import socket

import pytest
import trio

from gffs.config import load_config
from gffs.maintenance import jobs
from gffs.maintenance.control import ControlServer, JobFailed, request_job
from gffs.maintenance.progress import LineProgress, Progress, TerminalProgress, describe
from gffs.store import Store


class Recorder(Progress):
    def __init__(self) -> None:
        super().__init__()
        self.shown: list[dict] = []
        self.notes: list[str] = []

    def display(self, s: dict, final: bool) -> None:
        self.shown.append(s)

    def note(self, message: str) -> None:
        self.notes.append(message)


@pytest.fixture
def test_jobs():
    """Jobs that exist only in these tests: they block, refuse, fail or count."""
    state = {"release": None, "cancelled": 0, "started": None}

    async def blocker(store, args, progress):
        progress.begin("blocking", 3, 300)
        progress.advance(1, 100)
        progress.note("half way")
        state["started"].set()
        try:
            await state["release"].wait()
        except trio.Cancelled:
            state["cancelled"] += 1
            raise
        return {"chunks": store.index.store_id}

    async def refuser(store, args, progress):
        raise jobs.JobRefused("would drop copies")

    async def crasher(store, args, progress):
        raise ValueError("boom")

    added = {"t-block": jobs.Job("t-block", blocker), "t-refuse": jobs.Job("t-refuse", refuser),
             "t-crash": jobs.Job("t-crash", crasher), "t-read": jobs.Job("t-read", blocker, False)}
    jobs.JOBS.update(added)
    yield state
    for name in added:
        jobs.JOBS.pop(name, None)


def run_with_server(tmp_path, body):
    cfg = load_config(None, str(tmp_path / "data"))
    store = Store(cfg, "test")

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(ControlServer(store).serve)
            await body(cfg)
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        store.close()
    assert not (cfg.data_dir / "control.sock").exists()  # removed when the daemon stops


def client(cfg, name, progress=None):
    return trio.to_thread.run_sync(lambda: request_job(cfg.data_dir, name, {}, progress or Recorder()))


def test_job_runs_in_the_server_and_progress_comes_back(tmp_path, test_jobs):
    seen = Recorder()

    async def body(cfg):
        test_jobs["release"], test_jobs["started"] = trio.Event(), trio.Event()
        async with trio.open_nursery() as n:
            result = {}

            async def go():
                result.update(await client(cfg, "t-block", seen))
            n.start_soon(go)
            await test_jobs["started"].wait()
            test_jobs["release"].set()
        assert result["chunks"]  # the store id: ran on the server's store

    run_with_server(tmp_path, body)
    assert seen.notes == ["half way"]
    assert seen.shown and seen.shown[-1]["what"] == "blocking"


def test_second_writing_job_is_refused_but_a_reader_runs(tmp_path, test_jobs):
    async def body(cfg):
        test_jobs["release"], test_jobs["started"] = trio.Event(), trio.Event()
        async with trio.open_nursery() as n:
            n.start_soon(client, cfg, "t-block")
            await test_jobs["started"].wait()
            with pytest.raises(jobs.JobBusy, match="t-block is running"):
                await client(cfg, "t-block")
            test_jobs["started"] = trio.Event()
            n.start_soon(client, cfg, "t-read")  # read-only jobs run beside it
            await test_jobs["started"].wait()
            test_jobs["release"].set()

    run_with_server(tmp_path, body)


def test_client_hangup_cancels_the_job(tmp_path, test_jobs):
    async def body(cfg):
        test_jobs["release"], test_jobs["started"] = trio.Event(), trio.Event()
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.connect(str(cfg.data_dir / "control.sock"))
        await sock.send(b'{"job": "t-block", "args": {}}\n')
        await test_jobs["started"].wait()
        sock.close()
        with trio.fail_after(5):
            while not test_jobs["cancelled"]:
                await trio.sleep(0.01)
        # the writer slot is free again
        test_jobs["started"] = trio.Event()
        async with trio.open_nursery() as n:
            n.start_soon(client, cfg, "t-block")
            await test_jobs["started"].wait()
            test_jobs["release"].set()

    run_with_server(tmp_path, body)
    assert test_jobs["cancelled"] == 1


def test_refusals_failures_and_unknown_jobs_reach_the_client(tmp_path, test_jobs):
    async def body(cfg):
        with pytest.raises(jobs.JobRefused, match="would drop copies"):
            await client(cfg, "t-refuse")
        with pytest.raises(JobFailed, match="ValueError: boom"):
            await client(cfg, "t-crash")
        with pytest.raises(JobFailed, match="no maintenance job named 'nope'"):
            await client(cfg, "nope")

    run_with_server(tmp_path, body)


def test_no_daemon_is_a_connection_error(tmp_path):
    with pytest.raises(ConnectionError, match="does not answer"):
        request_job(tmp_path, "gc", {}, Recorder())


def test_progress_displays():
    s = {"what": "rebalance", "unit": "chunks", "items": 5, "total_items": 10, "bytes": 5 << 20,
         "total_bytes": 10 << 20, "rate": 1 << 20, "elapsed": 5.0, "eta": 5.0}
    assert describe(s) == "rebalance: 5/10 chunks, 5.0 MiB/10.0 MiB, 1.0 MiB/s ETA 0:00:05"
    out = io.StringIO()
    TerminalProgress(out, width=10).display(s, final=True)
    assert out.getvalue() == "\r\033[K[#####.....] " + describe(s) + "\n"
    lines: list[str] = []
    p = LineProgress(lines.append)
    p.begin("gc", 2, unit="chunks")
    p.advance(items=1)          # within the interval: no line yet
    p.finish_phase()
    assert len(lines) == 1 and lines[0].startswith("gc: 1/2 chunks")
