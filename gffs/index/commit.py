"""Group commit: the changes of many requests in one LMDB transaction, committed off the trio thread.

A dedicated writer thread begins the *group* write transaction and later
commits it (LMDB's writer mutex must be unlocked by the thread that locked it).
In between, the trio thread uses the open transaction: each ``index.write()``
is a nested child transaction (atomic per request: aborted on an exception,
merged on success) and ``index.read()`` reads the group (read-your-writes).

Before a child merges, its puts and deletes are appended to the journal
(:mod:`gffs.index.journal`), so a request's change survives kill -9 once it
returns, without an fdatasync. A group commits when someone needs durability
(fsync, unmount, :meth:`GroupCommit.durable`), every :data:`COMMIT_INTERVAL`
seconds, or when the journal grows past :data:`MAX_GROUP_BYTES`. The commit:

1. syncs the chunk files written so far (``sync_chunks``; index still open),
2. closes the gate FUSE requests wait at (:meth:`GroupCommit.available`) and
   syncs the chunks written meanwhile, again until no change merged during a
   sync (background code that did not wait at the gate),
3. writer thread: stores the last journal seq in ``meta``, commits (fdatasync),
   empties the journal, begins the next group; the trio thread blocks only if
   it touches the index during this step; then the gate opens.

So the index never becomes durable before the chunks it references. A commit
that fails (disk full, I/O error) loses nothing: the writer begins a new group,
re-applies the journal to it, and the next attempt (after a back-off) tries
again; callers of :meth:`durable` get the failure (an IndexFailure) meanwhile.
"""

from __future__ import annotations

import concurrent.futures
import errno
import logging
import os
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Awaitable, Callable, Iterator

import lmdb
import trio

from gffs.index.changes import Changes
from gffs.index.errors import IndexFailure, IndexFull, IndexUnwritable
from gffs.index.journal import DELETE, PUT, VOID, Journal, Op
from gffs.index.records import from_u64, u64

if TYPE_CHECKING:
    from gffs.index.env import Index

log = logging.getLogger(__name__)

COMMIT_INTERVAL = 1.0          # seconds: the power-loss window without fsync
MAX_GROUP_BYTES = 32 << 20     # journal bytes that make a group commit early
RETRY_BACKOFF = (0.5, 10.0)    # a failed commit is retried after 0.5 s, doubling to 10 s
JOURNAL_SEQ = b"journal_seq"   # meta key: last journal record contained in the committed index
MAIN_DB = 255                  # journal db number of LMDB's unnamed database


class WriteWatch:
    """A counter every put or delete in some tables moves: a cache of what those tables
    held (a directory listing) is stale once it differs from when the cache was filled.
    An aborted change moves it too (a needless refill, never a stale answer)."""

    __slots__ = ("dbnums", "version")

    def __init__(self, dbnums: frozenset[int]) -> None:
        self.dbnums = dbnums
        self.version = 0

    def note(self, dbnum: int) -> None:
        if dbnum in self.dbnums:
            self.version += 1


class RecordingTxn:
    """A child write transaction that remembers its puts and deletes for the journal.

    With *changes* (a write outside a group: no journal) it notes only the changed
    keys there, for incremental backups (gffs/index/changes.py), and passes any
    other transaction method through, marking the transaction *untracked*. In a
    group only put and delete exist (the journal could not redo anything else).
    """

    __slots__ = ("txn", "ops", "_dbnum", "changes", "untracked", "watch")

    def __init__(self, txn: lmdb.Transaction, dbnum: Callable[[object], int],
                 changes: Changes | None = None, watch: WriteWatch | None = None) -> None:
        self.txn = txn
        self.ops: list[Op] = []
        self._dbnum = dbnum
        self.changes = changes
        self.untracked = False
        self.watch = watch

    def put(self, key: bytes, value: bytes, *, db=None, overwrite: bool = True, **kw) -> bool:
        done = self.txn.put(key, value, db=db, overwrite=overwrite, **kw)
        if done:
            dbnum = self._dbnum(db)
            if self.watch is not None:
                self.watch.note(dbnum)
            if self.changes is not None:
                self.changes.add(dbnum, bytes(key))
            else:
                self.ops.append((PUT, dbnum, bytes(key), bytes(value)))
        return done

    def delete(self, key: bytes, value: bytes = b"", *, db=None) -> bool:
        done = self.txn.delete(key, value, db=db)
        if done:
            dbnum = self._dbnum(db)
            if self.watch is not None:
                self.watch.note(dbnum)
            if self.changes is not None:
                self.changes.add(dbnum, bytes(key))
            else:
                self.ops.append((DELETE, dbnum, bytes(key), bytes(value)))
        return done

    def __getattr__(self, name: str):
        """Outside a group, another transaction method (replace, pop, ...): not tracked
        (and, as it may change anything, it moves the watch)."""
        if self.changes is None or name.startswith("_"):
            raise AttributeError(name)
        self.untracked = True
        if self.watch is not None:
            self.watch.version += 1
        return getattr(self.txn, name)

    def get(self, key: bytes, default=None, *, db=None):
        return self.txn.get(key, default, db=db)

    def cursor(self, db=None) -> lmdb.Cursor:
        return self.txn.cursor(db=db)

    def stat(self, db) -> dict:
        return self.txn.stat(db)


class GroupView:
    """What ``index.read()`` yields on the trio thread: the innermost open transaction.

    It looks the transaction up on every call, so even a read block that awaits
    (and spans a commit) reads the current group, never a closed one.
    """

    __slots__ = ("_group",)

    def __init__(self, group: "GroupCommit") -> None:
        self._group = group

    def get(self, key: bytes, default=None, *, db=None):
        return self._group.top().get(key, default, db=db)

    def cursor(self, db=None) -> lmdb.Cursor:
        return self._group.top().cursor(db=db)

    def stat(self, db) -> dict:
        return self._group.top().stat(db)

    def __enter__(self) -> "GroupView":
        return self

    def __exit__(self, *exc) -> None:
        return None


def apply_ops(txn: lmdb.Transaction, ops: list[Op], dbs: dict[int, object]) -> None:
    """Redo one journal record in *txn*."""
    for kind, dbnum, key, value in ops:
        db = dbs.get(dbnum)
        if kind == PUT:
            txn.put(key, value, db=db)
        elif kind == DELETE:
            txn.delete(key, value, db=db)


def pending(journal: Journal, after: int) -> list[tuple[int, list[Op]]]:
    """Journal records past sequence *after*, without voided ones (child merges that failed)."""
    records = [(seq, ops) for seq, ops in journal.records() if seq > after]
    voided = {from_u64(ops[0][2]) for _, ops in records if ops and ops[0][0] == VOID}
    return [(seq, ops) for seq, ops in records
            if seq not in voided and not (ops and ops[0][0] == VOID)]


def replay(index: "Index", journal: Journal) -> int:
    """At open: redo the journal records the committed index lacks (after kill -9)."""
    with index.env.begin() as txn:
        raw = txn.get(JOURNAL_SEQ, db=index.db["meta"])
    done = from_u64(raw) if raw is not None else 0
    todo = pending(journal, done)
    if todo:
        # the dead daemon's chunk files may still be only in the page cache: the
        # index must not become durable before them
        os.sync()
        with index.env.begin(write=True) as txn:
            for _seq, ops in todo:
                apply_ops(txn, ops, index.dbs_by_number)
            txn.put(JOURNAL_SEQ, u64(todo[-1][0]), db=index.db["meta"])
        log.info("index: %d changes redone from the journal (daemon was killed)", len(todo))
    journal.reset()
    return len(todo)


class GroupCommit:
    """The open group transaction of one Index, its writer thread and commit loop."""

    def __init__(self, index: "Index", journal: Journal,
                 sync_chunks: Callable[[], Awaitable[None]]) -> None:
        self.index = index
        self.journal = journal
        self.sync_chunks = sync_chunks
        self.owner = threading.get_ident()       # the trio thread
        self._writer = concurrent.futures.ThreadPoolExecutor(1, "gffs-index-writer")
        self._open = threading.Event()           # set while the trio thread may use the group
        self._thawed = trio.Event()
        self._thawed.set()
        self._gate_closed = False                # a commit is syncing chunks or committing
        self._stack: list[lmdb.Transaction] = []
        self._records: list[RecordingTxn] = []
        self._group: lmdb.Transaction | None = None
        with self.index.env.begin() as txn:
            raw = txn.get(JOURNAL_SEQ, db=index.db["meta"])
        self.seq = self.durable_seq = from_u64(raw) if raw is not None else 0
        self.dirty = False
        self.changes = Changes()                 # keys the open group changed (backups)
        self.failure: IndexFailure | None = None
        self._wakeup = trio.Event()
        self._committing: trio.Event | None = None
        self._committed = trio.Event()           # set (and replaced) after each commit
        self._token = trio.lowlevel.current_trio_token()
        self._writer.submit(self._begin).result()
        self._open.set()

    # writer thread ------------------------------------------------------------
    def _begin(self) -> None:
        self._group = self.index.env.begin(write=True)
        self._stack = [self._group]

    def _commit_on_writer(self) -> None:
        """Commit the group (fdatasync), empty the journal, begin the next group, thaw."""
        try:
            group, self._group = self._group, None
            try:
                group.put(JOURNAL_SEQ, u64(self.seq), db=self.index.db["meta"])
                self.changes.add(self.index.dbnum(self.index.db["meta"]), JOURNAL_SEQ)
                self.index.changes.commit(group, self.changes, wrote=True)
            except BaseException:
                self._rebuild(group)     # still holds every change: self.changes stays
                raise
            self.changes = Changes()
            self.durable_seq = self.seq
            try:
                self.journal.reset()
            finally:
                self._begin()
        finally:
            self._open.set()   # here: a trio thread blocked in top() cannot set it

    def _rebuild(self, failed: lmdb.Transaction) -> None:
        """After a failed commit: a new group holding every journaled change again."""
        try:
            failed.abort()
        except lmdb.Error:
            pass
        self._begin()
        for _seq, ops in pending(self.journal, self.durable_seq):
            apply_ops(self._group, ops, self.index.dbs_by_number)

    # trio thread: transactions -----------------------------------------------
    def top(self) -> lmdb.Transaction:
        """The innermost open transaction; blocks the thread (briefly) while the writer
        commits it. Only code that did not await available() first gets here then."""
        if not self._open.is_set():
            log.debug("index access during a group commit: waiting for it")
            self._open.wait()
        return self._stack[-1]

    def view(self) -> GroupView:
        return GroupView(self)

    @contextmanager
    def child(self) -> Iterator[RecordingTxn]:
        """One request's atomic change: journaled and merged on success, dropped on error."""
        parent = self.top()
        txn = self.index.env.begin(write=True, parent=parent)
        rec = RecordingTxn(txn, self.index.dbnum, watch=self.index.listing_writes)
        self._stack.append(txn)
        self._records.append(rec)
        try:
            yield rec
        except BaseException:
            txn.abort()
            raise
        else:
            if len(self._records) > 1:      # nested: the outer child journals it all
                txn.commit()
                self._records[-2].ops += rec.ops
            elif rec.ops:
                self._journal_and_merge(txn, rec.ops)
            else:
                txn.abort()                 # read-only use of write(): nothing to keep
        finally:
            self._stack.pop()
            self._records.pop()

    def _journal_and_merge(self, txn: lmdb.Transaction, ops: list[Op]) -> None:
        seq = self.seq + 1
        try:
            self.journal.append(seq, ops)
        except OSError as exc:
            txn.abort()
            kind = IndexFull if exc.errno in (errno.ENOSPC, errno.EDQUOT) else IndexUnwritable
            raise kind(f"index journal: {exc.strerror or exc}") from exc
        self.seq = seq
        try:
            txn.commit()
        except BaseException:
            try:  # the record must not be redone after a crash
                self.journal.append(seq + 1, [(VOID, 0, u64(seq), b"")])
                self.seq = seq + 1
            except OSError:
                log.error("index journal: cannot void record %d", seq)
            raise
        self.dirty = True
        self.changes.add_ops(ops)
        if self.journal.bytes_pending > MAX_GROUP_BYTES:
            self._wakeup.set()

    # trio thread: committing -------------------------------------------------
    async def available(self) -> None:
        """Return when the index may be used (not during a commit's critical section)."""
        while self._gate_closed:
            await self._thawed.wait()

    async def durable(self) -> None:
        """Wait until every change made so far is committed to stable storage.

        At most one commit: one already running holds every change made before
        it froze the index (none can be made while it is frozen)."""
        target = self.seq
        while self.durable_seq < target:
            await self.commit()
            if self.failure is not None and self.durable_seq < target:
                raise type(self.failure)(str(self.failure))

    async def durable_soon(self) -> None:
        """Like :meth:`durable`, but on the group's own schedule: wait for the next
        periodic commit (within COMMIT_INTERVAL) instead of forcing one, so that
        background steps that only need durability *before* acting (deleting a
        staged copy) do not commit once each and close the gate on FUSE requests."""
        target = self.seq
        while self.durable_seq < target:
            await self._committed.wait()

    async def commit(self) -> None:
        """Commit the group now (chunk files first), unless one is running (wait for that)."""
        if self._committing is not None:
            await self._committing.wait()
            return
        if not self.dirty:
            return
        done = self._committing = trio.Event()
        try:
            with trio.CancelScope(shield=True):
                await self._commit_once()
        finally:
            self._committing = None
            done.set()
            committed, self._committed = self._committed, trio.Event()
            committed.set()

    async def _commit_once(self) -> None:
        try:
            await self.sync_chunks()              # most chunk files, index still in use
            self._gate_closed = True              # requests now wait in available()
            self._thawed = trio.Event()
            try:
                while True:                       # the few chunks written meanwhile
                    seq = self.seq
                    await self.sync_chunks()
                    if self.seq == seq:           # no change merged while it ran (an
                        break                     # ungated background writer): all synced
                # no checkpoint since the check: nothing can merge before the writer has it
                self._open.clear()
                await self._on_writer(self._commit_on_writer)
            finally:
                self._open.set()
                self._gate_closed = False
                self._thawed.set()
        except Exception as exc:
            self.failure = _as_index_failure(exc)
            log.error("index group commit failed (will retry): %s", self.failure)
            return
        self.failure = None
        self.dirty = self.seq != self.durable_seq

    async def _on_writer(self, fn: Callable[[], None]) -> None:
        future = self._writer.submit(fn)
        done = trio.Event()
        future.add_done_callback(lambda _f: self._token.run_sync_soon(done.set))
        await done.wait()
        future.result()

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Commit every COMMIT_INTERVAL (or when the group grows); back off after failures."""
        task_status.started()
        backoff = RETRY_BACKOFF[0]
        while True:
            with trio.move_on_after(COMMIT_INTERVAL if self.failure is None else backoff):
                await self._wakeup.wait()
            self._wakeup = trio.Event()
            await self.commit()
            backoff = RETRY_BACKOFF[0] if self.failure is None else min(backoff * 2,
                                                                        RETRY_BACKOFF[1])

    async def close(self) -> None:
        """Final commit (unmount); the journal is empty afterwards when it succeeded."""
        await self.commit()
        if self.failure is not None:
            log.error("index: final commit failed; the journal keeps the changes: %s",
                      self.failure)
        self._open.clear()

        def end() -> None:
            if self._group is not None:
                self._group.abort()
                self._group = None

        self._writer.submit(end).result()
        self._writer.shutdown()


def _as_index_failure(exc: BaseException) -> IndexFailure:
    if isinstance(exc, IndexFailure):
        return exc
    if isinstance(exc, (lmdb.MapFullError, lmdb.DiskError)) or "No space left" in str(exc):
        return IndexFull(f"index: {exc}")
    return IndexUnwritable(f"index: {exc}")
