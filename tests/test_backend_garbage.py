"""A backend that answers garbage is a failing backend: MalformedAnswer, health marks it,
the write completes on another backend. One test per backend, each against its real
test server with that server's garbage mode (S3: moto behind a response mangler; IPFS:
the Kubo RPC server; Drive: the loopback Drive v3 endpoint)."""

from __future__ import annotations

import os

import pytest
import trio

from fixtures_gdrive import make_backend
from fixtures_ipfs import make_ipfs_backend
from fixtures_s3 import TEST_REGION
from gffs.chunks.store import ChunkStore
from gffs.index import Index
from gffs.placement import Placement
from gffs_backends.base import MalformedAnswer
from gffs_backends.local import LocalBackend
from gffs_backends.s3 import S3Backend


def write_with_a_garbage_backend(tmp_path, bad, size: int = 5000):
    """Store one chunk with *bad* as the only target: (locations, health of bad, capacity)."""
    index = Index(tmp_path / "index")
    local = LocalBackend("local", tmp_path / "local")
    placement = Placement([bad, local], 1, default_backends=[bad.name])
    store = ChunkStore(index, {bad.name: bad, "local": local}, placement, backend_timeout=30)

    async def main():
        sc = await store.store(os.urandom(size), False)
        store.release([sc])
        return [loc.backend for loc in sc.record.locations], store.health.available(bad.name)
    try:
        return trio.run(main)
    finally:
        index.close()


def test_s3_garbage_answers(tmp_path, s3_buckets, moto_server, mangling_s3):
    url, mangler = mangling_s3
    buckets = s3_buckets(1)
    good, bad = (S3Backend.from_config("s3", {"buckets": buckets, "endpoint_url": u,
                                              "region": TEST_REGION, "timeout": 10})
                 for u in (moto_server, url))
    key = "ab" * 32
    trio.run(good.put, key, b"stored fine")
    mangler.methods = {"PUT", "HEAD"}
    try:
        with pytest.raises(MalformedAnswer):      # HEAD without Content-Length
            trio.run(bad.stat, key, "")
        with pytest.raises(MalformedAnswer):      # PUT answered without an ETag
            trio.run(bad.put, "cd" * 32, b"x")
        locations, healthy = write_with_a_garbage_backend(tmp_path, bad)
        assert locations == ["local"] and not healthy
    finally:
        mangler.methods = set()
    assert mangler.mangled >= 3


def test_ipfs_garbage_answers(tmp_path, kubo):
    bad = make_ipfs_backend(kubo)
    key = "cd" * 32
    trio.run(bad.put, key, b"stored fine")
    kubo.garbage = {"add", "repo/stat", "files/ls"}
    locations, healthy = write_with_a_garbage_backend(tmp_path, bad)
    assert locations == ["local"] and not healthy
    for call in (bad.capacity, lambda: bad.stat(key)):    # quota not a number, no CID
        with pytest.raises(MalformedAnswer):
            trio.run(call)


def test_drive_garbage_answers(tmp_path, drive):
    bad = make_backend(drive, tmp_path)
    drive.inject("garbage", count=1000, ops={"create", "upload", "about"})
    locations, healthy = write_with_a_garbage_backend(tmp_path, bad)
    assert locations == ["local"] and not healthy
    with pytest.raises(MalformedAnswer):
        trio.run(bad.capacity)
    assert drive.fault_answers["garbage"] >= 2
