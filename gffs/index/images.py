"""Image facts in the index, keyed by content id (the same image in two flows is one entry).

A file's *content id* is the SHA-256 of its size and block list; it changes
exactly when the bytes change. `contentids` maps an inode to its current
content id, `imagefacts` maps a content id to the facts read from the image.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Iterable, Iterator

import lmdb

from gffs.index.chunkmap import ChunkMap
from gffs.index.env import Index
from gffs.index.records import ChunkRecord, from_u64, u64

# `thumbnails` row value: chunk digest first (fsck and gc read only that), then the
# thumbnail's width, height and PNG length (without the per-file text chunks)
_THUMB_ROW = struct.Struct(">32sIIQ")


@dataclass(frozen=True, slots=True)
class ThumbnailRow:
    digest: bytes
    width: int
    height: int
    length: int


def content_id_from_blocks(size: int, blocks: Iterable[tuple[int, bytes]]) -> bytes:
    """SHA-256 over the size and each stored block's (index, SHA-256); holes are absent."""
    h = hashlib.sha256(u64(size))
    for idx, digest in blocks:
        h.update(u64(idx) + digest)
    return h.digest()


def content_id_of_bytes(data: bytes, block_size: int, zero_blocks_stored: bool = False) -> bytes:
    """The content id a file holding exactly *data* gets in a store of *block_size* blocks.

    All-zero blocks are holes (absent). Stores written before write-behind learnt that
    kept a full all-zero block written sequentially as a chunk: *zero_blocks_stored*
    gives the id such a file got."""
    blocks = []
    for idx, start in enumerate(range(0, len(data), block_size)):
        block = data[start:start + block_size]
        if block.count(0) != len(block) or (zero_blocks_stored and len(block) == block_size):
            blocks.append((idx, hashlib.sha256(block).digest()))
    return content_id_from_blocks(len(data), blocks)


class ImageIndex:
    def __init__(self, index: Index) -> None:
        self.index = index
        self._cids = index.db["contentids"]
        self._facts = index.db["imagefacts"]
        self._queue = index.db["imagequeue"]
        self._thumbs = index.db["thumbnails"]
        self._cm = ChunkMap(index)

    def compute_content_id(self, txn: lmdb.Transaction, ino: int, size: int) -> bytes:
        return content_id_from_blocks(size, self._cm.blocks(txn, ino))

    def content_id(self, txn: lmdb.Transaction, ino: int) -> bytes | None:
        raw = txn.get(u64(ino), db=self._cids)
        return bytes(raw) if raw is not None else None

    def set_content_id(self, txn: lmdb.Transaction, ino: int, cid: bytes) -> None:
        txn.put(u64(ino), cid, db=self._cids)

    def drop_inode(self, txn: lmdb.Transaction, ino: int) -> None:
        txn.delete(u64(ino), db=self._cids)

    def facts(self, txn: lmdb.Transaction, cid: bytes) -> dict[str, str] | None:
        raw = txn.get(cid, db=self._facts)
        return json.loads(bytes(raw)) if raw is not None else None

    def set_facts(self, txn: lmdb.Transaction, cid: bytes, facts: dict[str, str]) -> None:
        txn.put(cid, json.dumps(facts, sort_keys=True).encode(), db=self._facts)

    # analysis queue: content ids waiting for analysis (survives crashes) ---------------
    def queue(self, txn: lmdb.Transaction, cid: bytes, ino: int, size: int) -> None:
        txn.put(cid, u64(ino) + u64(size), db=self._queue)

    def queued(self, txn: lmdb.Transaction, limit: int = 64) -> list[tuple[bytes, int, int]]:
        out = []
        for key, value in txn.cursor(db=self._queue):
            out.append((bytes(key), from_u64(value[:8]), from_u64(value[8:16])))
            if len(out) >= limit:
                break
        return out

    def dequeue(self, txn: lmdb.Transaction, cid: bytes) -> None:
        txn.delete(cid, db=self._queue)

    def facts_of(self, txn: lmdb.Transaction, ino: int) -> dict[str, str] | None:
        cid = self.content_id(txn, ino)
        return self.facts(txn, cid) if cid is not None else None

    # thumbnails: content id + size name -> chunk; each row holds one chunk reference -------
    def thumbnail(self, txn: lmdb.Transaction, cid: bytes, size: str) -> ThumbnailRow | None:
        raw = txn.get(cid + size.encode(), db=self._thumbs)
        return ThumbnailRow(*_THUMB_ROW.unpack_from(raw)) if raw is not None else None

    def thumbnails(self, txn: lmdb.Transaction, cid: bytes) -> dict[str, ThumbnailRow]:
        out = {}
        cur = txn.cursor(db=self._thumbs)
        if cur.set_range(cid):
            for key, value in cur:
                if key[:32] != cid:
                    break
                out[bytes(key[32:]).decode()] = ThumbnailRow(*_THUMB_ROW.unpack_from(value))
        return out

    def set_thumbnail(self, txn: lmdb.Transaction, cid: bytes, size: str, digest: bytes,
                      record: ChunkRecord | None, width: int, height: int, length: int) -> None:
        """Point the row at *digest* (referencing it) and drop the reference of a replaced chunk.

        *record* describes the chunk in case the chunk table does not know it yet.
        """
        key = cid + size.encode()
        old = txn.get(key, db=self._thumbs)
        old_digest = bytes(old[:32]) if old is not None else None
        if old_digest != digest:
            self._cm.ref(txn, digest, record)
        txn.put(key, _THUMB_ROW.pack(digest, width, height, length), db=self._thumbs)
        if old_digest is not None and old_digest != digest:
            self._cm.unref(txn, old_digest)

    def thumbnail_chunks(self, txn: lmdb.Transaction) -> Iterator[bytes]:
        """The chunk digest of every thumbnail row (one reference each): fsck counts them."""
        for _key, value in txn.cursor(db=self._thumbs):
            yield bytes(value[:32])

    def drop_unused(self, txn: lmdb.Transaction) -> int:
        """Drop facts, thumbnails (unreferencing their chunks) and queue rows of content ids
        no inode has any more; returns how many rows went. For gc: a full scan."""
        live = {bytes(v) for _k, v in txn.cursor(db=self._cids)}
        doomed = [(db, bytes(k), bytes(v)) for db in (self._facts, self._thumbs, self._queue)
                  for k, v in txn.cursor(db=db) if bytes(k[:32]) not in live]
        for db, key, value in doomed:
            txn.delete(key, db=db)
            if db == self._thumbs:
                self._cm.unref(txn, value[:32])
        return len(doomed)

