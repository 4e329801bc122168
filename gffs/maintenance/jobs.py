"""Maintenance jobs: one registry, run the same way mounted or unmounted.

A job is ``async def fn(store, args, progress) -> dict``. `gffs-admin` runs it
in the mount daemon through the control socket when the store is mounted, or
opens the store itself when it is not; either way the same function does the
work, so the results are the same.

A job reports progress through *progress* and returns a JSON-able result. It
raises JobRefused for a plan it will not carry out (exit code 4), and returns
``{"exit_code": 3, ...}`` when it stopped at a limit and a rerun continues.
Jobs must be safe to cancel at any await (Ctrl-C, a dropped control
connection, kill -9): what they change is checkpointed in the index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable

from gffs.exitcodes import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_LIMIT,  # noqa: F401 (re-exported)
                            EXIT_OK, EXIT_REFUSED, EXIT_USAGE)
from gffs.maintenance.progress import Progress

if TYPE_CHECKING:
    from gffs.store import Store

JobFn = Callable[["Store", dict, Progress], Awaitable[dict]]


class JobRefused(Exception):
    """The job will not run as asked (would lose copies, fill a backend...)."""


class JobBusy(Exception):
    """Another maintenance job is running on this store."""


@dataclass(frozen=True)
class Job:
    name: str
    fn: JobFn
    writes: bool = True   # False: read-only, may run beside another job


JOBS: dict[str, Job] = {}


def job(name: str, *, writes: bool = True) -> Callable[[JobFn], JobFn]:
    """Register a maintenance job under *name* (what the control socket asks for)."""
    def register(fn: JobFn) -> JobFn:
        JOBS[name] = Job(name, fn, writes)
        return fn
    return register


# modules whose import registers jobs: maintenance's own; a layer above (sharing) adds
# its modules through add_job_modules, called by the entry points that know both
JOB_MODULES: list[str] = ["gffs.maintenance.rebalance", "gffs.maintenance.drain",
                          "gffs.maintenance.gc", "gffs.maintenance.fsck",
                          "gffs.maintenance.backup", "gffs.maintenance.rotate",
                          "gffs.maintenance.commit"]


def add_job_modules(modules: Iterable[str]) -> None:
    """Register the job modules of a layer above maintenance (gffs.share.JOB_MODULES)."""
    JOB_MODULES.extend(m for m in modules if m not in JOB_MODULES)


def load_jobs() -> dict[str, Job]:
    """Import every module that registers jobs, then return the registry."""
    import importlib
    for module in JOB_MODULES:
        importlib.import_module(module)
    return JOBS


def result_exit_code(result: dict[str, Any]) -> int:
    return int(result.get("exit_code", EXIT_OK))
