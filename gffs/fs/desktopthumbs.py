"""Thumbnails put into the viewing user's own cache while a directory is listed.

File managers other than Thunar never look at ``.sh_thumbnails``: they look in
``$XDG_CACHE_HOME/thumbnails/<size>/<md5 of the file URI>.png`` of the user
running them and, on a miss, read the whole original to make one. So when a
process lists a directory of a flow, each readdir reply is held back until
the thumbnails of the entries in it are in that process' user's cache: the
file manager learns of a file only after its thumbnail is there, and finds it
on its first look (no race, no original read). What is written:

- only for directories somebody lists, only entries whose content has stored
  thumbnails and which the viewer may read, only the sizes file managers use
  at their default zooms (:data:`SIZES`), skipping files already current
  (same ``Thumb::URI`` and ``Thumb::MTime``): nothing is written up front, a
  second listing writes nothing;
- URIs from the mount point and the directory's path *now*, so renames, hard
  links in several flows and remounts elsewhere each get their own entries, as
  the spec keys them;
- as the viewing user (see gffs.images.usercache), for viewers in a graphical
  session or whose thumbnail cache exists already (a root ``find`` on a server
  has neither), at most :data:`MAX_FILES_PER_MINUTE` files per user.

The work runs as a background task, in the listing's order, a few files at a
time (loaded and rendered concurrently, then written in one worker-thread call).
The reply waits for it while it makes progress: at most
:data:`BATCH_TIME_LIMIT` seconds for the next group (a slow or failing
backend ends the wait at once) and :data:`REPLY_TIME_LIMIT` in all (a starved
machine: a file manager finding no thumbnail reads every original, which costs
far more than the wait). Whatever was written by then stays, and the task goes
on writing the rest for file managers that look again (scrolling, a second
window) for up to :data:`BACKGROUND_TIME_LIMIT`. A failure costs the file
manager's own thumbnail, never the listing: errors are logged at debug level.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import trio

from gffs.chunks.store import ChunkStore
from gffs.fs.thumbpngs import ThumbnailPngs
from gffs.images import usercache
from gffs.images.thumbnails import with_file_text
from gffs.images.usercache import Viewer
from gffs.index import ROOT_INO, Index, Namespace
from gffs.index.images import ImageIndex, ThumbnailRow
from gffs.index.records import InodeRecord

log = logging.getLogger(__name__)

SIZES = ("normal", "large")       # Nautilus/GLib: large; PCManFM and Thunar: normal or large
MAX_FILES_PER_MINUTE = 6000       # per viewing uid: a tree walk cannot flood a home
MAX_NAME_SCAN = 100_000           # entries scanned to find a directory's name in its parent
BATCH_TIME_LIMIT = 5.0            # seconds a readdir reply waits for the next group (slow backend)
REPLY_TIME_LIMIT = 30.0           # seconds it waits in all while groups keep coming (starved machine)
BACKGROUND_TIME_LIMIT = 120.0     # seconds the rest of a listing's thumbnails may take after that
GROUP = 16                        # thumbnails loaded together and written in one thread call

Spawn = Callable[[Callable[[], Awaitable[None]]], bool]


@dataclass(slots=True)
class Listing:
    """What opendir learned about who lists (readdir carries no request context)."""

    ino: int
    pid: int
    uid: int
    gid: int
    viewer: Viewer | None = None
    checked: bool = False


class DesktopThumbnails:
    def __init__(self, index: Index, chunks: ChunkStore, mountpoint: str,
                 stats: dict[str, int], spawn: Spawn | None = None,
                 pngs: ThumbnailPngs | None = None) -> None:
        self.index = index
        self.spawn = spawn   # starts a background task; False when none can run
        self.ns = Namespace(index)
        self.images = ImageIndex(index)
        self.chunks = chunks
        self.pngs = pngs or ThumbnailPngs(chunks)
        self.mountpoint = os.fsencode(mountpoint)
        self.stats = stats
        self._budget: dict[int, tuple[float, int]] = {}   # uid -> (minute start, files written)
        self.enabled = bool(mountpoint)

    def _viewer(self, listing: Listing) -> Viewer | None:
        if not listing.checked:
            listing.checked = True
            v = usercache.viewer_of(listing.pid, listing.uid, listing.gid)
            if v is not None and (v.desktop or os.path.isdir(os.path.join(v.cache_dir, b"thumbnails"))):
                listing.viewer = v
        return listing.viewer

    def _allow(self, uid: int, n: int) -> int:
        now = time.monotonic()
        start, used = self._budget.get(uid, (now, 0))
        if now - start >= 60:
            start, used = now, 0
        n = max(0, min(n, MAX_FILES_PER_MINUTE - used))
        self._budget[uid] = (start, used + n)
        return n

    def _dir_path(self, txn, ino: int) -> bytes | None:
        """The directory's absolute path under the mount point (None if it cannot be named)."""
        parts: list[bytes] = []
        for _depth in range(256):
            if ino == ROOT_INO:
                return os.path.join(self.mountpoint, *reversed(parts)) if parts else self.mountpoint
            parent = self.ns.get(txn, ino).parent
            if not parent:
                return None
            for n, (_cookie, name, child) in enumerate(self.ns.entries(txn, parent)):
                if child == ino:
                    parts.append(name)
                    break
                if n >= MAX_NAME_SCAN:
                    return None
            else:
                return None
            ino = parent
        return None

    def watches(self, listing: Listing) -> bool:
        """Whether :meth:`listed` may do anything for this listing (it needs the records)."""
        return self.enabled and listing.ino != ROOT_INO and self._viewer(listing) is not None

    async def listed(self, listing: Listing, entries: list[tuple[bytes, int, InodeRecord]],
                     virtual_path: bytes | None = None) -> None:
        """A readdir reply with *entries* is about to go out: put their thumbnails in place first.

        *virtual_path*: the directory is no index directory but a ``.views`` one, at this
        path under the mount point (its entries are real files under other names: the
        viewer's cache is keyed by the URI it lists them under)."""
        if not self.enabled or listing.ino == ROOT_INO:
            return
        viewer = self._viewer(listing)     # once per listing; None for most listers
        if viewer is None:
            return
        files = [e for e in entries if stat.S_ISREG(e[2].mode)]
        if not files:
            return
        finished = trio.Event()
        groups = [0]      # groups written so far: the reply waits while this grows

        async def warm() -> None:
            try:
                with trio.move_on_after(BACKGROUND_TIME_LIMIT):
                    await self._warm(listing.ino, files, viewer, groups, virtual_path)
            except Exception:  # noqa: BLE001 - the listing matters more than a thumbnail
                log.debug("user thumbnail cache of uid %d not filled", viewer.uid, exc_info=True)
            finally:
                finished.set()

        if self.spawn is None or not self.spawn(warm):
            with trio.move_on_after(BATCH_TIME_LIMIT):
                await warm()
            return
        with trio.move_on_after(REPLY_TIME_LIMIT):
            seen = -1
            while not finished.is_set() and groups[0] != seen:
                seen = groups[0]
                with trio.move_on_after(BATCH_TIME_LIMIT):
                    await finished.wait()

    async def _warm(self, dir_ino: int, files: list[tuple[bytes, int, InodeRecord]],
                    viewer: Viewer, groups: list[int], virtual_path: bytes | None) -> None:
        wanted: list[tuple[str, bytes, str]] = []
        rows: list[ThumbnailRow] = []
        with self.index.read() as txn:
            dir_path = (os.path.join(self.mountpoint, virtual_path) if virtual_path is not None
                        else self._dir_path(txn, dir_ino))
            if dir_path is None:
                return
            for name, ino, rec in files:
                if not viewer.may_read(rec.mode, rec.uid, rec.gid):
                    continue
                cid = self.images.content_id(txn, ino)
                thumbs = self.images.thumbnails(txn, cid) if cid is not None else {}
                uri = usercache.file_uri(os.path.join(dir_path, name))
                mtime = usercache.mtime_text(rec.mtime_ns, viewer.whole_seconds)
                for size in SIZES:
                    if size in thumbs:
                        wanted.append((size, uri, mtime))
                        rows.append(thumbs[size])
        if not wanted:
            return
        for start in range(0, len(wanted), GROUP):
            await self._write_group(viewer, wanted[start:start + GROUP], rows[start:start + GROUP])
            groups[0] += 1

    async def _write_group(self, viewer: Viewer, wanted: list[tuple[str, bytes, str]],
                           rows: list[ThumbnailRow]) -> None:
        """Write the thumbnails of *wanted* the viewer's cache lacks (checked now: another
        listing may have written them meanwhile)."""
        todo = await trio.to_thread.run_sync(usercache.missing, viewer, wanted)
        todo = todo[:self._allow(viewer.uid, len(todo))]
        pngs: dict[int, bytes] = {}

        async def load(i: int) -> None:
            try:
                pngs[i] = await self.pngs.png(rows[i])
            except ValueError as exc:   # not a thumbnail: the file manager makes its own
                log.debug("thumbnail chunk %s: %s", rows[i].digest.hex()[:16], exc)

        async with trio.open_nursery() as nursery:
            for i in todo:
                nursery.start_soon(load, i)
        items = [(wanted[i][0], wanted[i][1], with_file_text(pngs[i], wanted[i][1], wanted[i][2]))
                 for i in todo if i in pngs]
        if items:
            self.stats["user_cache_writes"] += await trio.to_thread.run_sync(
                usercache.write, viewer, items)
