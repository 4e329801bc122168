"""gffs.images.analyze: facts from real camera files (cross-checked with exiftool) and hostile input.

The real files are the team's exif-samples (../shared/testdata, never copied into
the repo); those tests skip with a reason when it is absent. Everything else is
generated here and always runs.
"""

from __future__ import annotations

import importlib
import io
import json
import random
import shutil
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import pytest
from conftest import TESTDATA
from PIL import Image, ImageFile

from gffs.images.analyze import analyze, heic_supported

analyze_mod = importlib.import_module("gffs.images.analyze")

SAMPLES = TESTDATA / "exif-samples"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".tif", ".tiff", ".heic", ".heif"}
HEIC_SUFFIXES = {".heic", ".heif"}
# jpg/invalid/ was "invalid" for an EXIF library: they are valid JPEGs whose only
# metadata is XMP. Pillow (and exiftool, and any viewer) read them fine.
INVALID_BUT_READABLE = {"image00971.jpg", "image01088.jpg", "image01137.jpg", "image01551.jpg",
                        "image01713.jpg", "image01980.jpg", "image02206.jpg"}
# The only sample whose pixel data is damaged: 0xFF junk in the scan at byte 212992
# (libjpeg greys out the rest and Pillow reports success; our marker walk catches it).
CORRUPT = {"jpg/corrupted.jpg"}


# ----------------------------------------------------------------------------- helpers

def assert_clean(facts: dict[str, str]) -> None:
    """The contract every result meets, whatever the input."""
    assert isinstance(facts, dict) and facts
    if "error" in facts:
        assert list(facts) == ["error"], facts
    for key, value in facts.items():
        assert isinstance(key, str) and isinstance(value, str)
        assert value and value == value.strip()
        assert len(value.encode("utf-8")) <= 1024
        assert not any(ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in value), (key, value)


def sample_files() -> list[Path]:
    return sorted(p for p in SAMPLES.rglob("*") if p.is_file())


def rel(path: Path) -> str:
    return path.relative_to(SAMPLES).as_posix()


def image_bytes(fmt: str = "PNG", size=(40, 30), color=(200, 30, 30), mode="RGB", **save) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, fmt, **save)
    return out.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking PNG header declaring a huge image, with almost no data behind it."""
    return (b"\x89PNG\r\n\x1a\n"
            + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + png_chunk(b"IEND", b""))


def bomb_gif() -> bytes:
    return (b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0, 0, 0)
            + b"," + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0) + b"\x02\x02\x44\x01\x00;")


def bomb_jpeg() -> bytes:
    return (b"\xff\xd8\xff\xc0" + struct.pack(">HBHHB", 17, 8, 65500, 65500, 3)
            + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01\xff\xd9")


def iso(exif_time: str | None, offset: str | None = None) -> str | None:
    """exiftool's ``YYYY:MM:DD HH:MM:SS`` as the ISO 8601 the analyzer gives."""
    if not exif_time or exif_time.startswith("0000"):
        return None
    date, _, clock = exif_time.strip().partition(" ")
    return date.replace(":", "-") + "T" + clock + (offset or "")


def norm(text) -> str:
    return " ".join(str(text).split())


@pytest.fixture(scope="module")
def samples() -> Path:
    if not SAMPLES.is_dir():
        pytest.skip(f"team test images not found at {SAMPLES} (../shared/testdata)")
    return SAMPLES


@pytest.fixture(scope="module")
def results(samples) -> dict[str, dict[str, str]]:
    """Every sample analysed once (how fast is benchmarks/bench_images.py's business)."""
    return {rel(path): analyze(path.read_bytes()) for path in sample_files()}


@pytest.fixture(scope="module")
def exiftool(samples) -> dict[str, dict]:
    """exiftool's independent reading of every image sample, keyed by relative path."""
    exe = shutil.which("exiftool")
    if exe is None:
        pytest.skip("exiftool not installed (Debian: libimage-exiftool-perl): no cross-check")
    tags = ["-ImageWidth", "-ImageHeight", "-Orientation", "-Rotation", "-EXIF:Make",
            "-EXIF:Model", "-EXIF:DateTimeOriginal", "-EXIF:OffsetTimeOriginal",
            "-EXIF:LensModel", "-Composite:GPSLatitude", "-Composite:GPSLongitude",
            "-Composite:GPSAltitude"]
    exts = [arg for s in sorted(IMAGE_SUFFIXES) for arg in ("-ext", s[1:])]
    out = subprocess.run([exe, "-j", "-n", "-r", "-q", "-q", *exts, *tags, str(samples)],
                         capture_output=True, text=True, timeout=120, check=False)
    return {rel(Path(entry["SourceFile"])): entry for entry in json.loads(out.stdout)}


# ----------------------------------------------------------------------------- real files

def test_every_sample_is_analysed_without_exception(samples, results):
    assert len(results) > 90
    for path in sample_files():
        facts = results[rel(path)]
        assert_clean(facts)
        suffix = path.suffix.lower()
        if suffix not in IMAGE_SUFFIXES:  # README, SOURCE.md
            assert facts == {"error": "not an image (text)"}, rel(path)
        elif rel(path) in CORRUPT:
            assert facts["error"].startswith("corrupt jpeg data"), facts
        elif suffix in HEIC_SUFFIXES and not heic_supported():
            assert facts == {"error": "HEIC support not installed (pip install pillow-heif)"}
        else:
            assert "error" not in facts, (rel(path), facts)
            assert facts["format"] in {"jpeg", "tiff", "heic"}
            assert int(facts["width"]) > 0 and int(facts["height"]) > 0
            assert facts["dominant_color"].startswith("#") and len(facts["dominant_color"]) == 7


def test_stored_dimensions_and_format_match_pillow(samples, results):
    for path in sample_files():
        facts = results[rel(path)]
        if "error" in facts:
            continue
        with Image.open(path) as im:
            assert (facts["width"], facts["height"]) == (str(im.width), str(im.height)), rel(path)


def test_jpeg_and_tiff_facts_match_exiftool(results, exiftool):
    checked = 0
    for name, tool in exiftool.items():
        facts = results[name]
        if Path(name).suffix.lower() in HEIC_SUFFIXES or name in CORRUPT:
            continue
        checked += 1
        assert (facts["width"], facts["height"]) == (str(tool["ImageWidth"]), str(tool["ImageHeight"])), name
        for fact, tag in (("camera_make", "Make"), ("camera_model", "Model"), ("lens", "LensModel")):
            expected = norm(tool[tag]) if norm(tool.get(tag, "")) else None
            assert facts.get(fact) == expected, (name, fact, facts.get(fact), tool.get(tag))
        assert facts.get("capture_time") == iso(tool.get("DateTimeOriginal"),
                                                tool.get("OffsetTimeOriginal")), name
        orientation = tool.get("Orientation")
        assert facts.get("orientation") == (str(orientation) if orientation in range(1, 9) else None), name
        if "GPSLatitude" in tool:
            assert abs(float(facts["gps_lat"]) - tool["GPSLatitude"]) < 1e-5, name
            assert abs(float(facts["gps_lon"]) - tool["GPSLongitude"]) < 1e-5, name
        else:
            assert "gps_lat" not in facts and "gps_lon" not in facts, name
        if "GPSAltitude" in tool:
            assert abs(float(facts["gps_alt"]) - tool["GPSAltitude"]) < 0.01, name
    assert checked > 80


def test_gps_samples_match_exiftool(samples, results, exiftool):
    gps = sorted((samples / "jpg" / "gps").glob("*.jpg"))
    assert gps
    for path in gps:
        facts, tool = results[rel(path)], exiftool[rel(path)]
        assert abs(float(facts["gps_lat"]) - tool["GPSLatitude"]) < 1e-5
        assert abs(float(facts["gps_lon"]) - tool["GPSLongitude"]) < 1e-5
        assert len(facts["gps_lat"].split(".")[1]) == 6


def test_gps_signs_and_altitude(results):
    # South latitude (Kodak, Kenya), west longitude and altitude (iPhone, Madrid).
    kodak = results["jpg/Kodak_CX7530.jpg"]
    assert kodak["gps_lat"] == "-0.371300" and kodak["gps_lon"] == "36.056417"
    iphone = results["jpg/hdr/iphone_hdr_NO.jpg"]
    assert iphone["gps_lat"].startswith("40.44") and iphone["gps_lon"].startswith("-3.72")
    assert 600 < float(iphone["gps_alt"]) < 700
    assert iphone["lens"] == "iPhone 6 back camera 4.15mm f/2.2"


def test_orientation_samples(samples, results):
    """Every EXIF orientation; width/height are stored, orientation says how to show them."""
    for kind in ("landscape", "portrait"):
        for n in range(1, 9):
            facts = results[f"jpg/orientation/{kind}_{n}.jpg"]
            assert facts["orientation"] == str(n)
            w, h = int(facts["width"]), int(facts["height"])
            if n >= 5:  # 5..8 transpose: the displayed image is h x w
                w, h = h, w
            assert (w > h) == (kind == "landscape"), (kind, n, facts)


def test_invalid_directory_holds_readable_jpegs_and_corrupted_is_an_error(samples, results, exiftool):
    invalid = {p.name for p in (samples / "jpg" / "invalid").glob("*.jpg")}
    assert invalid == INVALID_BUT_READABLE
    for name in sorted(invalid):
        facts = results[f"jpg/invalid/{name}"]
        tool = exiftool[f"jpg/invalid/{name}"]
        assert facts["format"] == "jpeg"
        assert (facts["width"], facts["height"]) == (str(tool["ImageWidth"]), str(tool["ImageHeight"]))
        assert not {"camera_make", "camera_model", "capture_time", "gps_lat"} & set(facts)
    assert results["jpg/corrupted.jpg"] == {
        "error": "corrupt jpeg data (marker 0x9f inside the image data at byte 212992)"}


def test_heic_samples(samples, results, exiftool):
    if not heic_supported():
        pytest.skip("pillow-heif not installed: HEIC files get an error (checked elsewhere)")
    heics = [name for name in exiftool if Path(name).suffix.lower() in HEIC_SUFFIXES]
    assert len(heics) == 5
    for name in heics:
        facts, tool = results[name], exiftool[name]
        assert facts["format"] == "heic"
        # libheif applies the container's rotation when decoding, so HEIC sizes are
        # already upright; exiftool reports the encoded (pre-rotation) size.
        w, h = tool["ImageWidth"], tool["ImageHeight"]
        if tool.get("Rotation") in (90, 270):
            w, h = h, w
        assert (facts["width"], facts["height"]) == (str(w), str(h)), name
        assert facts.get("orientation", "1") == "1"
        assert facts.get("camera_make") == tool.get("Make")
        assert facts.get("capture_time") == iso(tool.get("DateTimeOriginal"), tool.get("OffsetTimeOriginal"))
        if "GPSLatitude" in tool:
            assert abs(float(facts["gps_lat"]) - tool["GPSLatitude"]) < 1e-5
            assert abs(float(facts["gps_lon"]) - tool["GPSLongitude"]) < 1e-5
            assert abs(float(facts["gps_alt"]) - tool["GPSAltitude"]) < 0.01
    iphone = results["heic/mobile/iphone_13_pro_max.HEIC"]
    assert iphone["capture_time"] == "2022-02-16T12:55:41+01:00"
    assert (iphone["width"], iphone["height"]) == ("3024", "4032")


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the cut EXIF
def test_truncated_samples_are_errors(samples):
    for name in ("jpg/mobile/jolla.jpg", "jpg/Canon_40D.jpg", "tiff/BSG1.tiff",
                 "heic/samplefilehub.heif"):
        data = (samples / name).read_bytes()
        # (A TIFF or HEIC may end with metadata, so only JPEGs are cut at the very end.)
        for cut in (len(data) // 2, len(data) - 2 if name.endswith(".jpg") else 100):
            facts = analyze(data[:cut])
            assert_clean(facts)
            assert "error" in facts, (name, cut, facts)


# ----------------------------------------------------------------------------- generated input

def test_empty_random_and_text_are_errors():
    assert analyze(b"") == {"error": "empty file"}
    rng = random.Random(7)
    for _ in range(20):
        facts = analyze(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4000))))
        assert_clean(facts)
        assert facts["error"].startswith("not an image"), facts
    assert analyze(b"hello\n" * 100) == {"error": "not an image (text)"}
    assert analyze("Grüße, ünïcode\n".encode()) == {"error": "not an image (text)"}
    assert analyze(b"%PDF-1.7\n...") == {"error": "not an image (PDF document)"}
    assert analyze(image_bytes("BMP")) == {"error": "unsupported image format (bmp)"}
    assert analyze(b'<svg xmlns="http://www.w3.org/2000/svg"/>') == {
        "error": "unsupported image format (svg)"}


def test_png_made_with_pillow():
    assert analyze(image_bytes("PNG", (320, 200), (200, 30, 30))) == {
        "format": "png", "width": "320", "height": "200", "dominant_color": "#c81e1e"}
    # Transparent pixels do not count; a fully transparent image has no colour.
    im = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    im.paste((10, 20, 250, 255), (0, 0, 10, 10))
    out = io.BytesIO()
    im.save(out, "PNG")
    assert analyze(out.getvalue())["dominant_color"] == "#0a14fa"
    assert "dominant_color" not in analyze(image_bytes("PNG", mode="RGBA", color=(0, 0, 0, 0)))
    # 16-bit grey is scaled, not clipped to white.
    assert analyze(image_bytes("PNG", mode="I;16", color=40000))["dominant_color"] == "#9b9b9b"


def test_other_formats_made_with_pillow():
    for fmt, name in (("GIF", "gif"), ("WEBP", "webp"), ("TIFF", "tiff"), ("JPEG", "jpeg")):
        facts = analyze(image_bytes(fmt, (64, 48), (20, 120, 220)))
        assert (facts["format"], facts["width"], facts["height"]) == (name, "64", "48"), fmt
        r, g, b = (int(facts["dominant_color"][i:i + 2], 16) for i in (1, 3, 5))
        assert abs(r - 20) + abs(g - 120) + abs(b - 220) < 15, (fmt, facts)


def test_exif_facts_written_by_pillow():
    exif = Image.Exif()
    exif[0x010F] = "Acme"
    exif[0x0110] = "Snapper 3000"
    exif[0x0112] = 6
    sub = exif.get_ifd(0x8769)
    sub[0x9003] = "2023:07:14 18:05:09"
    sub[0x9011] = "-04:30"
    sub[0xA434] = "Acme 35mm f/1.4"
    gps = exif.get_ifd(0x8825)
    gps.update({1: "S", 2: (33.0, 51.0, 21.6), 3: "W", 4: (151.0, 12.0, 36.0), 5: b"\x01", 6: 12.5})
    for fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        facts = analyze(image_bytes(fmt, (60, 40), exif=exif.tobytes()))
        assert facts == {
            "format": fmt.lower(), "width": "60", "height": "40", "orientation": "6",
            "camera_make": "Acme", "camera_model": "Snapper 3000", "lens": "Acme 35mm f/1.4",
            "capture_time": "2023-07-14T18:05:09-04:30", "gps_lat": "-33.856000",
            "gps_lon": "-151.210000", "gps_alt": "-12.50", "dominant_color": facts["dominant_color"],
        }, fmt


def test_hostile_exif_strings_are_sanitized():
    from PIL.TiffImagePlugin import IFDRational

    exif = Image.Exif()
    exif[0x010F] = b"Can\non\x1b[31mred\xe2\x80\xae evil\r\n\x00junk after the NUL"
    exif[0x0110] = "é".encode() * 30000  # 60 kB of two-byte characters
    exif[0x0112] = 9  # no such orientation
    sub = exif.get_ifd(0x8769)
    sub[0x9003] = "2021:02:30 10:00:00"  # no such day
    sub[0xA434] = b"\t\t\x00"  # nothing printable
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N", 2: (IFDRational(1, 0), 0.0, 0.0), 3: "E", 4: (1.0, 2.0, 3.0)})
    facts = analyze(image_bytes("JPEG", exif=exif.tobytes()))
    assert_clean(facts)
    assert facts["camera_make"] == "Can on [31mred evil"  # ESC, CR/LF and bidi override gone
    model = facts["camera_model"]
    assert set(model) == {"é"} and len(model.encode()) == 1024
    assert not {"orientation", "capture_time", "lens", "gps_lat", "gps_lon"} & set(facts)
    assert facts["format"] == "jpeg"


def test_decompression_bombs_are_refused():
    """Refused from the header (test_bombs_use_little_memory shows nothing was decoded)."""
    for data in (bomb_png(), bomb_gif(), bomb_jpeg()):
        facts = analyze(data)
        assert facts["error"].startswith("decompression bomb: "), facts
        assert "bomb" in facts["error"] and list(facts) == ["error"]
    assert analyze(bomb_png(20_000, 10_001)) == {
        "error": "decompression bomb: 200020000 pixels (limit 200000000)"}
    assert analyze(bomb_png(2000, 1000), max_pixels=1_000_000)["error"].startswith("decompression bomb")
    # Allowed by max_pixels but too big to decode: facts without colour, nothing decoded.
    assert analyze(bomb_png(), max_pixels=10**11) == {
        "format": "png", "width": "100000", "height": "100000"}


def test_bombs_use_little_memory():
    """Peak RSS of a fresh interpreter analysing the bombs stays near its baseline."""
    code = (
        "import resource, sys\n"
        "sys.path[:0] = sys.argv[1:3]\n"
        "import test_images_analyze as t\n"
        "from gffs.images.analyze import analyze\n"
        "analyze(t.image_bytes())\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "for data in (t.bomb_png(), t.bomb_gif(), t.bomb_jpeg()):\n"
        "    assert 'bomb' in analyze(data)['error']\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)\n"
    )
    tests_dir = Path(__file__).parent
    out = subprocess.run([sys.executable, "-c", code, str(tests_dir), str(tests_dir.parent)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) < 20_000  # KiB; decoding any bomb would take gigabytes


def test_truncated_and_damaged_generated_images():
    jpeg = image_bytes("JPEG", (400, 300), (90, 160, 30), quality=90)
    png = image_bytes("PNG", (500, 500), (200, 30, 30))
    assert analyze(png[:300]) == {"error": "truncated png file"}
    for cut in (2, 50, len(jpeg) // 2):
        assert analyze(jpeg[:-cut]) == {"error": "truncated jpeg file"}, cut
    assert analyze(jpeg[:40])["error"].startswith(("truncated jpeg", "corrupt jpeg header"))
    # A restart marker out of sequence: libjpeg would resync silently.
    rst = image_bytes("JPEG", (256, 256), (10, 10, 10), restart_marker_rows=1)
    at = rst.index(b"\xff\xd2")
    facts = analyze(rst[:at] + b"\xff\xd5" + rst[at + 2:])
    assert facts["error"].startswith("corrupt jpeg data (restart marker 5 where 2 belongs"), facts
    assert "error" not in analyze(rst)


def test_too_many_jpeg_scans_is_refused():
    jpeg = image_bytes("JPEG", (16, 16))
    sos = jpeg.index(b"\xff\xda")
    header_len = struct.unpack(">H", jpeg[sos + 2:sos + 4])[0]
    scan = jpeg[sos:sos + 2 + header_len] + b"\x00"
    facts = analyze(jpeg[:sos] + scan * 300 + b"\xff\xd9")
    assert facts == {"error": "too many jpeg scans (more than 256)"}


def test_heic_without_pillow_heif(monkeypatch):
    header = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    monkeypatch.setattr(analyze_mod, "_heif_available", False)
    assert analyze(header) == {"error": "HEIC support not installed (pip install pillow-heif)"}
    assert not analyze_mod.heic_supported()
    if SAMPLES.is_dir():
        data = (SAMPLES / "heic" / "samplefilehub.heif").read_bytes()
        assert analyze(data) == {"error": "HEIC support not installed (pip install pillow-heif)"}


def test_heic_made_with_pillow_heif():
    if not heic_supported():
        pytest.skip("pillow-heif not installed")
    facts = analyze(image_bytes("HEIF", (64, 32), (250, 250, 10)))
    assert (facts["format"], facts["width"], facts["height"]) == ("heic", "64", "32")
    junk = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64
    assert analyze(junk)["error"].startswith(("corrupt heic", "truncated heic"))


def test_decode_budget_skips_colour_only():
    data = image_bytes("PNG", (100, 100))
    assert analyze(data, max_decode_pixels=100) == {"format": "png", "width": "100", "height": "100"}
    # A baseline JPEG always decodes at 1/8 scale, whatever the budget.
    assert "dominant_color" in analyze(image_bytes("JPEG", (100, 100)), max_decode_pixels=100)
    assert "dominant_color" not in analyze(image_bytes("JPEG", (100, 100), progressive=True),
                                           max_decode_pixels=100)


def test_never_raises(monkeypatch):
    def boom(*args):
        raise MemoryError

    monkeypatch.setattr(analyze_mod, "_open", boom)
    assert analyze(b"x") == {"error": "out of memory while reading the image"}

    def broken(*args):
        raise ValueError("line one\nline two\x00")

    monkeypatch.setattr(analyze_mod, "_open", broken)
    assert analyze(b"x") == {"error": "cannot read image (ValueError: line one line two)"}
    monkeypatch.setattr(analyze_mod, "_finish", broken)
    assert analyze(b"x") == {"error": "internal error while analysing the image"}


def test_process_wide_pillow_settings_are_untouched():
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    analyze(bomb_png())
    analyze(image_bytes("JPEG")[:-100])
    analyze(image_bytes("PNG"))
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before == (
        before[0], False)


def test_concurrent_calls_agree_with_sequential_ones():
    inputs = [image_bytes(fmt, (50 + i, 40), (i * 20, 100, 50)) for i, fmt in
              enumerate(("PNG", "JPEG", "GIF", "WEBP", "TIFF"))] + [bomb_png(), b"", b"junk"]
    expected = [analyze(d) for d in inputs]
    got: dict[int, list] = {}

    def worker(n: int) -> None:
        got[n] = [analyze(d) for d in inputs for _ in range(5)][::5]

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(got[n] == expected for n in range(6))
