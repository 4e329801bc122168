"""Pure helpers of the Drive backend: pack layout, tombstone bitmaps, locators.

A *pack* is one Drive file holding many small chunks back to back, followed by
its member index (compact JSON ``{"v":1,"m":[[key, offset, length], ...]}``).
The pack's appProperties say where the index is and which members are dead:

    gffs = "pack"     v = "1"     n = "<members>"     ix = "<offset>:<length>"
    d0, d1, ...       tombstone bitmap (bit i = member i deleted), base64url,
                      cut into 100-character values (Drive allows 124 bytes per
                      key+value and 30 properties per app)

A chunk stored alone is a Drive file named by its key, appProperties gffs="chunk".
Locators: ``pack:<fileId>:<offset>:<length>`` and ``file:<fileId>``.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass

MAX_MEMBERS = 1024          # 128-byte bitmap -> 2 appProperties
PROP_CHARS = 100            # per tombstone property value
FORMAT_VERSION = "1"

_KEY_RE = re.compile(r"[0-9a-f]{8,128}")
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,200}")


def valid_key(key: object) -> bool:
    return isinstance(key, str) and _KEY_RE.fullmatch(key) is not None


def valid_id(fid: object) -> bool:
    return isinstance(fid, str) and _ID_RE.fullmatch(fid) is not None


@dataclass(frozen=True, slots=True)
class Loc:
    kind: str            # "pack" or "file"
    file_id: str
    offset: int = 0
    length: int = 0

    def __str__(self) -> str:
        if self.kind == "file":
            return f"file:{self.file_id}"
        return f"pack:{self.file_id}:{self.offset}:{self.length}"


def parse_locator(text: str) -> Loc:
    """Parse a locator; ValueError when it is not one of ours."""
    parts = text.split(":")
    if len(parts) == 2 and parts[0] == "file" and valid_id(parts[1]):
        return Loc("file", parts[1])
    if (len(parts) == 4 and parts[0] == "pack" and valid_id(parts[1])
            and parts[2].isdigit() and parts[3].isdigit()):
        return Loc("pack", parts[1], int(parts[2]), int(parts[3]))
    raise ValueError("not a Drive locator")


def build_pack(items: list[tuple[str, bytes]]) -> tuple[bytes, list[tuple[str, int, int]], int, int]:
    """Concatenate members and append the index: (body, entries, index_offset, index_length)."""
    if not 0 < len(items) <= MAX_MEMBERS:
        raise ValueError(f"a pack holds 1..{MAX_MEMBERS} members, not {len(items)}")
    entries, off = [], 0
    for key, data in items:
        entries.append((key, off, len(data)))
        off += len(data)
    index = json.dumps({"v": 1, "m": [list(e) for e in entries]}, separators=(",", ":")).encode()
    body = b"".join([*(d for _, d in items), index])
    return body, entries, off, len(index)


def parse_index(raw: bytes, index_offset: int) -> list[tuple[str, int, int]]:
    """Member list of a pack from its index bytes; ValueError when damaged."""
    try:
        doc = json.loads(raw)
        members = [(str(k), int(o), int(n)) for k, o, n in doc["m"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError("damaged pack index") from exc
    for k, o, n in members:
        if not valid_key(k) or o < 0 or n < 0 or o + n > index_offset:
            raise ValueError("damaged pack index")
    return members


def pack_props(n: int, index_offset: int, index_length: int) -> dict[str, str]:
    return {"gffs": "pack", "v": FORMAT_VERSION, "n": str(n),
            "ix": f"{index_offset}:{index_length}"}


def parse_pack_props(props: dict) -> tuple[int, int, int, set[int]]:
    """(members, index offset, index length, dead member numbers); ValueError if not a pack."""
    if props.get("gffs") != "pack" or props.get("v") != FORMAT_VERSION:
        raise ValueError("not a gffs pack")
    n = int(props["n"])
    ixo, ixl = (int(x) for x in props["ix"].split(":"))
    return n, ixo, ixl, decode_dead(props, n)


def encode_dead(dead: set[int], n: int) -> dict[str, str]:
    bits = bytearray((n + 7) // 8)
    for i in dead:
        if 0 <= i < n:
            bits[i // 8] |= 1 << (i % 8)
    text = base64.urlsafe_b64encode(bytes(bits)).decode().rstrip("=")
    return {f"d{j}": text[j * PROP_CHARS:(j + 1) * PROP_CHARS]
            for j in range((len(text) + PROP_CHARS - 1) // PROP_CHARS)}


def decode_dead(props: dict, n: int) -> set[int]:
    text, j = "", 0
    while f"d{j}" in props:
        text += props[f"d{j}"]
        j += 1
    if not text:
        return set()
    bits = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    return {i for i in range(min(n, len(bits) * 8)) if bits[i // 8] >> (i % 8) & 1}
