"""The PNG of a stored thumbnail row: its source chunk loaded and rendered, recently used kept.

Thumbnails are stored compactly (one WebP source per content,
gffs.images.thumbsource) and rendered as PNG when a file manager needs one:
for ``.sh_thumbnails`` opens and for the viewer's own cache. Rendering runs in
a worker thread (Pillow releases the GIL while it decodes and encodes, so a
listing's thumbnails use every core); the last :data:`CACHE_BYTES` of PNGs
are kept, so a second window or a scroll back costs nothing.

A row records the PNG's exact length (``st_size``), measured by the analysis
with the same rendering. Only a changed Pillow or zlib could render another
length: a shorter PNG is padded with a text chunk to the recorded length, a
longer one is served as it is (logged once).
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import trio

from gffs.chunks.store import ChunkStore
from gffs.index.images import ThumbnailRow

log = logging.getLogger(__name__)

CACHE_BYTES = 16 << 20


class ThumbnailPngs:
    def __init__(self, chunks: ChunkStore) -> None:
        self.chunks = chunks
        self._cache: OrderedDict[tuple[bytes, int, int], bytes] = OrderedDict()
        self._cached_bytes = 0
        self._warned = False

    async def png(self, row: ThumbnailRow) -> bytes:
        """The PNG (content-level text chunks only) a thumbnail row stands for.

        Raises ValueError when the stored chunk is no thumbnail."""
        key = (row.digest, row.width, row.height)
        png = self._cache.get(key)
        if png is not None:
            self._cache.move_to_end(key)
            return png
        stored = bytes(await self.chunks.load(row.digest))
        png = await trio.to_thread.run_sync(_render, stored, row.width, row.height, row.length)
        if len(png) != row.length and not self._warned:
            self._warned = True
            log.warning("a thumbnail rendered to %d bytes, its row says %d (Pillow or zlib "
                        "changed?): served anyway", len(png), row.length)
        self._keep(key, png)
        return png

    def _keep(self, key: tuple[bytes, int, int], png: bytes) -> None:
        old = self._cache.pop(key, None)   # two listings rendered it at once
        self._cached_bytes += len(png) - (len(old) if old is not None else 0)
        self._cache[key] = png
        while self._cached_bytes > CACHE_BYTES and self._cache:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= len(old)


def _render(stored: bytes, width: int, height: int, length: int) -> bytes:
    """In a worker thread: Pillow is imported at the first render, not at mount time."""
    from gffs.images.thumbsource import served_png
    return served_png(stored, width, height, length)
