"""Failures in background work never end the filesystem; failed closes keep the old content.

Issue: an ENOSPC or EIO in a background index write (image facts' commit,
write-behind's purge of an unlinked file) escaped the nursery and ended
pyfuse3.main(), i.e. unmounted. Background work now logs, backs off and
retries; only a request that needs the change sees an errno.
"""

from __future__ import annotations

import errno
import io
import os
from contextlib import contextmanager

import trio
from PIL import Image

from faults import FaultyBackend
from gffs.chunks.store import ChunkStore
from gffs.errors import FsError
from gffs.fs.filesystem import Filesystem
from gffs.index import ROOT_INO
from gffs.placement import Placement
from test_filesystem import RW, USER, Env, MiB, put_file, read_file


class IndexWriteFaults:
    """Make the index's write transactions fail with ENOSPC while ``failing`` is set."""

    def __init__(self, index) -> None:
        self.failing = False
        self.failures = 0
        real = index.write

        @contextmanager
        def write():
            if self.failing:
                self.failures += 1
                raise FsError(errno.ENOSPC, "index: disk full (injected)")
            with real() as txn:
                yield txn

        index.write = write


async def _until(predicate, what: str, timeout: float = 60) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def test_failed_image_facts_commit_is_retried_not_fatal(tmp_path):
    env = Env(tmp_path)
    faults = IndexWriteFaults(env.index)

    async def main(fs):
        async with trio.open_nursery() as nursery:
            await nursery.start(fs.run_background)
            d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
            ino = await _put_while(fs, d, faults)   # then the analysis' commit fails
            await _until(lambda: faults.failures >= 1, "a failed facts commit")
            faults.failing = False
            with trio.fail_after(60):
                while True:
                    try:
                        assert fs.getxattr(ino, b"user.gf.image.format") == b"png"
                        break
                    except FsError:
                        await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    try:
        env.run(main)
    finally:
        env.close()


async def _put_while(fs: Filesystem, d: int, faults: IndexWriteFaults) -> int:
    """Write and close an image with index writes working (only background ones fail)."""
    faults.failing = False
    ino = await put_file(fs, d, b"red.png", _png())
    faults.failing = True
    return ino


def test_failed_purge_after_write_behind_is_retried_not_fatal(tmp_path):
    """An unlinked file whose write-behind finishes after the last close is purged by
    that background task; its failure must not end the filesystem."""
    e = Env(tmp_path)
    slow = FaultyBackend(e.backend, delay=2.0, ops={"put"})
    e.chunks = ChunkStore(e.index, {"local": slow}, Placement([slow]))
    e.fs = Filesystem(e.index, e.chunks, analyze_images=False)
    faults = IndexWriteFaults(e.index)

    async def main(fs):
        async with trio.open_nursery() as nursery:
            await nursery.start(fs.run_background)
            d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
            fh, ino, _ = fs.create(d, b"x", 0o644, RW, USER)
            await fs.write(fh, 0, os.urandom(MiB))   # a full block: write-behind starts
            assert fs.buffers[ino].storing
            fs.unlink(d, b"x")
            await fs.truncate(ino, 0)
            await fs.release(fh)
            assert fs.buffers[ino].storing         # still in flight (2 s put)
            faults.failing = True
            await _until(lambda: faults.failures >= 1, "a failed purge")
            faults.failing = False
            await _until(lambda: not e.exists(ino), "the retried purge")
            nursery.cancel_scope.cancel()
    try:
        e.run(main)
    finally:
        e.close()


def test_release_after_a_failed_flush_keeps_the_previous_content(tmp_path):
    """close() = flush (reports) + release: after a failed flush the release must not
    store the changes after all (the caller was told they failed)."""
    e = Env(tmp_path)
    flaky = FaultyBackend(e.backend, ops={"put"})
    e.chunks = ChunkStore(e.index, {"local": flaky}, Placement([flaky]))
    e.fs = Filesystem(e.index, e.chunks, analyze_images=False)
    old, new = b"O" * 100_000, b"N" * 100_000

    async def main(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        ino = await put_file(fs, d, b"x", old)
        fh = await fs.open(ino, RW)
        await fs.write(fh, 0, new)
        flaky.down = True
        try:
            await fs.flush(fh)
        except FsError as exc:
            assert exc.errno == errno.EIO
        else:
            raise AssertionError("flush should have failed")
        flaky.down = False                      # the backend is back before the release
        await fs.release(fh)
        assert await read_file(fs, ino) == old
        return ino

    try:
        ino = e.run(main)
        e.reopen()
        assert e.run(lambda fs: read_file(fs, ino)) == old
    finally:
        e.close()
