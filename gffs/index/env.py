"""The LMDB environment: named databases, schema version, counters.

One environment holds everything so a single transaction can change the
namespace and the chunk table together (that is what makes crashes harmless).
"""

from __future__ import annotations

import json
import os
import time
import uuid
import threading
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Iterator

import lmdb
import trio

from gffs.errors import ConfigError
from gffs.index.changes import Changes, ChangeTracker
from gffs.index.commit import MAIN_DB, GroupCommit, GroupView, RecordingTxn, WriteWatch, replay
from gffs.index.errors import IndexFull, IndexUnwritable
from gffs.index.journal import Journal
from gffs.index.mapping import Releaser
from gffs.index.records import from_u64, u64

SCHEMA_VERSION = 1
DEFAULT_BLOCK_SIZE = 1 << 20
MAP_SIZE = 1 << 40  # virtual; the file grows only with use
JOURNAL_NAME = "journal"  # redo records of the open group (gffs/index/journal.py)
LOW_SPACE = 16 << 20  # below this much free disk, a failed commit means "disk full"

DB_NAMES = ("meta", "inodes", "dirents", "dircookies", "xattrs", "symlinks",
            "blocks", "chunks", "garbage", "orphans", "repair", "contentids", "imagefacts",
            "imagequeue", "moves", "thumbnails", "inodeblocks", "viewrows", "inoviews",
            "cidinodes")
# what a readdirplus entry shows comes from these: names, inodes, st_blocks (and, for
# an index older than inodeblocks, the block list)
LISTING_TABLES = frozenset({"inodes", "dirents", "dircookies", "inodeblocks", "blocks"})
# tables whose readers fall back when an older index lacks them (created by the
# first read-write open): a read-only open goes on without them
OPTIONAL_TABLES = frozenset({"inodeblocks", "viewrows", "inoviews", "cidinodes"})

# meta keys holding u64 counters
NEXT_INO = b"next_ino"
NEXT_COOKIE = b"next_cookie"
N_INODES = b"n_inodes"
LOGICAL_BYTES = b"logical_bytes"   # sum of chunk plaintext sizes (deduplicated)
STORED_BYTES = b"stored_bytes"     # sum of chunk stored sizes, one copy
N_CHUNKS = b"n_chunks"
# meta keys holding JSON
DRAINING = b"draining"                  # backends `gffs-admin backend drain` is emptying
REBALANCE_CURSOR = b"rebalance_cursor"  # hex digest a stopped rebalance continues after
COPY_CENSUS = b"copy_census"            # meta JSON: copies short/beyond as the last full plan counted


class Index:
    """Opened LMDB environment plus handles to its named databases."""

    def __init__(self, path: Path, *, readonly: bool = False,
                 block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        """Open (or create) the index; *block_size* applies only to a new store."""
        path.mkdir(parents=True, exist_ok=True)
        # readahead off: every scan in this process would otherwise map (and count in
        # its RSS) a readahead window around each page it faults; with readdir reading
        # in batches by cursor, a cold listing of 100,000 entries at 1M files took the
        # same time either way (1.08-1.15 s on, 1.17 s off) and the peak RSS was
        # 278 MB on against 176 MB off (bench_scale --reuse, one store, load 2-3)
        try:
            self.env = lmdb.open(str(path), map_size=MAP_SIZE, max_dbs=len(DB_NAMES) + 2,
                                 metasync=True, sync=True, readahead=False,
                                 readonly=readonly, lock=True)
        except lmdb.Error as exc:
            raise ConfigError(f"cannot open index at {path}: {exc}") from exc
        self.path = path
        self.readonly = readonly
        self.db = {name: self.env.open_db(name.encode(), create=not readonly)
                   for name in DB_NAMES} if not readonly else self._open_ro()
        self.dbs_by_number: dict[int, object] = {i: self.db[name] for i, name in enumerate(DB_NAMES)
                                                if name in self.db}  # optional tables may be absent (ro)
        self.dbs_by_number[MAIN_DB] = None
        self._dbnums = {id(h): i for i, h in self.dbs_by_number.items() if h is not None}
        # moves with every change of what a directory listing shows (gffs/fs/listings.py)
        self.listing_writes = WriteWatch(frozenset(
            i for i, name in enumerate(DB_NAMES) if name in LISTING_TABLES and name in self.db))
        self.group: GroupCommit | None = None
        self.journal: Journal | None = None
        self.changes = ChangeTracker(self.env)   # for incremental backups (changes.py)
        self._init_meta(block_size)
        if not readonly:
            try:
                self.journal = Journal(path / JOURNAL_NAME)
            except BlockingIOError:  # a running mount owns it: commit directly, like a reader
                self.journal = None
            else:
                replay(self, self.journal)

    def _open_ro(self) -> dict:
        dbs = {}
        for name in DB_NAMES:
            try:
                dbs[name] = self.env.open_db(name.encode(), create=False)
            except lmdb.NotFoundError:
                if name in OPTIONAL_TABLES:
                    continue
                if not dbs:
                    raise ConfigError(f"{self.path} holds no gffs index") from None
                raise ConfigError(f"index {self.path} lacks the {name!r} table of this gffs "
                                  "version: mount it once (read-write) to upgrade") from None
        return dbs

    def _init_meta(self, block_size: int) -> None:
        with self.env.begin() as txn:
            version = txn.get(b"schema", db=self.db["meta"])
        if version is None:
            if self.readonly:
                raise ConfigError(f"{self.path} holds no gffs index")
            with self.write() as txn:
                meta = self.db["meta"]
                txn.put(b"schema", u64(SCHEMA_VERSION), db=meta)
                txn.put(b"store_id", uuid.uuid4().hex.encode(), db=meta)
                txn.put(b"created_ns", u64(time.time_ns()), db=meta)
                txn.put(b"block_size", u64(block_size), db=meta)
                txn.put(NEXT_INO, u64(2), db=meta)  # 1 is the root
                txn.put(NEXT_COOKIE, u64(1), db=meta)
        elif from_u64(version) != SCHEMA_VERSION:
            raise ConfigError(f"index {self.path} has schema {from_u64(version)}, "
                              f"this gffs reads schema {SCHEMA_VERSION}")
        with self.env.begin() as txn:
            self.block_size = from_u64(txn.get(b"block_size", db=self.db["meta"]))
            self.store_id = txn.get(b"store_id", db=self.db["meta"]).decode()

    def dbnum(self, db) -> int:
        """The journal's number for a database handle."""
        return MAIN_DB if db is None else self._dbnums[id(db)]

    def _grouped_here(self) -> bool:
        """True on the thread that uses the open group (the trio thread of the mount)."""
        group = self.group
        if group is None:
            return False
        if threading.get_ident() == group.owner:
            return True
        return False

    @contextmanager
    def write(self) -> Iterator[RecordingTxn]:
        """A write transaction; a full disk or full map becomes ENOSPC, nothing half-done.

        With group commit running (a mount) this is a child of the open group on
        the trio thread: atomic, visible to later reads at once, kill -9 safe when
        the block ends, durable at the next group commit (:meth:`durable`).
        """
        if self.group is not None and not self._grouped_here():
            raise RuntimeError("index writes during group commit belong on the trio thread")
        try:
            if self.group is not None:
                with self.group.child() as txn:
                    yield txn
            else:
                yield from self._tracked_write()
        except (lmdb.MapFullError, lmdb.DiskError) as exc:
            raise IndexFull(f"index: {exc}") from exc
        except lmdb.Error as exc:
            # LMDB reports a short write on a full disk as EIO: ask the disk
            if "No space left" in str(exc) or self._disk_nearly_full():
                raise IndexFull(f"index: disk full ({exc})") from exc
            raise IndexUnwritable(f"index: {exc}") from exc

    def _tracked_write(self) -> Iterator[RecordingTxn]:
        """A write transaction outside a group whose changed keys the tracker learns."""
        txn = self.env.begin(write=True)
        rec = RecordingTxn(txn, self.dbnum, Changes(), self.listing_writes)
        try:
            yield rec
        except BaseException:
            txn.abort()
            raise
        self.changes.commit(txn, None if rec.untracked else rec.changes,
                            wrote=bool(rec.changes))

    def _disk_nearly_full(self) -> bool:
        try:
            st = os.statvfs(self.path)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < LOW_SPACE

    def read(self) -> lmdb.Transaction | GroupView:
        """A read transaction; on the trio thread of a mount, the open group (read-your-writes).

        Other threads (maintenance planning, backups) read the committed state.
        """
        if self._grouped_here():
            return self.group.view()
        return self.env.begin(buffers=False)

    def read_committed(self) -> lmdb.Transaction:
        """The committed (durable) state, on any thread: what a power loss would leave."""
        return self.env.begin(buffers=False)

    # group commit ------------------------------------------------------------------
    @asynccontextmanager
    async def grouped(self, sync_chunks: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
        """Run group commit (see gffs/index/commit.py) until the block ends, then commit."""
        if self.journal is None:
            raise RuntimeError(f"index {self.path} is in use by another process")
        group = GroupCommit(self, self.journal, sync_chunks)
        self.group = group
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(group.run)
                try:
                    yield
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            try:
                with trio.CancelScope(shield=True):
                    await group.close()
            finally:
                self.group = None

    async def available(self) -> None:
        """Wait while a group commit has the index (FUSE handlers call this first)."""
        if self.group is not None:
            await self.group.available()

    async def durable(self) -> None:
        """Every change made so far is on stable storage when this returns."""
        if self.group is not None:
            await self.group.durable()
        else:
            await trio.to_thread.run_sync(self.sync)

    async def durable_soon(self) -> None:
        """Every change made so far is on stable storage when this returns, made so
        by the next periodic group commit rather than one forced now (GroupCommit)."""
        if self.group is not None:
            await self.group.durable_soon()
        else:
            await trio.to_thread.run_sync(self.sync)

    # counters -----------------------------------------------------------
    def counter(self, txn: lmdb.Transaction, key: bytes) -> int:
        raw = txn.get(key, db=self.db["meta"])
        return from_u64(raw) if raw is not None else 0

    def add_counter(self, txn: lmdb.Transaction, key: bytes, delta: int) -> int:
        value = self.counter(txn, key) + delta
        txn.put(key, u64(max(value, 0)), db=self.db["meta"])
        return value

    def meta_json(self, txn: lmdb.Transaction, key: bytes, default=None):
        """A small JSON value in `meta` (maintenance state: drains, cursors)."""
        raw = txn.get(key, db=self.db["meta"])
        return json.loads(bytes(raw)) if raw is not None else default

    def set_meta_json(self, txn: lmdb.Transaction, key: bytes, value) -> None:
        if value is None:
            txn.delete(key, db=self.db["meta"])
        else:
            txn.put(key, json.dumps(value).encode(), db=self.db["meta"])

    def take_next(self, txn: lmdb.Transaction, key: bytes) -> int:
        """Allocate the next value of a monotonic sequence (inode numbers, cookies)."""
        value = self.counter(txn, key)
        txn.put(key, u64(value + 1), db=self.db["meta"])
        return value

    def sync(self) -> None:
        self.env.sync(True)

    def releaser(self, every: int = 4096) -> Releaser:
        """For a scan in the daemon: call it with the rows read; every *every* rows it drops
        the index pages this process mapped (mapping.py), so the scan cannot raise its
        peak RSS."""
        return Releaser(self.env, every)

    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()
            self.journal = None
        self.env.close()
