"""Chunk codec and chunk store, over real LocalBackends in tmp (no filesystem, no FUSE)."""

from __future__ import annotations

import errno
import os

import pytest
import trio

from faults import FaultyBackend
from gffs.chunks import codec
from gffs.chunks.store import BlockCache, ChunkStore, StoredChunk
from gffs.errors import FsError
from gffs.index import ChunkMap, Index
from gffs.index.env import LOGICAL_BYTES, N_CHUNKS, STORED_BYTES
from gffs.placement import Placement
from gffs_backends.local import LocalBackend

TEXT = b"".join(b"line %d: the quick brown fox jumps over the lazy dog\n" % i for i in range(5000))
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(4000)
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(4000)
HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(4000)
AVIF = b"\x00\x00\x00\x1cftypavif" + bytes(100)
WEBP = b"RIFF\x00\x10\x00\x00WEBPVP8 " + bytes(100)


# codec --------------------------------------------------------------------------------

@pytest.mark.parametrize("data", [b"", b"x", TEXT, os.urandom(100_000), bytes(1 << 20)])
@pytest.mark.parametrize("try_compress", [True, False])
def test_codec_round_trip(data, try_compress):
    d, codec_id, stored = codec.encode_and_hash(data, try_compress)
    assert d == codec.digest(data)
    assert stored[0] == codec_id
    assert codec.decode(stored, d) == data


@pytest.mark.parametrize("head", [JPEG, PNG, HEIC, AVIF, WEBP, b"GIF89a" + bytes(10)])
def test_precompressed_formats_detected(head):
    assert codec.is_precompressed(head[:16])


@pytest.mark.parametrize("head", [TEXT[:16], bytes(16), b"\x00\x00\x00\x18ftypXXXX", b"RIFF\0\0\0\0WAVE", b""])
def test_other_data_not_precompressed(head):
    assert not codec.is_precompressed(head)


@pytest.mark.parametrize("data", [JPEG, PNG, HEIC])
def test_image_magic_not_compressed(data):
    """The filesystem asks for compression only when the head is not a compressed format;
    with that decision an image is stored raw even if its bytes would compress."""
    codec_id, stored = codec.encode(data, try_compress=not codec.is_precompressed(data[:16]))
    assert codec_id == codec.CODEC_RAW
    assert stored == bytes([codec.CODEC_RAW]) + data


def test_text_is_compressed():
    codec_id, stored = codec.encode(TEXT, try_compress=True)
    assert codec_id == codec.CODEC_ZSTD
    assert len(stored) < len(TEXT) / 4
    assert codec.decode(stored, codec.digest(TEXT)) == TEXT


def test_random_stays_raw():
    data = os.urandom(200_000)
    codec_id, stored = codec.encode(data, try_compress=True)
    assert codec_id == codec.CODEC_RAW
    assert len(stored) == len(data) + 1


def test_tiny_data_stays_raw():
    codec_id, _ = codec.encode(b"a" * 100, try_compress=True)
    assert codec_id == codec.CODEC_RAW


def _flip(b: bytes, pos: int) -> bytes:
    return b[:pos] + bytes([b[pos] ^ 0x55]) + b[pos + 1:]


@pytest.mark.parametrize("damage", ["flip-zstd", "truncate-zstd", "flip-raw", "wrong-hash",
                                    "unknown-codec", "empty"])
def test_decode_rejects_damage(damage):
    d = codec.digest(TEXT)
    _, zstored = codec.encode(TEXT, True)
    _, rstored = codec.encode(TEXT, False)
    stored, expected = {
        "flip-zstd": (_flip(zstored, len(zstored) // 2), d),
        "truncate-zstd": (zstored[: len(zstored) // 2], d),
        "flip-raw": (_flip(rstored, 1000), d),
        "wrong-hash": (zstored, codec.digest(b"other")),
        "unknown-codec": (bytes([7]) + TEXT, d),
        "empty": (b"", d),
    }[damage]
    with pytest.raises(codec.CorruptChunk):
        codec.decode(stored, expected)


# chunk store ----------------------------------------------------------------------------

class CountingBackend(LocalBackend):
    def __init__(self, name, path):
        super().__init__(name, path)
        self.puts = 0
        self.deletes = 0

    async def put(self, key, data):
        self.puts += 1
        return await super().put(key, data)

    async def delete_many(self, items):
        self.deletes += len(items)
        await super().delete_many(items)


class Env:
    def __init__(self, tmp_path, n_backends=1, copies=1, wrap=None, cache_bytes=32 << 20):
        self.index = Index(tmp_path / "index")
        self.locals = [CountingBackend(f"disk{i}", tmp_path / f"b{i}") for i in range(n_backends)]
        self.backends = [wrap(b) if wrap else b for b in self.locals]
        self.placement = Placement(self.backends, copies)
        self.store = ChunkStore(self.index, {b.name: b for b in self.backends}, self.placement,
                                cache_bytes=cache_bytes)
        self.cm = ChunkMap(self.index)

    def commit(self, sc: StoredChunk, ino=1, idx=0) -> None:
        with self.index.write() as txn:
            self.cm.set_block(txn, ino, idx, sc.digest, sc.record)
        self.store.unpin([sc.digest])

    def drop(self, ino=1) -> None:
        with self.index.write() as txn:
            self.cm.drop_blocks(txn, ino)

    def obj_path(self, digest: bytes, i=0):
        return self.locals[i]._path(digest.hex())

    def counters(self):
        with self.index.read() as txn:
            return tuple(self.index.counter(txn, k) for k in (N_CHUNKS, LOGICAL_BYTES, STORED_BYTES))

    def garbage(self):
        with self.index.read() as txn:
            return [d for d, _ in self.cm.garbage(txn)]


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.index.close()


def run(fn, *args):
    return trio.run(fn, *args)


@pytest.mark.parametrize("data", [TEXT, os.urandom(300_000), b"small", os.urandom(1 << 20)])
def test_store_and_load(env, data):
    async def main():
        sc = await env.store.store(data, True)
        assert isinstance(sc, StoredChunk)
        assert sc.digest == codec.digest(data)
        assert sc.record.size == len(data)
        assert [loc.backend for loc in sc.record.locations] == ["disk0"]
        assert await env.locals[0].exists(sc.digest.hex())
        assert env.obj_path(sc.digest).stat().st_size == sc.record.stored_size
        assert sc.digest in env.store._pins
        env.commit(sc)
        assert sc.digest not in env.store._pins
        env.store.cache.discard(sc.digest)
        assert await env.store.load(sc.digest) == data
        # now cached: served without the backend
        env.obj_path(sc.digest).unlink()
        assert await env.store.load(sc.digest) == data
    run(main)


def test_identical_data_stored_once(env):
    async def main():
        sc1 = await env.store.store(TEXT, True)
        env.commit(sc1, ino=1)
        assert env.locals[0].puts == 1
        sc2 = await env.store.store(TEXT, True)
        assert env.locals[0].puts == 1, "known chunk was put again"
        assert sc2.digest == sc1.digest
        assert sc2.record.locations == sc1.record.locations
        env.commit(sc2, ino=2)
        with env.index.read() as txn:
            assert env.cm.chunk(txn, sc1.digest).refcount == 2
        assert env.counters() == (1, len(TEXT), sc1.record.stored_size)
    run(main)


def test_load_verifies_corrupt_only_copy_is_eio(env):
    async def main():
        sc = await env.store.store(TEXT, True)
        env.commit(sc)
        env.store.cache.discard(sc.digest)
        p = env.obj_path(sc.digest)
        p.write_bytes(_flip(p.read_bytes(), 20))
        with pytest.raises(FsError) as ei:
            await env.store.load(sc.digest)
        assert ei.value.errno == errno.EIO
        p.unlink()   # missing entirely: EIO as well
        with pytest.raises(FsError) as ei:
            await env.store.load(sc.digest)
        assert ei.value.errno == errno.EIO
    run(main)


def test_load_unknown_chunk_is_eio(env):
    async def main():
        with pytest.raises(FsError) as ei:
            await env.store.load(codec.digest(b"never stored"))
        assert ei.value.errno == errno.EIO
    run(main)


@pytest.mark.parametrize("which", [0, 1])
def test_load_falls_back_to_good_copy(tmp_path, which):
    e = Env(tmp_path, n_backends=2, copies=2)

    async def main():
        data = os.urandom(50_000)
        sc = await e.store.store(data, True)
        assert sorted(loc.backend for loc in sc.record.locations) == ["disk0", "disk1"]
        e.commit(sc)
        e.store.cache.discard(sc.digest)
        p = e.obj_path(sc.digest, which)
        p.write_bytes(b"\x00garbage")
        assert await e.store.load(sc.digest) == data
        e.store.cache.discard(sc.digest)
        p.unlink()
        assert await e.store.load(sc.digest) == data
    try:
        run(main)
    finally:
        e.index.close()


def test_delete_garbage(env):
    async def main():
        sc = await env.store.store(TEXT, True)
        env.commit(sc)
        assert await env.store.delete_garbage() == 0
        env.drop()
        assert env.garbage() == [sc.digest]
        assert env.counters() == (0, 0, 0)
        assert await env.store.delete_garbage() == 1
        assert not await env.locals[0].exists(sc.digest.hex())
        assert env.garbage() == []
        assert env.store.cache.get(sc.digest) is None
        # the same data again is a new chunk: put again
        sc2 = await env.store.store(TEXT, True)
        assert env.locals[0].puts == 2
        env.commit(sc2)
        env.store.cache.discard(sc2.digest)
        assert await env.store.load(sc2.digest) == TEXT
    run(main)


def test_delete_garbage_spares_pinned_chunk(env):
    async def main():
        old = await env.store.store(TEXT, True)
        env.commit(old)
        env.drop()                       # TEXT is garbage now
        # a writer stores the same content: it finds the garbage row and pins it
        sc = await env.store.store(TEXT, True)
        assert env.locals[0].puts == 1
        assert await env.store.delete_garbage() == 0
        assert await env.locals[0].exists(sc.digest.hex())
        env.commit(sc, ino=2)            # resurrects the garbage row
        assert env.garbage() == []
        assert env.counters()[0] == 1
        assert await env.store.delete_garbage() == 0
        env.store.cache.discard(sc.digest)
        assert await env.store.load(sc.digest) == TEXT

        # a new chunk, pinned but never committed: it is not garbage at all
        other = await env.store.store(b"other data" * 100, True)
        assert await env.store.delete_garbage() == 0
        assert await env.locals[0].exists(other.digest.hex())
        env.store.unpin([other.digest])
    run(main)


def test_pinned_garbage_deleted_after_unpin(env):
    async def main():
        sc = await env.store.store(TEXT, True)
        with env.index.write() as txn:
            env.cm.set_block(txn, 1, 0, sc.digest, sc.record)
            env.cm.drop_blocks(txn, 1)
        # still pinned (the writer has not unpinned yet)
        assert await env.store.delete_garbage() == 0
        assert await env.locals[0].exists(sc.digest.hex())
        env.store.unpin([sc.digest])
        assert await env.store.delete_garbage() == 1
        assert not await env.locals[0].exists(sc.digest.hex())
    run(main)


def test_store_waits_for_deletion_in_flight(tmp_path):
    """A store of content being deleted right now must end with the object present."""
    e = Env(tmp_path, wrap=lambda b: FaultyBackend(b, delay=0.2, ops={"delete_many"}))

    async def main():
        sc = await e.store.store(TEXT, True)
        e.commit(sc)
        e.drop()
        result = {}
        async with trio.open_nursery() as nursery:
            async def deleter():
                result["deleted"] = await e.store.delete_garbage()
            nursery.start_soon(deleter)
            while not e.store._deleting:   # wait until the deletion is in flight
                await trio.sleep(0.001)
            sc2 = await e.store.store(TEXT, True)
            result["sc2"] = sc2
        assert result["deleted"] == 1
        sc2 = result["sc2"]
        e.commit(sc2, ino=2)
        assert await e.locals[0].exists(sc2.digest.hex()), "referenced chunk was deleted"
        e.store.cache.discard(sc2.digest)
        assert await e.store.load(sc2.digest) == TEXT
    try:
        run(main)
    finally:
        e.index.close()


def test_store_failure_raises_eio_and_unpins(tmp_path):
    e = Env(tmp_path, wrap=lambda b: FaultyBackend(b, down=True))

    async def main():
        with pytest.raises(FsError) as ei:
            await e.store.store(TEXT, True)
        assert ei.value.errno == errno.EIO
        assert not e.store._pins
    try:
        run(main)
    finally:
        e.index.close()


def test_store_with_one_of_two_copies_down(tmp_path):
    e = Env(tmp_path, n_backends=2, copies=2, wrap=lambda b: FaultyBackend(b))
    e.backends[0].down = True

    async def main():
        sc = await e.store.store(TEXT, True)
        assert [loc.backend for loc in sc.record.locations] == ["disk1"]
        e.commit(sc)
        e.store.cache.discard(sc.digest)
        assert await e.store.load(sc.digest) == TEXT
    try:
        run(main)
    finally:
        e.index.close()


def test_concurrent_loads_share_one_fetch(tmp_path):
    e = Env(tmp_path, wrap=lambda b: FaultyBackend(b, delay=0.05, ops={"get"}))

    async def main():
        sc = await e.store.store(TEXT, True)
        e.commit(sc)
        e.store.cache.discard(sc.digest)
        out = []
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                async def one():
                    out.append(await e.store.load(sc.digest))
                nursery.start_soon(one)
        assert out == [TEXT] * 5
        assert e.backends[0].calls["get"] == 1
    try:
        run(main)
    finally:
        e.index.close()


# block cache -----------------------------------------------------------------------------

def test_block_cache_lru_bound():
    cache = BlockCache(1000)
    for i in range(50):
        cache.put(bytes([i]), bytes(100 + i % 7))
        assert cache.used <= 1000
        assert cache.used == sum(len(v) for v in cache._data.values())
    assert cache.get(bytes([0])) is None          # evicted long ago
    assert cache.get(bytes([49])) is not None


def test_block_cache_lru_order():
    cache = BlockCache(300)
    for k in (b"a", b"b", b"c"):
        cache.put(k, bytes(100))
    assert cache.get(b"a") is not None            # a is now most recent
    cache.put(b"d", bytes(100))                   # evicts b, the least recent
    assert cache.get(b"b") is None
    assert cache.get(b"a") is not None and cache.get(b"c") is not None
    cache.put(b"a", bytes(50))                    # replacing adjusts the byte count
    assert cache.used == 250
    cache.discard(b"a")
    cache.discard(b"zzz")
    assert cache.used == 200


def test_block_cache_rejects_oversized():
    cache = BlockCache(100)
    cache.put(b"k", bytes(50))
    cache.put(b"big", bytes(101))
    assert cache.get(b"big") is None
    assert cache.used == 50
    assert cache.get(b"k") is not None


def test_store_cache_bounded(tmp_path):
    e = Env(tmp_path, cache_bytes=250_000)

    async def main():
        for i in range(10):
            sc = await e.store.store(os.urandom(100_000), True)
            e.commit(sc, ino=1, idx=i)
            assert e.store.cache.used <= 250_000
    try:
        run(main)
    finally:
        e.index.close()
