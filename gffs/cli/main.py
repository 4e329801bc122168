"""`gffs` — mount and unmount a store.

    gffs mount [MOUNTPOINT] [--config FILE] [--data-dir DIR] [-o OPT,...] [--foreground]
    gffs umount MOUNTPOINT

Exit codes: gffs/exitcodes.py (the same table as gffs-admin). Imports stay
light until a command needs more: the daemon loads pyfuse3 and only the
backends its config names.
"""

from __future__ import annotations

import argparse
import os
import select
import subprocess
import sys
import time
from pathlib import Path

from gffs.exitcodes import EXIT_FAILED, EXIT_USAGE, run_cli

# gffs modules are imported inside the commands: a Ctrl-C while they load is then
# caught by run_cli (one line, exit 130) instead of printing a traceback

DEFAULT_MOUNTPOINT = "~/gloflow"
READY_TIMEOUT = 120.0


def _fail(message: str, code: int = EXIT_FAILED) -> int:
    print(f"gffs: {message}", file=sys.stderr)
    return code


def _split_opts(values: list[str] | None) -> list[str]:
    return [o for v in values or [] for o in v.split(",") if o]


def cmd_mount(args: argparse.Namespace) -> int:
    from gffs.mounts import find_mount
    from gffs.config import load_config
    from gffs.errors import ConfigError
    try:
        cfg = load_config(args.config, args.data_dir)
        if args.foreground or any(bc.encrypt for bc in cfg.backends):
            # an encrypted store's key: present and right, or exit 2 now. The daemon
            # (foreground) checks it all; before forking it only a passphrase needs
            # the terminal, and the check's imports (trio, LMDB) cost about 0.4 s
            from gffs.crypto.setup import preflight
            preflight(cfg)
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    mountpoint = os.path.abspath(os.path.expanduser(args.mountpoint))
    existing = find_mount(mountpoint)
    if existing is not None and _is_dead_gffs_mount(existing):
        # the daemon of an earlier mount crashed: its mount point only answers ENOTCONN
        print(f"gffs: clearing the dead mount left at {mountpoint} by a crashed daemon",
              file=sys.stderr)
        subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True)
        existing = find_mount(mountpoint)
    if existing is not None:
        return _fail(f"{mountpoint} is already a mount point ({existing.fstype} {existing.source})")
    try:
        Path(mountpoint).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return _fail(f"cannot create mount point {mountpoint}: {exc.strerror}")
    if not os.path.isdir(mountpoint):
        return _fail(f"{mountpoint} is not a directory")
    if not os.path.exists("/dev/fuse"):
        return _fail("/dev/fuse is missing: install fuse3 and load the fuse module")
    opts = _split_opts(args.o)
    if args.foreground:
        return _run_foreground(cfg, mountpoint, opts, args)
    return _spawn_daemon(args, mountpoint)


def _run_foreground(cfg, mountpoint: str, opts: list[str], args: argparse.Namespace) -> int:
    from gffs import daemon
    from gffs.errors import ConfigError, StoreLockedError
    daemon.setup_logging(cfg, foreground=args.ready_fd is None, debug=args.debug)
    try:
        return daemon.run(cfg, mountpoint, opts, args.ready_fd)
    except (ConfigError, StoreLockedError) as exc:
        return _fail(str(exc), EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED)
    except Exception as exc:
        import logging
        logging.getLogger("gffs").exception("mount failed")
        return _fail(f"mount failed: {exc}")


def _spawn_daemon(args: argparse.Namespace, mountpoint: str) -> int:
    r, w = os.pipe()
    cmd = [sys.executable, "-m", "gffs.cli.main", "mount", mountpoint, "--foreground",
           "--ready-fd", str(w)]
    if args.config:
        cmd += ["--config", os.path.abspath(os.path.expanduser(args.config))]
    if args.data_dir:
        cmd += ["--data-dir", os.path.abspath(os.path.expanduser(args.data_dir))]
    for o in args.o or []:
        cmd += ["-o", o]
    if args.debug:
        cmd.append("--debug")
    proc = subprocess.Popen(cmd, pass_fds=(w,), start_new_session=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.close(w)
    deadline = time.monotonic() + READY_TIMEOUT
    data = b""
    with os.fdopen(r, "rb", buffering=0) as pipe:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([pipe], [], [], 0.5)
            if ready:
                chunk = pipe.read(4096)
                if not chunk:
                    break
                data += chunk
                if data.endswith(b"\n"):
                    break
            elif proc.poll() is not None:
                break
    message = data.decode(errors="replace").strip()
    if message == "ok":
        proc.stderr.close()
        return 0
    try:
        code = proc.wait(timeout=5 if not message else 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        if not message:
            return _fail(f"mount did not become ready within {READY_TIMEOUT:.0f}s")
        code = EXIT_FAILED
    if not message:
        err = proc.stderr.read().decode(errors="replace").strip().splitlines()
        message = err[-1] if err else f"daemon exited with status {proc.returncode}"
    # the daemon's own exit code says which kind of failure (a config mistake is 2)
    return _fail(message.removeprefix("gffs: ").removeprefix("error: "),
                 code if code == EXIT_USAGE else EXIT_FAILED)


def _is_dead_gffs_mount(entry) -> bool:
    """A gffs mount whose store lock nobody holds: its daemon is gone."""
    from gffs.mounts import gffs_data_dir
    from gffs.store import StoreLock
    data_dir = gffs_data_dir(entry)
    return data_dir is not None and StoreLock.wait_free(Path(data_dir) / "gffs.lock", 0)


def cmd_umount(args: argparse.Namespace) -> int:
    from gffs.mounts import find_mount, gffs_data_dir
    mountpoint = os.path.abspath(os.path.expanduser(args.mountpoint))
    entry = find_mount(mountpoint)
    if entry is None:
        return _fail(f"{mountpoint} is not mounted")
    data_dir = gffs_data_dir(entry)
    if data_dir is None:
        return _fail(f"{mountpoint} is not a gffs mount ({entry.fstype})")
    lock = Path(data_dir) / "gffs.lock"
    daemon = _daemon_of(lock)   # before unmounting: the daemon empties the lock file on release
    res = subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True, text=True)
    if res.returncode != 0:
        return _fail(res.stderr.strip() or f"fusermount3 -u {mountpoint} failed")
    from gffs.store import StoreLock
    deadline = time.monotonic() + args.timeout
    if not StoreLock.wait_free(lock, args.timeout) or not _wait_exited(daemon, deadline):
        return _fail(f"unmounted, but the daemon is still writing after {args.timeout:.0f}s")
    return 0


def _daemon_of(lock: Path) -> tuple[int, str] | None:
    """(pid, start time) of the process holding the store lock, from the lock file."""
    import re
    try:
        found = re.search(r"\(pid (\d+)\)", lock.read_text())
    except OSError:
        return None
    if found is None:
        return None
    pid = int(found[1])
    started = _start_time(pid)
    return (pid, started) if started else None


def _start_time(pid: int) -> str:
    """The process' start time in clock ticks ("" when gone or a zombie): tells a reused pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return ""
    return "" if fields[0] in ("Z", "X") else fields[19]


def _wait_exited(daemon: tuple[int, str] | None, deadline: float) -> bool:
    """Wait until the daemon process is gone: releasing the lock is not its last act (the
    README promises that umount returns once the daemon has finished)."""
    if daemon is None:
        return True
    pid, started = daemon
    while _start_time(pid) == started:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gffs", description="GloFlow image filesystem")
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("mount", help="mount a store (default: the store under $XDG_DATA_HOME/gffs)")
    m.add_argument("mountpoint", nargs="?", default=DEFAULT_MOUNTPOINT)
    m.add_argument("--config", help="TOML configuration file")
    m.add_argument("--data-dir", help="store directory (index and default local backend)")
    m.add_argument("-o", action="append", metavar="OPT[,OPT...]",
                   help="mount options: ro, allow_other, ...")
    m.add_argument("-f", "--foreground", action="store_true", help="do not daemonize; log to stderr")
    m.add_argument("--debug", action="store_true", help="debug logging")
    m.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    m.set_defaults(func=cmd_mount)
    u = sub.add_parser("umount", aliases=["unmount"], help="unmount and wait until data is safe")
    u.add_argument("mountpoint")
    u.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the daemon")
    u.set_defaults(func=cmd_umount)
    return p


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args = build_parser().parse_args(argv)
        return args.func(args)
    return run_cli("gffs", body)


if __name__ == "__main__":
    sys.exit(main())
