"""Progress of long maintenance work: a bar on a terminal, plain lines in a log.

Jobs call ``begin`` / ``advance`` / ``note``; where the numbers go depends on
who watches: a terminal (bar on stderr), a log (a line every few seconds), the
control socket (JSON events), or nobody.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable, TextIO

log = logging.getLogger("gffs.maintenance")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
    """Counts items and bytes of one phase; subclasses decide how to show them."""

    interval = 0.2  # seconds between two displays

    def __init__(self) -> None:
        self.what = ""
        self.unit = "items"
        self.total_items: int | None = None
        self.total_bytes: int | None = None
        self.items = 0
        self.nbytes = 0
        self.started = time.monotonic()
        self._shown = 0.0

    def begin(self, what: str, total_items: int | None = None,
              total_bytes: int | None = None, unit: str = "items") -> None:
        """Start a phase; *unit* names what the items are (chunks, objects, pieces, rows)."""
        self.finish_phase()
        self.what, self.total_items, self.total_bytes = what, total_items, total_bytes
        self.unit = unit
        self.items = self.nbytes = 0
        self.started = self._shown = time.monotonic()
        self.show(final=False)

    def advance(self, items: int = 0, nbytes: int = 0) -> None:
        self.items += items
        self.nbytes += nbytes
        now = time.monotonic()
        if now - self._shown >= self.interval:
            self._shown = now
            self.show(final=False)

    def note(self, message: str) -> None:
        """A line the user should read (what was found, what could not be done)."""

    def finish_phase(self) -> None:
        if self.what:
            self.show(final=True)
            self.what = ""

    def snapshot(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.nbytes / elapsed
        eta = None
        if self.total_bytes and rate > 0:
            eta = max(self.total_bytes - self.nbytes, 0) / rate
        elif self.total_items and self.items:
            eta = (self.total_items - self.items) * elapsed / self.items
        return {"what": self.what, "unit": self.unit, "items": self.items, "total_items": self.total_items,
                "bytes": self.nbytes, "total_bytes": self.total_bytes,
                "rate": rate, "elapsed": elapsed, "eta": eta}

    def show(self, final: bool) -> None:
        self.display(self.snapshot(), final)

    def display(self, s: dict[str, Any], final: bool) -> None:
        """Show one snapshot (this process's, or one the daemon sent); nothing here."""


def describe(s: dict[str, Any]) -> str:
    """One human line for a snapshot: what, chunks, bytes, rate, ETA."""
    items = f"{s['items']}" + (f"/{s['total_items']}" if s["total_items"] is not None else "")
    size = human_bytes(s["bytes"]) + (f"/{human_bytes(s['total_bytes'])}"
                                      if s["total_bytes"] else "")
    eta = f" ETA {_clock(s['eta'])}" if s.get("eta") is not None else ""
    return f"{s['what']}: {items} {s.get('unit', 'items')}, {size}, {human_bytes(s['rate'])}/s{eta}"


class TerminalProgress(Progress):
    """A redrawn bar on a terminal's stderr."""

    def __init__(self, stream: TextIO = sys.stderr, width: int = 24) -> None:
        super().__init__()
        self.stream, self.width = stream, width

    def display(self, s: dict[str, Any], final: bool) -> None:
        total = s["total_bytes"] or s["total_items"]
        done = s["bytes"] if s["total_bytes"] else s["items"]
        bar = ""
        if total:
            filled = min(self.width, int(self.width * done / total))
            bar = "[" + "#" * filled + "." * (self.width - filled) + "] "
        self.stream.write("\r\033[K" + bar + describe(s) + ("\n" if final else ""))
        self.stream.flush()

    def note(self, message: str) -> None:
        self.stream.write("\r\033[K" + message + "\n")
        self.stream.flush()


class LineProgress(Progress):
    """Plain lines (a log file, a pipe): one every few seconds and one per phase."""

    interval = 5.0

    def __init__(self, emit: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.emit = emit or log.info

    def display(self, s: dict[str, Any], final: bool) -> None:
        if final or s["items"] or s["bytes"]:
            self.emit(describe(s))

    def note(self, message: str) -> None:
        self.emit(message)


class EventProgress(Progress):
    """Hands snapshots and notes to a callback (the control socket sends them on)."""

    def __init__(self, send: Callable[[dict[str, Any]], None]) -> None:
        super().__init__()
        self.send = send

    def display(self, s: dict[str, Any], final: bool) -> None:
        self.send({"event": "progress", "final": final, **s})

    def note(self, message: str) -> None:
        self.send({"event": "note", "message": message})


def for_stream(stream: TextIO = sys.stderr, quiet: bool = False) -> Progress:
    """The right display for where the user is looking."""
    if quiet:
        return Progress()
    if stream.isatty():
        return TerminalProgress(stream)
    return LineProgress(lambda line: print(line, file=stream, flush=True))
