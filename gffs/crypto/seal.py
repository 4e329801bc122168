"""The construction: one 32-byte store key, subkeys by HKDF, keyed names, AEAD-sealed objects.

Chunk objects are named ``HMAC-SHA256(name key, chunk id)`` (hex) and sealed,
the chunk id as associated data, under a synthetic nonce:
``HMAC-SHA256(nonce key, associated data + SHA-256(bytes))[:12]`` (the hash is
left out for raw chunks, whose bytes the chunk id already fixes), stored in
front of the ciphertext. Deterministic on purpose: the same chunk always gives
the same object, so dedup, repair and idempotent puts keep working; a nonce
repeats only for the very same bytes, so a chunk id stored once raw and once
compressed gets two nonces. Metadata objects (index backups) keep their
directories (``index/pieces/``) and get their last name component encrypted
with AES-SIV (reversible, so list_meta can return real names) and their bytes
sealed like chunks, bound to their full name.

Two formats, told apart by the first byte; both are always readable:

- 1: ChaCha20-Poly1305 (fast without AES instructions; private shares keep it);
- 2: AES-256-GCM under its own subkeys, same framing and nonce (about twice as
  fast where the CPU has AES-NI). A nonce repeats only for the same plaintext
  under the same associated data, the one case where GCM reuse is harmless.

New objects get format 2 when the CPU has AES instructions, else 1
(``GFFS_SEAL_FORMAT=1|2`` overrides). Object names do not depend on the format,
so a chunk re-put in the other format is the same object with other bytes:
never compare sealed bytes across copies, open them.

Every sealed payload is padded to a bucket (``padded_size``) before sealing.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gffs.chunks.codec import CODEC_RAW, Authenticated
from gffs.errors import ConfigError

KEY_BYTES = 32
CHACHA = 1                 # first byte of a sealed object: ChaCha20-Poly1305
AES_GCM = 2                # AES-256-GCM
FORMATS = (CHACHA, AES_GCM)
CIPHERS = {CHACHA: "ChaCha20-Poly1305", AES_GCM: "AES-256-GCM"}
FORMAT_ENV = "GFFS_SEAL_FORMAT"
NONCE = 12
_LEN = struct.Struct(">I")
TAG = 16
OVERHEAD = 1 + NONCE + _LEN.size + TAG  # format byte, nonce, length, tag (plus padding)
MIN_BUCKET = 256           # no sealed payload is smaller
BUCKET_SLACK = 64          # bucket boundaries sit this far above Padmé sizes
NAME_MAX = 64              # longest metadata name component that can be encrypted
_CHUNK_AD = b"gffs chunk v1\0"
_META_AD = b"gffs meta v1\0"


class SealError(Exception):
    """Bytes that fail authentication: altered, truncated, swapped, or another key."""


def padded_size(n: int) -> int:
    """The bucket a payload of *n* bytes is padded to.

    Padmé (Nikitin et al., PURBs): keep only the top log2(log2 n)+1 bits of the
    size, rounding up; at most ~12 % overhead, so a size says O(log log n) bits.
    Boundaries are shifted up by BUCKET_SLACK so a full block plus its few bytes
    of framing (2^k + 1) costs 64 bytes, not a 3 % step.
    """
    m = max(n - BUCKET_SLACK, 1)
    e = m.bit_length() - 1
    low = max(e - e.bit_length(), 0)
    mask = (1 << low) - 1
    return max(MIN_BUCKET, ((m + mask) & ~mask) + BUCKET_SLACK)


def sealed_size(n: int) -> int:
    """Size of the sealed object holding *n* bytes."""
    return OVERHEAD - _LEN.size + padded_size(_LEN.size + n)


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


def _unb32(text: str) -> bytes:
    return base64.b32decode(text.upper() + "=" * (-len(text) % 8))


@functools.cache
def _has_aes_instructions() -> bool:
    """The ``aes`` CPU flag (AES-NI on x86) in /proc/cpuinfo; False where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and "aes" in line.partition(":")[2].split()
                       for line in f)
    except OSError:
        return False


def default_format() -> int:
    """The format new objects get: $GFFS_SEAL_FORMAT, else AES-GCM where the CPU has AES
    (ConfigError for another value: one line at startup, not a "damaged key file")."""
    wanted = os.environ.get(FORMAT_ENV, "").strip()
    if wanted:
        if wanted not in {str(f) for f in FORMATS}:
            raise ConfigError(f"{FORMAT_ENV}={wanted!r}: sealed-object formats are "
                             f"{', '.join(map(str, FORMATS))}")
        return int(wanted)
    return AES_GCM if _has_aes_instructions() else CHACHA


_Aead = ChaCha20Poly1305 | AESGCM


class StoreKey:
    """The store key and its subkeys; every encrypted object is made and checked here."""

    def __init__(self, master: bytes, write_format: int | None = None) -> None:
        """*write_format*: the format of what this key seals (None: default_format())."""
        if len(master) != KEY_BYTES:
            raise ValueError(f"a store key has {KEY_BYTES} bytes, not {len(master)}")
        self.master = master
        self.write_format = default_format() if write_format is None else write_format
        if self.write_format not in FORMATS:
            raise ValueError(f"unknown sealed-object format {self.write_format}")
        sub = {label: self._derive(label, 64 if label == "meta names" else 32)
               for label in ("chunk names", "chunk nonces", "chunk data", "meta names",
                             "meta data", "key id", "chunk data aes-gcm", "meta data aes-gcm")}
        self._name_key = sub["chunk names"]
        self._nonce_key = sub["chunk nonces"]
        # format -> AEAD; each cipher has its own subkeys (never one key for two ciphers)
        self._chunk: dict[int, _Aead] = {CHACHA: ChaCha20Poly1305(sub["chunk data"]),
                                         AES_GCM: AESGCM(sub["chunk data aes-gcm"])}
        self._meta: dict[int, _Aead] = {CHACHA: ChaCha20Poly1305(sub["meta data"]),
                                        AES_GCM: AESGCM(sub["meta data aes-gcm"])}
        self._meta_names = AESSIV(sub["meta names"])
        self.key_id = sub["key id"][:16].hex()   # safe to show: says which key, reveals nothing
        # keys being rotated away: still read, never written (gffs/maintenance/rotate.py)
        self.previous: list[StoreKey] = []

    @property
    def tag(self) -> str:
        """Short key id carried in the locators of the objects this key sealed."""
        return self.key_id[:8]

    def ring(self) -> list[StoreKey]:
        """This key, then the keys being rotated away."""
        return [self, *self.previous]

    def _derive(self, label: str, size: int) -> bytes:
        return HKDF(hashes.SHA256(), size, salt=None,
                    info=b"gffs store key v1: " + label.encode()).derive(self.master)

    # chunks ---------------------------------------------------------------------
    def chunk_name(self, key: str) -> str:
        """The object name of chunk *key* (hex id): a keyed MAC, never the content hash."""
        return hmac.digest(self._name_key, key.encode(), "sha256").hex()   # one-shot, in C

    def seal_chunk(self, key: str, data: bytes) -> bytearray:
        # A raw chunk (codec byte 0: every JPEG, PNG, HEIC block) is 0x00 + the
        # plaintext whose SHA-256 is *key*: its bytes are a function of the key,
        # so the nonce needs no hash of them. Compressed forms are hashed: another
        # zstd version may compress the same block differently.
        return self._seal(self._chunk, data, _CHUNK_AD + key.encode(),
                          determined=data[:1] == bytes([CODEC_RAW]))

    def open_chunk(self, key: str, sealed: bytes) -> memoryview:
        """The stored form, a view into an Authenticated buffer (no hash needed for raw)."""
        return _open(self._chunk, sealed, _CHUNK_AD + key.encode())

    # metadata objects -------------------------------------------------------------
    def meta_name(self, name: str) -> str:
        """*name* with its last component encrypted (directories stay readable)."""
        head, _, last = name.rpartition("/")
        if len(last) > NAME_MAX:
            raise ValueError(f"metadata name component {last[:20]!r}... is longer than "
                             f"{NAME_MAX} characters")
        return f"{head}/{_b32(self._meta_names.encrypt(last.encode(), [head.encode()]))}"

    def plain_meta_name(self, stored: str) -> str | None:
        """The real name of a stored metadata object, or None when it is not one of ours."""
        head, _, last = stored.rpartition("/")
        try:
            plain = self._meta_names.decrypt(_unb32(last), [head.encode()])
        except (InvalidTag, ValueError):
            return None
        return f"{head}/{plain.decode(errors='replace')}"

    def seal_meta(self, name: str, data: bytes) -> bytearray:
        return self._seal(self._meta, data, _META_AD + name.encode())

    def open_meta(self, name: str, sealed: bytes) -> bytes:
        return bytes(_open(self._meta, sealed, _META_AD + name.encode()))

    def _seal(self, aeads: dict[int, _Aead], data: bytes, ad: bytes,
              determined: bool = False) -> bytearray:
        """*determined*: the associated data alone fixes *data* (no hash needed).

        The object is built in one buffer, ``fmt ‖ nonce ‖ length ‖ data ‖ padding ‖
        tag space``, by one join (the one copy of the data; a join does not zero
        its buffer first, ``bytearray(n)`` does), and the frame is encrypted in
        place: OpenSSL's EVP ciphers take an output that is exactly the input.
        No second 1 MiB buffer, no second copy (both showed in the daemon's
        profile: the copy, the zeroing and the page faults of a fresh buffer)."""
        fmt = self.write_format
        nonce = hmac.digest(self._nonce_key, ad + (b"\0" if determined else
                                                   b"\1" + hashlib.sha256(data).digest()),
                            "sha256")[:NONCE]
        size = padded_size(_LEN.size + len(data))
        head = 1 + NONCE
        sealed = bytearray().join((bytes([fmt]), nonce, _LEN.pack(len(data)), data,
                                   bytes(size - _LEN.size - len(data) + TAG)))
        view = memoryview(sealed)
        try:
            aeads[fmt].encrypt_into(nonce, view[head:head + size], ad, view[head:])
        finally:
            view.release()
        return sealed


def _open(aeads: dict[int, _Aead], sealed: bytes, ad: bytes) -> memoryview:
    """The payload, as a view into one buffer the plaintext was decrypted into; the
    first byte says the format."""
    if len(sealed) < OVERHEAD:
        raise SealError("too short for a sealed object (truncated)")
    aead = aeads.get(sealed[0])
    if aead is None:
        raise SealError(f"not a sealed object of a known format (first byte {sealed[0]}: "
                        f"plaintext, or written by a newer gffs)")
    view = memoryview(sealed)
    framed = Authenticated(len(sealed) - 1 - NONCE - TAG)
    try:
        aead.decrypt_into(bytes(view[1:1 + NONCE]), view[1 + NONCE:], ad, framed)
    except InvalidTag:
        raise SealError("authentication failed (altered, truncated, swapped or another key)") from None
    (n,) = _LEN.unpack_from(framed)
    if n > len(framed) - _LEN.size:
        raise SealError("length field beyond the payload")
    return memoryview(framed)[_LEN.size:_LEN.size + n]
