"""Extended attributes: stored user./trusted. ones, computed ones (image facts,
thumbnail paths, counters on the root) and validation of user.nft.* values."""

from __future__ import annotations

import errno

from gffs.errors import FsError
from gffs.fs import sharedthumbs
from gffs.fs.core import FsCore, _now
from gffs.fs.sharedthumbs import is_virtual
from gffs.index import ROOT_INO
from gffs.index.views import VIEW_XATTRS
from gffs.nft.validate import InvalidNftValue
from gffs.nft.validate import PREFIX as _NFT_PREFIX
from gffs.nft.validate import validate as validate_nft

XATTR_NAME_MAX = 255
XATTR_VALUE_MAX = 64 * 1024
XATTR_LIST_MAX = 64 * 1024
# security.* (SELinux labels, file capabilities) and system.* (POSIX ACLs) are not
# supported: answering ENOTSUP lets tools such as ls remember that per device
# instead of asking for every file.
XATTR_NAMESPACES = (b"user.", b"trusted.")
NFT_PREFIX = _NFT_PREFIX.encode()
STATS_PREFIX = b"user.gf.stats."   # read-only counters on the mount's root directory
STATS = ("file_block_loads", "analysis_block_loads", "thumbnail_loads", "user_cache_writes",
         "write_requests")


class XattrOps(FsCore):
    @staticmethod
    def _check_xattr_name(name: bytes) -> None:
        if len(name) > XATTR_NAME_MAX:
            raise FsError(errno.ERANGE, "xattr name longer than 255 bytes")
        if not name.startswith(XATTR_NAMESPACES):
            raise FsError(errno.ENOTSUP, "only user. and trusted. xattrs are stored")

    def getxattr(self, ino: int, name: bytes) -> bytes:
        self._check_xattr_name(name)
        if is_virtual(ino):
            self._virtual(ino).node(ino)
            raise FsError(errno.ENODATA)
        if self.image_xattrs.is_ours(name):
            return self.image_xattrs.get(ino, name)
        if name.startswith(sharedthumbs.XATTR_PREFIX):
            return self.thumbs.xattr(ino, name)
        if ino == ROOT_INO and name.startswith(STATS_PREFIX):
            counter = name[len(STATS_PREFIX):].decode(errors="replace")
            if counter not in STATS:
                raise FsError(errno.ENODATA)
            return str(self.stats[counter]).encode()
        with self.index.read() as txn:
            self.ns.get(txn, ino)
            value = self.ns.get_xattr(txn, ino, name)
        if value is None:
            raise FsError(errno.ENODATA)
        return value

    def setxattr(self, ino: int, name: bytes, value: bytes) -> None:
        self._writable()
        self._check_xattr_name(name)
        self._refuse_computed_xattr(ino, name)
        if len(value) > XATTR_VALUE_MAX:
            raise FsError(errno.E2BIG, "xattr value larger than 64 KiB")
        with self.index.write() as txn:
            rec = self.ns.get(txn, ino)
            if name.startswith(NFT_PREFIX):
                self._check_nft(txn, ino, name, value)
            names = list(self.ns.xattr_names(txn, ino))
            if name not in names and sum(len(n) + 1 for n in names) + len(name) + 1 > XATTR_LIST_MAX:
                raise FsError(errno.ENOSPC, "too many xattrs on this inode")
            self.ns.set_xattr(txn, ino, name, value)
            rec.ctime_ns = _now()
            self.ns.put(txn, ino, rec)
            if name in VIEW_XATTRS:
                self.images.views.refresh(txn, ino)

    def _check_nft(self, txn, ino: int, name: bytes, value: bytes) -> None:
        """user.nft.* values are validated; a bad one is EINVAL and nothing changes."""
        current = {}
        for other in self.ns.xattr_names(txn, ino):
            if other.startswith(NFT_PREFIX) and other != name:
                raw = self.ns.get_xattr(txn, ino, other) or b""
                current[other[len(NFT_PREFIX):].decode(errors="replace")] = raw.decode(
                    errors="replace")
        try:
            validate_nft(name[len(NFT_PREFIX):].decode(errors="replace"), value, current)
        except InvalidNftValue as exc:
            raise FsError(errno.EINVAL, str(exc)) from None

    def _refuse_computed_xattr(self, ino: int, name: bytes) -> None:
        """Image facts, thumbnail paths and counters are computed by gffs: EPERM to change."""
        self._not_virtual(ino)
        if (self.image_xattrs.is_ours(name) or name.startswith(sharedthumbs.XATTR_PREFIX)
                or (ino == ROOT_INO and name.startswith(STATS_PREFIX))):
            self.image_xattrs.refuse_change()

    def listxattr(self, ino: int) -> list[bytes]:
        if is_virtual(ino):
            self._virtual(ino).node(ino)
            return []
        with self.index.read() as txn:  # one transaction, one content id lookup
            self.ns.get(txn, ino)
            names = list(self.ns.xattr_names(txn, ino))
            cid = self.images.images.content_id(txn, ino)
            names += self.image_xattrs.names(txn, cid) + self.thumbs.xattr_names(txn, cid)
        if ino == ROOT_INO:
            names += [STATS_PREFIX + k.encode() for k in STATS]
        return names

    def removexattr(self, ino: int, name: bytes) -> None:
        self._writable()
        self._check_xattr_name(name)
        self._refuse_computed_xattr(ino, name)
        with self.index.write() as txn:
            rec = self.ns.get(txn, ino)
            if not self.ns.remove_xattr(txn, ino, name):
                raise FsError(errno.ENODATA)
            rec.ctime_ns = _now()
            self.ns.put(txn, ino, rec)
            if name in VIEW_XATTRS:
                self.images.views.refresh(txn, ino)
