"""The one exit-code table of `gffs` and `gffs-admin`, and how a CLI ends.

Both commands (and the maintenance jobs whose results carry an exit code) take
their codes from here, so a script sees the same number for the same outcome
whichever command it ran; README.md ("Exit codes") prints this table.

This module must stay cheap to import: it is loaded before anything else so
that a Ctrl-C during startup already ends as "interrupted" (130, one line).
"""

from __future__ import annotations

import signal
import sys
from typing import Callable

EXIT_OK = 0
EXIT_FAILED = 1         # failed, or problems left (fsck), or the store is in use
EXIT_USAGE = 2          # bad usage or config, incl. a backend the config names that cannot be used
EXIT_LIMIT = 3          # stopped at --time-limit/--size-limit: run again to continue
EXIT_REFUSED = 4        # plan or job refused, nothing changed (would drop copies, read-only mount)
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)

TABLE: dict[int, str] = {
    EXIT_OK: "done",
    EXIT_FAILED: "failed, or problems left; the store is in use by another process",
    EXIT_USAGE: "bad usage or configuration (file, table and key named), or a configured "
                "backend that is missing or unreachable at mount (unless optional = true)",
    EXIT_LIMIT: "stopped at --time-limit/--size-limit (run again to continue)",
    EXIT_REFUSED: "refused, nothing changed (a plan that would drop copies or fill a backend; "
                  "a writing job on a read-only mount)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); what was done is kept",
}


def is_interrupt(exc: BaseException) -> bool:
    """A KeyboardInterrupt, also when a trio nursery wrapped it in an exception group."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(lambda e: isinstance(e, KeyboardInterrupt)) is not None
    return isinstance(exc, KeyboardInterrupt)


def run_cli(prog: str, body: Callable[[], int]) -> int:
    """Run a command's *body*; Ctrl-C at any point (imports included) is one line and 130.

    *body* does its own imports, so an interrupt while heavy libraries load is
    caught here too. A second Ctrl-C while we say goodbye is ignored.
    """
    try:
        return body()
    except BaseException as exc:
        if not is_interrupt(exc):
            raise
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
