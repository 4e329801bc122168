"""Index scans of fsck run in a worker process that opens the index read-only.

At a million files the scans hold Python structures per inode and per chunk
(hundreds of MB, millions of GC-tracked tuples): in the daemon they raised its
RSS past 1 GB and every full garbage collection stalled the FUSE requests for
100 ms and more. A separate process (``python -m gffs.maintenance.fsck_worker``,
a fresh interpreter: the trio daemon is never forked) keeps that heap, its
collections and the index pages it maps out of the daemon. LMDB allows readers
in other processes, and each phase reads in one read transaction of its own, so
it sees the committed state, repairs of the previous phase included.

The daemon sends the worker one phase name at a time and gets back progress
ticks and then the phase's compact result (its findings and what the repairs
need), as length-prefixed pickles on the worker's stdin/stdout (the worker's
own fd 1 is pointed at stderr, so a stray print cannot corrupt the stream).
Repairs stay in the daemon, through its normal write path. Cancelling the phase
(Ctrl-C, a dropped control connection) kills the worker; a worker that dies or
fails is a :class:`ScanFailed` of this fsck run, never a daemon failure.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable

import trio

from gffs.maintenance.progress import Progress

HEADER = struct.Struct("<Q")
PHASES = ("namespace", "views", "chunks")


class ScanFailed(RuntimeError):
    """The worker process failed or died: this fsck run has no result (nothing was changed)."""


class Ticker:
    """Counts scanned rows; every few thousand, hands the count to *flush_to*."""

    def __init__(self, flush_to: Callable[[int], None], every: int = 4096) -> None:
        self.flush_to = flush_to
        self.every = every
        self.pending = 0

    def __call__(self, items: int = 1) -> None:
        self.pending += items
        if self.pending >= self.every:
            self.flush()

    def flush(self) -> None:
        n, self.pending = self.pending, 0
        if n:
            self.flush_to(n)


@dataclass(frozen=True)
class ScanContext:
    """What the chunk-table scan needs of the Store, picklable for the worker."""

    backends: frozenset[str]
    default_copies: int
    flow_copies: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, store: Any) -> "ScanContext":
        placement = store.placement
        return cls(frozenset(store.backends), placement.default.copies,
                   {name: p.copies for name, p in placement.flows.items()})

    def copies(self, flow: str | None) -> int:
        return self.flow_copies.get(flow or "", self.default_copies)


def _write(out: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(HEADER.pack(len(data)) + data)
    out.flush()


def _read(inp: IO[bytes]) -> Any:
    head = inp.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    (n,) = HEADER.unpack(head)
    return pickle.loads(inp.read(n))


# the worker process ---------------------------------------------------------------------
def run_phase(index: Any, ctx: ScanContext, phase: str, tick: Ticker,
              state: dict[str, Any]) -> tuple[Any, Any]:
    """One phase's scan (in the worker, or in-process for tests); (result for the daemon, report)."""
    from gffs.maintenance.fsck_chunks import ChunkCheck
    from gffs.maintenance.fsck_namespace import NamespaceCheck
    from gffs.maintenance.fsck_report import Report
    from gffs.maintenance.fsck_views import ViewCheck

    report = Report()
    if phase == "namespace":
        ns = NamespaceCheck(index, report).scan(tick)
        state["ns"] = ns
        result: Any = ns.for_repair()
    elif phase == "views":
        result = ViewCheck(index, report).scan(tick)
    elif phase == "chunks":
        ns = state.get("ns")
        result = ChunkCheck.for_scan(index, ctx, report,
                                     ns.file_flow if ns is not None else lambda ino: None).scan(tick)
    else:
        raise ValueError(f"unknown fsck phase {phase!r}")
    tick.flush()
    return result, report


def worker_main() -> int:
    """``python -m gffs.maintenance.fsck_worker``: serve phases until stdin closes."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)      # print() goes to stderr, never into the message stream
    inp = sys.stdin.buffer
    from gffs.index import Index

    setup = _read(inp)
    if setup is None:
        return 0
    try:
        index = Index(Path(setup["index"]), readonly=True)
    except Exception:  # noqa: BLE001 (reported to the daemon, which fails the run)
        _write(out, ("error", traceback.format_exc()))
        return 1
    state: dict[str, Any] = {}
    tick = Ticker(lambda n: _write(out, ("tick", n)))
    while (phase := _read(inp)) is not None:
        try:
            result, report = run_phase(index, setup["ctx"], phase, tick, state)
        except Exception:  # noqa: BLE001
            _write(out, ("error", traceback.format_exc()))
            return 1
        _write(out, ("done", (result, report.findings, report.checked, report.notes)))
    return 0


# the daemon side --------------------------------------------------------------------------
class ScanWorker:
    """The daemon's handle on one worker process: ``async with``, then :meth:`scan` per phase."""

    command = [sys.executable, "-m", "gffs.maintenance.fsck_worker"]  # (tests replace it)

    def __init__(self, index_dir: Path, ctx: ScanContext) -> None:
        self.setup = {"index": str(index_dir), "ctx": ctx}
        self.proc: trio.Process | None = None
        self._buf = bytearray()

    async def __aenter__(self) -> "ScanWorker":
        self.proc = await trio.lowlevel.open_process(
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        await self._send(self.setup)
        return self

    async def __aexit__(self, *exc: object) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()      # done, cancelled or failed: the worker has nothing to finish
            await proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    await stream.aclose()

    async def _send(self, obj: Any) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            await self.proc.stdin.send_all(HEADER.pack(len(data)) + data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise ScanFailed(await self._death()) from None

    async def _receive_exactly(self, n: int) -> bytes | None:
        assert self.proc is not None and self.proc.stdout is not None
        while len(self._buf) < n:
            chunk = await self.proc.stdout.receive_some(max(1 << 16, n - len(self._buf)))
            if not chunk:
                return None
            self._buf += chunk
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    async def _receive(self) -> Any:
        head = await self._receive_exactly(HEADER.size)
        body = None if head is None else await self._receive_exactly(HEADER.unpack(head)[0])
        if body is None:
            raise ScanFailed(await self._death())
        if len(body) < 1 << 16:
            return pickle.loads(body)
        return await trio.to_thread.run_sync(pickle.loads, body)  # a big result: off the loop

    async def _death(self) -> str:
        assert self.proc is not None
        code = await self.proc.wait()
        return (f"fsck's index scan worker process exited (code {code}) before it finished: "
                "this fsck run has no result; the store was not changed by it")

    async def scan(self, progress: Progress, what: str, total: int | None, phase: str,
                   report: Any) -> Any:
        """Run *phase* in the worker as one progress phase; merge its findings into *report*."""
        progress.begin(what, total_items=total, unit="rows")
        await self._send(phase)
        while True:
            kind, payload = await self._receive()
            if kind == "tick":
                progress.advance(payload)
            elif kind == "error":
                raise ScanFailed(f"fsck's index scan failed ({phase}) in its worker process:\n"
                                 f"{payload}")
            else:
                result, findings, checked, notes = payload
                report.findings.extend(findings)
                for name, n in checked.items():
                    report.count(name, n)
                for message in notes:
                    report.note(message)
                return result


if __name__ == "__main__":
    sys.exit(worker_main())
