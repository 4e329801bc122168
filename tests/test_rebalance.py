"""Rebalance and drain through `gffs-admin`, on real stores with several local backends.

Each test fills a store through a real mount, changes the placement in the
config, and checks three things after every run: every file reads back
byte-identical, every backend holds exactly the objects the index records
(nothing lost, nothing stray), and a second run moves nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gffs.index import ChunkMap, Index
from tests.mountutil import Mount

BACKENDS = ("a", "b", "c")


def write_config(root: Path, placement: str, extra_backends: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "gffs.toml"
    tables = "".join(f'[backends.{n}]\ntype = "local"\npath = "{root / "backends" / n}"\n\n'
                     for n in BACKENDS) + extra_backends
    path.write_text(f"[store]\nanalyze_images = false\n\n{tables}[placement]\n{placement}\n")
    return path


def admin(m: Mount, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gffs.cli.admin", "--config", str(m.config),
                           "--data-dir", str(m.data_dir), *args],
                          capture_output=True, text=True, timeout=timeout)


def admin_json(m: Mount, *args: str, expect: int = 0) -> dict:
    res = admin(m, *args, "--json")
    assert res.returncode == expect, res.stderr + res.stdout
    return json.loads(res.stdout)


def stored_objects(root: Path, name: str) -> set[str]:
    base = root / "backends" / name / "chunks"
    return {p.name for p in base.rglob("*") if p.is_file() and len(p.name) == 64}


def recorded(m: Mount) -> dict[str, set[str]]:
    index = Index(m.data_dir / "index", readonly=True)
    try:
        out: dict[str, set[str]] = {n: set() for n in BACKENDS}
        with index.read() as txn:
            for digest, rec in ChunkMap(index).all_chunks(txn):
                for loc in rec.locations:
                    out.setdefault(loc.backend, set()).add(digest.hex())
        return out
    finally:
        index.close()


def assert_consistent(m: Mount) -> dict[str, set[str]]:
    """Every backend holds exactly what the index says it holds."""
    rec = recorded(m)
    for name in BACKENDS:
        assert stored_objects(m.root, name) == rec[name], name
    return rec


def populate(m: Mount, n: int = 24, seed: int = 7) -> dict[str, str]:
    rnd = random.Random(seed)
    files = {}
    for flow in ("landscapes", "portraits"):
        (m.path / flow).mkdir()
    for i in range(n):
        data = rnd.randbytes(rnd.randint(20_000, 2_500_000))
        rel = f"{('landscapes', 'portraits')[i % 2]}/img{i:03d}.jpg"
        (m.path / rel).write_bytes(data)
        files[rel] = hashlib.sha256(data).hexdigest()
    return files


def assert_files(m: Mount, files: dict[str, str]) -> None:
    for rel, digest in files.items():
        assert hashlib.sha256((m.path / rel).read_bytes()).hexdigest() == digest, rel


@pytest.fixture
def store(mount_factory, tmp_path):
    """A store filled while only backend a was in the placement; unmounted."""
    cfg = write_config(tmp_path / "m", 'copies = 1\nbackends = ["a"]')
    m = mount_factory(config=cfg)
    files = populate(m)
    m.unmount()
    assert not stored_objects(m.root, "b")
    return m, files


def test_weights_change_moves_only_what_must_move_and_second_run_nothing(store):
    m, files = store
    before = recorded(m)["a"]
    write_config(m.root, 'copies = 1\nbackends = ["a", "b"]')
    plan = admin_json(m, "rebalance", "--dry-run")
    assert plan["dry_run"] and 0 < plan["chunks_to_move"] < len(before)
    assert set(plan["plan"]) == {"a → b", "a → (deleted)"}
    assert recorded(m)["a"] == before and not stored_objects(m.root, "b")  # dry run: no change
    done = admin_json(m, "rebalance")
    assert done["chunks"] == plan["chunks_to_move"] and done["copies_removed"] == done["chunks"]
    rec = assert_consistent(m)
    assert rec["a"] | rec["b"] == before and not rec["a"] & rec["b"]
    # rendezvous hashing: a chunk moves only if b now outranks a for it
    assert len(rec["b"]) == plan["chunks_to_move"]
    again = admin_json(m, "rebalance")
    assert again["chunks_to_move"] == 0 and again["chunks"] == 0
    m.mount()
    assert_files(m, files)


def test_copies_up_then_down_trims_extra_copies(store):
    m, files = store
    write_config(m.root, 'copies = 2\nbackends = ["a", "b", "c"]')
    admin_json(m, "rebalance")
    rec = assert_consistent(m)
    assert all(sum(d in rec[n] for n in BACKENDS) == 2 for d in rec["a"] | rec["b"] | rec["c"])
    write_config(m.root, 'copies = 1\nbackends = ["a", "b", "c"]')
    out = admin_json(m, "rebalance")
    assert out["copies_added"] == 0 and out["copies_removed"] > 0
    rec = assert_consistent(m)
    assert all(sum(d in rec[n] for n in BACKENDS) == 1 for d in rec["a"] | rec["b"] | rec["c"])
    m.mount()
    assert_files(m, files)


def test_rebalance_while_mounted_keeps_writes_working(store):
    m, files = store
    write_config(m.root, 'copies = 1\nbackends = ["b", "c"]')
    m.mount()
    written: dict[str, str] = {}
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(30):
                data = os.urandom(300_000 + i)
                (m.path / "landscapes" / f"new{i}.jpg").write_bytes(data)
                written[f"landscapes/new{i}.jpg"] = hashlib.sha256(data).hexdigest()
        except BaseException as exc:  # reported below
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    out = admin_json(m, "rebalance")  # through the daemon's control socket
    t.join()
    assert not errors
    assert out["copies_removed"] == out["chunks"] > 0
    assert_files(m, {**files, **written})
    again = admin_json(m, "rebalance")
    assert again["chunks_to_move"] == 0
    m.unmount()
    rec = assert_consistent(m)
    assert not rec["a"]


def test_drain_empties_a_backend_which_can_then_leave_the_config(store):
    m, files = store
    write_config(m.root, 'copies = 1\nbackends = ["a", "b"]')
    admin_json(m, "rebalance")
    out = admin_json(m, "backend", "drain", "a")
    assert out["drained"] and out["copies_left"] == 0
    rec = assert_consistent(m)
    assert not rec["a"] and rec["b"]
    status = admin_json(m, "status")
    assert status["backends"]["a"]["draining"] and status["backends"]["a"]["chunks"] == 0
    # new writes avoid a draining backend
    m.mount()
    (m.path / "landscapes" / "after.jpg").write_bytes(os.urandom(500_000))
    m.unmount()
    assert not assert_consistent(m)["a"]
    write_config(m.root, 'copies = 1\nbackends = ["b"]')
    m.mount()
    assert_files(m, files)


def test_drain_refused_when_copies_could_not_be_kept(store):
    m, _files = store
    write_config(m.root, 'copies = 2\nbackends = ["a", "b"]')
    admin_json(m, "rebalance")
    before = recorded(m)
    res = admin(m, "backend", "drain", "a")
    assert res.returncode == 4 and "needs 2 trusted backends" in res.stderr
    assert recorded(m) == before
    assert not admin_json(m, "status")["backends"]["a"]["draining"]


def test_size_limit_stops_with_exit_3_and_rerun_continues(store):
    m, files = store
    write_config(m.root, 'copies = 1\nbackends = ["c"]')
    first = admin_json(m, "rebalance", "--size-limit", "1M", expect=3)
    assert first["stopped"] == "size-limit" and 0 < first["chunks"] < first["chunks_to_move"]
    assert_consistent(m)
    second = admin_json(m, "rebalance")
    assert second["chunks_to_move"] == first["chunks_to_move"] - first["chunks"]
    assert second["stopped"] is None
    rec = assert_consistent(m)
    assert not rec["a"] and not rec["b"] and rec["c"]
    m.mount()
    assert_files(m, files)


def test_unknown_flow_and_bad_limits_are_one_line_errors(store):
    m, _files = store
    res = admin(m, "rebalance", "--flow", "nope")
    assert res.returncode == 4 and "no flow named 'nope'" in res.stderr
    res = admin(m, "rebalance", "--size-limit", "lots")
    assert res.returncode == 2 and "not a size" in res.stderr


def test_flow_option_moves_only_that_flow(store):
    m, files = store
    write_config(m.root, 'copies = 1\nbackends = ["a"]\n\n[placement.flows.portraits]\n'
                 'copies = 1\nbackends = ["c"]')
    out = admin_json(m, "rebalance", "--flow", "landscapes")
    assert out["chunks_to_move"] == 0
    out = admin_json(m, "rebalance", "--flow", "portraits")
    assert out["chunks"] > 0
    rec = assert_consistent(m)
    m.mount()
    assert_files(m, files)
    assert rec["c"] and rec["a"]


@pytest.mark.parametrize("step", ["put-before", "put-after", "verify", "delete-before",
                                  "delete-after"])
def test_kill9_at_every_step_of_a_move_loses_nothing(store, step):
    """Crash the rebalance (SIGKILL) in the middle of a move; the next run finishes cleanly."""
    m, files = store
    before = recorded(m)["a"]
    write_config(m.root, 'copies = 1\nbackends = ["b"]')
    res = subprocess.run([sys.executable, "-m", "tests.rebalance_crasher", step, "3", "--",
                          "--config", str(m.config), "--data-dir", str(m.data_dir), "rebalance"],
                         capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent)
    assert res.returncode == -9, res.stderr
    # nothing lost: every chunk still has a recorded copy that is really there
    rec = recorded(m)
    assert rec["a"] | rec["b"] == before
    for name in ("a", "b"):
        assert rec[name] <= stored_objects(m.root, name)
    out = admin_json(m, "rebalance")
    assert sum(out["settled"].values()) >= 1  # the interrupted step left its intent row
    rec = assert_consistent(m)  # stray copies and half-deleted ones are gone
    assert not rec["a"] and rec["b"] == before
    assert admin_json(m, "rebalance")["chunks_to_move"] == 0
    m.mount()
    assert_files(m, files)


def test_rebalance_to_s3_and_back(store, moto_server, s3_buckets, s3_admin):
    """Real S3 (moto server): move everything to two buckets, then drain S3 back to disk."""
    m, files = store
    buckets = s3_buckets(2)
    s3 = (f'[backends.s3]\ntype = "s3"\nbuckets = {json.dumps(buckets)}\n'
          f'endpoint_url = "{moto_server}"\nregion = "us-east-1"\n'
          'encrypt = false\n\n')   # the test compares S3 object names with chunk keys
    before = recorded(m)["a"]

    def in_s3() -> set[str]:
        keys = set()
        for bucket in buckets:
            for page in s3_admin.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                keys |= {o["Key"].rsplit("/", 1)[-1] for o in page.get("Contents", [])}
        return {k for k in keys if len(k) == 64}

    write_config(m.root, 'copies = 1\nbackends = ["s3"]', s3)
    out = admin_json(m, "rebalance")
    assert out["chunks"] == len(before)
    rec = recorded(m)
    assert rec["s3"] == before == in_s3() and not stored_objects(m.root, "a")
    write_config(m.root, 'copies = 1\nbackends = ["b", "s3"]', s3)
    admin_json(m, "rebalance")
    out = admin_json(m, "backend", "drain", "s3")
    assert out["drained"]
    assert not in_s3() and recorded(m)["b"] == before == stored_objects(m.root, "b")
    m.mount()
    assert_files(m, files)


def test_ctrl_c_stops_cleanly_and_a_rerun_continues(store):
    m, files = store
    write_config(m.root, 'copies = 1\nbackends = ["b"]')
    proc = subprocess.Popen([sys.executable, "-m", "tests.rebalance_crasher", "slow", "0", "--",
                             "--config", str(m.config), "--data-dir", str(m.data_dir),
                             "rebalance"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=Path(__file__).parent.parent)
    deadline = time.monotonic() + 60   # interrupt once the run is under way (a loaded machine
    while not recorded(m)["b"] and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)               # may need seconds to get there)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted; what was done is kept" in err
    moved = recorded(m)["b"]
    assert moved and recorded(m)["a"]  # stopped part way
    out = admin_json(m, "rebalance")
    assert out["chunks"] <= out["chunks_to_move"] and not out["failures"]
    rec = assert_consistent(m)
    assert not rec["a"]
    m.mount()
    assert_files(m, files)


def test_flow_option_keeps_copies_another_flow_sharing_the_chunk_wants(mount_factory, tmp_path):
    """One image in two flows with different policies: rebalancing one flow must not
    delete the copy the other flow's policy wants (the chunk is deduplicated)."""
    placement = ('copies = 1\nbackends = ["a"]\n\n[placement.flows.landscapes]\ncopies = 1\n'
                 'backends = ["a"]\n\n[placement.flows.portraits]\ncopies = 1\nbackends = ["b"]')
    m = mount_factory(config=write_config(tmp_path / "m", placement))
    data = random.Random(3).randbytes(300_000)
    for flow in ("landscapes", "portraits"):
        (m.path / flow).mkdir()
        (m.path / flow / "same.jpg").write_bytes(data)
    m.unmount()
    admin_json(m, "rebalance")      # the written once chunk gets the copy portraits wants
    rec = assert_consistent(m)
    shared = rec["a"] & rec["b"]
    assert shared, "the deduplicated chunk should be on both flows' backends"
    out = admin_json(m, "rebalance", "--flow", "landscapes")
    assert out["chunks_to_move"] == 0, out
    out = admin_json(m, "rebalance", "--flow", "portraits")
    assert out["chunks_to_move"] == 0, out
    rec = assert_consistent(m)
    assert shared <= rec["a"] and shared <= rec["b"], "a flow lost the copy its policy wants"
    m.mount()
    for flow in ("landscapes", "portraits"):
        assert (m.path / flow / "same.jpg").read_bytes() == data
