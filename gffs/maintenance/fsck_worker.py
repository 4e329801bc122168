"""Index scans of fsck run in a worker process that opens the index read-only.

At a million files the scans hold Python structures per inode and per chunk
(hundreds of MB, millions of GC-tracked tuples): in the daemon they raised its
RSS past 1 GB and every full garbage collection stalled the FUSE requests for
100 ms and more. The worker (``python -m gffs.maintenance.fsck_worker``, process
and pipe machinery in index_worker.py) keeps that heap, its collections and the
index pages it maps out of the daemon. Each phase reads in one read transaction
of its own, so it sees the committed state, repairs of the previous phase included.

The daemon sends the worker one phase name at a time and gets back progress
ticks and then the phase's compact result (its findings and what the repairs
need). Repairs stay in the daemon, through its normal write path. Cancelling the
phase kills the worker; a worker that dies or fails is a :class:`ScanFailed` of
this fsck run, never a daemon failure.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from gffs.maintenance.index_worker import IndexWorker, Ticker, WorkerFailed, serve
from gffs.maintenance.progress import Progress

PHASES = ("namespace", "views", "chunks")


class ScanFailed(WorkerFailed):
    """The worker process failed or died: this fsck run has no result (nothing was changed)."""


@dataclass(frozen=True)
class ScanContext:
    """What the chunk-table scan needs of the Store, picklable for the worker."""

    backends: frozenset[str]
    default_copies: int
    flow_copies: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, store: Any) -> "ScanContext":
        placement = store.placement
        return cls(frozenset(store.backends), placement.default.copies,
                   {name: p.copies for name, p in placement.flows.items()})

    def copies(self, flow: str | None) -> int:
        return self.flow_copies.get(flow or "", self.default_copies)


# the worker process ---------------------------------------------------------------------
def run_phase(index: Any, ctx: ScanContext, phase: str, tick: Ticker,
              state: dict[str, Any]) -> tuple[Any, Any]:
    """One phase's scan (in the worker, or in-process for tests); (result for the daemon, report)."""
    from gffs.maintenance.fsck_chunks import ChunkCheck
    from gffs.maintenance.fsck_namespace import NamespaceCheck
    from gffs.maintenance.fsck_report import Report
    from gffs.maintenance.fsck_views import ViewCheck

    report = Report()
    if phase == "namespace":
        ns = NamespaceCheck(index, report).scan(tick)
        state["ns"] = ns
        result: Any = ns.for_repair()
    elif phase == "views":
        result = ViewCheck(index, report).scan(tick)
    elif phase == "chunks":
        ns = state.get("ns")
        result = ChunkCheck.for_scan(index, ctx, report,
                                     ns.file_flow if ns is not None else lambda ino: None).scan(tick)
    else:
        raise ValueError(f"unknown fsck phase {phase!r}")
    tick.flush()
    return result, report


def _serve(setup: dict, receive: Callable[[], Any], send: Callable[[Any], None]) -> None:
    from gffs.index import Index

    index = Index(Path(setup["index"]), readonly=True)
    state: dict[str, Any] = {}
    tick = Ticker(lambda n: send(("tick", n)))
    while (phase := receive()) is not None:
        result, report = run_phase(index, setup["ctx"], phase, tick, state)
        send(("done", (result, report.findings, report.checked, report.notes)))


def worker_main() -> int:
    """``python -m gffs.maintenance.fsck_worker``: serve phases until stdin closes."""
    return serve(_serve)


# the daemon side --------------------------------------------------------------------------
class ScanWorker(IndexWorker):
    """The daemon's handle on one worker process: ``async with``, then :meth:`scan` per phase."""

    command = [sys.executable, "-m", "gffs.maintenance.fsck_worker"]  # (tests replace it)
    failure = ScanFailed
    what = "fsck's index scan worker process"
    consequence = "this fsck run has no result; the store was not changed by it"

    def __init__(self, index_dir: Path, ctx: ScanContext, env: Any = None) -> None:
        super().__init__({"index": str(index_dir), "ctx": ctx}, env=env)

    async def scan(self, progress: Progress, what: str, total: int | None, phase: str,
                   report: Any) -> Any:
        """Run *phase* in the worker as one progress phase; merge its findings into *report*."""
        progress.begin(what, total_items=total, unit="rows")
        await self.send(phase)
        while True:
            kind, payload = await self.receive()
            if kind == "tick":
                progress.advance(payload)
            else:
                result, findings, checked, notes = payload
                report.findings.extend(findings)
                for name, n in checked.items():
                    report.count(name, n)
                for message in notes:
                    report.note(message)
                return result


if __name__ == "__main__":
    sys.exit(worker_main())
