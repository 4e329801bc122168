"""The Filesystem class directly (no FUSE): Index + ChunkStore + LocalBackend in tmp."""

from __future__ import annotations

import errno
import itertools
import os
import random
import stat

import pytest
import trio

import gffs.fs.datapath as datapath_mod
import gffs.fs.namespace_ops as namespace_ops
from gffs.chunks import codec
from gffs.chunks.store import ChunkStore
from gffs.errors import FsError
from gffs.fs.filesystem import RENAME_EXCHANGE, RENAME_NOREPLACE, Caller, Filesystem
from gffs.index import ROOT_INO, ChunkMap, Index, Namespace
from gffs.index.env import LOGICAL_BYTES, N_CHUNKS, N_INODES, STORED_BYTES
from gffs.index.records import u64
from gffs.placement import Placement
from gffs_backends.local import LocalBackend

MiB = 1 << 20
USER = Caller(1000, 1000)
RW = os.O_RDWR


class Env:
    """One store in tmp; ``reopen()`` simulates a restart (or a crash) of the daemon."""

    def __init__(self, tmp_path, block_size: int | None = None) -> None:
        self.tmp = tmp_path
        if block_size is not None:
            idx = Index(tmp_path / "index")
            with idx.write() as txn:
                txn.put(b"block_size", u64(block_size), db=idx.db["meta"])
            idx.close()
        self.backend = LocalBackend("local", tmp_path / "local")
        self._open()

    def _open(self) -> None:
        self.index = Index(self.tmp / "index")
        self.chunks = ChunkStore(self.index, {"local": self.backend}, Placement([self.backend]))
        self.fs = Filesystem(self.index, self.chunks)
        self.ns = Namespace(self.index)
        self.cm = ChunkMap(self.index)

    def reopen(self) -> None:
        self.index.close()
        self._open()

    def close(self) -> None:
        self.index.close()

    def run(self, main, start: bool = True):
        async def wrapper():
            if start:
                await self.fs.start(1000, 1000)
            with trio.fail_after(20):
                return await main(self.fs)
        return trio.run(wrapper)

    def counters(self) -> dict[str, int]:
        with self.index.read() as txn:
            return {k.decode(): self.index.counter(txn, k)
                    for k in (N_CHUNKS, LOGICAL_BYTES, STORED_BYTES, N_INODES)}

    def objects(self) -> set[str]:
        """Keys of the chunk objects on disk (a synchronous scan, usable inside trio.run)."""
        return {i.key for i in self.backend._scan() if not i.key.endswith(".tmp")}

    def garbage(self) -> list[bytes]:
        with self.index.read() as txn:
            return [d for d, _ in self.cm.garbage(txn)]

    def exists(self, ino: int) -> bool:
        with self.index.read() as txn:
            return self.ns.exists(txn, ino)

    def orphans(self) -> list[int]:
        with self.index.read() as txn:
            return self.ns.orphans(txn)

    def blocks(self, ino: int) -> list[tuple[int, bytes]]:
        with self.index.read() as txn:
            return list(self.cm.blocks(txn, ino))

    def chunk(self, digest: bytes):
        with self.index.read() as txn:
            return self.cm.chunk(txn, digest)


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.close()


@pytest.fixture
def small_env(tmp_path):
    """4 KiB blocks: many block boundaries for little data."""
    e = Env(tmp_path, block_size=4096)
    assert e.fs.block_size == 4096
    yield e
    e.close()


def errno_of(excinfo) -> int:
    return excinfo.value.errno


async def put_file(fs: Filesystem, parent: int, name: bytes, data: bytes) -> int:
    fh, ino, _ = fs.create(parent, name, 0o644, RW, USER)
    if data:
        assert await fs.write(fh, 0, data) == len(data)
    await fs.flush(fh)
    await fs.release(fh)
    return ino


async def read_file(fs: Filesystem, ino: int) -> bytes:
    fh = await fs.open(ino, os.O_RDONLY)
    try:
        size = fs.attr(ino).size
        return await fs.read(fh, 0, size + 100)
    finally:
        await fs.release(fh)


# basics ---------------------------------------------------------------------------------

def test_round_trip(env):
    async def main(fs):
        d, drec = fs.mkdir(ROOT_INO, b"flow", 0o755, USER)
        assert stat.S_ISDIR(drec.mode) and drec.nlink == 2 and drec.uid == 1000
        assert fs.attr(ROOT_INO).nlink == 3
        fh, ino, rec = fs.create(d, b"a.txt", 0o640, RW, USER)
        assert stat.S_ISREG(rec.mode) and stat.S_IMODE(rec.mode) == 0o640 and rec.nlink == 1
        assert await fs.write(fh, 0, b"hello ") == 6
        assert await fs.write(fh, 6, b"world") == 5
        assert fs.attr(ino).size == 11                     # size visible before flush
        assert await fs.read(fh, 0, 100) == b"hello world"  # read from the buffer
        assert env.blocks(ino) == []                       # nothing committed yet
        await fs.flush(fh)
        assert len(env.blocks(ino)) == 1
        assert await fs.read(fh, 6, 3) == b"wor"
        await fs.release(fh)
        assert ino not in fs.buffers and not fs.handles
        fs.chunks.cache = type(fs.chunks.cache)(1 << 20)   # force the backend path
        assert await read_file(fs, ino) == b"hello world"
        found, frec = fs.lookup(d, b"a.txt")
        assert found == ino and frec.size == 11
        assert fs.lookup(d, b".")[0] == d
        assert fs.lookup(d, b"..")[0] == ROOT_INO
        with pytest.raises(FsError) as ei:
            fs.lookup(d, b"missing")
        assert errno_of(ei) == errno.ENOENT
        with pytest.raises(FsError) as ei:
            fs.lookup(ino, b"x")
        assert errno_of(ei) == errno.ENOTDIR
        with pytest.raises(FsError) as ei:
            await fs.open(d, os.O_RDONLY)
        assert errno_of(ei) == errno.EISDIR
        with pytest.raises(FsError) as ei:
            fs.handle(9999)
        assert errno_of(ei) == errno.EBADF
    env.run(main)
    env.reopen()                                            # survives a restart

    async def again(fs):
        d, _ = fs.lookup(ROOT_INO, b"flow")
        ino, _ = fs.lookup(d, b"a.txt")
        assert await read_file(fs, ino) == b"hello world"
    env.run(again)


def test_read_past_eof_and_empty(env):
    async def main(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        ino = await put_file(fs, d, b"x", b"12345")
        fh = await fs.open(ino, os.O_RDONLY)
        assert await fs.read(fh, 5, 10) == b""
        assert await fs.read(fh, 100, 10) == b""
        assert await fs.read(fh, 3, 100) == b"45"
        await fs.release(fh)
        empty = await put_file(fs, d, b"empty", b"")
        assert await read_file(fs, empty) == b""
        assert fs.attr(empty).size == 0
    env.run(main)


def test_data_spanning_blocks(env):
    data = os.urandom(2 * MiB + 12345)

    async def main(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        ino = await put_file(fs, d, b"big", data)
        assert [i for i, _ in env.blocks(ino)] == [0, 1, 2]
        fs.chunks.cache = type(fs.chunks.cache)(8 << 20)
        fh = await fs.open(ino, os.O_RDONLY)
        for off, n in [(0, len(data)), (MiB - 10, 20), (MiB, MiB), (2 * MiB - 1, 2),
                       (len(data) - 5, 100), (123, 2 * MiB)]:
            assert await fs.read(fh, off, n) == data[off:off + n], (off, n)
        await fs.release(fh)
    env.run(main)


@pytest.mark.parametrize("which", ["default", "small"])
def test_random_writes_and_holes(tmp_path, which):
    e = Env(tmp_path, block_size=4096 if which == "small" else None)
    bs = e.fs.block_size
    rnd = random.Random(42)
    limit = 40 * bs if which == "small" else 5 * MiB

    async def main(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        fh, ino, _ = fs.create(d, b"r", 0o644, RW, USER)
        model = bytearray()
        for step in range(60):
            off = rnd.randrange(limit)
            n = rnd.choice([1, 7, bs // 2, bs, bs + 3, 3 * bs])
            payload = rnd.randbytes(n) if rnd.random() < 0.5 else bytes([rnd.randrange(1, 256)]) * n
            await fs.write(fh, off, payload)
            if off > len(model):
                model.extend(bytes(off - len(model)))
            model[off:off + n] = payload
            if step % 7 == 0:
                await fs.flush(fh)
            if step % 11 == 0:
                a = rnd.randrange(len(model))
                assert await fs.read(fh, a, 3 * bs) == bytes(model[a:a + 3 * bs])
        assert fs.attr(ino).size == len(model)
        assert await fs.read(fh, 0, len(model) + 10) == bytes(model)
        await fs.release(fh)
        fs.chunks.cache = type(fs.chunks.cache)(1 << 20)
        assert await read_file(fs, ino) == bytes(model)
        # all-zero blocks are holes: no block row
        zero_blocks = {i for i in range(-(-len(model) // bs))
                       if not any(model[i * bs:(i + 1) * bs])}
        assert not zero_blocks & {i for i, _ in e.blocks(ino)}
    try:
        e.run(main)
    finally:
        e.close()


def test_hole_at_start(env):
    async def main(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        fh, ino, _ = fs.create(d, b"sparse", 0o644, RW, USER)
        await fs.write(fh, 3 * MiB + 5, b"tail")
        await fs.release(fh)
        assert [i for i, _ in env.blocks(ino)] == [3]
        assert fs.attr(ino).size == 3 * MiB + 9
        data = await read_file(fs, ino)
        assert data == bytes(3 * MiB + 5) + b"tail"
        # fill into the middle of a hole
        fh = await fs.open(ino, RW)
        await fs.write(fh, MiB + 100, b"mid")
        await fs.release(fh)
        data = await read_file(fs, ino)
        assert data[MiB + 100:MiB + 103] == b"mid" and len(data) == 3 * MiB + 9
        assert data[:MiB + 100] == bytes(MiB + 100)
        assert data[MiB + 103:3 * MiB + 5] == bytes(2 * MiB - 98)
    env.run(main)


def test_auto_flush_when_buffer_large(small_env, monkeypatch):
    monkeypatch.setattr(datapath_mod, "MAX_DIRTY_PER_FILE", 10 * 4096)
    data = os.urandom(30 * 4096 + 17)

    async def main(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        fh, ino, _ = fs.create(d, b"x", 0o644, RW, USER)
        for off in range(0, len(data), 4096):
            await fs.write(fh, off, data[off:off + 4096])
        assert len(small_env.blocks(ino)) > 0        # flushed before close
        assert small_env.fs.buffers[ino].dirty_bytes <= 11 * 4096
        await fs.release(fh)
        assert await read_file(fs, ino) == data
    small_env.run(main)


# truncate / append --------------------------------------------------------------------------

@pytest.mark.parametrize("shrink_to,grow_to", [(int(1.5 * MiB), 4 * MiB), (MiB, 3 * MiB),
                                               (10, 100), (0, MiB + 1)])
def test_truncate_shrink_then_grow_reads_zeros(env, shrink_to, grow_to):
    data = b"A" * (3 * MiB + 77)

    async def main(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        ino = await put_file(fs, d, b"t", data)
        await fs.setattr(ino, size=shrink_to)
        assert fs.attr(ino).size == shrink_to
        assert await read_file(fs, ino) == data[:shrink_to]
        await fs.setattr(ino, size=grow_to)
        assert fs.attr(ino).size == grow_to
        fs.chunks.cache = type(fs.chunks.cache)(1 << 20)
        got = await read_file(fs, ino)
        assert got == data[:shrink_to] + bytes(grow_to - shrink_to)
    env.run(main)


def test_truncate_with_open_dirty_handle(env):
    async def main(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        fh, ino, _ = fs.create(d, b"t", 0o644, RW, USER)
        await fs.write(fh, 0, b"x" * (2 * MiB))
        await fs.setattr(ino, size=100)                 # ftruncate on the open file
        assert await fs.read(fh, 0, 3 * MiB) == b"x" * 100
        await fs.write(fh, 200, b"y")
        assert await fs.read(fh, 0, 3 * MiB) == b"x" * 100 + bytes(100) + b"y"
        await fs.release(fh)
        assert await read_file(fs, ino) == b"x" * 100 + bytes(100) + b"y"
    env.run(main)


def test_open_o_trunc(env):
    async def main(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        ino = await put_file(fs, d, b"t", b"old content")
        fh = await fs.open(ino, os.O_WRONLY | os.O_TRUNC)
        assert fs.attr(ino).size == 0
        await fs.write(fh, 0, b"new")
        await fs.release(fh)
        assert await read_file(fs, ino) == b"new"
    env.run(main)


def test_o_append(env):
    async def main(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        ino = await put_file(fs, d, b"log", b"abc")
        fh = await fs.open(ino, os.O_WRONLY | os.O_APPEND)
        await fs.write(fh, 0, b"def")
        await fs.write(fh, 1, b"ghi")
        await fs.release(fh)
        assert await read_file(fs, ino) == b"abcdefghi"
        # append across a block boundary
        fh = await fs.open(ino, os.O_WRONLY | os.O_APPEND)
        await fs.write(fh, 0, b"z" * MiB)
        await fs.release(fh)
        assert await read_file(fs, ino) == b"abcdefghi" + b"z" * MiB
    env.run(main)


# unlink while open ------------------------------------------------------------------------------

def test_unlink_open_file(env):
    data = os.urandom(MiB + 500)

    async def main(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        fh, ino, _ = fs.create(d, b"tmp", 0o644, RW, USER)
        await fs.write(fh, 0, data)
        await fs.flush(fh)
        keys = env.objects()
        assert len(keys) == 2
        fs.unlink(d, b"tmp")
        with pytest.raises(FsError) as ei:
            fs.lookup(d, b"tmp")
        assert errno_of(ei) == errno.ENOENT
        assert env.orphans() == [ino]
        assert fs.attr(ino).nlink == 0
        fs.chunks.cache = type(fs.chunks.cache)(1 << 20)
        assert await fs.read(fh, 0, len(data)) == data     # still readable
        await fs.write(fh, len(data), b"more")             # and writable
        await fs.flush(fh)
        assert await fs.read(fh, len(data), 10) == b"more"
        assert await fs.chunks.delete_garbage() >= 0
        assert await fs.read(fh, 0, len(data)) == data
        await fs.release(fh)
        assert not env.exists(ino)
        assert env.orphans() == []
        assert env.blocks(ino) == []
        while await fs.chunks.delete_garbage():
            pass
        assert env.garbage() == []
        assert env.objects() == set()
        c = env.counters()
        assert (c["n_chunks"], c["logical_bytes"], c["stored_bytes"]) == (0, 0, 0)
        assert c["n_inodes"] == 2                           # root + the flow
    env.run(main)


def test_unlink_closed_file_frees_chunks(env):
    async def main(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        ino = await put_file(fs, d, b"x", os.urandom(1000))
        fs.unlink(d, b"x")
        assert not env.exists(ino)
        while await fs.chunks.delete_garbage():
            pass
        assert env.objects() == set()
    env.run(main)


# rename -----------------------------------------------------------------------------------------------

def test_rename_overwrite(env):
    async def main(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        a = await put_file(fs, d, b"a", b"AAAA" * 1000)
        b = await put_file(fs, d, b"b", b"BBBB" * 1000)
        fs.rename(d, b"a", d, b"b")
        assert fs.lookup(d, b"b")[0] == a
        with pytest.raises(FsError):
            fs.lookup(d, b"a")
        assert not env.exists(b)
        assert await read_file(fs, a) == b"AAAA" * 1000
        assert [n for n, *_ in fs.readdir(d, 0)] == [b"b"]
        while await fs.chunks.delete_garbage():
            pass
        assert len(env.objects()) == 1
        # rename onto itself / onto a hard link of itself: nothing happens
        fs.rename(d, b"b", d, b"b")
        fs.link(a, d, b"hl")
        fs.rename(d, b"b", d, b"hl")
        assert fs.lookup(d, b"b")[0] == a and fs.lookup(d, b"hl")[0] == a
        assert fs.attr(a).nlink == 2
    env.run(main)


def test_rename_noreplace(env):
    async def main(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        a = await put_file(fs, d, b"a", b"a")
        b = await put_file(fs, d, b"b", b"b")
        with pytest.raises(FsError) as ei:
            fs.rename(d, b"a", d, b"b", RENAME_NOREPLACE)
        assert errno_of(ei) == errno.EEXIST
        assert fs.lookup(d, b"a")[0] == a and fs.lookup(d, b"b")[0] == b
        fs.rename(d, b"a", d, b"c", RENAME_NOREPLACE)
        assert fs.lookup(d, b"c")[0] == a
    env.run(main)


def test_rename_exchange(env):
    async def main(fs):
        d1, _ = fs.mkdir(ROOT_INO, b"d1", 0o755, USER)
        d2, _ = fs.mkdir(ROOT_INO, b"d2", 0o755, USER)
        a = await put_file(fs, d1, b"a", b"file a")
        sub, _ = fs.mkdir(d2, b"sub", 0o755, USER)
        cookies_before = {n: c for n, _, _, c, _ in fs.readdir(d1, 0)}
        fs.rename(d1, b"a", d2, b"sub", RENAME_EXCHANGE)
        assert fs.lookup(d1, b"a")[0] == sub
        assert fs.lookup(d2, b"sub")[0] == a
        assert {n: c for n, _, _, c, _ in fs.readdir(d1, 0)} == cookies_before
        # the directory moved from d2 to d1: parent link and nlinks follow
        assert fs.lookup(sub, b"..")[0] == d1
        assert fs.attr(d1).nlink == 3 and fs.attr(d2).nlink == 2
        assert await read_file(fs, a) == b"file a"
        with pytest.raises(FsError) as ei:
            fs.rename(d1, b"a", d2, b"missing", RENAME_EXCHANGE)
        assert errno_of(ei) == errno.ENOENT
        # exchanging a directory with its own ancestor
        inner, _ = fs.mkdir(sub, b"inner", 0o755, USER)
        with pytest.raises(FsError) as ei:
            fs.rename(sub, b"inner", d1, b"a", RENAME_EXCHANGE)
        assert errno_of(ei) == errno.EINVAL
        # exchanging a flow with a file would put a file at the top level
        with pytest.raises(FsError) as ei:
            fs.rename(ROOT_INO, b"d1", d2, b"sub", RENAME_EXCHANGE)
        assert errno_of(ei) == errno.EPERM
    env.run(main)


def test_rename_dir_into_own_subtree(env):
    async def main(fs):
        a, _ = fs.mkdir(ROOT_INO, b"a", 0o755, USER)
        b, _ = fs.mkdir(a, b"b", 0o755, USER)
        c, _ = fs.mkdir(b, b"c", 0o755, USER)
        for parent in (a, b, c):
            with pytest.raises(FsError) as ei:
                fs.rename(ROOT_INO, b"a", parent, b"x")
            assert errno_of(ei) == errno.EINVAL
        with pytest.raises(FsError) as ei:
            fs.rename(a, b"b", c, b"x")
        assert errno_of(ei) == errno.EINVAL
        assert fs.lookup(ROOT_INO, b"a")[0] == a and fs.lookup(b, b"c")[0] == c
    env.run(main)


def test_rename_dir_rules(env):
    async def main(fs):
        top, _ = fs.mkdir(ROOT_INO, b"top", 0o755, USER)
        src, _ = fs.mkdir(top, b"src", 0o755, USER)
        full, _ = fs.mkdir(top, b"full", 0o755, USER)
        await put_file(fs, full, b"x", b"x")
        empty, _ = fs.mkdir(top, b"empty", 0o755, USER)
        f = await put_file(fs, top, b"file", b"data")
        assert fs.attr(top).nlink == 5
        with pytest.raises(FsError) as ei:
            fs.rename(top, b"src", top, b"full")
        assert errno_of(ei) == errno.ENOTEMPTY
        with pytest.raises(FsError) as ei:
            fs.rename(top, b"file", top, b"empty")
        assert errno_of(ei) == errno.EISDIR
        with pytest.raises(FsError) as ei:
            fs.rename(top, b"src", top, b"file")
        assert errno_of(ei) == errno.ENOTDIR
        fs.rename(top, b"src", top, b"empty")              # dir over empty dir: fine
        assert fs.lookup(top, b"empty")[0] == src
        assert not env.exists(empty)
        assert fs.attr(top).nlink == 4
        # files may not go to the top level, directories may
        with pytest.raises(FsError) as ei:
            fs.rename(top, b"file", ROOT_INO, b"file")
        assert errno_of(ei) == errno.EPERM
        root_links = fs.attr(ROOT_INO).nlink
        fs.rename(top, b"empty", ROOT_INO, b"promoted")
        assert fs.lookup(src, b"..")[0] == ROOT_INO
        assert fs.attr(ROOT_INO).nlink == root_links + 1
        assert fs.attr(top).nlink == 3
        with pytest.raises(FsError) as ei:
            fs.rename(top, b"nope", top, b"x")
        assert errno_of(ei) == errno.ENOENT
        assert fs.lookup(top, b"file")[0] == f
    env.run(main)


# links, top level, names -------------------------------------------------------------------------

def test_hard_links(env):
    async def main(fs):
        d1, _ = fs.mkdir(ROOT_INO, b"d1", 0o755, USER)
        d2, _ = fs.mkdir(ROOT_INO, b"d2", 0o755, USER)
        ino = await put_file(fs, d1, b"orig", b"shared bytes")
        rec = fs.link(ino, d2, b"link")
        assert rec.nlink == 2
        assert fs.lookup(d2, b"link")[0] == ino
        with pytest.raises(FsError) as ei:
            fs.link(ino, d2, b"link")
        assert errno_of(ei) == errno.EEXIST
        with pytest.raises(FsError) as ei:
            fs.link(ino, ROOT_INO, b"top")
        assert errno_of(ei) == errno.EPERM
        with pytest.raises(FsError) as ei:
            fs.link(d1, d2, b"dirlink")
        assert errno_of(ei) == errno.EPERM
        fs.unlink(d1, b"orig")
        assert fs.attr(ino).nlink == 1
        assert await read_file(fs, ino) == b"shared bytes"
        fs.unlink(d2, b"link")
        assert not env.exists(ino)
    env.run(main)


def test_top_level_only_directories(env):
    async def main(fs):
        with pytest.raises(FsError) as ei:
            fs.create(ROOT_INO, b"file", 0o644, RW, USER)
        assert errno_of(ei) == errno.EPERM
        with pytest.raises(FsError) as ei:
            fs.mknod(ROOT_INO, b"fifo", stat.S_IFIFO | 0o644, 0, USER)
        assert errno_of(ei) == errno.EPERM
        with pytest.raises(FsError) as ei:
            fs.symlink(ROOT_INO, b"ln", b"target", USER)
        assert errno_of(ei) == errno.EPERM
        d, _ = fs.mkdir(ROOT_INO, b"flow", 0o755, USER)
        assert [n for n, *_ in fs.readdir(ROOT_INO, 0)] == [b"flow"]
        # inside a flow everything goes
        s, _ = fs.symlink(d, b"ln", b"../x", USER)
        assert fs.readlink(s) == b"../x"
        p, prec = fs.mknod(d, b"fifo", stat.S_IFIFO | 0o600, 0, USER)
        assert stat.S_ISFIFO(prec.mode)
    env.run(main)


def test_name_too_long(env):
    async def main(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        long, ok = b"n" * 256, b"n" * 255
        f = await put_file(fs, d, b"x", b"")
        calls = [lambda: fs.mkdir(d, long, 0o755, USER),
                 lambda: fs.create(d, long, 0o644, RW, USER),
                 lambda: fs.lookup(d, long),
                 lambda: fs.rename(d, b"x", d, long),
                 lambda: fs.link(f, d, long),
                 lambda: fs.symlink(d, long, b"t", USER),
                 lambda: fs.unlink(d, long)]
        for call in calls:
            with pytest.raises(FsError) as ei:
                call()
            assert errno_of(ei) == errno.ENAMETOOLONG
        fs.mkdir(d, ok, 0o755, USER)
        assert fs.lookup(d, ok)
        for bad in (b"a/b", b".", b".."):
            with pytest.raises(FsError) as ei:
                fs.mkdir(d, bad, 0o755, USER)
            assert errno_of(ei) in (errno.EINVAL, errno.EEXIST)
    env.run(main)


def test_directory_errors(env):
    async def main(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        sub, _ = fs.mkdir(d, b"sub", 0o755, USER)
        await put_file(fs, sub, b"x", b"x")
        with pytest.raises(FsError) as ei:
            fs.mkdir(d, b"sub", 0o755, USER)
        assert errno_of(ei) == errno.EEXIST
        with pytest.raises(FsError) as ei:
            fs.rmdir(d, b"sub")
        assert errno_of(ei) == errno.ENOTEMPTY
        with pytest.raises(FsError) as ei:
            fs.unlink(d, b"sub")
        assert errno_of(ei) == errno.EISDIR
        with pytest.raises(FsError) as ei:
            fs.rmdir(sub, b"x")
        assert errno_of(ei) == errno.ENOTDIR
        fs.unlink(sub, b"x")
        fs.rmdir(d, b"sub")
        assert not env.exists(sub)
        assert fs.attr(d).nlink == 2
        with pytest.raises(FsError) as ei:
            fs.rmdir(d, b"sub")
        assert errno_of(ei) == errno.ENOENT
    env.run(main)


def test_setattr(env):
    async def main(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        ino = await put_file(fs, d, b"x", b"x")
        rec = await fs.setattr(ino, mode=0o100600, uid=5, gid=6, atime_ns=10**18, mtime_ns=2 * 10**18)
        assert rec.mode == stat.S_IFREG | 0o600 and (rec.uid, rec.gid) == (5, 6)
        rec = fs.attr(ino)
        assert rec.atime_ns == 10**18 and rec.mtime_ns == 2 * 10**18
        assert stat.S_ISREG(rec.mode)
    env.run(main)


# xattrs ----------------------------------------------------------------------------------------

def test_xattr_errnos(env):
    async def main(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        ino = await put_file(fs, d, b"x", b"x")

        def err(call) -> int:
            with pytest.raises(FsError) as ei:
                call()
            return errno_of(ei)

        assert err(lambda: fs.getxattr(ino, b"user.missing")) == errno.ENODATA
        assert err(lambda: fs.removexattr(ino, b"user.missing")) == errno.ENODATA
        long = b"user." + b"n" * 251
        assert err(lambda: fs.setxattr(ino, long, b"v")) == errno.ERANGE
        assert err(lambda: fs.getxattr(ino, long)) == errno.ERANGE
        assert err(lambda: fs.removexattr(ino, long)) == errno.ERANGE
        assert err(lambda: fs.setxattr(ino, b"user.big", bytes(64 * 1024 + 1))) == errno.E2BIG
        fs.setxattr(ino, b"user.max", bytes(64 * 1024))
        assert fs.getxattr(ino, b"user.max") == bytes(64 * 1024)
        assert err(lambda: fs.setxattr(ino, b"system.posix_acl_access", b"v")) == errno.ENOTSUP
        assert err(lambda: fs.setxattr(ino, b"other.ns", b"v")) == errno.ENOTSUP
        # unsupported namespaces answer ENOTSUP on read too (ls caches that per device)
        assert err(lambda: fs.getxattr(ino, b"system.posix_acl_access")) == errno.ENOTSUP
        assert err(lambda: fs.getxattr(ino, b"security.selinux")) == errno.ENOTSUP
        assert err(lambda: fs.setxattr(ino, b"security.capability", b"v")) == errno.ENOTSUP
        assert err(lambda: fs.removexattr(ino, b"security.selinux")) == errno.ENOTSUP
        assert err(lambda: fs.getxattr(99999, b"user.a")) == errno.ENOENT
        fs.setxattr(ino, b"user.a", b"1")
        fs.setxattr(ino, b"user.a", b"2")
        fs.setxattr(ino, b"user." + b"n" * 250, b"")          # 255 bytes: fine
        fs.setxattr(d, b"user.on-dir", b"d")
        assert fs.getxattr(ino, b"user.a") == b"2"
        assert sorted(fs.listxattr(ino)) == sorted([b"user.a", b"user.max", b"user." + b"n" * 250])
        fs.removexattr(ino, b"user.a")
        assert b"user.a" not in fs.listxattr(ino)
        assert fs.listxattr(d) == [b"user.on-dir"]
    env.run(main)


# dedup, codec choice -----------------------------------------------------------------------------

def test_dedup_three_files(env):
    data = os.urandom(2 * MiB + 1000)

    async def main(fs):
        d1, _ = fs.mkdir(ROOT_INO, b"d1", 0o755, USER)
        d2, _ = fs.mkdir(ROOT_INO, b"d2", 0o755, USER)
        inos = [await put_file(fs, d1, b"one", data), await put_file(fs, d1, b"two", data),
                await put_file(fs, d2, b"three", data)]
        c = env.counters()
        assert c["n_chunks"] == 3
        assert c["logical_bytes"] == len(data)
        assert c["stored_bytes"] == len(data) + 3            # raw: one codec byte per chunk
        assert len(env.objects()) == 3
        digests = [d for _, d in env.blocks(inos[0])]
        assert all([d for _, d in env.blocks(i)] == digests for i in inos)
        assert all(env.chunk(dg).refcount == 3 for dg in digests)
        fs.unlink(d1, b"one")
        fs.unlink(d2, b"three")
        while await fs.chunks.delete_garbage():
            pass
        assert env.counters()["n_chunks"] == 3 and len(env.objects()) == 3
        assert all(env.chunk(dg).refcount == 1 for dg in digests)
        assert await read_file(fs, inos[1]) == data
        fs.unlink(d1, b"two")
        while await fs.chunks.delete_garbage():
            pass
        c = env.counters()
        assert (c["n_chunks"], c["logical_bytes"], c["stored_bytes"]) == (0, 0, 0)
        assert env.objects() == set()
    env.run(main)


def test_rewrite_same_content_no_new_chunk(env):
    data = b"constant " * 10000

    async def main(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        ino = await put_file(fs, d, b"x", data)
        before = env.counters()
        fh = await fs.open(ino, RW)
        await fs.write(fh, 0, data)
        await fs.release(fh)
        assert env.counters() == before
        assert env.garbage() == []
    env.run(main)


def test_codec_choice(env):
    text = b"".join(b"caption %d: a cat on a mat\n" % i for i in range(40000))
    jpeg = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(200_000)

    async def main(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        t = await put_file(fs, d, b"t.txt", text)
        j = await put_file(fs, d, b"j.jpg", jpeg)
        for _, dg in env.blocks(t):
            assert env.chunk(dg).codec == codec.CODEC_ZSTD
        [(_, dg)] = env.blocks(j)
        assert env.chunk(dg).codec == codec.CODEC_RAW
        fs.chunks.cache = type(fs.chunks.cache)(1 << 20)
        assert await read_file(fs, t) == text
        assert await read_file(fs, j) == jpeg
        c = env.counters()
        assert c["stored_bytes"] < c["logical_bytes"]
    env.run(main)


# readdir, statfs -------------------------------------------------------------------------------

@pytest.mark.parametrize("batch", [7, namespace_ops.LISTING_BATCH])
def test_readdir_cookies_stable(env, monkeypatch, batch):
    """Pages of 9 with changes between them; a batch of 7 puts index reads across pages."""
    monkeypatch.setattr(namespace_ops, "LISTING_BATCH", batch)

    async def main(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        for i in range(60):
            await put_file(fs, d, b"f%02d" % i, os.urandom(i * 1000) if i % 3 else b"")
        stable = {b"f%02d" % i for i in range(60) if i % 4}
        doomed = [b"f%02d" % i for i in range(60) if i % 4 == 0]
        seen, after, step = [], 0, 0
        while True:
            page = list(itertools.islice(fs.readdir(d, after), 9))
            if not page:
                break
            for name, ino, rec, cookie, stored in page:
                assert cookie > after
                assert rec.nlink == 1 and ino > 0
                assert stored == fs.stored_bytes(ino) and (stored > 0) == (rec.size > 0)
                seen.append(name)
                after = cookie
            if doomed:
                fs.unlink(d, doomed.pop())
            if step < 10:
                await put_file(fs, d, b"new%02d" % step, b"")
                fs.rename(d, b"new%02d" % step, d, b"ren%02d" % step)
            step += 1
        assert len(seen) == len(set(seen))
        assert stable <= set(seen)
        # a cookie handed out earlier still resumes at the same place
        all_entries = list(fs.readdir(d, 0))
        mid = all_entries[len(all_entries) // 2][3]
        assert [e[0] for e in fs.readdir(d, mid)] == [e[0] for e in all_entries if e[3] > mid]
    env.run(main)


def test_statfs(env):
    async def main(fs):
        s = await fs.statfs()
        assert s["bsize"] > 0 and s["namemax"] == 255
        assert s["blocks"] >= s["bfree"] >= 0 and s["bavail"] <= s["blocks"]
        assert s["files"] >= s["ffree"] > 0
        assert s["logical"] == s["stored"] == 0
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        await put_file(fs, d, b"x", os.urandom(5000))
        s2 = await fs.statfs()
        assert s2["logical"] == 5000 and s2["stored"] == 5001
        assert s2["files"] - s2["ffree"] == 3                # root, flow, file
    env.run(main)


def test_read_only_filesystem(env):
    async def main(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        await put_file(fs, d, b"x", b"data")
    env.run(main)
    ro = Filesystem(env.index, env.chunks, read_only=True)

    async def check(_):
        await ro.start()
        d, _ = ro.lookup(ROOT_INO, b"f")
        ino, _ = ro.lookup(d, b"x")
        assert await read_file(ro, ino) == b"data"
        for call in (lambda: ro.mkdir(d, b"n", 0o755, USER), lambda: ro.unlink(d, b"x"),
                     lambda: ro.setxattr(ino, b"user.a", b"1")):
            with pytest.raises(FsError) as ei:
                call()
            assert errno_of(ei) == errno.EROFS
        with pytest.raises(FsError) as ei:
            await ro.open(ino, os.O_WRONLY)
        assert errno_of(ei) == errno.EROFS
    env.run(check, start=False)


# crash recovery ---------------------------------------------------------------------------------

def test_start_purges_orphans_after_crash(env):
    data = os.urandom(MiB + 10)
    state = {}

    async def before_crash(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        fh, ino, _ = fs.create(d, b"victim", 0o644, RW, USER)
        await fs.write(fh, 0, data)
        await fs.flush(fh)
        keep = await put_file(fs, d, b"keep", b"kept data")
        fs.unlink(d, b"victim")                 # still open: becomes an orphan
        state.update(ino=ino, keep=keep, fh=fh)
        # the daemon dies here: no release, no garbage deletion
    env.run(before_crash)
    assert env.orphans() == [state["ino"]]
    assert len(env.objects()) == 3
    env.reopen()
    assert env.orphans() == [state["ino"]]      # survived the "crash"

    async def after(fs):
        assert not env.exists(state["ino"])
        assert env.orphans() == []
        assert env.blocks(state["ino"]) == []
        assert env.garbage() == []
        assert len(env.objects()) == 1          # only "keep"'s chunk is left
        c = env.counters()
        assert c["n_chunks"] == 1 and c["n_inodes"] == 3
        d, _ = fs.lookup(ROOT_INO, b"f")
        assert await read_file(fs, state["keep"]) == b"kept data"
        assert [n for n, *_ in fs.readdir(d, 0)] == [b"keep"]
    env.run(after)                               # runs fs.start()


def test_start_drains_leftover_garbage(env):
    async def before(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        await put_file(fs, d, b"x", os.urandom(3000))
        fs.unlink(d, b"x")                       # garbage row, never deleted
    env.run(before)
    assert len(env.garbage()) == 1 and len(env.objects()) == 1
    env.reopen()
    env.run(lambda fs: trio.sleep(0))
    assert env.garbage() == [] and env.objects() == set()


def test_shutdown_flushes_buffers(env):
    async def main(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        fh, ino, _ = fs.create(d, b"x", 0o644, RW, USER)
        await fs.write(fh, 0, b"unflushed")
        await fs.shutdown()
        return ino
    ino = env.run(main)
    env.reopen()

    async def check(fs):
        assert await read_file(fs, ino) == b"unflushed"
    env.run(check)


def test_concurrent_write_during_flush(tmp_path):
    """Writes landing while a flush is storing chunks are neither lost nor mixed up."""
    from faults import FaultyBackend
    e = Env(tmp_path)
    slow = FaultyBackend(e.backend, delay=0.05, ops={"put"})
    e.chunks = ChunkStore(e.index, {"local": slow}, Placement([slow]))
    e.fs = Filesystem(e.index, e.chunks)

    async def main(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        fh, ino, _ = fs.create(d, b"x", 0o644, RW, USER)
        model = bytearray(os.urandom(2 * MiB))
        await fs.write(fh, 0, bytes(model))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fs.flush, fh)
            await trio.sleep(0.01)
            for off in (10, MiB + 10, 2 * MiB + 5):
                chunk = os.urandom(100)
                await fs.write(fh, off, chunk)
                if off > len(model):
                    model.extend(bytes(off - len(model)))
                model[off:off + 100] = chunk
        assert await fs.read(fh, 0, 3 * MiB) == bytes(model)
        await fs.release(fh)
        fs.chunks.cache = type(fs.chunks.cache)(1 << 20)
        assert await read_file(fs, ino) == bytes(model)
    try:
        e.run(main)
    finally:
        e.close()


# more lifecycle cases --------------------------------------------------------------------------

def test_forget_purges_unlinked_inode(env):
    async def main(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        ino = await put_file(fs, d, b"x", b"data")
        sub, _ = fs.mkdir(d, b"sub", 0o755, USER)
        fs.remember(ino)
        fs.remember(ino)
        fs.remember(sub)
        fs.unlink(d, b"x")
        fs.rmdir(d, b"sub")
        assert sorted(env.orphans()) == sorted([ino, sub])
        assert env.exists(ino) and env.exists(sub)
        with pytest.raises(FsError) as ei:      # nothing can be created in a removed dir
            fs.mkdir(sub, b"n", 0o755, USER)
        assert errno_of(ei) == errno.ENOENT
        fs.forget([(ino, 1)])
        assert env.exists(ino)                  # one lookup reference left
        fs.forget([(ino, 1), (sub, 1)])
        assert not env.exists(ino) and not env.exists(sub)
        assert env.orphans() == []
    env.run(main)


def test_rename_over_open_file(env):
    async def main(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        a = await put_file(fs, d, b"a", b"new version")
        b = await put_file(fs, d, b"b", b"old version")
        fh = await fs.open(b, os.O_RDONLY)
        fs.rename(d, b"a", d, b"b")
        assert env.orphans() == [b]
        assert await fs.read(fh, 0, 100) == b"old version"
        await fs.release(fh)
        assert not env.exists(b) and env.orphans() == []
        assert await read_file(fs, a) == b"new version"
    env.run(main)


def test_rename_unsupported_flags_einval(env):
    """rename(2): EINVAL when the filesystem does not support a flag (RENAME_WHITEOUT = 4)."""
    async def main(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        await put_file(fs, d, b"a", b"a")
        with pytest.raises(FsError) as ei:
            fs.rename(d, b"a", d, b"b", 4)
        assert errno_of(ei) == errno.EINVAL
        assert fs.lookup(d, b"a")
    env.run(main)


def test_identical_blocks_in_one_file(env):
    block = os.urandom(MiB)

    async def main(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        ino = await put_file(fs, d, b"x", block * 3 + b"end")
        digests = [dg for _, dg in env.blocks(ino)]
        assert digests[0] == digests[1] == digests[2] != digests[3]
        assert env.chunk(digests[0]).refcount == 3
        assert env.counters()["n_chunks"] == 2
        assert len(env.objects()) == 2
        assert not fs.chunks._pins
        await fs.setattr(ino, size=MiB)
        assert env.chunk(digests[0]).refcount == 1
        while await fs.chunks.delete_garbage():
            pass
        assert len(env.objects()) == 1
        assert await read_file(fs, ino) == block
    env.run(main)


@pytest.mark.parametrize("fault,expected", [("down", errno.EIO), ("full", errno.ENOSPC)])
def test_flush_failure_keeps_buffer(tmp_path, fault, expected):
    """A failed flush raises a plain FsError (no exception group), keeps the data
    buffered and readable, and succeeds once the backend is back."""
    from faults import FaultyBackend
    e = Env(tmp_path)
    flaky = FaultyBackend(e.backend, ops={"put"})
    e.chunks = ChunkStore(e.index, {"local": flaky}, Placement([flaky]))
    e.fs = Filesystem(e.index, e.chunks)
    data = os.urandom(3 * MiB)

    async def main(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        fh, ino, _ = fs.create(d, b"x", 0o644, RW, USER)
        await fs.write(fh, 0, data)
        setattr(flaky, fault, True)
        with pytest.raises(FsError) as ei:
            await fs.flush(fh)
        assert type(ei.value) is FsError and errno_of(ei) == expected
        assert not fs.chunks._pins
        assert e.blocks(ino) == [] and e.counters()["n_chunks"] == 0
        assert await fs.read(fh, 0, len(data)) == data
        setattr(flaky, fault, False)
        await fs.flush(fh)
        await fs.release(fh)
        assert await read_file(fs, ino) == data
    try:
        e.run(main)
    finally:
        e.close()


def test_background_garbage_waits_until_the_drop_is_durable(env, monkeypatch):
    """Group commit: a chunk is deleted only once the commit dropping its last reference
    is durable (a power loss falls back to the durable index, which must find it)."""
    from gffs.index import commit
    monkeypatch.setattr(commit, "COMMIT_INTERVAL", 3600.0)   # no periodic commit in between

    async def main(fs):
        async with env.index.grouped(env.chunks.sync_backends), trio.open_nursery() as nursery:
            await fs.start(1000, 1000)
            await nursery.start(fs.run_background)
            d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
            await put_file(fs, d, b"x", os.urandom(5000))
            assert len(env.objects()) == 1
            fs.unlink(d, b"x")
            assert await fs.chunks.delete_garbage() == 0   # dropped, not durably yet
            assert len(env.objects()) == 1
            await env.index.durable()
            with trio.fail_after(30):   # the commit is durable: the garbage loop deletes it
                while env.objects():
                    await trio.sleep(0.05)
            assert env.garbage() == []
            nursery.cancel_scope.cancel()
    env.run(main, start=False)


def test_fsync_makes_the_file_durable(env):
    """close() leaves the change in the open group (journaled); fsync() commits it."""
    async def main(fs):
        async with env.index.grouped(env.chunks.sync_backends):
            await fs.start(1000, 1000)
            d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
            fh, ino, _ = fs.create(d, b"x", 0o644, RW, USER)
            await fs.write(fh, 0, b"durable" * 100)
            await fs.flush(fh)
            with env.index.read_committed() as txn:
                assert not env.ns.exists(txn, ino)
            await fs.fsync(fh)
            with env.index.read_committed() as txn:
                assert env.ns.get(txn, ino).size == 700
                assert list(env.cm.blocks(txn, ino))
            assert not env.backend._unsynced   # the chunk file was fsynced before the commit
            await fs.release(fh)
    env.run(main, start=False)


def test_utimens_before_close_keeps_the_set_time(env):
    """cp -p: write, futimens(old time), close — the old mtime must stick."""
    old = 1_000_000_000_000_000_000

    async def main(fs):
        d, _ = fs.mkdir(ROOT_INO, b"f", 0o755, USER)
        fh, ino, _ = fs.create(d, b"x", 0o644, RW, USER)
        await fs.write(fh, 0, b"content" * 1000)
        await fs.setattr(ino, atime_ns=old, mtime_ns=old)
        assert fs.attr(ino).mtime_ns == old
        await fs.flush(fh)
        await fs.release(fh)
        assert fs.attr(ino).mtime_ns == old
        assert fs.attr(ino).atime_ns == old
        assert fs.attr(ino).size == 7000
    env.run(main)


def test_hard_link_outliving_its_first_directory_stays_writable_with_flow_policies(env):
    """The file's parent field names a removed directory; with per-flow placement the
    write path looks the flow up through it (it used to fail with ENOENT)."""
    from gffs.placement import FlowPolicy
    env.chunks.placement.flows = {"b": FlowPolicy(1, ["local"])}

    async def main(fs):
        a, _ = fs.mkdir(ROOT_INO, b"a", 0o755, USER)
        sub, _ = fs.mkdir(a, b"sub", 0o755, USER)
        b, _ = fs.mkdir(ROOT_INO, b"b", 0o755, USER)
        ino = await put_file(fs, sub, b"x.jpg", b"one")
        fs.link(ino, b, b"x.jpg")
        fs.unlink(sub, b"x.jpg")
        fs.rmdir(a, b"sub")
        fh = await fs.open(ino, RW)
        assert await fs.write(fh, 3, b" two") == 4
        await fs.flush(fh)
        await fs.release(fh)
        assert await read_file(fs, ino) == b"one two"
    env.run(main)
