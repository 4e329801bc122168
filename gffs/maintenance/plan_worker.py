"""Rebalance's (and drain's) planning runs in a worker process.

The plan walks every flow's namespace and the whole chunk table: in the daemon
that faulted most of the index into the daemon's mapping (its peak RSS reached
324 MB at a million files) and held every move of the plan at once. Here a worker
(``python -m gffs.maintenance.plan_worker``, machinery in index_worker.py) opens
the index read-only and runs :func:`rebalance.make_plan` against a snapshot of the
daemon's placement (policies, draining backends, which backends are up); it
sends progress ticks while it plans, then the plan's summary, then, each time the
daemon asks, the next batch of moves in the order the run takes them (after the
checkpoint cursor, wrapping round). So the daemon holds one batch at a time while
it moves chunks; the worker keeps the plan until the run ends and is killed then
(or when the run is cancelled). A worker that dies is a :class:`PlanFailed` of this run.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from gffs.maintenance.index_worker import IndexWorker, Ticker, WorkerFailed, serve
from gffs.maintenance.progress import Progress
from gffs.placement import Placement
from gffs.placement.policy import FlowPolicy

BATCH = 4096        # moves per message


class PlanFailed(WorkerFailed):
    """The planning worker process failed or died: this run moved only what it had done."""


@dataclass(frozen=True)
class BackendTraits:
    """What placement asks of a backend, without the backend (picklable)."""

    name: str
    read_only: bool
    trusted: bool
    deferred: bool
    is_local: bool


class _FrozenHealth:
    """The daemon's view of which backends are up when the plan was asked for."""

    def __init__(self, up: frozenset[str]) -> None:
        self.up = up

    def available(self, name: str) -> bool:
        return name in self.up

    writable = available


@dataclass(frozen=True)
class PlacementSnapshot:
    """The daemon's placement as data, rebuilt into a :class:`Placement` in the worker."""

    backends: tuple[BackendTraits, ...]
    default: FlowPolicy
    flows: dict[str, FlowPolicy]
    draining: frozenset[str]
    up: frozenset[str]

    @classmethod
    def of(cls, placement: Placement) -> "PlacementSnapshot":
        traits = tuple(BackendTraits(b.name, b.read_only, b.trusted, b.deferred,
                                     placement.is_local(b.name)) for b in placement.backends)
        return cls(traits, placement.default, dict(placement.flows),
                   frozenset(placement.draining),
                   frozenset(t.name for t in traits if placement.health.available(t.name)))

    def placement(self) -> Placement:
        p = Placement(list(self.backends), self.default.copies,  # type: ignore[arg-type]
                      flows=self.flows, weights=self.default.weights,
                      default_backends=self.default.backends,
                      health=_FrozenHealth(self.up))  # type: ignore[arg-type]
        p.draining = set(self.draining)
        return p


def _serve(setup: dict, receive: Callable[[], Any], send: Callable[[Any], None]) -> None:
    from gffs.index import Index
    from gffs.maintenance.rebalance import make_plan, ordered

    index = Index(Path(setup["index"]), readonly=True)
    with index.read() as txn:       # the rows planning reads: the progress total
        rows = sum(txn.stat(index.db[name])["entries"] for name in ("inodes", "chunks"))
    send(("rows", rows))
    tick = Ticker(lambda n: send(("tick", n)))
    plan = make_plan(index, setup["placement"].placement(), setup["configured"],
                     setup["flow"], tick=tick)
    tick.flush()
    send(("plan", plan.summary()))
    todo = ordered(plan.moves, setup["cursor"])
    plan.moves = []
    batch = setup["batch"]
    for start in range(0, len(todo), batch):
        if receive() is None:
            return
        send(("moves", todo[start:start + batch]))
    if receive() is not None:
        send(("moves", []))


def worker_main() -> int:
    """``python -m gffs.maintenance.plan_worker``: one plan, served batch by batch."""
    return serve(_serve)


class Planner(IndexWorker):
    """The daemon's handle: ``async with Planner(...) as p``, :meth:`plan`, then
    ``async for batch in p.moves()``."""

    command = [sys.executable, "-m", "gffs.maintenance.plan_worker"]  # (tests replace it)
    failure = PlanFailed
    what = "rebalance's planning worker process"
    consequence = "this run has no plan; what it moved before stays moved"

    def __init__(self, index_dir: Path, placement: Placement, configured: set[str],
                 flow: str | None, cursor: str | None, env: Any = None,
                 batch: int = BATCH) -> None:
        super().__init__({"index": str(index_dir), "placement": PlacementSnapshot.of(placement),
                          "configured": set(configured), "flow": flow, "cursor": cursor,
                          "batch": batch}, env=env)

    async def plan(self, progress: Progress | None = None) -> Any:
        """The plan's summary (a rebalance.PlanSummary); *progress* shows the planning
        (inodes and chunk rows read) as its own phase."""
        while True:
            kind, payload = await self.receive()
            if kind == "plan":
                return payload
            if progress is None:
                continue
            if kind == "rows":
                progress.begin("planning", total_items=payload, unit="rows")
            else:
                progress.advance(payload)

    async def moves(self) -> AsyncIterator[list]:
        """The plan's moves in run order, a batch at a time."""
        while True:
            await self.send("next")
            _kind, batch = await self.receive()
            if not batch:
                return
            yield batch


if __name__ == "__main__":
    sys.exit(worker_main())
