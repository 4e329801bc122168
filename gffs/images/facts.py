"""Image analysis of stored files: the queue, the worker process, thumbnail storage.

When a file is closed after writing, its content id is recorded; if no facts
exist for that content yet, the image is analysed in the background — in one
separate process, niced and memory-limited, one image at a time, after writes
have paused for a moment (or waited 20 s) so an ingest keeps the CPU — and the
facts stored in the index; gffs/fs/imagexattrs.py shows them as read-only xattrs, so reading
them (`getfattr -d`) never touches the image again. Broken or hostile files
are stored exactly as written and get ``user.gf.image.error`` instead.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Awaitable, Callable

import trio

from gffs.chunks.store import ChunkStore, StoredChunk
from gffs.errors import FsError
from gffs.images.verdicts import OUT_OF_MEMORY, is_resource_failure, may_be_resource_failure
from gffs.images.thumbnails import Thumbnail
from gffs.index import ChunkMap, Index
from gffs.index.errors import IndexFailure
from gffs.index.images import ImageIndex
from gffs.index.views import ViewIndex

log = logging.getLogger(__name__)

MAX_ANALYSED_BYTES = 256 << 20   # larger files are not read back for analysis


ANALYSIS_MEMORY_LIMIT = 1 << 30   # address space of the analysis process
ANALYSIS_NICE = 10                # below the daemon and the user's cp
IDLE_BEFORE_ANALYSIS = 0.3        # seconds without writes before an image is analysed...
MAX_ANALYSIS_DELAY = 20.0         # ...unless it has waited this long already
COMMIT_BACKOFF = 1.0              # seconds before a failed facts commit is retried, doubling
MAX_COMMIT_BACKOFF = 30.0


def _worker_init(memory_limit: int = ANALYSIS_MEMORY_LIMIT) -> None:
    """In the analysis process: die with the daemon, bounded memory, low priority."""
    import ctypes
    import resource
    import signal
    try:  # PR_SET_PDEATHSIG: a daemon killed with -9 must not leave its worker behind
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the daemon died before prctl took effect
        os._exit(0)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    except (ValueError, OSError):
        pass
    try:
        os.nice(ANALYSIS_NICE)
    except OSError:
        pass
    import gffs.images.analyze  # noqa: F401 - Pillow and its plugins, once per worker


def _analyse_in_worker(data: bytes) -> tuple[dict[str, str], list[Thumbnail]]:
    """Facts and thumbnails of one image, from one decode (runs in the analysis process)."""
    from gffs.images.analyze import analyze_image
    from gffs.images.thumbnails import LARGEST, make_thumbnails
    try:
        facts, pixels = analyze_image(data, keep_pixels=LARGEST)
        thumbs = make_thumbnails(pixels, facts, len(data)) if pixels is not None else []
        return facts, thumbs
    except MemoryError:
        return {"error": OUT_OF_MEMORY}, []


class AnalysisProcess:
    """One separate, niced, memory-limited process that reads images.

    Decoding untrusted images in another process keeps the daemon's memory
    and GIL out of it, and a decoder that crashes takes only that process.
    """

    def __init__(self, memory_limit: int = ANALYSIS_MEMORY_LIMIT) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self.memory_limit = memory_limit

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=ctx,
                                             initializer=_worker_init,
                                             initargs=(self.memory_limit,))
        return self._pool

    async def analyse(self, data: bytes) -> tuple[dict[str, str], list[Thumbnail]]:
        future = self._executor().submit(_analyse_in_worker, data)
        try:
            return await trio.to_thread.run_sync(future.result)
        except BrokenProcessPool:
            self.close()
            return {"error": "the image decoder crashed on this file"}, []

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


class ImageFacts:
    def __init__(self, index: Index, chunks: ChunkStore,
                 read_file: Callable[[int, int], Awaitable[bytes]],
                 flow_of: Callable[[int], str | None], enabled: bool = True) -> None:
        self.index = index
        self.images = ImageIndex(index)
        self.views = ViewIndex(index)        # .views, kept with the facts (gffs/index/views.py)
        self.chunks = chunks
        self.enabled = enabled
        self._read_file = read_file          # (ino, size) -> the file's bytes
        self._flow_of = flow_of              # ino -> placement policy for its thumbnails
        self._worker = AnalysisProcess()
        self._last_write = float("-inf")
        self._first_seen: dict[bytes, float] = {}
        self._consumer_running = False
        self._postponed: set[bytes] = set()   # resource failures: stay queued for the next mount
        self._backoff = COMMIT_BACKOFF
        self.nursery: trio.Nursery | None = None

    # hooks called by the filesystem --------------------------------------------------
    def record_content(self, txn, ino: int, size: int) -> bool:
        """In the commit of a closing flush: remember the inode's content, queue its analysis.

        The queue row is written in the same transaction, so an image closed
        just before a crash is still analysed after the next mount. Returns
        whether something was queued (the caller wakes the worker after commit).
        """
        cid = self.images.compute_content_id(txn, ino, size)
        old = self.images.content_id(txn, ino)
        self.images.set_content_id(txn, ino, cid)
        if old != cid:
            self.views.content_set(txn, ino, old, cid)
        if self.enabled and self.images.facts(txn, cid) is None:
            self.images.queue(txn, cid, ino, size)
            return True
        return False

    def forget_inode(self, txn, ino: int) -> None:
        self.views.content_set(txn, ino, self.images.content_id(txn, ino), None)
        self.images.drop_inode(txn, ino)

    def wake(self) -> None:
        """Something was queued (or the daemon started): work the queue."""
        if not self.enabled or self.nursery is None or self._consumer_running:
            return
        self._consumer_running = True
        self.nursery.start_soon(self._consume)

    async def _consume(self) -> None:
        """One task works through the queue in the index (a task per image would cost memory)."""
        try:
            while True:
                with self.index.read() as txn:
                    rows = [r for r in self.images.queued(txn) if r[0] not in self._postponed]
                if not rows:
                    return
                for cid, ino, size in rows:
                    first_seen = self._first_seen.setdefault(cid, trio.current_time())
                    await self._analyse(ino, size, cid, first_seen)
                    self._first_seen.pop(cid, None)
        finally:
            self._consumer_running = False

    def writing(self) -> None:
        """Called on every write: analysis yields the CPU to an ingest in progress."""
        self._last_write = trio.current_time()

    async def _wait_for_quiet(self, queued_at: float) -> None:
        deadline = queued_at + MAX_ANALYSIS_DELAY
        while trio.current_time() < deadline:
            quiet_since = trio.current_time() - self._last_write
            if quiet_since >= IDLE_BEFORE_ANALYSIS:
                return
            await trio.sleep(IDLE_BEFORE_ANALYSIS - quiet_since)

    async def _analyse(self, ino: int, size: int, cid: bytes, queued_at: float) -> None:
        facts, thumbs, flow = None, [], None
        stored: list[tuple[Thumbnail, StoredChunk]] = []
        try:
            try:
                if size > MAX_ANALYSED_BYTES:
                    facts = {"error": f"file larger than {MAX_ANALYSED_BYTES >> 20} MiB: not analysed"}
                else:
                    await self._wait_for_quiet(queued_at)
                    if self._current(ino, cid):
                        data = await self._read_file(ino, size)
                        if self._current(ino, cid):  # not rewritten or deleted while we read
                            facts, thumbs = await self._analyse_checked(data)
                            del data
                            if is_resource_failure(facts):   # not the content's verdict
                                log.warning("image analysis of inode %d postponed to the next "
                                            "mount: %s, twice", ino, facts["error"])
                                self._postponed.add(cid)
                                return
                            flow = self._flow_of(ino)
                            stored = await self._store_thumbnails(thumbs, flow)
            except (FsError, IndexFailure) as exc:  # unreadable or unstorable now (a backend is down): stays queued
                log.debug("image analysis of inode %d postponed: %s", ino, exc)
                await trio.sleep(1.0)
                return
            except Exception:
                log.exception("image analysis of inode %d failed", ino)
                facts, stored = {"error": "analysis failed"}, []
            try:
                await self.index.available()
                self._commit(cid, facts, stored, flow)
            except (FsError, IndexFailure) as exc:  # disk full, I/O error: the row stays queued, retried later
                log.warning("storing image facts of inode %d failed, will retry in %.0f s: %s",
                            ino, self._backoff, exc)
                await trio.sleep(self._backoff)
                self._backoff = min(self._backoff * 2, MAX_COMMIT_BACKOFF)
            else:
                self._backoff = COMMIT_BACKOFF
        finally:
            self.chunks.release(list({id(sc): sc for _, sc in stored}.values()))

    async def _analyse_checked(self, data: bytes) -> tuple[dict[str, str], list[Thumbnail]]:
        """Analyse; a decoder failure is confirmed in a fresh process before it becomes the
        content's verdict: a long-lived decoder's heap can be too used up for a big image
        (a 33 MP HEIF after other HEIFs) that a new process decodes."""
        facts, thumbs = await self._worker.analyse(data)
        if may_be_resource_failure(facts):
            self._worker.close()
            facts, thumbs = await self._worker.analyse(data)
        return facts, thumbs

    async def _store_thumbnails(self, thumbs: list[Thumbnail],
                                flow: str | None) -> list[tuple[Thumbnail, StoredChunk]]:
        """The thumbnails' stored source as one chunk (placed like the file's flow), pinned
        until their commit; every size's row points at it (gffs.images.thumbsource)."""
        if not thumbs:
            return []
        sc = await self.chunks.store(thumbs[0].source, False, flow)
        return [(thumb, sc) for thumb in thumbs]

    def _commit(self, cid: bytes, facts: dict[str, str] | None,
                stored: list[tuple[Thumbnail, StoredChunk]], flow: str | None) -> None:
        """Facts, thumbnail rows (with their chunk references) and the dequeue: one transaction."""
        cm = ChunkMap(self.index)
        with self.index.write() as txn:
            if facts is not None:
                self.images.set_facts(txn, cid, facts)
                self.views.facts_stored(txn, cid)
                for thumb, sc in stored:
                    self.images.set_thumbnail(txn, cid, thumb.size, sc.digest, sc.record,
                                              thumb.width, thumb.height, len(thumb.png))
                    if sc.short:
                        cm.queue_repair(txn, sc.digest, flow)
            self.images.dequeue(txn, cid)  # without facts: the content is gone; a new row exists
        if any(sc.short for _, sc in stored):
            self.chunks.repair_wakeup.set()

    def _current(self, ino: int, cid: bytes) -> bool:
        with self.index.read() as txn:
            return self.images.content_id(txn, ino) == cid

    def close(self) -> None:
        self._worker.close()
