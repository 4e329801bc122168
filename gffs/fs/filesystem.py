"""POSIX filesystem logic over the index and the chunk store, without FUSE.

Methods take plain values and raise FsError; the FUSE layer above only
translates. Namespace changes are one LMDB transaction each, run on the trio
thread; file data is buffered per inode and committed on flush/fsync.
"""

from __future__ import annotations

import logging

import trio

from gffs.chunks.service import GARBAGE_INTERVAL, REPAIR_INTERVAL, UNMOUNT_UPLOAD_WAIT
from gffs.errors import FsError
from gffs.fs.core import Caller, Handle
from gffs.fs.datapath import DataPath, MAX_DIRTY_PER_FILE, MAX_FILE_SIZE, READ_AHEAD_BLOCKS
from gffs.fs.errnos import index_errors_as_errno
from gffs.fs.namespace_ops import LISTED_MAX, RENAME_EXCHANGE, RENAME_NOREPLACE, NamespaceOps
from gffs.fs.statfs import statfs_figures
from gffs.fs.xattrs import STATS, STATS_PREFIX, XATTR_LIST_MAX, XATTR_NAME_MAX, XATTR_VALUE_MAX, XattrOps
from gffs.index.env import LOGICAL_BYTES, N_INODES, STORED_BYTES
from gffs.index.errors import IndexFailure

log = logging.getLogger("gffs.fs.filesystem")

__all__ = ["Caller", "Filesystem", "Handle", "GARBAGE_INTERVAL", "LISTED_MAX", "MAX_DIRTY_PER_FILE",
           "MAX_FILE_SIZE", "READ_AHEAD_BLOCKS", "RENAME_EXCHANGE", "RENAME_NOREPLACE", "REPAIR_INTERVAL",
           "STATS", "STATS_PREFIX", "UNMOUNT_UPLOAD_WAIT", "XATTR_LIST_MAX", "XATTR_NAME_MAX",
           "XATTR_VALUE_MAX"]


@index_errors_as_errno
class Filesystem(NamespaceOps, DataPath, XattrOps):
    """The facade the FUSE operations, the daemon and the tests call: lifecycle and statfs
    here; namespace operations, the data path and xattrs in their own modules."""

    # lifecycle -----------------------------------------------------------------
    async def start(self, uid: int = 0, gid: int = 0) -> None:
        """Create the root if new; finish what a crash interrupted (small queues only)."""
        if self.read_only:
            return
        self.ns.ensure_root(uid, gid)
        self._build_views()
        await self._finish_deletions()

    def _build_views(self) -> None:
        """A store from before .views gets its view index once (one pass over content ids
        and attributes, before the mount serves); later every change keeps it."""
        views = self.images.views
        with self.index.read() as txn:
            if not views.enabled or views.built(txn):
                return
        with self.index.write() as txn:
            n = views.rebuild(txn)
        if n:
            log.info(".views: indexed %d files of a store made before views", n)

    async def _finish_deletions(self) -> None:
        """Purge unlinked-while-open inodes and delete queued garbage chunks."""
        with self.index.read() as txn:
            orphans = self.ns.orphans(txn)
        for ino in orphans:
            self._purge(ino)
        # garbage is deleted only once its drop is durable (power loss falls back to that)
        await self.index.durable()
        await self.loops.collect_garbage()

    async def run_background(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Garbage deletion and periodic sync; runs until cancelled."""
        async with trio.open_nursery() as nursery:
            self.loops.start(nursery)   # garbage, repair, uploads (gffs/chunks/service.py)
            self._background = self.images.nursery = nursery
            self.images.wake()  # images queued before a restart
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._background = self.images.nursery = None

    def spawn(self, task) -> bool:
        """Run *task* (an async function without arguments) in the background nursery;
        False when the filesystem is not running one (then the caller does it itself)."""
        if self._background is None:
            return False
        self._background.start_soon(task)
        return True

    async def shutdown(self) -> None:
        """Flush every buffer and make everything durable (unmount)."""
        for ino in list(self.buffers):
            try:
                await self._flush(ino)
            except (FsError, IndexFailure) as exc:
                log.error("could not flush inode %d at unmount: %s", ino, exc)
        if not self.read_only:
            await self.loops.drain()
            await self._finish_deletions()
            await self.chunks.sync()
        self.images.close()
        await self.chunks.close()

    # statfs ----------------------------------------------------------------------------
    async def statfs(self) -> dict[str, int]:
        """Figures for df: see gffs/fs/statfs.py for what an unbounded store shows."""
        cap = await self.chunks.capacity()
        with self.index.read() as txn:
            n_inodes = self.index.counter(txn, N_INODES)
            logical = self.index.counter(txn, LOGICAL_BYTES)
            stored = self.index.counter(txn, STORED_BYTES)
        return statfs_figures(cap, stored=stored, logical=logical, n_inodes=n_inodes)
