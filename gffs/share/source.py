"""Which configured backend talks to IPFS for sharing: the store's ``ipfs-share`` source."""

from __future__ import annotations

from gffs.maintenance.jobs import JobRefused
from gffs.share.backend import IpfsShareBackend


def share_source(store, name: str | None = None) -> IpfsShareBackend:
    """The ``ipfs-share`` backend named *name*, or the only one; JobRefused when none fits."""
    found = {n: b for n, b in store.backends.items() if isinstance(b, IpfsShareBackend)}
    if name is not None:
        if name not in found:
            raise JobRefused(f"no ipfs-share backend named {name!r} in the config")
        return found[name]
    if len(found) != 1:
        raise JobRefused("sharing needs one [backends.NAME] with type = \"ipfs-share\" "
                         f"(found {len(found)}; name one with --via)")
    return next(iter(found.values()))
