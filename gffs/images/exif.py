"""EXIF facts of an opened image: camera, lens, orientation, capture time, GPS."""

from __future__ import annotations

import datetime
import math
import re
from typing import Any

from PIL import Image

from gffs.images.values import _clean

_DATETIME = re.compile(r"(\d{4})[:-](\d{2})[:-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_UTC_OFFSET = re.compile(r"([+-])(\d{2}):(\d{2})")

# EXIF tag numbers (TIFF/EXIF 2.32).
_TAG_MAKE, _TAG_MODEL, _TAG_ORIENTATION = 0x010F, 0x0110, 0x0112
_TAG_EXIF_IFD, _TAG_GPS_IFD = 0x8769, 0x8825
_TAG_DATETIME_ORIGINAL, _TAG_OFFSET_TIME_ORIGINAL, _TAG_LENS_MODEL = 0x9003, 0x9011, 0xA434
_GPS_LAT_REF, _GPS_LAT, _GPS_LON_REF, _GPS_LON, _GPS_ALT_REF, _GPS_ALT = 1, 2, 3, 4, 5, 6


def _metadata_facts(im: Image.Image) -> dict[str, str]:
    """EXIF facts; a damaged or hostile EXIF block loses facts, never the image."""
    facts: dict[str, str] = {}
    try:
        exif = im.getexif()
    except Exception:  # noqa: BLE001
        return facts
    ifd0: dict[int, Any] = _safe_dict(lambda: dict(exif))
    exif_ifd: dict[int, Any] = _safe_dict(lambda: exif.get_ifd(_TAG_EXIF_IFD))
    gps: dict[int, Any] = _safe_dict(lambda: exif.get_ifd(_TAG_GPS_IFD))

    orientation = ifd0.get(_TAG_ORIENTATION)
    if isinstance(orientation, int) and 1 <= orientation <= 8:
        facts["orientation"] = str(orientation)
    for name, value in (("camera_make", ifd0.get(_TAG_MAKE)),
                        ("camera_model", ifd0.get(_TAG_MODEL)),
                        ("lens", exif_ifd.get(_TAG_LENS_MODEL))):
        text = _text(value)
        if text:
            facts[name] = text
    # Some writers put DateTimeOriginal in IFD0; the EXIF IFD is where it belongs.
    when = _capture_time(exif_ifd.get(_TAG_DATETIME_ORIGINAL, ifd0.get(_TAG_DATETIME_ORIGINAL)),
                         exif_ifd.get(_TAG_OFFSET_TIME_ORIGINAL,
                                      ifd0.get(_TAG_OFFSET_TIME_ORIGINAL)))
    if when:
        facts["capture_time"] = when
    facts.update(_gps_facts(gps))
    return facts


def _safe_dict(get: Any) -> dict[int, Any]:
    try:
        value = get()
        return dict(value) if value else {}
    except Exception:  # noqa: BLE001
        return {}


def _text(value: Any) -> str | None:
    """An EXIF string as clean text, or None.

    EXIF says ASCII but cameras and editors write UTF-8, which Pillow hands over
    decoded as latin-1; undo that when the bytes are valid UTF-8."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    elif isinstance(value, str):
        try:
            value = value.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    else:
        return None  # a number or tuple where a string belongs: hostile or broken
    # An EXIF string ends at its first NUL (what follows is padding or junk; exiftool
    # agrees): "ION230\0F" is "ION230".
    return _clean(value.split("\x00", 1)[0]) or None


def _capture_time(value: Any, offset: Any) -> str | None:
    """``YYYY:MM:DD HH:MM:SS`` (+ ``±HH:MM``) as ISO 8601; the all-zero "unset" is dropped."""
    text = _text(value)
    match = _DATETIME.fullmatch(text or "")
    if not match:
        return None
    try:
        when = datetime.datetime(*(int(part) for part in match.groups()))
    except ValueError:
        return None
    result = when.strftime("%Y-%m-%dT%H:%M:%S")
    tz = _UTC_OFFSET.fullmatch(_text(offset) or "")
    if tz and int(tz[2]) <= 14 and int(tz[3]) < 60:
        result += f"{tz[1]}{tz[2]}:{tz[3]}"
    return result


def _gps_facts(gps: dict[int, Any]) -> dict[str, str]:
    facts: dict[str, str] = {}
    lat = _degrees(gps.get(_GPS_LAT), gps.get(_GPS_LAT_REF), "S", 90.0)
    lon = _degrees(gps.get(_GPS_LON), gps.get(_GPS_LON_REF), "W", 180.0)
    if lat is not None and lon is not None:  # half a position is no position
        facts["gps_lat"] = _fixed(lat, 6)
        facts["gps_lon"] = _fixed(lon, 6)
    alt = _number(gps.get(_GPS_ALT))
    if alt is not None and abs(alt) < 1e6:
        ref = gps.get(_GPS_ALT_REF)
        below = ref in (1, b"\x01") or (isinstance(ref, tuple) and ref[:1] == (1,))
        facts["gps_alt"] = _fixed(-alt if below else alt, 2)
    return facts


def _degrees(value: Any, ref: Any, negative: str, limit: float) -> float | None:
    """Degrees, minutes, seconds (rationals) and an N/S or E/W reference -> signed degrees."""
    parts = value if isinstance(value, (tuple, list)) else (value,)
    if not 1 <= len(parts) <= 3:
        return None
    numbers = [_number(p) for p in parts]
    if any(x is None or x < 0 for x in numbers):
        return None
    degrees = sum(x / 60 ** i for i, x in enumerate(numbers))  # type: ignore[operator]
    if degrees > limit:
        return None
    letter = (_text(ref) or "").upper()[:1]
    return -degrees if letter == negative else degrees


def _number(value: Any) -> float | None:
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    try:
        x = float(value)  # IFDRational with a zero denominator is NaN
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    return x if math.isfinite(x) else None


def _fixed(x: float, digits: int) -> str:
    text = f"{x:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.000000"
