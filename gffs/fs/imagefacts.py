"""What gffs knows about the images it stores, shown as read-only xattrs.

When a file is closed after writing, its content id is recorded; if no facts
exist for that content yet, the image is analysed in the background (one
worker thread, bounded input size) and the facts stored in the index. Reading
them (`getfattr -d`) never touches the image again. Broken or hostile files
are stored exactly as written and get ``user.gf.image.error`` instead.
"""

from __future__ import annotations

import errno
import logging
from typing import Awaitable, Callable

import trio

from gffs.errors import FsError
from gffs.index import Index
from gffs.index.images import ImageIndex

log = logging.getLogger(__name__)

PREFIX = b"user.gf.image."
MAX_ANALYSED_BYTES = 256 << 20   # larger files are not read back for analysis


def _analyzer() -> Callable[[bytes], dict[str, str]]:
    from gffs.images.analyze import analyze
    return analyze


class ImageFacts:
    def __init__(self, index: Index, read_file: Callable[[int, int], Awaitable[bytes]],
                 enabled: bool = True) -> None:
        self.index = index
        self.images = ImageIndex(index)
        self.enabled = enabled
        self._read_file = read_file          # (ino, size) -> the file's bytes
        self._limiter = trio.CapacityLimiter(1)
        self._in_flight: set[bytes] = set()
        self.nursery: trio.Nursery | None = None

    # hooks called by the filesystem --------------------------------------------------
    def record_content(self, txn, ino: int, size: int) -> None:
        """In the commit of a closing flush: remember what content the inode now has."""
        self.images.set_content_id(txn, ino, self.images.compute_content_id(txn, ino, size))

    def forget_inode(self, txn, ino: int) -> None:
        self.images.drop_inode(txn, ino)

    def closed(self, ino: int, size: int) -> None:
        """A file was closed after writing: analyse its content unless already known."""
        if not self.enabled or self.nursery is None:
            return
        with self.index.read() as txn:
            cid = self.images.content_id(txn, ino)
            if cid is None or cid in self._in_flight or self.images.facts(txn, cid) is not None:
                return
        self._in_flight.add(cid)
        self.nursery.start_soon(self._analyse, ino, size, cid)

    async def _analyse(self, ino: int, size: int, cid: bytes) -> None:
        try:
            if size > MAX_ANALYSED_BYTES:
                facts = {"error": f"file larger than {MAX_ANALYSED_BYTES >> 20} MiB: not analysed"}
            else:
                async with self._limiter:
                    data = await self._read_file(ino, size)
                    facts = await trio.to_thread.run_sync(_analyzer(), data)
            with self.index.write() as txn:
                self.images.set_facts(txn, cid, facts)
        except FsError as exc:  # the file went away or a chunk is unreadable: try next close
            log.debug("image analysis of inode %d skipped: %s", ino, exc)
        except Exception:
            log.exception("image analysis of inode %d failed", ino)
        finally:
            self._in_flight.discard(cid)

    # xattrs ----------------------------------------------------------------------------
    @staticmethod
    def is_ours(name: bytes) -> bool:
        return name.startswith(PREFIX)

    def get(self, ino: int, name: bytes) -> bytes:
        with self.index.read() as txn:
            facts = self.images.facts_of(txn, ino) or {}
        value = facts.get(name[len(PREFIX):].decode(errors="replace"))
        if value is None:
            raise FsError(errno.ENODATA)
        return value.encode()

    def names(self, ino: int) -> list[bytes]:
        with self.index.read() as txn:
            facts = self.images.facts_of(txn, ino) or {}
        return [PREFIX + k.encode() for k in sorted(facts)]

    @staticmethod
    def refuse_change() -> None:
        raise FsError(errno.EPERM, "user.gf.image.* attributes are read-only facts")
