"""Write buffers of open files: dirty fixed-size blocks held until flush.

One buffer per inode (every handle of the inode shares it). A block's version
counter lets a flush that raced with new writes keep the newer bytes dirty.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from gffs.chunks.store import StoredChunk


@dataclass
class FileBuffer:
    ino: int
    size: int                     # live size, including unflushed writes
    committed_size: int           # size recorded in the index
    mtime_ns: int = 0
    ctime_ns: int = 0
    meta_dirty: bool = False      # size or times differ from the index
    flow: str | None = None       # placement policy of the flow the file lives in
    open_count: int = 0
    try_compress: bool | None = None   # decided from the file's first bytes
    # block index -> content; a bytes value is a frozen full block (shared with its
    # write-behind store), turned back into a bytearray only if written again
    dirty: dict[int, bytearray | bytes] = field(default_factory=dict)
    versions: dict[int, int] = field(default_factory=dict)
    lock: trio.Lock = field(default_factory=trio.Lock)
    # write-behind: full blocks stored while the file is still being written
    stored_early: dict[int, tuple[int, StoredChunk]] = field(default_factory=dict)
    storing: dict[int, trio.Event] = field(default_factory=dict)
    # the last flush failed: the close that reported it keeps the previous content,
    # so the release after it must not store the changes after all
    flush_failed: bool = False
    read_pos: int = -1            # end of the last read, to detect sequential reads
    ahead_of: int = -1            # first block the last read-ahead started from

    @property
    def dirty_bytes(self) -> int:
        return sum(len(b) for b in self.dirty.values())

    @property
    def needs_flush(self) -> bool:
        return bool(self.dirty) or self.meta_dirty

    def writable_block(self, idx: int) -> bytearray | None:
        """The dirty block *idx* as a mutable buffer (unfreezing it), or None."""
        block = self.dirty.get(idx)
        if isinstance(block, bytes):
            block = self.dirty[idx] = bytearray(block)
        return block

    def touch(self, block_idx: int) -> None:
        self.versions[block_idx] = self.versions.get(block_idx, 0) + 1

    def snapshot(self) -> dict[int, tuple[bytes, int]]:
        """Immutable copies of the dirty blocks with their versions, for a flush."""
        return {idx: (bytes(b), self.versions.get(idx, 0)) for idx, b in self.dirty.items()}

    def mark_flushed(self, snap: dict[int, tuple[bytes, int]], size: int) -> None:
        for idx, (_, version) in snap.items():
            if self.versions.get(idx, 0) == version:
                self.dirty.pop(idx, None)
        self.committed_size = size
        self.meta_dirty = self.size != size or bool(self.dirty)

    def truncate(self, size: int, block_size: int) -> None:
        """Drop buffered bytes at or past *size*."""
        for idx in [i for i in self.dirty if i * block_size >= size]:
            del self.dirty[idx]
            self.touch(idx)
        last = size // block_size
        if last in self.dirty and len(self.dirty[last]) > size - last * block_size:
            self.dirty[last] = self.dirty[last][:size - last * block_size]
            self.touch(last)
        self.size = size
        self.meta_dirty = True
