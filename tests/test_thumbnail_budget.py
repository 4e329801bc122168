"""The thumbnail size budget: what is stored for thumbnails stays under 10 % of the originals,
with no visible loss (issue 14), on the team's camera samples and on camera-size photos."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from PIL import Image, ImageFilter

from gffs.images import thumbsource
from gffs.images.analyze import analyze_image
from gffs.images.thumbnails import LARGEST, make_thumbnails
from gffs.images.thumbsource import MIN_PSNR, psnr

BUDGET = 0.10
SAMPLE_EXTS = {".jpg", ".jpeg", ".tif", ".tiff", ".heic", ".heif", ".png", ".webp"}


def camera_photo(seed: int, size: tuple[int, int] = (3000, 2000)) -> bytes:
    """A camera-like JPEG: gradient, soft coloured blobs and sensor noise, quality 90."""
    rnd = random.Random(seed)
    blobs = Image.new("RGB", (12, 8))
    blobs.putdata([tuple(rnd.randrange(256) for _ in range(3)) for _ in range(96)])
    im = blobs.resize(size, Image.Resampling.BICUBIC)
    grad = Image.linear_gradient("L").resize(size).convert("RGB")
    im = Image.blend(im, grad, 0.35)
    noise = Image.merge("RGB", [Image.effect_noise(size, 6 + seed % 5) for _ in range(3)])
    im = Image.blend(im, noise.filter(ImageFilter.GaussianBlur(0.6)), 0.25)
    out = io.BytesIO()
    im.save(out, "JPEG", quality=90)
    return out.getvalue()


def measure(originals: list[bytes], monkeypatch) -> tuple[float, float]:
    """(stored thumbnail bytes / original bytes, worst PSNR of a served PNG against the
    exact pixels it was made from, scaled the same way)."""
    exact: list[Image.Image] = []
    encode = thumbsource.encode_source

    def spy(im: Image.Image, text: list[tuple[str, str]]) -> bytes:
        exact.append(im.copy())
        return encode(im, text)

    monkeypatch.setattr(thumbsource, "encode_source", spy)   # thumbnails imports it per call
    stored = total = 0
    worst = float("inf")
    for data in originals:
        facts, pixels = analyze_image(data, keep_pixels=LARGEST)
        exact.clear()
        thumbs = make_thumbnails(pixels, facts, len(data)) if pixels is not None else []
        if not thumbs:
            continue
        total += len(data)
        stored += len({t.source for t in thumbs}.pop())   # one source for every size
        for t in thumbs:
            served = Image.open(io.BytesIO(t.png))
            assert served.format == "PNG" and served.size == (t.width, t.height)
            reference = exact[0].resize(served.size, Image.Resampling.LANCZOS, reducing_gap=3.0)
            worst = min(worst, psnr(reference, served.convert(reference.mode)))
    assert total, "nothing was measured"
    return stored / total, worst


def test_camera_size_photos_stay_in_budget(monkeypatch):
    ratio, worst = measure([camera_photo(i) for i in range(3)], monkeypatch)
    print(f"camera-size photos: thumbnails {ratio:.1%} of the originals, worst {worst:.1f} dB")
    assert ratio < BUDGET
    assert worst >= MIN_PSNR


def test_team_camera_samples_stay_in_budget(testdata: Path, monkeypatch):
    files = sorted(p for p in (testdata / "exif-samples").rglob("*")
                   if p.is_file() and p.suffix.lower() in SAMPLE_EXTS)
    ratio, worst = measure([p.read_bytes() for p in files], monkeypatch)
    print(f"exif-samples: thumbnails {ratio:.1%} of the originals, worst {worst:.1f} dB")
    assert ratio < BUDGET
    assert worst >= MIN_PSNR
