"""Index scans of fsck run in a worker thread, inside one read transaction.

One read transaction gives a consistent snapshot however long the scan takes
(LMDB readers never block the daemon's writers), and the thread keeps the trio
loop — and with it the mounted filesystem — responsive. The scan reports
progress and notices cancellation (Ctrl-C, a dropped control connection)
through a :class:`Ticker`.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import trio

from gffs.maintenance.progress import Progress

T = TypeVar("T")


class Ticker:
    """Counts scanned rows; every few thousand, updates progress and checks for cancellation."""

    def __init__(self, progress: Progress, every: int = 4096) -> None:
        self.progress = progress
        self.every = every
        self.pending = 0

    def __call__(self, items: int = 1) -> None:
        self.pending += items
        if self.pending >= self.every:
            self.flush()

    def flush(self) -> None:
        n, self.pending = self.pending, 0
        trio.from_thread.run_sync(self.progress.advance, n)
        trio.from_thread.check_cancelled()


async def scan(progress: Progress, what: str, total: int | None,
               fn: Callable[[Ticker], T]) -> T:
    """Run ``fn(tick)`` in a worker thread as one progress phase; return its result."""
    progress.begin(what, total_items=total, unit="rows")

    def run() -> T:
        tick = Ticker(progress)
        out = fn(tick)
        tick.flush()
        return out

    return await trio.to_thread.run_sync(run)
