"""Model-based test: random POSIX operation sequences on a real mount vs. a plain directory.

Every operation runs on both sides: MNT/flow (gffs) and TMP/flow (the local disk,
the model). An OSError on one side must be the same errno on the other; after
every step the two trees must be identical (names, types, modes, nlink, sizes,
contents, symlink targets, user xattrs).
"""

from __future__ import annotations

import os
import random
import shutil
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule, run_state_machine_as_test)

from mountutil import FUSE_AVAILABLE, SKIP_REASON, Mount

pytestmark = pytest.mark.skipif(not FUSE_AVAILABLE, reason=SKIP_REASON)

BS = 1 << 20
NAMES = ["a", "b", "c", "d", "e", "f"]
XNAMES = ["user.x", "user.y", "user.gffs.comment"]
MAX_DEPTH = 3

# mostly small; sometimes exactly around / across the 1 MiB block boundary
SIZES = st.one_of(
    st.integers(0, 3000),
    st.integers(0, 3000),
    st.integers(0, 3000),
    st.sampled_from([0, 1, BS - 1, BS, BS + 1, 2 * BS + 4321, BS * 5 // 2]),
)
OFFSETS = st.one_of(
    st.integers(0, 5000),
    st.sampled_from([BS - 2, BS, BS + 7, 2 * BS - 100, 2 * BS + 4096, 3 * BS + 1]),
)


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture(scope="module")
def shared_mount(tmp_path_factory):
    root = tmp_path_factory.mktemp("stateful")
    m = Mount(root)
    m.mount()
    model = tmp_path_factory.mktemp("model")
    try:
        yield m, model
    finally:
        m.cleanup()


def _outcome(fn, root: Path):
    try:
        return ("ok", fn(root))
    except OSError as exc:
        return ("err", exc.errno)


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything that must agree between the two sides, keyed by relative path."""
    out: dict[str, tuple] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st_ = os.lstat(p)
            kind = stat.S_IFMT(st_.st_mode)
            xattrs = ()
            if not stat.S_ISLNK(st_.st_mode):
                xattrs = tuple(sorted((n, os.getxattr(p, n, follow_symlinks=False))
                                      for n in os.listxattr(p, follow_symlinks=False)
                                      # user.gf.image.* are facts gffs derives itself
                                      if n.startswith("user.")
                                      and not n.startswith("user.gf.image.")))
            if stat.S_ISDIR(st_.st_mode):
                out[rel] = ("dir", oct(st_.st_mode), st_.st_nlink, xattrs)
            elif stat.S_ISLNK(st_.st_mode):
                out[rel] = ("link", os.readlink(p), st_.st_size)
            else:
                assert stat.S_ISREG(st_.st_mode), (rel, oct(kind))
                data = p.read_bytes()
                assert len(data) == st_.st_size, f"{rel}: stat size {st_.st_size} != read {len(data)}"
                out[rel] = ("file", oct(st_.st_mode), st_.st_nlink, st_.st_size,
                            hash(data), xattrs)
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(dirpath, d))]
    return out


def diff(a: dict, b: dict) -> str:
    lines = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            lines.append(f"  {k}: gffs={a.get(k)!r} model={b.get(k)!r}")
    return "\n".join(lines)


class GffsVsDisk(RuleBasedStateMachine):
    mount: Mount
    model_base: Path

    def __init__(self) -> None:
        super().__init__()
        self.g = self.mount.path / "flow"
        self.p = self.model_base / "flow"
        self.remounted = False
        self.log: list[str] = []
        self.handles: list[tuple[int, int, str]] = []   # (gffs fd, model fd, path)

    # ------------------------------------------------------------------ plumbing
    def teardown(self) -> None:
        self.close_all()

    def close_all(self) -> None:
        while self.handles:
            gfd, pfd, _ = self.handles.pop()
            os.close(pfd)
            os.close(gfd)

    @initialize()
    def reset(self) -> None:
        """Empty both flows, then give them the same small starting tree."""
        for root in (self.g, self.p):
            root.mkdir(exist_ok=True)
            os.chmod(root, 0o755)
            for child in list(root.iterdir()):
                if stat.S_ISDIR(os.lstat(child).st_mode):
                    shutil.rmtree(child)
                else:
                    child.unlink()
            for n in os.listxattr(root):
                if n.startswith("user.") and not n.startswith("user.gf.image."):
                    os.removexattr(root, n)
            (root / "a" / "b").mkdir(parents=True)
            (root / "c").write_bytes(payload(1, 1000))
            (root / "a" / "d").write_bytes(payload(2, BS + 100))
            (root / "a" / "b" / "a").write_bytes(b"")
        self.close_all()
        self.log = ["reset"]

    def both(self, what: str, fn) -> object:
        """Run fn(root) on both sides; errors must match, results too."""
        self.log.append(what)
        model = _outcome(fn, self.p)
        real = _outcome(fn, self.g)
        assert real == model, (f"{what}: gffs -> {real}, model -> {model}\n"
                               f"steps so far: {self.log}")
        return model

    def _tree(self) -> tuple[list[str], list[str]]:
        """(all entries, directories) relative to the flow root, from the model."""
        entries, dirs = [], [""]
        for dirpath, dnames, fnames in os.walk(self.p):
            rel = os.path.relpath(dirpath, self.p)
            rel = "" if rel == "." else rel
            for n in dnames + fnames:
                entries.append(os.path.join(rel, n))
            for n in dnames:
                if not os.path.islink(os.path.join(dirpath, n)):
                    dirs.append(os.path.join(rel, n))
            dnames[:] = [d for d in dnames if not os.path.islink(os.path.join(dirpath, d))]
        return sorted(entries), sorted(dirs)

    def existing(self, data, files_only: bool = False) -> str:
        """Mostly an existing entry (a regular file if *files_only*), sometimes a bad path."""
        entries, _ = self._tree()
        if files_only:
            entries = [e for e in entries if stat.S_ISREG(os.lstat(self.p / e).st_mode)]
        if entries and data.draw(st.integers(0, 9)) > 0:
            return data.draw(st.sampled_from(entries))
        return data.draw(st.sampled_from(["a", "nodir/a", "a/b/c/d"]))

    def anypath(self, data) -> str:
        _, dirs = self._tree()
        d = data.draw(st.sampled_from(dirs + ["nodir"]))
        if d.count(os.sep) >= MAX_DEPTH - 1:
            d = ""
        return os.path.join(d, data.draw(st.sampled_from(NAMES)))

    def target(self, data) -> str:
        """A rename/link destination: an existing entry (overwrite) or a new name."""
        return self.existing(data) if data.draw(st.booleans()) else self.anypath(data)

    # ------------------------------------------------------------------ rules
    @rule(data=st.data(), size=SIZES, seed=st.integers(0, 2**32))
    def create_file(self, data, size, seed):
        path = self.existing(data) if data.draw(st.integers(0, 3)) == 0 else self.anypath(data)
        body = payload(seed, size)

        def fn(root):
            with open(root / path, "wb", buffering=0) as f:
                f.write(body)
        self.both(f"create {path} ({size} B)", fn)

    @rule(data=st.data(), offset=OFFSETS, size=SIZES, seed=st.integers(0, 2**32))
    def write_at(self, data, offset, size, seed):
        path = self.existing(data, files_only=data.draw(st.integers(0, 4)) > 0)
        body = payload(seed, min(size, 300_000) if offset > BS else size)

        def fn(root):
            with open(root / path, "r+b", buffering=0) as f:
                f.seek(offset)
                return f.write(body)
        self.both(f"write {path} @{offset} ({len(body)} B)", fn)

    @rule(data=st.data(), size=st.one_of(st.integers(0, 5000),
                                         st.sampled_from([BS - 1, BS, BS + 1, 2 * BS + 5])))
    def truncate(self, data, size):
        path = self.existing(data, files_only=data.draw(st.integers(0, 4)) > 0)
        self.both(f"truncate {path} {size}", lambda root: os.truncate(root / path, size))

    @rule(data=st.data())
    def rename(self, data):
        src = self.existing(data)
        dst = self.target(data)
        self.both(f"rename {src} -> {dst}", lambda root: os.rename(root / src, root / dst))

    @rule(data=st.data())
    def link(self, data):
        src = self.existing(data, files_only=data.draw(st.integers(0, 4)) > 0)
        dst = self.existing(data) if data.draw(st.integers(0, 3)) == 0 else self.anypath(data)
        self.both(f"link {src} -> {dst}",
                  lambda root: os.link(root / src, root / dst, follow_symlinks=False))

    @rule(data=st.data())
    def symlink(self, data):
        dst = self.anypath(data)
        tgt = data.draw(st.sampled_from(NAMES + ["a/b", "missing", "x" * 300]))
        self.both(f"symlink {dst} -> {tgt}", lambda root: os.symlink(tgt, root / dst))

    @rule(data=st.data())
    def unlink(self, data):
        path = self.existing(data)
        self.both(f"unlink {path}", lambda root: os.unlink(root / path))

    @rule(data=st.data(), mode=st.sampled_from([0o755, 0o700, 0o777, 0o2755, 0o1777, 0o500]))
    def mkdir(self, data, mode):
        path = self.anypath(data)
        self.both(f"mkdir {path} {oct(mode)}", lambda root: (os.mkdir(root / path),
                                                             os.chmod(root / path, mode)))

    @rule(data=st.data())
    def rmdir(self, data):
        path = self.existing(data)
        self.both(f"rmdir {path}", lambda root: os.rmdir(root / path))

    @rule(data=st.data(), name=st.sampled_from(XNAMES), value=st.binary(max_size=64),
          flags=st.sampled_from([0, 0, os.XATTR_CREATE, os.XATTR_REPLACE]))
    def setxattr(self, data, name, value, flags):
        path = self.existing(data)
        self.both(f"setxattr {path} {name}={value!r} flags={flags}",
                  lambda root: os.setxattr(root / path, name, value, flags,
                                           follow_symlinks=False))

    @rule(data=st.data(), name=st.sampled_from(XNAMES))
    def removexattr(self, data, name):
        path = self.existing(data)
        self.both(f"removexattr {path} {name}",
                  lambda root: os.removexattr(root / path, name, follow_symlinks=False))

    @rule(data=st.data(), mode=st.integers(0, 0o7777))
    def chmod(self, data, mode):
        path = self.existing(data)
        if os.path.islink(self.p / path):
            return  # Linux has no lchmod; chmod through a link is covered by the target
        self.both(f"chmod {path} {oct(mode)}", lambda root: os.chmod(root / path, mode))

    @rule(data=st.data())
    def read_back(self, data):
        """Reads through an open handle, at random offsets (block edges included)."""
        path = self.existing(data, files_only=True)
        off = data.draw(OFFSETS)
        n = data.draw(st.sampled_from([1, 100, BS, 3 * BS]))

        def fn(root):
            with open(root / path, "rb", buffering=0) as f:
                f.seek(off)
                return hash(f.read(n))
        self.both(f"read {path} @{off} {n}", fn)

    # open handles kept across steps: unlink/rename/truncate while open, shared buffers
    @precondition(lambda self: len(self.handles) < 3)
    @rule(data=st.data(), flags=st.sampled_from([os.O_RDWR, os.O_RDWR, os.O_RDWR | os.O_APPEND,
                                                 os.O_RDWR | os.O_CREAT, os.O_RDONLY]))
    def open_handle(self, data, flags):
        path = self.existing(data) if data.draw(st.integers(0, 3)) else self.anypath(data)
        self.log.append(f"open {path} flags={flags:#o}")
        fds = []
        for root in (self.p, self.g):
            try:
                fds.append(("ok", os.open(root / path, flags, 0o644)))
            except OSError as exc:
                fds.append(("err", exc.errno))
        (pk, pv), (gk, gv) = fds
        if pk == gk == "ok":
            self.handles.append((gv, pv, path))
            return
        for kind, v in fds:
            if kind == "ok":
                os.close(v)
        assert (gk, gv) == (pk, pv), f"open {path}: gffs -> {(gk, gv)}, model -> {(pk, pv)}"

    def _handle(self, data) -> tuple[int, int, str]:
        return data.draw(st.sampled_from(self.handles))

    @precondition(lambda self: self.handles)
    @rule(data=st.data(), offset=OFFSETS, size=SIZES, seed=st.integers(0, 2**32))
    def handle_write(self, data, offset, size, seed):
        gfd, pfd, path = self._handle(data)
        body = payload(seed, min(size, 300_000) if offset > BS else size)
        self.log.append(f"pwrite fd({path}) @{offset} ({len(body)} B)")
        res = []
        for fd in (pfd, gfd):
            try:
                os.lseek(fd, offset, os.SEEK_SET)
                res.append(("ok", os.write(fd, body)))
            except OSError as exc:
                res.append(("err", exc.errno))
        assert res[1] == res[0], f"pwrite fd({path}): gffs -> {res[1]}, model -> {res[0]}"

    @precondition(lambda self: self.handles)
    @rule(data=st.data(), offset=OFFSETS, n=st.sampled_from([1, 4096, BS + 3]))
    def handle_read(self, data, offset, n):
        gfd, pfd, path = self._handle(data)
        self.log.append(f"pread fd({path}) @{offset} {n}")
        res = []
        for fd in (pfd, gfd):
            try:
                res.append(("ok", hash(os.pread(fd, n, offset)), os.fstat(fd).st_size))
            except OSError as exc:
                res.append(("err", exc.errno))
        assert res[1] == res[0], f"pread fd({path}): gffs -> {res[1]}, model -> {res[0]}"

    @precondition(lambda self: self.handles)
    @rule(data=st.data(), size=st.sampled_from([0, 10, BS + 1]))
    def handle_ftruncate(self, data, size):
        gfd, pfd, path = self._handle(data)
        self.log.append(f"ftruncate fd({path}) {size}")
        res = []
        for fd in (pfd, gfd):
            try:
                res.append(("ok", os.ftruncate(fd, size)))
            except OSError as exc:
                res.append(("err", exc.errno))
        assert res[1] == res[0], f"ftruncate fd({path}): gffs -> {res[1]}, model -> {res[0]}"

    @precondition(lambda self: self.handles)
    @rule(data=st.data(), sync=st.booleans())
    def close_handle(self, data, sync):
        h = self._handle(data)
        self.handles.remove(h)
        gfd, pfd, path = h
        self.log.append(f"{'fsync+' if sync else ''}close fd({path})")
        if sync:
            os.fsync(pfd)
            os.fsync(gfd)
        os.close(pfd)
        os.close(gfd)

    @precondition(lambda self: not self.remounted)
    @rule(data=st.data())
    def remount(self, data):
        # rare: at most once per example, and only on about one draw in six
        if data.draw(st.integers(0, 5)) != 0:
            return
        self.remounted = True
        self.close_all()
        self.log.append("remount")
        self.mount.remount()
        self.check_trees()

    # ------------------------------------------------------------------ comparison
    @invariant()
    def check_trees(self):
        real, model = snapshot(self.g), snapshot(self.p)
        assert real == model, f"trees differ after {self.log}:\n{diff(real, model)}"


def test_gffs_matches_local_disk(shared_mount):
    m, model = shared_mount
    GffsVsDisk.mount = m
    GffsVsDisk.model_base = model
    run_state_machine_as_test(GffsVsDisk, settings=settings(
        max_examples=40, stateful_step_count=30, deadline=None, derandomize=False,
        suppress_health_check=list(HealthCheck), print_blob=True))
    assert "Traceback" not in m.log_text(), m.log_tail(60)
    m.unmount()
    check_store(m)


def check_store(m: Mount) -> None:
    """After all those operations and a clean unmount: refcounts equal block references,
    every referenced chunk file exists, no chunk file is unreferenced, no garbage left."""
    from collections import Counter

    from gffs.index import ChunkMap, Index
    idx = Index(m.data_dir / "index", readonly=True)
    try:
        with idx.read() as txn:
            records = {d.hex(): r for d, r in ChunkMap(idx).all_chunks(txn)}
            refs = Counter(bytes(v).hex() for _, v in txn.cursor(db=idx.db["blocks"]))
            garbage = sum(1 for _ in txn.cursor(db=idx.db["garbage"]))
    finally:
        idx.close()
    files = {f for _, _, fs in os.walk(m.data_dir / "local" / "chunks") for f in fs}
    assert garbage == 0
    assert set(refs) <= set(records), "blocks reference chunks without a record"
    bad = {h: (r.refcount, refs[h]) for h, r in records.items() if r.refcount != refs[h]}
    assert not bad, f"refcount != block references: {bad}"
    assert set(records) <= files, "referenced chunk files are missing"
    assert files <= set(records), f"unreferenced chunk files: {sorted(files - set(records))}"
