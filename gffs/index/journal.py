"""The redo journal: what the open group transaction holds, in a file that survives kill -9.

Every request's index change (one child transaction of the group) is appended
here with one plain ``write()`` before it becomes visible: the page cache keeps
it when the daemon dies, without an fdatasync per request. A group commit
records the last sequence number in ``meta`` and then empties the journal.

The header holds the boot id. After a reboot (a power loss may have happened)
the records are discarded, never replayed: the chunk files they reference may
never have reached the disk, and the index must not point at them. Records
past a torn or damaged one are ignored too.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import zlib
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

MAGIC = b"GFFSJRN1"
BOOT_ID_LEN = 36
HEADER = struct.Struct(f">8s{BOOT_ID_LEN}s")
RECORD = struct.Struct(">IQI")        # payload length, sequence number, crc32 of the payload
OP = struct.Struct(">cBII")            # kind, db number, key length, value length
PUT, DELETE, VOID = b"p", b"d", b"v"  # VOID: the record of that seq was not applied

# (kind, db number, key, value): one put or delete of a child transaction
Op = tuple[bytes, int, bytes, bytes]


def boot_id() -> bytes:
    """This boot's id: records written under another boot id may describe lost chunks."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_bytes().strip()[:BOOT_ID_LEN]
    except OSError:
        return b"unknown".ljust(BOOT_ID_LEN, b"-")


def encode(ops: list[Op]) -> bytes:
    parts = []
    for kind, dbnum, key, value in ops:
        parts += [OP.pack(kind, dbnum, len(key), len(value)), key, value]
    return b"".join(parts)


def decode(payload: bytes) -> list[Op]:
    ops, pos = [], 0
    while pos < len(payload):
        kind, dbnum, klen, vlen = OP.unpack_from(payload, pos)
        pos += OP.size
        key = payload[pos:pos + klen]
        value = payload[pos + klen:pos + klen + vlen]
        pos += klen + vlen
        ops.append((kind, dbnum, key, value))
    return ops


class Journal:
    """Append-only file of (seq, ops) records since the last durable group commit."""

    def __init__(self, path: Path) -> None:
        """Open and lock the journal; BlockingIOError if another process has it (a mount)."""
        self.path = path
        self.boot = boot_id().ljust(BOOT_ID_LEN, b"-")
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:  # a second opener must neither redo nor empty a live daemon's journal
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            raise
        self.size = os.fstat(self._fd).st_size
        self.bytes_pending = 0

    def records(self) -> Iterator[tuple[int, list[Op]]]:
        """Intact records of this boot, in order (nothing from another boot)."""
        data = os.pread(self._fd, self.size, 0)
        if len(data) < HEADER.size:
            return
        magic, boot = HEADER.unpack_from(data)
        if magic != MAGIC:
            log.warning("index journal %s has no valid header: ignored", self.path)
            return
        if boot != self.boot:
            log.warning("index journal %s is from another boot: the changes after the last "
                        "durable commit are discarded (their chunks may not be on disk)", self.path)
            return
        pos = HEADER.size
        while pos + RECORD.size <= len(data):
            length, seq, crc = RECORD.unpack_from(data, pos)
            payload = data[pos + RECORD.size:pos + RECORD.size + length]
            if len(payload) < length or zlib.crc32(payload) != crc:
                log.warning("index journal %s: torn record at offset %d ignored", self.path, pos)
                return
            yield seq, decode(payload)
            pos += RECORD.size + length

    def append(self, seq: int, ops: list[Op]) -> None:
        """One record with one write(): in the page cache when this returns (kill -9 safe)."""
        payload = encode(ops)
        record = RECORD.pack(len(payload), seq, zlib.crc32(payload)) + payload
        if self.size == 0:
            record = HEADER.pack(MAGIC, self.boot) + record
        written = os.pwrite(self._fd, record, self.size)
        if written != len(record):  # a short write on a full disk: never leave it half there
            os.ftruncate(self._fd, self.size)
            raise OSError(28, "No space left on device (index journal)")
        self.size += written
        self.bytes_pending += written

    def reset(self) -> None:
        """Empty the journal after a durable commit recorded its last sequence number."""
        os.ftruncate(self._fd, 0)
        self.size = 0
        self.bytes_pending = 0

    def close(self) -> None:
        os.close(self._fd)
