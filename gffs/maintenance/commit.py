"""The ``commit`` job: the mount daemon commits its open index group, nothing else.

With group commit, other processes read the index as last committed (at most about
a second behind the mount). The control server commits before every job
(ControlServer._committed), so this empty job is how `gffs-admin status`, which
reads the index itself, gets everything a program on the mount finished before it.
"""

from __future__ import annotations

from typing import Any

from gffs.maintenance.jobs import job
from gffs.maintenance.progress import Progress


@job("commit", writes=False)
async def commit(store, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    return {"committed": True}     # the control server committed before calling this
