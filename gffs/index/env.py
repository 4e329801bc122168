"""The LMDB environment: named databases, schema version, counters.

One environment holds everything so a single transaction can change the
namespace and the chunk table together (that is what makes crashes harmless).
"""

from __future__ import annotations

import errno
import json
import os
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import lmdb

from gffs.errors import ConfigError, FsError
from gffs.index.records import from_u64, u64

SCHEMA_VERSION = 1
DEFAULT_BLOCK_SIZE = 1 << 20
MAP_SIZE = 1 << 40  # virtual; the file grows only with use
LOW_SPACE = 16 << 20  # below this much free disk, a failed commit means "disk full"

DB_NAMES = ("meta", "inodes", "dirents", "dircookies", "xattrs", "symlinks",
            "blocks", "chunks", "garbage", "orphans", "repair", "contentids", "imagefacts",
            "imagequeue", "moves", "thumbnails", "inodeblocks")
# tables whose readers fall back when an older index lacks them (created by the
# first read-write open): a read-only open goes on without them
OPTIONAL_TABLES = frozenset({"inodeblocks"})

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


class Index:
    """Opened LMDB environment plus handles to its named databases."""

    def __init__(self, path: Path, *, readonly: bool = False,
                 block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        """Open (or create) the index; *block_size* applies only to a new store."""
        path.mkdir(parents=True, exist_ok=True)
        try:
            self.env = lmdb.open(str(path), map_size=MAP_SIZE, max_dbs=len(DB_NAMES) + 2,
                                 metasync=False, sync=True, readahead=False,
                                 readonly=readonly, lock=True)
        except lmdb.Error as exc:
            raise ConfigError(f"cannot open index at {path}: {exc}") from exc
        self.path = path
        self.readonly = readonly
        self.db = {name: self.env.open_db(name.encode(), create=not readonly)
                   for name in DB_NAMES} if not readonly else self._open_ro()
        self._init_meta(block_size)

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

    @contextmanager
    def write(self) -> Iterator[lmdb.Transaction]:
        """A write transaction; a full disk or full map becomes ENOSPC, nothing half-done."""
        try:
            with self.env.begin(write=True) as txn:
                yield txn
        except (lmdb.MapFullError, lmdb.DiskError) as exc:
            raise FsError(errno.ENOSPC, f"index: {exc}") from exc
        except lmdb.Error as exc:
            # LMDB reports a short write on a full disk as EIO: ask the disk
            if "No space left" in str(exc) or self._disk_nearly_full():
                raise FsError(errno.ENOSPC, f"index: disk full ({exc})") from exc
            raise FsError(errno.EIO, f"index: {exc}") from exc

    def _disk_nearly_full(self) -> bool:
        try:
            st = os.statvfs(self.path)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < LOW_SPACE

    def read(self) -> lmdb.Transaction:
        return self.env.begin(buffers=False)

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

    def close(self) -> None:
        self.env.close()
