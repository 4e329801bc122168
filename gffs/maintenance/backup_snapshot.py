"""Cutting a snapshot of the index into backup pieces, reusing the last backup's unchanged pieces.

The cut rule (backup_format.py) is content-defined: after a cut, the next piece
depends only on the records that follow. So if the next ``count`` records
serialize to exactly the bytes of a piece of the last backup (same SHA-256),
a full cut would produce that very piece again, without deciding a cut per
record. A small local cache (``<data_dir>/index.backup-pieces``: per table,
each piece's first key, record count, SHA-256, and whether the table's end
closed it) lets the snapshot check a whole piece at C speed (cursor iteration,
``b"".join``, one hashlib call) and fall back to the per-record cutter only
around changed records, until a cut lands on an old boundary again.

Every reused piece is verified against the records themselves, so a stale,
foreign or damaged cache only costs time: an incremental snapshot yields the
same pieces, byte for byte, as a full one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from gffs.index.env import DB_NAMES, LOGICAL_BYTES, N_CHUNKS, N_INODES, Index
from gffs.maintenance import backup_format as fmt

log = logging.getLogger("gffs.backup")

CACHE_FILE = "index.backup-pieces"   # under data_dir: the last snapshot's pieces
CACHE_FORMAT = 1
Emit = Callable[[str, bytes, str], None]        # (table, plaintext, sha256 hex)
Record = tuple[bytes, bytes]


@dataclass(slots=True)
class CachedPiece:
    """A piece of the last snapshot: enough to recognise it again without cutting."""

    first: bytes      # its first key
    count: int        # its records
    sha256: str
    at_end: bool      # closed by the table's end rather than by the cut rule

    def as_json(self) -> list:
        return [self.first.hex(), self.count, self.sha256, self.at_end]


def _rule() -> tuple[int, int]:
    """(target, max) piece sizes: a cache cut under another rule is not reusable."""
    return fmt.TARGET_PIECE, fmt.MAX_PIECE


def load_cache(path: Path) -> dict[str, list[CachedPiece]]:
    """The cached pieces per table; empty (a full cut) when missing, foreign or unreadable."""
    try:
        doc = json.loads(path.read_bytes())
        if doc.get("format") != CACHE_FORMAT or doc.get("rule") != list(_rule()):
            return {}
        return {t: [CachedPiece(bytes.fromhex(f), int(c), str(s), bool(e)) for f, c, s, e in ps]
                for t, ps in doc["tables"].items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning("index backup: ignoring the piece cache %s (%s): a full cut", path, exc)
        return {}


def save_cache(path: Path, tables: dict[str, list[CachedPiece]]) -> None:
    """Write the cache atomically (a torn one would only cost a full cut, but why pay)."""
    tmp = path.with_name(path.name + ".tmp")
    doc = {"format": CACHE_FORMAT, "rule": list(_rule()),
           "tables": {t: [p.as_json() for p in ps] for t, ps in tables.items()}}
    tmp.write_text(json.dumps(doc, separators=(",", ":")))
    os.replace(tmp, path)


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
        self.first = b""
        self.count = 0

    def feed(self, src: Iterable[Record]) -> int | None:
        """Take records from *src* until one closes a piece: how many it took, None if all."""
        buf, taken = self.buf, 0
        for key, value in src:
            if not buf:
                self.first = key
            buf += fmt.REC.pack(len(key), len(value))
            buf += key
            buf += value
            self.count += 1
            taken += 1
            if len(buf) >= self.max or (len(buf) >= self.min and fmt.ends_piece(
                    key, fmt.REC.size + len(key) + len(value), self.scale)):
                self.close(at_end=False)
                return taken
        return None

    def close(self, at_end: bool) -> None:
        if self.buf:
            plain = bytes(self.buf)
            sha = hashlib.sha256(plain).hexdigest()
            self.emit(self.table, plain, sha)
            self.out.append(CachedPiece(self.first, self.count, sha, at_end))
            self.buf.clear()
            self.count = 0


def cut_table(table: str, it: Iterator[Record], cached: list[CachedPiece], emit: Emit,
              out: list[CachedPiece]) -> tuple[int, int]:
    """Cut one table's records (key order) into pieces; (records, pieces reused)."""
    cutter = _Cutter(table, emit, out)
    pending: list[Record] = []          # records taken from *it* but not yet in a piece
    n = reused = ci = 0
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
            pending = pending[len(recs):] if len(pending) > len(recs) else []
            plain = serialize(recs) if len(recs) == old.count else b""
            if plain and hashlib.sha256(plain).hexdigest() == old.sha256:
                if old.at_end and not pending:
                    nxt = next(it, None)
                    if nxt is not None:
                        pending.append(nxt)
                if not old.at_end or not pending:
                    emit(table, plain, old.sha256)
                    out.append(old)
                    n += old.count
                    reused += 1
                    ci += 1
                    continue
            pending = recs + pending
        taken = cutter.feed(pending)
        if taken is None:               # no cut in what was pending: go on from the cursor
            n += len(pending)
            pending = []
            before = cutter.count
            taken = cutter.feed(it)
            if taken is None:
                n += cutter.count - before
                break
            n += taken
        else:
            n += taken
            pending = pending[taken:]
    cutter.close(at_end=True)
    return n, reused


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
            tables[table], r = cut_table(table, cur.iternext(), cached.get(table, []), emit, out)
            reused += r
        info = {"txnid": txn.id(), "tables": tables, "reused": reused,
                "summary": {"inodes": index.counter(txn, N_INODES),
                            "chunks": index.counter(txn, N_CHUNKS),
                            "logical_bytes": index.counter(txn, LOGICAL_BYTES)}}
    return info, pieces


def snapshot_copy(index: Index, workdir: Path, emit: Emit, cache: Path | None = None
                  ) -> dict[str, Any]:
    """:func:`snapshot` of a compact copy of *index*, so the live index is read only briefly.

    ``env.copy(compact=True)`` holds one read transaction only while it writes
    the copy to local disk; the pieces are then cut (and uploaded, however slowly
    a backend takes them) from the copy, so the live data.mdb does not grow under
    writes for the length of an upload. With *cache*, the last snapshot's pieces
    are reused where unchanged and the cache is rewritten after a complete cut.
    Blocking: one worker thread for the whole call. The copy is deleted afterwards.
    """
    if workdir.exists():
        shutil.rmtree(workdir)          # left by a backup that died
    workdir.mkdir(parents=True)
    try:
        txnid = index.env.info()["last_txnid"]      # the copy holds at least this state
        index.env.copy(str(workdir), compact=True)
        copy = Index(workdir, readonly=True)
        try:
            info, pieces = snapshot(copy, emit, load_cache(cache) if cache else {})
        finally:
            copy.close()
        if cache:
            save_cache(cache, pieces)
        return {**info, "txnid": txnid}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
