"""Listing a flow puts its thumbnails into the lister's own cache: who, where, what, how often.

Through a real mount with allow_other; the listers are `ls` processes started
as root or as nobody with their own HOME (the daemon reads the environment
the process was started with).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from gffs.images.usercache import mtime_text, thumbnail_text
from mountutil import FUSE_AVAILABLE, SKIP_REASON, Mount
from test_mount_permissions import NOBODY
from test_mount_thumbnails import jpeg

pytestmark = pytest.mark.skipif(not FUSE_AVAILABLE, reason=SKIP_REASON)


@pytest.fixture
def world():
    """A mount others can reach, with flow/a.jpg (0644) and flow/secret.jpg (0600) analysed."""
    root = Path(tempfile.mkdtemp(prefix="gffs-desk-"))
    os.chmod(root, 0o755)
    m = Mount(root, opts=["allow_other"])
    try:
        m.mount()
        flow = m.path / "flow"
        flow.mkdir()
        (flow / "a.jpg").write_bytes(jpeg(1))
        (flow / "secret.jpg").write_bytes(jpeg(2))
        os.chmod(flow / "secret.jpg", 0o600)
        for name in ("a.jpg", "secret.jpg"):
            wait_analysed(flow / name)
        yield m
    finally:
        m.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def wait_analysed(path: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while "user.gf.thumbnail.large" not in os.listxattr(path):
        assert time.monotonic() < deadline, f"{path} not analysed after {timeout:.0f} s"
        time.sleep(0.1)


def home_for(m: Mount, name: str, uid: int, thumbnails_dir: bool = False) -> Path:
    home = m.root / name
    home.mkdir()
    if thumbnails_dir:
        (home / ".cache" / "thumbnails").mkdir(parents=True)
        for p in (home / ".cache", home / ".cache" / "thumbnails"):
            os.chown(p, uid, uid)
    os.chown(home, uid, uid)
    return home


def list_dir(path: Path, home: Path, uid: int = 0, desktop: bool = True) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home)}
    if desktop:
        env["DISPLAY"] = ":99"
    kw = {"user": uid, "group": uid, "extra_groups": []} if uid else {}
    subprocess.run(["ls", "-l", str(path)], env=env, check=True, capture_output=True,
                   timeout=120, **kw)


def cached(home: Path, size: str, path: Path) -> Path:
    uri = "file://" + quote(str(path), safe="!$&'()*+,;=:@~/")
    return home / ".cache" / "thumbnails" / size / (hashlib.md5(uri.encode()).hexdigest() + ".png")


def writes(m: Mount) -> int:
    return int(os.getxattr(m.path, "user.gf.stats.user_cache_writes"))


def test_listing_writes_the_listers_cache_as_that_user(world):
    flow = world.path / "flow"
    home = home_for(world, "nobody-home", NOBODY)
    list_dir(flow, home, NOBODY)
    for size in ("normal", "large"):
        got = cached(home, size, flow / "a.jpg")
        st = got.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (NOBODY, 0o600)
        d = got.parent.stat()
        assert (d.st_uid, d.st_mode & 0o777) == (NOBODY, 0o700)
        text = thumbnail_text(os.fsencode(got))
        assert text[b"Thumb::URI"] == f"file://{flow}/a.jpg".encode()
        assert text[b"Thumb::MTime"] == mtime_text((flow / "a.jpg").stat().st_mtime_ns).encode()
        # nobody may not read secret.jpg: its picture must not reach nobody's cache
        assert not cached(home, size, flow / "secret.jpg").exists()
    assert (home / ".cache" / "thumbnails").stat().st_mode & 0o777 == 0o700
    assert writes(world) == 2
    # root may read both and gets both, in root's own cache
    root_home = home_for(world, "root-home", 0)
    list_dir(flow, root_home)
    assert cached(root_home, "large", flow / "secret.jpg").exists()
    assert writes(world) == 6


def test_a_second_listing_writes_nothing_and_a_change_rewrites(world):
    flow = world.path / "flow"
    home = home_for(world, "h", 0)
    list_dir(flow, home)
    assert writes(world) == 4
    list_dir(flow, home)
    assert writes(world) == 4
    os.utime(flow / "a.jpg", ns=(10**18, 10**18 + 123_456_789))
    list_dir(flow, home)
    assert writes(world) == 6
    text = thumbnail_text(os.fsencode(cached(home, "normal", flow / "a.jpg")))
    assert text[b"Thumb::MTime"] == b"1000000000.123456"


def test_renames_and_hard_links_get_entries_under_their_own_uri(world):
    flow = world.path / "flow"
    other = world.path / "favourites"
    other.mkdir()
    os.link(flow / "a.jpg", other / "best of.jpg")
    os.rename(flow / "secret.jpg", flow / "renamed.jpg")
    home = home_for(world, "h", 0)
    list_dir(flow, home)
    list_dir(other, home)
    assert cached(home, "large", flow / "renamed.jpg").exists()
    assert not cached(home, "large", flow / "secret.jpg").exists()
    linked = cached(home, "large", other / "best of.jpg")
    assert thumbnail_text(os.fsencode(linked))[b"Thumb::URI"] == \
        f"file://{other}/best%20of.jpg".encode()
    assert cached(home, "large", flow / "a.jpg").exists()


def test_no_desktop_and_no_cache_means_no_writes(world):
    """A shell script or a root find on a server: no graphical session, no thumbnail cache."""
    home = home_for(world, "h", 0)
    list_dir(world.path / "flow", home, desktop=False)
    assert not (home / ".cache").exists()
    assert writes(world) == 0
    # the same without a display, but with a cache a file manager made once: filled
    home2 = home_for(world, "h2", 0, thumbnails_dir=True)
    list_dir(world.path / "flow", home2, desktop=False)
    assert writes(world) == 4


def test_a_planted_symlink_leads_nowhere_the_user_could_not_write(world):
    """nobody points its cache at a root-owned directory: the daemon (root) writes as nobody."""
    target = world.root / "root-only"
    target.mkdir(mode=0o755)
    home = home_for(world, "h", NOBODY, thumbnails_dir=True)
    os.symlink(target, home / ".cache" / "thumbnails" / "large")
    list_dir(world.path / "flow", home, NOBODY)
    assert list(target.iterdir()) == []
    assert cached(home, "normal", world.path / "flow" / "a.jpg").exists()
