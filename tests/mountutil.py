"""A real gffs mount for tests: started through the CLI, always cleaned up."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from gffs.mounts import find_mount

FUSE_AVAILABLE = os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None
SKIP_REASON = "needs /dev/fuse and fusermount3 (Debian package fuse3)"


def gffs_cli(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gffs.cli.main", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


class Mount:
    """One store mounted at ``path``; ``remount()``, ``kill9()`` and ``unmount()``."""

    def __init__(self, root: Path, config: Path | None = None, opts: list[str] | None = None) -> None:
        self.root = root
        self.path = root / "mnt"
        self.data_dir = root / "data"
        self.config = config
        self.opts = opts or []

    def _args(self) -> list[str]:
        args = ["mount", str(self.path), "--data-dir", str(self.data_dir)]
        if self.config:
            args += ["--config", str(self.config)]
        for o in self.opts:
            args += ["-o", o]
        return args

    def mount(self) -> "Mount":
        res = gffs_cli(*self._args())
        if res.returncode != 0:
            raise RuntimeError(f"gffs mount failed: {res.stderr.strip()}\n{self.log_tail()}")
        return self

    def pid(self) -> int | None:
        try:
            text = (self.data_dir / "gffs.lock").read_text()
        except FileNotFoundError:
            return None
        m = re.search(r"pid (\d+)", text)
        return int(m.group(1)) if m else None

    def is_mounted(self) -> bool:
        return find_mount(str(self.path)) is not None

    def unmount(self) -> None:
        if self.is_mounted():
            res = gffs_cli("umount", str(self.path))
            if res.returncode != 0:
                raise RuntimeError(f"gffs umount failed: {res.stderr.strip()}")

    def remount(self) -> "Mount":
        self.unmount()
        return self.mount()

    def kill9(self) -> None:
        """Kill the daemon like a crash would, then clear the dead mount."""
        pid = self.pid()
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait_gone(pid)
        subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)

    def cleanup(self) -> None:
        try:
            if self.is_mounted():
                subprocess.run([sys.executable, "-m", "gffs.cli.main", "umount", str(self.path),
                                "--timeout", "30"], capture_output=True, timeout=60)
        except Exception:
            pass
        if self.is_mounted():
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
        pid = self.pid()
        if pid and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join((self.data_dir / "gffs.log").read_text().splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def log_text(self) -> str:
        try:
            return (self.data_dir / "gffs.log").read_text()
        except FileNotFoundError:
            return ""

    def stored_bytes(self) -> int:
        """Bytes of chunk files in the default local backend."""
        total = 0
        for dirpath, _d, files in os.walk(self.data_dir / "local" / "chunks"):
            total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
        return total


def pid_alive(pid: int) -> bool:
    """Whether *pid* runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
