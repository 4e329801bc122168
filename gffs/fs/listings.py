"""Replies of directory listings kept in memory, so listing a directory again does no index work.

``ls -l`` of a directory of 100,000 files costs the daemon an index read and an
attribute struct per entry; the kernel keeps no listing of a FUSE directory
(pyfuse3 cannot ask it to). A listing read to its end is kept here: its entries
with the attributes the reply carried, in cookie order. It answers a later
listing, from any offset, while nothing it shows has changed: every put or
delete in the tables an entry is read from (:data:`gffs.index.env.LISTING_TABLES`)
moves :attr:`Index.listing_writes`, and a listing filled at another version is
dropped. Files with an open buffer (sizes and times not yet in the index) are
answered fresh by the caller. This holds while the mount is the index's only
writer, as it is: admin commands run inside the daemon while it is mounted.

At most :data:`CACHE_ENTRIES` entries over all directories (about 400 bytes
each), least recently listed directory dropped first.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import dataclass, field

import pyfuse3

from gffs.index.commit import WriteWatch

CACHE_ENTRIES = 120_000   # about 48 MB: one directory of 100,000 files and some


@dataclass(slots=True)
class DirListing:
    """One directory's entries in cookie order, as of *version* of the watch."""

    version: int
    cookies: list[int] = field(default_factory=list)
    entries: list[tuple[bytes, int, pyfuse3.EntryAttributes]] = field(default_factory=list)
    complete: bool = False
    counted: int = 0          # entries the cache's size counts (the rest: a reply in progress)

    def after(self, cookie: int) -> int:
        """Position of the first entry listed after *cookie*."""
        return bisect.bisect_right(self.cookies, cookie)


class ListingCache:
    def __init__(self, watch: WriteWatch, limit: int = CACHE_ENTRIES) -> None:
        self.watch = watch
        self.limit = limit
        self._dirs: OrderedDict[int, DirListing] = OrderedDict()
        self._size = 0

    def current(self, ino: int) -> DirListing | None:
        """The complete listing of *ino* if nothing it shows changed since it was read."""
        d = self._dirs.get(ino)
        if d is None or not d.complete:
            return None
        if d.version != self.watch.version:
            self._drop(ino)
            return None
        self._dirs.move_to_end(ino)
        return d

    def filling(self, ino: int, start: int) -> DirListing | None:
        """Where a reply from offset *start* adds its entries: a new listing at offset 0,
        the one being read when *start* continues it, else None (nothing is kept)."""
        d = self._dirs.get(ino)
        if (d is not None and not d.complete and d.version == self.watch.version
                and d.cookies and d.cookies[-1] == start):
            return d
        if start != 0:
            return None
        if d is not None:
            self._drop(ino)
        d = DirListing(self.watch.version)
        self._dirs[ino] = d
        return d

    def filled(self, ino: int, d: DirListing, at_end: bool) -> None:
        """A reply added its entries to *d*; *at_end*: the directory has no more."""
        if self._dirs.get(ino) is not d:
            return
        self._size += len(d.entries) - d.counted
        d.counted = len(d.entries)
        if d.version != self.watch.version:   # changed while the reply was made
            self._drop(ino)
            return
        if d.counted > self.limit:           # never fits: others stay
            self._drop(ino)
            return
        d.complete = at_end
        self._dirs.move_to_end(ino)
        while self._size > self.limit and self._dirs:
            self._drop(next(iter(self._dirs)))

    def discard(self, ino: int) -> None:
        """Keep nothing of *ino* (a reply failed, or showed what the index does not hold)."""
        if ino in self._dirs:
            self._drop(ino)

    def _drop(self, ino: int) -> None:
        self._size -= self._dirs.pop(ino).counted
