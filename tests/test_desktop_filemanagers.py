"""Real file managers browse a flow of photos under Xvfb: thumbnails on screen, no original read.

Each of Nautilus, PCManFM, Thunar and Dolphin opens a flow of 200 generated photos in a
fresh HOME (empty ``~/.cache/thumbnails``). The test waits until the photos'
own colours are on the screen where the icons are, scrolls to the end (End
key) and waits for the last photos' colours, and checks the daemon's counters:
no block of any original was loaded (gffs put the thumbnails into the
viewer's cache before the listing reached the file manager). A program that
is not installed skips its test with the reason.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from desktopsession import DesktopSession, missing_programs
from mountutil import FUSE_AVAILABLE, SKIP_REASON, Mount
from test_desktop_usercache import cached

pytestmark = pytest.mark.skipif(not FUSE_AVAILABLE, reason=SKIP_REASON)

N_PHOTOS = 200
FLOW = "camera"
ANALYSIS_DEADLINE = 600.0     # 200 photos analysed on a loaded 2-core machine
SCREEN_DEADLINE = 120.0       # generous: the programs start slowly here
HUE_TOLERANCE = 4.0           # degrees; consecutive photos differ by at least 10
MIN_PIXELS = 300              # of one photo's colour for it to count as shown


def hue(i: int) -> float:
    """Photo *i*'s hue: consecutive photos get far-apart hues, so each is recognisable."""
    return float((i * 37) % 360)


def photo(i: int) -> bytes:
    im = Image.new("HSV", (1500, 1000), (round(hue(i) * 255 / 360), 230, 230)).convert("RGB")
    im.putpixel((0, 0), (i % 256, i // 256, 0))   # distinct contents even where hues meet
    out = io.BytesIO()
    im.save(out, "JPEG", quality=90)
    return out.getvalue()


def counters(m: Mount) -> dict[str, int]:
    return {n: int(os.getxattr(m.path, f"user.gf.stats.{n}"))
            for n in ("file_block_loads", "analysis_block_loads", "user_cache_writes")}


@pytest.fixture(scope="module")
def photo_flow(tmp_path_factory) -> Mount:
    m = Mount(tmp_path_factory.mktemp("desktop"))
    m.mount()
    try:
        flow = m.path / FLOW
        flow.mkdir()
        for i in range(N_PHOTOS):
            (flow / f"IMG_{i:04d}.jpg").write_bytes(photo(i))
        deadline = time.monotonic() + ANALYSIS_DEADLINE
        for i in range(N_PHOTOS):
            p = flow / f"IMG_{i:04d}.jpg"
            while b"user.gf.thumbnail.large" not in [n.encode() for n in os.listxattr(p)]:
                assert time.monotonic() < deadline, f"{p.name} not analysed in time"
                time.sleep(0.5)
        yield m
    finally:
        m.cleanup()


def vivid_hues(shot: Image.Image, box: tuple[int, int, int, int]) -> list[int]:
    """Pixel counts per hue level (0-255) of the vivid pixels inside *box* (icons and
    text are grey: only thumbnails of the photos are vivid)."""
    x, y, w, h = box
    area = shot.crop((max(x, 0), max(y, 0), x + w, y + h)).convert("HSV")
    hh, s, v = area.split()
    vivid = ImageChops.multiply(s.point(lambda p: 255 if p > 150 else 0),
                                v.point(lambda p: 255 if p > 150 else 0))
    return hh.histogram(mask=vivid)


def shown(shot: Image.Image, box: tuple[int, int, int, int], photos: range) -> list[int]:
    """The photos of *photos* whose colour covers at least MIN_PIXELS inside *box*."""
    hist = [0] * 360
    for level, count in enumerate(vivid_hues(shot, box)):
        hist[round(level * 360 / 255) % 360] += count
    found = []
    for i in photos:
        centre = round(hue(i))
        near = sum(hist[(centre + d) % 360] for d in range(-int(HUE_TOLERANCE), int(HUE_TOLERANCE) + 1))
        if near >= MIN_PIXELS:
            found.append(i)
    return found


def colours_shown(shot: Image.Image, box: tuple[int, int, int, int]) -> int:
    """How many distinct photo colours are inside *box*, wherever the view is scrolled:
    runs of neighbouring hue levels, each covering at least MIN_PIXELS."""
    levels = vivid_hues(shot, box)
    lit = [count >= MIN_PIXELS // 4 for count in levels]
    start = lit.index(False) if False in lit else 0     # a run never wraps around 0
    runs, total = 0, 0
    for k in range(256):
        level = (start + k) % 256
        if lit[level]:
            total += levels[level]
        else:
            runs, total = runs + (total >= MIN_PIXELS), 0
    return runs + (total >= MIN_PIXELS)


FAILURES = Path("/tmp/gffs-desktop-failures")   # outside pytest's rotating tmp dirs


def wait_shown(desk: DesktopSession, window: int, photos: range | None, need: int, key: str,
               click: bool, flow: Path, m: Mount, before: dict[str, int]) -> float:
    """Seconds until at least *need* of *photos* (None: of any photos' distinct colours) are
    on screen inside the window, pressing *key* (Home, End) in the view now and then. Keys
    go to the window under the pointer (no window manager); *click* first focuses the view,
    once (a single click opens a file in Dolphin: never on an icon twice)."""
    start = time.monotonic()
    seen = 0
    pressed = -1.0
    while time.monotonic() - start < SCREEN_DEADLINE:
        if time.monotonic() - pressed > 10:
            x, y, w, h = desk.geometry(window)
            desk.xdotool("mousemove", str(x + w * 3 // 4), str(y + h * 3 // 4),
                         *(["click", "1"] if click and pressed < 0 else []))
            desk.xdotool("key", "--clearmodifiers", key)
            pressed = time.monotonic()
        shot, box = desk.screenshot(), desk.geometry(window)
        seen = len(shown(shot, box, photos)) if photos is not None else colours_shown(shot, box)
        if seen >= need:
            return time.monotonic() - start
        time.sleep(0.5)
    # what failed: gffs (thumbnails missing from the cache, originals read) or the program
    FAILURES.mkdir(exist_ok=True)
    shot = FAILURES / f"{desk.home.parent.name}-{int(time.time())}.png"
    desk.screenshot().save(shot)
    in_cache = [i for i in (photos if photos is not None else range(12))
                if any(cached(desk.home, size, flow / f"IMG_{i:04d}.jpg").exists()
                       for size in ("normal", "large"))]
    raise AssertionError(
        f"only {seen} of {need} photos on screen after {SCREEN_DEADLINE:.0f} s "
        f"({'photos ' + str(list(photos)) if photos is not None else 'any distinct colours'}); "
        f"in the viewer's cache: {in_cache}; counters before {before}, now {counters(m)}; "
        f"screenshot {shot}")


FILE_MANAGERS = {
    # program, arguments before the folder, the window title to wait for
    "nautilus": (["nautilus", "--new-window"], FLOW),
    "pcmanfm": (["pcmanfm"], FLOW),
    "thunar": (["thunar"], f"{FLOW} - Thunar"),
    "dolphin": (["dolphin", "--new-window"], FLOW),   # its title is "camera — Dolphin"
}


@pytest.mark.parametrize("program", sorted(FILE_MANAGERS))
def test_file_manager_shows_thumbnails_without_reading_originals(photo_flow, tmp_path, program):
    argv, title = FILE_MANAGERS[program]
    lacking = missing_programs(argv[0], "Xvfb", "dbus-daemon", "xdotool", "import")
    if lacking:
        pytest.skip(f"not installed: {', '.join(lacking)} (tools/setup.sh installs them)")
    before = counters(photo_flow)
    desk = DesktopSession(tmp_path / "home").start()
    try:
        desk.run(*argv, str(photo_flow.path / FLOW), log=tmp_path / f"{program}.log")
        window = desk.visible_window(title)
        # the first screen: where a loaded Nautilus starts is its own choice (it was seen to
        # scroll itself to IMG_0084 while filling the view), so any 8 photos count
        top = wait_shown(desk, window, None, 8, "Home", False, photo_flow.path / FLOW,
                         photo_flow, before)
        end = wait_shown(desk, window, range(N_PHOTOS - 6, N_PHOTOS), 4, "End", True,
                         photo_flow.path / FLOW, photo_flow, before)
        time.sleep(5)   # the program's own thumbnailer would have started by now
        after = counters(photo_flow)
        print(f"{program}: top thumbnails after {top:.1f} s, end after {end:.1f} s; {after}")
    finally:
        desk.close()
    assert after["file_block_loads"] == before["file_block_loads"], "originals were read"
    assert after["analysis_block_loads"] == before["analysis_block_loads"]
    cache = tmp_path / "home" / ".cache" / "thumbnails"
    written = list(cache.glob("*/*.png"))
    assert written, "nothing in the viewer's thumbnail cache"
    for p in written:
        st = p.stat()
        assert (st.st_mode & 0o777, st.st_uid) == (0o600, os.getuid())
    assert not desk._pids(), "processes of the desktop session are left"
