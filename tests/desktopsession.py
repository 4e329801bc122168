"""A throw-away X desktop for tests: Xvfb, a session bus, one file manager, screenshots.

What a bare desktop needs for file managers to browse a FUSE mount at all
(docs/IMAGES.md, "A desktop for file managers"):

- ``GSK_RENDERER=cairo``: Nautilus 43 (GTK 4) on Xvfb renders with GL through
  llvmpipe; on a loaded machine its folder view then never starts loading
  ("Loading…" forever, for a local directory too). With the cairo renderer it
  loads at once.
- ``GIO_USE_VFS=local``: without it every GLib program asks gvfsd for
  ``trash:///`` at start, gvfsd-trash walks every mount for trash directories,
  and on a machine with many (test) FUSE mounts the reply comes after the 25 s
  D-Bus timeout: Thunar and PCManFM show no window until then. Local files
  need no gvfs.

Every process of the session carries a marker in its environment; ``close()``
kills each of them by pid (D-Bus-activated helpers are re-parented to init,
so a process group would miss them).
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

from PIL import Image

MARKER = "GFFS_DESKTOP_SESSION"
SCREEN = (1280, 1024)


def missing_programs(*names: str) -> list[str]:
    return [n for n in names if shutil.which(n) is None]


class DesktopSession:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.token = uuid.uuid4().hex
        self.env: dict[str, str] = {}
        self._xvfb: subprocess.Popen | None = None

    def start(self) -> "DesktopSession":
        (self.home / ".cache" / "thumbnails").mkdir(parents=True, exist_ok=True)
        os.chmod(self.home / ".cache" / "thumbnails", 0o700)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("DBUS_", "DISPLAY",
                                                                         "XDG_", "WAYLAND"))}
        base.update({MARKER: self.token, "HOME": str(self.home),
                     "XDG_CACHE_HOME": str(self.home / ".cache"),
                     "XDG_CONFIG_HOME": str(self.home / ".config"),
                     "XDG_DATA_HOME": str(self.home / ".local" / "share"),
                     "GSK_RENDERER": "cairo", "GIO_USE_VFS": "local", "NO_AT_BRIDGE": "1",
                     "GTK_A11Y": "none"})
        r, w = os.pipe()
        self._xvfb = subprocess.Popen(
            ["Xvfb", "-displayfd", str(w), "-screen", "0", f"{SCREEN[0]}x{SCREEN[1]}x24",
             "-nolisten", "tcp", "-noreset"], pass_fds=(w,), env=base, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(w)
        with os.fdopen(r) as f:
            display = f.readline().strip()
        if not display:
            raise RuntimeError("Xvfb did not start")
        base["DISPLAY"] = f":{display}"
        out = subprocess.run(["dbus-daemon", "--session", "--fork", "--print-address=1",
                              "--print-pid=1"], env=base, capture_output=True, text=True,
                             timeout=60, check=True).stdout.split()
        base["DBUS_SESSION_BUS_ADDRESS"] = out[0]
        self.env = base
        return self

    def run(self, *argv: str, log: Path | None = None) -> subprocess.Popen:
        out = open(log, "ab") if log else subprocess.DEVNULL
        return subprocess.Popen(list(argv), env=self.env, start_new_session=True,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def xdotool(self, *args: str) -> str:
        res = subprocess.run(["xdotool", *args], env=self.env, capture_output=True, text=True,
                             timeout=60)
        return res.stdout

    def visible_window(self, name: str, timeout: float = 120.0) -> int:
        """The first mapped window whose title contains *name* (polls: the machine is slow)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ids = self.xdotool("search", "--onlyvisible", "--name", name).split()
            if ids:
                return int(ids[0])
            time.sleep(0.5)
        raise AssertionError(f"no window titled {name!r} after {timeout:.0f} s")

    def geometry(self, window: int) -> tuple[int, int, int, int]:
        """x, y, width, height of a window on the screen."""
        values = dict(line.split("=", 1) for line in
                      self.xdotool("getwindowgeometry", "--shell", str(window)).split())
        return int(values["X"]), int(values["Y"]), int(values["WIDTH"]), int(values["HEIGHT"])

    def screenshot(self) -> Image.Image:
        png = subprocess.run(["import", "-window", "root", "png:-"], env=self.env,
                             capture_output=True, timeout=120, check=True).stdout
        return Image.open(io.BytesIO(png)).convert("RGB")

    def close(self) -> None:
        """Kill every process that carries this session's marker, then Xvfb."""
        for _round in range(3):
            pids = self._pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGTERM if _round == 0 else signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(1.0)
        if self._xvfb is not None:
            self._xvfb.kill()
            self._xvfb.wait(timeout=30)

    def _pids(self) -> list[int]:
        needle = f"{MARKER}={self.token}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if needle in f.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                continue
        return found
