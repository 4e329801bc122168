"""Cutting a snapshot of the index into backup pieces, reusing the last backup's unchanged pieces.

Two ways. :func:`snapshot_changes` (the usual one in a daemon) knows which keys
changed since the last cut (gffs/index/changes.py) and reuses every other piece
without reading it. :func:`snapshot_copy`, the full pass when the changes are not
known, recognises unchanged pieces by the fingerprint of their records:

The cut rule (backup_format.py) is content-defined: after a cut, the next piece
depends only on the records that follow. So if the next ``count`` records are
exactly those of a piece of the last backup, a full cut would produce that very
piece again, without deciding a cut per record. A small local cache
(``<data_dir>/index.backup-pieces``: per table, each piece's first key, record
count, SHA-256, size, a fingerprint of its records, and whether the table's end
closed it) lets the snapshot check a whole piece at C speed and fall back to the
per-record cutter only around changed records, until a cut lands on an old
boundary again.

The fingerprint is SHA-256 over the lengths of the piece's keys and values
(``array('I')``) then their concatenation: an injective encoding of the records,
built without Python bytecode per record and without the piece's headers, several
times cheaper than serializing the piece (benchmarks/bench_backup.py). The
plaintext of a reused piece is built only when some backend lacks it.

Every reused piece is checked against the records themselves and the cache file
carries its own checksum, so a stale, foreign or damaged cache only costs time:
an incremental snapshot yields the same pieces, byte for byte, as a full one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from array import array
from dataclasses import dataclass
from bisect import bisect_left, bisect_right
from itertools import chain, islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from gffs.index.changes import Changes
from gffs.index.env import DB_NAMES, LOGICAL_BYTES, N_CHUNKS, N_INODES, Index
from gffs.maintenance import backup_format as fmt

log = logging.getLogger("gffs.backup")

CACHE_FILE = "index.backup-pieces"   # under data_dir: the last snapshot's pieces
CACHE_FORMAT = 1
Emit = Callable[[str, str, int, Callable[[], bytes]], None]   # (table, sha256, size, plaintext)
Record = tuple[bytes, bytes]


@dataclass(slots=True)
class CachedPiece:
    """A piece of the last snapshot: enough to recognise it again without cutting."""

    first: bytes      # its first key
    count: int        # its records
    sha256: str       # of its plaintext: its name
    size: int         # plaintext bytes
    fingerprint: str  # of its records (see the module docstring)
    at_end: bool      # closed by the table's end rather than by the cut rule

    def as_json(self) -> list:
        return [self.first.hex(), self.count, self.sha256, self.size, self.fingerprint,
                self.at_end]


def _rule() -> tuple[int, int]:
    """(target, max) piece sizes: a cache cut under another rule is not reusable."""
    return fmt.TARGET_PIECE, fmt.MAX_PIECE


def load_cache(path: Path) -> dict[str, list[CachedPiece]]:
    """The cached pieces per table; empty (a full cut) when missing, foreign or unreadable."""
    try:
        doc = json.loads(path.read_bytes())
        if doc.get("format") != CACHE_FORMAT or doc.get("rule") != list(_rule()):
            return {}
        if doc.get("check") != _checksum(doc["tables"]):
            raise ValueError("checksum mismatch")
        return {t: [CachedPiece(bytes.fromhex(f), int(c), str(s), int(n), str(fp), bool(e))
                    for f, c, s, n, fp, e in ps]
                for t, ps in doc["tables"].items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning("index backup: ignoring the piece cache %s (%s): a full cut", path, exc)
        return {}


def save_cache(path: Path, tables: dict[str, list[CachedPiece]]) -> None:
    """Write the cache atomically (a torn one would only cost a full cut, but why pay)."""
    tmp = path.with_name(path.name + ".tmp")
    listed = {t: [p.as_json() for p in ps] for t, ps in tables.items()}
    doc = {"format": CACHE_FORMAT, "rule": list(_rule()), "check": _checksum(listed),
           "tables": listed}
    tmp.write_text(json.dumps(doc, separators=(",", ":")))
    os.replace(tmp, path)


def _checksum(tables: Any) -> str:
    return hashlib.sha256(json.dumps(tables, separators=(",", ":")).encode()).hexdigest()


def fingerprint(recs: list[Record]) -> str:
    """SHA-256 of the records' key and value lengths, then of their bytes: equal iff they are."""
    flat = list(chain.from_iterable(recs))
    h = hashlib.sha256(array("I", map(len, flat)).tobytes())
    h.update(b"".join(flat))
    return h.hexdigest()


def serialize(recs: list[Record]) -> bytes:
    """A piece's plaintext, built in C (no Python bytecode per record)."""
    if not recs:
        return b""
    keys, values = zip(*recs)
    heads = map(fmt.REC.pack, map(len, keys), map(len, values))
    return b"".join(chain.from_iterable(zip(heads, keys, values)))


class _Cutter:
    """The content-defined cut rule over one table's records, emitting each piece it closes."""

    def __init__(self, table: str, emit: Emit, out: list[CachedPiece]) -> None:
        target, self.max = _rule()
        self.min = target // 4
        self.scale = (1 << 64) // (target - self.min)
        self.table, self.emit, self.out = table, emit, out
        self.buf = bytearray()
        self.recs: list[Record] = []

    def feed(self, src: Iterable[Record]) -> int | None:
        """Take records from *src* until one closes a piece: how many it took, None if all."""
        buf, recs, taken = self.buf, self.recs, 0
        for rec in src:
            key, value = rec
            buf += fmt.REC.pack(len(key), len(value))
            buf += key
            buf += value
            recs.append(rec)
            taken += 1
            if len(buf) >= self.max or (len(buf) >= self.min and fmt.ends_piece(
                    key, fmt.REC.size + len(key) + len(value), self.scale)):
                self.close(at_end=False)
                return taken
        return None

    def close(self, at_end: bool) -> None:
        if self.recs:
            plain = bytes(self.buf)
            sha = hashlib.sha256(plain).hexdigest()
            self.emit(self.table, sha, len(plain), lambda: plain)
            self.out.append(CachedPiece(self.recs[0][0], len(self.recs), sha, len(plain),
                                        fingerprint(self.recs), at_end))
            self.buf.clear()
            self.recs = []


def _unchanged(old: CachedPiece, recs: list[Record], pending: list[Record],
               it: Iterator[Record]) -> bool:
    """Whether *recs* (taken after a cut) would be cut into exactly the piece *old* again."""
    if len(recs) != old.count or fingerprint(recs) != old.fingerprint:
        return False
    if old.at_end and not pending:      # the table must end here too
        nxt = next(it, None)
        if nxt is not None:
            pending.append(nxt)
    return not (old.at_end and pending)


def cut_table(table: str, it: Iterator[Record], cached: list[CachedPiece], emit: Emit,
              out: list[CachedPiece]) -> int:
    """Cut one table's records (key order) into *out*, reusing *cached*; pieces reused."""
    cutter = _Cutter(table, emit, out)
    pending: list[Record] = []          # records taken from *it* but not yet in a piece
    reused = ci = 0
    while True:                         # here a piece was just closed (or none begun)
        if not pending:
            head = next(it, None)
            if head is None:
                break
            pending.append(head)
        key = pending[0][0]
        while ci < len(cached) and cached[ci].first < key:
            ci += 1
        if ci < len(cached) and cached[ci].first == key:
            old = cached[ci]
            recs = pending[:old.count]
            recs += islice(it, old.count - len(recs))
            pending = pending[len(recs):]
            if _unchanged(old, recs, pending, it):
                emit(table, old.sha256, old.size, lambda recs=recs: serialize(recs))
                out.append(old)
                reused += 1
                ci += 1
                continue
            pending = recs + pending
        taken = cutter.feed(pending)
        if taken is not None:
            pending = pending[taken:]
            continue
        pending = []                    # no cut in what was pending: go on from the cursor
        if cutter.feed(it) is None:
            break
    cutter.close(at_end=True)
    return reused


def snapshot(index: Index, emit: Emit, cached: dict[str, list[CachedPiece]]
             ) -> tuple[dict[str, Any], dict[str, list[CachedPiece]]]:
    """Cut every table in one read transaction: (manifest info, the pieces for the next cache).

    Call it from one thread for its whole run (LMDB transactions are thread-bound).
    """
    pieces: dict[str, list[CachedPiece]] = {}
    tables: dict[str, int] = {}
    reused = 0
    with index.env.begin() as txn:
        for table in DB_NAMES:
            out = pieces[table] = []
            cur = txn.cursor(db=index.db[table])
            reused += cut_table(table, cur.iternext(), cached.get(table, []), emit, out)
            tables[table] = sum(p.count for p in out)
        info = {"txnid": txn.id(), "tables": tables, "reused": reused,
                "summary": {"inodes": index.counter(txn, N_INODES),
                            "chunks": index.counter(txn, N_CHUNKS),
                            "logical_bytes": index.counter(txn, LOGICAL_BYTES)}}
    return info, pieces


class StaleCache(Exception):
    """A reused piece read back differs from its cache entry: a change went untracked."""


def _reusable(cached: list[CachedPiece], firsts: list[bytes], changed: list[bytes]) -> list[bool]:
    """Per cached piece: whether no changed key falls in its key range, from its first key
    to the next piece's (the first piece's range starts at the table's start)."""
    clean = [True] * len(cached)
    for key in changed if cached else ():
        clean[max(bisect_right(firsts, key) - 1, 0)] = False
    return clean


def _recut(cutter: _Cutter, src: Iterator[Record], firsts: list[bytes], clean: list[bool]
           ) -> int:
    """Cut from *src* until a cut lands on the first key of a reusable piece: its index
    (len(firsts) when the table ended first)."""
    while True:
        if cutter.feed(src) is None:
            cutter.close(at_end=True)
            return len(firsts)
        while True:                     # just after a cut: an old boundary again?
            nxt = next(src, None)
            if nxt is None:
                return len(firsts)
            k = bisect_left(firsts, nxt[0])
            if k < len(firsts) and firsts[k] == nxt[0] and clean[k]:
                return k
            if cutter.feed((nxt,)) is None:
                break                   # nxt began a piece: go on from the cursor


def cut_changed_table(table: str, txn, db, cached: list[CachedPiece], changed: list[bytes],
                      emit: Emit, out: list[CachedPiece]) -> int:
    """Cut one table like :func:`cut_table` would, reading only around *changed* keys.

    Valid when *cached* is the cut of a state from which this one differs only in
    *changed* keys: a piece whose range holds none is the same piece again (the cut
    before it is unchanged by induction, and the cut rule depends only on the records
    after a cut), so it is reused without being read (unless a backend lacks it).
    Around a changed key the cut starts at the first key of the changed piece and
    runs until it lands on the first key of a reusable piece. Returns pieces reused.
    """
    firsts = [p.first for p in cached]
    clean = _reusable(cached, firsts, changed)
    reused = i = 0
    cur = txn.cursor(db=db)
    while i < len(cached):
        if clean[i]:
            old = cached[i]
            emit(table, old.sha256, old.size,
                 lambda old=old: _read_piece(txn, db, old))
            out.append(old)
            reused += 1
            i += 1
            continue
        if not (cur.set_range(firsts[i]) if i else cur.first()):
            return reused               # nothing left from here: the table ends before
        i = _recut(_Cutter(table, emit, out), cur.iternext(), firsts, clean)
    if not cached and cur.first():      # an empty table then: its new records
        _recut(_Cutter(table, emit, out), cur.iternext(), firsts, clean)
    return reused


def _read_piece(txn, db, old: CachedPiece) -> bytes:
    """A reused piece's plaintext, read from *txn* (a backend lacks it) and checked."""
    cur = txn.cursor(db=db)
    recs = list(islice(cur.iternext(), old.count)) if cur.set_key(old.first) else []
    plain = serialize(recs)
    if len(recs) != old.count or hashlib.sha256(plain).hexdigest() != old.sha256:
        raise StaleCache(f"index backup: piece {old.sha256[:12]} changed untracked")
    return plain


def snapshot_changes(index: Index, txn, changes: Changes,
                     cached: dict[str, list[CachedPiece]], emit: Emit
                     ) -> tuple[dict[str, Any], dict[str, list[CachedPiece]]]:
    """:func:`snapshot` of *txn* given the last cut (*cached*) and what changed since
    (*changes*, no table changed whole): work in proportion to the change.

    *txn* is the read transaction :meth:`ChangeTracker.take` began with *changes*;
    it is aborted here, before the caller uploads anything. Same thread throughout.
    """
    pieces: dict[str, list[CachedPiece]] = {}
    tables: dict[str, int] = {}
    reused = 0
    t0 = time.monotonic()
    try:
        for table in DB_NAMES:
            out = pieces[table] = []
            db = index.db[table]
            changed = changes.table(index.dbnum(db))
            if changed is None:
                raise ValueError(f"table {table} changed whole: a full cut is needed")
            reused += cut_changed_table(table, txn, db, cached.get(table, []), changed,
                                        emit, out)
            tables[table] = sum(p.count for p in out)
        info = {"txnid": txn.id(), "tables": tables, "reused": reused,
                "summary": {"inodes": index.counter(txn, N_INODES),
                            "chunks": index.counter(txn, N_CHUNKS),
                            "logical_bytes": index.counter(txn, LOGICAL_BYTES)}}
    finally:
        txn.abort()
    info["read_s"] = time.monotonic() - t0
    return info, pieces


def _prefetch(path: Path) -> None:
    """Ask the kernel to read the copy ahead in one sweep: LMDB may write it with O_DIRECT
    (not in the page cache), so the cut would otherwise fault it in as it goes, a
    kernel read-around at a time (a first read of a fresh copy, then mapped with
    readahead off, measured about 3x slower than a second one)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(fd)


def snapshot_copy(index: Index, workdir: Path, emit: Emit, cache: Path | None = None
                  ) -> tuple[dict[str, Any], dict[str, list[CachedPiece]]]:
    """:func:`snapshot` of a compact copy of *index*, so the live index is read only briefly.

    The full pass (the first backup of a process, or when the changes are not
    known): ``env.copy(compact=True)`` holds one read transaction only while it
    writes the copy to local disk; the pieces are then cut (and uploaded, however
    slowly a backend takes them) from the copy, so the live data.mdb does not grow
    under writes for the length of an upload. With *cache*, the last snapshot's
    pieces are reused where their records' fingerprints match and the cache is
    rewritten after a complete cut. Blocking: one worker thread for the whole call.
    The copy is deleted afterwards. Returns (manifest info, the pieces cut).
    """
    if workdir.exists():
        shutil.rmtree(workdir)          # left by a backup that died
    workdir.mkdir(parents=True)
    try:
        txnid = index.env.info()["last_txnid"]      # the copy holds at least this state
        t0 = time.monotonic()
        index.env.copy(str(workdir), compact=True)
        read_s = time.monotonic() - t0
        _prefetch(workdir / "data.mdb")
        copy = Index(workdir, readonly=True)
        try:
            info, pieces = snapshot(copy, emit, load_cache(cache) if cache else {})
        finally:
            copy.close()
        if cache:
            save_cache(cache, pieces)
        return {**info, "txnid": txnid, "read_s": read_s}, pieces
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
