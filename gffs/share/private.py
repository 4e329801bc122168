"""Private shares: a flow sealed under a share key that travels as a ``gffs-share:`` string.

The construction is the store encryption's (gffs/crypto/seal.py, docs/ENCRYPTION.md) under
a fresh random 32-byte *share key*, never the store key: each block becomes one object
``seal_chunk(sha256, 0x00 + block)`` named ``chunk_name(sha256)`` (a keyed MAC, so the
network learns no content hash), thumbnails likewise, and the manifest is
``seal_meta("gffs-share manifest", json)``. What the network sees is a directory of
opaque, padded objects and one sealed manifest. The string
``gffs-share:<manifest CID>:<key, base64url>`` is everything an importer needs; whoever
holds it can read the flow, so hand it over out of band.

Shares are sealed in format 1 (ChaCha20-Poly1305) whatever the store writes: an
importer running an older gffs, which opens only format 1, can still read them.
"""

from __future__ import annotations

import base64
import os

from gffs.crypto.seal import CHACHA, KEY_BYTES, SealError, StoreKey

PREFIX = "gffs-share:"
MANIFEST_NAME = "gffs-share manifest"


def share_key(raw: bytes) -> StoreKey:
    """A share key: seals format 1 (older importers open only that), opens both."""
    return StoreKey(raw, write_format=CHACHA)


def new_share_key() -> StoreKey:
    return share_key(os.urandom(KEY_BYTES))


def share_string(manifest_cid: str, key: StoreKey) -> str:
    return f"{PREFIX}{manifest_cid}:{base64.urlsafe_b64encode(key.master).decode().rstrip('=')}"


def parse_share(text: str) -> tuple[str, StoreKey | None]:
    """(manifest CID, share key or None) of a ``gffs-share:`` string or a bare CID."""
    if not text.startswith(PREFIX):
        return text, None
    cid, _, key = text[len(PREFIX):].partition(":")
    try:
        raw = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
        return cid, share_key(raw)
    except ValueError:
        raise ValueError("the gffs-share: string holds no usable share key") from None


def seal_block(key: StoreKey, sha256_hex: str, plain: bytes) -> tuple[str, bytes]:
    """(object name, sealed bytes) of one block or thumbnail."""
    return key.chunk_name(sha256_hex), key.seal_chunk(sha256_hex, b"\0" + plain)


def open_block(key: StoreKey, sha256_hex: str, sealed: bytes) -> bytes:
    """The chunk codec's stored form (0x00 + plaintext); SealError when it is not ours."""
    return bytes(key.open_chunk(sha256_hex, sealed))


__all__ = ["MANIFEST_NAME", "PREFIX", "SealError", "new_share_key", "open_block",
           "parse_share", "seal_block", "share_key", "share_string"]
