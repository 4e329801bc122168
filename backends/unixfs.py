"""CIDs, multibase and the UnixFS DAG Kubo builds, computed locally.

Why here and not in the backend: the IPFS backend recomputes every object's CID to
trust no node, and gffs/share/ builds whole published directories (plain and
HAMT-sharded) to know their CIDs before any node answers. Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import hashlib

CHUNKER_SIZE = 262144                       # Kubo's default chunker, size-262144
MAX_LINKS = 174                             # UnixFS balanced layout: links per node

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_SHA2_256 = 0x12
_DAG_PB = 0x70
RAW_CODEC = 0x55           # the raw multicodec: a leaf that is the bytes themselves


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("bad varint")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, pos
        shift += 7


def b58encode(raw: bytes) -> str:
    n = int.from_bytes(raw, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    return "1" * (len(raw) - len(raw.lstrip(b"\0"))) + out


def b58decode(text: str) -> bytes:
    n = 0
    for c in text:
        i = _B58.find(c)
        if i < 0:
            raise ValueError("not base58btc")
        n = n * 58 + i
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * (len(text) - len(text.lstrip("1"))) + body


def parse_cid(cid: str) -> tuple[int, int, bytes]:
    """(version, codec, sha2-256 digest) of a CIDv0 or base32 CIDv1; ValueError otherwise."""
    if len(cid) == 46 and cid.startswith("Qm"):
        mh = b58decode(cid)
        version, codec = 0, _DAG_PB
    elif cid.startswith("b") and cid[1:].islower():
        body = cid[1:].upper()
        raw = base64.b32decode(body + "=" * (-len(body) % 8))
        version, pos = _read_varint(raw, 0)
        codec, pos = _read_varint(raw, pos)
        if version != 1:
            raise ValueError("unsupported CID version")
        mh = raw[pos:]
    else:
        raise ValueError("not a CIDv0 or base32 CIDv1")
    if len(mh) != 34 or mh[0] != _SHA2_256 or mh[1] != 32:
        raise ValueError("multihash is not sha2-256")
    if codec not in (_DAG_PB, RAW_CODEC):
        raise ValueError("codec is neither dag-pb nor raw")
    return version, codec, mh[2:]


def _pb_bytes(field: int, value: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(value)) + value


def _pb_uint(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _unixfs_file(filesize: int, data: bytes = b"", blocksizes: list[int] | None = None) -> bytes:
    out = _pb_uint(1, 2)                            # Type = File
    if data:
        out += _pb_bytes(2, data)
    out += _pb_uint(3, filesize)
    for size in blocksizes or ():
        out += _pb_uint(4, size)                    # repeated, not packed (proto2)
    return out


class _Node:
    __slots__ = ("cid", "filesize", "tsize")

    def __init__(self, cid: bytes, tsize: int, filesize: int) -> None:
        self.cid, self.tsize, self.filesize = cid, tsize, filesize


def _pb_node(version: int, links: list[_Node], data: bytes) -> _Node:
    """A dag-pb node (links first, then data: the canonical dag-pb field order)."""
    body = b"".join(_pb_bytes(2, _pb_bytes(1, c.cid) + _pb_bytes(2, b"") + _pb_uint(3, c.tsize))
                    for c in links) + _pb_bytes(1, data)
    mh = bytes([_SHA2_256, 32]) + hashlib.sha256(body).digest()
    cid = mh if version == 0 else _varint(1) + _varint(_DAG_PB) + mh
    return _Node(cid, len(body) + sum(c.tsize for c in links), sum(c.filesize for c in links))


def unixfs_cid(data: bytes | memoryview, cid_version: int = 1) -> str:
    """The CID ``ipfs add`` gives *data* with this backend's import settings.

    CIDv0: dag-pb leaves. CIDv1: raw leaves. Both: 256 KiB chunks, balanced layout with
    at most 174 links per node, sha2-256. A file of one chunk is its leaf itself.
    """
    return cid_text(unixfs_file_root(data, cid_version)[0])


def cid_text(cid: bytes) -> str:
    """A binary CID as Kubo prints it: base58btc for CIDv0 (a bare multihash), base32 else."""
    if cid[:2] == bytes([_SHA2_256, 32]) and len(cid) == 34:
        return b58encode(cid)
    return "b" + base64.b32encode(cid).decode().lower().rstrip("=")


DIR_SHARD_THRESHOLD = 262144   # Kubo's Internal.UnixFSShardingSizeThreshold default (256 KiB)


HAMT_FANOUT = 256              # Kubo's default shard width
_MURMUR3_64 = 0x22            # the multicodec of the HAMT's hash function


def unixfs_dir_root(entries: list[tuple[str, bytes, int]], cid_version: int = 0) -> tuple[bytes, int]:
    """(binary CID, cumulative DAG size) of a UnixFS directory of *entries* (name, binary
    CID, cumulative size), as Kubo builds it: a plain directory (links sorted by name
    bytes, Data = UnixFS Directory) while the links' names and CIDs add up to less than
    Kubo's sharding threshold, else a HAMT-sharded directory (:func:`_hamt_shard`)."""
    links = [(n.encode(), c, t) for n, c, t in entries]
    if sum(len(n) + len(c) for n, c, _ in links) >= DIR_SHARD_THRESHOLD:
        return _hamt_shard([(_murmur3_64(n).to_bytes(8, "big"), n, c, t) for n, c, t in links],
                           0, cid_version)
    return _dag_pb(sorted(links), _pb_uint(1, 1), cid_version)


def _dag_pb(links: list[tuple[bytes, bytes, int]], unixfs: bytes, version: int) -> tuple[bytes, int]:
    """A dag-pb node of (name, CID, tsize) links in the given order and UnixFS data."""
    body = b"".join(_pb_bytes(2, _pb_bytes(1, c) + _pb_bytes(2, n) + _pb_uint(3, t))
                    for n, c, t in links) + _pb_bytes(1, unixfs)
    mh = bytes([_SHA2_256, 32]) + hashlib.sha256(body).digest()
    cid = mh if version == 0 else _varint(1) + _varint(_DAG_PB) + mh
    return cid, len(body) + sum(t for _, _, t in links)


def _hamt_shard(items: list[tuple[bytes, bytes, bytes, int]], depth: int,
                version: int) -> tuple[bytes, int]:
    """One HAMT shard (UnixFS Type HAMTShard, fanout 256, murmur3-x64-64 of the name):
    byte *depth* of an entry's hash picks its slot; a slot with one entry links it as
    ``<slot, 2 upper-case hex digits><name>``, a slot with several a sub-shard as
    ``<slot>``. Links in slot order; Data holds the bitfield of used slots (big-endian,
    leading zero bytes dropped), the hash function and the fanout."""
    slots: dict[int, list[tuple[bytes, bytes, bytes, int]]] = {}
    for item in items:
        slots.setdefault(item[0][depth], []).append(item)
    links = []
    for slot in sorted(slots):
        group, prefix = slots[slot], b"%02X" % slot
        if len(group) == 1:
            _h, name, cid, tsize = group[0]
            links.append((prefix + name, cid, tsize))
        else:
            links.append((prefix, *_hamt_shard(group, depth + 1, version)))
    bits = sum(1 << slot for slot in slots)
    bitfield = bits.to_bytes((bits.bit_length() + 7) // 8, "big")
    data = _pb_uint(1, 5) + _pb_bytes(2, bitfield) + _pb_uint(5, _MURMUR3_64) + \
        _pb_uint(6, HAMT_FANOUT)
    return _dag_pb(links, data, version)


def _murmur3_64(data: bytes) -> int:
    """The first 64 bits of MurmurHash3 x64-128 (seed 0), as Go's murmur3.Sum64."""
    m = (1 << 64) - 1
    c1, c2 = 0x87C37B91114253D5, 0x4CF5AD432745937F

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (64 - r))) & m

    def fmix(k: int) -> int:
        k ^= k >> 33
        k = (k * 0xFF51AFD7ED558CCD) & m
        k ^= k >> 33
        k = (k * 0xC4CEB9FE1A85EC53) & m
        return k ^ (k >> 33)

    h1 = h2 = 0
    n = len(data)
    for i in range(0, n - n % 16, 16):
        k1 = int.from_bytes(data[i:i + 8], "little")
        k2 = int.from_bytes(data[i + 8:i + 16], "little")
        h1 ^= (rotl((k1 * c1) & m, 31) * c2) & m
        h1 = (rotl(h1, 27) + h2) & m
        h1 = (h1 * 5 + 0x52DCE729) & m
        h2 ^= (rotl((k2 * c2) & m, 33) * c1) & m
        h2 = (rotl(h2, 31) + h1) & m
        h2 = (h2 * 5 + 0x38495AB5) & m
    tail = data[n - n % 16:]
    if len(tail) > 8:
        k2 = int.from_bytes(tail[8:], "little")
        h2 ^= (rotl((k2 * c2) & m, 33) * c1) & m
    if tail:
        k1 = int.from_bytes(tail[:8], "little")
        h1 ^= (rotl((k1 * c1) & m, 31) * c2) & m
    h1 ^= n
    h2 ^= n
    h1 = (h1 + h2) & m
    h2 = (h2 + h1) & m
    h1, h2 = fmix(h1), fmix(h2)
    return (h1 + h2) & m


def unixfs_file_root(data: bytes | memoryview, cid_version: int = 1) -> tuple[bytes, int]:
    """(binary CID, cumulative DAG size) of the file DAG :func:`unixfs_cid` describes."""
    data = memoryview(data)
    pos = 0

    def leaf() -> _Node:
        nonlocal pos
        chunk = bytes(data[pos:pos + CHUNKER_SIZE])
        pos += len(chunk)
        if cid_version == 1:
            mh = bytes([_SHA2_256, 32]) + hashlib.sha256(chunk).digest()
            return _Node(_varint(1) + _varint(RAW_CODEC) + mh, len(chunk), len(chunk))
        node = _pb_node(0, [], _unixfs_file(len(chunk), chunk))
        node.filesize = len(chunk)
        return node

    def internal(children: list[_Node]) -> _Node:
        return _pb_node(cid_version, children,
                        _unixfs_file(sum(c.filesize for c in children), b"",
                                     [c.filesize for c in children]))

    def fill(children: list[_Node], depth: int) -> _Node:
        while len(children) < MAX_LINKS and pos < len(data):
            children.append(leaf() if depth == 1 else fill([], depth - 1))
        return internal(children)

    root = leaf()
    depth = 1
    while pos < len(data):
        root = fill([root], depth)
        depth += 1
    return root.cid, root.tsize

