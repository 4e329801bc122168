"""The ``commit`` job: the mount daemon commits its open index group now.

With group commit, other processes read the index as last committed (at most about
a second behind the mount). `gffs-admin status` asks for this first, so what it
shows includes everything a program on the mount finished before it ran.
"""

from __future__ import annotations

from typing import Any

from gffs.maintenance.jobs import job
from gffs.maintenance.progress import Progress


@job("commit", writes=False)
async def commit(store, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    if not store.read_only:      # a read-only mount has nothing uncommitted
        await store.index.durable()
    return {"committed": True}
