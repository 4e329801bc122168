"""gffs.fs.operations.Operations called directly, without a mount (pyfuse3.init is never called).

Request contexts: pyfuse3.RequestContext() can be built from Python but its fields
are read-only (all 0), so for a non-root caller a plain object with uid, gid, pid
and umask stands in — Operations only reads ctx.uid and ctx.gid.

setattr: pyfuse3.SetattrFields() can be built but its update_* flags are read-only
(always False), so the setattr tests pass a plain object with update_* attributes;
Operations only reads them. The Filesystem.setattr logic itself is covered in
test_filesystem.py.
"""

from __future__ import annotations

import errno
import inspect
import os
import stat
from types import SimpleNamespace

import pyfuse3
import pytest
import trio

from gffs.chunks.store import ChunkStore
from gffs.errors import FsError
from gffs.fs.filesystem import Filesystem
from gffs.fs.operations import Operations
from gffs.index import ROOT_INO, Index
from gffs.placement import Placement
from gffs_backends.local import LocalBackend

CTX = SimpleNamespace(uid=1000, gid=1000, pid=4242, umask=0o022)


def fields(**kw) -> SimpleNamespace:
    names = ("update_atime", "update_mtime", "update_ctime", "update_mode", "update_uid",
             "update_gid", "update_size")
    return SimpleNamespace(**{n: kw.get(n, False) for n in names})


@pytest.fixture
def ops(tmp_path):
    index = Index(tmp_path / "index")
    backend = LocalBackend("local", tmp_path / "local")
    fs = Filesystem(index, ChunkStore(index, {"local": backend}, Placement([backend])))
    yield Operations(fs)
    index.close()


def run(ops: Operations, main):
    async def wrapper():
        await ops.fs.start(1000, 1000)
        with trio.fail_after(20):
            return await main(ops)
    return trio.run(wrapper)


async def fuse_errno(coro) -> int:
    with pytest.raises(pyfuse3.FUSEError) as ei:
        await coro
    return ei.value.errno


def test_request_context_can_be_built():
    ctx = pyfuse3.RequestContext()
    assert (ctx.uid, ctx.gid, ctx.pid, ctx.umask) == (0, 0, 0, 0)


def test_round_trip(ops):
    async def main(ops):
        e = await ops.mkdir(ROOT_INO, b"flow", 0o755, CTX)
        assert isinstance(e, pyfuse3.EntryAttributes)
        assert stat.S_ISDIR(e.st_mode) and e.st_uid == 1000 and e.st_nlink == 2
        d = e.st_ino
        assert ops.fs.lookups[d] == 1                      # an entry reply counts as a lookup
        fi, fe = await ops.create(d, b"file", 0o644, os.O_RDWR, CTX)
        assert isinstance(fi, pyfuse3.FileInfo) and stat.S_ISREG(fe.st_mode)
        assert await ops.write(fi.fh, 0, b"hello fuse") == 10
        assert await ops.read(fi.fh, 0, 100) == b"hello fuse"
        await ops.flush(fi.fh)
        await ops.fsync(fi.fh, False)
        await ops.release(fi.fh)
        le = await ops.lookup(d, b"file", CTX)
        assert le.st_ino == fe.st_ino and le.st_size == 10 and le.st_blocks == 1
        ga = await ops.getattr(fe.st_ino, CTX)
        assert ga.st_size == 10 and ga.st_mtime_ns > 0
        fi2 = await ops.open(fe.st_ino, os.O_RDONLY, pyfuse3.RequestContext())
        assert await ops.read(fi2.fh, 6, 100) == b"fuse"
        await ops.release(fi2.fh)
        assert (await ops.lookup(d, b"..", CTX)).st_ino == ROOT_INO
        assert await ops.access(fe.st_ino, os.R_OK, CTX)
    run(ops, main)


def test_setattr(ops):
    async def main(ops):
        d = (await ops.mkdir(ROOT_INO, b"flow", 0o755, CTX)).st_ino
        fi, fe = await ops.create(d, b"f", 0o644, os.O_RDWR, CTX)
        await ops.write(fi.fh, 0, b"x" * 5000)
        await ops.release(fi.fh)
        attr = pyfuse3.EntryAttributes()
        attr.st_mode = stat.S_IFREG | 0o600
        attr.st_size = 10
        attr.st_uid = 7
        attr.st_mtime_ns = 1_600_000_000_000_000_000
        r = await ops.setattr(fe.st_ino, attr, fields(update_mode=True, update_size=True,
                                                      update_mtime=True), None, CTX)
        assert stat.S_IMODE(r.st_mode) == 0o600 and r.st_size == 10
        assert r.st_mtime_ns == 1_600_000_000_000_000_000
        assert r.st_uid == 1000                               # not asked to change
        r = await ops.setattr(fe.st_ino, attr, fields(update_uid=True), None, CTX)
        assert r.st_uid == 7 and r.st_size == 10
        fi = await ops.open(fe.st_ino, os.O_RDONLY, CTX)
        assert await ops.read(fi.fh, 0, 100) == b"x" * 10
        await ops.release(fi.fh)
        assert await fuse_errno(ops.setattr(99999, attr, fields(update_mode=True), None, CTX)) \
            == errno.ENOENT
    run(ops, main)


def test_setattr_fields_read_only():
    """Documents why the tests use a stand-in object for SetattrFields."""
    f = pyfuse3.SetattrFields()
    with pytest.raises(AttributeError):
        f.update_size = True


def test_fs_errors_keep_their_errno(ops):
    async def main(ops):
        assert await fuse_errno(ops.getattr(12345, CTX)) == errno.ENOENT
        assert await fuse_errno(ops.unlink(ROOT_INO, b"missing", CTX)) == errno.ENOENT
        assert await fuse_errno(ops.create(ROOT_INO, b"f", 0o644, os.O_RDWR, CTX)) == errno.EPERM
        d = (await ops.mkdir(ROOT_INO, b"flow", 0o755, CTX)).st_ino
        assert await fuse_errno(ops.mkdir(ROOT_INO, b"flow", 0o755, CTX)) == errno.EEXIST
        assert await fuse_errno(ops.lookup(ROOT_INO, b"n" * 256, CTX)) == errno.ENAMETOOLONG
        fi, fe = await ops.create(d, b"f", 0o644, os.O_RDWR, CTX)
        await ops.release(fi.fh)
        await ops.mkdir(d, b"sub", 0o755, CTX)
        await ops.create(d + 0, b"g", 0o644, os.O_RDWR, CTX)
        assert await fuse_errno(ops.rename(d, b"f", d, b"g", 1, CTX)) == errno.EEXIST
        assert await fuse_errno(ops.rmdir(ROOT_INO, b"flow", CTX)) == errno.ENOTEMPTY
        assert await fuse_errno(ops.unlink(d, b"sub", CTX)) == errno.EISDIR
        assert await fuse_errno(ops.getxattr(fe.st_ino, b"user.none", CTX)) == errno.ENODATA
        assert await fuse_errno(ops.setxattr(fe.st_ino, b"system.x", b"v", CTX)) == errno.ENOTSUP
        assert await fuse_errno(ops.setxattr(fe.st_ino, b"user.x", bytes(65537), CTX)) == errno.E2BIG
        assert await fuse_errno(ops.read(999, 0, 10)) == errno.EBADF
        assert await fuse_errno(ops.open(d, os.O_RDONLY, CTX)) == errno.EISDIR
        assert await fuse_errno(ops.opendir(fe.st_ino, CTX)) == errno.ENOTDIR
        assert await fuse_errno(ops.readlink(fe.st_ino, CTX)) == errno.EINVAL
        await ops.setxattr(fe.st_ino, b"user.x", b"v", CTX)
        assert await ops.getxattr(fe.st_ino, b"user.x", CTX) == b"v"
        assert await ops.listxattr(fe.st_ino, CTX) == [b"user.x"]
        await ops.removexattr(fe.st_ino, b"user.x", CTX)
        assert await fuse_errno(ops.removexattr(fe.st_ino, b"user.x", CTX)) == errno.ENODATA
    run(ops, main)


@pytest.mark.parametrize("err", [errno.ENOENT, errno.EEXIST, errno.ENOSPC, errno.EIO,
                                 errno.EACCES, errno.EROFS])
def test_fs_error_errno_passes_through(ops, monkeypatch, err):
    def fail(*args, **kw):
        raise FsError(err, "injected")
    monkeypatch.setattr(ops.fs, "attr", fail)
    monkeypatch.setattr(ops.fs, "listxattr", fail)

    async def main(ops):
        assert await fuse_errno(ops.getattr(ROOT_INO, CTX)) == err
        assert await fuse_errno(ops.listxattr(ROOT_INO, CTX)) == err
    run(ops, main)


def test_lookup_miss_is_negative_entry(ops):
    """A lookup miss answers with a cacheable negative entry (st_ino 0), not a lookup reference."""
    async def main(ops):
        before = dict(ops.fs.lookups)
        e = await ops.lookup(ROOT_INO, b"missing", CTX)
        assert isinstance(e, pyfuse3.EntryAttributes)
        assert e.st_ino == 0 and e.entry_timeout > 0
        assert dict(ops.fs.lookups) == before
        # other lookup errors still become their errno
        assert await fuse_errno(ops.lookup(ROOT_INO, b"n" * 256, CTX)) == errno.ENAMETOOLONG
        d = (await ops.mkdir(ROOT_INO, b"flow", 0o755, CTX)).st_ino
        fi, fe = await ops.create(d, b"f", 0o644, os.O_RDWR, CTX)
        await ops.release(fi.fh)
        assert await fuse_errno(ops.lookup(fe.st_ino, b"x", CTX)) == errno.ENOTDIR
    run(ops, main)


@pytest.mark.parametrize("err", [errno.EIO, errno.EACCES, errno.ENOTDIR])
def test_lookup_other_errors_pass_through(ops, monkeypatch, err):
    def fail(*args, **kw):
        raise FsError(err, "injected")
    monkeypatch.setattr(ops.fs, "lookup", fail)

    async def main(ops):
        assert await fuse_errno(ops.lookup(ROOT_INO, b"x", CTX)) == err
    run(ops, main)


# handler name -> (Filesystem attribute it calls, arguments for the handler)
HANDLERS = {
    "lookup": ("lookup", (ROOT_INO, b"x", CTX)),
    "getattr": ("attr", (ROOT_INO, CTX)),
    "setattr": ("setattr", (ROOT_INO, pyfuse3.EntryAttributes(), fields(update_mode=True), None, CTX)),
    "readlink": ("readlink", (ROOT_INO, CTX)),
    "mknod": ("mknod", (ROOT_INO, b"x", stat.S_IFIFO | 0o644, 0, CTX)),
    "mkdir": ("mkdir", (ROOT_INO, b"x", 0o755, CTX)),
    "unlink": ("unlink", (ROOT_INO, b"x", CTX)),
    "rmdir": ("rmdir", (ROOT_INO, b"x", CTX)),
    "symlink": ("symlink", (ROOT_INO, b"x", b"t", CTX)),
    "rename": ("rename", (ROOT_INO, b"x", ROOT_INO, b"y", 0, CTX)),
    "link": ("link", (2, ROOT_INO, b"y", CTX)),
    "open": ("open", (2, os.O_RDONLY, CTX)),
    "create": ("create", (ROOT_INO, b"x", 0o644, os.O_RDWR, CTX)),
    "read": ("read", (1, 0, 10)),
    "write": ("write", (1, 0, b"data")),
    "flush": ("flush", (1,)),
    "fsync": ("fsync", (1, False)),
    "release": ("release", (1,)),
    "opendir": ("opendir", (ROOT_INO, CTX)),
    "readdir": ("readdir", (ROOT_INO, 0, object())),
    "statfs": ("statfs", (CTX,)),
    "getxattr": ("getxattr", (ROOT_INO, b"user.a", CTX)),
    "setxattr": ("setxattr", (ROOT_INO, b"user.a", b"v", CTX)),
    "listxattr": ("listxattr", (ROOT_INO, CTX)),
    "removexattr": ("removexattr", (ROOT_INO, b"user.a", CTX)),
}


@pytest.mark.parametrize("exc", [RuntimeError("bug"), KeyError("k"), AssertionError(),
                                 OSError(errno.EPERM, "raw os error"),
                                 ExceptionGroup("g", [ValueError("v")])])
@pytest.mark.parametrize("handler", sorted(HANDLERS))
def test_unexpected_exception_becomes_eio(ops, monkeypatch, handler, exc):
    method, args = HANDLERS[handler]

    if inspect.iscoroutinefunction(getattr(Filesystem, method)):
        async def boom(*a, **kw):
            await trio.sleep(0)
            raise exc
    elif inspect.isgeneratorfunction(getattr(Filesystem, method)):
        def boom(*a, **kw):
            raise exc
            yield  # pragma: no cover
    else:
        def boom(*a, **kw):
            raise exc
    monkeypatch.setattr(ops.fs, method, boom)

    async def main(ops):
        if handler == "readdir":   # directory handles come from opendir
            assert await ops.opendir(ROOT_INO, CTX) == args[0]
        assert await fuse_errno(getattr(ops, handler)(*args)) == errno.EIO
    run(ops, main)


def test_every_handler_is_guarded():
    """Each request handler Operations overrides (except forget, which must not raise
    at all) is wrapped by the guard, and the table above covers them."""
    own = {n for n, v in vars(Operations).items()
           if inspect.iscoroutinefunction(v) and not n.startswith("_")}
    assert own - {"forget", "access", "releasedir", "fsyncdir"} == set(HANDLERS)
    for name in own - {"forget"}:
        assert hasattr(vars(Operations)[name], "__wrapped__"), f"{name} is not guarded"


def test_fsyncdir_error_becomes_eio(ops, monkeypatch):
    async def boom():
        raise RuntimeError("sync failed")
    monkeypatch.setattr(ops.fs.chunks, "sync", boom)

    async def main(ops):
        assert await fuse_errno(ops.fsyncdir(ROOT_INO, False)) == errno.EIO
    run(ops, main)


def test_forget_never_raises(ops, monkeypatch):
    def boom(items):
        raise RuntimeError("bug in forget")
    monkeypatch.setattr(ops.fs, "forget", boom)

    async def main(ops):
        await ops.forget([(ROOT_INO, 1)])
    run(ops, main)


def test_forget_purges_unlinked(ops):
    async def main(ops):
        d = (await ops.mkdir(ROOT_INO, b"flow", 0o755, CTX)).st_ino
        fi, fe = await ops.create(d, b"f", 0o644, os.O_RDWR, CTX)
        await ops.write(fi.fh, 0, b"data")
        await ops.release(fi.fh)
        await ops.unlink(d, b"f", CTX)
        ino = fe.st_ino
        assert (await ops.getattr(ino, CTX)).st_nlink == 0   # kernel still holds it
        await ops.forget([(ino, 1)])
        assert await fuse_errno(ops.getattr(ino, CTX)) == errno.ENOENT
    run(ops, main)


def test_readdir(ops, monkeypatch):
    replies = []
    accept = {"n": 1000}

    def fake_reply(token, name, attr, cookie):
        if len(replies) >= accept["n"]:
            return False
        replies.append((name, attr.st_ino, cookie))
        return True
    monkeypatch.setattr(pyfuse3, "readdir_reply", fake_reply)

    async def main(ops):
        d = (await ops.mkdir(ROOT_INO, b"flow", 0o755, CTX)).st_ino
        for i in range(5):
            fi, _ = await ops.create(d, b"f%d" % i, 0o644, os.O_RDWR, CTX)
            await ops.release(fi.fh)
        fh = await ops.opendir(d, CTX)
        accept["n"] = 3
        before = sum(ops.fs.lookups.values())
        await ops.readdir(fh, 0, object())
        assert [r[0] for r in replies] == [b"f0", b"f1", b"f2"]
        assert sum(ops.fs.lookups.values()) == before + 3    # only accepted entries count
        accept["n"] = 1000
        await ops.readdir(fh, replies[-1][2], object())       # resume at the last cookie
        assert [r[0] for r in replies] == [b"f%d" % i for i in range(5)]
        await ops.releasedir(fh)
    run(ops, main)


def test_statfs(ops):
    async def main(ops):
        s = await ops.statfs(CTX)
        assert isinstance(s, pyfuse3.StatvfsData)
        assert s.f_namemax == 255 and s.f_bsize > 0
        assert s.f_blocks >= s.f_bfree >= s.f_bavail >= 0
        assert s.f_files >= s.f_ffree > 0
    run(ops, main)


def test_symlink_link_mknod(ops):
    async def main(ops):
        d = (await ops.mkdir(ROOT_INO, b"flow", 0o755, CTX)).st_ino
        s = await ops.symlink(d, b"ln", b"target/path", CTX)
        assert stat.S_ISLNK(s.st_mode) and s.st_size == len(b"target/path")
        assert await ops.readlink(s.st_ino, CTX) == b"target/path"
        n = await ops.mknod(d, b"fifo", stat.S_IFIFO | 0o600, 0, CTX)
        assert stat.S_ISFIFO(n.st_mode)
        fi, fe = await ops.create(d, b"f", 0o644, os.O_RDWR, CTX)
        await ops.release(fi.fh)
        le = await ops.link(fe.st_ino, d, b"f2", CTX)
        assert le.st_ino == fe.st_ino and le.st_nlink == 2
        await ops.rename(d, b"f2", d, b"f3", 0, CTX)
        assert (await ops.lookup(d, b"f3", CTX)).st_ino == fe.st_ino
        await ops.unlink(d, b"f3", CTX)
        assert (await ops.getattr(fe.st_ino, CTX)).st_nlink == 1
    run(ops, main)


def test_readdir_listing_cache_follows_every_change(ops, monkeypatch):
    """A second listing comes from the kept replies, and shows each change made in between
    exactly as a lookup + getattr of every name does (a stale attribute would be cached
    by the kernel as the file's)."""
    page = {"n": 3}
    got = []

    def fake_reply(token, name, attr, cookie):
        if token["n"] >= page["n"]:
            return False
        token["n"] += 1
        got.append((name, attr.st_ino, attr.st_mode, attr.st_size, attr.st_nlink,
                    attr.st_mtime_ns, attr.st_blocks, cookie))
        return True
    monkeypatch.setattr(pyfuse3, "readdir_reply", fake_reply)

    async def listing(d: int) -> list[tuple]:
        got.clear()
        fh = await ops.opendir(d, CTX)
        after = 0
        while True:               # pages of 3, each resumed at the last cookie
            token = {"n": 0}
            await ops.readdir(fh, after, token)
            if not token["n"]:
                break
            after = got[-1][-1]
        await ops.releasedir(fh)
        assert [c[-1] for c in got] == sorted(c[-1] for c in got)
        return [c[:-1] for c in got]

    async def truth(d: int) -> list[tuple]:
        rows = []
        for name, *_ in await listing(d):
            a = await ops.getattr((await ops.lookup(d, name, CTX)).st_ino, CTX)
            rows.append((name, a.st_ino, a.st_mode, a.st_size, a.st_nlink, a.st_mtime_ns,
                         a.st_blocks))
        return rows

    async def check(d: int, names: list[bytes]) -> None:
        first = await listing(d)
        assert ops.listings.current(d) is not None      # kept: the next one is a cache reply
        assert await listing(d) == first == await truth(d)
        assert [r[0] for r in first] == names

    async def main(ops):
        d = (await ops.mkdir(ROOT_INO, b"flow", 0o755, CTX)).st_ino
        other = (await ops.mkdir(ROOT_INO, b"other", 0o755, CTX)).st_ino
        names = [b"f%d" % i for i in range(7)]
        for n in names:
            fi, _ = await ops.create(d, n, 0o644, os.O_RDWR, CTX)
            await ops.release(fi.fh)
        await check(d, names)
        ino = {r[0]: r[1] for r in await listing(d)}
        await ops.setattr(ino[b"f0"], SimpleNamespace(st_mode=0o600), fields(update_mode=True),
                          None, CTX)
        await check(d, names)
        fi = await ops.open(ino[b"f1"], os.O_RDWR, CTX)
        await ops.write(fi.fh, 0, os.urandom(5000))      # open: size only in the buffer
        await check(d, names)
        await ops.release(fi.fh)                          # flushed: stored bytes too
        await check(d, names)
        await ops.unlink(d, b"f2", CTX)
        names.remove(b"f2")
        await check(d, names)
        await ops.rename(d, b"f3", d, b"g3", 0, CTX)
        names.remove(b"f3")
        names.append(b"g3")                               # a rename is a new entry: listed last
        await check(d, names)
        await ops.link(ino[b"f4"], other, b"f4-link", CTX)   # nlink, from another directory
        await check(d, names)
        await ops.setattr(ino[b"f5"], SimpleNamespace(st_mtime_ns=10**18),
                          fields(update_mtime=True), None, CTX)
        await check(d, names)
        fi, _ = await ops.create(d, b"new", 0o644, os.O_RDWR, CTX)
        await ops.release(fi.fh)
        await ops.rename(other, b"f4-link", d, b"f4-moved", 0, CTX)
        await check(d, names + [b"new", b"f4-moved"])
    run(ops, main)
