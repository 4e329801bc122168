"""Read facts from image bytes: format, size, orientation, camera, capture time, GPS, colour.

:func:`analyze` is the only entry point. It is meant for bytes nobody vetted
(anything a user writes into the filesystem), so it is built around three rules:

* **It never raises.** A file that is not an image, is damaged, or is hostile
  gets ``{"error": "<one line>"}`` instead of facts. The caller (a worker
  thread of the daemon) never needs a ``try``.
* **Work is bounded before it starts.** Pillow's ``Image.open`` is lazy: it
  parses headers only. We compare the declared pixel count with ``max_pixels``
  *before* any pixel is decoded, and decode only what the dominant colour
  needs: JPEGs at 1/8 scale via ``draft()``, HEIC from an embedded thumbnail
  when there is one, other formats only when they fit ``max_decode_pixels``.
  Only the formats gffs cares about are tried (never EPS, which would run
  Ghostscript, nor the dozens of exotic Pillow plugins).
* **No global state is changed per call.** Pillow's own bomb limit
  (``Image.MAX_IMAGE_PIXELS``) and ``ImageFile.LOAD_TRUNCATED_IMAGES`` are
  process-wide and other threads rely on them, so we neither set nor rely on
  them: the plugins are called directly and the size checked here. The only
  process-wide effect is registering the pillow-heif opener once at import.

Facts are flat ``name -> str`` pairs (names in docs/IMAGES.md), every value
one line of at most :data:`MAX_VALUE_BYTES` UTF-8 bytes with control
characters removed, because they come from files and end up as xattrs.
"""

from __future__ import annotations

import codecs
import io
import re
import struct

from PIL import Image, ImageFile

from gffs.images.exif import _metadata_facts
from gffs.images.values import MAX_VALUE_BYTES, _clean
from gffs.images.verdicts import OUT_OF_MEMORY, is_resource_failure, may_be_resource_failure

try:  # HEIC/HEIF is what phones write; pillow-heif is an optional extra.
    import pillow_heif

    pillow_heif.register_heif_opener()
    _heif_available = True
except Exception:  # noqa: BLE001 - ImportError, or a wheel whose native library fails to load
    _heif_available = False

Image.init()  # register every built-in plugin now, not lazily inside a worker thread

DEFAULT_MAX_PIXELS = 200_000_000
"""Declared width*height above which a file is refused as a decompression bomb."""

DEFAULT_MAX_DECODE_PIXELS = 50_000_000
"""Largest image decoded at full size (about 4 bytes/pixel of memory) for the colour.

JPEGs decode at 1/8 scale and are not limited by this, except progressive or
multi-scan ones: libjpeg then buffers coefficients for the whole image."""


THUMBNAIL_SIZE = 64
"""The dominant colour is computed on an image reduced to at most this many pixels a side."""

PALETTE_COLORS = 5
"""The thumbnail is quantized to this many colours; the most frequent one is dominant."""

MAX_JPEG_SCANS = 256
"""More scans than this is a CPU bomb (each scan re-walks the whole image); real files have < 20."""

_MAX_MARKERS_CHECKED = 250_000  # bounds the Python-level JPEG marker walk to ~0.1 s

# Pillow format id -> value of the "format" fact. MPO is Pillow's name for a JPEG with
# extra pictures (phone depth maps, stereo), which is still a JPEG to everyone else.
_FORMAT_NAMES = {
    "JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "GIF": "gif", "TIFF": "tiff",
    "WEBP": "webp", "AVIF": "avif", "HEIF": "heic",
}
# Plugins tried, in Pillow's own order (AVIF before HEIF: both claim "mif1" files).
_OPENERS = ("JPEG", "PNG", "GIF", "TIFF", "WEBP", "AVIF", "HEIF")

_HEIC_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs")

# Magic numbers of common non-image (or unsupported image) files, for a useful error.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"%PDF-", "not an image (PDF document)"),
    (0, b"PK\x03\x04", "not an image (ZIP archive)"),
    (0, b"\x1f\x8b", "not an image (gzip data)"),
    (0, b"BZh", "not an image (bzip2 data)"),
    (0, b"\xfd7zXZ\x00", "not an image (xz data)"),
    (0, b"(\xb5/\xfd", "not an image (zstd data)"),
    (0, b"7z\xbc\xaf'\x1c", "not an image (7-Zip archive)"),
    (0, b"Rar!\x1a\x07", "not an image (RAR archive)"),
    (0, b"\x7fELF", "not an image (ELF executable)"),
    (0, b"MZ", "not an image (Windows executable)"),
    (0, b"OggS", "not an image (Ogg media)"),
    (0, b"ID3", "not an image (MP3 audio)"),
    (0, b"fLaC", "not an image (FLAC audio)"),
    (0, b"\x1aE\xdf\xa3", "not an image (Matroska/WebM video)"),
    (0, b"SQLite format 3\x00", "not an image (SQLite database)"),
    (0, b"BM", "unsupported image format (bmp)"),
    (0, b"8BPS", "unsupported image format (psd)"),
    (0, b"\x00\x00\x01\x00", "unsupported image format (ico)"),
    (0, b"\xff\x0a", "unsupported image format (jxl)"),
    (4, b"JXL ", "unsupported image format (jxl)"),
    (4, b"jP  ", "unsupported image format (jpeg2000)"),
    (0, b"\xff\x4f\xff\x51", "unsupported image format (jpeg2000)"),
    (0, b"qoif", "unsupported image format (qoi)"),
)


# JPEG marker scanner: 0xFF (plus fill bytes) followed by a marker code; 0xFF00 is a
# stuffed data byte, not a marker.
_JPEG_MARKER = re.compile(rb"\xff+([^\x00\xff])")

# Markers that may legitimately end an entropy-coded scan: EOI, SOS, DHT, DQT, DRI,
# DNL, DAC, APPn, COM. Any other "marker" inside a scan is damaged data.
_AFTER_SCAN = frozenset([0xD9, 0xDA, 0xC4, 0xDB, 0xDD, 0xDC, 0xCC, 0xFE, *range(0xE0, 0xF0)])


class _Refused(Exception):
    """Stop analysing: the message is the ``error`` fact."""


def heic_supported() -> bool:
    """Whether HEIC/HEIF files can be read (pillow-heif is installed and loads)."""
    return _heif_available


def analyze(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
            max_decode_pixels: int = DEFAULT_MAX_DECODE_PIXELS) -> dict[str, str]:
    """Return the facts of an image as ``{name: value}``, or ``{"error": message}``.

    Never raises (for any ``Exception``): the daemon calls this on every file a
    user writes, so bad input must become an ``error`` fact, not a crashed
    worker. An ``error`` always comes alone: facts of a file whose pixels
    cannot be decoded are not trusted, so a reader needs only one test.

    ``max_pixels`` refuses files whose *declared* width*height is larger,
    before anything is decoded. ``max_decode_pixels`` bounds the memory of
    decoding for the dominant colour; larger images (other than baseline JPEGs,
    decoded at 1/8 scale) keep every other fact but get no ``dominant_color``
    and their pixel data is not checked.
    """
    return analyze_image(data, max_pixels=max_pixels, max_decode_pixels=max_decode_pixels)[0]


def analyze_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                  max_decode_pixels: int = DEFAULT_MAX_DECODE_PIXELS,
                  keep_pixels: int = 0) -> tuple[dict[str, str], Image.Image | None]:
    """:func:`analyze`, plus the decoded pixels when *keep_pixels* > 0 (else None).

    The pixels are decoded once, at the smallest JPEG/HEIC scale that still
    gives at least *keep_pixels* on the longer side (or the whole image), so
    thumbnails come from the same decode as the dominant colour. None when
    there are facts but nothing was decoded (an image above
    ``max_decode_pixels``) or when there is an ``error``.
    """
    try:
        try:
            facts, pixels = _analyze(data if isinstance(data, bytes) else bytes(data),
                                     max_pixels, min(max_decode_pixels, max_pixels), keep_pixels)
        except _Refused as refusal:
            facts, pixels = {"error": str(refusal)}, None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            # Raised by Pillow's own (process-wide) limit inside some plugins (GIF
            # frames, TIFF tiles, WebP), or by its warning when warnings are errors.
            found = re.search(r"\((\d+) pixels\)", str(exc))
            facts = {"error": f"decompression bomb: {found[1] if found else 'too many'} pixels"}
            pixels = None
        except MemoryError:
            facts, pixels = {"error": OUT_OF_MEMORY}, None
        except Exception as exc:  # noqa: BLE001
            facts = {"error": OUT_OF_MEMORY if _is_resource_exc(exc)
                     else f"cannot read image ({_describe(exc)})"}
            pixels = None
        facts = _finish(facts)
        return facts, (pixels if "error" not in facts else None)
    except Exception:  # noqa: BLE001 - a bug above must still not reach the caller
        return {"error": "internal error while analysing the image"}, None


# --------------------------------------------------------------------------- steps

def _analyze(data: bytes, max_pixels: int, max_decode_pixels: int,
             keep_pixels: int) -> tuple[dict[str, str], Image.Image | None]:
    if not data:
        raise _Refused("empty file")
    im = _open(data)
    fmt = _FORMAT_NAMES.get(im.format or "", "image")
    width, height = _stored_size(im)
    if width <= 0 or height <= 0:
        raise _Refused(f"invalid image dimensions {width}x{height}")
    if width * height > max_pixels:
        raise _Refused(f"decompression bomb: {width * height} pixels (limit {max_pixels})")

    buffered = False  # does decoding need memory for the whole image?
    if fmt == "jpeg":
        scans, complete, problem = _check_jpeg_structure(data)
        if problem:
            raise _Refused(problem)
        buffered = (scans > 1 or not complete
                    or bool(im.info.get("progressive") or im.info.get("progression")))

    facts: dict[str, str] = {"format": fmt, "width": str(width), "height": str(height)}
    exif_read = False
    if not (im.format == "PNG" and "exif" not in im.info):  # PNG would decode to find it
        facts.update(_metadata_facts(im))
        exif_read = True

    small = _decode_small(im, fmt, width * height, buffered, max_decode_pixels,
                          max(keep_pixels, THUMBNAIL_SIZE))
    if small is not None and not exif_read:
        facts.update(_metadata_facts(im))  # a PNG's eXIf chunk may follow its pixels
    if small is not None:
        color = _dominant_color(small.copy() if keep_pixels else small)
        if color:
            facts["dominant_color"] = color
    return facts, (small if keep_pixels else None)


def _stored_size(im: Image.Image) -> tuple[int, int]:
    """Width and height as stored in the file, before any orientation is applied.

    Pillow's TIFF plugin reports (and loads) TIFFs already turned upright by
    their Orientation tag; the file's own ImageWidth/ImageLength tags say what
    is stored, which is what the ``orientation`` fact applies to. (HEIC is
    different on purpose: libheif always decodes upright and pillow-heif resets
    the EXIF orientation to 1, so the pair stays consistent there too.)
    """
    if im.format == "TIFF":
        tags = getattr(im, "tag_v2", {})
        width, height = tags.get(256), tags.get(257)
        if isinstance(width, int) and isinstance(height, int) and {width, height} == set(im.size):
            return width, height
    return im.size


def _open(data: bytes) -> ImageFile.ImageFile:
    """Open with the allowed plugins only, checking no size (the caller does).

    This is what ``Image.open`` does, minus its process-wide bomb check (the
    caller applies ``max_pixels`` itself) and minus the 40 formats gffs does
    not handle.
    """
    prefix = data[:16]
    fp = io.BytesIO(data)
    failure: tuple[str, Exception] | None = None
    for fmt in _OPENERS:
        if fmt == "HEIF" and not _heif_available:
            continue
        entry = Image.OPEN.get(fmt)
        if entry is None:
            continue
        factory, accept = entry
        try:
            accepted = accept is None or accept(prefix)
        except Exception:  # noqa: BLE001
            accepted = False
        if not accepted or isinstance(accepted, str):  # a str is Pillow's "can't, because..."
            continue
        fp.seek(0)
        try:
            return factory(fp, "")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - not this plugin's; Pillow tries the next too
            failure = failure or (fmt, exc)
    if failure is not None:
        name = _FORMAT_NAMES.get(failure[0], failure[0].lower())
        if _is_truncation(failure[1]):
            raise _Refused(f"truncated {name} file")
        raise _Refused(f"corrupt {name} header ({_describe(failure[1])})")
    raise _Refused(_sniff(data))


def _sniff(data: bytes) -> str:
    """Name what a file that no image plugin accepted probably is."""
    if data[4:8] == b"ftyp":
        brands = data[8:12] + data[16:64]
        if any(b in brands for b in _HEIC_BRANDS) and not _heif_available:
            return "HEIC support not installed (pip install pillow-heif)"
        if data[8:12] in (b"avif", b"avis"):
            return "unsupported image format (avif)"
        if any(b in brands for b in _HEIC_BRANDS):
            return "corrupt heic header"
        return "not an image (MP4/QuickTime video)"
    if data[:4] == b"RIFF" and data[8:12] in (b"WAVE", b"AVI "):
        return f"not an image ({'WAV audio' if data[8:12] == b'WAVE' else 'AVI video'})"
    for offset, magic, message in _SIGNATURES:
        if data[offset:offset + len(magic)] == magic:
            return message
    head = data[:4096]
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "not an image (text)"
    text = codecs.getincrementaldecoder("utf-8")("replace").decode(head, final=False)
    if "\ufffd" not in text and not re.search("[\x00-\x08\x0e-\x1f\x7f]", text):
        if re.search(r"<svg[\s>]", text[:2048], re.IGNORECASE):
            return "unsupported image format (svg)"
        return "not an image (text)"
    return "not an image (unrecognized data)"


def _check_jpeg_structure(data: bytes) -> tuple[int, bool, str | None]:
    """Walk a JPEG's markers: ``(scans, complete, problem)``.

    libjpeg silently resynchronises on damaged entropy data (garbled or
    missing restart markers, junk that looks like a marker) and Pillow reports
    success, so damage shows only as smeared or grey blocks. Checking that a
    scan holds only RST0..7 in sequence, ended by a marker that may follow a
    scan, catches it. The scan count bounds decode CPU (every progressive scan
    re-walks the whole image) and tells whether libjpeg must buffer the whole
    image. Truncation is left to Pillow, which reports it reliably.

    Each marker costs one regex step in Python, so the walk stops after
    :data:`_MAX_MARKERS_CHECKED` markers; ``complete`` is then False and the
    caller assumes the worst about buffering. Files with that many markers
    are restart-every-block encodings of huge images, or hostile.
    """
    markers = 0
    scans = 0
    pos = 2  # after SOI
    n = len(data)
    while pos < n:
        m = _JPEG_MARKER.search(data, pos)
        if m is None:
            break
        code = m.group(1)[0]
        pos = m.end()
        markers += 1
        if markers > _MAX_MARKERS_CHECKED:
            return scans, False, None
        if code == 0xD9:  # EOI
            break
        if 0xD0 <= code <= 0xD7 or code == 0x01:  # stray RSTn/TEM: no length field
            continue
        if pos + 2 > n:
            break
        pos += int.from_bytes(data[pos:pos + 2], "big")
        if code != 0xDA:  # SOS: the entropy-coded scan follows its header
            continue
        scans += 1
        if scans > MAX_JPEG_SCANS:
            return scans, False, f"too many jpeg scans (more than {MAX_JPEG_SCANS})"
        expected = 0
        for m in _JPEG_MARKER.finditer(data, pos):
            code = m.group(1)[0]
            if not 0xD0 <= code <= 0xD7:
                if code not in _AFTER_SCAN:  # libjpeg stops here and greys out the rest
                    return scans, True, (f"corrupt jpeg data (marker 0x{code:02x} inside the "
                                         f"image data at byte {m.start()})")
                pos = m.start()  # end of this scan: the outer loop reads the marker
                break
            markers += 1
            if markers > _MAX_MARKERS_CHECKED:
                return scans, False, None
            if code - 0xD0 != expected:
                return scans, True, (f"corrupt jpeg data (restart marker {code - 0xD0} where "
                                     f"{expected} belongs, at byte {m.start()})")
            expected = (expected + 1) & 7
        else:
            break
    return scans, True, None


def _decode_small(im: ImageFile.ImageFile, fmt: str, pixels: int, buffered: bool,
                  max_decode_pixels: int, edge: int) -> Image.Image | None:
    """Decode the least pixels that give *edge* pixels on the longer side, or None if too costly.

    Decoding is also what finds truncated or corrupt pixel data, so a failure
    here becomes the ``error`` fact.
    """
    if pixels > max_decode_pixels and (fmt not in ("jpeg", "heic") or (fmt == "jpeg" and buffered)):
        return None
    # the box that an *edge* x *edge* fit leaves: draft() scales both sides down to it
    longest = max(im.size)
    box = (max(1, im.size[0] * edge // longest), max(1, im.size[1] * edge // longest))
    try:
        if fmt == "jpeg":
            im.draft(None, box)  # DCT scaling: 1/2, 1/4 or 1/8
        elif fmt == "heic":
            # Selects an embedded thumbnail when the file has one; else a full decode.
            thumbnail = im.draft(None, box)
            if thumbnail is None and pixels > max_decode_pixels:
                return None
        im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, MemoryError):
        raise
    except Exception as exc:
        if _is_resource_exc(exc):   # libheif: "Memory allocation error": not the file's fault
            raise MemoryError(str(exc)) from exc
        if _is_truncation(exc):
            raise _Refused(f"truncated {fmt} file") from exc
        raise _Refused(f"corrupt {fmt} data ({_describe(exc)})") from exc
    return im


_RESOURCE_WORDS = ("memory allocation", "cannot allocate memory", "out of memory", "bad_alloc",
                   "insufficient memory")


def _is_resource_exc(exc: BaseException) -> bool:
    """A decoder that ran out of memory (or address space), whatever it calls that."""
    return isinstance(exc, MemoryError) or any(w in str(exc).lower() for w in _RESOURCE_WORDS)




# --------------------------------------------------------------------------- colour

def _dominant_color(im: Image.Image) -> str | None:
    """The most frequent of a few colours of a small thumbnail, as ``#rrggbb``.

    Transparent pixels do not count (a logo's colour is not its background).
    Colour is a hint, so any problem here just leaves the fact out.
    """
    try:
        im.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        im = to_8bit(im)
        has_alpha = im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info
        if has_alpha:
            raw = im.convert("RGBA").tobytes()
            opaque = b"".join(raw[i:i + 3] for i in range(0, len(raw), 4) if raw[i + 3] >= 128)
            if not opaque:
                return None
            rgb = Image.frombytes("RGB", (len(opaque) // 3, 1), opaque)
        else:
            rgb = im.convert("RGB")
        quantized = rgb.quantize(colors=PALETTE_COLORS, method=Image.Quantize.MEDIANCUT)
        counts = quantized.getcolors(256) or []
        palette = quantized.getpalette() or []
        if not counts:
            return None
        _, index = max(counts, key=lambda c: (c[0], -c[1]))
        r, g, b = palette[3 * index:3 * index + 3]
        return f"#{r:02x}{g:02x}{b:02x}"
    except Exception:  # noqa: BLE001
        return None


def to_8bit(im: Image.Image) -> Image.Image:
    """16-bit and integer/float greyscale as 8-bit ``L`` (others unchanged): what colour
    quantizing and PNG thumbnails need."""
    if im.mode.startswith("I;16"):
        return im.convert("I").point(lambda v: v / 257).convert("L")
    if im.mode in ("I", "F"):
        lo, hi = im.getextrema()
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        return im.point(lambda v: (v - lo) * scale).convert("L")
    return im


# --------------------------------------------------------------------------- strings


def _is_truncation(exc: BaseException) -> bool:
    """Pillow says "truncated" in several spellings; a short read shows as EOF/struct errors."""
    text = str(exc).lower()
    return (isinstance(exc, (EOFError, struct.error)) or "truncated" in text
            or "buffer of at least" in text)


def _describe(exc: BaseException) -> str:
    text = _clean(str(exc))
    name = type(exc).__name__
    text = f"{name}: {text}" if text else name
    return text if len(text) <= 200 else text[:197] + "..."


def _finish(facts: dict[str, str]) -> dict[str, str]:
    """Sanitise every value; an error replaces all other facts."""
    if "error" in facts:
        return {"error": _clean(facts["error"]) or "unreadable image"}
    out = {}
    for key, value in facts.items():
        value = _clean(value)
        if value:
            out[key] = value
    return out


__all__ = ["DEFAULT_MAX_DECODE_PIXELS", "DEFAULT_MAX_PIXELS", "MAX_VALUE_BYTES", "analyze",
           "analyze_image", "heic_supported", "to_8bit"]
