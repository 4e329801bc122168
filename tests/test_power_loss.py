"""Power loss under a gffs mount: fsync()ed files survive it, the index never dangles.

The store's data_dir (index + the default local backend) lives on lazyfs
(tests/lazyfs.py), which keeps every written-but-unsynced byte in memory and loses it at
the cut. A writer keeps creating, overwriting, fsyncing, renaming and deleting files while
the cut comes at a seeded random moment; then the daemon is killed, lazyfs restarted on the
same disk, gffs mounted again (no repair step) and checked.

What must hold after the cut, per name (every content written is unique random bytes):
- ``history[name]`` lists, in order, every state the name was put into by an operation
  that *started* before the cut: absent, empty (created or truncated, not yet committed),
  or a content once all of its bytes were written (its close/fsync may have committed it);
- ``floor[name]`` is the position in that list of the state an ``os.fsync`` on the file
  returned for. The name must now be in one of the states ``history[name][floor:]``:
  exactly the fsynced content if nothing touched the name after the fsync, else that or a
  later one (an overwrite, or absent after a rename away or a delete);
- every file present reads without error (EIO would be a chunk the index references whose
  bytes never reached the disk) and ``gffs-admin fsck --verify-data`` finds nothing but
  unreferenced chunk files (which gc may delete).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import lmdb
import pytest

from fsck_util import fsck
from gffs.config import load_config
from lazyfs import LazyFS
from mountutil import FUSE_AVAILABLE, SKIP_REASON, Mount

pytestmark = [pytest.mark.mount, pytest.mark.skipif(not FUSE_AVAILABLE, reason=SKIP_REASON)]

KIB = 1 << 10
ABSENT = None
HARMLESS = {"object_unrecorded", "repair_pending"}  # unreferenced leftovers, info


class Stack:
    """lazyfs on ``root/disk`` mounted at ``root/data`` (the store), gffs at ``root/mnt``."""

    def __init__(self, root: Path) -> None:
        self.config = root / "gffs.toml"  # the log outside the store: it survives the cut
        self.config.write_text(f'[store]\ndata_dir = "{root / "data"}"\nanalyze_images = false\n'
                               f'log_file = "{root / "gffs.log"}"\n')
        self.lazy = LazyFS(root / "disk", root / "data")
        self.gffs = Mount(root, self.config)

    def power_cut(self) -> None:
        """The daemon dies, then every unsynced byte below it (one instant for the disk)."""
        self.gffs.kill9()
        self.lazy.cut()

    def power_on(self) -> None:
        self.lazy.start()
        self.gffs.mount()

    def close(self) -> None:
        try:
            self.gffs.cleanup()
        except OSError:  # the store is on a dead lazyfs
            pass
        self.lazy.stop()


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path)
    try:
        s.power_on()
        yield s
    finally:
        s.close()


@pytest.fixture
def lazy(tmp_path):
    """lazyfs alone: ``tmp_path/disk`` mounted at ``tmp_path/mnt``."""
    fs = LazyFS(tmp_path / "disk", tmp_path / "mnt")
    try:
        yield fs.start()
    finally:
        fs.stop()


class Model:
    """What each name may hold after a cut (see the module docstring), and which fsynced
    contents were renamed since: those must be under one of the names they went through."""

    def __init__(self) -> None:
        self.history: dict[str, list[bytes | None]] = {}
        self.floor: dict[str, int] = {}
        self.chains: dict[str, tuple[bytes, list[str]]] = {}  # last name -> (content, names)
        self.serial = 0

    def fresh(self) -> str:
        self.serial += 1
        return f"f{self.serial:05d}"

    def set(self, name: str, state: bytes | None) -> None:
        self.history.setdefault(name, [ABSENT]).append(state)
        self.chains.pop(name, None)  # an overwrite or delete may replace a renamed content

    def synced(self, name: str, at: int) -> None:
        self.floor[name] = at
        self.chains[name] = (self.history[name][at], [name])

    def renamed(self, old: str, new: str) -> None:
        self.history[new] = [ABSENT, self.history[old][-1]]
        self.history[old].append(ABSENT)
        if old in self.chains:
            content, names = self.chains.pop(old)
            self.chains[new] = (content, names + [new])

    def check(self, flow: Path) -> list[str]:
        """Problems of the recovered *flow*; then the model restarts from what is there."""
        problems, found = [], {}
        present = set(os.listdir(flow))
        problems += [f"{n}: present but never created" for n in sorted(present - set(self.history))]
        for name in sorted(self.history):
            fsynced = " (fsynced)" if name in self.floor else ""
            try:
                found[name] = (flow / name).read_bytes() if name in present else ABSENT
            except OSError as exc:
                problems.append(f"{name}: read fails: {exc.strerror}{fsynced}")
                os.unlink(flow / name)
                found[name] = ABSENT
                continue
            allowed = self.history[name][self.floor.get(name, 0):]
            if not any(found[name] == a for a in allowed):
                what = "absent" if found[name] is ABSENT else f"{len(found[name])} other bytes"
                want = ["absent" if a is ABSENT else f"{len(a)} bytes" for a in allowed]
                problems.append(f"{name}: {what}, allowed {want}{fsynced}")
        for content, names in self.chains.values():
            if len(names) > 1 and not any(found.get(n) == content for n in names):
                problems.append(f"fsynced content renamed along {names} is under none of them")
        self.history = {n: [state] for n, state in found.items() if state is not ABSENT}
        self.floor.clear()
        self.chains.clear()
        return problems


class Writer(threading.Thread):
    """Random file operations in *flow*; the model is updated before each call (the cut may
    come during it) and fsyncs are recorded when they return."""

    def __init__(self, flow: Path, seed: int, model: Model) -> None:
        super().__init__(daemon=True)
        self.flow, self.rng, self.model = flow, random.Random(seed), model
        self.stop = threading.Event()
        self.fsyncs = 0
        self.error: BaseException | None = None

    def fsync(self, name: str, fd: int) -> None:
        at = len(self.model.history[name]) - 1
        os.fsync(fd)
        self.model.synced(name, at)
        self.fsyncs += 1

    def step(self) -> None:
        m = self.model
        live = [n for n, h in m.history.items() if h[-1] is not ABSENT]
        op = self.rng.choice(["new"] * 5 + ["overwrite", "fsync", "rename", "delete"]
                             if live else ["new"])
        name = self.rng.choice(live) if op != "new" else m.fresh()
        path = self.flow / name
        if op in ("new", "overwrite"):
            m.set(name, b"")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                data = self.rng.randbytes(int(KIB * (3 * KIB) ** self.rng.random()))
                for off in range(0, len(data), 256 * KIB):
                    os.write(fd, data[off:off + 256 * KIB])
                m.history[name].append(data)
                if self.rng.random() < 0.3:
                    self.fsync(name, fd)
            finally:
                os.close(fd)
        elif op == "fsync":
            fd = os.open(path, os.O_RDONLY)
            try:
                self.fsync(name, fd)
            finally:
                os.close(fd)
        elif op == "rename":
            new = m.fresh()
            m.renamed(name, new)
            os.rename(path, self.flow / new)
        else:
            m.set(name, ABSENT)
            os.unlink(path)

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.step()
        except OSError:
            pass  # the power went
        except BaseException as exc:  # pragma: no cover - reported by the test
            self.error = exc


def check_fsck(config: Path, data_dir: Path) -> list[str]:
    result = fsck(load_config(config, str(data_dir)), verify_data=True)
    return [f"fsck {k}: {v['found']}" for k, v in result["summary"].items()
            if v["found"] and k not in HARMLESS]


def durable_flow(stack: Stack, name: str) -> Path:
    """A new flow, fsynced: it exists after every cut that follows."""
    flow = stack.gffs.path / name
    flow.mkdir()
    dfd = os.open(flow, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)
    return flow


def test_power_cut_while_writing_keeps_fsynced_files(stack):
    flow = durable_flow(stack, "pl")
    rng = random.Random(20240611)
    model = Model()
    problems: list[str] = []
    for round_ in range(5):
        w = Writer(flow, rng.randrange(1 << 30), model)
        w.start()
        time.sleep(rng.uniform(0.5, 4.0))  # any moment is a valid test; none is needed
        stack.power_cut()
        w.stop.set()
        w.join(60)
        assert not w.is_alive(), "writer hung after the power cut"
        assert w.error is None, repr(w.error)
        fsynced = len(model.floor)
        stack.power_on()  # no repair step: it just mounts
        assert flow.is_dir(), "the flow (fsynced) is gone after the power cut"
        found = check_fsck(stack.config, stack.gffs.data_dir) + model.check(flow)
        print(f"round {round_}: {model.serial} names so far, {w.fsyncs} fsyncs, "
              f"{fsynced} fsynced names; {len(found)} problems")
        problems += [f"round {round_}: {p}" for p in found]
    assert not problems, f"{len(problems)} problems after power cuts:\n" + "\n".join(problems[:60])


def test_power_cut_just_after_close(stack):
    """The plainest case, twice: files closed (not fsynced), one more index commit, cut.
    A closed file may be lost, but the index must not point at chunks that were lost."""
    flow = durable_flow(stack, "close")
    rng = random.Random(5)
    model = Model()
    problems: list[str] = []
    for cycle in range(2):
        for _ in range(5):
            name = model.fresh()
            model.set(name, b"")
            data = rng.randbytes(rng.randint(100 * KIB, 2048 * KIB))
            model.history[name].append(data)
            (flow / name).write_bytes(data)
        model.set(f"marker{cycle}", b"")
        (flow / f"marker{cycle}").touch()  # a later commit makes the closes' commits durable
        stack.power_cut()
        stack.power_on()
        problems += [f"cycle {cycle}: {p}" for p in
                     check_fsck(stack.config, stack.gffs.data_dir) + model.check(flow)]
    assert not problems, "\n".join(problems)


def test_lazyfs_loses_exactly_the_unsynced_data(lazy, tmp_path):
    """The harness itself: pending data is visible before the cut and gone after it."""
    mnt, disk = tmp_path / "mnt", tmp_path / "disk"
    with open(mnt / "synced", "wb") as f:
        f.write(b"A" * 10000)
        f.flush()
        os.fsync(f.fileno())
        f.seek(5000)
        f.write(b"B" * 10000)  # after the fsync: lost
    with open(mnt / "closed", "wb") as f:
        f.write(b"C" * 3000)  # closed, never fsynced
    os.rename(mnt / "closed", mnt / "renamed")  # metadata: applied at once
    with open(mnt / "cut", "wb") as f:
        f.write(b"D" * 9000)
        os.fsync(f.fileno())
    os.truncate(mnt / "cut", 4100)  # truncate is metadata too
    assert (mnt / "synced").read_bytes() == b"A" * 5000 + b"B" * 10000
    assert (mnt / "renamed").read_bytes() == b"C" * 3000
    assert (disk / "renamed").stat().st_size == 0 and (mnt / "renamed").stat().st_size == 3000
    fd = os.open(mnt / "synced", os.O_RDWR)
    lazy.cut()
    with pytest.raises(OSError):  # every request after the cut fails
        os.fsync(fd)
    with contextlib.suppress(OSError):  # the flush at close fails too
        os.close(fd)
    assert os.listdir(mnt) == []  # the dead mount is gone
    lazy.start()
    assert (mnt / "synced").read_bytes() == b"A" * 10000
    assert (mnt / "renamed").read_bytes() == b""
    assert not (mnt / "closed").exists()
    assert (mnt / "cut").read_bytes() == b"D" * 4100
    (mnt / "kept").write_bytes(b"E" * 5000)
    lazy.stop()  # a clean unmount writes everything
    assert (disk / "kept").read_bytes() == b"E" * 5000


def test_lmdb_on_lazyfs(lazy, tmp_path):
    """LMDB's mmap reads see its pwrites, its lock file's shared writable map and flock
    work; synced commits survive a cut, unsynced ones do not."""
    env_dir = tmp_path / "mnt" / "env"
    env = lmdb.open(str(env_dir), map_size=1 << 28)  # sync + metasync: durable commits
    for i in range(100):
        with env.begin(write=True) as txn:
            txn.put(b"durable%03d" % i, os.urandom(3000))
    env.close()
    env = lmdb.open(str(env_dir), map_size=1 << 28, sync=False)  # commits never fsynced
    with env.begin(write=True) as txn:
        txn.put(b"volatile", b"x" * 5000)
    with env.begin() as txn:
        assert txn.get(b"volatile") == b"x" * 5000 and txn.stat()["entries"] == 101
    reader = [sys.executable, "-c", "import lmdb,sys; e = lmdb.open(sys.argv[1], readonly=True);"
              "print(e.begin().stat()['entries'])", str(env_dir)]
    assert subprocess.run(reader, capture_output=True, text=True, check=True).stdout == "101\n"
    env.close()  # closing syncs nothing
    fd = os.open(env_dir / "x.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fd2 = os.open(env_dir / "x.lock", os.O_RDWR)
    with pytest.raises(BlockingIOError):
        fcntl.flock(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB)
    lazy.cut()
    for f in (fd, fd2):
        with contextlib.suppress(OSError):
            os.close(f)
    lazy.start()
    env = lmdb.open(str(env_dir), map_size=1 << 28)
    with env.begin() as txn:
        assert txn.get(b"volatile") is None and txn.stat()["entries"] == 100
    env.close()
