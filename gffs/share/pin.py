"""`gffs-admin flow pin FLOW`: keep a full copy of an imported flow on the store's own backends.

An imported chunk's only copy is on the untrusted share source, so it counts toward no
policy. Pinning queues every chunk of the flow (file blocks and thumbnails) in the
repair queue with the flow's name; the repair machinery then fetches each from the
share, verifies it and puts it where the flow's placement wants it, exactly as it
restores any chunk short of copies. The share location stays on record as one more
place to read from. What cannot be fetched now (publisher gone) stays queued: the
daemon's repair loop goes on with it, and a rerun reports what is left.
"""

from __future__ import annotations

import stat
from typing import Any

import trio

from gffs.index import ROOT_INO, ChunkMap, Namespace
from gffs.index.images import ImageIndex
from gffs.maintenance.jobs import EXIT_FAILED, JobRefused, job
from gffs.maintenance.progress import Progress


def flow_chunks(store, flow: str) -> set[bytes]:
    """Every chunk digest the flow's files and their thumbnails reference."""
    ns, cm, images = Namespace(store.index), ChunkMap(store.index), ImageIndex(store.index)
    out: set[bytes] = set()
    with store.index.read() as txn:
        top = ns.lookup(txn, ROOT_INO, flow.encode())
        if top is None:
            raise JobRefused(f"no flow named {flow!r}")
        todo = [top]
        while todo:
            ino = todo.pop()
            for _cookie, _name, child in ns.entries(txn, ino):
                mode = ns.get(txn, child).mode
                if stat.S_ISDIR(mode):
                    todo.append(child)
                elif stat.S_ISREG(mode):
                    out.update(d for _i, d in cm.blocks(txn, child))
                    content_id = images.content_id(txn, child)
                    if content_id:
                        out.update(r.digest for r in images.thumbnails(txn, content_id).values())
    return out


@job("flow-pin")
async def pin(store, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Copy every chunk of ``args["flow"]`` to its placement's backends (via the repair queue)."""
    if store.read_only:
        raise JobRefused("the store is mounted read-only")
    flow = args["flow"]
    digests = flow_chunks(store, flow)
    cm = store.chunks.chunkmap
    with store.index.write() as txn:
        for digest in digests:
            cm.queue_repair(txn, digest, flow)
    progress.begin(f"pinning {flow}", total_items=len(digests), unit="chunks")
    done = 0
    with trio.move_on_after(args.get("time_limit") or 3600):
        while True:
            repaired, pending = await store.chunks.repair(limit=len(digests) + 200)
            done += repaired
            progress.advance(repaired)
            if not pending or not repaired:
                break
    await store.index.durable()
    with store.index.read() as txn:
        left = sum(1 for d in digests if txn.get(d, db=store.index.db["repair"]) is not None)
    result: dict[str, Any] = {"flow": flow, "chunks": len(digests), "left": left}
    if left:
        result["exit_code"] = EXIT_FAILED
    return result
