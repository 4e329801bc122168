"""Real mount: the user's story from the README, end to end through the kernel."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

import pytest

from mountutil import gffs_cli


def test_flows_copy_link_rename_remove(mounted):
    m = mounted.path
    (m / "landscapes").mkdir()
    (m / "favourites").mkdir()
    data = os.urandom(3 * 1024 * 1024 + 17)
    (m / "landscapes" / "a.jpg").write_bytes(data)
    os.link(m / "landscapes" / "a.jpg", m / "favourites" / "a.jpg")
    assert os.stat(m / "favourites" / "a.jpg").st_nlink == 2
    assert sorted(os.listdir(m)) == ["favourites", "landscapes"]
    os.rename(m / "favourites" / "a.jpg", m / "landscapes" / "b.jpg")
    mounted.remount()
    assert (m / "landscapes" / "a.jpg").read_bytes() == data
    assert (m / "landscapes" / "b.jpg").read_bytes() == data
    os.unlink(m / "landscapes" / "a.jpg")
    assert os.stat(m / "landscapes" / "b.jpg").st_nlink == 1
    os.rename(m / "favourites", m / "best")
    os.rmdir(m / "best")
    assert os.listdir(m) == ["landscapes"]


def test_top_level_only_holds_directories(mounted):
    with pytest.raises(PermissionError):
        (mounted.path / "loose.jpg").write_bytes(b"x")
    (mounted.path / ".Trash-0").mkdir()  # file managers' trash: an ordinary directory
    (mounted.path / ".Trash-0" / "files").mkdir()


def test_second_mount_of_same_store_is_refused(mounted, tmp_path):
    other = tmp_path / "other"
    res = gffs_cli("mount", str(other), "--data-dir", str(mounted.data_dir))
    assert res.returncode != 0
    assert "in use" in res.stderr and "Traceback" not in res.stderr
    assert res.stderr.count("\n") == 1


def test_bad_config_is_one_clear_line(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[store\ncache_mb = 'x'")
    res = gffs_cli("mount", str(tmp_path / "mnt"), "--config", str(cfg))
    assert res.returncode == 2
    assert "not valid TOML" in res.stderr and res.stderr.count("\n") == 1
    res = gffs_cli("mount", str(tmp_path / "mnt"), "--config", str(tmp_path / "missing.toml"))
    assert res.returncode == 2 and "does not exist" in res.stderr
    cfg.write_text("[store]\ncache_mbs = 3\n")
    res = gffs_cli("mount", str(tmp_path / "mnt"), "--config", str(cfg))
    assert res.returncode == 2 and "unknown key 'cache_mbs'" in res.stderr


def test_names_and_xattr_limits(mounted):
    d = mounted.path / "f"
    d.mkdir()
    with pytest.raises(OSError) as e:
        (d / ("n" * 256)).write_bytes(b"")
    assert e.value.errno == errno.ENAMETOOLONG
    (d / ("n" * 255)).write_bytes(b"ok")
    p = d / "x.jpg"
    p.write_bytes(b"img")
    os.setxattr(p, "user.xdg.comment", b"sunset")
    assert os.getxattr(p, "user.xdg.comment") == b"sunset"
    assert "user.xdg.comment" in os.listxattr(p)
    with pytest.raises(OSError) as e:
        os.getxattr(p, "user.missing")
    assert e.value.errno == errno.ENODATA
    with pytest.raises(OSError) as e:
        os.setxattr(p, "user." + "k" * 251, b"v")
    assert e.value.errno == errno.ERANGE
    with pytest.raises(OSError) as e:
        os.setxattr(p, "user.big", b"v" * (64 * 1024 + 1))
    assert e.value.errno in (errno.E2BIG, errno.ERANGE)
    os.setxattr(p, "user.max", b"v" * (64 * 1024))
    assert len(os.getxattr(p, "user.max")) == 64 * 1024
    with pytest.raises(OSError) as e:
        os.setxattr(p, "user.k", b"v", os.XATTR_REPLACE)
    assert e.value.errno == errno.ENODATA
    os.removexattr(p, "user.max")
    with pytest.raises(OSError) as e:
        os.removexattr(p, "user.max")
    assert e.value.errno == errno.ENODATA
    mounted.remount()
    assert os.getxattr(p, "user.xdg.comment") == b"sunset"


def test_random_offset_io_truncate_append(mounted):
    d = mounted.path / "f"
    d.mkdir()
    p = d / "f.bin"
    ref = bytearray(os.urandom(2_500_000))
    p.write_bytes(ref)
    with open(p, "r+b") as f:
        for off in (0, 1, 1048575, 1048576, 2_400_000, 3_000_000):
            chunk = os.urandom(5000)
            f.seek(off)
            f.write(chunk)
            if off > len(ref):
                ref.extend(bytes(off - len(ref)))
            ref[off:off + len(chunk)] = chunk
    assert p.read_bytes() == ref
    os.truncate(p, 1_000_000)
    del ref[1_000_000:]
    os.truncate(p, 1_500_000)
    ref.extend(bytes(500_000))
    with open(p, "ab") as f:
        f.write(b"tail")
    ref += b"tail"
    assert p.read_bytes() == ref
    mounted.remount()
    assert p.read_bytes() == ref


def test_unlink_open_file_keeps_data_until_close(mounted):
    d = mounted.path / "f"
    d.mkdir()
    p = d / "x"
    p.write_bytes(b"abc" * 1000)
    with open(p, "rb") as f:
        os.unlink(p)
        assert not p.exists()
        assert f.read() == b"abc" * 1000


def test_statfs_reports_real_figures(mounted):
    st = os.statvfs(mounted.path)
    assert st.f_namemax == 255
    assert st.f_blocks > 0 and 0 < st.f_bavail <= st.f_blocks


def test_symlinks(mounted):
    d = mounted.path / "f"
    d.mkdir()
    os.symlink("target.jpg", d / "link")
    assert os.readlink(d / "link") == "target.jpg"
    assert os.lstat(d / "link").st_size == len("target.jpg")


def test_rename_flags_through_kernel(mounted):
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    d = mounted.path / "f"
    d.mkdir()
    (d / "a").write_bytes(b"A")
    (d / "b").write_bytes(b"B")
    AT_FDCWD = -100
    def renameat2(a, b, flags):
        r = libc.renameat2(AT_FDCWD, str(a).encode(), AT_FDCWD, str(b).encode(), flags)
        return 0 if r == 0 else ctypes.get_errno()
    assert renameat2(d / "a", d / "b", 1) == errno.EEXIST  # RENAME_NOREPLACE
    assert renameat2(d / "a", d / "b", 2) == 0             # RENAME_EXCHANGE
    assert (d / "a").read_bytes() == b"B" and (d / "b").read_bytes() == b"A"


def test_daemon_survives_and_unmount_is_clean(mounted):
    subprocess.run(["ls", "-la", str(mounted.path)], check=True, capture_output=True)
    mounted.unmount()
    assert not mounted.is_mounted()
    assert mounted.pid() is None or not os.path.exists(f"/proc/{mounted.pid()}")


def test_utimens_chown_and_ctime(mounted):
    d = mounted.path / "f"
    d.mkdir()
    p = d / "x.jpg"
    p.write_bytes(b"x")
    os.utime(p, ns=(1_000_000_123, 2_000_000_456))
    st = os.stat(p)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
    before = st.st_ctime_ns
    os.chown(p, 1234, 5678)
    st = os.stat(p)
    assert (st.st_uid, st.st_gid) == (1234, 5678) and st.st_ctime_ns >= before
    os.utime(p)  # UTIME_NOW
    assert abs(os.stat(p).st_mtime_ns / 1e9 - __import__("time").time()) < 5
    mounted.remount()
    st = os.stat(p)
    assert (st.st_uid, st.st_gid) == (1234, 5678)


def test_readdir_lists_every_entry_of_a_large_directory(mounted):
    d = mounted.path / "big"
    d.mkdir()
    names = {f"img{i:05d}.jpg" for i in range(1500)}
    for n in names:
        (d / n).write_bytes(b"")
    assert set(os.listdir(d)) == names
    for i, n in enumerate(sorted(names)):
        if i % 3 == 0:
            os.unlink(d / n)
    left = {n for i, n in enumerate(sorted(names)) if i % 3}
    assert set(os.listdir(d)) == left


def test_listing_again_shows_every_change_made_in_between(mounted):
    """A directory listed again (the daemon answers from its kept replies) shows changes of
    names and attributes; lstat after a listing shows what the readdirplus reply carried."""
    d = mounted.path / "many"
    d.mkdir()
    want = {}
    for i in range(2500):      # several readdir requests per listing
        name = f"{i:04d}.jpg"
        (d / name).write_bytes(b"x" * (i % 7))
        want[name] = (0o100644, i % 7, 1)

    def listing() -> dict:
        return {e.name: (st.st_mode, st.st_size, st.st_nlink)
                for e in os.scandir(d) for st in [e.stat(follow_symlinks=False)]}

    def check() -> None:
        assert listing() == want
        assert listing() == want

    check()
    os.chmod(d / "0001.jpg", 0o600)
    want["0001.jpg"] = (0o100600, 1, 1)
    check()
    os.truncate(d / "0002.jpg", 100)
    want["0002.jpg"] = (0o100644, 100, 1)
    check()
    with open(d / "0003.jpg", "ab") as f:     # listed while open with unflushed data
        f.write(b"y" * 1000)
        f.flush()
        want["0003.jpg"] = (0o100644, 1003, 1)
        check()
    check()
    os.unlink(d / "0004.jpg")
    del want["0004.jpg"]
    os.rename(d / "0005.jpg", d / "renamed.jpg")
    want["renamed.jpg"] = want.pop("0005.jpg")
    (mounted.path / "other").mkdir()
    os.link(d / "0006.jpg", mounted.path / "other" / "0006.jpg")
    want["0006.jpg"] = (0o100644, 6, 2)
    (d / "new.jpg").write_bytes(b"new")
    want["new.jpg"] = (0o100644, 3, 1)
    check()


def test_ls_l_asks_for_unsupported_xattrs_once_per_mount_not_per_file(mounted):
    """ls -l probes security.selinux and ACLs; ENOTSUP lets it stop after the first file."""
    d = mounted.path / "flow"
    d.mkdir()
    for i in range(50):
        (d / f"{i}.jpg").write_bytes(b"")
    if shutil.which("strace") is None:
        pytest.skip("strace not installed (tools/setup.sh installs it)")
    res = subprocess.run(["strace", "-f", "-e", "trace=getxattr,lgetxattr,listxattr,llistxattr",
                          "ls", "-l", str(d)], capture_output=True, text=True)
    calls = [line for line in res.stderr.splitlines() if "xattr(" in line]
    assert len(calls) < 10, "\n".join(calls[:20])


def test_small_block_store_random_io(mount_factory, tmp_path):
    cfg = tmp_path / "small.toml"
    cfg.write_text("[store]\nblock_size_kb = 64\n")
    m = mount_factory(config=cfg, name="small")
    d = m.path / "f"
    d.mkdir()
    rnd = __import__("random").Random(5)
    ref = bytearray(rnd.randbytes(700_000))
    (d / "x").write_bytes(ref)
    with open(d / "x", "r+b") as f:
        for _ in range(40):
            off, n = rnd.randrange(0, 900_000), rnd.randrange(1, 100_000)
            chunk = rnd.randbytes(n)
            f.seek(off)
            f.write(chunk)
            if off > len(ref):
                ref.extend(bytes(off - len(ref)))
            ref[off:off + n] = chunk
    m.remount()
    assert (d / "x").read_bytes() == ref


def test_sequential_zero_blocks_are_holes_not_chunks(mounted):
    """Write-behind (full blocks stored while the file is still being written) must treat
    an all-zero block as the flush does: a hole, so the same bytes get one content id."""
    from gffs.index import ChunkMap, Index
    from gffs.index.images import ImageIndex, content_id_of_bytes
    (mounted.path / "f").mkdir()
    data = bytes(3 << 20) + b"tail"
    with open(mounted.path / "f" / "zeros.raw", "wb") as out:
        for start in range(0, len(data), 128 << 10):
            out.write(data[start:start + (128 << 10)])
    assert (mounted.path / "f" / "zeros.raw").read_bytes() == data
    ino = os.stat(mounted.path / "f" / "zeros.raw").st_ino
    mounted.unmount()
    index = Index(mounted.data_dir / "index", readonly=True)
    try:
        with index.read() as txn:
            assert sum(1 for _ in ChunkMap(index).all_chunks(txn)) == 1  # only the tail
            cid = ImageIndex(index).content_id(txn, ino)
        assert cid == content_id_of_bytes(data, index.block_size)
    finally:
        index.close()
