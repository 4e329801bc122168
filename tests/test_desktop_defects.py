"""Two defects found while browsing flows in file managers (issue 14)."""

from __future__ import annotations

import io

import pytest
import trio
from PIL import Image

from gffs.images.facts import ANALYSIS_MEMORY_LIMIT, AnalysisProcess
from gffs.index import ROOT_INO
from mountutil import FUSE_AVAILABLE, SKIP_REASON, gffs_cli
from test_filesystem import USER, Env
from test_mount_thumbnails import jpeg
from test_thumbnails_fs import put

needs_fuse = pytest.mark.skipif(not FUSE_AVAILABLE, reason=SKIP_REASON)


def process_state(pid: int) -> str:
    """The kernel's state letter for *pid* ("" when it is gone; "Z": exited, not reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


@needs_fuse
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


# --------------------------------------------------------------------------- HEIF resource failure

def heif(size=(3000, 2000)) -> bytes:
    from gffs.images.analyze import heic_supported
    if not heic_supported():
        pytest.skip("pillow-heif is not installed")
    im = Image.linear_gradient("L").resize(size).convert("RGB")
    out = io.BytesIO()
    im.save(out, "HEIF", quality=60)
    return out.getvalue()


STARVED = 100 << 20   # address space in which libheif fails on a 6 MP HEIF (imports still fit)


class FirstProcessStarved(AnalysisProcess):
    """The state of the issue: the long-lived decoder process cannot get the memory a big
    HEIF needs (after other HEIFs), a fresh process can."""

    def __init__(self) -> None:
        super().__init__(memory_limit=STARVED)

    def close(self) -> None:
        super().close()
        self.memory_limit = ANALYSIS_MEMORY_LIMIT


def analyse_one(tmp_path, worker: AnalysisProcess, data: bytes):
    """Write one file through the Filesystem and let the analysis run until it has either
    stored facts or postponed the file; its facts and the queue's length then."""
    env = Env(tmp_path)
    env.fs.images._worker.close()
    env.fs.images._worker = worker
    result = {}

    async def main():
        fs = env.fs
        await fs.start(1000, 1000)
        async with trio.open_nursery() as nursery:
            await nursery.start(fs.run_background)
            flow, _ = fs.mkdir(ROOT_INO, b"sony", 0o755, USER)
            ino = await put(fs, flow, b"DSC0001.HIF", data)
            with trio.fail_after(300):   # two spawns and decodes on a loaded machine
                while True:
                    with fs.index.read() as txn:
                        facts = fs.images.images.facts_of(txn, ino)
                        result["queued"] = len(fs.images.images.queued(txn))
                    if facts is not None or fs.images._postponed:
                        break
                    await trio.sleep(0.1)
            result["facts"] = facts
            nursery.cancel_scope.cancel()
    try:
        trio.run(main)
    finally:
        env.fs.images.close()
        env.close()
    return result


def test_a_heif_the_worker_has_no_memory_for_gets_its_facts_from_a_fresh_worker(tmp_path):
    got = analyse_one(tmp_path, FirstProcessStarved(), heif())
    assert got["facts"] is not None and "error" not in got["facts"], got["facts"]
    assert (got["facts"]["format"], got["facts"]["width"]) == ("heic", "3000")


def test_a_resource_failure_is_never_stored_as_the_verdict(tmp_path):
    """Out of memory in a fresh worker too: no facts (absent), still queued for the next mount."""
    got = analyse_one(tmp_path, AnalysisProcess(memory_limit=STARVED + (20 << 20)), heif())
    assert got["facts"] is None, got["facts"]
    assert got["queued"] == 1
