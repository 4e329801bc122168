"""One conformance suite every storage backend must pass, plus fault injection.

A backend joins the suite from its own fixtures module ``tests/fixtures_<name>.py``
(loaded as a pytest plugin by conftest.py) that defines ``BACKEND_FACTORIES``: a
list of ``pytest.param(factory, id=...)`` where ``factory(request, tmp_path)``
returns a fresh, empty Backend (it may use the module's fixtures through
``request.getfixturevalue``). Every test below then runs against it.
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import os
import shutil
import socket
from pathlib import Path

import pytest
import trio

from faults import FaultyBackend
from gffs.chunks import codec
from gffs.chunks.store import ChunkStore
from gffs.crypto.backend import CryptBackend
from gffs.crypto.seal import StoreKey
from gffs.errors import FsError
from gffs.index import ChunkMap, Index
from gffs.placement import Placement
from gffs_backends.base import (Backend, BackendError, BackendUnavailable, Capacity,
                                ObjectMissing)
from gffs_backends.local import LocalBackend


def local_factory(request, tmp_path) -> Backend:
    return LocalBackend("local", tmp_path / "local-backend")


def faulty_passthrough_factory(request, tmp_path) -> Backend:
    """The fault wrapper with no faults switched on must itself be a conforming backend."""
    return FaultyBackend(LocalBackend("local", tmp_path / "wrapped-backend"))


def crypt_local_factory(request, tmp_path) -> Backend:
    """The encrypting wrapper over local disk must itself be a conforming backend."""
    return CryptBackend(LocalBackend("local", tmp_path / "crypt-backend"), "store-a",
                        StoreKey(bytes(range(32))))


def crypt_s3_factory(request, tmp_path) -> Backend:
    from fixtures_s3 import s3_factory
    return CryptBackend(s3_factory(request, tmp_path), "store-a", StoreKey(bytes(range(32))))


def _plugin_factories() -> list:
    found = []
    for path in sorted(Path(__file__).parent.glob("fixtures_*.py")):
        module = importlib.import_module(path.stem)
        found.extend(getattr(module, "BACKEND_FACTORIES", []))
    return found


BACKEND_FACTORIES = [
    pytest.param(local_factory, id="local"),
    pytest.param(faulty_passthrough_factory, id="faulty-passthrough"),
    pytest.param(crypt_local_factory, id="crypt-local"),
    pytest.param(crypt_s3_factory, id="crypt-s3"),
    *_plugin_factories(),
]


@pytest.fixture(params=BACKEND_FACTORIES)
def backend(request, tmp_path):
    b = request.param(request, tmp_path)
    yield b
    trio.run(b.close)


def key_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored_size(backend: Backend, n: int) -> int:
    """What stat/list report for an object of *n* bytes (an encrypting backend pads and seals)."""
    return backend.stored_size(n) if hasattr(backend, "stored_size") else n


def run(fn, *args):
    return trio.run(fn, *args)


# conformance ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 1000, 4 << 20])
def test_put_get_round_trip(backend, size):
    data = os.urandom(size)
    key = key_of(data)

    async def main():
        locator = await backend.put(key, data)
        assert isinstance(locator, str)
        assert await backend.get(key, locator) == data
    run(main)


def test_overwrite_is_harmless(backend):
    data = b"same content" * 100
    key = key_of(data)

    async def main():
        loc1 = await backend.put(key, data)
        loc2 = await backend.put(key, data)
        assert await backend.get(key, loc1) == data
        assert await backend.get(key, loc2) == data
        keys = [info.key async for info in backend.list()]
        assert keys.count(key) == 1
    run(main)


def test_concurrent_puts_of_same_key(backend):
    data = os.urandom(300_000)
    key = key_of(data)

    async def main():
        locs = []
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                async def one():
                    locs.append(await backend.put(key, data))
                nursery.start_soon(one)
        for loc in locs:
            assert await backend.get(key, loc) == data
        assert [i.key async for i in backend.list()] == [key]
    run(main)


def test_get_missing_raises_object_missing(backend):
    async def main():
        with pytest.raises(ObjectMissing):
            await backend.get(key_of(b"never put"))
    run(main)


def test_object_missing_is_a_backend_error():
    assert issubclass(ObjectMissing, BackendError)
    assert issubclass(BackendUnavailable, BackendError)
    assert BackendUnavailable.temporary and not ObjectMissing.temporary


def test_delete(backend):
    data = b"to be deleted"
    key = key_of(data)

    async def main():
        loc = await backend.put(key, data)
        await backend.delete(key, loc)
        assert not await backend.exists(key, loc)
        with pytest.raises(ObjectMissing):
            await backend.get(key, loc)
        await backend.delete(key, loc)                  # again: fine
        await backend.delete(key_of(b"never put"))      # never existed: fine
    run(main)


def test_stat_and_exists(backend):
    data = os.urandom(1234)
    key = key_of(data)

    async def main():
        assert await backend.stat(key) is None
        assert not await backend.exists(key)
        loc = await backend.put(key, data)
        info = await backend.stat(key, loc)
        assert info is not None
        assert info.key == key
        assert info.size == stored_size(backend, len(data))
        assert info.mtime > 0
        assert await backend.exists(key, loc)
    run(main)


def test_list_yields_what_was_put(backend):
    blobs = [os.urandom(100 + i) for i in range(20)]

    async def main():
        assert [i async for i in backend.list()] == []
        for b in blobs:
            await backend.put(key_of(b), b)
        infos = [i async for i in backend.list()]
        assert sorted(i.key for i in infos) == sorted(key_of(b) for b in blobs)
        sizes = {i.key: i.size for i in infos}
        assert all(sizes[key_of(b)] == stored_size(backend, len(b)) for b in blobs)
    run(main)


def test_delete_many(backend):
    blobs = [os.urandom(64) for _ in range(10)]

    async def main():
        locs = {}
        for b in blobs:
            locs[key_of(b)] = await backend.put(key_of(b), b)
        gone = [key_of(b) for b in blobs[:6]]
        await backend.delete_many([(k, locs[k]) for k in gone] + [(key_of(b"absent"), "")])
        remaining = sorted([i.key async for i in backend.list()])
        assert remaining == sorted(key_of(b) for b in blobs[6:])
        await backend.delete_many([])
    run(main)


def test_capacity(backend):
    async def main():
        cap = await backend.capacity()
        if cap is not None:
            assert isinstance(cap, Capacity)
            assert cap.total >= cap.free >= 0
    run(main)


def test_sync(backend):
    async def main():
        await backend.put(key_of(b"x"), b"x")
        await backend.sync()
        await backend.sync()
        assert await backend.get(key_of(b"x")) == b"x"
    run(main)


@pytest.mark.parametrize("key", ["../../etc/passwd", "ABCDEF0123456789", "abc", "",
                                 "0123456789abcdef/../x", "g" * 64, "00000000\x00"])
@pytest.mark.parametrize("op", ["put", "get", "stat", "delete"])
def test_invalid_key_rejected(backend, key, op):
    async def main():
        with pytest.raises(BackendError):
            if op == "put":
                await backend.put(key, b"data")
            elif op == "get":
                await backend.get(key)
            elif op == "stat":
                await backend.stat(key)
            else:
                await backend.delete(key)
    run(main)


def test_local_list_hides_temp_files(tmp_path):
    b = LocalBackend("local", tmp_path / "b")
    key = key_of(b"x")

    async def main():
        await b.put(key, b"x")
        d = b._path(key).parent
        (d / f"{key}.123.tmp").write_bytes(b"half")
        assert [i.key async for i in b.list()] == [key]
    run(main)


# check(): usable now, or one clear line -----------------------------------------------------

def test_check_passes_on_a_working_backend(backend):
    run(backend.check)


def _nothing_listens() -> str:
    """An http URL on loopback where (right now) nothing accepts connections."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def down_local(request, tmp_path) -> Backend:
    b = LocalBackend("local", tmp_path / "gone")
    shutil.rmtree(tmp_path / "gone")        # e.g. the disk holding it is not mounted
    return b


def down_faulty(request, tmp_path) -> Backend:
    return FaultyBackend(LocalBackend("local", tmp_path / "wrapped"), down=True)


def down_s3_missing_bucket(request, tmp_path) -> Backend:
    from gffs_backends.s3 import S3Backend
    request.getfixturevalue("s3_env")
    real = request.getfixturevalue("s3_buckets")(1)
    return S3Backend.from_config("s3", {"buckets": [*real, "gf-never-created"], "timeout": 10,
                                        "endpoint_url": request.getfixturevalue("moto_server"),
                                        "region": "us-east-1"})


def down_s3_refused(request, tmp_path) -> Backend:
    from gffs_backends.s3 import S3Backend
    request.getfixturevalue("s3_env")
    return S3Backend.from_config("s3", {"buckets": ["gf-any"], "endpoint_url": _nothing_listens(),
                                        "region": "us-east-1", "timeout": 5})


def down_ipfs_refused(request, tmp_path) -> Backend:
    from gffs_backends.ipfs import IpfsBackend
    return IpfsBackend("ipfs", _nothing_listens(), timeout=5)


def down_gdrive_refused(request, tmp_path) -> Backend:
    from fixtures_gdrive import make_backend
    return make_backend(request.getfixturevalue("drive"), tmp_path, api_endpoint=_nothing_listens())


@pytest.mark.parametrize("factory, says", [
    (down_local, "is not a directory"),
    (down_faulty, "down"),
    (down_s3_missing_bucket, "'gf-never-created' does not exist"),
    (down_s3_refused, "unreachable"),
    (down_ipfs_refused, "unreachable"),
    (down_gdrive_refused, ""),
], ids=["local-dir-gone", "faulty-down", "s3-missing-bucket", "s3-refused", "ipfs-refused",
        "gdrive-refused"])
def test_check_of_a_down_backend_is_one_clear_line(request, tmp_path, factory, says):
    b = factory(request, tmp_path)

    async def main():
        with trio.fail_after(60):
            with pytest.raises(BackendError) as err:
                await b.check()
        await b.close()
        return str(err.value)
    message = run(main)
    assert message.startswith(f"{b.name}: ") and says in message and "\n" not in message
    assert "gave up after" not in message, message     # said at once, not after retries


# metadata objects (index backups) ---------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 300_000])
def test_meta_round_trip(backend, size):
    data = os.urandom(size)

    async def main():
        await backend.put_meta("index/pieces/p1", data)
        assert await backend.get_meta("index/pieces/p1") == data
    run(main)


def test_meta_put_replaces(backend):
    async def main():
        await backend.put_meta("index/versions/v1.json", b"old")
        await backend.put_meta("index/versions/v1.json", b"new contents")
        assert await backend.get_meta("index/versions/v1.json") == b"new contents"
        assert await backend.list_meta("index/") == ["index/versions/v1.json"]
    run(main)


def test_meta_missing_and_delete(backend):
    async def main():
        with pytest.raises(ObjectMissing):
            await backend.get_meta("index/versions/absent.json")
        await backend.put_meta("index/versions/a.json", b"a")
        await backend.delete_meta("index/versions/a.json")
        with pytest.raises(ObjectMissing):
            await backend.get_meta("index/versions/a.json")
        assert await backend.list_meta("") == []
        await backend.delete_meta("index/versions/a.json")      # again: fine
        await backend.delete_meta("never/put")                  # never existed: fine
    run(main)


def test_meta_list_by_prefix(backend):
    names = ["index/pieces/0a1b", "index/pieces/ff00", "index/versions/20240101T000000Z.json",
             "index/versions/20240102T000000Z.json", "other/thing"]

    async def main():
        assert await backend.list_meta("index/") == []
        for i, name in enumerate(names):
            await backend.put_meta(name, b"%d" % i)
        assert await backend.list_meta("") == sorted(names)
        assert await backend.list_meta("index/pieces/") == names[:2]
        assert await backend.list_meta("index/versions/20240102") == names[3:4]
        assert await backend.list_meta("index/") == names[:4]
        assert await backend.list_meta("nothing/") == []
    run(main)


def test_meta_apart_from_chunks(backend):
    """Metadata objects never show in list() (gc would delete them) and chunk and
    metadata operations do not touch each other's objects."""
    data = b"chunk bytes"
    key = key_of(data)

    async def main():
        loc = await backend.put(key, data)
        await backend.put_meta(f"index/pieces/{key}", b"meta bytes")
        assert [i.key async for i in backend.list()] == [key]
        await backend.delete(key, loc)
        assert await backend.get_meta(f"index/pieces/{key}") == b"meta bytes"
        await backend.put(key, data)
        await backend.delete_meta(f"index/pieces/{key}")
        assert await backend.get(key) == data
        assert [i.key async for i in backend.list()] == [key]
    run(main)


@pytest.mark.parametrize("name", ["../x/y", "/abs/name", "a//b", "", "a/", "a/.hidden",
                                  "0123456789abcdef", "a/b\x00", "a/b c", "a/'q", "a/../b",
                                  "a/" + "x" * 600])
@pytest.mark.parametrize("op", ["put_meta", "get_meta", "delete_meta"])
def test_meta_invalid_name_rejected(backend, name, op):
    async def main():
        with pytest.raises(BackendError):
            if op == "put_meta":
                await backend.put_meta(name, b"data")
            elif op == "get_meta":
                await backend.get_meta(name)
            else:
                await backend.delete_meta(name)
    run(main)


# fault injection: the chunk store over two copies ------------------------------------------

class TwoCopies:
    def __init__(self, tmp_path, **fault_kw):
        self.index = Index(tmp_path / "index")
        self.faulty = [FaultyBackend(LocalBackend(f"b{i}", tmp_path / f"b{i}"), **fault_kw)
                       for i in range(2)]
        self.store = ChunkStore(self.index, {b.name: b for b in self.faulty},
                                Placement(self.faulty, copies=2))
        self.cm = ChunkMap(self.index)

    async def put(self, data: bytes, ino: int = 1, idx: int = 0) -> bytes:
        sc = await self.store.store(data, True)
        assert len(sc.record.locations) == 2
        with self.index.write() as txn:
            self.cm.set_block(txn, ino, idx, sc.digest, sc.record)
        self.store.unpin([sc.digest])
        self.store.cache.discard(sc.digest)
        return sc.digest

    async def load(self, digest: bytes) -> bytes:
        self.store.cache.discard(digest)
        with trio.fail_after(10):   # a hang is a failure, not a wait
            return await self.store.load(digest)


@pytest.fixture
def two(tmp_path):
    t = TwoCopies(tmp_path)
    yield t
    t.index.close()


DATA = b"".join(b"row %d of some image metadata\n" % i for i in range(20000))


@pytest.mark.parametrize("broken", [0, 1])
@pytest.mark.parametrize("fault", ["down", "corrupt", "truncate", "missing"])
def test_load_falls_back_to_other_copy(two, broken, fault):
    async def main():
        digest = await two.put(DATA)
        b = two.faulty[broken]
        if fault == "missing":
            await b.inner.delete(digest.hex())
        else:
            setattr(b, fault, True)
        assert await two.load(digest) == DATA
    run(main)


@pytest.mark.parametrize("faults", [("down", "down"), ("corrupt", "down"), ("corrupt", "corrupt"),
                                    ("truncate", "missing"), ("missing", "missing")])
def test_load_all_copies_bad_is_eio(two, faults):
    async def main():
        digest = await two.put(DATA)
        for b, fault in zip(two.faulty, faults):
            if fault == "missing":
                await b.inner.delete(digest.hex())
            else:
                setattr(b, fault, True)
        with pytest.raises(FsError) as ei:
            await two.load(digest)
        assert ei.value.errno == errno.EIO
        # recovery: once one backend is healthy again, the chunk loads
        b0 = two.faulty[0]
        b0.down = b0.corrupt = b0.truncate = False
        if faults[0] != "missing":
            assert await two.load(digest) == DATA
    run(main)


def test_load_slow_and_down_backends_no_hang(tmp_path):
    t = TwoCopies(tmp_path)

    async def main():
        digest = await t.put(DATA)
        for b in t.faulty:
            b.delay = 0.1
            b.down = True
        with pytest.raises(FsError) as ei:
            await t.load(digest)
        assert ei.value.errno == errno.EIO
    try:
        run(main)
    finally:
        t.index.close()


def test_flaky_backends_only_succeed_or_eio(tmp_path):
    """50 % of calls fail on both backends: every load either returns the right bytes
    or raises FsError(EIO); no other exception type ever escapes."""
    t = TwoCopies(tmp_path)

    async def main():
        digests = {}
        for i in range(10):
            data = DATA + b"%d" % i
            digests[await t.put(data, ino=1, idx=i)] = data
        for b in t.faulty:
            b.fail_rate = 0.5
        ok = eio = 0
        for _ in range(5):
            for d, data in digests.items():
                try:
                    assert await t.load(d) == data
                    ok += 1
                except FsError as exc:
                    assert exc.errno == errno.EIO
                    eio += 1
        assert ok and eio
    try:
        run(main)
    finally:
        t.index.close()


def test_store_with_flaky_backends_only_succeeds_or_fails_cleanly(tmp_path):
    t = TwoCopies(tmp_path, fail_rate=0.6, seed=3)

    async def main():
        for i in range(20):
            data = os.urandom(2000)
            try:
                sc = await t.store.store(data, True)
            except FsError as exc:
                assert exc.errno == errno.EIO
                continue
            assert 1 <= len(sc.record.locations) <= 2
            for loc in sc.record.locations:
                inner = t.faulty[int(loc.backend[1])].inner
                assert codec.decode(await inner.get(sc.digest.hex()), sc.digest) == data
            t.store.unpin([sc.digest])
        assert not t.store._pins
    try:
        run(main)
    finally:
        t.index.close()


def test_delete_garbage_on_down_backend_retries(tmp_path):
    t = TwoCopies(tmp_path)

    async def main():
        digest = await t.put(DATA)
        with t.index.write() as txn:
            t.cm.drop_blocks(txn, 1)
        t.faulty[1].down = True
        assert await t.store.delete_garbage() == 0      # kept for a retry
        assert not await t.faulty[0].inner.exists(digest.hex())
        assert await t.faulty[1].inner.exists(digest.hex())
        t.faulty[1].down = False
        assert await t.store.delete_garbage() == 1
        assert not await t.faulty[1].inner.exists(digest.hex())
        with t.index.read() as txn:
            assert t.cm.garbage(txn) == []
    run(main)
    t.index.close()


# local backend specifics -----------------------------------------------------------------------

@pytest.fixture
def fsynced(monkeypatch) -> list[str]:
    """Paths the local backend fsyncs, in order (the real fsync still runs)."""
    import gffs_backends.local as localmod
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)
    monkeypatch.setattr(localmod.os, "fsync", recording_fsync)
    return synced


def test_local_sync_fsyncs_file_and_every_new_directory(tmp_path, fsynced):
    """After sync(), a chunk put into a fresh store must survive power loss: the file and
    the directory entry of every directory the put created (chunks/ab and chunks/ab/cd,
    whose entries live in chunks/ and chunks/ab) must have been fsynced."""
    synced = fsynced
    b = LocalBackend("local", tmp_path / "b")
    data = b"durable"
    key = key_of(data)

    async def main():
        await b.put(key, data)
        await b.sync()
    run(main)
    path = b._path(key)
    needed = {str(path), str(path.parent), str(path.parent.parent), str(b.objects)}
    missing = needed - set(synced)
    assert not missing, f"not fsynced: {sorted(missing)}"


def test_local_put_meta_is_durable_when_it_returns(tmp_path, fsynced):
    """A backup's manifest is its commit point: once put_meta returns, the file and the
    entry of every directory the put created must have been fsynced."""
    synced = fsynced
    b = LocalBackend("local", tmp_path / "b")
    run(b.put_meta, "index/versions/v1.json", b"manifest")
    path = b.meta / "index" / "versions" / "v1.json"
    needed = {str(path.parent), str(path.parent.parent), str(b.meta), str(b.root)}
    assert not needed - set(synced), f"not fsynced: {sorted(needed - set(synced))}"
    # the data before the rename (under its temp name), the directory after it
    data = [i for i, p in enumerate(synced) if p.startswith(str(path.parent / ".v1.json."))]
    assert data and data[0] < synced.index(str(path.parent))
