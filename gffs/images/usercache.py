"""The viewing user's freedesktop thumbnail cache: where it is, what is valid there, writing it.

Every freedesktop file manager (GLib/Nautilus, libfm/PCManFM, Thunar, Caja,
Nemo, KDE) looks for a file's thumbnail first in
``$XDG_CACHE_HOME/thumbnails/<size>/<md5 of the file's URI>.png`` of the user
running it, and takes it when its ``Thumb::URI`` and ``Thumb::MTime`` match
the file. This module knows that layout and nothing about gffs' index.

Files are written *as the viewing user*: the writing thread switches its
filesystem uid and gid (``setfsuid``/``setfsgid``, which Linux keeps per
thread) before touching the cache, so the kernel applies that user's
permissions, every file and directory made is theirs, and a symlink planted
in the cache can lead nowhere the user could not write anyway. A daemon that
is not root can only write for its own uid.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import pwd
import struct
import threading
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import quote

# what GLib leaves unescaped in a file URI's path (g_filename_to_uri), "/" aside
URI_SAFE = "!$&'()*+,;=:@~"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HEADER_READ = 8192          # text chunks of a valid thumbnail sit near the start
_libc = ctypes.CDLL(None, use_errno=True)
_switch_lock = threading.Lock()   # guards the check that fsuid switching works


@dataclass(frozen=True, slots=True)
class Viewer:
    """A process that lists a directory: whose cache, and who may read what."""

    uid: int
    gid: int
    groups: frozenset[int]
    cache_dir: bytes            # $XDG_CACHE_HOME (absolute), thumbnails/ goes below it
    desktop: bool               # runs in a graphical session (DISPLAY / WAYLAND_DISPLAY)
    whole_seconds: bool = False  # a KDE lister: Thumb::MTime must be an integer (below)

    def may_read(self, mode: int, uid: int, gid: int) -> bool:
        """Would the kernel let this viewer open a file with these owner bits for reading?"""
        if self.uid == 0:
            return True
        if self.uid == uid:
            return bool(mode & 0o400)
        if gid == self.gid or gid in self.groups:
            return bool(mode & 0o040)
        return bool(mode & 0o004)


KDE_LISTERS = frozenset({b"dolphin", b"kioworker", b"kioslave5", b"kdeinit5", b"konqueror",
                         b"gwenview"})
"""Process names of KDE programs and the KIO workers that list directories for them."""


def mtime_text(mtime_ns: int, whole_seconds: bool = False) -> str:
    """``Thumb::MTime`` as the lister compares it. Tumbler (Thunar's thumbnailer) writes
    and compares seconds with microseconds: with whole seconds it remade every thumbnail
    from the original. GLib and libfm parse the integer part of that. KDE's KIO
    (Dolphin) compares ``toLongLong()`` of the text, which fails on a fraction, so it
    remade every thumbnail from the original: KDE listers get whole seconds."""
    if whole_seconds:
        return str(mtime_ns // 1_000_000_000)
    return "%d.%06d" % divmod(mtime_ns // 1000, 1_000_000)


def _proc_program(pid: int) -> bytes:
    """The executable's name (the request's pid may be a thread, whose comm is the
    thread's own name: Dolphin lists in a KIO worker thread)."""
    try:
        return os.path.basename(os.readlink(f"/proc/{pid}/exe".encode()))
    except OSError:
        return b""


def file_uri(path: bytes) -> bytes:
    """``file://`` URI of an absolute path, escaped as GLib does (the thumbnail's key)."""
    return b"file://" + quote(path, safe=URI_SAFE + "/").encode()


def cache_file(viewer: Viewer, size: str, uri: bytes) -> bytes:
    return os.path.join(viewer.cache_dir, b"thumbnails", size.encode(),
                        hashlib.md5(uri).hexdigest().encode() + b".png")


def _proc_environ(pid: int) -> dict[bytes, bytes]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read(1 << 20)
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key] = value
    return env


def _proc_groups(pid: int) -> frozenset[int]:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return frozenset()


def viewer_of(pid: int, uid: int, gid: int) -> Viewer | None:
    """The viewer behind a request: its cache from the process' own environment
    (``XDG_CACHE_HOME``, else ``$HOME/.cache``), else the passwd home; None if unknown."""
    env = _proc_environ(pid) if pid > 0 else {}
    cache = env.get(b"XDG_CACHE_HOME", b"")
    if not cache.startswith(b"/"):   # the spec: a relative value is ignored
        home = env.get(b"HOME", b"")
        if not home.startswith(b"/"):
            try:
                home = os.fsencode(pwd.getpwuid(uid).pw_dir)
            except KeyError:
                return None
        cache = os.path.join(home, b".cache")
    desktop = bool(env.get(b"DISPLAY") or env.get(b"WAYLAND_DISPLAY"))
    kde = pid > 0 and _proc_program(pid) in KDE_LISTERS
    return Viewer(uid, gid, _proc_groups(pid) if pid > 0 else frozenset(), cache, desktop, kde)


def _set_fs_ids(uid: int, gid: int) -> bool:
    """Switch this thread's filesystem ids; True if they are now exactly (uid, gid)."""
    _libc.setfsgid(gid)
    _libc.setfsuid(uid)
    return _libc.setfsuid(-1) == uid and _libc.setfsgid(-1) == gid


@contextlib.contextmanager
def as_user(viewer: Viewer) -> Iterator[bool]:
    """Inside, this thread's file accesses are the viewer's; yields False if that is impossible."""
    my_uid, my_gid = os.geteuid(), os.getegid()
    if (viewer.uid, viewer.gid) == (my_uid, my_gid):
        yield True
        return
    switched = _set_fs_ids(viewer.uid, viewer.gid)
    try:
        yield switched
    finally:
        if not _set_fs_ids(my_uid, my_gid):   # never leave a pool thread as someone else
            raise SystemExit("gffs: cannot restore the filesystem ids of a worker thread")


def thumbnail_text(path: bytes) -> dict[bytes, bytes]:
    """The tEXt chunks at the start of a thumbnail PNG (empty if it is none or unreadable)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return {}
    try:
        head = os.read(fd, HEADER_READ)
    except OSError:
        return {}
    finally:
        os.close(fd)
    if not head.startswith(PNG_SIGNATURE):
        return {}
    text, pos = {}, len(PNG_SIGNATURE)
    while pos + 8 <= len(head):
        length, kind = struct.unpack(">I4s", head[pos:pos + 8])
        if kind == b"IDAT" or kind == b"IEND":
            break
        if kind == b"tEXt" and pos + 8 + length <= len(head):
            key, _, value = head[pos + 8:pos + 8 + length].partition(b"\0")
            text[key] = value
        pos += 12 + length
    return text


def is_current(path: bytes, uri: bytes, mtime: str) -> bool:
    """Is there a thumbnail at *path* that every file manager accepts for this file now?"""
    text = thumbnail_text(path)
    return text.get(b"Thumb::URI") == uri and text.get(b"Thumb::MTime") == mtime.encode()


def missing(viewer: Viewer, wanted: list[tuple[str, bytes, str]]) -> list[int]:
    """Indexes of the (size, uri, mtime_text) in *wanted* the viewer's cache lacks (as the viewer)."""
    with as_user(viewer) as ok:
        if not ok:
            return []
        return [i for i, (size, uri, mtime) in enumerate(wanted)
                if not is_current(cache_file(viewer, size, uri), uri, mtime)]


def _make_dirs(path: bytes) -> None:
    """Create *path* and missing parents with mode 0700 (the spec's mode for the cache)."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent != path:
        _make_dirs(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass


def write(viewer: Viewer, items: list[tuple[str, bytes, bytes]]) -> int:
    """Store (size, uri, png) in the viewer's cache as the viewer: 0600 files, each written
    to a temporary name and renamed into place (the spec's rule for concurrent readers).
    Returns how many were written; a failure skips the file (the file manager makes its own)."""
    written = 0
    with as_user(viewer) as ok:
        if not ok:
            return 0
        for size, uri, png in items:
            target = cache_file(viewer, size, uri)
            tmp = target + b".gffs-%d-%d" % (os.getpid(), threading.get_ident())
            try:
                _make_dirs(os.path.dirname(target))
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                try:
                    view = memoryview(png)
                    while view:
                        view = view[os.write(fd, view):]
                finally:
                    os.close(fd)
                os.rename(tmp, target)
                written += 1
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
    return written
