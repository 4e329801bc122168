"""Rebalance: bring every chunk to where the current placement policy wants it.

Plan, then act. The plan compares each live chunk's recorded copies with the
backends its flows' policies want (Placement.wanted, minus draining backends):
copies to add, copies no policy wants. Only those chunks move, so a balanced
store moves nothing. Each move is ChunkMover's copy → verify → record → check
count → delete. The plan is refused before anything changes when a policy
cannot be met or a destination would fill up.

The plan is made in a worker process (plan_worker.py), which sends the daemon
its summary and then the moves a batch at a time.

Checkpoint: the locations in the index are the progress (a rerun plans again
and finds the moved chunks done); a cursor in `meta` makes a stopped run
continue after the last chunk it finished, wrapping round to the start.
"""

from __future__ import annotations

import logging
import stat
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

import trio

from gffs.chunks.moves import ChunkMover, MoveFailed
from gffs.index import ROOT_INO, ChunkMap, Index, Namespace
from gffs.index.env import COPY_CENSUS, REBALANCE_CURSOR
from gffs.index.errors import NotFound
from gffs.maintenance.jobs import EXIT_FAILED, EXIT_LIMIT, JobRefused, job
from gffs.maintenance.plan_worker import Planner
from gffs.maintenance.progress import Progress, human_bytes
from gffs.placement import Placement
from gffs.store import Store
from gffs_backends.base import BackendError

log = logging.getLogger(__name__)


WINDOW = 16            # chunks in flight at once (each uses the per-backend limits)
FREE_RESERVE = 0.02    # a destination must keep this share of its space free
PLAN_WINDOW = 4096     # chunk rows per read transaction while planning


@dataclass
class ChunkMove:
    digest: bytes
    size: int                 # stored bytes of one copy
    add: list[str]
    remove: list[str]
    wanted: set[str]
    required: int             # trusted copies that must stay on wanted backends
    source: str | None        # where the bytes would be read from


@dataclass
class PlanSummary:
    """What a plan amounts to, without its moves: what the daemon keeps of a plan made in
    the planning worker (plan_worker.py), which sends the moves in batches."""

    chunks_checked: int
    moves: int                # chunks to move
    copy_bytes: int
    pairs: dict[str, int]     # bytes per "source → destination" (see Plan.pairs)
    bytes_to: dict[str, int]  # bytes per destination
    unreachable: int
    first_unreachable: str | None
    census: dict


@dataclass
class Plan:
    moves: list[ChunkMove] = field(default_factory=list)
    chunks_checked: int = 0
    unreachable: list[str] = field(default_factory=list)  # chunks with no configured copy
    under: int = 0            # chunks with fewer trusted copies on wanted backends than required
    over: int = 0             # chunks with a copy no policy of theirs wants
    flows: dict[str, dict[str, int]] = field(default_factory=dict)   # files, bytes per flow

    def census(self) -> dict:
        """What `gffs-admin status` shows as copies short / beyond (saved in meta)."""
        return {"under": self.under, "over": self.over, "chunks": self.chunks_checked,
                "flows": self.flows, "at": time.time()}

    def summary(self) -> PlanSummary:
        return PlanSummary(self.chunks_checked, len(self.moves), self.copy_bytes, self.pairs(),
                           self.bytes_to(), len(self.unreachable),
                           self.unreachable[0] if self.unreachable else None, self.census())

    @property
    def copy_bytes(self) -> int:
        return sum(m.size * len(m.add) for m in self.moves)

    def pairs(self) -> dict[str, int]:
        """Bytes per "source → destination", and per "source → (deleted)"."""
        out: dict[str, int] = defaultdict(int)
        for m in self.moves:
            for dest in m.add:
                out[f"{m.source} → {dest}"] += m.size
            for gone in m.remove:
                out[f"{gone} → (deleted)"] += m.size
        return dict(out)

    def bytes_to(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for m in self.moves:
            for dest in m.add:
                out[dest] += m.size
        return dict(out)


def chunk_flows(index: Index, totals: dict[str, dict[str, int]] | None = None,
                own_policy: set[str] | frozenset[str] = frozenset(), member_of: str | None = None,
                tick: Callable[[], None] = lambda: None
                ) -> tuple[dict[bytes, frozenset[str | None]], set[bytes] | None]:
    """Which policies each chunk must satisfy (dedup and hard links can put one in several
    flows), and with *member_of* the chunks that flow uses.

    Only chunks some flow of *own_policy* (flows with their own placement policy)
    references get an entry: its value names those flows, plus None when a flow
    following the default policy references it too. A chunk with no entry follows
    the default policy alone, which is what every other flow would ask for, so a
    store where no flow has its own policy keeps no per-chunk state at all (a
    million chunks used to cost a dict slot and a key each, over 100 MB in the
    daemon). Flows are walked in short read transactions (one per flow), so this
    can run in a worker thread beside the daemon's writers. *totals*, if given,
    receives each flow's files and bytes; *tick* is called once per inode visited.
    """
    ns, cm = Namespace(index), ChunkMap(index)
    flows: dict[bytes, frozenset[str | None]] = {}
    interned: dict[frozenset[str | None], frozenset[str | None]] = {}
    members: set[bytes] | None = set() if member_of is not None else None
    with index.read() as txn:
        tops = [(name.decode(errors="surrogateescape"), ino)
                for _c, name, ino in ns.entries(txn, ROOT_INO)]
    # flows with their own policy first: the default-policy walks then only mark those rows
    tops.sort(key=lambda t: t[0] not in own_policy)
    for flow, top in tops:
        key: str | None = flow if flow in own_policy else None
        with index.read() as txn:
            stack, seen = [top], set()
            while stack:
                cur = stack.pop()
                tick()
                try:
                    rec = ns.get(txn, cur)
                except NotFound:        # removed between the listing and this snapshot
                    continue
                if stat.S_ISDIR(rec.mode) or rec.nlink > 1:
                    if cur in seen:     # a hard link met twice counts once
                        continue
                    seen.add(cur)
                if stat.S_ISDIR(rec.mode):
                    stack.extend(child for _c2, _n, child in ns.entries(txn, cur))
                elif stat.S_ISREG(rec.mode):
                    if totals is not None:
                        t = totals.setdefault(flow, {"files": 0, "bytes": 0})
                        t["files"] += 1
                        t["bytes"] += rec.size
                    if key is None and not flows and flow != member_of:
                        continue        # nothing to mark: the default policy is implied
                    for _idx, digest in cm.blocks(txn, cur):
                        if flow == member_of:
                            members.add(digest)
                        have = flows.get(digest)
                        if have is None:
                            if key is None:
                                continue
                            have = frozenset()
                        if key not in have:
                            both = have | {key}
                            flows[digest] = interned.setdefault(both, both)
    return flows, members


def wanted_copies(placement: Placement, digest: bytes,
                  flows: frozenset[str] | set[str | None] | None) -> tuple[list[str], int]:
    """Backends every flow holding the chunk wants, and the copies the strictest asks for."""
    policies = flows or {None}
    wanted: list[str] = []
    for flow in sorted(policies, key=lambda f: f or ""):
        wanted += [n for n in placement.wanted(digest, flow) if n not in wanted]
    return wanted, max(placement.policy_for(f).copies for f in policies)


def make_plan(index: Index, placement: Placement, configured: set[str] | dict,
              only_flow: str | None = None, window: int = PLAN_WINDOW,
              tick: Callable[[], None] = lambda: None) -> Plan:
    """What to move; blocking: the daemon runs it in the planning worker process
    (plan_worker.py), so that its scans map the index there, not in the daemon.

    The chunk table is read in windows of *window* keys, each in its own short
    read transaction, so no snapshot is pinned for the whole plan. With
    *only_flow*, only chunks that flow uses are planned, but each against every
    flow holding it: a chunk shared with another flow keeps the copies that
    flow's policy wants too. *tick* is called per inode and chunk row read (progress).
    """
    plan = Plan()
    flows, members = chunk_flows(index, plan.flows, set(placement.flows), only_flow, tick)
    for digest, rec in ChunkMap.scan_chunks(index, window):
        tick()
        if members is not None and digest not in members:
            continue
        in_flows = flows.get(digest)
        plan.chunks_checked += 1
        wanted, required = wanted_copies(placement, digest, in_flows)
        have = [loc.backend for loc in rec.locations]
        add = [n for n in wanted if n not in have]
        remove = [n for n in have if n not in wanted]
        plan.under += sum(placement.trusted(n) for n in set(have) & set(wanted)) < required
        plan.over += bool(remove)
        if not add and not remove:
            continue
        readable = [n for n in have if n in configured]
        if add and not readable:
            plan.unreachable.append(digest.hex())
            continue
        source = placement.read_order(readable)[0] if readable else None
        plan.moves.append(ChunkMove(digest, rec.stored_size, add, remove, set(wanted),
                                    required, source))
    return plan


async def check_space(store: Store, plan: PlanSummary) -> None:
    """Refuse a plan that would fill a destination (where the backend knows its space)."""
    for name, needed in sorted(plan.bytes_to.items()):
        try:
            cap = await store.chunks.call(store.backends[name], "capacity")
        except BackendError as exc:
            raise JobRefused(f"cannot ask {name} for its free space: {exc}") from None
        if cap is None or not cap.total:
            continue
        if cap.free - needed < cap.total * FREE_RESERVE:
            raise JobRefused(f"the plan needs {human_bytes(needed)} on {name}, which has "
                             f"{human_bytes(cap.free)} free of {human_bytes(cap.total)}; "
                             "add space or change the weights")


def ordered(moves: list[ChunkMove], cursor: str | None) -> list[ChunkMove]:
    """Continue after the cursor, then wrap round to the chunks before it."""
    moves = sorted(moves, key=lambda m: m.digest)
    if not cursor:
        return moves
    start = next((i for i, m in enumerate(moves) if m.digest.hex() > cursor), len(moves))
    return moves[start:] + moves[:start]


async def execute(store: Store, plan: PlanSummary, batches: AsyncIterator[list[ChunkMove]],
                  mover: ChunkMover, progress: Progress, *,
                  time_limit: float | None, size_limit: int | None) -> dict:
    """Carry out the moves of *batches* (the plan's, in run order, a batch at a time)."""
    index = store.index
    deadline = time.monotonic() + time_limit if time_limit else None
    done = {"chunks": 0, "copied_bytes": 0, "copies_added": 0, "copies_removed": 0}
    failures: list[str] = []
    stopped = None
    progress.begin("rebalance", plan.moves, plan.copy_bytes, unit="chunks")

    async def one(move: ChunkMove) -> None:
        store.chunks.pin([move.digest])
        try:
            if move.add:
                stored = await mover.read_stored(move.digest)
                for dest in move.add:
                    if not await mover.add_copy(move.digest, dest, stored):
                        return  # the chunk was deleted meanwhile: nothing left to move
                    done["copies_added"] += 1
                    done["copied_bytes"] += move.size
                    progress.advance(nbytes=move.size)
            if move.remove:
                gone = await mover.remove_copies(move.digest, set(move.remove), move.wanted,
                                                 move.required)
                done["copies_removed"] += len(gone)
                if len(gone) < len(move.remove):
                    failures.append(f"{move.digest.hex()[:16]}: kept copies on "
                                    f"{', '.join(sorted(set(move.remove) - set(gone)))}")
            with index.write() as txn:
                store.chunks.chunkmap.done_repair(txn, move.digest)
            done["chunks"] += 1
        except MoveFailed as exc:
            failures.append(str(exc))
            log.warning("rebalance: %s", exc)
        finally:
            store.chunks.unpin([move.digest])
            progress.advance(items=1)

    async for todo in batches:
        for start in range(0, len(todo), WINDOW):
            if deadline is not None and time.monotonic() >= deadline:
                stopped = "time-limit"
            elif size_limit is not None and done["copied_bytes"] >= size_limit:
                stopped = "size-limit"
            if stopped:
                break
            window = todo[start:start + WINDOW]
            async with trio.open_nursery() as nursery:
                for move in window:
                    nursery.start_soon(one, move)
            with index.write() as txn:
                index.set_meta_json(txn, REBALANCE_CURSOR, window[-1].digest.hex())
        if stopped:
            break
    if not stopped:
        with index.write() as txn:
            index.set_meta_json(txn, REBALANCE_CURSOR, None)
    progress.finish_phase()
    return {**done, "failures": failures, "stopped": stopped}


def _limits(args: dict) -> tuple[float | None, int | None]:
    t, s = args.get("time_limit"), args.get("size_limit")
    return (float(t) if t else None), (int(s) if s else None)


@job("rebalance")
async def rebalance(store: Store, args: dict, progress: Progress) -> dict:
    """Move chunks to where the policy wants them. args: dry_run, flow, time_limit, size_limit."""
    mover = ChunkMover(store.chunks)
    settled = await mover.settle() if not args.get("dry_run") else {}
    flow = args.get("flow")
    if flow is not None and flow not in _flow_names(store):
        raise JobRefused(f"there is no flow named {flow!r}")
    index = store.index
    with index.read() as txn:
        cursor = index.meta_json(txn, REBALANCE_CURSOR)
    async with Planner(index.path, store.placement, set(store.backends), flow, cursor,
                       index.env) as planner:
        plan = await planner.plan(progress)
        if flow is None:
            with index.write() as txn:
                index.set_meta_json(txn, COPY_CENSUS, plan.census)
        summary = {"chunks_checked": plan.chunks_checked, "chunks_to_move": plan.moves,
                   "bytes_to_copy": plan.copy_bytes, "plan": plan.pairs,
                   "unreachable": plan.unreachable, "settled": settled,
                   "draining": sorted(store.placement.draining)}
        if plan.unreachable:
            progress.note(f"{plan.unreachable} chunks have no copy on a configured backend "
                          f"(first: {plan.first_unreachable[:16]}); they cannot move")
        if args.get("dry_run"):
            return {**summary, "dry_run": True}
        await check_space(store, plan)
        time_limit, size_limit = _limits(args)
        started = time.monotonic()
        outcome = await execute(store, plan, planner.moves(), mover, progress,
                                time_limit=time_limit, size_limit=size_limit)
    if not outcome["stopped"] and flow is None:   # encrypt turned on: plaintext copies sealed
        from gffs.maintenance.rotate import migrate
        left = None if size_limit is None else max(size_limit - outcome["copied_bytes"], 1)
        sealing = await migrate(store, progress, time_limit and started + time_limit, left)
        if sealing:
            outcome["sealing"] = sealing
            outcome["stopped"] = sealing["stopped"]
            outcome["failures"] += sealing["failures"]
    result = {**summary, **outcome}
    if outcome["stopped"]:
        result["exit_code"] = EXIT_LIMIT
    elif outcome["failures"] or plan.unreachable:
        result["exit_code"] = EXIT_FAILED
    return result


def _flow_names(store: Store) -> set[str]:
    ns = Namespace(store.index)
    with store.index.read() as txn:
        return {name.decode(errors="surrogateescape") for _c, name, _i in ns.entries(txn, ROOT_INO)}
