"""The stored form of an image's thumbnails: one compact WebP, rendered as PNG when served.

The freedesktop spec wants PNG thumbnails (the viewer's ``~/.cache/thumbnails``,
``.sh_thumbnails``), but PNGs of photos are large: the three sizes as PNG took
116 % of the team's camera samples (many are small) and 35 % of 3000x2000 camera
JPEGs. So one *source* is stored per content: the largest thumbnail as WebP,
lossy at the lowest quality of :data:`QUALITIES` that keeps it at least
:data:`MIN_PSNR` dB from the exact pixels (graphics and tiny images need more;
lossless when no quality does), with the content's text chunks and pixel mode
in a small header. Every size is rendered from it on demand by :func:`render`:
decode, scale, PNG. Rendering is deterministic, so the analysis process
renders each size once to record its exact length (``st_size`` of a
``.sh_thumbnails`` file is known without rendering).

Layout: ``MAGIC``, u32 header length, header (JSON: ``mode``, ``text`` pairs),
WebP bytes. A stored chunk that is a PNG comes from a gffs before sources; it
is served unchanged.
"""

from __future__ import annotations

import io
import json
import math
import struct
import zlib

from PIL import Image, ImageChops, ImageStat, PngImagePlugin, WebPImagePlugin

MAGIC = b"gffs-thumb-webp\n"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
QUALITIES = (80, 92)        # lossy WebP qualities tried, smallest first
MIN_PSNR = 32.0             # dB against the exact pixels: no visible loss at thumbnail size
WEBP_METHOD = 4             # libwebp effort (0-6): 4 is its default trade-off
PNG_COMPRESS_LEVEL = 3      # zlib: 3x faster than the default 6 on photos, 11% larger
_HEADER_LEN = struct.Struct(">I")


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Peak signal-to-noise ratio of two same-sized images in dB (inf when identical)."""
    bands = "RGBA" if "A" in a.mode else "RGB"
    diff = ImageChops.difference(a.convert(bands), b.convert(bands))
    mse = sum(ImageStat.Stat(diff).sum2) / (len(bands) * a.size[0] * a.size[1])
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def _webp(im: Image.Image, quality: int | None) -> bytes:
    buf = io.BytesIO()
    if quality is None:
        im.save(buf, "WEBP", lossless=True, quality=100, method=WEBP_METHOD, exact=True)
    else:
        im.save(buf, "WEBP", quality=quality, method=WEBP_METHOD)
    return buf.getvalue()


def _decode_webp(data: bytes) -> Image.Image:
    im = WebPImagePlugin.WebPImageFile(io.BytesIO(data))
    im.load()
    return im


def encode_source(im: Image.Image, text: list[tuple[str, str]]) -> bytes:
    """The stored source of an 8-bit L/LA/RGB/RGBA thumbnail *im* with the PNG *text* chunks."""
    webp_im = im.convert("RGBA" if "A" in im.mode else "RGB")
    for quality in (*QUALITIES, None):
        webp = _webp(webp_im, quality)
        if quality is None or psnr(webp_im, _decode_webp(webp)) >= MIN_PSNR:
            break
    header = json.dumps({"mode": im.mode, "text": text}, separators=(",", ":")).encode()
    return MAGIC + _HEADER_LEN.pack(len(header)) + header + webp


def is_source(data: bytes) -> bool:
    return data[:len(MAGIC)] == MAGIC


def render(stored: bytes, width: int, height: int) -> bytes:
    """The PNG of one size from a stored source (a stored PNG is returned as it is).

    Raises ValueError for bytes that are neither."""
    if stored[:len(PNG_SIGNATURE)] == PNG_SIGNATURE:
        return stored
    if not is_source(stored):
        raise ValueError("stored thumbnail is neither a gffs source nor a PNG")
    start = len(MAGIC) + _HEADER_LEN.size
    (n,) = _HEADER_LEN.unpack_from(stored, len(MAGIC))
    header = json.loads(stored[start:start + n])
    im = _decode_webp(stored[start + n:])
    if im.size != (width, height):
        im = im.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=3.0)
    if im.mode != header["mode"]:
        im = im.convert(header["mode"])
    info = PngImagePlugin.PngInfo()
    for key, value in header["text"]:
        info.add_text(key, value)
    buf = io.BytesIO()
    im.save(buf, "PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


_PAD_KEYWORD = b"gffs:padding"
_PAD_MIN = 12 + len(_PAD_KEYWORD) + 1   # length, type and CRC fields, keyword, NUL


def fit_length(png: bytes, length: int) -> bytes:
    """*png* padded before IEND with a tEXt chunk to exactly *length* bytes, when it can be."""
    missing = length - len(png)
    if missing < _PAD_MIN or png[-12:-8] != b"\0\0\0\0" or png[-8:-4] != b"IEND":
        return png
    body = b"tEXt" + _PAD_KEYWORD + b"\0" + b" " * (missing - _PAD_MIN)
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    return png[:-12] + chunk + png[-12:]


def served_png(stored: bytes, width: int, height: int, length: int) -> bytes:
    """The PNG served for a thumbnail row (its source rendered, padded to the row's length):
    what .sh_thumbnails, the viewer's cache and a published flow all get."""
    return fit_length(render(stored, width, height), length)
