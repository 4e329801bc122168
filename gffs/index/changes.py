"""Which index keys changed since the last backup took them: in memory, conservative.

An incremental index backup (gffs/maintenance/backup_snapshot.py) re-cuts only the
pieces whose key range holds a changed key and reuses the others without reading
them. That is only correct if no change is ever missed, so the rules err one way:

* Every write of this process goes through :meth:`ChangeTracker.commit`: the group
  commit (its keys gathered from the journal's ops) and ``Index.write`` outside a
  group (keys gathered by :class:`~gffs.index.commit.RecordingTxn`). A transaction
  that used another write method than put/delete marks everything.
* The tracker knows the id of the last transaction it saw committed. A commit by
  anyone else (another process, ``env.begin(write=True)`` directly: journal replay,
  restore, offline tools) makes the ids jump, and a jump marks everything.
* It starts as "everything" (a restart forgets), and a table past
  :data:`MAX_KEYS` keys counts as changed whole (memory stays bounded).

:meth:`ChangeTracker.take` hands the changes over together with a read transaction
begun under the same lock as commits: that transaction sees exactly the commits
whose keys were taken. A backup that fails gives them back (:meth:`give_back`).
"""

from __future__ import annotations

import threading
from typing import Callable, Iterable

import lmdb

from gffs.index.journal import DELETE, PUT, Op

MAX_KEYS = 200_000      # changed keys kept in all (about 20-40 MB); beyond, whole tables


class Changes:
    """Changed keys per table (journal db number), tables changed whole, or everything."""

    __slots__ = ("keys", "whole", "everything", "n")

    def __init__(self, everything: bool = False) -> None:
        self.keys: dict[int, set[bytes]] = {}
        self.whole: set[int] = set()
        self.everything = everything
        self.n = 0

    def add(self, dbnum: int, key: bytes) -> None:
        if self.everything or dbnum in self.whole:
            return
        keys = self.keys.get(dbnum)
        if keys is None:
            keys = self.keys[dbnum] = set()
        if key in keys:
            return
        keys.add(key)
        self.n += 1
        if self.n > MAX_KEYS:               # the biggest table becomes "changed whole"
            big = max(self.keys, key=lambda d: len(self.keys[d]))
            self.n -= len(self.keys.pop(big))
            self.whole.add(big)

    def add_ops(self, ops: Iterable[Op]) -> None:
        for kind, dbnum, key, _value in ops:
            if kind in (PUT, DELETE):
                self.add(dbnum, key)

    def merge(self, other: "Changes") -> None:
        if other.everything:
            self.everything = True
        if self.everything:
            self.keys.clear()
            self.whole.clear()
            self.n = 0
            return
        for dbnum in other.whole:
            self.whole.add(dbnum)
            self.n -= len(self.keys.pop(dbnum, ()))
        for dbnum, keys in other.keys.items():
            for key in keys:
                self.add(dbnum, key)

    def table(self, dbnum: int) -> list[bytes] | None:
        """The changed keys of one table in key order; None when it changed whole."""
        if self.everything or dbnum in self.whole:
            return None
        return sorted(self.keys.get(dbnum, ()))

    def __bool__(self) -> bool:
        return self.everything or bool(self.whole) or self.n > 0


class ChangeTracker:
    """The changes committed since the last :meth:`take`, for one LMDB environment."""

    def __init__(self, env: lmdb.Environment) -> None:
        self.lock = threading.Lock()
        self._env = env
        self._pending = Changes(everything=True)     # a new process knows nothing
        self._txnid: int = env.info()["last_txnid"]  # last commit known to be tracked

    def commit(self, txn: lmdb.Transaction, changes: Changes | None, wrote: bool) -> None:
        """Commit the write transaction *txn* and publish its *changes* (None: unknown).

        *wrote*: it put or deleted something, so LMDB gives the commit a new id.
        """
        with self.lock:
            txnid = txn.id()
            if txnid != self._txnid + 1:             # someone committed unseen meanwhile
                self._pending.everything = True
            txn.commit()
            self._pending.merge(changes if changes is not None else Changes(everything=True))
            if wrote or changes is None:
                self._txnid = txnid

    def take(self, begin: Callable[[], lmdb.Transaction]) -> tuple[Changes, lmdb.Transaction]:
        """The changes since the last take, and a read transaction that holds exactly them."""
        with self.lock:
            txn = begin()
            taken, self._pending = self._pending, Changes()
            if txn.id() != self._txnid:              # a commit the tracker did not see
                taken.everything = True
        return taken, txn

    def give_back(self, taken: Changes) -> None:
        """A backup that took *taken* failed: they count as changed again."""
        with self.lock:
            self._pending.merge(taken)

    def doubt(self) -> None:
        """Forget what is known: the next backup reads everything."""
        with self.lock:
            self._pending.everything = True

