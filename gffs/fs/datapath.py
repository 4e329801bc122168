"""The file data path: open files and their buffers, read with read-ahead, write with
write-behind, flush (one index transaction per commit), truncate, fsync, release."""

from __future__ import annotations

import errno
import logging
import os
import stat

import trio

from gffs.chunks import codec
from gffs.chunks.store import StoredChunk
from gffs.errors import FsError
from gffs.fs.core import Caller, FsCore, Handle, _now
from gffs.fs.openfiles import FileBuffer
from gffs.fs.sharedthumbs import is_virtual
from gffs.index import ROOT_INO
from gffs.index.errors import IndexFailure, NotFound
from gffs.index.records import InodeRecord

log = logging.getLogger("gffs.fs.filesystem")

MAX_DIRTY_PER_FILE = 16 << 20   # flush a file's buffer early beyond this
MAX_FILE_SIZE = 1 << 50
READ_AHEAD_BLOCKS = 8           # blocks loaded ahead of a sequential reader, in parallel


class DataPath(FsCore):
    def _buffer(self, ino: int) -> FileBuffer:
        buf = self.buffers.get(ino)
        if buf is None:
            with self.index.read() as txn:
                rec = self.ns.get(txn, ino)
                flow = self._flow_of(txn, ino, rec)
            buf = FileBuffer(ino, rec.size, rec.size, rec.mtime_ns, rec.ctime_ns, flow=flow)
            self.buffers[ino] = buf
        return buf

    def _flow_of(self, txn, ino: int, rec: InodeRecord) -> str | None:
        """Name of the flow (top-level directory) an inode was last linked into.

        Only needed when the placement has per-flow policies; a hard link in a
        second flow keeps the placement of the flow the file was created in.
        """
        if not self.chunks.placement.flows:
            return None
        for _ in range(4096):
            if rec.parent in (0, ROOT_INO):
                break
            try:
                ino, rec = rec.parent, self.ns.get(txn, rec.parent)
            except NotFound:  # the directory it was created in is gone (it lives on as a link)
                return None
        if rec.parent != ROOT_INO:
            return None
        for _cookie, name, child in self.ns.entries(txn, ROOT_INO):
            if child == ino:
                return name.decode(errors="surrogateescape")
        return None

    def _flow_of_ino(self, ino: int) -> str | None:
        with self.index.read() as txn:
            return self._flow_of(txn, ino, self.ns.get(txn, ino))

    def _drop_buffer_if_idle(self, ino: int) -> None:
        buf = self.buffers.get(ino)
        if buf is not None and buf.open_count == 0 and not buf.needs_flush and not buf.storing:
            self._forget_stored_early(buf)
            del self.buffers[ino]
            if not self.lookups.get(ino) and not self.read_only:
                self._purge_quietly(ino)

    def _new_handle(self, ino: int, flags: int) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = Handle(ino, flags)
        self._buffer(ino).open_count += 1
        return fh

    async def open(self, ino: int, flags: int) -> int:
        writing = flags & os.O_ACCMODE != os.O_RDONLY or bool(flags & os.O_TRUNC)
        if writing:
            self._writable()
        if is_virtual(ino):
            return await self._open_thumbnail(ino, writing)
        with self.index.read() as txn:
            rec = self.ns.get(txn, ino)
        if stat.S_ISDIR(rec.mode):
            raise FsError(errno.EISDIR)
        fh = self._new_handle(ino, flags)
        if flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY:
            try:
                await self.truncate(ino, 0)
            except BaseException:
                await self.release(fh)
                raise
        return fh

    async def _open_thumbnail(self, ino: int, writing: bool) -> int:
        data = await self._virtual(ino).open(ino, writing)
        self.stats["thumbnail_loads"] += 1
        fh = self._next_fh
        self._next_fh += 1
        self.thumb_files[fh] = data
        return fh

    def create(self, parent: int, name: bytes, mode: int, flags: int,
               caller: Caller) -> tuple[int, int, InodeRecord]:
        ino, rec = self._new_node(parent, name, stat.S_IFREG | (mode & 0o7777), caller)
        fh = self._new_handle(ino, flags)
        self.buffers[ino].meta_dirty = True  # committed at close: even an empty file gets facts
        return fh, ino, rec

    def handle(self, fh: int) -> Handle:
        h = self.handles.get(fh)
        if h is None:
            raise FsError(errno.EBADF)
        return h

    async def read(self, fh: int, offset: int, length: int) -> bytes:
        thumb = self.thumb_files.get(fh)
        if thumb is not None:
            return thumb[offset:offset + length]
        ino = self.handle(fh).ino
        buf = self.buffers[ino]
        end = min(offset + length, buf.size)
        if offset >= end:
            return b""
        bs = self.block_size
        next_block = (end - 1) // bs + 1
        if (offset == buf.read_pos or offset == 0) and next_block != buf.ahead_of:
            # sequential (or starting out) and into a block not yet looked ahead of:
            # one index lookup per block, not per 128 KiB request
            buf.ahead_of = next_block
            self._read_ahead(ino, buf, next_block)
        parts = []
        for idx in range(offset // bs, (end - 1) // bs + 1):
            start = idx * bs
            block = await self._block(ino, idx, buf)
            lo, hi = max(offset, start) - start, min(end, start + bs) - start
            piece = block[lo:hi]
            if len(piece) < hi - lo:
                piece = bytes(piece) + bytes(hi - lo - len(piece))
            parts.append(piece)
        buf.read_pos = end
        return b"".join(parts)

    def _read_ahead(self, ino: int, buf: FileBuffer, first: int) -> None:
        """Sequential reader: start loading the next blocks before they are asked for.

        Each block is its own task, so a remote backend serves several at once (one
        GET's latency no longer paces the reader); the window is at most a quarter
        of the block cache, so read-ahead never evicts what it fetched.
        """
        if self._background is None:
            return
        window = min(READ_AHEAD_BLOCKS, max(1, self.chunks.cache.max_bytes // (4 * self.block_size)))
        last = -(-buf.committed_size // self.block_size)      # blocks of the file
        with self.index.read() as txn:
            digests = [self.cm.block(txn, ino, idx)
                       for idx in range(first, min(first + window, last)) if idx not in buf.dirty]
            following = self._next_listed.get(ino) if first + window > last else None
            for _hop in range(window):        # (empty files and renames may make a cycle)
                if following is None or len(digests) >= window or following in self.buffers:
                    break
                # the reader reaches the end: the next listed files' first blocks too
                for _, digest in self.cm.blocks(txn, following):
                    if len(digests) >= window:
                        break
                    digests.append(digest)
                following = self._next_listed.get(following)
        for digest in digests:
            if digest is not None and not self.chunks.cached(digest):
                self._background.start_soon(self._prefetch, digest)

    async def _prefetch(self, digest: bytes) -> None:
        self.stats["file_block_loads"] += 1
        try:
            await self.chunks.load(digest)
        except Exception as exc:  # the real read will report it
            log.debug("read-ahead of %s failed: %s", digest.hex()[:16], exc)

    async def _block(self, ino: int, idx: int, buf: FileBuffer) -> bytes | bytearray | memoryview:
        """Current content of one block: dirty buffer, else committed chunk, else hole."""
        data = buf.dirty.get(idx)
        if data is not None:
            return data
        with self.index.read() as txn:
            digest = self.cm.block(txn, ino, idx)
        if digest is None or idx * self.block_size >= buf.committed_size:
            return b""
        self.stats["file_block_loads"] += 1
        data = await self.chunks.load(digest)
        # a write may have dirtied the block while we waited
        return buf.dirty.get(idx, data)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        self._writable()
        self.stats["write_requests"] += 1
        h = self.handle(fh)
        buf = self.buffers[h.ino]
        if h.flags & os.O_APPEND:
            offset = buf.size
        if offset + len(data) > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG)
        if buf.try_compress is None and offset == 0 and data:
            buf.try_compress = not codec.is_precompressed(bytes(data[:16]))
        bs = self.block_size
        view = memoryview(data)
        pos = offset
        while view:
            idx, within = divmod(pos, bs)
            n = min(bs - within, len(view))
            block = buf.writable_block(idx)
            if block is None:
                if idx * bs >= buf.size or (within == 0 and (n == bs or pos + n >= buf.size)):
                    block = bytearray()
                else:
                    block = bytearray(await self._block(h.ino, idx, buf))
                    meanwhile = buf.writable_block(idx)  # another write landed while we loaded
                    block = meanwhile if meanwhile is not None else block
                buf.dirty[idx] = block
            if len(block) < within:
                block.extend(bytes(within - len(block)))
            block[within:within + n] = view[:n]
            buf.touch(idx)
            if within + n == bs and len(block) == bs:
                self._write_behind(buf, idx)
            pos += n
            view = view[n:]
        now = _now()
        buf.size = max(buf.size, offset + len(data))
        buf.mtime_ns = buf.ctime_ns = now
        buf.meta_dirty = True
        self.images.writing()
        if buf.dirty_bytes > MAX_DIRTY_PER_FILE:
            await self._flush(h.ino, final=False)
        return len(data)

    def _write_behind(self, buf: FileBuffer, idx: int) -> None:
        """A block just became full: store it now so close() has less to do."""
        if self._background is None or idx in buf.storing:
            return
        if buf.dirty[idx] == self._zero_block:
            return  # the flush records it as a hole, like any all-zero block
        done = buf.storing[idx] = trio.Event()
        version, data = buf.versions[idx], bytes(buf.dirty[idx])
        buf.dirty[idx] = data  # frozen: the flush snapshot shares it, no copy
        try_compress = buf.try_compress is not False

        async def store() -> None:
            try:
                sc = await self.chunks.store(data, try_compress, buf.flow)
            except Exception as exc:  # the flush stores it again and reports
                log.debug("write-behind of block %d failed: %s", idx, exc)
            else:
                old = buf.stored_early.pop(idx, None)
                if old is not None:
                    self.chunks.release([old[1]])
                buf.stored_early[idx] = (version, sc)
            finally:
                del buf.storing[idx]
                done.set()
                if buf.open_count == 0:
                    self._drop_buffer_if_idle(buf.ino)

        self._background.start_soon(store)

    def _forget_stored_early(self, buf: FileBuffer, keep: set[int] = frozenset()) -> None:
        for idx in [i for i in buf.stored_early if i not in keep]:
            self.chunks.release([buf.stored_early.pop(idx)[1]])
        self.loops.wake_garbage()

    async def _read_committed(self, ino: int, size: int) -> bytes:
        """A closed file's committed bytes (for image analysis, off the FUSE path)."""
        bs = self.block_size
        with self.index.read() as txn:
            digests = dict(self.cm.blocks(txn, ino))
        parts = []
        for idx in range(-(-size // bs)):
            want = min(bs, size - idx * bs)
            if idx in digests:
                self.stats["analysis_block_loads"] += 1
            data = await self.chunks.load(digests[idx]) if idx in digests else b""
            parts.append(bytes(data[:want]).ljust(want, b"\0"))
        return b"".join(parts)

    async def truncate(self, ino: int, size: int) -> None:
        self._writable()
        if size > MAX_FILE_SIZE:
            raise FsError(errno.EFBIG)
        with self.index.read() as txn:
            if not stat.S_ISREG(self.ns.get(txn, ino).mode):
                raise FsError(errno.EINVAL)
        buf = self._buffer(ino)
        try:
            async with buf.lock:
                bs = self.block_size
                last, within = divmod(size, bs)
                if within and size < buf.size and last not in buf.dirty:
                    # keep the head of the block that the new end cuts through
                    block = bytearray(await self._block(ino, last, buf))
                    buf.dirty.setdefault(last, block)
                buf.truncate(size, bs)
                buf.mtime_ns = buf.ctime_ns = _now()
            await self._flush(ino)
        finally:
            self._drop_buffer_if_idle(ino)

    async def _flush(self, ino: int, final: bool = True) -> None:
        """Commit an inode's buffer: store dirty blocks, then one index transaction.

        *final* flushes (close, fsync, truncate) also record the file's content
        id; early flushes of a file still being written do not.
        """
        buf = self.buffers.get(ino)
        if buf is None:
            return
        async with buf.lock:
            if not buf.needs_flush:
                return
            snap = buf.snapshot()
            size, mtime, ctime = buf.size, buf.mtime_ns, buf.ctime_ns
            try_compress = buf.try_compress is not False
            stored: dict[int, StoredChunk | None] = {}
            queued_image = False
            failed = True

            for event in [buf.storing[i] for i in snap if i in buf.storing]:
                await event.wait()
            early = {idx: sc for idx, (version, sc) in buf.stored_early.items()
                     if idx in snap and snap[idx][1] == version}
            self._forget_stored_early(buf, keep=set(early))
            buf.stored_early.clear()  # their pins now belong to this flush

            async def store_one(idx: int, data: bytes) -> None:
                if idx in early:
                    stored[idx] = early.pop(idx)
                elif data == self._zero_block[:len(data)]:
                    stored[idx] = None  # all zeros: a hole, no chunk
                else:
                    stored[idx] = await self.chunks.store(data, try_compress, buf.flow)

            try:
                async with trio.open_nursery() as nursery:
                    for idx, (data, _) in snap.items():
                        if idx * self.block_size < size:
                            nursery.start_soon(store_one, idx, data)
                await self.index.available()
                with self.index.write() as txn:
                    rec = self.ns.get(txn, ino)
                    for idx, sc in stored.items():
                        if sc is None:
                            self.cm.set_block(txn, ino, idx, None)
                        else:
                            self.cm.set_block(txn, ino, idx, sc.digest, sc.record)
                            if sc.short:
                                self.cm.queue_repair(txn, sc.digest, buf.flow)
                                self.chunks.repair_wakeup.set()
                    self.cm.drop_blocks(txn, ino, -(-size // self.block_size))
                    rec.size = size
                    rec.mtime_ns = max(rec.mtime_ns, mtime)
                    rec.ctime_ns = max(rec.ctime_ns, ctime)
                    self.ns.put(txn, ino, rec)
                    if final:
                        queued_image = self.images.record_content(txn, ino, size)
                failed = False
            except* (FsError, IndexFailure) as group:
                raise group.exceptions[0] from None
            finally:
                buf.flush_failed = failed
                self.chunks.release([sc for sc in stored.values() if sc is not None])
                self.chunks.release(list(early.values()))
                self.loops.wake_garbage()
            buf.mark_flushed(snap, size)
        if queued_image:
            self.images.wake()

    async def flush(self, fh: int) -> None:
        if fh not in self.thumb_files:
            await self._flush(self.handle(fh).ino)

    async def fsync(self, fh: int) -> None:
        if fh not in self.thumb_files:
            await self._flush(self.handle(fh).ino)
            await self.chunks.sync()

    async def release(self, fh: int) -> None:
        if self.thumb_files.pop(fh, None) is not None:
            return
        h = self.handles.pop(fh, None)
        if h is None:
            return
        buf = self.buffers.get(h.ino)
        if buf is None:
            return
        try:
            if not buf.flush_failed:   # else close() reported the failure: keep the old content
                await self._flush(h.ino)
        finally:
            buf.open_count -= 1
            if buf.needs_flush and buf.open_count == 0:
                if buf.flush_failed:
                    log.warning("inode %d: changes dropped after a failed flush; the previous "
                                "content is kept", h.ino)
                else:
                    log.error("inode %d: unflushed data dropped at release", h.ino)
                buf.dirty.clear()
                buf.meta_dirty = False
                self.drop_kernel_cache(h.ino)   # it still holds the written pages
            self._drop_buffer_if_idle(h.ino)
