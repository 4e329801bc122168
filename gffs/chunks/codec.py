"""Chunk encoding: SHA-256 names, zstandard only where it pays, verified decoding.

Stored form: one codec byte, then the payload. The name is always the hash of
the plaintext, so the same image dedups whatever codec stored it, and every
read is verified against its name: by hashing it, or, for a raw chunk an
encrypted backend opened, by the AEAD tag that binds it to its name
(:class:`Authenticated`).
"""

from __future__ import annotations

import hashlib
import threading

import zstandard

CODEC_RAW = 0
CODEC_ZSTD = 1
ZSTD_LEVEL = 3
MIN_SAVING = 1 / 16  # keep compressed form only if it saves at least this much

_local = threading.local()


class Authenticated(bytearray):
    """A buffer whose bytes an AEAD tag checked under the chunk id they are stored for.

    gffs/crypto/seal.py decrypts into one and hands out a view of it. Only the
    store's key makes a tag that verifies with the chunk id as associated data,
    and it seals only bytes hashed to that id, so re-hashing a raw chunk on
    every read (1.4 ms per MiB on the development VM, half of an encrypted
    read's CPU) adds nothing; a compressed one is still hashed after zstd."""


def authenticated(stored: object) -> bool:
    """Whether *stored* is a view into an :class:`Authenticated` buffer."""
    return isinstance(stored, memoryview) and isinstance(stored.obj, Authenticated)

def decode_is_free(stored: object) -> bool:
    """Whether :func:`decode` of *stored* is O(1) (an authenticated raw chunk: no hash,
    no copy), so a reader calls it without a worker-thread hop."""
    return authenticated(stored) and len(stored) > 0 and stored[0] == CODEC_RAW  # type: ignore[arg-type, index]


# Leading bytes of formats that are already compressed: zstd cannot shrink them.
_COMPRESSED_MAGIC = (
    b"\xff\xd8\xff",            # JPEG
    b"\x89PNG\r\n\x1a\n",       # PNG
    b"GIF8",                    # GIF
    b"PK\x03\x04",              # zip, docx, epub
    b"\x1f\x8b",                # gzip
    b"\x28\xb5\x2f\xfd",        # zstd
    b"\xfd7zXZ\x00",            # xz
    b"BZh",                     # bzip2
    b"\xff\x0a",                # JPEG XL codestream
    b"\x00\x00\x00\x0cJXL ",    # JPEG XL container
)
_FTYP_COMPRESSED = (b"heic", b"heix", b"hevc", b"mif1", b"msf1", b"avif", b"isom",
                    b"mp41", b"mp42", b"qt  ", b"crx ")


class CorruptChunk(Exception):
    """Stored bytes do not decode to data with the expected hash."""


def digest(data: bytes | bytearray | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


def is_precompressed(head: bytes) -> bool:
    """True when the file's first bytes say it is a compressed format (JPEG, PNG, HEIC...)."""
    if head.startswith(_COMPRESSED_MAGIC):
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return head[4:8] == b"ftyp" and head[8:12] in _FTYP_COMPRESSED


def _compressor() -> zstandard.ZstdCompressor:
    c = getattr(_local, "c", None)
    if c is None:
        c = _local.c = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def encode(data: bytes, try_compress: bool) -> tuple[int, bytes]:
    """Return (codec, stored bytes). Compression is tried only when asked and kept only if it pays."""
    if try_compress and len(data) >= 512:
        packed = _compressor().compress(data)
        if len(packed) <= len(data) * (1 - MIN_SAVING):
            return CODEC_ZSTD, bytes([CODEC_ZSTD]) + packed
    return CODEC_RAW, bytes([CODEC_RAW]) + data


def decode(stored: bytes, expected: bytes) -> bytes | memoryview:
    """Plaintext of a stored chunk, verified against its SHA-256 name.

    A raw chunk comes back as a read-only view into *stored* (no 1 MiB copy).
    """
    if not stored:
        raise CorruptChunk("empty object")
    codec, payload = stored[0], memoryview(stored)[1:]
    if codec == CODEC_RAW:
        data = payload
        if authenticated(stored):
            return data
    elif codec == CODEC_ZSTD:
        try:
            data = _decompressor().decompress(payload)
        except zstandard.ZstdError as exc:
            raise CorruptChunk(f"zstd: {exc}") from exc
    else:
        raise CorruptChunk(f"unknown codec {codec}")
    if digest(data) != expected:
        raise CorruptChunk("hash mismatch")
    return data


def encode_and_hash(data: bytes, try_compress: bool) -> tuple[bytes, int, bytes]:
    """(digest, codec, stored) in one call — what a worker thread runs per block."""
    codec, stored = encode(data, try_compress)
    return digest(data), codec, stored
