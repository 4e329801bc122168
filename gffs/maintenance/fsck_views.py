"""fsck of the ``.views`` tables against the facts and attributes they are derived from.

``viewrows``, ``inoviews`` and ``cidinodes`` (gffs/index/views.py) hold nothing of
their own: an inode's rows follow from its content id, that content's facts and its
tag / NFT attributes. So the check recomputes them (``ViewIndex.expected_rows``) inode
by inode, in inode order, and compares; memory stays at one inode's rows whatever the
store's size. Then it looks the other way: rows of inodes that should have none, rows
without their ``inoviews`` twin, ``cidinodes`` rows that disagree with ``contentids``.

--repair recomputes the rows of every inode found wrong (``ViewIndex.refresh``) and
drops the orphan rows, each in its own small transaction.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from gffs.index.env import Index
from gffs.index.records import from_u64, u64
from gffs.index.views import VIEW_XATTRS, ViewIndex
from gffs.maintenance.fsck_report import Finding, Report
from gffs.maintenance.fsck_worker import Ticker

CID_LEN = 32


@dataclass
class ViewScan:
    todo: list[tuple[Finding, str, tuple]] = field(default_factory=list)
    skipped: str = ""


class ViewCheck:
    def __init__(self, index: Index, report: Report) -> None:
        self.index = index
        self.report = report
        self.views = ViewIndex(index)
        self.db = index.db

    def rows(self) -> int:
        """Rows the scan visits (its progress total)."""
        if not self.views.enabled:
            return 0
        with self.index.read() as txn:
            return sum(txn.stat(self.db[n])["entries"]
                       for n in ("contentids", "xattrs", "inoviews", "viewrows", "cidinodes"))

    def scan(self, tick: Ticker) -> ViewScan:
        s = ViewScan()
        if not self.views.enabled:
            s.skipped = "the index has no .views tables (read-only, older index)"
            return s
        with self.index.read() as txn:
            if not self.views.built(txn):
                s.skipped = ".views tables not built yet: the next mount builds them"
                return s
            self._inode_rows(txn, s, tick)
            self._orphan_rows(txn, s, tick)
            self._content_inodes(txn, s, tick)
        return s

    def _add(self, s: ViewScan, kind: str, obj: str, detail: str, action: str, *args) -> None:
        s.todo.append((self.report.add(kind, obj, detail), action, args))

    def _candidates(self, txn, tick: Ticker):
        """Inodes that may have rows: those with a content id or a view attribute, sorted."""
        cids = (from_u64(k) for k, _ in txn.cursor(db=self.db["contentids"]))
        attrs = (from_u64(k[:8]) for k, _ in txn.cursor(db=self.db["xattrs"])
                 if bytes(k[8:]) in VIEW_XATTRS)
        last = None
        for ino in heapq.merge(cids, attrs):
            tick()
            if ino != last:
                last = ino
                yield ino

    def _inode_rows(self, txn, s: ViewScan, tick: Ticker) -> None:
        for ino in self._candidates(txn, tick):
            self.report.count("view inodes")
            want = self.views.expected_rows(txn, ino)
            have = self.views.rows_of(txn, ino)
            if have != want:
                self._add(s, "view_rows_wrong", f"inode {ino}", _difference(want, have),
                          "refresh", ino)
        # inodes with rows that should have none (their content id and attributes went)
        last = None
        for key, _ in txn.cursor(db=self.db["inoviews"]):
            tick()
            ino = from_u64(key[:8])
            if ino == last:
                continue
            last = ino
            if not self._candidate(txn, ino):
                self._add(s, "view_rows_wrong", f"inode {ino}",
                          "has .views rows but no facts or attributes that make any",
                          "refresh", ino)

    def _candidate(self, txn, ino: int) -> bool:
        key = u64(ino)
        return txn.get(key, db=self.db["contentids"]) is not None or any(
            txn.get(key + name, db=self.db["xattrs"]) is not None for name in VIEW_XATTRS)

    def _orphan_rows(self, txn, s: ViewScan, tick: Ticker) -> None:
        """A viewrows row without its inoviews twin: refresh would never remove it."""
        for key, _ in txn.cursor(db=self.db["viewrows"]):
            tick()
            key = bytes(key)
            path_key, ino = key[:-8], key[-8:]
            if txn.get(ino + path_key, db=self.db["inoviews"]) is None:
                self._add(s, "view_row_orphan", f"inode {from_u64(ino)}",
                          f"row in {_show(path_key)}",
                          "drop_row", key)

    def _content_inodes(self, txn, s: ViewScan, tick: Ticker) -> None:
        for key, cid in txn.cursor(db=self.db["contentids"]):
            tick()
            if txn.get(bytes(cid) + bytes(key), db=self.db["cidinodes"]) is None:
                self._add(s, "content_inode_wrong", f"inode {from_u64(key)}",
                          "its content id has no cidinodes row (facts would not reach it)",
                          "put_cid_inode", bytes(cid) + bytes(key))
        for key, _ in txn.cursor(db=self.db["cidinodes"]):
            tick()
            key = bytes(key)
            cid, ino = key[:CID_LEN], key[CID_LEN:]
            if txn.get(ino, db=self.db["contentids"]) != cid:
                self._add(s, "content_inode_wrong", f"inode {from_u64(ino)}",
                          "a cidinodes row names a content the inode does not hold",
                          "drop_cid_inode", key)

    def repair(self, s: ViewScan) -> None:
        for finding, action, args in s.todo:
            with self.index.write() as txn:
                finding.fixed = getattr(self, "_" + action)(txn, *args)

    def _refresh(self, txn, ino: int) -> bool:
        self.views.refresh(txn, ino)
        return True

    def _drop_row(self, txn, key: bytes) -> bool:
        txn.delete(key, db=self.db["viewrows"])
        return True

    def _put_cid_inode(self, txn, key: bytes) -> bool:
        if txn.get(key[CID_LEN:], db=self.db["contentids"]) != key[:CID_LEN]:
            return True     # the inode's content changed meanwhile: nothing to add
        txn.put(key, b"", db=self.db["cidinodes"])
        return True

    def _drop_cid_inode(self, txn, key: bytes) -> bool:
        if txn.get(key[CID_LEN:], db=self.db["contentids"]) != key[:CID_LEN]:
            txn.delete(key, db=self.db["cidinodes"])
        return True


def _show(path_key: bytes) -> str:
    """A view path key as the directory a user sees under .views."""
    return path_key.rstrip(b"\0").replace(b"\0", b"/").decode(errors="replace")


def _difference(want: dict[bytes, bytes], have: dict[bytes, bytes | None]) -> str:
    parts = []
    missing = [_show(k) for k in want if k not in have]
    extra = [_show(k) for k in have if k not in want]
    renamed = [_show(k) for k in want if k in have and have[k] != want[k]]
    if missing:
        parts.append("missing from " + ", ".join(missing))
    if extra:
        parts.append("wrongly in " + ", ".join(extra))
    if renamed:
        parts.append("wrong name or no row in " + ", ".join(renamed))
    return "; ".join(parts)
