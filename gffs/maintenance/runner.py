"""Run a maintenance job where the store is: in its mount daemon, or here.

An unmounted store is opened under the store lock (so no daemon can mount it
meanwhile); a mounted one is asked through the control socket. The job
function is the same in both cases.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

import trio

from gffs.config import Config
from gffs.errors import ConfigError, StoreLockedError
from gffs.exitcodes import is_interrupt
from gffs.maintenance.control import JobFailed, request_job
from gffs.maintenance.jobs import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_REFUSED, JobBusy,
                                   JobRefused, load_jobs, result_exit_code)
from gffs.maintenance.progress import Progress, for_stream
from gffs.store import Store


def run_job(cfg: Config, name: str, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """The job's result; raises JobRefused, JobBusy, JobFailed, ConfigError."""
    job = load_jobs().get(name)
    if job is None:
        raise ConfigError(f"no maintenance job named {name!r}")
    if not (cfg.index_dir / "data.mdb").exists():
        raise ConfigError(f"no gffs store at {cfg.data_dir}")
    try:
        store = Store(cfg, f"gffs-admin {name}")
    except StoreLockedError:
        try:
            return request_job(cfg.data_dir, name, args, progress)
        except ConnectionError as exc:
            raise JobFailed(f"the store is in use and {exc}") from None
    try:
        return trio.run(_run_here, store, job.fn, args, progress)
    except BaseExceptionGroup as group:  # trio nurseries wrap what their tasks raise
        raise _unwrap(group) from None
    finally:
        store.close()


def _unwrap(group: BaseExceptionGroup) -> BaseException:
    """Ctrl-C wins; a group of one is that one exception."""
    if is_interrupt(group):
        return KeyboardInterrupt()
    leaves = list(_leaves(group))
    return leaves[0] if len(leaves) == 1 else group


def _leaves(exc: BaseException):
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


async def _run_here(store: Store, fn, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    try:
        result = await fn(store, args, progress)
        progress.finish_phase()
        return result
    finally:
        with trio.CancelScope(shield=True):
            await store.chunks.sync()
            await store.chunks.close()


def cli_run(cfg: Config, name: str, args: dict[str, Any], *, json_output: bool,
            render: Callable[[dict[str, Any]], None]) -> int:
    """`gffs-admin` side of a job: progress on stderr, result as text or JSON, exit code."""
    return cli_report(name, lambda progress: run_job(cfg, name, args, progress),
                      json_output=json_output, render=render)


def cli_report(label: str, work: Callable[[Progress], dict[str, Any]], *, json_output: bool,
               render: Callable[[dict[str, Any]], None],
               failures: tuple[type[BaseException], ...] = (),
               interrupted: str = "what was done is kept, run it again to continue") -> int:
    """Run *work* with a progress display and turn its outcome into output and an exit code.

    *failures* are more exception types that mean "failed, one line"; refusals
    exit 4, Ctrl-C 130.
    """
    progress = for_stream(sys.stderr)
    try:
        result = work(progress)
    except KeyboardInterrupt:
        print(f"\ngffs-admin {label}: interrupted; {interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except JobRefused as exc:
        print(f"gffs-admin {label}: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except (JobBusy, JobFailed, *failures) as exc:
        print(f"gffs-admin {label}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if json_output:
        print(json.dumps(result, indent=2, default=str))
    else:
        render(result)
    return result_exit_code(result)
