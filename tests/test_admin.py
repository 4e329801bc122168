"""gffs-admin on a real store: status figures, gc of crash leftovers (mounted and not)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from gffs_backends.local import chunk_path


def admin(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gffs.cli.admin", *args], capture_output=True,
                          text=True, timeout=120)


def test_status_reports_dedup(mounted):
    data = os.urandom(600_000)
    for flow in ("a", "b", "c"):
        (mounted.path / flow).mkdir()
        (mounted.path / flow / "img.jpg").write_bytes(data)
    res = admin("--data-dir", str(mounted.data_dir), "status", "--json")
    assert res.returncode == 0, res.stderr
    s = json.loads(res.stdout)
    assert sorted(s["flows"]) == ["a", "b", "c"]
    assert s["chunks"] == 1 and s["logical_bytes"] == len(data)
    assert s["mounted"] and "mounted at" in s["mounted"]
    human = admin("--data-dir", str(mounted.data_dir), "status")
    assert "chunks     1" in human.stdout


@pytest.mark.parametrize("while_mounted", [True, False], ids=["mounted", "unmounted"])
def test_gc_removes_crash_leftovers_only_when_old(mounted, while_mounted):
    """The same gc, through the daemon's control socket or on the store directly."""
    (mounted.path / "f").mkdir()
    keep = os.urandom(100_000)
    (mounted.path / "f" / "keep.jpg").write_bytes(keep)
    if not while_mounted:
        mounted.unmount()
    chunks = mounted.data_dir / "local" / "chunks"
    leftover = chunk_path(chunks, "abcd" + "0" * 60)
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"\x00orphan")
    tmp = leftover.with_name(leftover.name + ".123.tmp")
    tmp.write_bytes(b"half")
    res = admin("--data-dir", str(mounted.data_dir), "gc", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["unreferenced_deleted"] == 0  # too young: may be in flight
    old = time.time() - 7200
    os.utime(leftover, (old, old))
    os.utime(tmp, (old, old))
    for path in chunks.rglob("*"):  # the real chunk is old too: it must survive
        os.utime(path, (old, old))
    res = admin("--data-dir", str(mounted.data_dir), "gc", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["unreferenced_deleted"] == 1
    assert not leftover.exists() and not tmp.exists()
    if not while_mounted:
        mounted.mount()
    assert (mounted.path / "f" / "keep.jpg").read_bytes() == keep


def test_status_of_missing_store_is_one_line(tmp_path):
    res = admin("--data-dir", str(tmp_path / "nothing"), "status")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "no gffs store" in res.stderr


def test_status_counts_analysed_images(mounted):
    import io
    from PIL import Image
    (mounted.path / "f").mkdir()
    out = io.BytesIO()
    Image.new("RGB", (9, 9), (1, 2, 3)).save(out, "PNG")
    (mounted.path / "f" / "a.png").write_bytes(out.getvalue())
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        s = json.loads(admin("--data-dir", str(mounted.data_dir), "status", "--json").stdout)
        if s["images_analysed"] == 1 and s["images_waiting"] == 0:
            break
        time.sleep(0.2)
    assert (s["images_analysed"], s["images_waiting"]) == (1, 0)
