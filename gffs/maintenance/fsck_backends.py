"""fsck against the backends: copies missing, corrupt, unrecorded; chunks below their copy count.

A full run lists every backend once (cheap on object stores: a thousand keys
per request) and compares the listing with the chunk table; an absent copy is
confirmed with ``stat`` before it is reported (the listing may predate a
write). ``--verify-data`` fetches every copy instead and decodes it: the
SHA-256 must equal the chunk's name. ``--incremental`` checks only the next
slice of the chunk table (``stat``, or a fetch with --verify-data) and keeps
its place in the index meta key ``fsck_cursor``; listings are skipped, so
unrecorded objects are found by full runs only.

Repairs reuse the chunk store's repair queue: a bad copy's location is
dropped and the chunk queued with ``restore=[that backend]``; then
ChunkStore.repair() copies a verified good copy to where the policy wants
it. A chunk with no good copy cannot be repaired; it is reported with every
file that uses it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import trio

from gffs.chunks import codec
from gffs.index import ChunkMap
from gffs.index.env import N_CHUNKS
from gffs.index.records import ChunkRecord, Location
from gffs.maintenance.fsck_report import Finding, Report
from gffs.maintenance.gc import GC_MIN_AGE
from gffs.maintenance.progress import Progress
from gffs.store import Store
from gffs_backends.base import Backend, BackendError, BackendUnavailable, ObjectInfo, ObjectMissing

CURSOR_KEY = b"fsck_cursor"
PARALLEL = 16        # backend requests in flight
BATCH = 256          # chunks per index read / repair transaction
LIST_PAGE = 1000     # listed objects classified per index read


class KeySet:
    """The chunk keys a listing found, compact: 32-byte digests appended to one bytearray
    per 2-byte prefix (a million keys: ~35 MB in 65,536 buffers, nothing the garbage
    collector walks; a set of bytes was ~150 MB). A lookup turns its prefix's buffer into
    a set once; check_chunks asks in digest order, so one prefix's set is alive at a time."""

    def __init__(self) -> None:
        self._buckets: dict[int, bytearray] = {}
        self._cached: tuple[int, frozenset[bytes]] = (-1, frozenset())

    def add(self, digest: bytes) -> None:
        b = int.from_bytes(digest[:2], "big")
        buf = self._buckets.get(b)
        if buf is None:
            self._buckets[b] = buf = bytearray()
        buf += digest
        if b == self._cached[0]:
            self._cached = (-1, frozenset())

    def __contains__(self, digest: bytes) -> bool:
        b = int.from_bytes(digest[:2], "big")
        if b != self._cached[0]:
            buf = self._buckets.get(b, b"")
            self._cached = (b, frozenset(bytes(buf[i:i + 32]) for i in range(0, len(buf), 32)))
        return digest in self._cached[1]

    def __len__(self) -> int:
        return sum(len(buf) for buf in self._buckets.values()) // 32


@dataclass
class Options:
    repair: bool = False
    verify: bool = False
    incremental: bool = False
    max_chunks: int = 10_000        # --incremental: chunks per run
    time_limit: float | None = None  # --incremental: seconds for the backend checks
    min_age: float = GC_MIN_AGE     # unrecorded objects younger than this may be in flight


@dataclass
class Slice:
    """Where an incremental run started and stopped in the chunk table."""

    start: bytes = b""
    end: bytes = b""
    chunks: int = 0
    wrapped: bool = False

    def as_dict(self) -> dict:
        return {"from": self.start.hex() or "start", "to": self.end.hex() or "start",
                "chunks": self.chunks, "wrapped": self.wrapped}


@dataclass
class Verdict:
    """The copies of one chunk after probing: backend -> status (ok/missing/corrupt/unchecked)."""

    status: dict[str, str] = field(default_factory=dict)
    detail: dict[str, str] = field(default_factory=dict)

    def names(self, *states: str) -> list[str]:
        return [b for b, s in self.status.items() if s in states]


class BackendCheck:
    def __init__(self, store: Store, report: Report, progress: Progress, opts: Options,
                 flows: dict[bytes, str | None] | None) -> None:
        self.store = store
        self.report = report
        self.progress = progress
        self.opts = opts
        self.flows = flows
        self.cm = ChunkMap(store.index)
        self.dead: dict[str, str] = {}                 # backend -> why it is skipped
        self.present: dict[str, KeySet] | None = None
        self.queued: dict[bytes, list[Finding]] = {}   # chunks fsck queued for repair
        self.lost: dict[bytes, Finding] = {}
        self.unrecorded: dict[bytes, list[str]] = {}   # copy_unrecorded, not yet recorded
        self.limiter = trio.CapacityLimiter(PARALLEL)

    # backend calls -------------------------------------------------------------------
    async def call(self, backend: Backend, op: str, *args):
        """A bounded, health-recorded call; a backend that is down is skipped from then on."""
        if backend.name in self.dead:
            raise BackendUnavailable(self.dead[backend.name])
        try:
            return await self.store.chunks.call(backend, op, *args)
        except BackendUnavailable as exc:
            self.mark_dead(backend.name, str(exc))
            raise

    def mark_dead(self, name: str, why: str) -> None:
        if name not in self.dead:
            self.dead[name] = why
            self.report.add("backend_unreachable", f"backend {name}",
                            f"{why}; its copies were not checked")

    async def fetch_verified(self, backend: Backend, digest: bytes,
                             locator: str) -> tuple[bytes, int]:
        """A copy's stored bytes and plaintext size, checked to decode to *digest*
        (CorruptChunk if not)."""
        stored = await self.call(backend, "get", digest.hex(), locator)
        data = await trio.to_thread.run_sync(codec.decode, stored, digest)
        return stored, len(data)

    # unrecorded objects (full runs) --------------------------------------------------------
    async def list_backends(self) -> None:
        self.present = None if self.opts.verify else {}
        for name, backend in self.store.backends.items():
            self.progress.begin(f"listing {name}", unit="objects")
            try:
                await self._list_one(backend)
            except BackendError as exc:
                self.mark_dead(name, f"listing failed: {exc}")
            except trio.TooSlowError:
                self.mark_dead(name, "listing timed out")

    async def _list_one(self, backend: Backend) -> None:
        present = KeySet()
        stray: list[ObjectInfo] = []
        page: list[tuple[bytes, ObjectInfo]] = []
        young = listed = 0
        cutoff = time.time() - self.opts.min_age
        release = self.store.index.releaser()

        def classify() -> None:
            nonlocal young
            with self.store.index.read() as txn:
                for digest, info in page:
                    rec = self.cm.chunk(txn, digest)
                    if rec is None and self.cm.known(txn, digest) is None:
                        if info.mtime <= cutoff:
                            stray.append(info)
                        else:
                            young += 1
                        continue
                    present.add(digest)
                    if (rec is not None and info.mtime <= cutoff
                            and all(loc.backend != backend.name for loc in rec.locations)):
                        f = self.report.add("copy_unrecorded", f"chunk {digest.hex()}",
                                            f"on {backend.name}; location recorded")
                        if self.opts.repair:
                            f.fixed = self._record_copy(digest, backend.name)
                        else:
                            self.unrecorded.setdefault(digest, []).append(backend.name)
            release(len(page))
            page.clear()

        async for info in backend.list():
            try:
                digest = bytes.fromhex(info.key)
            except ValueError:
                continue
            if len(digest) != 32:
                continue  # not a chunk (gc leaves it alone too)
            listed += 1
            page.append((digest, info))
            if len(page) >= LIST_PAGE:
                classify()
                self.progress.advance(LIST_PAGE)
        classify()
        self.report.count(f"objects on {backend.name}", listed)
        if young:
            self.report.note(f"{backend.name}: {young} unrecorded objects younger than "
                             f"{self.opts.min_age:.0f} s skipped (uploads may be in flight)")
        if self.present is not None:
            self.present[backend.name] = present
        await self._stray(backend, stray)

    def _record_copy(self, digest: bytes, backend: str) -> bool:
        with self.store.index.write() as txn:
            rec = self.cm.chunk(txn, digest)
            if rec is not None and all(loc.backend != backend for loc in rec.locations):
                self.cm.add_location(txn, digest, Location(backend, ""))
        return True

    async def _stray(self, backend: Backend, stray: list[ObjectInfo]) -> None:
        """Report objects that are no chunk of the index; with --repair delete them (as gc does)."""
        findings = {}
        for info in stray:
            age_h = (time.time() - info.mtime) / 3600
            findings[info.key] = self.report.add(
                "object_unrecorded", f"object {info.key} on {backend.name}",
                f"{info.size} bytes, {age_h:.1f} h old" + ("; deleted" if self.opts.repair else
                                                           "; --repair or gc deletes it"))
        if not (self.opts.repair and stray):
            return
        with self.store.index.read() as txn:  # the same test delete_unrecorded makes
            doomed = [i.key for i in stray if not self.store.chunks.pinned(bytes.fromhex(i.key))
                      and self.cm.known(txn, bytes.fromhex(i.key)) is None]
        try:
            await self.store.chunks.delete_unrecorded(backend, [bytes.fromhex(k) for k in doomed])
        except BackendError as exc:
            self.report.note(f"{backend.name}: deleting unrecorded objects failed: {exc}")
            return
        for key in doomed:
            findings[key].fixed = True

    # copies of every chunk (or a slice) ------------------------------------------------------
    async def check_chunks(self) -> Slice:
        index = self.store.index
        with index.read() as txn:
            total = index.counter(txn, N_CHUNKS)
            start = bytes(txn.get(CURSOR_KEY, db=index.db["meta"]) or b"") \
                if self.opts.incremental else b""
        sl = Slice(start=start, end=start)
        limit = min(total, self.opts.max_chunks) if self.opts.incremental else total
        what = "verifying copies" if self.opts.verify else "checking copies"
        self.progress.begin(what, total_items=limit, unit="chunks")
        deadline = (time.monotonic() + self.opts.time_limit
                    if self.opts.incremental and self.opts.time_limit else None)
        after = start
        release = index.releaser()
        while True:
            budget = min(BATCH, limit - sl.chunks) if self.opts.incremental else BATCH
            if budget <= 0:
                break
            rows = self._batch(after, budget)
            if sl.wrapped:  # second lap: stop where this run started
                rows = [r for r in rows if r[0] <= start]
            if not rows:
                if self.opts.incremental and start and not sl.wrapped:
                    sl.wrapped, after = True, b""  # end of the table: go on from its start
                    continue
                if not sl.wrapped:
                    sl.end = b""  # a whole pass ended: the next run starts over
                break
            await self._check_batch(rows)
            release(len(rows))
            after = sl.end = rows[-1][0]
            sl.chunks += len(rows)
            self.progress.advance(len(rows), sum(r[1].stored_size for r in rows)
                                  if self.opts.verify else 0)
            if self.opts.incremental:
                with index.write() as txn:  # a rerun after Ctrl-C continues from here
                    txn.put(CURSOR_KEY, sl.end, db=index.db["meta"])
                if deadline is not None and time.monotonic() > deadline:
                    self.report.note(f"--time-limit reached after {sl.chunks} chunks")
                    break
        if self.opts.incremental and sl.end == b"":
            with index.write() as txn:
                txn.delete(CURSOR_KEY, db=index.db["meta"])
        self.report.count("chunks checked on backends", sl.chunks)
        return sl

    def _batch(self, after: bytes, n: int) -> list[tuple[bytes, ChunkRecord]]:
        out = []
        with self.store.index.read() as txn:
            cur = txn.cursor(db=self.store.index.db["chunks"])
            if not cur.set_range(after):
                return out
            for key, value in cur:
                if bytes(key) == after:
                    continue
                out.append((bytes(key), ChunkRecord.unpack(value)))
                if len(out) >= n:
                    break
        return out

    async def _check_batch(self, rows: list[tuple[bytes, ChunkRecord]]) -> None:
        verdicts = {digest: Verdict() for digest, _ in rows}

        async def probe(digest: bytes, loc: Location) -> None:
            async with self.limiter:
                status, detail = await self._probe(digest, loc)
            verdicts[digest].status[loc.backend] = status
            if detail:
                verdicts[digest].detail[loc.backend] = detail

        async with trio.open_nursery() as nursery:
            for digest, rec in rows:
                for loc in rec.locations:
                    nursery.start_soon(probe, digest, loc)
        self.report.count("copies checked", sum(len(v.status) for v in verdicts.values()))
        with self.store.index.write() if self.opts.repair else self.store.index.read() as txn:
            for digest, _rec in rows:
                self._judge(txn, digest, verdicts[digest])

    async def _probe(self, digest: bytes, loc: Location) -> tuple[str, str]:
        backend = self.store.backends.get(loc.backend)
        if backend is None:
            return "unconfigured", ""  # reported by the chunk table check
        if loc.backend in self.dead:
            return "unchecked", ""
        try:
            if self.opts.verify:
                await self.fetch_verified(backend, digest, loc.locator)
                return "ok", ""
            listed = self.present.get(loc.backend) if self.present is not None else None
            if listed is not None and digest in listed:
                return "ok", ""
            info = await self.call(backend, "stat", digest.hex(), loc.locator)
            return ("ok", "") if info is not None else ("missing", "")
        except ObjectMissing:
            return "missing", ""
        except codec.CorruptChunk as exc:
            return "corrupt", str(exc)
        except BackendUnavailable:
            return "unchecked", ""
        except BackendError as exc:
            return "unchecked", str(exc)

    def _judge(self, txn, digest: bytes, v: Verdict) -> None:
        """Findings for one chunk's copies; with --repair, drop bad copies and queue the chunk."""
        rec = self.cm.chunk(txn, digest)
        if rec is None:
            return  # unreferenced meanwhile: nothing to keep
        recorded = {loc.backend for loc in rec.locations}
        # a copy that went away because a rebalance moved it is not bad
        bad = [b for b in v.names("missing", "corrupt") if b in recorded]
        good, unsure = v.names("ok"), v.names("unchecked")
        obj = f"chunk {digest.hex()}"
        findings = [self.report.add("copy_" + v.status[b], obj,
                                    f"on {b}" + (f": {v.detail[b]}" if b in v.detail else ""))
                    for b in bad]
        if not v.names("ok", "unchecked", "unconfigured"):
            self.lost[digest] = self.report.add(
                "chunk_lost", obj, "no good copy" + "".join(f"; {b} {v.status[b]}" for b in bad))
            return
        placement = self.store.placement
        flow = self.flows.get(digest) if self.flows is not None else None
        want = placement.policy_for(flow).copies
        have = sum(placement.trusted(b) for b in good + unsure + self.unrecorded.get(digest, []))
        if not have and not bad and all(getattr(self.store.backends.get(b), "read_only", False)
                                        for b in recorded):
            # an imported flow's block, not pinned: held by its publisher by design
            # (docs/SHARING.md; `gffs-admin flow pin` makes copies of our own)
            self.report.count("chunks only on a share source", 1)
            return
        if have < want and not bad:  # (a bad copy's finding already says it)
            if txn.get(digest, db=self.store.index.db["repair"]) is not None:
                self.report.add("repair_pending", obj, f"{have} of {want} trusted copies")
                return
            findings.append(self.report.add("under_replicated", obj,
                                            f"{have} of {want} trusted copies"))
        if not findings or not self.opts.repair:
            return
        if not good:
            for f in findings:
                f.detail += "; no verified copy to repair from (a backend is unreachable)"
            return
        keep = [loc for loc in rec.locations if loc.backend not in bad]
        self.cm.set_locations(txn, digest, keep)
        self.cm.queue_repair(txn, digest, flow, restore=bad)
        self.queued[digest] = findings

    async def repair_queued(self) -> None:
        """Run the chunk store's repair until the queue stops shrinking; mark what it fixed."""
        with self.store.index.read() as txn:
            if not self.cm.repair_count(txn):
                return
        self.progress.begin("repairing copies", total_items=len(self.queued), unit="chunks")
        while True:
            repaired, _pending = await self.store.chunks.repair(limit=500)
            self.progress.advance(repaired)
            if not repaired:
                break
        with self.store.index.read() as txn:
            for digest, findings in self.queued.items():
                done = txn.get(digest, db=self.store.index.db["repair"]) is None
                for f in findings:
                    f.fixed = done
                    if not done:
                        f.detail += "; still queued for repair (is a backend down?)"

    # chunks referenced but unknown ----------------------------------------------------------
    async def find_copies(self, digest: bytes) -> ChunkRecord | None:
        """A chunk record rebuilt from every backend holding a good copy, or None."""
        rec: ChunkRecord | None = None
        for name, backend in self.store.backends.items():
            try:
                stored, size = await self.fetch_verified(backend, digest, "")
            except (BackendError, codec.CorruptChunk):
                continue
            if rec is None:
                rec = ChunkRecord(0, size, len(stored), stored[0])
            rec.locations.append(Location(name, ""))
        return rec
