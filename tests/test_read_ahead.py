"""Read-ahead against a slow backend (the Filesystem class, no FUSE): a sequential
reader has several blocks fetched at once, and reaching the end of a file starts
the next listed file's first blocks.
"""

from __future__ import annotations

import os

import trio

from faults import FaultyBackend
from gffs.chunks.store import ChunkStore
from gffs.fs.filesystem import Filesystem
from gffs.index import ROOT_INO, ChunkMap, Index
from gffs.placement import Placement
from gffs_backends.local import LocalBackend
from test_filesystem import USER, put_file

MiB = 1 << 20


class InFlight(FaultyBackend):
    """Every get takes 0.2 s; ``peak`` is the most gets that were running at once."""

    def __init__(self, inner: LocalBackend) -> None:
        super().__init__(inner, delay=0.2, ops={"get"})
        self.running = self.peak = 0

    async def get(self, key: str, locator: str = "") -> bytes:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            return await super().get(key, locator)
        finally:
            self.running -= 1


def _run(tmp_path, write, read) -> None:
    """Write with one Filesystem, read with a fresh one (empty block cache)."""
    local = LocalBackend("local", tmp_path / "local")
    index = Index(tmp_path / "index")
    try:
        for phase, backend in ((write, local), (read, InFlight(local))):
            chunks = ChunkStore(index, {"local": backend}, Placement([backend]))
            fs = Filesystem(index, chunks, analyze_images=False)

            async def main(fs=fs, phase=phase, backend=backend) -> None:
                await fs.start(1000, 1000)
                async with trio.open_nursery() as nursery:
                    await nursery.start(fs.run_background)
                    with trio.fail_after(60):
                        await phase(fs, backend)
                    nursery.cancel_scope.cancel()
            trio.run(main)
    finally:
        index.close()


def test_sequential_reader_gets_blocks_fetched_in_parallel(tmp_path):
    data = os.urandom(12 * MiB)

    async def write(fs: Filesystem, _backend) -> None:
        d, _ = fs.mkdir(ROOT_INO, b"flow", 0o755, USER)
        await put_file(fs, d, b"big.jpg", data)

    async def read(fs: Filesystem, backend: InFlight) -> None:
        d, _ = fs.lookup(ROOT_INO, b"flow")
        ino, _ = fs.lookup(d, b"big.jpg")
        fh = await fs.open(ino, os.O_RDONLY)
        got = bytearray()
        while len(got) < len(data):
            got += await fs.read(fh, len(got), 128 * 1024)
        await fs.release(fh)
        assert bytes(got) == data
        # 8 blocks ahead, each its own fetch (the old read-ahead kept 2 + the read)
        assert backend.peak >= 6, backend.peak

    _run(tmp_path, write, read)


def test_end_of_file_starts_the_next_listed_files(tmp_path):
    files = {f"img{i}.jpg".encode(): os.urandom(50_000 + i) for i in range(4)}

    async def write(fs: Filesystem, _backend) -> None:
        d, _ = fs.mkdir(ROOT_INO, b"flow", 0o755, USER)
        for name, body in files.items():
            await put_file(fs, d, name, body)

    async def read(fs: Filesystem, backend: InFlight) -> None:
        d, _ = fs.lookup(ROOT_INO, b"flow")
        listed = [(name, ino) for name, ino, _rec, _cookie, _ in fs.readdir(d, 0)]
        assert [n for n, _ in listed] == list(files)
        fh = await fs.open(listed[0][1], os.O_RDONLY)
        assert await fs.read(fh, 0, 1 << 20) == files[listed[0][0]]
        await fs.release(fh)
        cm = ChunkMap(fs.index)
        with fs.index.read() as txn:
            later = [dict(cm.blocks(txn, ino))[0] for _, ino in listed[1:]]
        with trio.fail_after(20):
            while not all(fs.chunks.cached(dg) for dg in later):
                await trio.sleep(0.05)
        gets = backend.calls["get"]
        for name, ino in listed[1:]:            # served from the cache: no more fetches
            fh = await fs.open(ino, os.O_RDONLY)
            assert await fs.read(fh, 0, 1 << 20) == files[name]
            await fs.release(fh)
        assert backend.calls["get"] == gets

    _run(tmp_path, write, read)
