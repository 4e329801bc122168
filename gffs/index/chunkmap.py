"""File -> block list, and the chunk table with refcounts (dedup lives here).

A block is a fixed-size slice of a file named by the SHA-256 of its plaintext.
A chunk row exists while at least one block references it; when the last
reference goes, the row moves to `garbage` (with its locations) so the bytes
can be deleted from the backends after the commit — or resurrected if the same
content is written again before that.
"""

from __future__ import annotations

import json
import struct
import time
from typing import Iterator

import lmdb

from gffs.index.env import LOGICAL_BYTES, N_CHUNKS, STORED_BYTES, Index
from gffs.index.records import ChunkRecord, Location, from_u64, u64

_GARBAGE_HDR = struct.Struct(">Q")
_INODE_BLOCKS = struct.Struct(">QQ")  # stored blocks of one inode, their stored bytes
_BACKEND_COUNT = struct.Struct(">QQ")   # copies (chunks) held, stored bytes of those copies
BACKEND_PREFIX = b"backend:"           # meta key prefix of the per-backend counters
BACKEND_COUNTS = b"backend_counts"     # meta marker: the per-backend counters are kept


class ChunkMap:
    """Typed access to `blocks`, `chunks` and `garbage` of one Index."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self._blocks = index.db["blocks"]
        self._chunks = index.db["chunks"]
        self._garbage = index.db["garbage"]
        self._repair = index.db["repair"]
        self._moves = index.db["moves"]
        self._inode_blocks = index.db.get("inodeblocks")   # None: older index, read-only

    # file blocks ----------------------------------------------------------
    def block(self, txn: lmdb.Transaction, ino: int, idx: int) -> bytes | None:
        raw = txn.get(u64(ino) + u64(idx), db=self._blocks)
        return bytes(raw) if raw is not None else None

    def blocks(self, txn: lmdb.Transaction, ino: int, start: int = 0) -> Iterator[tuple[int, bytes]]:
        prefix = u64(ino)
        cur = txn.cursor(db=self._blocks)
        if not cur.set_range(prefix + u64(start)):
            return
        for key, value in cur:
            if key[:8] != prefix:
                break
            yield from_u64(key[8:]), bytes(value)

    def set_block(self, txn: lmdb.Transaction, ino: int, idx: int, digest: bytes | None,
                  new_chunk: ChunkRecord | None = None) -> None:
        """Point block *idx* of *ino* at *digest* (None: make it a hole).

        *new_chunk* describes the chunk in case the table does not know it yet.
        """
        key = u64(ino) + u64(idx)
        old = txn.get(key, db=self._blocks)
        old = bytes(old) if old is not None else None
        if old == digest:
            return
        count, stored = self.stored_blocks(txn, ino)
        if digest is not None:
            rec = self.ref(txn, digest, new_chunk)
            txn.put(key, digest, db=self._blocks)
            count, stored = count + 1, stored + min(rec.stored_size, rec.size)
        else:
            txn.delete(key, db=self._blocks)
        if old is not None:
            count, stored = count - 1, stored - self._stored_size(txn, old)
            self.unref(txn, old)
        self._put_stored_blocks(txn, ino, count, stored)

    def drop_blocks(self, txn: lmdb.Transaction, ino: int, start: int = 0) -> None:
        """Remove blocks >= *start* of a file (truncate, or delete the file)."""
        dropped = list(self.blocks(txn, ino, start))
        if not dropped and start:   # a close of a file that did not shrink: nothing to write
            return
        count, stored = self.stored_blocks(txn, ino)
        for idx, digest in dropped:
            txn.delete(u64(ino) + u64(idx), db=self._blocks)
            count, stored = count - 1, stored - self._stored_size(txn, digest)
            self.unref(txn, digest)
        self._put_stored_blocks(txn, ino, count, stored)

    # stored blocks per inode (st_blocks) ------------------------------------------
    # `inodeblocks` keeps, per inode, how many blocks it has stored and their stored
    # (compressed) bytes, so stat is one key read. An inode without a row has no
    # blocks - or comes from an index older than the table: then its blocks are
    # counted by a range read of the file's block list until its next write.
    def stored_blocks(self, txn: lmdb.Transaction, ino: int) -> tuple[int, int]:
        """(number of stored blocks, their stored bytes) of *ino*; holes count nothing."""
        raw = (txn.get(u64(ino), db=self._inode_blocks)
               if self._inode_blocks is not None else None)
        if raw is not None:
            return _INODE_BLOCKS.unpack(raw)
        count = stored = 0
        for _idx, digest in self.blocks(txn, ino):
            count, stored = count + 1, stored + self._stored_size(txn, digest)
        return count, stored

    def stored_bytes_of(self, txn: lmdb.Transaction, inos: list[int]) -> list[int]:
        """Stored bytes of each of *inos* (a directory listing's st_blocks), one cursor."""
        keys = [u64(i) for i in inos]
        rows = (dict(txn.cursor(db=self._inode_blocks).getmulti(keys))
                if self._inode_blocks is not None else {})
        out = []
        for ino, key in zip(inos, keys):
            raw = rows.get(key)
            out.append(_INODE_BLOCKS.unpack(raw)[1] if raw is not None
                       else self.stored_blocks(txn, ino)[1])
        return out

    def _put_stored_blocks(self, txn: lmdb.Transaction, ino: int, count: int,
                           stored: int) -> None:
        if count <= 0:
            txn.delete(u64(ino), db=self._inode_blocks)
        else:
            txn.put(u64(ino), _INODE_BLOCKS.pack(count, max(stored, 0)), db=self._inode_blocks)

    def _stored_size(self, txn: lmdb.Transaction, digest: bytes) -> int:
        """What one block costs: its stored bytes, never more than its plaintext (the
        codec byte of an incompressible block is not the file's business)."""
        rec = self.known(txn, digest)
        return min(rec.stored_size, rec.size) if rec is not None else 0

    # chunks ---------------------------------------------------------------
    def chunk(self, txn: lmdb.Transaction, digest: bytes) -> ChunkRecord | None:
        raw = txn.get(digest, db=self._chunks)
        return ChunkRecord.unpack(raw) if raw is not None else None

    def known(self, txn: lmdb.Transaction, digest: bytes) -> ChunkRecord | None:
        """The chunk's record if its bytes are stored (live or still in garbage)."""
        rec = self.chunk(txn, digest)
        if rec is None:
            raw = txn.get(digest, db=self._garbage)
            if raw is not None:
                rec = ChunkRecord.unpack(raw[_GARBAGE_HDR.size:])
        return rec

    def ref(self, txn: lmdb.Transaction, digest: bytes,
            new_chunk: ChunkRecord | None) -> ChunkRecord:
        """One more reference on *digest*; its record as now stored."""
        rec = self.chunk(txn, digest)
        if rec is None:
            raw = txn.get(digest, db=self._garbage)
            if raw is not None:  # written again before its deletion: resurrect
                rec = ChunkRecord.unpack(raw[_GARBAGE_HDR.size:])
                txn.delete(digest, db=self._garbage)
            elif new_chunk is not None:
                rec = ChunkRecord(0, new_chunk.size, new_chunk.stored_size, new_chunk.codec,
                                  list(new_chunk.locations))
            else:
                raise KeyError(f"chunk {digest.hex()} is unknown and no record was given")
            rec.refcount = 0
            self.index.add_counter(txn, N_CHUNKS, 1)
            self.index.add_counter(txn, LOGICAL_BYTES, rec.size)
            self.index.add_counter(txn, STORED_BYTES, rec.stored_size)
            self._count_copies(txn, rec.locations, rec.stored_size, 1)
        elif new_chunk is not None:
            # two writers stored the same bytes at once (maybe under different
            # policies): keep every copy on record rather than leak the loser's
            have = {loc.backend for loc in rec.locations}
            extra = [loc for loc in new_chunk.locations if loc.backend not in have]
            rec.locations += extra
            self._count_copies(txn, extra, rec.stored_size, 1)
        rec.refcount += 1
        txn.put(digest, rec.pack(), db=self._chunks)
        return rec

    def unref(self, txn: lmdb.Transaction, digest: bytes) -> None:
        rec = self.chunk(txn, digest)
        if rec is None:
            return
        rec.refcount -= 1
        if rec.refcount > 0:
            txn.put(digest, rec.pack(), db=self._chunks)
            return
        txn.delete(digest, db=self._chunks)
        txn.delete(digest, db=self._repair)
        rec.refcount = 0
        txn.put(digest, _GARBAGE_HDR.pack(time.time_ns()) + rec.pack(), db=self._garbage)
        self.index.add_counter(txn, N_CHUNKS, -1)
        self.index.add_counter(txn, LOGICAL_BYTES, -rec.size)
        self.index.add_counter(txn, STORED_BYTES, -rec.stored_size)
        self._count_copies(txn, rec.locations, rec.stored_size, -1)

    def add_location(self, txn: lmdb.Transaction, digest: bytes, loc: Location) -> None:
        rec = self.chunk(txn, digest)
        if rec is not None and loc not in rec.locations:
            self._count_copies(txn, [loc], rec.stored_size, 1)
            rec.locations.append(loc)
            txn.put(digest, rec.pack(), db=self._chunks)

    def set_locations(self, txn: lmdb.Transaction, digest: bytes, locations: list[Location]) -> None:
        rec = self.chunk(txn, digest)
        if rec is not None:
            self._count_copies(txn, rec.locations, rec.stored_size, -1)
            self._count_copies(txn, locations, rec.stored_size, 1)
            rec.locations = list(locations)
            txn.put(digest, rec.pack(), db=self._chunks)

    # per-backend counters (status reads them instead of scanning the table) -----------
    # meta "backend:<name>" = (copies, stored bytes) of the live chunks recorded there,
    # changed in the transaction that changes a live chunk's locations. A store made
    # before them has no BACKEND_COUNTS marker: ensure_backend_counts() counts once.
    def _count_copies(self, txn: lmdb.Transaction, locations: list[Location], stored: int,
                      sign: int) -> None:
        for name in {loc.backend for loc in locations}:
            self.add_backend_count(txn, name, sign, sign * stored)

    def add_backend_count(self, txn: lmdb.Transaction, name: str, chunks: int,
                          nbytes: int) -> None:
        key = BACKEND_PREFIX + name.encode()
        raw = txn.get(key, db=self.index.db["meta"])
        have = _BACKEND_COUNT.unpack(raw) if raw is not None else (0, 0)
        new = (max(have[0] + chunks, 0), max(have[1] + nbytes, 0))
        if new == (0, 0):
            txn.delete(key, db=self.index.db["meta"])
        else:
            txn.put(key, _BACKEND_COUNT.pack(*new), db=self.index.db["meta"])

    def backend_counts(self, txn: lmdb.Transaction) -> dict[str, dict[str, int]] | None:
        """{backend: {chunks, bytes}} from the counters; None if this store has none yet."""
        meta = self.index.db["meta"]
        if txn.get(BACKEND_COUNTS, db=meta) is None:
            return None
        out = {}
        cur = txn.cursor(db=meta)
        if cur.set_range(BACKEND_PREFIX):
            for key, value in cur:
                if not bytes(key).startswith(BACKEND_PREFIX):
                    break
                chunks, nbytes = _BACKEND_COUNT.unpack(value)
                out[bytes(key[len(BACKEND_PREFIX):]).decode()] = {"chunks": chunks,
                                                                  "bytes": nbytes}
        return out

    def count_backends(self, window: int = 4096) -> dict[str, dict[str, int]]:
        """The per-backend figures by a full scan (blocking: a worker thread or no daemon)."""
        out: dict[str, dict[str, int]] = {}
        for _digest, rec in self.scan_chunks(self.index, window):
            for name in {loc.backend for loc in rec.locations}:
                held = out.setdefault(name, {"chunks": 0, "bytes": 0})
                held["chunks"] += 1
                held["bytes"] += rec.stored_size
        return out

    def ensure_backend_counts(self) -> bool:
        """Count the per-backend figures once for a store that has no counters yet.

        One write transaction over the whole table: call it when no other writer
        runs (Store open, before the daemon serves). True if it counted.
        """
        with self.index.write() as txn:
            if txn.get(BACKEND_COUNTS, db=self.index.db["meta"]) is not None:
                return False
            for _digest, rec in self.all_chunks(txn):
                self._count_copies(txn, rec.locations, rec.stored_size, 1)
            txn.put(BACKEND_COUNTS, b"1", db=self.index.db["meta"])
        return True

    # repair queue ------------------------------------------------------------
    def queue_repair(self, txn: lmdb.Transaction, digest: bytes, flow: str | None,
                     restore: list[str] = ()) -> None:
        """Remember that a chunk has fewer good copies than its policy wants."""
        old = txn.get(digest, db=self._repair)
        if old is not None:
            prev = json.loads(bytes(old))
            restore = sorted(set(restore) | set(prev.get("restore", [])))
            flow = flow if flow is not None else prev.get("flow")
        row = {"flow": flow, "restore": list(restore)}
        txn.put(digest, json.dumps(row).encode(), db=self._repair)

    def repair_rows(self, txn: lmdb.Transaction, limit: int = 1000,
                    after: bytes = b"") -> list[tuple[bytes, str | None, list[str]]]:
        """Up to *limit* queued chunks from just after *after*, wrapping round (so rows
        stuck on a down backend do not starve the rest of the queue)."""
        out = []
        cur = txn.cursor(db=self._repair)
        for start, stop in ((after + b"\x00" if after else b"", None), (b"", after or None)):
            if not (cur.set_range(start) if start else cur.first()):
                continue
            for key, value in cur:
                key = bytes(key)
                if stop is not None and key > stop or len(out) >= limit:
                    break
                row = json.loads(bytes(value))
                out.append((key, row.get("flow"), row.get("restore", [])))
            if not after:
                break
        return out

    def repair_flow(self, txn: lmdb.Transaction, digest: bytes) -> str | None:
        """The flow a queued chunk was queued for (None when not queued)."""
        row = txn.get(digest, db=self._repair)
        return json.loads(bytes(row)).get("flow") if row is not None else None

    def repair_count(self, txn: lmdb.Transaction) -> int:
        return txn.stat(self._repair)["entries"]

    def done_repair(self, txn: lmdb.Transaction, digest: bytes) -> None:
        txn.delete(digest, db=self._repair)

    def all_chunks(self, txn: lmdb.Transaction) -> Iterator[tuple[bytes, ChunkRecord]]:
        """Full scan — for admin commands only (gc, fsck), never on a FUSE path."""
        for key, value in txn.cursor(db=self._chunks):
            yield bytes(key), ChunkRecord.unpack(value)

    @staticmethod
    def scan_chunks(index: Index, window: int = 4096) -> Iterator[tuple[bytes, ChunkRecord]]:
        """Every live chunk in digest order, *window* rows per short read transaction.

        For planning in a worker thread: no snapshot stays open for the whole scan
        (a long reader makes LMDB's file grow under writes), each window is read in
        its own transaction, which is opened and closed in the calling thread.
        """
        after = b""
        while True:
            with index.read() as txn:
                cur = txn.cursor(db=index.db["chunks"])
                found = cur.set_range(after + b"\x00") if after else cur.first()
                rows = []
                while found and len(rows) < window:
                    rows.append((bytes(cur.key()), ChunkRecord.unpack(cur.value())))
                    found = cur.next()
            yield from rows
            if len(rows) < window:
                return
            after = rows[-1][0]

    def all_digests(self, txn: lmdb.Transaction) -> Iterator[bytes]:
        """Every chunk id the index knows, live or awaiting deletion (admin scans only)."""
        for db in (self._chunks, self._garbage):
            for key in txn.cursor(db=db).iternext(keys=True, values=False):
                yield bytes(key)

    # garbage --------------------------------------------------------------
    def garbage(self, txn: lmdb.Transaction, limit: int = 1000) -> list[tuple[bytes, ChunkRecord]]:
        out = []
        for key, value in txn.cursor(db=self._garbage):
            out.append((bytes(key), ChunkRecord.unpack(value[_GARBAGE_HDR.size:])))
            if len(out) >= limit:
                break
        return out

    def is_garbage(self, txn: lmdb.Transaction, digest: bytes) -> bool:
        return txn.get(digest, db=self._garbage) is not None

    def forget_garbage(self, txn: lmdb.Transaction, digest: bytes) -> None:
        txn.delete(digest, db=self._garbage)

    # move intents (rebalance) --------------------------------------------------
    # A row per copy being created or deleted outside the write path, written
    # before the backend call and removed after the index says the outcome:
    # key = digest + backend name, value = {"op": "put"|"delete", "locator", "at"}.
    def add_intent(self, txn: lmdb.Transaction, digest: bytes, backend: str, op: str,
                   locator: str = "") -> None:
        row = {"op": op, "locator": locator, "at": time.time()}
        txn.put(digest + backend.encode(), json.dumps(row).encode(), db=self._moves)

    def drop_intent(self, txn: lmdb.Transaction, digest: bytes, backend: str) -> None:
        txn.delete(digest + backend.encode(), db=self._moves)

    def intents(self, txn: lmdb.Transaction) -> list[tuple[bytes, str, dict]]:
        """Every unfinished move step: (digest, backend, row)."""
        out = []
        for key, value in txn.cursor(db=self._moves):
            key = bytes(key)
            out.append((key[:32], key[32:].decode(), json.loads(bytes(value))))
        return out
