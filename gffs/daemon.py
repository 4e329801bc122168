"""The mount daemon: open the store, mount, serve until unmounted, then make data safe.

`gffs mount` starts this in a new session and waits on a pipe: the daemon
writes "ok" once the kernel mount is up and requests are being served, or one
line of error. That is how `gffs mount` returns only when the mount is ready.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pyfuse3
import trio

from gffs.config import Config
from gffs.fs.filesystem import Filesystem
from gffs.fs.operations import Operations
from gffs.maintenance.backup import backup_loop, final_backup
from gffs.maintenance.control import ControlServer
from gffs.maintenance.jobs import add_job_modules
from gffs.share import JOB_MODULES as SHARE_JOBS
from gffs.mounts import find_mount
from gffs.store import Store

log = logging.getLogger("gffs.daemon")

READ_AHEAD_KB = 1024
FINAL_BACKUP_TIME = 300.0   # the index backup at unmount; the next mount's backups catch up


def mount_options(cfg: Config, extra: list[str]) -> tuple[set[str], bool]:
    """FUSE options for pyfuse3.init, and whether the mount is read-only."""
    opts = set(pyfuse3.default_options)
    opts |= {"fsname=gffs:" + str(cfg.data_dir).replace(",", "_"), "subtype=gffs"}
    read_only = False
    for opt in extra:
        if opt in ("ro",):
            read_only = True
            opts.add("ro")
        elif opt in ("rw", "defaults", "auto", "noauto", "user", "nouser", "_netdev", "nofail"):
            continue
        else:
            opts.add(opt)
    return opts, read_only


def _notify(ready_fd: int | None, message: str) -> None:
    if ready_fd is None:
        return
    try:
        os.write(ready_fd, (message + "\n").encode())
        os.close(ready_fd)
    except OSError:
        pass


async def _serve(store: Store, fs: Filesystem, mountpoint: str, opts: set[str],
                 ready_fd: int | None) -> None:
    await store.check_backends()   # a missing bucket is one line and exit 2 now, not EIO later
    if fs.read_only:
        await _serve_mounted(store, fs, mountpoint, opts, ready_fd)
    else:
        # one group transaction for many requests; the final commit at the end of the block
        async with store.index.grouped(store.chunks.sync_backends):
            await _serve_mounted(store, fs, mountpoint, opts, ready_fd)
        with trio.move_on_after(FINAL_BACKUP_TIME):
            await final_backup(store)
    log.info("unmounted %s; data is safe", mountpoint)


async def _serve_mounted(store: Store, fs: Filesystem, mountpoint: str, opts: set[str],
                         ready_fd: int | None) -> None:
    await fs.start(os.getuid(), os.getgid())
    pyfuse3.init(Operations(fs, os.path.abspath(mountpoint)), mountpoint, opts)
    kernel_unmounted = False
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(fs.run_background)
            add_job_modules(SHARE_JOBS)   # the daemon serves the sharing jobs too
            await nursery.start(ControlServer(store).serve)
            if not fs.read_only:
                nursery.start_soon(backup_loop, store, store.cfg.index_backup_interval)
                if any(getattr(b, "read_only", False) for b in store.backends.values()):
                    from gffs.share.follow import follow_loop
                    nursery.start_soon(follow_loop, store)   # flows following IPNS names
            terminated = trio.Event()

            async def on_signals() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
                    async for _ in sigs:
                        log.info("signal received: unmounting")
                        terminated.set()
                        pyfuse3.terminate()
                        return

            nursery.start_soon(on_signals)

            async def tune_readahead() -> None:
                await trio.sleep(0.2)  # the kernel resets it while it handles FUSE INIT
                _raise_readahead(mountpoint)

            nursery.start_soon(tune_readahead)
            _notify(ready_fd, "ok")
            log.info("mounted %s", mountpoint)
            await pyfuse3.main()
            # main() returns by itself when the kernel unmounted us, or after terminate()
            kernel_unmounted = not terminated.is_set()
            nursery.cancel_scope.cancel()
    finally:
        await fs.shutdown()
        pyfuse3.close(unmount=not kernel_unmounted)


def _raise_readahead(mountpoint: str, kb: int = READ_AHEAD_KB) -> None:
    """Let the kernel read ahead in 1 MiB steps (one block) instead of 128 KiB.

    FUSE mounts start with the VM default; the knob is the mount's backing
    device info in sysfs, writable by root. Without it reads still work.
    """
    entry = find_mount(mountpoint)
    if entry is None or not entry.dev:
        return
    try:
        Path(f"/sys/class/bdi/{entry.dev}/read_ahead_kb").write_text(str(kb))
    except OSError as exc:
        log.debug("cannot raise read-ahead of %s: %s", mountpoint, exc)


def run(cfg: Config, mountpoint: str, extra_opts: list[str], ready_fd: int | None = None) -> int:
    """Mount and serve in this process; returns the exit code."""
    opts, read_only = mount_options(cfg, extra_opts)
    try:
        store = Store(cfg, f"mounted at {os.path.abspath(mountpoint)}", read_only=read_only)
    except Exception as exc:
        _notify(ready_fd, f"error: {exc}")
        raise
    try:
        fs = Filesystem(store.index, store.chunks, read_only=read_only,
                        analyze_images=cfg.analyze_images)
        trio.run(_serve, store, fs, mountpoint, opts, ready_fd)
    except Exception as exc:
        _notify(ready_fd, f"error: {exc}")
        raise
    finally:
        store.close()
    return 0


def setup_logging(cfg: Config, foreground: bool, debug: bool = False) -> None:
    level = logging.DEBUG if debug else logging.INFO
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    if foreground and cfg.log_file is None:
        logging.basicConfig(level=level, format=fmt)
    else:
        path = cfg.log_file or (cfg.data_dir / "gffs.log")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        logging.basicConfig(level=level, format=fmt, filename=str(path))
    logging.getLogger("pyfuse3").setLevel(logging.WARNING)
    # their DEBUG output carries request headers (credentials): never let it through
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3", "googleapiclient",
                  "google.auth", "requests"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
