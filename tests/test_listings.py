"""gffs.fs.listings.ListingCache: what is kept, for how long, and within what memory."""

from __future__ import annotations

import pyfuse3

from gffs.fs.listings import ListingCache
from gffs.index.commit import WriteWatch


def fill(cache: ListingCache, ino: int, n: int, replies: int = 2) -> None:
    """List directory *ino* of *n* entries in *replies* replies, like Operations.readdir."""
    start = 0
    per = -(-n // replies)
    for r in range(replies):
        d = cache.filling(ino, start)
        assert d is not None
        for k in range(r * per, min(n, (r + 1) * per)):
            d.cookies.append(k + 1)
            d.entries.append((b"e%d" % k, 100 + k, pyfuse3.EntryAttributes()))
        start = d.cookies[-1]
        cache.filled(ino, d, at_end=r == replies - 1)


def test_kept_until_a_watched_write_and_resumed_at_any_cookie():
    watch = WriteWatch(frozenset({3}))
    cache = ListingCache(watch)
    fill(cache, 7, 5)
    kept = cache.current(7)
    assert kept is not None and kept.cookies == [1, 2, 3, 4, 5]
    assert kept.after(0) == 0 and kept.after(3) == 3 and kept.after(5) == 5
    watch.note(4)                      # another table: still current
    assert cache.current(7) is kept
    watch.note(3)
    assert cache.current(7) is None


def test_a_listing_changed_while_read_or_not_read_to_its_end_is_not_kept():
    watch = WriteWatch(frozenset({3}))
    cache = ListingCache(watch)
    d = cache.filling(7, 0)
    d.cookies.append(1)
    d.entries.append((b"a", 100, pyfuse3.EntryAttributes()))
    cache.filled(7, d, at_end=False)
    assert cache.current(7) is None                 # half read
    assert cache.filling(7, 2) is None              # not where the kept half ends
    watch.note(3)
    assert cache.filling(7, 1) is None              # changed since: no continuation
    d = cache.filling(7, 0)
    d.cookies.append(1)
    d.entries.append((b"a", 100, pyfuse3.EntryAttributes()))
    watch.note(3)                                   # a change during the reply
    cache.filled(7, d, at_end=True)
    assert cache.current(7) is None


def test_memory_is_bounded_least_recently_listed_dropped_first():
    cache = ListingCache(WriteWatch(frozenset()), limit=10)
    fill(cache, 1, 4)
    fill(cache, 2, 4)
    assert cache.current(1) is not None             # 1 is now the most recent
    fill(cache, 3, 4)                               # 12 > 10: the oldest (2) goes
    assert cache.current(2) is None
    assert cache.current(1) is not None and cache.current(3) is not None
    fill(cache, 4, 11)          # bigger than the limit: not kept (its first half made room)
    assert cache.current(4) is None and cache.current(1) is None
    assert cache.current(3) is not None and cache._size == 4
    cache.discard(3)
    assert cache._size == 0
