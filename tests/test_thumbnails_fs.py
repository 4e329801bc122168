"""Thumbnails below FUSE: index rows and refcounts, and .sh_thumbnails in the Filesystem class."""

from __future__ import annotations

import errno
import hashlib
import io
import os

import pytest
import trio
from PIL import Image

from gffs.errors import FsError
from gffs.fs.sharedthumbs import VIRTUAL_BASE, thumbnail_name, uri_forms
from gffs.images.thumbnails import SIZE_NAMES
from gffs.index import ROOT_INO
from gffs.index.images import ImageIndex
from gffs.index.records import ChunkRecord, Location
from test_filesystem import RW, USER, Env

RO = os.O_RDONLY


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.fs.images.close()
    e.close()


def jpeg(seed: int, size=(600, 400)) -> bytes:
    im = Image.new("RGB", size, (seed % 256, 90, 200))
    im.paste((255, 0, 0), (0, 0, 60, 40))
    out = io.BytesIO()
    im.save(out, "JPEG", quality=85)
    return out.getvalue()


async def put(fs, parent: int, name: bytes, data: bytes) -> int:
    fh, ino, _ = fs.create(parent, name, 0o640, RW, USER)
    await fs.write(fh, 0, data)
    await fs.flush(fh)
    await fs.release(fh)
    return ino


async def analysed(fs, ino: int) -> None:
    with trio.fail_after(30):
        while True:
            with fs.index.read() as txn:
                if fs.images.images.facts_of(txn, ino) is not None:
                    return
            await trio.sleep(0.02)


async def read_all(fs, ino: int) -> bytes:
    fh = await fs.open(ino, RO)
    try:
        return await fs.read(fh, 0, 1 << 24)
    finally:
        await fs.release(fh)


def thumb_path(fs, d: int, name: bytes, size: str = "large") -> int:
    repo, _ = fs.lookup(d, b".sh_thumbnails")
    sd, _ = fs.lookup(repo, size.encode())
    ino, _ = fs.lookup(sd, thumbnail_name(name))
    return ino


def refcount(env, digest: bytes) -> int:
    with env.index.read() as txn:
        rec = env.cm.chunk(txn, digest)
    return rec.refcount if rec is not None else 0


# --------------------------------------------------------------------------- index rows

def test_rows_hold_one_reference_each_and_replacing_moves_it(env):
    images = ImageIndex(env.index)
    cid, other = b"c" * 32, b"d" * 32
    rec = ChunkRecord(0, 100, 100, 0, [Location("local", "")])
    a, b = hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest()
    with env.index.write() as txn:
        images.set_thumbnail(txn, cid, "large", a, rec, 256, 171, 100)
        images.set_thumbnail(txn, cid, "normal", a, rec, 128, 85, 100)
        images.set_thumbnail(txn, other, "large", a, rec, 256, 171, 100)
    assert refcount(env, a) == 3
    with env.index.write() as txn:
        images.set_thumbnail(txn, cid, "large", a, rec, 256, 171, 100)   # same chunk: no new ref
    assert refcount(env, a) == 3
    with env.index.write() as txn:
        images.set_thumbnail(txn, cid, "large", b, rec, 250, 170, 90)
    assert (refcount(env, a), refcount(env, b)) == (2, 1)
    with env.index.read() as txn:
        rows = images.thumbnails(txn, cid)
        raw = txn.get(cid + b"large", db=env.index.db["thumbnails"])
    assert sorted(rows) == ["large", "normal"]
    assert (rows["large"].digest, rows["large"].width, rows["large"].height,
            rows["large"].length) == (b, 250, 170, 90)
    assert raw[:32] == b  # the contract with fsck/gc: the value starts with the digest
    with env.index.write() as txn:
        images.set_thumbnail(txn, other, "large", b, rec, 1, 1, 90)
    assert (refcount(env, a), refcount(env, b)) == (1, 2)
    assert a not in env.garbage()
    with env.index.write() as txn:
        images.set_thumbnail(txn, cid, "normal", b, rec, 1, 1, 90)
    assert refcount(env, a) == 0 and a in env.garbage()   # last reference gone: garbage


# --------------------------------------------------------------------------- filesystem

def run_with_background(env, main):
    async def wrapper(fs):
        async with trio.open_nursery() as nursery:
            await nursery.start(fs.run_background)
            await main(fs)
            nursery.cancel_scope.cancel()
    env.run(wrapper)


def test_thumbnails_are_made_once_per_content_and_served_with_file_text(env):
    data = jpeg(1)

    async def main(fs):
        a, _ = fs.mkdir(ROOT_INO, b"a", 0o755, USER)
        b, _ = fs.mkdir(ROOT_INO, b"b", 0o755, USER)
        ino = await put(fs, a, b"IMG 1.jpg", data)
        await analysed(fs, ino)
        copy = await put(fs, b, b"copy.jpg", data)       # same bytes, other flow and name
        fs.link(ino, b, b"linked.jpg")
        loads = fs.stats["file_block_loads"]
        with fs.index.read() as txn:
            cid = fs.images.images.content_id(txn, ino)
            assert fs.images.images.content_id(txn, copy) == cid
            rows = fs.images.images.thumbnails(txn, cid)
            assert fs.images.images.queued(txn) == []     # the copy was not queued again
        assert sorted(rows) == sorted(SIZE_NAMES)
        # one stored source for the three sizes, one reference per row
        assert len({row.digest for row in rows.values()}) == 1
        assert refcount(env, rows["large"].digest) == 3
        seen = {}
        for d, name, file_ino in [(a, b"IMG 1.jpg", ino), (b, b"copy.jpg", copy),
                                  (b, b"linked.jpg", ino)]:
            t = thumb_path(fs, d, name)
            assert t >= VIRTUAL_BASE
            attr = fs.attr(t)
            png = await read_all(fs, t)
            assert attr.size == len(png) and attr.mode == 0o100440 and attr.nlink == 1
            im = Image.open(io.BytesIO(png))
            im.load()
            original = fs.attr(file_ino)
            assert im.size == (256, 171)
            assert im.text["Thumb::URI"] == uri_forms(name)[0].decode()
            assert im.text["Thumb::MTime"] == str(original.mtime_ns // 10**9)
            assert im.text["Thumb::Size"] == str(len(data))
            assert (attr.uid, attr.gid, attr.mtime_ns) == (original.uid, original.gid,
                                                           original.mtime_ns)
            seen[name] = png
        # the raw name's MD5 (what many tools hash) finds the same thumbnail
        repo, _ = fs.lookup(a, b".sh_thumbnails")
        sd, _ = fs.lookup(repo, b"large")
        raw, _ = fs.lookup(sd, hashlib.md5(b"IMG 1.jpg").hexdigest().encode() + b".png")
        png = await read_all(fs, raw)
        assert Image.open(io.BytesIO(png)).text["Thumb::URI"] == "IMG 1.jpg"
        assert fs.stats["file_block_loads"] == loads   # no original was read for any of it
        assert fs.stats["thumbnail_loads"] == 4
    run_with_background(env, main)


def test_listing_lookups_and_what_is_absent(env):
    async def main(fs):
        a, _ = fs.mkdir(ROOT_INO, b"a", 0o755, USER)
        img = await put(fs, a, b"x y.jpg", jpeg(2))
        await put(fs, a, b"notes.txt", b"hello\n")
        sub, _ = fs.mkdir(a, b"sub", 0o700, USER)
        await analysed(fs, img)
        assert [n for n, *_ in fs.readdir(a, 0)] == [b"x y.jpg", b"notes.txt", b"sub"]
        repo, rattr = fs.lookup(a, b".sh_thumbnails")
        assert rattr.mode == 0o40555 and rattr.nlink == 5
        assert [n for n, *_ in fs.readdir(repo, 0)] == [b"normal", b"large", b"x-large"]
        assert [n for n, *_ in fs.readdir(repo, 2)] == [b"x-large"]
        sd, _ = fs.lookup(repo, b"normal")
        listed = list(fs.readdir(sd, 0))
        names = [n for n, *_ in listed]
        # one entry per spelling of the name: URI-escaped and raw
        assert names == [hashlib.md5(b"x%20y.jpg").hexdigest().encode() + b".png",
                         hashlib.md5(b"x y.jpg").hexdigest().encode() + b".png"]
        assert [n for n, *_ in fs.readdir(sd, listed[0][3])] == names[1:]
        assert fs.lookup(sd, b"..")[0] == repo and fs.lookup(repo, b"..")[0] == a
        # a subdirectory has its own repository, with its directory's permission bits
        _, sattr = fs.lookup(sub, b".sh_thumbnails")
        assert sattr.mode == 0o40500
        for parent, name in [(sd, thumbnail_name(b"notes.txt")),   # not an image
                             (sd, b"0" * 32 + b".png"),              # no such name
                             (sd, b"nonsense"), (repo, b"xx-large"),
                             (ROOT_INO, b".sh_thumbnails")]:         # none at the top level
            with pytest.raises(FsError) as e:
                fs.lookup(parent, name)
            assert e.value.errno == errno.ENOENT, name
        # written but not analysed yet: absent, not computed on the request path
        fs.images.enabled = False
        await put(fs, a, b"late.jpg", jpeg(3))
        with pytest.raises(FsError) as e:
            fs.lookup(sd, thumbnail_name(b"late.jpg"))
        assert e.value.errno == errno.ENOENT
        # renames are seen at once (the name map is kept current)
        fs.rename(a, b"x y.jpg", a, b"renamed.jpg")
        with pytest.raises(FsError):
            fs.lookup(sd, names[0])
        assert fs.lookup(sd, thumbnail_name(b"renamed.jpg"))[0] >= VIRTUAL_BASE
        assert fs.getxattr(img, b"user.gf.thumbnail.large") == (
            b".sh_thumbnails/large/" + thumbnail_name(b"renamed.jpg"))
        assert b"user.gf.thumbnail.x-large" in fs.listxattr(img)
        with pytest.raises(FsError) as e:
            fs.setxattr(img, b"user.gf.thumbnail.large", b"x")
        assert e.value.errno == errno.EPERM
    run_with_background(env, main)


def test_every_change_inside_is_refused_with_eacces(env):
    async def main(fs):
        a, _ = fs.mkdir(ROOT_INO, b"a", 0o755, USER)
        img = await put(fs, a, b"p.jpg", jpeg(4))
        await analysed(fs, img)
        repo, _ = fs.lookup(a, b".sh_thumbnails")
        sd, _ = fs.lookup(repo, b"large")
        t = thumb_path(fs, a, b"p.jpg")
        tname = thumbnail_name(b"p.jpg")

        async def open_for_writing():
            await fs.open(t, os.O_WRONLY)

        async def truncate():
            await fs.setattr(t, size=0)

        async def chmod():
            await fs.setattr(repo, mode=0o777)

        refused = {
            "create": lambda: fs.create(sd, b"new.png", 0o644, RW, USER),
            "mkdir": lambda: fs.mkdir(repo, b"fail", 0o755, USER),
            "unlink": lambda: fs.unlink(sd, tname),
            "rmdir repo": lambda: fs.rmdir(a, b".sh_thumbnails"),
            "rmdir size": lambda: fs.rmdir(repo, b"large"),
            "rename out": lambda: fs.rename(sd, tname, a, b"stolen.png"),
            "rename in": lambda: fs.rename(a, b"p.jpg", sd, b"p.png"),
            "rename over": lambda: fs.rename(a, b"p.jpg", a, b".sh_thumbnails"),
            "rename repo": lambda: fs.rename(a, b".sh_thumbnails", a, b"thumbs"),
            "link in": lambda: fs.link(img, sd, b"l.png"),
            "link out": lambda: fs.link(t, a, b"l.png"),
            "symlink": lambda: fs.symlink(repo, b"s", b"x", USER),
            "setxattr": lambda: fs.setxattr(t, b"user.x", b"1"),
            "removexattr": lambda: fs.removexattr(t, b"user.x"),
        }
        for what, op in refused.items():
            with pytest.raises(FsError) as e:
                op()
            assert e.value.errno == errno.EACCES, what
        for what, op in [("open", open_for_writing), ("truncate", truncate), ("chmod", chmod)]:
            with pytest.raises(FsError) as e:
                await op()
            assert e.value.errno == errno.EACCES, what
        for op in [lambda: fs.mkdir(a, b".sh_thumbnails", 0o755, USER),
                   lambda: fs.create(a, b".sh_thumbnails", 0o644, RW, USER),
                   lambda: fs.link(img, a, b".sh_thumbnails")]:
            with pytest.raises(FsError) as e:
                op()
            assert e.value.errno == errno.EEXIST
        # the top level holds flows: a flow may be called .sh_thumbnails
        fs.mkdir(ROOT_INO, b".sh_thumbnails", 0o755, USER)
        with pytest.raises(FsError) as e:
            fs.getxattr(t, b"user.anything")
        assert e.value.errno == errno.ENODATA and fs.listxattr(t) == []
        assert fs.attr(t).size == len(await read_all(fs, t))   # still intact
    run_with_background(env, main)


def test_thumbnails_of_a_rewritten_file_follow_its_content(env):
    async def main(fs):
        a, _ = fs.mkdir(ROOT_INO, b"a", 0o755, USER)
        ino = await put(fs, a, b"p.jpg", jpeg(5, (600, 400)))
        await analysed(fs, ino)
        t = thumb_path(fs, a, b"p.jpg", "normal")
        assert Image.open(io.BytesIO(await read_all(fs, t))).size == (128, 85)
        fh = await fs.open(ino, RW | os.O_TRUNC)
        await fs.write(fh, 0, jpeg(6, (200, 400)))
        await fs.release(fh)
        await analysed(fs, ino)
        png = await read_all(fs, t)   # the kept inode now shows the new content
        assert Image.open(io.BytesIO(png)).size == (64, 128)
        assert fs.attr(t).size == len(png)
        # the old content's rows stay until gc (the lead's job) drops them
        with fs.index.read() as txn:
            n_rows = txn.stat(fs.index.db["thumbnails"])["entries"]
        assert n_rows == 6
    run_with_background(env, main)


def test_root_counters_are_read_only(env):
    async def main(fs):
        names = fs.listxattr(ROOT_INO)
        assert b"user.gf.stats.file_block_loads" in names
        assert fs.getxattr(ROOT_INO, b"user.gf.stats.file_block_loads") == b"0"
        with pytest.raises(FsError) as e:
            fs.getxattr(ROOT_INO, b"user.gf.stats.nothing")
        assert e.value.errno == errno.ENODATA
        with pytest.raises(FsError) as e:
            fs.setxattr(ROOT_INO, b"user.gf.stats.file_block_loads", b"5")
        assert e.value.errno == errno.EPERM
        a, _ = fs.mkdir(ROOT_INO, b"a", 0o755, USER)
        ino = await put(fs, a, b"x.bin", os.urandom(3 << 20))
        fs.chunks.cache.max_bytes = 0
        await read_all(fs, ino)
        assert int(fs.getxattr(ROOT_INO, b"user.gf.stats.file_block_loads")) >= 3
    env.run(main)
