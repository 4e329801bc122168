"""Thumbnails through a real mount: .sh_thumbnails as file managers use it, never reading originals."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from gffs.index import Index
from gffs.index.chunkmap import ChunkMap
from gffs.index.images import ImageIndex
from gffs_backends.local import chunk_path
from mountutil import Mount
from test_mount_permissions import NOBODY, _as_nobody, shared_mount  # noqa: F401 (fixture)

SIZES = {"normal": 128, "large": 256, "x-large": 512}


def jpeg(i: int, size=(800, 600)) -> bytes:
    """A distinct JPEG per *i* (different pixels, so a different content id)."""
    im = Image.linear_gradient("L").resize(size).convert("RGB")
    im.paste(((37 * i) % 256, (91 * i) % 256, (13 * i) % 256), (0, 0, size[0] // 4, size[1] // 4))
    im.putpixel((size[0] - 1, size[1] - 1), (i % 256, i // 256 % 256, 7))
    out = io.BytesIO()
    im.save(out, "JPEG", quality=92)
    return out.getvalue()


def thumb(path: Path, size: str = "large") -> Path:
    md5 = hashlib.md5(path.name.encode()).hexdigest()
    return path.parent / ".sh_thumbnails" / size / f"{md5}.png"


def wait_thumbnail(path: Path, size: str = "large", timeout: float = 60.0) -> Path:
    deadline = time.monotonic() + timeout
    t = thumb(path, size)
    while not t.exists():
        assert time.monotonic() < deadline, f"no thumbnail for {path} after {timeout} s"
        time.sleep(0.05)
    return t


def stat_counter(m: Mount, name: str) -> int:
    return int(os.getxattr(m.path, f"user.gf.stats.{name}"))


def chunk_file(m: Mount, data: bytes) -> Path:
    """The local backend's file of a (single-block) file's only chunk."""
    key = hashlib.sha256(data).hexdigest()
    return chunk_path(m.data_dir / "local" / "chunks", key)


def open_index(m: Mount) -> Index:
    m.unmount()
    return Index(m.data_dir / "index")


def test_browsing_a_flow_like_a_file_manager_reads_no_original(mounted):
    flow = mounted.path / "holiday"
    flow.mkdir()
    originals = {f"IMG_{i:04d}.jpg": jpeg(i) for i in range(40)}
    for name, data in originals.items():
        (flow / name).write_bytes(data)
    for name in originals:
        wait_thumbnail(flow / name, "normal")
    mounted.remount()                     # empty caches, counters from zero
    # make any read of an original chunk file visible: relatime updates an atime
    # that is older than the file's ctime, which utime() just set to now
    old = time.time() - 3600
    files = {name: chunk_file(mounted, data) for name, data in originals.items()}
    for f in files.values():
        os.utime(f, (old, f.stat().st_mtime))

    shown = 0
    for entry in os.scandir(flow):        # what a file manager does to show a folder
        st = entry.stat()
        for attr in os.listxattr(entry.path):
            os.getxattr(entry.path, attr)
        for size in ("normal", "large"):
            t = thumb(Path(entry.path), size)
            png = t.read_bytes()
            assert len(png) == t.stat().st_size
            im = Image.open(io.BytesIO(png))
            im.load()
            assert max(im.size) == SIZES[size]
            assert im.text["Thumb::MTime"] == str(int(st.st_mtime))
            shown += 1
    assert shown == 2 * len(originals)
    assert stat_counter(mounted, "file_block_loads") == 0
    assert stat_counter(mounted, "analysis_block_loads") == 0
    assert stat_counter(mounted, "thumbnail_loads") == shown
    assert all(f.stat().st_atime < old + 1 for f in files.values()), "an original was read"

    # the two detectors do see a read of an original
    first = next(iter(originals))
    assert (flow / first).read_bytes() == originals[first]
    assert stat_counter(mounted, "file_block_loads") >= 1
    assert files[first].stat().st_atime > old + 1


def test_thumbnail_files_follow_the_spec(mounted):
    flow = mounted.path / "spec"
    flow.mkdir()
    data = jpeg(1, (3000, 2000))
    p = flow / "my photo ü.jpg"
    p.write_bytes(data)
    wait_thumbnail(p, "x-large")
    os.utime(p, (1_600_000_000, 1_650_000_000))
    assert ".sh_thumbnails" not in os.listdir(flow)             # not listed: cp -r skips it
    assert sorted(os.listdir(flow / ".sh_thumbnails")) == ["large", "normal", "x-large"]
    escaped = "my%20photo%20%C3%BC.jpg"
    for size, box in SIZES.items():
        listed = os.listdir(flow / ".sh_thumbnails" / size)
        assert sorted(listed) == sorted(hashlib.md5(n.encode()).hexdigest() + ".png"
                                        for n in (escaped, p.name))
        for uri_name in (escaped, p.name):
            t = flow / ".sh_thumbnails" / size / (hashlib.md5(uri_name.encode()).hexdigest()
                                                 + ".png")
            st = t.stat()
            png = t.read_bytes()
            assert st.st_size == len(png) and (st.st_mode & 0o777) == 0o444
            im = Image.open(io.BytesIO(png))
            im.load()
            assert im.format == "PNG" and im.size == (box, box * 2 // 3 + (box == 256))
            assert im.text["Thumb::URI"].encode("latin-1") == uri_name.encode()
            assert im.text["Thumb::MTime"] == "1650000000"
            assert im.text["Thumb::Size"] == str(len(data))
            assert im.text["Thumb::Mimetype"] == "image/jpeg"
    assert os.getxattr(p, "user.gf.thumbnail.large").decode() == (
        f".sh_thumbnails/large/{hashlib.md5(escaped.encode()).hexdigest()}.png")


def test_copies_and_hard_links_share_one_thumbnail_chunk(mounted):
    for flow in ("a", "b", "c"):
        (mounted.path / flow).mkdir()
    src = mounted.path / "a" / "one.jpg"
    src.write_bytes(jpeg(7))
    wait_thumbnail(src)
    stored = mounted.stored_bytes()
    shutil.copyfile(src, mounted.path / "b" / "copy of one.jpg")
    os.link(src, mounted.path / "c" / "linked.jpg")
    for p in (mounted.path / "b" / "copy of one.jpg", mounted.path / "c" / "linked.jpg"):
        png = wait_thumbnail(p, timeout=5).read_bytes()   # found by the MD5 of the raw name
        assert Image.open(io.BytesIO(png)).text["Thumb::URI"] == p.name
    assert mounted.stored_bytes() == stored       # not a byte more: data and thumbnails shared
    index = open_index(mounted)
    try:
        with index.read() as txn:
            rows = list(txn.cursor(db=index.db["thumbnails"]))
            assert len(rows) == 3   # one stored source: three rows, three references
            for _key, value in rows:
                assert ChunkMap(index).chunk(txn, bytes(value[:32])).refcount == 3
    finally:
        index.close()


def test_unanalysed_images_have_no_thumbnail(mount_factory, tmp_path):
    config = tmp_path / "gffs.toml"
    config.write_text("[store]\nanalyze_images = false\n")
    m = mount_factory(config=config)
    flow = m.path / "f"
    flow.mkdir()
    p = flow / "x.jpg"
    p.write_bytes(jpeg(3))
    time.sleep(1.0)
    assert (flow / ".sh_thumbnails" / "large").is_dir()
    with pytest.raises(FileNotFoundError):
        thumb(p).read_bytes()
    assert os.listdir(flow / ".sh_thumbnails" / "large") == []
    with pytest.raises(OSError) as e:
        os.getxattr(p, "user.gf.thumbnail.large")
    assert e.value.errno == errno.ENODATA


def test_writes_are_refused_with_eacces(mounted):
    flow = mounted.path / "f"
    flow.mkdir()
    p = flow / "x.jpg"
    p.write_bytes(jpeg(4))
    t = wait_thumbnail(p)
    sd = t.parent
    before = t.read_bytes()
    refused = {
        "create": lambda: open(sd / "new.png", "wb"),
        "overwrite": lambda: open(t, "r+b"),
        "unlink": lambda: os.unlink(t),
        "rename": lambda: os.rename(t, flow / "stolen.png"),
        "rename in": lambda: os.rename(p, sd / "x.png"),
        "mkdir": lambda: os.mkdir(sd / "d"),
        "rmdir": lambda: os.rmdir(flow / ".sh_thumbnails" / "normal"),
        "utime": lambda: os.utime(t, (0, 0)),
        "chmod": lambda: os.chmod(t, 0o666),
        "setxattr": lambda: os.setxattr(t, "user.x", b"1"),
        "link": lambda: os.link(p, sd / "l.png"),
    }
    for what, op in refused.items():
        with pytest.raises(OSError) as e:
            op()
        assert e.value.errno == errno.EACCES, what
    with pytest.raises(FileExistsError):
        os.mkdir(flow / ".sh_thumbnails")
    os.makedirs(flow / ".sh_thumbnails" / "large", exist_ok=True)   # mkdir -p: fine
    assert t.read_bytes() == before and p.read_bytes() == jpeg(4)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_thumbnails_are_readable_by_exactly_who_may_read_the_original(shared_mount):
    flow = shared_mount.path / "f"
    flow.mkdir(mode=0o755)
    p = flow / "x.jpg"
    p.write_bytes(jpeg(5))
    t = wait_thumbnail(p)
    os.chmod(p, 0o600)
    time.sleep(1.1)   # attribute cache
    assert _as_nobody(lambda: t.read_bytes()) == errno.EACCES
    os.chmod(p, 0o644)
    time.sleep(1.1)
    assert _as_nobody(lambda: t.read_bytes()) == 0
    assert _as_nobody(lambda: open(t.parent / "n.png", "wb")) == errno.EACCES
    assert _as_nobody(lambda: os.unlink(t)) == errno.EACCES
    assert os.stat(t).st_uid == os.stat(p).st_uid != NOBODY


def test_kill9_during_analysis_loses_nothing(mounted):
    flow = mounted.path / "crash"
    flow.mkdir()
    originals = {f"c{i:03d}.jpg": jpeg(100 + i, (1600, 1200)) for i in range(30)}
    for name, data in originals.items():
        (flow / name).write_bytes(data)
    wait_thumbnail(flow / "c000.jpg")     # the analysis is under way...
    done = sum(thumb(flow / n).exists() for n in originals)
    mounted.kill9()                       # ...and killed in the middle of it
    assert done < len(originals), "analysis finished before the kill: test proves nothing"
    mounted.mount()
    for name in originals:
        wait_thumbnail(flow / name)
        assert (flow / name).read_bytes() == originals[name]
    index = open_index(mounted)
    try:
        with index.read() as txn:
            rows = [bytes(v[:32]) for _k, v in txn.cursor(db=index.db["thumbnails"])]
            assert len(rows) == 3 * len(originals)
            assert ImageIndex(index).queued(txn) == []
            cm = ChunkMap(index)
            for digest, n in Counter(rows).items():
                rec = cm.chunk(txn, digest)
                assert rec is not None and rec.refcount == n
                assert chunk_path(mounted.data_dir / "local" / "chunks", digest.hex()).exists()
    finally:
        index.close()
