"""``flow publish --strip-gps``: JPEG copies without their GPS positions, pixels untouched.

The EXIF block (APP1 ``Exif\\0\\0``) is a TIFF structure; IFD0's tag 0x8825 points at the
GPS IFD. Stripping zeroes every GPS entry and every value an entry points at, then sets
the IFD's entry count to 0: no byte of the position is left in the file, and since no
offset moves, the rest of the EXIF (camera, date, orientation) and the compressed image
data stay byte for byte. Re-encoding with an image library would change the pixels and
lose metadata; dropping the APP1 segment would lose orientation.
"""

from __future__ import annotations

import struct

_GPS_IFD = 0x8825
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}


def _exif_segment(data: bytes) -> tuple[int, int] | None:
    """(start, end) of the TIFF data inside the first APP1 Exif segment of a JPEG."""
    if data[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xD9, 0xDA):         # end of image / start of scan: no more headers
            return None
        (length,) = struct.unpack_from(">H", data, pos + 2)
        body = pos + 4
        if marker == 0xE1 and data[body:body + 6] == b"Exif\0\0":
            return body + 6, min(pos + 2 + length, len(data))
        pos += 2 + length
    return None


def strip_gps(data: bytes) -> bytes | None:
    """*data* without GPS positions, or None when it is no JPEG with a GPS IFD.

    ValueError for an EXIF block too damaged to clean safely (publish refuses it)."""
    seg = _exif_segment(data)
    if seg is None:
        return None
    start, end = seg
    tiff = bytearray(data[start:end])
    order = {b"II": "<", b"MM": ">"}.get(bytes(tiff[:2]))
    if order is None or len(tiff) < 8:
        raise ValueError("EXIF block without a TIFF header")
    (ifd0,) = struct.unpack_from(order + "I", tiff, 4)
    gps = None
    for tag, _typ, _count, value in _entries(tiff, order, ifd0):
        if tag == _GPS_IFD:
            gps = value
    if gps is None:
        return None
    for _tag, typ, count, value in _entries(tiff, order, gps):
        size = _TYPE_SIZES.get(typ, 1) * count
        if size > 4:
            if value + size > len(tiff):
                raise ValueError("GPS value beyond the EXIF block")
            tiff[value:value + size] = bytes(size)
    (n,) = struct.unpack_from(order + "H", tiff, gps)
    tiff[gps + 2:gps + 2 + 12 * n] = bytes(12 * n)
    struct.pack_into(order + "H", tiff, gps, 0)
    return data[:start] + bytes(tiff) + data[end:]


def _entries(tiff: bytearray, order: str, offset: int) -> list[tuple[int, int, int, int]]:
    if offset + 2 > len(tiff):
        raise ValueError("IFD beyond the EXIF block")
    (n,) = struct.unpack_from(order + "H", tiff, offset)
    if offset + 2 + 12 * n > len(tiff):
        raise ValueError("IFD entries beyond the EXIF block")
    return [struct.unpack_from(order + "HHII", tiff, offset + 2 + 12 * i) for i in range(n)]
