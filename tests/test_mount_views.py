"""``/.views`` through a real mount: the same files by date, camera, place, tag and NFT
collection, updated as facts arrive, hidden from the root's listing, read-only."""

from __future__ import annotations

import errno
import io
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from gffs.index import Index
from mountutil import FUSE_AVAILABLE, SKIP_REASON, Mount

CONTRACT = "0x" + "ab" * 20
DEADLINE = 60.0


def photo(make: str, model: str, when: str, gps: bool, color: tuple[int, int, int]) -> bytes:
    im = Image.new("RGB", (320, 200), color)
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = make, model
    exif.get_ifd(0x8769)[0x9003] = when                      # DateTimeOriginal
    if gps:                                                  # Munich: 48.137 N, 11.575 E
        g = exif.get_ifd(0x8825)
        g[1], g[2], g[3], g[4] = "N", (48.0, 8.0, 13.2), "E", (11.0, 34.0, 30.0)
    out = io.BytesIO()
    im.save(out, "JPEG", quality=90, exif=exif)
    return out.getvalue()


def poll(check, what: str):
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        assert time.monotonic() < deadline, f"{what}: not within {DEADLINE} s"
        time.sleep(0.1)


def listing(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def analysed(path: Path) -> bool:
    return "user.gf.image.format" in os.listxattr(path)


@pytest.fixture(scope="module")
def trip(tmp_path_factory) -> Mount:
    if not FUSE_AVAILABLE:
        pytest.skip(SKIP_REASON)
    m = Mount(tmp_path_factory.mktemp("views"))
    m.mount()
    try:
        flow = m.path / "trip"
        flow.mkdir()
        (flow / "a.jpg").write_bytes(photo("Canon", "Canon EOS 80D", "2024:05:01 08:30:15", True,
                                           (200, 30, 30)))
        (flow / "b.jpg").write_bytes(photo("Canon", "Canon EOS 80D", "2024:05:01 09:00:00", True,
                                           (30, 200, 30)))
        (flow / "c.jpg").write_bytes(photo("NIKON CORPORATION", "D7500", "2023:12:24 18:00:00",
                                           False, (30, 30, 200)))
        (flow / "notes.txt").write_text("not an image\n")
        for name in ("a.jpg", "b.jpg", "c.jpg"):
            poll(lambda: analysed(flow / name), f"facts of {name}")
        yield m
    finally:
        m.cleanup()


def test_views_list_the_real_files_by_date_camera_and_place(trip):
    views, flow = trip.path / ".views", trip.path / "trip"
    assert ".views" not in os.listdir(trip.path)                   # hidden from the root
    assert not any(".views" in d for d, _, _ in os.walk(trip.path))  # cp -r, du, find
    assert listing(views) == ["by-camera", "by-collection", "by-date", "by-place", "by-tag"]
    assert listing(views / "by-date") == ["2023", "2024"]
    day = views / "by-date" / "2024" / "05" / "01"
    a, b = os.stat(flow / "a.jpg").st_ino, os.stat(flow / "b.jpg").st_ino
    assert listing(day) == [f"2024-05-01 08.30.15 #{a}.jpg", f"2024-05-01 09.00.00 #{b}.jpg"]
    entry = day / f"2024-05-01 08.30.15 #{a}.jpg"
    assert os.stat(entry).st_ino == a                              # the same inode
    assert entry.read_bytes() == (flow / "a.jpg").read_bytes()
    assert listing(views / "by-camera") == ["Canon EOS 80D", "NIKON CORPORATION D7500"]
    assert len(listing(views / "by-camera" / "Canon EOS 80D")) == 2
    assert listing(views / "by-place") == ["48.1N 11.5E"]
    assert [n.split("#")[1] for n in listing(views / "by-place" / "48.1N 11.5E")] == [
        f"{a}.jpg", f"{b}.jpg"]
    # ls -l of a leaf: every entry's attributes are the file's
    for name in listing(day):
        st = os.lstat(day / name)
        assert st.st_size == os.stat(flow / ("a.jpg" if st.st_ino == a else "b.jpg")).st_size
    with pytest.raises(FileNotFoundError):
        os.stat(day / f"2024-05-01 08.30.15 #{b}.jpg")             # wrong name for that inode
    with pytest.raises(FileNotFoundError):
        os.stat(views / "by-date" / "1999")


def test_tags_and_collections_follow_the_attributes(trip):
    views, flow = trip.path / ".views", trip.path / "trip"
    notes, c = flow / "notes.txt", flow / "c.jpg"
    os.setxattr(notes, "user.xdg.tags", b"alps, sunset")
    os.setxattr(c, "user.xdg.tags", b"sunset")
    n, ci = os.stat(notes).st_ino, os.stat(c).st_ino
    assert listing(views / "by-tag") == ["alps", "sunset"]
    assert listing(views / "by-tag" / "alps") == [f"#{n}"]
    assert listing(views / "by-tag" / "sunset") == [f"#{n}", f"2023-12-24 18.00.00 #{ci}.jpg"]
    os.setxattr(notes, "user.xdg.tags", b"sunset")
    assert listing(views / "by-tag") == ["sunset"]                 # the last alps is gone
    os.removexattr(c, "user.xdg.tags")
    assert listing(views / "by-tag" / "sunset") == [f"#{n}"]
    os.setxattr(c, "user.nft.chain", b"ethereum")
    assert listing(views / "by-collection") == []                  # a contract is needed too
    os.setxattr(c, "user.nft.contract", CONTRACT.encode())
    coll = views / "by-collection" / f"ethereum:{CONTRACT}"
    assert listing(coll) == [f"2023-12-24 18.00.00 #{ci}.jpg"]
    assert (coll / listing(coll)[0]).read_bytes() == c.read_bytes()


def test_every_change_inside_is_refused(trip):
    views, flow = trip.path / ".views", trip.path / "trip"
    day = views / "by-date" / "2024" / "05" / "01"
    entry = day / listing(day)[0]
    attempts = [
        lambda: (views / "mine").mkdir(),
        lambda: (views / "by-date" / "2024" / "new.jpg").write_bytes(b"x"),
        lambda: entry.unlink(),
        lambda: os.rename(entry, flow / "moved.jpg"),
        lambda: os.rename(flow / "a.jpg", day / "a.jpg"),
        lambda: os.link(flow / "a.jpg", day / "a.jpg"),
        lambda: (views / "by-tag").rmdir(),
        lambda: os.setxattr(views / "by-date", "user.x", b"1"),
        lambda: os.chmod(views / "by-date", 0o777),
        lambda: (trip.path / ".views").rmdir(),
    ]
    for attempt in attempts:
        with pytest.raises(PermissionError) as err:
            attempt()
        assert err.value.errno == errno.EACCES
    with pytest.raises(FileExistsError):
        (trip.path / ".views").mkdir()
    os.makedirs(trip.path / ".views", exist_ok=True)               # mkdir -p is fine
    # a view entry linked into a flow is one more link of the same file
    os.link(entry, flow / "favourite.jpg")
    assert os.stat(flow / "favourite.jpg").st_ino == os.stat(entry).st_ino
    (flow / "favourite.jpg").unlink()


def test_rewrites_and_deletes_move_entries(trip):
    views, flow = trip.path / ".views", trip.path / "trip"
    (flow / "d.jpg").write_bytes(photo("SONY", "ILCE-6400", "2022:02:16 12:55:41", False,
                                       (90, 90, 10)))
    d = os.stat(flow / "d.jpg").st_ino
    poll(lambda: listing(views / "by-date" / "2022" / "02" / "16"), "d.jpg by date")
    (flow / "d.jpg").write_bytes(photo("SONY", "ILCE-6400", "2021:07:04 10:00:00", False,
                                       (10, 90, 90)))
    poll(lambda: listing(views / "by-date" / "2021" / "07" / "04") == [
        f"2021-07-04 10.00.00 #{d}.jpg"], "d.jpg under its new date")
    assert listing(views / "by-date" / "2022") == []               # the old day is gone
    (flow / "d.jpg").unlink()
    assert listing(views / "by-date" / "2021") == []
    assert listing(views / "by-camera" / "SONY ILCE-6400") == []


def test_a_store_from_before_views_is_indexed_at_mount(trip):
    views = trip.path / ".views"
    tagged = next(p for p in (trip.path / "trip").iterdir() if p.is_file())
    os.setxattr(tagged, "user.xdg.tags", b"sunset")            # this test's own tag
    before = listing(views / "by-date" / "2024" / "05" / "01")
    trip.unmount()
    index = Index(trip.data_dir / "index")
    try:
        with index.write() as txn:                                 # as an older gffs left it
            for table in ("viewrows", "inoviews", "cidinodes"):
                for key in [bytes(k) for k, _ in txn.cursor(db=index.db[table])]:
                    txn.delete(key, db=index.db[table])
            index.set_meta_json(txn, b"views_built", None)
    finally:
        index.close()
    trip.mount()
    assert listing(views / "by-date" / "2024" / "05" / "01") == before
    assert listing(views / "by-tag" / "sunset") != [], "tags not indexed again"
