"""The control socket: how `gffs-admin` runs maintenance jobs inside a mounted daemon.

A Unix stream socket ``<data_dir>/control.sock`` (mode 0600; the peer's uid is
checked: root or the daemon's user). Protocol, one JSON object per line:

    client → {"job": "rebalance", "args": {...}}
    daemon → {"event": "progress", ...} | {"event": "note", "message": ...}  (any number)
    daemon → {"event": "result", "result": {...}}
           | {"event": "error", "kind": "refused"|"busy"|"unknown"|"failed", "message": ...}

The client closing the connection (Ctrl-C) cancels the job; jobs are written
to be cancelled at any await. S3QL uses setxattr on a hidden control file
instead; a socket can stream progress back and notice the client going away.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import trio

from gffs.maintenance.jobs import JOBS, JobBusy, JobRefused, load_jobs
from gffs.maintenance.progress import EventProgress, Progress

if TYPE_CHECKING:
    from gffs.store import Store

log = logging.getLogger("gffs.control")

SOCKET_NAME = "control.sock"
READ_ONLY_JOBS = {"fsck", "commit"}   # change nothing anywhere: the only jobs a read-only mount runs
MAX_REQUEST = 64 << 10


class JobFailed(Exception):
    """The job raised an unexpected error in the daemon."""


def socket_address(data_dir: Path) -> tuple[str, int | None]:
    """A bindable path for the socket (sun_path holds ~107 bytes).

    A long data_dir is reached through /proc/self/fd/N of an O_PATH handle;
    the returned fd must be closed by the caller after bind/connect.
    """
    path = str(data_dir / SOCKET_NAME)
    if len(path.encode()) < 100:
        return path, None
    fd = os.open(data_dir, os.O_PATH | os.O_DIRECTORY)
    return f"/proc/self/fd/{fd}/{SOCKET_NAME}", fd


class ControlServer:
    """Serves job requests; one writing job at a time, read-only ones beside it."""

    def __init__(self, store: "Store") -> None:
        self.store = store
        self.path = store.cfg.data_dir / SOCKET_NAME
        self.writer: str | None = None  # name of the writing job running now
        load_jobs()

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.path.unlink(missing_ok=True)
        address, fd = socket_address(self.path.parent)
        try:
            old = os.umask(0o177)
            try:
                await sock.bind(address)
            finally:
                os.umask(old)
        finally:
            if fd is not None:
                os.close(fd)
        sock.listen(8)
        try:
            task_status.started()
            await trio.serve_listeners(self._handle, [trio.SocketListener(sock)])
        finally:
            sock.close()
            self.path.unlink(missing_ok=True)

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            async with stream:
                if not self._peer_allowed(stream):
                    await _send(stream, {"event": "error", "kind": "refused",
                                         "message": "permission denied"})
                    return
                request = await _read_request(stream)
                await self._run(stream, request)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.info("control client went away")
        except Exception:
            log.exception("control request failed")

    @staticmethod
    def _peer_allowed(stream: trio.SocketStream) -> bool:
        creds = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                         struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return uid in (0, os.getuid())

    def _read_only_refusal(self, name: str, args: dict[str, Any]) -> str | None:
        """Why a read-only mount (-o ro) will not run this job, or None."""
        if not self.store.read_only:
            return None
        if name not in READ_ONLY_JOBS:
            return f"{name} would write, and the store is mounted read-only (-o ro)"
        if args.get("incremental"):
            return (f"{name} --incremental saves its place in the index, and the store is "
                    f"mounted read-only (-o ro)")
        return None

    async def _run(self, stream: trio.SocketStream, request: dict[str, Any]) -> None:
        name = request.get("job")
        job = JOBS.get(name) if isinstance(name, str) else None
        if job is None:
            await _send(stream, {"event": "error", "kind": "unknown",
                                 "message": f"no maintenance job named {name!r}"})
            return
        refusal = self._read_only_refusal(job.name, request.get("args") or {})
        if refusal:
            await _send(stream, {"event": "error", "kind": "refused", "message": refusal})
            return
        if job.writes and self.writer is not None:
            await _send(stream, {"event": "error", "kind": "busy",
                                 "message": f"{self.writer} is running on this store"})
            return
        if job.writes:
            self.writer = job.name
        events_in, events_out = trio.open_memory_channel(math.inf)
        progress = EventProgress(events_in.send_nowait)
        log.info("job %s started %s", job.name, request.get("args"))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_forward, stream, events_out)
                nursery.start_soon(_cancel_on_hangup, stream, nursery.cancel_scope)
                outcome = await _outcome(self._committed(job, dict(request.get("args") or {}),
                                                         progress))
                progress.finish_phase()
                events_in.send_nowait(outcome)
                events_in.close()
                log.info("job %s finished: %s", job.name, outcome.get("event"))
        finally:
            if job.writes:
                self.writer = None


    async def _committed(self, job, args: dict[str, Any], progress: EventProgress) -> dict:
        """Run *job* between two commits of the index group: it sees (and other
        processes reading the index see) every request that finished before it, and
        what it changed is on disk when its client hears the result."""
        if not self.store.read_only:
            await self.store.index.durable()
        result = await job.fn(self.store, args, progress)
        if job.writes and not self.store.read_only:
            await self.store.index.durable()
        return result


async def _outcome(work) -> dict[str, Any]:
    try:
        return {"event": "result", "result": await work}
    except JobRefused as exc:
        return {"event": "error", "kind": "refused", "message": str(exc)}
    except JobBusy as exc:
        return {"event": "error", "kind": "busy", "message": str(exc)}
    except (trio.Cancelled, KeyboardInterrupt):
        raise
    except Exception as exc:
        log.exception("maintenance job failed")
        return {"event": "error", "kind": "failed", "message": f"{type(exc).__name__}: {exc}"}


async def _forward(stream: trio.SocketStream, events: trio.MemoryReceiveChannel) -> None:
    async for event in events:
        await _send(stream, event)
    await stream.send_eof()


async def _cancel_on_hangup(stream: trio.SocketStream, scope: trio.CancelScope) -> None:
    """The client sends nothing after its request: end of stream means it went away."""
    try:
        while await stream.receive_some(4096):
            pass
    except trio.BrokenResourceError:
        pass
    scope.cancel()


async def _send(stream: trio.SocketStream, event: dict[str, Any]) -> None:
    await stream.send_all(json.dumps(event, default=str).encode() + b"\n")


async def _read_request(stream: trio.SocketStream) -> dict[str, Any]:
    buf = b""
    while b"\n" not in buf:
        more = await stream.receive_some(4096)
        if not more or len(buf) > MAX_REQUEST:
            raise trio.BrokenResourceError("incomplete request")
        buf += more
    request = json.loads(buf.split(b"\n", 1)[0])
    if not isinstance(request, dict):
        raise ValueError("request is not an object")
    return request


# client side -----------------------------------------------------------------------

def commit_mounted(data_dir: Path) -> str | None:
    """Ask the daemon holding *data_dir* to commit its open index group, for a process
    about to read the index itself; None when done, else why not (the index then
    shows the state of the last commit, about a second old)."""
    try:
        request_job(data_dir, "commit", {}, Progress())
    except Exception as exc:  # noqa: BLE001 (the reader goes on with committed state)
        return str(exc) or type(exc).__name__
    return None


def request_job(data_dir: Path, name: str, args: dict[str, Any], progress: Progress,
                timeout: float = 10.0) -> dict[str, Any]:
    """Run *name* in the daemon that holds *data_dir*; relay its progress; return its result.

    Raises ConnectionError when no daemon answers, JobRefused/JobBusy/JobFailed
    for what the daemon reports. Closing the socket (KeyboardInterrupt) cancels the job.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    address, fd = socket_address(data_dir)
    try:
        sock.settimeout(timeout)
        sock.connect(address)
    except OSError as exc:
        sock.close()
        raise ConnectionError(f"the mount daemon does not answer on {data_dir / SOCKET_NAME}: "
                              f"{exc.strerror or exc}") from None
    finally:
        if fd is not None:
            os.close(fd)
    with sock:
        sock.settimeout(None)
        sock.sendall(json.dumps({"job": name, "args": args}).encode() + b"\n")
        for event in _events(sock):
            kind = event.get("event")
            if kind == "progress":
                progress.display(event, bool(event.get("final")))
            elif kind == "note":
                progress.note(str(event.get("message", "")))
            elif kind == "result":
                return event["result"]
            elif kind == "error":
                message = str(event.get("message", ""))
                raise {"refused": JobRefused, "busy": JobBusy}.get(event.get("kind"),
                                                                   JobFailed)(message)
    raise JobFailed("the mount daemon closed the connection before the job finished")


def _events(sock: socket.socket) -> Iterator[dict[str, Any]]:
    buf = b""
    while True:
        more = sock.recv(65536)
        if not more:
            return
        buf += more
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if line.strip():
                yield json.loads(line)
