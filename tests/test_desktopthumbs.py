"""Thumbnails into the lister's cache, below FUSE: a slow backend holds a readdir reply
at most BATCH_TIME_LIMIT, what was written by then stays, and the rest follows in the
background in listing order."""

from __future__ import annotations

import os

import trio

from gffs.fs import desktopthumbs
from gffs.fs.desktopthumbs import DesktopThumbnails, Listing
from gffs.images import usercache
from gffs.images.usercache import Viewer
from gffs.index import ROOT_INO
from test_filesystem import USER
from test_thumbnails_fs import analysed, env, jpeg, put, run_with_background  # noqa: F401

N_FILES = 3


def test_a_slow_backend_delays_the_reply_at_most_the_limit_and_the_rest_follows(env, tmp_path,
                                                                              monkeypatch):
    monkeypatch.setattr(desktopthumbs, "GROUP", 2)             # one file (two sizes) per group
    monkeypatch.setattr(desktopthumbs, "BATCH_TIME_LIMIT", 0.5)
    viewer = Viewer(os.getuid(), os.getgid(), frozenset(), os.fsencode(tmp_path / "cache"), True)

    def in_cache() -> list[bytes]:
        return sorted(name for name, ino, rec in entries
                      if all(usercache.is_current(
                          usercache.cache_file(viewer, size, uri(name)), uri(name),
                          usercache.mtime_text(rec.mtime_ns)) for size in desktopthumbs.SIZES))

    def uri(name: bytes) -> bytes:
        return usercache.file_uri(b"/mnt/g/flow/" + name)

    entries: list = []

    async def main(fs):
        flow, _ = fs.mkdir(ROOT_INO, b"flow", 0o755, USER)
        for i in range(N_FILES):
            await analysed(fs, await put(fs, flow, b"IMG_%d.jpg" % i, jpeg(i)))
        entries.extend((name, ino, rec) for name, ino, rec, _cookie, _ in fs.readdir(flow, 0))
        assert [e[0] for e in entries] == [b"IMG_%d.jpg" % i for i in range(N_FILES)]
        desk = DesktopThumbnails(fs.index, fs.chunks, "/mnt/g", fs.stats, fs.spawn)
        # the first file's thumbnails load at once; every later load waits for `release`
        release = trio.Event()
        with fs.index.read() as txn:
            cid = desk.images.content_id(txn, entries[0][1])
            first = {row.digest for row in desk.images.thumbnails(txn, cid).values()}
        real_load = fs.chunks.load

        async def slow_load(digest):
            if digest not in first:
                await release.wait()
            return await real_load(digest)

        fs.chunks.load = slow_load
        listing = Listing(flow, 0, viewer.uid, viewer.gid, viewer, True)
        await desk.listed(listing, entries)      # returns after the limit, loads still blocked
        assert in_cache() == [b"IMG_0.jpg"], "the reply waits for the slow backend, or lost the first"
        release.set()
        with trio.fail_after(60):
            while in_cache() != sorted(e[0] for e in entries):
                await trio.sleep(0.05)
        assert fs.stats["user_cache_writes"] == 2 * N_FILES

    run_with_background(env, main)


def test_the_reply_waits_past_the_group_limit_while_thumbnails_keep_coming(env, tmp_path,
                                                                         monkeypatch):
    """A starved machine: every group takes a while but arrives; the file manager must see
    them all (it reads every original for a thumbnail it does not find)."""
    monkeypatch.setattr(desktopthumbs, "GROUP", 2)
    monkeypatch.setattr(desktopthumbs, "BATCH_TIME_LIMIT", 5.0)
    viewer = Viewer(os.getuid(), os.getgid(), frozenset(), os.fsencode(tmp_path / "cache"), True)

    async def main(fs):
        flow, _ = fs.mkdir(ROOT_INO, b"flow", 0o755, USER)
        for i in range(N_FILES):
            await analysed(fs, await put(fs, flow, b"IMG_%d.jpg" % i, jpeg(i)))
        entries = [(name, ino, rec) for name, ino, rec, _cookie, _ in fs.readdir(flow, 0)]
        desk = DesktopThumbnails(fs.index, fs.chunks, "/mnt/g", fs.stats, fs.spawn)
        # file k's thumbnails load 3 s after file k-1's: 6 s in all, never 5 s without progress
        gates = {}
        with fs.index.read() as txn:
            for k, (_name, ino, _rec) in enumerate(entries):
                cid = desk.images.content_id(txn, ino)
                for row in desk.images.thumbnails(txn, cid).values():
                    gates[row.digest] = k
        opened = [trio.Event() for _ in entries]
        real_load = fs.chunks.load

        async def slow_load(digest):
            await opened[gates.get(digest, 0)].wait()
            return await real_load(digest)

        async def open_gates():
            for gate in opened:
                gate.set()
                await trio.sleep(3.0)

        fs.chunks.load = slow_load
        async with trio.open_nursery() as nursery:
            nursery.start_soon(open_gates)
            await desk.listed(Listing(flow, 0, viewer.uid, viewer.gid, viewer, True), entries)
            assert fs.stats["user_cache_writes"] == 2 * N_FILES, "the reply left before the last"

    run_with_background(env, main)


def test_a_views_listing_fills_the_cache_under_the_views_uris(env, tmp_path):
    """A file manager browsing .views/by-tag/alps looks thumbnails up by the URIs it lists
    there, not the flow's: without them it reads every original."""
    viewer = Viewer(os.getuid(), os.getgid(), frozenset(), os.fsencode(tmp_path / "cache"), True)

    async def main(fs):
        flow, _ = fs.mkdir(ROOT_INO, b"flow", 0o755, USER)
        for i in range(N_FILES):
            ino = await put(fs, flow, b"IMG_%d.jpg" % i, jpeg(i))
            fs.setxattr(ino, b"user.xdg.tags", b"alps")
            await analysed(fs, ino)
        views_ino, _ = fs.lookup(ROOT_INO, b".views")
        by_tag, _ = fs.lookup(views_ino, b"by-tag")
        alps, _ = fs.lookup(by_tag, b"alps")
        assert fs.view_dir_path(alps) == b".views/by-tag/alps"
        assert fs.view_dir_path(flow) is None
        entries = [(name, ino, rec) for name, ino, rec, _cookie, _ in fs.readdir(alps, 0)]
        assert len(entries) == N_FILES
        desk = DesktopThumbnails(fs.index, fs.chunks, "/mnt/g", fs.stats, fs.spawn)
        await desk.listed(Listing(alps, 0, viewer.uid, viewer.gid, viewer, True), entries,
                          fs.view_dir_path(alps))
        with trio.fail_after(60):
            while fs.stats["user_cache_writes"] < 2 * N_FILES:
                await trio.sleep(0.05)
        for name, _ino, rec in entries:
            uri = usercache.file_uri(b"/mnt/g/.views/by-tag/alps/" + name)
            for size in desktopthumbs.SIZES:
                assert usercache.is_current(usercache.cache_file(viewer, size, uri), uri,
                                            usercache.mtime_text(rec.mtime_ns)), (name, size)

    run_with_background(env, main)
