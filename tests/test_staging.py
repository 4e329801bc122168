"""The staging area at the chunk store level (no FUSE): a chunk bound for a remote
backend is staged, uploaded after its commit and its staged copy dropped; a full
area sends chunks straight to the remote; a failed upload keeps the chunk staged
and queued until a repair pass brings it over.
"""

from __future__ import annotations

import os

import pytest
import trio

from faults import FaultyBackend
from gffs.chunks.staging import Staging
from gffs.chunks.store import ChunkStore, StoredChunk
from gffs.config import load_config
from gffs.errors import ConfigError
from gffs.index import ChunkMap, Index
from gffs.placement import Placement
from gffs.placement.policy import STAGING
from gffs_backends.local import LocalBackend


class Env:
    """One "remote" backend (a fault wrapper is no local disk) and a staging area."""

    def __init__(self, tmp_path, limit: int = 1 << 20) -> None:
        self.index = Index(tmp_path / "index")
        self.remote = FaultyBackend(LocalBackend("s3", tmp_path / "s3"))
        self.staging = Staging(tmp_path / "staging", limit)
        self.store = ChunkStore(self.index, {"s3": self.remote}, Placement([self.remote]),
                                staging=self.staging)
        self.cm = ChunkMap(self.index)

    def commit(self, sc: StoredChunk, idx: int = 0) -> None:
        with self.index.write() as txn:
            self.cm.set_block(txn, 1, idx, sc.digest, sc.record)
            if sc.short:
                self.cm.queue_repair(txn, sc.digest, None)
        self.store.release([sc])

    def locations(self, digest: bytes) -> list[str]:
        with self.index.read() as txn:
            return sorted(loc.backend for loc in self.cm.chunk(txn, digest).locations)

    def staged_files(self) -> int:
        return sum(1 for i in self.staging.backend._scan() if not i.key.endswith(".tmp"))

    def pending(self) -> int:
        with self.index.read() as txn:
            return self.cm.repair_count(txn)


async def _until(cond, timeout: float = 30) -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.02)


def test_chunk_is_staged_then_uploaded_and_the_staged_copy_dropped(tmp_path):
    e = Env(tmp_path)
    data = os.urandom(200_000)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(e.store.run_uploads)
            sc = await e.store.store(data, False)
            assert sc.staged and sc.short and e.remote.calls["put"] == 0
            assert [loc.backend for loc in sc.record.locations] == [STAGING]
            assert e.staging.used == sc.record.stored_size
            e.commit(sc)
            # staging.done() runs just after the staged file is deleted: wait for both
            await _until(lambda: e.locations(sc.digest) == ["s3"] and not e.staged_files()
                         and e.staging.used == 0)
            assert e.pending() == 0 and e.remote.calls["put"] == 1
            e.store.cache.discard(sc.digest)
            assert await e.store.load(sc.digest) == data     # read back from the remote
            nursery.cancel_scope.cancel()
    trio.run(main)


def test_full_staging_area_sends_the_chunk_to_the_remote_at_once(tmp_path):
    e = Env(tmp_path, limit=300_000)

    async def main() -> None:
        first = await e.store.store(os.urandom(200_000), False)
        second = await e.store.store(os.urandom(200_000), False)
        assert first.staged and not second.staged and not second.short
        assert [loc.backend for loc in second.record.locations] == ["s3"]
        assert e.remote.calls["put"] == 1 and e.staging.used == first.record.stored_size
    trio.run(main)


def test_failed_upload_keeps_the_chunk_staged_until_a_repair_pass(tmp_path):
    e = Env(tmp_path)
    e.remote.down = True
    data = os.urandom(100_000)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(e.store.run_uploads)
            sc = await e.store.store(data, False)        # S3 down: the write still succeeds
            e.commit(sc)
            await _until(lambda: e.remote.calls["put"] >= 1)
            await trio.sleep(0.1)
            assert e.locations(sc.digest) == [STAGING] and e.pending() == 1
            assert e.staged_files() == 1
            e.remote.down = False
            e.store.health.succeeded("s3")
            assert await e.store.repair() == (1, 0)
            assert e.locations(sc.digest) == ["s3"]
            # the upload queue's deleter drops the staged copy after the next commit
            await _until(lambda: not e.staged_files() and e.staging.used == 0)
            nursery.cancel_scope.cancel()
    trio.run(main)


def test_staging_options_in_config(tmp_path):
    cfg_path = tmp_path / "gffs.toml"
    cfg_path.write_text("[store]\nstaging_mb = 64\n")
    assert load_config(cfg_path).staging_mb == 64
    for bad, msg in [("[store]\nstaging_mb = -1\n", "staging_mb must be"),
                     ("[store]\nstaging_mb = true\n", "staging_mb must be"),
                     ("[backends.'~staging']\ntype = 'local'\npath = '/tmp/x'\n",
                      "cannot start with '~'")]:
        cfg_path.write_text(bad)
        with pytest.raises(ConfigError) as ei:
            load_config(cfg_path)
        assert msg in str(ei.value)
