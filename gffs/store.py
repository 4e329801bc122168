"""Opening a store: the single-writer lock, the index, backends, placement, chunk store.

Shared by the mount daemon and gffs-admin so both see the same store the same way.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from gffs.config import Config
from gffs.errors import ConfigError, StoreLockedError
from gffs.index import Index
from gffs.index.env import DRAINING
from gffs.placement import FlowPolicy, Health, Placement
from gffs_backends.base import Backend, BackendError, load_backend_class

if TYPE_CHECKING:   # the chunk store is imported by Store only: gffs-admin status needs none of it
    from gffs.chunks.staging import Staging

log = logging.getLogger("gffs.store")


class StoreLock:
    """Exclusive flock on <data_dir>/gffs.lock; holds the owner's pid and mount point."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self, purpose: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StoreLockedError(f"store {self.path.parent} is in use: {holder}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{purpose} (pid {os.getpid()})\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = None

    @staticmethod
    def wait_free(path: Path, timeout: float) -> bool:
        """Block until nobody holds the lock (the daemon has exited) or *timeout* passes."""
        import time
        deadline = time.monotonic() + timeout
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return True
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        return False
                    time.sleep(0.05)
        finally:
            os.close(fd)


def open_backends(cfg: Config, index: Index | None = None,
                  store_id: str | None = None) -> dict[str, Backend]:
    """The configured backends, those marked ``encrypt`` wrapped in CryptBackend.

    With *index* the store's key is found (or made at first use) and checked;
    without it and without *store_id* each encrypted backend learns its store
    from its own marker (a fresh machine reading backups).
    """
    backends: dict[str, Backend] = {}
    for bc in cfg.backends:
        try:
            cls = load_backend_class(bc.type)
        except LookupError as exc:
            raise ConfigError(f"{cfg.source} [backends.{bc.name}]: {exc}") from None
        try:
            backends[bc.name] = cls.from_config(bc.name, bc.options)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"{cfg.source} [backends.{bc.name}]: {exc}") from None
        backends[bc.name].deferred = bc.deferred
    if index is None and not any(bc.encrypt for bc in cfg.backends):
        return backends     # nothing to wrap or check: skip importing cryptography
    from gffs.crypto.setup import wrap_backends
    return wrap_backends(cfg, backends, index, store_id)


async def check_backends(backends: dict[str, Backend], timeout: float) -> dict[str, str]:
    """Backend.check() of all *backends* at once, each bounded by *timeout*: name -> problem."""
    problems: dict[str, str] = {}

    async def one(name: str, backend: Backend) -> None:
        try:
            with trio.fail_after(timeout):
                await backend.check()
        except trio.TooSlowError:
            problems[name] = f"{name}: no answer within {timeout:g} s"
        except BackendError as exc:
            problems[name] = str(exc) or type(exc).__name__
        except Exception as exc:  # noqa: BLE001 (a backend's bug: still one line, not a hang)
            problems[name] = f"{name}: check failed: {type(exc).__name__}: {exc}"

    async with trio.open_nursery() as nursery:
        for name, backend in backends.items():
            nursery.start_soon(one, name, backend)
    return problems


def require_backends(cfg: Config, problems: dict[str, str]) -> None:
    """ConfigError naming every failed backend the config does not mark optional; log the rest."""
    optional = {bc.name for bc in cfg.backends if bc.optional}
    for name in sorted(set(problems) & optional):
        log.warning("optional backend unusable, mounting without it: %s", problems[name])
    required = sorted(set(problems) - optional)
    if required:
        what = "; ".join(f"[backends.{n}] {problems[n].removeprefix(n + ': ')}" for n in required)
        raise ConfigError(f"{cfg.source} {what}; with optional = true the store mounts without it")


def build_placement(cfg: Config, backends: dict[str, Backend]) -> Placement:
    """The placement policy of the config over opened backends (drains not applied)."""
    pol = cfg.placement
    try:
        return Placement(
            list(backends.values()), pol.copies if pol else 1,
            default_backends=pol.backends if pol else None,
            weights=pol.weights if pol else None,
            flows={name: FlowPolicy(p.copies, p.backends, p.weights)
                   for name, p in cfg.flows.items()},
            health=Health(max_backoff=cfg.backend_retry_max))
    except ValueError as exc:
        raise ConfigError(f"{cfg.source} [placement]: {exc}") from None


def open_staging(cfg: Config, backends: dict[str, Backend]) -> Staging | None:
    """The staging area, where a store has remote backends (or staged chunks from before)."""
    remote = any(type(b).__name__ != "LocalBackend" for b in backends.values())
    if not (remote and cfg.staging_mb) and not cfg.staging_dir.is_dir():
        return None     # (staged chunks of an earlier config stay readable and are uploaded)
    from gffs.chunks.staging import Staging
    return Staging(cfg.staging_dir, cfg.staging_mb << 20)


class Store:
    """Everything below the filesystem layer, opened under the store lock."""

    def __init__(self, cfg: Config, purpose: str, *, read_only: bool = False) -> None:
        """*read_only*: the index is opened read-only, so nothing can change it (-o ro)."""
        self.cfg = cfg
        self.lock = StoreLock(cfg.lock_file)
        self.lock.acquire(purpose)
        try:
            self.index = Index(cfg.index_dir, readonly=read_only,
                               block_size=cfg.block_size_kb << 10)
            self.backends = open_backends(cfg, self.index)
            self.placement = build_placement(cfg, self.backends)
            with self.index.read() as txn:
                self.placement.draining = set(self.index.meta_json(txn, DRAINING, []))
            from gffs.chunks.store import ChunkStore
            self.chunks = ChunkStore(self.index, self.backends, self.placement,
                                     cache_bytes=cfg.cache_mb << 20,
                                     backend_timeout=cfg.backend_timeout,
                                     staging=open_staging(cfg, self.backends))
            for backend in self.backends.values():
                backend.attach_index(self.index)   # e.g. a share source's keys
            # a store made before the per-backend counters gets them counted once,
            # here, before the daemon serves anything (one scan of the chunk table)
            if not read_only:
                self.chunks.chunkmap.ensure_backend_counts()
        except BaseException:
            if hasattr(self, "index"):
                self.index.close()
            self.lock.release()
            raise

    @property
    def read_only(self) -> bool:
        return self.index.readonly

    async def check_backends(self) -> None:
        """Fail early: ConfigError (exit 2) when a backend the config needs is not usable."""
        require_backends(self.cfg, await check_backends(self.backends, self.cfg.backend_timeout))

    def close(self) -> None:
        try:
            self.index.close()
        finally:
            self.lock.release()
