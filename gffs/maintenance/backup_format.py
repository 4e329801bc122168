"""The on-backend format of index backups: pieces of records, and manifests.

A backup *version* is a JSON manifest naming the *pieces* that hold every record
of every index table in key order. Pieces are cut at content-defined record
boundaries (a record ends a piece when a hash of its key falls below a threshold
proportional to its size, past a quarter of TARGET_PIECE, so pieces average
TARGET_PIECE bytes; and always at a table's end), so a change to a few records changes a few pieces, and a piece is
named by the SHA-256 of its plaintext: the next backup uploads only the pieces
it does not share with the last one. Pieces are stored with the chunk codec
(zstd where it pays), so a read verifies the bytes against the name.

    index/pieces/<sha256 hex>            codec byte + (zstd) records
    index/versions/<UTC time>.json       manifest (sorted by name = by time)

A piece's records: ``<u32 key length><u32 value length><key><value>`` repeated.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import time
from dataclasses import dataclass
from typing import Any, Iterator

from gffs.index.env import DB_NAMES, SCHEMA_VERSION

FORMAT = "gffs-index-backup"
FORMAT_VERSION = 1
VERSIONS = "index/versions/"
PIECES = "index/pieces/"
TARGET_PIECE = 256 << 10        # mean piece size (plaintext)
MAX_PIECE = 8 << 20             # a piece is cut here whatever the hashes say
REC = struct.Struct("<II")
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_VERSION_RE = re.compile(r"\d{8}T\d{6}\.\d{6}Z")


class BadBackup(Exception):
    """A manifest or piece is malformed, of another format, or does not match its name."""


@dataclass(slots=True)
class PieceRef:
    """One piece as a manifest lists it."""

    table: str
    sha256: str
    size: int        # plaintext bytes
    stored: int      # bytes on the backend

    def as_json(self) -> dict[str, Any]:
        return {"table": self.table, "sha256": self.sha256, "size": self.size,
                "stored": self.stored}


def piece_name(sha256: str) -> str:
    return PIECES + sha256


def version_name(version: str) -> str:
    return f"{VERSIONS}{version}.json"


def version_of(name: str) -> str | None:
    """The version id in a manifest's object name, or None for another object."""
    if not name.startswith(VERSIONS) or not name.endswith(".json"):
        return None
    vid = name[len(VERSIONS):-len(".json")]
    return vid if _VERSION_RE.fullmatch(vid) else None


def new_version_id(now: float | None = None) -> str:
    """A UTC time stamp with microseconds: names sort by time."""
    now = time.time() if now is None else now
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now * 1e6) % 1_000_000:06d}Z"


def ends_piece(key: bytes | memoryview, record_len: int, scale: int) -> bool:
    """Content-defined cut: true with probability record_len * scale / 2**64, decided by the key."""
    h = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big")
    return h < record_len * scale


def records(plaintext: bytes) -> Iterator[tuple[bytes, bytes]]:
    """The (key, value) records of a piece; BadBackup when it is malformed."""
    view = memoryview(plaintext)
    pos = 0
    while pos < len(view):
        if pos + REC.size > len(view):
            raise BadBackup("piece ends inside a record header")
        klen, vlen = REC.unpack_from(view, pos)
        pos += REC.size
        if klen == 0 or pos + klen + vlen > len(view):
            raise BadBackup("piece ends inside a record")
        yield bytes(view[pos:pos + klen]), bytes(view[pos + klen:pos + klen + vlen])
        pos += klen + vlen


def manifest(version: str, store_id: str, block_size: int, info: dict[str, Any],
             pieces: list[PieceRef]) -> dict[str, Any]:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "version": version,
            "store_id": store_id, "created": time.time(), "schema": SCHEMA_VERSION,
            "block_size": block_size, **info, "pieces": [p.as_json() for p in pieces]}


def encode_manifest(m: dict[str, Any]) -> bytes:
    return json.dumps(m, separators=(",", ":")).encode()


def parse_manifest(data: bytes, name: str) -> dict[str, Any]:
    """A manifest checked for shape and version; BadBackup names what is wrong."""
    try:
        m = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise BadBackup(f"{name} is not JSON") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise BadBackup(f"{name} is not a gffs index backup manifest")
    if not isinstance(m.get("format_version"), int) or m["format_version"] > FORMAT_VERSION:
        raise BadBackup(f"{name} has backup format {m.get('format_version')!r}; this gffs "
                        f"reads format {FORMAT_VERSION} (upgrade gffs)")
    if m.get("schema") != SCHEMA_VERSION:
        raise BadBackup(f"{name} holds an index of schema {m.get('schema')!r}; this gffs "
                        f"reads schema {SCHEMA_VERSION}")
    if not isinstance(m.get("store_id"), str) or not isinstance(m.get("version"), str):
        raise BadBackup(f"{name} lacks its store id or version")
    tables = m.get("tables")
    if not isinstance(tables, dict) or not all(isinstance(v, int) for v in tables.values()):
        raise BadBackup(f"{name} has no valid table list")
    unknown = sorted(set(tables) - set(DB_NAMES))
    if unknown:
        raise BadBackup(f"{name} holds table {unknown[0]!r}, unknown to this gffs (upgrade gffs)")
    pieces = m.get("pieces")
    if not isinstance(pieces, list):
        raise BadBackup(f"{name} has no piece list")
    refs = []
    for p in pieces:
        try:
            ref = PieceRef(p["table"], p["sha256"], int(p["size"]), int(p["stored"]))
        except (KeyError, TypeError, ValueError):
            raise BadBackup(f"{name} has a malformed piece entry") from None
        if ref.table not in tables or not _SHA_RE.fullmatch(str(ref.sha256)):
            raise BadBackup(f"{name} has a malformed piece entry")
        refs.append(ref)
    m["pieces"] = refs
    return m
