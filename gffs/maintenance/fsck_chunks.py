"""fsck of the chunk table: refcounts, garbage, counters, locations, move intents.

A chunk's references are exactly its block rows (``blocks``: one row = one
reference) and thumbnail rows (``thumbnails``: the first 32 bytes of the value
name the chunk); ChunkMap.ref is called from nowhere else. A chunk with no
reference belongs in ``garbage``, not in ``chunks``. Counters in ``meta`` are
sums over ``chunks``.

Fixes go through ChunkMap so counters and the garbage queue stay consistent:
a refcount is changed by the difference fsck counted, and a chunk whose
count reaches zero is unreferenced the normal way (it moves to ``garbage``
and the daemon or gc deletes its copies).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from gffs.chunks.moves import ChunkMover
from gffs.index import ChunkMap, Index
from gffs.index.env import LOGICAL_BYTES, N_CHUNKS, STORED_BYTES
from gffs.index.images import ImageIndex
from gffs.index.records import ChunkRecord, from_u64
from gffs.maintenance.fsck_report import Finding, Report
from gffs.maintenance.fsck_worker import ScanContext, Ticker
from gffs.maintenance.gc import GC_MIN_AGE
from gffs.placement.policy import STAGING
from gffs.store import Store



@dataclass
class ChunkScan:
    flows: dict[bytes, str | None] | None = None  # chunk -> flow whose policy it follows
    unknown: dict[bytes, tuple[int, Finding]] = field(default_factory=dict)  # refs, finding
    todo: list[tuple[Finding, str, tuple]] = field(default_factory=list)
    chunks: int = 0


def set_refcount(cm: ChunkMap, txn, digest: bytes, refcount: int) -> None:
    """Give a live chunk *refcount*; at zero it moves to garbage as ChunkMap.unref does it."""
    rec = cm.chunk(txn, digest)
    assert rec is not None
    rec.refcount = max(refcount, 1)
    txn.put(digest, rec.pack(), db=cm.index.db["chunks"])
    if refcount <= 0:
        cm.unref(txn, digest)


class ChunkCheck:
    def __init__(self, store: Store, report: Report,
                 file_flow: Callable[[int], str | None]) -> None:
        self.store = store
        self.index = store.index
        self.ctx = ScanContext.of(store)
        self.cm = ChunkMap(store.index)
        self.report = report
        self.file_flow = file_flow

    @classmethod
    def for_scan(cls, index: Index, ctx: ScanContext, report: Report,
                 file_flow: Callable[[int], str | None]) -> "ChunkCheck":
        """A check that can only scan (no Store): what the fsck worker process runs."""
        self = cls.__new__(cls)
        self.store, self.index, self.ctx = None, index, ctx
        self.cm, self.report, self.file_flow = ChunkMap(index), report, file_flow
        return self

    # checking (worker thread, one read transaction) -----------------------------------
    def scan(self, tick: Ticker) -> ChunkScan:
        s = ChunkScan()
        with self.index.read() as txn:
            refs = self._count_refs(txn, s, tick)
            self._check_rows(txn, s, refs, tick)
            self._check_moves(txn, s)
        return s

    def _add(self, s: ChunkScan, kind: str, obj: str, detail: str, action: str, *args) -> Finding:
        finding = self.report.add(kind, obj, detail)
        s.todo.append((finding, action, args))
        return finding

    def _count_refs(self, txn, s: ChunkScan, tick: Ticker) -> Counter:
        copies = self.ctx.copies
        if self.ctx.flow_copies:  # per-flow policies: remember which flow each chunk serves
            s.flows = {}
        refs: Counter = Counter()
        last_ino, flow, n = -1, None, 0
        for key, digest in txn.cursor(db=self.index.db["blocks"]):
            digest = bytes(digest)
            refs[digest] += 1
            n += 1
            tick()
            if s.flows is not None:
                ino = from_u64(key[:8])
                if ino != last_ino:
                    last_ino, flow = ino, self.file_flow(ino)
                if digest not in s.flows or copies(flow) > copies(s.flows[digest]):
                    s.flows[digest] = flow
        self.report.count("blocks", n)
        for digest in ImageIndex(self.index).thumbnail_chunks(txn):
            refs[digest] += 1
        return refs

    def _check_rows(self, txn, s: ChunkScan, refs: Counter, tick: Ticker) -> None:
        garbage = self.index.db["garbage"]
        logical = stored = 0
        held: dict[str, list[int]] = {}
        for digest, rec in self.cm.all_chunks(txn):
            tick()
            s.chunks += 1
            logical += rec.size
            stored += rec.stored_size
            for name in {loc.backend for loc in rec.locations}:
                h = held.setdefault(name, [0, 0])
                h[0] += 1
                h[1] += rec.stored_size
            counted = refs.pop(digest, 0)
            obj = f"chunk {digest.hex()}"
            if rec.refcount != counted or counted == 0:
                self._add(s, "refcount_wrong", obj, f"refcount {rec.refcount}, counted {counted}"
                          + ("; moved to garbage" if counted == 0 else ""),
                          "add_refs", digest, counted - rec.refcount)
            if txn.get(digest, db=garbage) is not None:
                self._add(s, "garbage_also_live", obj, "deleting it would have removed live "
                          "copies; garbage row dropped", "drop_garbage_row", digest)
            self._check_locations(s, digest, rec)
        self.report.count("chunks", s.chunks)
        for digest, counted in refs.items():
            finding = self.report.add("unknown_chunk", f"chunk {digest.hex()}",
                                      f"{counted} references")
            s.unknown[digest] = (counted, finding)
        for key, value in ((N_CHUNKS, s.chunks), (LOGICAL_BYTES, logical), (STORED_BYTES, stored)):
            recorded = self.index.counter(txn, key)
            if recorded != value:
                self._add(s, "counter_wrong", f"meta {key.decode()}",
                          f"{recorded}, recomputed {value}", "add_counter", key, value - recorded)
        self._check_backend_counts(txn, s, held)

    def _check_backend_counts(self, txn, s: ChunkScan, held: dict[str, list[int]]) -> None:
        """The per-backend counters status shows, against the copies just counted."""
        kept = self.cm.backend_counts(txn)
        if kept is None:
            return      # counted at the next Store open
        for name in sorted(set(kept) | set(held)):
            have = kept.get(name, {"chunks": 0, "bytes": 0})
            chunks, nbytes = held.get(name, (0, 0))
            if (have["chunks"], have["bytes"]) != (chunks, nbytes):
                self._add(s, "counter_wrong", f"meta backend:{name}",
                          f"{have['chunks']} copies / {have['bytes']} bytes, recomputed "
                          f"{chunks} / {nbytes}", "add_backend_count", name,
                          chunks - have["chunks"], nbytes - have["bytes"])

    def _check_locations(self, s: ChunkScan, digest: bytes, rec: ChunkRecord) -> None:
        configured = [loc.backend for loc in rec.locations if loc.backend in self.ctx.backends]
        for loc in rec.locations:
            if loc.backend in self.ctx.backends or loc.backend == STAGING:
                continue  # (a staged copy waits for its upload: the repair queue has it)
            obj = f"chunk {digest.hex()}"
            if configured:
                self._add(s, "location_unknown_backend", obj, f"copy on {loc.backend!r} forgotten; "
                          f"copies on {', '.join(configured)} remain", "drop_location",
                          digest, loc.backend)
            else:
                self._add(s, "location_unknown_backend", obj, f"the only copies are on "
                          f"{loc.backend!r}: add that backend back to the config", "")

    def _check_moves(self, txn, s: ChunkScan) -> None:
        now = time.time()
        for digest, backend, row in self.cm.intents(txn):
            age = now - float(row.get("at", 0))
            if age > GC_MIN_AGE:  # older than any move in flight: interrupted
                self._add(s, "interrupted_move", f"chunk {digest.hex()} on {backend}",
                          f"{row.get('op', '?')} started {age / 3600:.1f} h ago; settled "
                          "(a recorded copy is kept, a stray one deleted) by --repair or gc",
                          "settle", digest, backend)

    # repairing (trio thread, short write transactions) --------------------------------
    async def repair(self, s: ChunkScan) -> None:
        settle = [(finding, args) for finding, action, args in s.todo if action == "settle"]
        for finding, action, args in s.todo:
            if action and action != "settle":
                with self.index.write() as txn:
                    finding.fixed = bool(getattr(self, "_" + action)(txn, *args))
        if settle:  # the rebalance's own crash recovery finishes interrupted moves
            await ChunkMover(self.store.chunks).settle()
            with self.index.read() as txn:
                left = {(d, b) for d, b, _row in self.cm.intents(txn)}
            for finding, args in settle:
                finding.fixed = args not in left

    def _add_refs(self, txn, digest: bytes, delta: int) -> bool:
        rec = self.cm.chunk(txn, digest)
        if rec is None:
            return False  # unreferenced meanwhile: the next run looks again
        set_refcount(self.cm, txn, digest, rec.refcount + delta)
        return True

    def _drop_garbage_row(self, txn, digest: bytes) -> bool:
        if self.cm.chunk(txn, digest) is not None:
            self.cm.forget_garbage(txn, digest)
        return True

    def _drop_location(self, txn, digest: bytes, backend: str) -> bool:
        rec = self.cm.chunk(txn, digest)
        if rec is None:
            return True
        keep = [loc for loc in rec.locations if loc.backend != backend]
        if not any(loc.backend in self.store.backends for loc in keep):
            return False
        self.cm.set_locations(txn, digest, keep)
        return True

    def _add_counter(self, txn, key: bytes, delta: int) -> bool:
        self.index.add_counter(txn, key, delta)
        return True

    def _add_backend_count(self, txn, name: str, chunks: int, nbytes: int) -> bool:
        self.cm.add_backend_count(txn, name, chunks, nbytes)
        return True

    def restore(self, digest: bytes, refs: int, found: ChunkRecord | None) -> bool:
        """Give a referenced chunk without a row its row back: from garbage, or *found*
        (a record rebuilt from copies on the backends). False when neither exists."""
        with self.index.write() as txn:
            rec = self.cm.chunk(txn, digest)
            if rec is not None:  # written again meanwhile: add the references it misses
                set_refcount(self.cm, txn, digest, rec.refcount + refs)
                return True
            if self.cm.known(txn, digest) is None and found is None:
                return False
            self.cm.ref(txn, digest, found)  # resurrects from garbage, or records *found*
            set_refcount(self.cm, txn, digest, refs)
        return True

    def in_garbage(self, digest: bytes) -> bool:
        with self.index.read() as txn:
            return self.cm.known(txn, digest) is not None


def users_of(store: Store, digests: set[bytes]) -> tuple[dict[bytes, set[int]], dict[bytes, int]]:
    """Inodes whose blocks use each chunk, and thumbnails per chunk (blocking; worker thread)."""
    files: dict[bytes, set[int]] = {d: set() for d in digests}
    thumbs: dict[bytes, int] = {}
    with store.index.read() as txn:
        for key, value in txn.cursor(db=store.index.db["blocks"]):
            if bytes(value) in files:
                files[bytes(value)].add(from_u64(key[:8]))
        for d in ImageIndex(store.index).thumbnail_chunks(txn):
            if d in files:
                thumbs[d] = thumbs.get(d, 0) + 1
    return files, thumbs
