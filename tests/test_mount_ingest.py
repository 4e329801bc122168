"""Ingest through the kernel: dedup across flows, parallel cp, a responsive loop, the real
test images, and a full disk."""

from __future__ import annotations

import errno
import filecmp
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mountutil import FUSE_AVAILABLE, SKIP_REASON, Mount

KIB, MIB = 1 << 10, 1 << 20


def make_files(dirpath: Path, n: int, size, seed: int, prefix: str = "img") -> dict[str, bytes]:
    rng = random.Random(seed)
    dirpath.mkdir(parents=True, exist_ok=True)
    out = {}
    for i in range(n):
        data = rng.randbytes(size(rng) if callable(size) else size)
        name = f"{prefix}{i:03d}.jpg"
        (dirpath / name).write_bytes(data)
        out[name] = data
    return out


def cp(src: Path, dst: Path) -> subprocess.Popen:
    """`cp -r src/. dst/` as its own process."""
    return subprocess.Popen(["cp", "-r", f"{src}/.", f"{dst}/"], stderr=subprocess.PIPE,
                            text=True)


def run_cp(src: Path, dst: Path) -> None:
    p = cp(src, dst)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, f"cp {src} -> {dst} failed: {err}"


def assert_same_tree(src: Path, dst: Path) -> int:
    """Byte-compare every regular file under src with its copy under dst; return the count."""
    n = 0
    for dirpath, _dirs, files in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        for name in files:
            a, b = Path(dirpath) / name, dst / rel / name
            if os.path.islink(a):
                assert os.readlink(a) == os.readlink(b), b
                continue
            assert b.is_file(), f"{b} missing"
            assert filecmp.cmp(a, b, shallow=False), f"{b} differs from {a}"
            n += 1
    return n


def tree_bytes(src: Path) -> int:
    return sum(os.path.getsize(Path(d) / f) for d, _, fs in os.walk(src) for f in fs
               if not os.path.islink(Path(d) / f))


# -- a) dedup ---------------------------------------------------------------------------

def _dedup_three_flows(m: Mount, src: Path) -> None:
    total = tree_bytes(src)
    run_cp(src, _flow(m, "one"))
    after_one = m.stored_bytes()
    assert after_one > 0
    # one copy of incompressible images: the bytes, plus small per-chunk headers at most
    assert after_one <= total * 1.01 + 64 * KIB, (after_one, total)
    run_cp(src, _flow(m, "two"))
    run_cp(src, _flow(m, "three"))
    after_three = m.stored_bytes()
    assert after_three <= after_one * 1.01, (
        f"three flows stored {after_three} bytes, one flow {after_one}: dedup did not happen")
    for flow in ("one", "two", "three"):
        assert_same_tree(src, m.path / flow)
    m.remount()
    for flow in ("one", "two", "three"):
        assert_same_tree(src, m.path / flow)
    assert m.stored_bytes() == after_three


def _flow(m: Mount, name: str) -> Path:
    p = m.path / name
    p.mkdir(exist_ok=True)
    return p


def test_cp_writes_whole_blocks_per_request(mounted, tmp_path):
    """st_blksize is the block (1 MiB): cp writes a chunk per request, not eight 128 KiB
    pieces (each of which also costs the kernel's security.capability lookup)."""
    m = mounted
    src = tmp_path / "one" / "big.jpg"
    src.parent.mkdir()
    src.write_bytes(random.Random(7).randbytes(4 * MIB))
    flow = _flow(m, "blocks")
    before = int(os.getxattr(m.path, "user.gf.stats.write_requests"))
    run_cp(src.parent, flow)
    requests = int(os.getxattr(m.path, "user.gf.stats.write_requests")) - before
    assert os.stat(flow / "big.jpg").st_blksize == MIB
    assert requests <= 8, f"4 MiB took {requests} write requests"
    assert (flow / "big.jpg").read_bytes() == src.read_bytes()


def test_dedup_same_images_in_three_flows_generated(mounted, tmp_path):
    src = tmp_path / "src"
    files = make_files(src, 10, 300 * KIB, seed=11)
    assert tree_bytes(src) == sum(map(len, files.values()))
    _dedup_three_flows(mounted, src)


def test_dedup_same_images_in_three_flows_testdata(mounted, testdata, tmp_path):
    jpgs = sorted(p for p in (testdata / "exif-samples" / "jpg").rglob("*.jpg")
                  if p.is_file() and "invalid" not in p.parts and p.stat().st_size > 10 * KIB)
    if len(jpgs) < 10:
        pytest.skip(f"need 10 JPEGs under {testdata}/exif-samples/jpg, found {len(jpgs)}")
    src = tmp_path / "src"
    src.mkdir()
    for i, p in enumerate(jpgs[:10]):
        shutil.copy(p, src / f"{i:02d}-{p.name}")
    _dedup_three_flows(mounted, src)


# -- b) concurrent cp -------------------------------------------------------------------

def test_parallel_cp_into_same_and_different_flows(mounted, tmp_path):
    m = mounted
    srcs = []
    for k in range(4):
        src = tmp_path / f"src{k}"
        make_files(src, 12, lambda r: r.choice([0, 1, 4 * KIB, r.randint(1, 3 * MIB)]),
                   seed=100 + k, prefix=f"s{k}-")
        # the same content in every source, under different names: concurrent dedup
        (src / f"shared{k}.jpg").write_bytes(random.Random(7).randbytes(2 * MIB + 5))
        (src / "sub").mkdir()
        (src / "sub" / f"deep{k}.jpg").write_bytes(random.Random(8).randbytes(700 * KIB))
        srcs.append(src)
    # two cp into the same flow (different subdirectories), two into separate flows,
    # and two more into one and the same directory (distinct file names)
    both = _flow(m, "same") / "both"
    (both / "sub").mkdir(parents=True)  # else the two cp race on mkdir (as on any fs)
    dsts = [_flow(m, "same") / "a", _flow(m, "same") / "b", _flow(m, "x"), _flow(m, "y"),
            both, both]
    pairs = list(zip(srcs + srcs[:2], dsts))
    for _, d in pairs:
        d.mkdir(exist_ok=True)
    procs = [cp(s, d) for s, d in pairs]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    for s, d in pairs:
        assert_same_tree(s, d)
    assert sorted(os.listdir(both / "sub")) == ["deep0.jpg", "deep1.jpg"]
    m.remount()
    for s, d in pairs:
        assert_same_tree(s, d)


# -- c) a big write does not block the event loop ----------------------------------------

WRITER = r"""
import hashlib, random, sys
path, mib = sys.argv[1], int(sys.argv[2])
rng = random.Random(5)
h = hashlib.sha256()
with open(path, "wb", buffering=0) as f:
    for _ in range(mib):
        block = rng.randbytes(1 << 20)
        h.update(block)
        f.write(block)
print(h.hexdigest())
"""


def test_large_cp_never_stalls_ls(mounted, tmp_path):
    m = mounted
    small = _flow(m, "browse")
    for i in range(50):
        (small / f"p{i:02d}.jpg").write_bytes(os.urandom(2 * KIB))
    big = _flow(m, "big") / "huge.raw"
    size_mib = 300
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(big), str(size_mib)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    latencies = []
    try:
        # wait until the write is really under way
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not big.exists() or big.stat().st_size < 8 * MIB):
            time.sleep(0.05)
        while writer.poll() is None:
            t0 = time.monotonic()
            res = subprocess.run(["ls", "-l", str(small)], capture_output=True, text=True,
                                 timeout=60)
            latencies.append(time.monotonic() - t0)
            assert res.returncode == 0, res.stderr
            assert res.stdout.count(".jpg") == 50
            time.sleep(0.02)
        out, err = writer.communicate(timeout=300)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert writer.returncode == 0, err
    assert len(latencies) >= 5, f"only {len(latencies)} ls runs during the write"
    worst = max(latencies)
    print(f"{len(latencies)} ls runs, worst {worst:.3f}s, median "
          f"{sorted(latencies)[len(latencies) // 2]:.3f}s")
    assert worst < 1.0, (f"ls -l took up to {worst:.2f}s while a large file was written "
                         f"({len(latencies)} runs)")
    assert big.stat().st_size == size_mib * MIB
    import hashlib
    h = hashlib.sha256()
    with open(big, "rb") as f:
        while chunk := f.read(4 * MIB):
            h.update(chunk)
    assert h.hexdigest() == out.strip()


# -- d) the real test images --------------------------------------------------------------

def test_every_testdata_image_roundtrips(mounted, testdata):
    src = testdata / "exif-samples"
    if not src.is_dir():
        pytest.skip(f"{src} not found")
    dst = _flow(mounted, "samples")
    run_cp(src, dst)
    n = assert_same_tree(src, dst)
    assert n >= 10
    assert (dst / "jpg" / "corrupted.jpg").exists() or not (src / "jpg" / "corrupted.jpg").exists()
    mounted.remount()
    assert assert_same_tree(src, dst) == n


# -- e) a full disk ---------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    if not FUSE_AVAILABLE:
        pytest.skip(SKIP_REASON)
    d = tmp_path / "small"
    d.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", str(d)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {res.stderr.strip()}")
    m = Mount(d / "store")
    try:
        yield m
    finally:
        m.cleanup()
        if subprocess.run(["umount", str(d)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(d)], capture_output=True)


def _write(path: Path, data: bytes) -> None:
    """Write and close; an error of either surfaces as OSError."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for off in range(0, len(data), 256 * KIB):
            os.write(fd, data[off:off + 256 * KIB])
    finally:
        os.close(fd)


def test_full_disk_gives_enospc_and_corrupts_nothing(small_disk):
    m = small_disk
    m.mount()
    flow = _flow(m, "full")
    rng = random.Random(3)
    closed: dict[str, bytes] = {}
    failure: OSError | None = None
    for i in range(100):
        name = f"f{i:03d}.raw"
        data = rng.randbytes(2 * MIB + rng.randint(0, 100 * KIB))
        try:
            _write(flow / name, data)
        except OSError as exc:
            failure = exc
            failed_name = name
            break
        closed[name] = data
    assert failure is not None, "30 MiB tmpfs never filled up"
    print(f"after {len(closed)} files: {failure!r}")
    assert failure.errno == errno.ENOSPC, f"expected ENOSPC, got {failure!r}"
    assert len(closed) >= 5

    # everything closed before the failure is intact; the mount is still alive
    assert sorted(n for n in os.listdir(flow) if n != failed_name) == sorted(closed)
    for name, data in closed.items():
        assert (flow / name).read_bytes() == data, f"{name} damaged by the full disk"
    if (flow / failed_name).exists():
        (flow / failed_name).read_bytes()  # any content, but readable
        os.unlink(flow / failed_name)

    # free space, then a new write succeeds (garbage deletion runs in the background)
    for name in sorted(closed)[::2]:
        os.unlink(flow / name)
        del closed[name]
    new = rng.randbytes(2 * MIB)
    deadline = time.monotonic() + 10
    while True:
        try:
            _write(flow / "after.raw", new)
            break
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
            if time.monotonic() > deadline:
                raise AssertionError("space was never reclaimed after deleting files") from exc
            time.sleep(0.2)
    closed["after.raw"] = new
    for name, data in closed.items():
        assert (flow / name).read_bytes() == data

    m.unmount()
    assert not m.is_mounted()
    m.mount()
    assert sorted(os.listdir(flow)) == sorted(closed)
    for name, data in closed.items():
        assert (flow / name).read_bytes() == data, f"{name} damaged after remount"
    assert "Traceback" not in m.log_text(), m.log_tail(60)


def unreferenced_chunk_files(m: Mount) -> dict[str, int]:
    """Chunk files in the local store that no index row (live or garbage) mentions."""
    from gffs.index import Index
    assert not m.is_mounted()
    idx = Index(m.data_dir / "index", readonly=True)
    try:
        with idx.read() as txn:
            known = {bytes(k).hex() for k, _ in txn.cursor(db=idx.db["chunks"])}
            known |= {bytes(k).hex() for k, _ in txn.cursor(db=idx.db["garbage"])}
    finally:
        idx.close()
    return {f: os.path.getsize(Path(d) / f)
            for d, _, fs in os.walk(m.data_dir / "local" / "chunks") for f in fs
            if f not in known}


def test_failed_flush_on_full_disk_leaves_no_unreferenced_chunks(small_disk):
    """A flush that fails with ENOSPC must not strand the chunks it already wrote:
    deleting the failed file gives all of its space back, without an offline gc."""
    m = small_disk
    m.mount()
    flow = _flow(m, "full")
    rng = random.Random(4)
    keep = {f"k{i}.raw": rng.randbytes(2 * MIB) for i in range(4)}
    for name, data in keep.items():
        _write(flow / name, data)
    with pytest.raises(OSError) as exc_info:  # 40 MiB cannot fit in what is left of 30 MiB
        _write(flow / "too-big.raw", rng.randbytes(40 * MIB))
    assert exc_info.value.errno == errno.ENOSPC, exc_info.value
    if (flow / "too-big.raw").exists():
        os.unlink(flow / "too-big.raw")
    for name, data in keep.items():
        assert (flow / name).read_bytes() == data
    m.unmount()  # drains the garbage queue
    leaked = unreferenced_chunk_files(m)
    assert not leaked, (f"{len(leaked)} chunk files ({sum(leaked.values())} bytes) written by "
                        f"the failed flush are referenced by nothing and were never deleted: "
                        f"{sorted(k[:16] for k in leaked)}")
    m.mount()
    # all but the kept 8 MiB is free again: a 16 MiB file fits
    _write(flow / "after.raw", rng.randbytes(16 * MIB))


def test_full_disk_under_the_index_gives_enospc(small_disk):
    """Metadata only (empty files with large xattrs): the LMDB commit is what hits the full
    disk. The caller must see ENOSPC (not EIO), the daemon must log no traceback, and
    everything committed before stays."""
    m = small_disk
    m.mount()
    flow = _flow(m, "meta")
    fs_root = m.root.parent
    st = os.statvfs(fs_root)
    filler = fs_root / "filler"
    with open(filler, "wb") as f:  # leave about 1 MiB free on the tmpfs
        f.write(bytes(st.f_bavail * st.f_frsize - MIB))
    done: list[str] = []
    failure: OSError | None = None
    value = random.Random(9).randbytes(60 * KIB)
    for i in range(1000):
        p = flow / f"x{i:04d}"
        try:
            p.write_bytes(b"")
            os.setxattr(p, "user.blob", value)
        except OSError as exc:
            failure = exc
            break
        done.append(p.name)
    assert failure is not None, "the index never hit the full disk"
    filler.unlink()
    for name in done:
        assert os.getxattr(flow / name, "user.blob") == value
    (flow / "later").write_bytes(b"ok")
    os.setxattr(flow / "later", "user.blob", b"v")
    m.remount()
    for name in done:
        assert os.getxattr(flow / name, "user.blob") == value
    assert (flow / "later").read_bytes() == b"ok"
    assert failure.errno == errno.ENOSPC, (
        f"full disk under the index gave {failure!r}, not ENOSPC; daemon log:\n"
        + "\n".join(line for line in m.log_text().splitlines() if "lmdb" in line or "ERROR" in line))
    assert "Traceback" not in m.log_text(), m.log_tail(40)
