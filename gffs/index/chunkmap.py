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


class ChunkMap:
    """Typed access to `blocks`, `chunks` and `garbage` of one Index."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self._blocks = index.db["blocks"]
        self._chunks = index.db["chunks"]
        self._garbage = index.db["garbage"]
        self._repair = index.db["repair"]
        self._moves = index.db["moves"]

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
        if digest is not None:
            self.ref(txn, digest, new_chunk)
            txn.put(key, digest, db=self._blocks)
        else:
            txn.delete(key, db=self._blocks)
        if old is not None:
            self.unref(txn, old)

    def drop_blocks(self, txn: lmdb.Transaction, ino: int, start: int = 0) -> None:
        """Remove blocks >= *start* of a file (truncate, or delete the file)."""
        for idx, digest in list(self.blocks(txn, ino, start)):
            txn.delete(u64(ino) + u64(idx), db=self._blocks)
            self.unref(txn, digest)

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

    def ref(self, txn: lmdb.Transaction, digest: bytes, new_chunk: ChunkRecord | None) -> None:
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
        elif new_chunk is not None:
            # two writers stored the same bytes at once (maybe under different
            # policies): keep every copy on record rather than leak the loser's
            have = {loc.backend for loc in rec.locations}
            rec.locations += [loc for loc in new_chunk.locations if loc.backend not in have]
        rec.refcount += 1
        txn.put(digest, rec.pack(), db=self._chunks)

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

    def add_location(self, txn: lmdb.Transaction, digest: bytes, loc: Location) -> None:
        rec = self.chunk(txn, digest)
        if rec is not None and loc not in rec.locations:
            rec.locations.append(loc)
            txn.put(digest, rec.pack(), db=self._chunks)

    def set_locations(self, txn: lmdb.Transaction, digest: bytes, locations: list[Location]) -> None:
        rec = self.chunk(txn, digest)
        if rec is not None:
            rec.locations = list(locations)
            txn.put(digest, rec.pack(), db=self._chunks)

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

    def repair_count(self, txn: lmdb.Transaction) -> int:
        return txn.stat(self._repair)["entries"]

    def done_repair(self, txn: lmdb.Transaction, digest: bytes) -> None:
        txn.delete(digest, db=self._repair)

    def all_chunks(self, txn: lmdb.Transaction) -> Iterator[tuple[bytes, ChunkRecord]]:
        """Full scan — for admin commands only (gc, fsck), never on a FUSE path."""
        for key, value in txn.cursor(db=self._chunks):
            yield bytes(key), ChunkRecord.unpack(value)

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
