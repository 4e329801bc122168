"""Reading /proc/self/mountinfo without touching the mounts themselves.

(stat() on a gffs mount point would send a request to the daemon; during
unmount that daemon may be busy or gone, so we never stat mounts here.)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    fstype: str
    source: str
    dev: str = ""  # "major:minor"


def _unescape(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def mounts() -> list[MountEntry]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(fields) < 5 or len(rfields) < 2:
                continue
            out.append(MountEntry(_unescape(fields[4]), rfields[0], _unescape(rfields[1]), fields[2]))
    return out


def find_mount(path: str) -> MountEntry | None:
    target = os.path.abspath(path)
    found = None
    for m in mounts():
        if m.mountpoint == target:
            found = m  # the last one is the top of the stack
    return found


def gffs_data_dir(entry: MountEntry) -> str | None:
    """The store directory of a gffs mount, from its fsname 'gffs:<data_dir>'."""
    if entry.fstype.endswith("gffs") and entry.source.startswith("gffs:"):
        return entry.source[len("gffs:"):]
    return None
