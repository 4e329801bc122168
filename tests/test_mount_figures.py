"""st_blocks and du on a real mount: holes cost nothing, stored blocks count once per file."""

from __future__ import annotations

import os
import subprocess

import pytest

from mountutil import FUSE_AVAILABLE, SKIP_REASON

pytestmark = pytest.mark.skipif(not FUSE_AVAILABLE, reason=SKIP_REASON)


def du_bytes(path) -> int:
    out = subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return int(out.split()[0])


def test_sparse_files_report_what_is_stored(mounted):
    d = mounted.path / "f"
    d.mkdir()
    subprocess.run(["truncate", "-s", "10G", str(d / "sparse")], check=True)
    far = d / "far"
    with open(far, "wb") as f:
        f.seek(1 << 40)
        f.write(os.urandom(4096))
    photo = os.urandom(3 << 20)          # incompressible: costs its size
    (d / "photo.jpg").write_bytes(photo)
    os.link(d / "photo.jpg", d / "same.jpg")
    (d / "copy.jpg").write_bytes(photo)  # deduplicated, counted in each file (as reflinks)
    st = os.stat(d / "sparse")
    assert st.st_size == 10 << 30 and st.st_blocks == 0
    assert du_bytes(d / "sparse") == 0
    st = os.stat(far)
    assert st.st_size == (1 << 40) + 4096
    assert 4096 <= st.st_blocks * 512 <= 64 << 10     # one mostly-zero block, compressed
    assert os.stat(d / "photo.jpg").st_blocks * 512 == len(photo)
    assert os.stat(d / "copy.jpg").st_blocks * 512 == len(photo)
    assert du_bytes(d) < 8 << 20                      # not 10 GiB + 1 TiB
    mounted.remount()
    assert os.stat(d / "sparse").st_blocks == 0
    assert os.stat(d / "copy.jpg").st_blocks * 512 == len(photo)
    # shrink into the photo, then punch it back to a hole by truncating to zero
    os.truncate(d / "copy.jpg", (1 << 20) + 10)
    assert os.stat(d / "copy.jpg").st_blocks == -(-((1 << 20) + 10) // 512)
    os.truncate(d / "copy.jpg", 0)
    assert os.stat(d / "copy.jpg").st_blocks == 0
    assert os.stat(d / "photo.jpg").st_blocks * 512 == len(photo)
