"""The xattr view of image facts: user.gf.image.* read from the index, never from the image.

The facts are computed by gffs/images/facts.py (analysis queue and worker).
"""

from __future__ import annotations

import errno

from gffs.errors import FsError
from gffs.index import Index
from gffs.index.images import ImageIndex

PREFIX = b"user.gf.image."


class ImageXattrs:
    """user.gf.image.* of a file: the facts of its content, read-only."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self.images = ImageIndex(index)

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

    def names(self, txn, cid: bytes | None) -> list[bytes]:
        """Fact attribute names of a content (inside the caller's listxattr transaction)."""
        facts = (self.images.facts(txn, cid) if cid is not None else None) or {}
        return [PREFIX + k.encode() for k in sorted(facts)]

    @staticmethod
    def refuse_change() -> None:
        raise FsError(errno.EPERM, "user.gf.image.*, user.gf.thumbnail.* and user.gf.stats.* "
                      "are computed by gffs: read-only")
