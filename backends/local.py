"""Local-disk backend: one file per chunk, 256 fan-out directories, atomic writes.

Chunks live in ``chunks/<first 2 hex digits>/<key>``. Stores made before this
layout used two levels (``chunks/ab/cd/<key>``, 65,536 leaf directories, so
nearly every new chunk of a young store made a directory and fsynced two); a
store without the layout marker may hold such chunks, so lookups there fall
back to the old path (see docs/backends/local.md "Layout").

A put writes a temp file and renames it into place, so a reader (or a crash)
never sees half an object. fsync is deferred to :meth:`sync`, which the
filesystem calls for fsync(2), periodically and at unmount.

Metadata objects (index backups) live beside the chunks in ``<path>/meta/<name>``,
outside ``chunks/``, so list() and gc never see them; they are fsynced at once.
"""

from __future__ import annotations

import concurrent.futures
import errno
import os
import threading
import time
from pathlib import Path
from typing import AsyncIterator, Callable, TypeVar

import trio

from gffs_backends.base import (Backend, BackendError, BackendFull, Capacity, ObjectInfo,
                                ObjectMissing, check_meta_name, check_meta_prefix)

T = TypeVar("T")
TMP_SUFFIX = ".tmp"
LAYOUT_FILE = "layout"              # <root>/layout: written by a store made in this layout
LAYOUT = "chunks/xx/KEY\n"          # its content: one level of 256 directories
LIST_CHECKPOINT = 256   # objects list() yields between two trio checkpoints
SYNC_THREADS = 16   # fsyncs issued at once: the filesystem's journal commits them together


def chunk_path(objects: Path, key: str) -> Path:
    """A chunk's file under a ``chunks/`` directory (the 256-directory layout)."""
    return objects / key[:2] / key


def _fsync_one(path: Path, flags: int) -> bool:
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:   # deleted since it was put: nothing to make durable
        return False
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def fsync_paths(paths: set[Path], flags: int = os.O_RDONLY) -> list[Path]:
    """fsync every path; returns those that still existed.

    Many at once, from a few threads: one after the other, each fsync on ext4 (or
    XFS) waits for its own journal commit; issued together, concurrent fsyncs
    share commits, so 300 small chunk files sync in about a tenth of the time
    (measured on the development VM), and the group commit's gate stays closed
    that much shorter."""
    if len(paths) <= 2:
        return [p for p in paths if _fsync_one(p, flags)]
    with concurrent.futures.ThreadPoolExecutor(min(SYNC_THREADS, len(paths)),
                                               "gffs-fsync") as pool:
        ordered = list(paths)
        return [p for p, ok in zip(ordered, pool.map(_fsync_one, ordered,
                                                     [flags] * len(ordered))) if ok]


class LocalBackend(Backend):
    is_local = True

    def __init__(self, name: str, path: str | os.PathLike) -> None:
        super().__init__(name)
        self.root = Path(path).expanduser()
        self.objects = self.root / "chunks"
        self.meta = self.root / "meta"
        self.legacy = self._open_layout()
        self._unsynced: set[Path] = set()
        self._known_dirs: set[Path] = set()
        self._lock = threading.Lock()
        # one sync at a time: a sync must not return while another still fsyncs
        # files it took (an index commit relies on "sync returned = all durable")
        self._sync_lock = threading.Lock()

    @classmethod
    def from_config(cls, name: str, options: dict) -> "LocalBackend":
        if "path" not in options:
            raise ValueError(f"backend {name!r}: 'path' is required")
        return cls(name, options["path"])

    def _open_layout(self) -> bool:
        """Make the chunk directory; True when it may hold chunks of the two-level layout.

        A fresh store gets the marker, so its misses cost one lookup, not two. A
        marker lost to a crash only costs the fallback lookups (never a miss)."""
        marker = self.root / LAYOUT_FILE
        if marker.exists():
            return False
        self.objects.mkdir(parents=True, exist_ok=True)
        with os.scandir(self.objects) as entries:
            fresh = next(entries, None) is None   # nothing of either layout yet
        if fresh:
            try:
                marker.write_text(LAYOUT)
            except OSError:       # read-only or full: the fallback is only slower
                return True
        return not fresh

    def _path(self, key: str) -> Path:
        if len(key) < 8 or not all(c in "0123456789abcdef" for c in key):
            raise BackendError(f"{self.name}: invalid object key {key!r}")
        return chunk_path(self.objects, key)

    def _paths(self, key: str) -> list[Path]:
        """Where a chunk may be: its path, then (older stores) the two-level one."""
        path = self._path(key)
        return [path, self.objects / key[:2] / key[2:4] / key] if self.legacy else [path]

    def chunk_file(self, key: str) -> Path | None:
        """The file holding a chunk, or None (tests and tools that look at the disk)."""
        return next((p for p in self._paths(key) if p.exists()), None)

    # blocking implementations, run in worker threads -------------------------
    def _put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if path.parent not in self._known_dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._known_dirs.add(path.parent)
        tmp = path.with_name(f"{key}.{threading.get_ident()}{TMP_SUFFIX}")
        try:
            try:
                f = open(tmp, "wb")
            except FileNotFoundError:  # fan-out directory removed behind our back
                self._known_dirs.discard(path.parent)
                path.parent.mkdir(parents=True, exist_ok=True)
                f = open(tmp, "wb")
            with f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise BackendFull(f"{self.name}: disk full at {self.root}") from exc
            raise BackendError(f"{self.name}: cannot write {path}: {exc.strerror}") from exc
        with self._lock:
            self._unsynced.add(path)

    def _get(self, key: str) -> bytes:
        for path in self._paths(key):
            try:
                with open(path, "rb") as f:
                    return f.read()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise BackendError(f"{self.name}: cannot read chunk {key}: "
                                   f"{exc.strerror}") from exc
        raise ObjectMissing(f"{self.name}: chunk {key} is missing")

    def _delete(self, key: str) -> None:
        for path in self._paths(key):
            path.unlink(missing_ok=True)
            with self._lock:
                self._unsynced.discard(path)

    def _stat(self, key: str) -> ObjectInfo | None:
        for path in self._paths(key):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            return ObjectInfo(key, st.st_size, st.st_mtime)
        return None

    def _sync(self) -> None:
        with self._sync_lock:
            self._sync_pending()

    def _sync_pending(self) -> None:
        with self._lock:
            paths, self._unsynced = self._unsynced, set()
        try:
            dirs = set()
            for path in fsync_paths(paths):
                dirs.update((path.parent, self.objects))
            fsync_paths(dirs, os.O_RDONLY | os.O_DIRECTORY)
        except BaseException:
            with self._lock:   # the next sync tries them again
                self._unsynced |= paths
            raise

    def _put_meta(self, name: str, data: bytes) -> None:
        path = self.meta / check_meta_name(self.name, name)
        tmp = path.with_name(f".{path.name}.{threading.get_ident()}{TMP_SUFFIX}")
        try:
            # the rename needs its directory fsynced; a directory made here, its parents too
            dirs = [path.parent]
            if not path.parent.is_dir():
                path.parent.mkdir(parents=True, exist_ok=True)
                dirs += [d for d in path.parent.parents if d.is_relative_to(self.root)]
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            for d in dirs:
                fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise BackendFull(f"{self.name}: disk full at {self.root}") from exc
            raise BackendError(f"{self.name}: cannot write {path}: {exc.strerror}") from exc

    def _get_meta(self, name: str) -> bytes:
        path = self.meta / check_meta_name(self.name, name)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise ObjectMissing(f"{self.name}: metadata object {name} is missing") from exc
        except OSError as exc:
            raise BackendError(f"{self.name}: cannot read {path}: {exc.strerror}") from exc

    def _list_meta(self, prefix: str) -> list[str]:
        names = []
        for dirpath, _dirs, files in os.walk(self.meta):
            rel = os.path.relpath(dirpath, self.meta)
            for fname in files:
                name = fname if rel == "." else f"{rel}/{fname}"
                if name.startswith(prefix) and not fname.startswith("."):
                    names.append(name)
        return sorted(names)

    def _delete_meta(self, name: str) -> None:
        try:
            (self.meta / check_meta_name(self.name, name)).unlink(missing_ok=True)
        except (NotADirectoryError, IsADirectoryError):
            pass

    def _scan(self) -> list[ObjectInfo]:
        """Every chunk file, in either layout, each once (blocking: tests and tools)."""
        try:
            names = sorted(os.listdir(self.objects))
        except FileNotFoundError:
            return []
        return [info for name in names for info in self._scan_dir(name)]

    def _scan_dir(self, name: str) -> list[ObjectInfo]:
        """The chunk files under one fan-out directory (or a stray file beside them).

        A chunk's two possible paths (``ab/KEY`` and the old ``ab/cd/KEY``) share
        the fan-out directory ``ab``, so listing it once lists each chunk once."""
        top = os.path.join(self.objects, name)
        out: dict[str, ObjectInfo] = {}
        stack = [top]
        while stack:
            try:
                entries = list(os.scandir(stack.pop()))
            except NotADirectoryError:          # a file directly under chunks/
                entries = [e for e in os.scandir(self.objects) if e.name == name]
            except FileNotFoundError:
                continue
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                        continue
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                out.setdefault(entry.name, ObjectInfo(entry.name, st.st_size, st.st_mtime))
        return list(out.values())

    def remove_stale_temps(self, older_than: float) -> int:
        """Delete temp files left by a crash mid-put (blocking; admin gc)."""
        removed = 0
        cutoff = time.time() - older_than
        for dirpath, _dirs, files in os.walk(self.objects):
            for fname in files:
                p = os.path.join(dirpath, fname)
                if fname.endswith(TMP_SUFFIX) and os.stat(p).st_mtime < cutoff:
                    os.unlink(p)
                    removed += 1
        return removed

    # async interface -----------------------------------------------------------
    async def put(self, key: str, data: bytes) -> str:
        await trio.to_thread.run_sync(self._put, key, data)
        return ""

    async def get(self, key: str, locator: str = "") -> bytes:
        return await trio.to_thread.run_sync(self._get, key)

    async def get_then(self, key: str, locator: str, then: Callable[[bytes], T]) -> T:
        return await trio.to_thread.run_sync(lambda: then(self._get(key)))   # one hop

    async def delete(self, key: str, locator: str = "") -> None:
        await trio.to_thread.run_sync(self._delete, key)

    async def delete_many(self, items: list[tuple[str, str]]) -> None:
        def run() -> None:
            for key, _ in items:
                self._delete(key)
        await trio.to_thread.run_sync(run)

    async def stat(self, key: str, locator: str = "") -> ObjectInfo | None:
        return await trio.to_thread.run_sync(self._stat, key)

    async def list(self) -> AsyncIterator[ObjectInfo]:  # type: ignore[override]
        """One fan-out directory at a time, each scanned in a worker thread.

        Memory stays at one directory's entries (a million chunks listed at once
        cost the daemon over 300 MB), and the caller's loop reaches a checkpoint
        every LIST_CHECKPOINT objects, so a long listing (fsck, gc) never holds
        the trio thread, and with it every FUSE request, for more than a slice."""
        try:
            names = sorted(await trio.to_thread.run_sync(os.listdir, self.objects))
        except FileNotFoundError:
            return
        n = 0
        for name in names:
            for info in await trio.to_thread.run_sync(self._scan_dir, name):
                if info.key.endswith(TMP_SUFFIX):
                    continue
                yield info
                n += 1
                if n % LIST_CHECKPOINT == 0:
                    await trio.lowlevel.checkpoint()

    async def put_meta(self, name: str, data: bytes) -> None:
        await trio.to_thread.run_sync(self._put_meta, name, bytes(data))

    async def get_meta(self, name: str) -> bytes:
        return await trio.to_thread.run_sync(self._get_meta, name)

    async def list_meta(self, prefix: str = "") -> list[str]:
        check_meta_prefix(self.name, prefix)
        return await trio.to_thread.run_sync(self._list_meta, prefix)

    async def delete_meta(self, name: str) -> None:
        await trio.to_thread.run_sync(self._delete_meta, name)

    def _check(self) -> None:
        if not self.objects.is_dir():
            raise BackendError(f"{self.name}: {self.objects} is not a directory (deleted, or "
                               f"the disk holding it is not mounted)")
        if (not os.access(self.objects, os.W_OK | os.X_OK)
                or os.statvfs(self.objects).f_flag & os.ST_RDONLY):
            raise BackendError(f"{self.name}: {self.objects} is not writable")

    async def check(self) -> None:
        """The chunk directory exists and is writable."""
        await trio.to_thread.run_sync(self._check)

    async def capacity(self) -> Capacity:
        st = await trio.to_thread.run_sync(os.statvfs, self.objects)
        return Capacity(st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)

    async def sync(self) -> None:
        await trio.to_thread.run_sync(self._sync)
