"""Drain: empty a backend before it is removed from the config.

The backend is marked *draining* in the index (so new writes and repairs stop
choosing it, in the daemon and in every later run), then a rebalance moves its
copies to where the policy now wants them. Draining is refused up front when a
policy could not keep its copy count without the backend.
"""

from __future__ import annotations

from gffs.index.env import DRAINING
from gffs.maintenance.jobs import JobRefused, job
from gffs.maintenance.progress import Progress
from gffs.maintenance.rebalance import rebalance
from gffs.store import Store


def _set_draining(store: Store, names: set[str]) -> None:
    with store.index.write() as txn:
        store.index.set_meta_json(txn, DRAINING, sorted(names) or None)
    store.placement.draining = set(names)


def copies_on(store: Store, name: str) -> int:
    """Copies recorded on *name*: the maintained counter (a scan only on a store without one)."""
    cm = store.chunks.chunkmap
    with store.index.read() as txn:
        counts = cm.backend_counts(txn)
    if counts is None:
        counts = cm.count_backends()
    return counts.get(name, {}).get("chunks", 0)


@job("drain")
async def drain(store: Store, args: dict, progress: Progress) -> dict:
    """args: backend, cancel (stop draining), plus rebalance's limits."""
    name = args["backend"]
    draining = set(store.placement.draining)
    if args.get("cancel"):
        if name not in draining:
            raise JobRefused(f"{name} is not being drained")
        _set_draining(store, draining - {name})
        return {"backend": name, "draining": False}
    if name not in store.backends:
        raise JobRefused(f"no backend named {name!r} in the config")
    problems = store.placement.drain_problems(draining | {name})
    if problems:
        raise JobRefused(f"draining {name} would break the placement: {problems[0]}")
    if not args.get("dry_run"):
        _set_draining(store, draining | {name})
    result = await rebalance(store, {k: v for k, v in args.items() if k != "backend"}, progress)
    left = copies_on(store, name)
    result.update(backend=name, copies_left=left,
                  drained=left == 0 and not args.get("dry_run"))
    if result["drained"]:
        progress.note(f"{name} holds no chunks any more: it can be removed from the config")
    return result
