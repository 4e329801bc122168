"""Binary encodings of index values: fixed structs, no pickle, no JSON.

Keys are big-endian so LMDB's byte order equals numeric order (range scans).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

U64 = struct.Struct(">Q")
HASH_LEN = 32


def u64(n: int) -> bytes:
    return U64.pack(n)


def from_u64(b: bytes) -> int:
    return U64.unpack(b)[0]


@dataclass(slots=True)
class InodeRecord:
    """Attributes of one inode (what stat() shows, plus the parent of a directory)."""

    mode: int
    uid: int
    gid: int
    nlink: int
    size: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    rdev: int = 0
    parent: int = 0

    _S = struct.Struct("<IIIIQqqqQQ")

    def pack(self) -> bytes:
        return self._S.pack(self.mode, self.uid, self.gid, self.nlink, self.size,
                            self.atime_ns, self.mtime_ns, self.ctime_ns, self.rdev,
                            self.parent)

    @classmethod
    def unpack(cls, data: bytes) -> "InodeRecord":
        return cls(*cls._S.unpack(data))


@dataclass(slots=True)
class Location:
    """Where one copy of a chunk lives: a backend name and that backend's locator."""

    backend: str
    locator: str = ""


@dataclass(slots=True)
class ChunkRecord:
    """One content-addressed chunk: refcount, sizes, codec and every copy's location."""

    refcount: int
    size: int
    stored_size: int
    codec: int
    locations: list[Location] = field(default_factory=list)

    _H = struct.Struct("<QIIBB")

    def pack(self) -> bytes:
        parts = [self._H.pack(self.refcount, self.size, self.stored_size, self.codec,
                              len(self.locations))]
        for loc in self.locations:
            b = loc.backend.encode()
            l = loc.locator.encode()
            parts.append(struct.pack("<BH", len(b), len(l)) + b + l)
        return b"".join(parts)

    @classmethod
    def unpack(cls, data: bytes) -> "ChunkRecord":
        refcount, size, stored, codec, n = cls._H.unpack_from(data)
        pos = cls._H.size
        locs = []
        for _ in range(n):
            lb, ll = struct.unpack_from("<BH", data, pos)
            pos += 3
            backend = bytes(data[pos:pos + lb]).decode()
            pos += lb
            locator = bytes(data[pos:pos + ll]).decode()
            pos += ll
            locs.append(Location(backend, locator))
        return cls(refcount, size, stored, codec, locs)
