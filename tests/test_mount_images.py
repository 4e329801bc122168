"""Image facts as xattrs through a real mount: analysed after close, read-only, never blocking."""

from __future__ import annotations

import errno
import io
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image


def wait_fact(path: Path, name: str, timeout: float = 15.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.getxattr(path, name)
        except OSError as exc:
            if exc.errno != errno.ENODATA or time.monotonic() > deadline:
                raise
        time.sleep(0.05)


def png_bytes(w: int, h: int, color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (w, h), color).save(out, "PNG")
    return out.getvalue()


def test_facts_of_a_written_image_and_xdg_attributes(mounted):
    flow = mounted.path / "art"
    flow.mkdir()
    p = flow / "red.png"
    p.write_bytes(png_bytes(320, 200))
    assert wait_fact(p, "user.gf.image.width") == b"320"
    assert os.getxattr(p, "user.gf.image.height") == b"200"
    assert os.getxattr(p, "user.gf.image.format") == b"png"
    assert os.getxattr(p, "user.gf.image.dominant_color").lower().startswith(b"#c8")
    names = os.listxattr(p)
    assert "user.gf.image.width" in names and "user.gf.image.format" in names
    for op in (lambda: os.setxattr(p, "user.gf.image.width", b"1"),
               lambda: os.removexattr(p, "user.gf.image.width")):
        with pytest.raises(OSError) as e:
            op()
        assert e.value.errno == errno.EPERM
    os.setxattr(p, "user.xdg.tags", b"sunset,red")
    os.setxattr(p, "user.xdg.comment", b"first light")
    os.setxattr(p, "user.xdg.origin.url", b"https://example.org/red.png")
    mounted.remount()
    assert os.getxattr(p, "user.xdg.tags") == b"sunset,red"
    assert os.getxattr(p, "user.gf.image.width") == b"320"      # kept in the index


def test_rewrite_changes_the_facts_and_a_copy_shares_them(mounted):
    flow = mounted.path / "a"
    flow.mkdir()
    (mounted.path / "b").mkdir()
    p = flow / "x.png"
    p.write_bytes(png_bytes(10, 10))
    assert wait_fact(p, "user.gf.image.width") == b"10"
    p.write_bytes(png_bytes(40, 30))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # absent while the new content is analysed
        try:
            if os.getxattr(p, "user.gf.image.width") == b"40":
                break
        except OSError as exc:
            assert exc.errno == errno.ENODATA
        time.sleep(0.05)
    assert os.getxattr(p, "user.gf.image.width") == b"40"
    q = mounted.path / "b" / "same.png"
    shutil.copyfile(p, q)  # same bytes in a second flow: the same facts at once or soon
    assert wait_fact(q, "user.gf.image.width") == b"40"


def test_broken_files_are_stored_exactly_and_get_an_error(mounted):
    flow = mounted.path / "junk"
    flow.mkdir()
    cases = {"empty.jpg": b"", "noise.jpg": os.urandom(5000),
             "truncated.png": png_bytes(500, 500)[:300], "notes.txt": b"hello\n" * 100}
    for name, data in cases.items():
        (flow / name).write_bytes(data)
    for name, data in cases.items():
        assert (flow / name).read_bytes() == data
        err = wait_fact(flow / name, "user.gf.image.error")
        assert err and b"\n" not in err
        with pytest.raises(OSError):
            os.getxattr(flow / name, "user.gf.image.width")


def test_real_camera_images(mounted, testdata):
    flow = mounted.path / "camera"
    flow.mkdir()
    sources = sorted(p for p in (testdata / "exif-samples" / "jpg").glob("*.jpg"))[:12]
    for src in sources:
        shutil.copyfile(src, flow / src.name)
    exiftool = shutil.which("exiftool")
    for src in sources:
        dst = flow / src.name
        assert dst.read_bytes() == src.read_bytes()
        try:
            width = wait_fact(dst, "user.gf.image.width")
        except OSError:
            assert wait_fact(dst, "user.gf.image.error")
            continue
        with Image.open(src) as im:
            assert width == str(im.width).encode()
        if exiftool:
            out = subprocess.run([exiftool, "-s3", "-Make", str(src)], capture_output=True,
                                 text=True).stdout.strip()
            if out:
                assert os.getxattr(dst, "user.gf.image.camera_make").decode().strip() == out.strip()


def children(pid: int) -> set[int]:
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.add(int(d.name))
    return out


def wait_gone(pids: set[int], timeout: float = 10.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = {p for p in pids if Path(f"/proc/{p}").exists()
                 and (Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z")}
        if not alive:
            return set()
        time.sleep(0.05)
    return alive


def test_image_closed_just_before_a_crash_is_analysed_after_remount(mounted):
    flow = mounted.path / "crash"
    flow.mkdir()
    p = flow / "late.png"
    p.write_bytes(png_bytes(77, 55))
    mounted.kill9()            # before the analysis (it waits for writes to pause)
    mounted.mount()
    assert wait_fact(p, "user.gf.image.width") == b"77"


def test_the_analysis_process_never_outlives_its_daemon(mounted):
    flow = mounted.path / "w"
    flow.mkdir()
    (flow / "a.png").write_bytes(png_bytes(5, 5))
    wait_fact(flow / "a.png", "user.gf.image.width")
    workers = children(mounted.pid())
    assert workers, "the analysis runs in a child process of the daemon"
    mounted.unmount()
    assert not wait_gone(workers), "a clean unmount leaves the analysis process running"
    mounted.mount()
    (flow / "b.png").write_bytes(png_bytes(6, 6))
    wait_fact(flow / "b.png", "user.gf.image.width")
    workers = children(mounted.pid())
    mounted.kill9()
    assert not wait_gone(workers), "kill -9 of the daemon leaves the analysis process running"
