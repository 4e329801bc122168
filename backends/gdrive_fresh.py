"""Read-your-writes over Drive's eventually consistent ``files.list``.

Drive answers a ``files.list`` from an index that catches up with new files after a
while (and in no particular order), so a file just created may be missing from a
listing taken right after. Everything that lists therefore merges in what this
process wrote itself: chunks for ``list()`` (fsck, gc), metadata files for
``get_meta``/``list_meta``/``put_meta`` (index backups prune the pieces no listed
manifest uses: a manifest missing from a listing would lose its pieces). An entry is
dropped once a listing shows it, or when it is deleted. Another process's fresh files
are not known here; they show up once Drive's index has caught up.
"""

from __future__ import annotations

from collections import OrderedDict

from gffs_backends.base import ObjectInfo

LIMIT = 65536       # remembered objects (oldest forgotten first: Drive has caught up by then)


class RecentWrites:
    """Objects and metadata files written by this process that a listing may lack."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self._objects: OrderedDict[str, ObjectInfo] = OrderedDict()
        self._meta: dict[str, dict[str, dict]] = {}     # name -> file id -> file metadata

    # chunks -----------------------------------------------------------------------------
    def wrote(self, info: ObjectInfo) -> None:
        self._objects[info.key] = info
        self._objects.move_to_end(info.key)
        while len(self._objects) > self.limit:
            self._objects.popitem(last=False)

    def deleted(self, key: str) -> None:
        self._objects.pop(key, None)

    def unlisted(self, listed: set[str]) -> list[ObjectInfo]:
        """Objects written here that the listing (*listed* keys) lacked; the others are
        forgotten, the listing has caught up with them."""
        for key in listed & self._objects.keys():
            del self._objects[key]
        return list(self._objects.values())

    # metadata files -----------------------------------------------------------------------
    def wrote_meta(self, name: str, meta: dict) -> None:
        """*meta* (id, name, createdTime, appProperties) is now the file of *name*."""
        self._meta[name] = {meta["id"]: meta}

    def deleted_meta(self, name: str) -> None:
        self._meta.pop(name, None)

    def meta_files(self, name: str, listed: list[dict]) -> list[dict]:
        """The listed files of *name* plus the one written here, once each."""
        mine = self._meta.get(name, {})
        listed_ids = {m.get("id") for m in listed}
        if mine.keys() <= listed_ids:
            self._meta.pop(name, None)
        return listed + [m for fid, m in mine.items() if fid not in listed_ids]

    def meta_names(self, prefix: str) -> set[str]:
        return {n for n in self._meta if n.startswith(prefix)}
