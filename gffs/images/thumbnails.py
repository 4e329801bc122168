"""Thumbnails of an already-decoded image: three freedesktop sizes, turned upright, as PNG.

The sizes are the freedesktop thumbnail directories file managers look in
(``normal`` 128, ``large`` 256, ``x-large`` 512 pixels on the longer side),
so what is served from ``.sh_thumbnails/<size>/`` is a thumbnail as the spec says.
``xx-large`` (1024) is left out: it would cost about as much CPU and storage
as the three others together and is only asked for at the largest zooms of
high-DPI screens (the file manager then makes its own).

Thumbnails are made in the analysis process from the pixels the analysis has
decoded anyway (:func:`gffs.images.analyze.analyze_image`), never by decoding
again; an image is never scaled up. What is stored is one compact source per
content (gffs.images.thumbsource: the largest size as WebP) from which every
size's PNG is rendered the same way here and when served. The PNGs carry the content-level text
chunks of the spec (size, type and dimensions of the original); the per-file
``Thumb::URI`` and ``Thumb::MTime`` are inserted when a file is read
(:func:`with_file_text`), because one content can be several files with
different names and times.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

# Pillow (and gffs.images.analyze, thumbsource) load inside the functions that use them:
# thumbnails are made in the analysis process, and the daemon imports this module
# without paying for Pillow at mount time

SIZES: tuple[tuple[str, int], ...] = (("normal", 128), ("large", 256), ("x-large", 512))
"""(freedesktop directory name, longest side in pixels), smallest first."""

SIZE_NAMES = tuple(name for name, _ in SIZES)
LARGEST = SIZES[-1][1]

_MIMETYPES = {"jpeg": "image/jpeg", "png": "image/png", "gif": "image/gif", "tiff": "image/tiff",
              "webp": "image/webp", "heic": "image/heic", "avif": "image/avif"}

# EXIF orientation -> the name of the transpose that shows the stored pixels upright
_UPRIGHT = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
            6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90"}

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IHDR_END = len(PNG_SIGNATURE) + 8 + 13 + 4   # signature, then IHDR: length, type, 13 bytes, CRC


@dataclass(frozen=True, slots=True)
class Thumbnail:
    size: str      # "normal", "large" or "x-large"
    width: int
    height: int
    png: bytes     # the PNG served (rendered from source, as the daemon will)
    source: bytes  # what is stored: the same compact source for every size


def fit(width: int, height: int, box: int) -> tuple[int, int]:
    """The size of a *width* x *height* image scaled to fit *box* (never scaled up)."""
    longest = max(width, height)
    if longest <= box:
        return width, height
    return max(1, round(width * box / longest)), max(1, round(height * box / longest))


def make_thumbnails(im: Image.Image, facts: dict[str, str], original_size: int) -> list[Thumbnail]:
    """The three thumbnails of decoded pixels *im* (largest first), or [] if that fails.

    *facts* are the analysis' facts of the image (format, stored size and
    orientation); *original_size* is the file's size in bytes. The rotation
    still to do is read from the decoded image itself: Pillow turns TIFFs
    upright while decoding and libheif HEICs, and their EXIF then says so.
    """
    try:
        return _make(im, facts, original_size)
    except Exception:  # noqa: BLE001 - a thumbnail is a convenience: facts must survive
        return []


def _make(im: Image.Image, facts: dict[str, str], original_size: int) -> list[Thumbnail]:
    from PIL import Image

    from gffs.images.thumbsource import encode_source, render
    im = _displayable(im)
    width, height = int(facts["width"]), int(facts["height"])   # as stored in the file
    if facts.get("orientation") in ("5", "6", "7", "8"):
        width, height = height, width
    pending = _orientation(im)   # what the decoder has not applied yet
    base = im.transpose(Image.Transpose[_UPRIGHT[pending]]) if pending in _UPRIGHT else im
    text = [("Thumb::Image::Width", str(width)), ("Thumb::Image::Height", str(height)),
            ("Thumb::Mimetype", _MIMETYPES.get(facts.get("format", ""), "image/*")),
            ("Thumb::Size", str(original_size)), ("Software", "gffs")]
    decoded = base.size

    def box_size(box: int) -> tuple[int, int]:
        w, h = fit(width, height, box)
        if w > decoded[0] or h > decoded[1]:  # decoded smaller (HEIC preview): keep it
            w, h = fit(*decoded, box)
        return w, h

    largest = box_size(LARGEST)
    if largest != base.size:
        base = base.resize(largest, Image.Resampling.LANCZOS, reducing_gap=3.0)
    source = encode_source(base, text)   # what is stored: every size is rendered from it
    return [Thumbnail(name, *box_size(box), render(source, *box_size(box)), source)
            for name, box in reversed(SIZES)]


def _displayable(im: Image.Image) -> Image.Image:
    """8-bit L, LA, RGB or RGBA: what a PNG thumbnail holds (the spec wants 8 bits)."""
    from gffs.images.analyze import to_8bit
    im = to_8bit(im)
    if im.mode in ("L", "LA", "RGB", "RGBA"):
        return im
    if im.mode == "1":
        return im.convert("L")
    has_alpha = im.mode in ("PA", "La", "RGBa") or "transparency" in im.info
    return im.convert("RGBA" if has_alpha else "RGB")


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - broken EXIF: show the pixels as stored
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


# --------------------------------------------------------------------------- per-file text

def _text_chunk(keyword: bytes, value: bytes) -> bytes:
    body = b"tEXt" + keyword + b"\0" + value
    return struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))


def file_text(uri: bytes, mtime_s: int | str) -> bytes:
    """The tEXt chunks naming one file: Thumb::URI and Thumb::MTime (spec: required).

    *mtime_s* is whole seconds, or a string such as ``mtime_text()`` gives."""
    return (_text_chunk(b"Thumb::URI", uri)
            + _text_chunk(b"Thumb::MTime", str(mtime_s).encode()))


def file_text_length(uri: bytes, mtime_s: int | str) -> int:
    """len(file_text(uri, mtime_s)) without building it (getattr of every thumbnail)."""
    return 2 * 13 + len(b"Thumb::URI") + len(uri) + len(b"Thumb::MTime") + len(str(mtime_s))


def with_file_text(png: bytes, uri: bytes, mtime_s: int | str) -> bytes:
    """A stored thumbnail with the file's text chunks inserted right after IHDR."""
    if png[:len(PNG_SIGNATURE)] != PNG_SIGNATURE or png[12:16] != b"IHDR":
        raise ValueError("stored thumbnail is not a PNG")
    return png[:_IHDR_END] + file_text(uri, mtime_s) + png[_IHDR_END:]
