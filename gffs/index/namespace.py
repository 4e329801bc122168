"""Namespace tables: inodes, directory entries (with stable readdir cookies), xattrs, symlinks.

Every method takes the caller's transaction so the filesystem layer can combine
namespace and chunk changes atomically. Rules of POSIX live one layer up; this
module only keeps the tables consistent with each other.
"""

from __future__ import annotations

import itertools
import stat
import time
from typing import Iterator

import lmdb

from gffs.index.env import N_INODES, NEXT_COOKIE, NEXT_INO, Index
from gffs.index.errors import InvalidName, NameTooLong, NotASymlink, NotFound
from gffs.index.records import InodeRecord, from_u64, u64

ROOT_INO = 1
NAME_MAX = 255


def check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise NameTooLong(f"name is {len(name)} bytes, at most {NAME_MAX}")
    if not name or b"/" in name or name in (b".", b".."):
        raise InvalidName("invalid name")


class Namespace:
    """Typed access to the namespace databases of one Index."""

    def __init__(self, index: Index) -> None:
        self.index = index
        db = index.db
        self._inodes, self._dirents = db["inodes"], db["dirents"]
        self._cookies, self._xattrs = db["dircookies"], db["xattrs"]
        self._symlinks, self._orphans = db["symlinks"], db["orphans"]

    # inodes ---------------------------------------------------------------
    def ensure_root(self, uid: int, gid: int) -> None:
        with self.index.write() as txn:
            if txn.get(u64(ROOT_INO), db=self._inodes) is None:
                now = time.time_ns()
                rec = InodeRecord(stat.S_IFDIR | 0o755, uid, gid, 2, 0, now, now, now, 0, ROOT_INO)
                txn.put(u64(ROOT_INO), rec.pack(), db=self._inodes)
                self.index.add_counter(txn, N_INODES, 1)

    def get(self, txn: lmdb.Transaction, ino: int) -> InodeRecord:
        raw = txn.get(u64(ino), db=self._inodes)
        if raw is None:
            raise NotFound(f"inode {ino} does not exist")
        return InodeRecord.unpack(raw)

    def exists(self, txn: lmdb.Transaction, ino: int) -> bool:
        return txn.get(u64(ino), db=self._inodes) is not None

    def put(self, txn: lmdb.Transaction, ino: int, rec: InodeRecord) -> None:
        txn.put(u64(ino), rec.pack(), db=self._inodes)

    def new_inode(self, txn: lmdb.Transaction, rec: InodeRecord) -> int:
        ino = self.index.take_next(txn, NEXT_INO)
        self.put(txn, ino, rec)
        self.index.add_counter(txn, N_INODES, 1)
        return ino

    def delete_inode(self, txn: lmdb.Transaction, ino: int) -> None:
        """Remove an inode with its xattrs and symlink target (blocks: chunkmap's job)."""
        key = u64(ino)
        if txn.delete(key, db=self._inodes):
            self.index.add_counter(txn, N_INODES, -1)
        txn.delete(key, db=self._symlinks)
        txn.delete(key, db=self._orphans)
        for name in list(self.xattr_names(txn, ino)):
            txn.delete(key + name, db=self._xattrs)

    # directory entries ----------------------------------------------------
    def lookup(self, txn: lmdb.Transaction, parent: int, name: bytes) -> int | None:
        raw = txn.get(u64(parent) + name, db=self._dirents)
        return from_u64(raw[:8]) if raw is not None else None

    def add_entry(self, txn: lmdb.Transaction, parent: int, name: bytes, ino: int) -> None:
        cookie = self.index.take_next(txn, NEXT_COOKIE)
        txn.put(u64(parent) + name, u64(ino) + u64(cookie), db=self._dirents)
        txn.put(u64(parent) + u64(cookie), u64(ino) + name, db=self._cookies)

    def remove_entry(self, txn: lmdb.Transaction, parent: int, name: bytes) -> int:
        key = u64(parent) + name
        raw = txn.get(key, db=self._dirents)
        if raw is None:
            raise NotFound(f"no entry {name!r} in directory {parent}")
        txn.delete(key, db=self._dirents)
        txn.delete(u64(parent) + raw[8:16], db=self._cookies)
        return from_u64(raw[:8])

    def replace_entry(self, txn: lmdb.Transaction, parent: int, name: bytes, ino: int) -> None:
        """Point an existing entry at another inode, keeping its readdir position."""
        key = u64(parent) + name
        raw = txn.get(key, db=self._dirents)
        assert raw is not None
        txn.put(key, u64(ino) + raw[8:16], db=self._dirents)
        txn.put(u64(parent) + raw[8:16], u64(ino) + name, db=self._cookies)

    def entries(self, txn: lmdb.Transaction, parent: int,
                after_cookie: int = 0) -> Iterator[tuple[int, bytes, int]]:
        """(cookie, name, ino) in creation order, starting after *after_cookie*.

        Cookies never change while an entry exists, so offsets handed to the
        kernel stay valid while other entries come and go.
        """
        prefix = u64(parent)
        cur = txn.cursor(db=self._cookies)
        if not cur.set_range(prefix + u64(after_cookie + 1)):
            return
        for key, value in cur:
            if key[:8] != prefix:
                break
            yield from_u64(key[8:]), bytes(value[8:]), from_u64(value[:8])

    def listing(self, txn: lmdb.Transaction, parent: int, after_cookie: int = 0,
                count: int = 256) -> list[tuple[int, bytes, int, InodeRecord]]:
        """(cookie, name, ino, attributes) of up to *count* entries after *after_cookie*.

        What a readdir reply needs, read with two cursors (one over the directory's
        cookies, one ``getmulti`` over the inodes) rather than a lookup per entry."""
        found = list(itertools.islice(self.entries(txn, parent, after_cookie), count))
        keys = [u64(ino) for _, _, ino in found]
        rows = dict(txn.cursor(db=self._inodes).getmulti(keys))
        unpack = InodeRecord.unpack
        listed = []
        for (cookie, name, ino), key in zip(found, keys):
            raw = rows.get(key)
            if raw is None:
                raise NotFound(f"inode {ino} of entry {name!r} does not exist")
            listed.append((cookie, name, ino, unpack(raw)))
        return listed

    def is_empty_dir(self, txn: lmdb.Transaction, ino: int) -> bool:
        cur = txn.cursor(db=self._cookies)
        prefix = u64(ino)
        return not (cur.set_range(prefix) and cur.key()[:8] == prefix)

    # symlinks -------------------------------------------------------------
    def set_symlink(self, txn: lmdb.Transaction, ino: int, target: bytes) -> None:
        txn.put(u64(ino), target, db=self._symlinks)

    def symlink_target(self, txn: lmdb.Transaction, ino: int) -> bytes:
        raw = txn.get(u64(ino), db=self._symlinks)
        if raw is None:
            raise NotASymlink("not a symlink")
        return bytes(raw)

    # xattrs ---------------------------------------------------------------
    def get_xattr(self, txn: lmdb.Transaction, ino: int, name: bytes) -> bytes | None:
        raw = txn.get(u64(ino) + name, db=self._xattrs)
        return bytes(raw) if raw is not None else None

    def set_xattr(self, txn: lmdb.Transaction, ino: int, name: bytes, value: bytes) -> None:
        txn.put(u64(ino) + name, value, db=self._xattrs)

    def remove_xattr(self, txn: lmdb.Transaction, ino: int, name: bytes) -> bool:
        return txn.delete(u64(ino) + name, db=self._xattrs)

    def xattr_names(self, txn: lmdb.Transaction, ino: int) -> Iterator[bytes]:
        prefix = u64(ino)
        cur = txn.cursor(db=self._xattrs)
        if not cur.set_range(prefix):
            return
        for key in cur.iternext(keys=True, values=False):
            if key[:8] != prefix:
                break
            yield bytes(key[8:])

    # orphans (unlinked while open) -----------------------------------------
    def add_orphan(self, txn: lmdb.Transaction, ino: int) -> None:
        txn.put(u64(ino), b"", db=self._orphans)

    def orphans(self, txn: lmdb.Transaction) -> list[int]:
        return [from_u64(k) for k in txn.cursor(db=self._orphans).iternext(values=False)]
