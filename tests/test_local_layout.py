"""The local backend's chunk layout: 256 directories, and stores of the old two-level layout.

A fresh store keeps chunks in ``chunks/ab/<key>`` (so a put makes a directory at
most 256 times in the store's life). A store made before keeps its chunks in
``chunks/ab/cd/<key>``: every one of them must still be read, listed, checked and
deleted, with new chunks going to the new layout beside them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from fsck_util import fsck, kinds, make_config, populate, read_back
from gffs_backends.base import ObjectMissing
from gffs_backends.local import LAYOUT_FILE, LocalBackend

FILES = {f"flow/f{i}.bin": os.urandom(3000 + i) for i in range(24)}


def to_old_layout(root: Path) -> int:
    """Rewrite a local backend directory as the two-level layout made it (no marker)."""
    moved = 0
    for path in [p for p in (root / "chunks").rglob("*") if p.is_file()]:
        key = path.name
        old = root / "chunks" / key[:2] / key[2:4] / key
        old.parent.mkdir(parents=True, exist_ok=True)
        path.rename(old)
        moved += 1
    (root / LAYOUT_FILE).unlink()
    return moved


def depths(objects: Path) -> set[int]:
    return {len(p.relative_to(objects).parts) for p in objects.rglob("*") if p.is_file()}


def test_a_fresh_store_puts_chunks_one_directory_deep(tmp_path):
    b = LocalBackend("a", tmp_path / "disk")
    keys = [f"{i:02x}" * 32 for i in range(40)]
    for key in keys:
        b._put(key, key.encode())
    assert depths(b.objects) == {2}
    assert not b.legacy and (tmp_path / "disk" / LAYOUT_FILE).exists()
    assert b._get(keys[3]) == keys[3].encode()
    with pytest.raises(ObjectMissing):
        b._get("ee" * 32)
    assert LocalBackend("a", tmp_path / "disk").legacy is False   # reopened: still marked
    (tmp_path / "empty" / "chunks").mkdir(parents=True)     # made by an older version, empty
    assert LocalBackend("e", tmp_path / "empty").legacy is False


def test_old_layout_chunks_are_found_listed_and_deleted(tmp_path):
    root = tmp_path / "disk"
    b = LocalBackend("a", root)
    keys = [f"{i:02x}" * 32 for i in range(1, 9)]
    for key in keys:
        b._put(key, b"old " + key.encode())
    assert to_old_layout(root) == len(keys)

    b = LocalBackend("a", root)
    assert b.legacy
    assert depths(b.objects) == {3}
    new = "ab" * 32
    b._put(new, b"new")
    assert all(b._get(k) == b"old " + k.encode() for k in keys)
    assert b._stat(keys[0]).size == len(b"old " + keys[0].encode())
    listed = trio.run(lambda: _collect(b))
    assert sorted(listed) == sorted(keys + [new])
    b._delete(keys[0])
    assert b._stat(keys[0]) is None
    with pytest.raises(ObjectMissing):
        b._get(keys[0])
    # a re-put of an old chunk lands in the new layout and is listed once
    b._put(keys[1], b"old " + keys[1].encode())
    assert sorted(trio.run(lambda: _collect(b))).count(keys[1]) == 1
    b._delete(keys[1])
    assert b._stat(keys[1]) is None and b.chunk_file(keys[1]) is None


async def _collect(b: LocalBackend) -> list[str]:
    return [info.key async for info in b.list()]


def test_a_store_made_in_the_old_layout_reads_every_file_and_passes_fsck(tmp_path):
    cfg = make_config(tmp_path)
    populate(cfg, FILES)
    for name in ("a", "b"):
        assert to_old_layout(tmp_path / name) > 0
    assert read_back(cfg, list(FILES)) == FILES
    found = {k: v for k, v in kinds(fsck(cfg)).items() if v[0]}
    assert found == {}
    more = {f"later/new{i}.bin": os.urandom(5000 + i) for i in range(5)}
    populate(cfg, more)
    assert read_back(cfg, list(FILES) + list(more)) == FILES | more


def test_a_long_listing_lets_other_tasks_run_between_its_objects(tmp_path):
    """fsck and gc consume list() on the daemon's trio thread: other tasks (FUSE
    requests) must get turns while it goes on, not only before and after it. A
    listing read in one go and yielded without checkpoints gives them none."""
    b = LocalBackend("a", tmp_path / "disk")
    keys = [f"{i:04x}" * 16 for i in range(3 * 256 + 7)]
    for key in keys:
        b._put(key, b"x")
    consumed: list[str] = []
    turns: list[int] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            async def other() -> None:
                while True:
                    turns.append(len(consumed))
                    await trio.sleep(0)
            nursery.start_soon(other)
            await trio.sleep(0)
            async for info in b.list():
                consumed.append(info.key)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert sorted(consumed) == sorted(keys)
    inside = {n for n in turns if 0 < n < len(keys)}
    assert len(inside) >= 2, f"no other task ran during the listing: {sorted(set(turns))}"
