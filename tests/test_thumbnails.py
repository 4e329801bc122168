"""Thumbnail generation (gffs.images.thumbnails) and the analysis worker that makes them."""

from __future__ import annotations

import io
import os
import zlib

import pytest
from PIL import Image

from gffs.images.facts import _analyse_in_worker
from gffs.images.analyze import analyze, analyze_image
from gffs.images.thumbnails import (LARGEST, SIZES, file_text, file_text_length, fit,
                                    with_file_text)

SAMPLE_EXTS = {".jpg", ".jpeg", ".tif", ".tiff", ".heic", ".heif", ".png", ".webp"}


def encode(im: Image.Image, fmt: str, **save) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **save)
    return out.getvalue()


def photo(size=(3000, 2000)) -> Image.Image:
    """A gradient (so resampling has something to do), red at the top-left corner."""
    w, h = size
    im = Image.linear_gradient("L").resize(size).convert("RGB")
    im.paste((255, 0, 0), (0, 0, w // 10, h // 10))
    return im


def thumbs_of(data: bytes) -> dict:
    facts, thumbs = _analyse_in_worker(data)
    assert "error" not in facts
    return {t.size: t for t in thumbs}


def decoded(png: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(png))
    im.load()
    return im


def test_three_freedesktop_sizes_from_one_reduced_decode():
    data = encode(photo(), "JPEG", quality=90)
    facts, pixels = analyze_image(data, keep_pixels=LARGEST)
    assert pixels.size == (750, 500)     # DCT-scaled 1/4, just above 512: not a full decode
    assert facts == analyze(data) | {"dominant_color": facts["dominant_color"]}
    thumbs = thumbs_of(data)
    assert [(t.size, t.width, t.height) for t in thumbs.values()] == [
        ("x-large", 512, 341), ("large", 256, 171), ("normal", 128, 85)]
    for name, box in SIZES:
        im = decoded(thumbs[name].png)
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (thumbs[name].width,
                                                                         thumbs[name].height)
        assert max(im.size) == box
        assert im.text == {"Thumb::Image::Width": "3000", "Thumb::Image::Height": "2000",
                           "Thumb::Mimetype": "image/jpeg", "Thumb::Size": str(len(data)),
                           "Software": "gffs"}
        r, g, b = im.getpixel((1, 1))
        assert r > 200 and g < 60 and b < 60     # the red corner stays where it was
        assert "Thumb::URI" not in im.text and "Thumb::MTime" not in im.text  # per file, on read


def test_small_images_are_never_scaled_up():
    thumbs = thumbs_of(encode(photo((100, 60)), "PNG"))
    assert {(t.width, t.height) for t in thumbs.values()} == {(100, 60)}
    thumbs = thumbs_of(encode(photo((300, 40)), "PNG"))
    assert [(t.width, t.height) for t in thumbs.values()] == [(300, 40), (256, 34), (128, 17)]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_is_applied_once(fmt, orientation):
    im = Image.new("RGB", (400, 200), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 100, 100))   # red in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    thumbs = thumbs_of(encode(im, fmt, exif=exif))
    t = decoded(thumbs["normal"].png)
    # where the stored top-left corner is displayed (EXIF 1..8 as exiftool/browsers show it)
    w, h = t.size
    assert (w, h) == ((128, 64) if orientation in (1, 3) else (64, 128))
    corner = {1: (2, 2), 3: (w - 3, h - 3), 6: (w - 3, 2), 8: (2, h - 3)}[orientation]
    r, g, b = t.getpixel(corner)[:3]
    assert r > 200 and b < 60, (orientation, t.getpixel(corner))
    text = t.text
    assert (text["Thumb::Image::Width"], text["Thumb::Image::Height"]) == (
        ("400", "200") if orientation in (1, 3) else ("200", "400"))


@pytest.mark.parametrize("mode,color,fmt,expect", [
    ("RGBA", (10, 200, 30, 100), "PNG", "RGBA"),
    ("LA", (90, 128), "PNG", "LA"),
    ("L", 77, "JPEG", "L"),
    ("I;16", 40000, "PNG", "L"),
    ("P", 3, "GIF", "RGB"),
    ("CMYK", (0, 255, 255, 0), "JPEG", "RGB"),
    ("1", 1, "TIFF", "L"),
])
def test_every_pixel_mode_becomes_an_8bit_png(mode, color, fmt, expect):
    data = encode(Image.new(mode, (300, 200), color), fmt)
    t = decoded(thumbs_of(data)["large"].png)
    assert t.mode == expect and t.size == (256, 171)


def test_transparency_is_kept():
    im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    im.paste((255, 0, 0, 255), (0, 0, 32, 64))
    t = decoded(thumbs_of(encode(im, "PNG"))["normal"].png)
    # stored as lossy WebP: colours within a few levels, transparency exact
    assert all(abs(a - b) <= 4 for a, b in zip(t.getpixel((5, 5)), (255, 0, 0, 255)))
    assert t.getpixel((5, 5))[3] == 255 and t.getpixel((60, 5))[3] == 0


@pytest.mark.parametrize("data", [
    b"", b"hello\n" * 50, os.urandom(4000),
    encode(photo((500, 500)), "PNG")[:400],           # truncated
    b"\x89PNG\r\n\x1a\n" + b"\0" * 100,                # corrupt header
], ids=["empty", "text", "random", "truncated", "corrupt"])
def test_broken_files_get_no_thumbnails(data):
    facts, thumbs = _analyse_in_worker(data)
    assert "error" in facts and thumbs == []


def test_too_large_to_decode_keeps_facts_without_thumbnails():
    data = encode(Image.new("RGB", (3000, 2000), (9, 9, 9)), "PNG")
    facts, pixels = analyze_image(data, max_decode_pixels=1_000_000, keep_pixels=LARGEST)
    assert facts["width"] == "3000" and pixels is None


def test_file_text_is_inserted_after_ihdr_and_its_length_is_known():
    png = thumbs_of(encode(photo((200, 100)), "PNG"))["normal"].png
    for uri, mtime in [(b"a.jpg", 1_700_000_000), (b"my%20photo.jpg", 0), (b"x" * 255, -5)]:
        out = with_file_text(png, uri, mtime)
        assert len(out) == len(png) + file_text_length(uri, mtime) == len(png) + len(
            file_text(uri, mtime))
        assert out[12:16] == b"IHDR" and out[37:41] == b"tEXt"   # right after IHDR
        im = decoded(out)
        assert im.text["Thumb::URI"] == uri.decode("latin-1")
        assert im.text["Thumb::MTime"] == str(mtime)
        assert im.size == (128, 64)
        # every chunk's CRC is right (Pillow checks them only in some paths)
        pos = 8
        while pos < len(out):
            n = int.from_bytes(out[pos:pos + 4], "big")
            body = out[pos + 4:pos + 8 + n]
            assert zlib.crc32(body) == int.from_bytes(out[pos + 8 + n:pos + 12 + n], "big")
            pos += 12 + n
    with pytest.raises(ValueError):
        with_file_text(b"GIF89a" + bytes(40), b"a", 1)


def test_fit():
    assert fit(3000, 2000, 512) == (512, 341)
    assert fit(2000, 3000, 128) == (85, 128)
    assert fit(10000, 1, 128) == (128, 1)
    assert fit(50, 40, 128) == (50, 40)


def test_thumbnails_of_the_team_samples(testdata):
    files = sorted(p for p in (testdata / "exif-samples").rglob("*")
                   if p.is_file() and p.suffix.lower() in SAMPLE_EXTS)
    made = 0
    for path in files:
        data = path.read_bytes()
        facts, thumbs = _analyse_in_worker(data)
        if "error" in facts:
            assert thumbs == [], path
            continue
        if "dominant_color" not in facts:   # too large to decode: no pixels, no thumbnails
            assert thumbs == [], path
            continue
        assert [t.size for t in thumbs] == ["x-large", "large", "normal"], path
        w, h = int(facts["width"]), int(facts["height"])
        if facts.get("orientation") in ("5", "6", "7", "8"):
            w, h = h, w
        for t in thumbs:
            box = dict(SIZES)[t.size]
            im = decoded(t.png)
            assert im.size == (t.width, t.height) and max(im.size) <= box, path
            want = fit(w, h, box)
            # displayed aspect kept (HEIC previews may be smaller than the box)
            assert abs(t.width * want[1] - t.height * want[0]) <= max(want), (path, t, want)
        made += 1
    assert made >= 20
