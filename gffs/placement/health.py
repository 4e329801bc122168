"""Backend health: a circuit breaker per backend, so one that is down fails fast.

After a temporary failure a backend is skipped for a while (doubling up to a
minute) instead of making every request wait for its timeout; after a "full"
answer it receives no new chunks for a minute. Reads still try a skipped
backend as a last resort.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

FIRST_BACKOFF = 2.0
MAX_BACKOFF = 60.0
FULL_BACKOFF = 60.0


@dataclass
class _State:
    down_until: float = 0.0
    backoff: float = 0.0
    full_until: float = 0.0
    last_error: str = ""


class Health:
    def __init__(self, clock=time.monotonic, max_backoff: float = MAX_BACKOFF) -> None:
        self._clock = clock
        self.max_backoff = max_backoff
        self._states: dict[str, _State] = {}

    def _state(self, name: str) -> _State:
        return self._states.setdefault(name, _State())

    def available(self, name: str) -> bool:
        return self._clock() >= self._state(name).down_until

    def writable(self, name: str) -> bool:
        s = self._state(name)
        now = self._clock()
        return now >= s.down_until and now >= s.full_until

    def failed(self, name: str, error: str) -> None:
        s = self._state(name)
        s.backoff = min(self.max_backoff, s.backoff * 2 if s.backoff else FIRST_BACKOFF)
        if self.available(name):
            log.warning("backend %s is unavailable (%s); skipping it for %.0f s", name, error, s.backoff)
        s.down_until = self._clock() + s.backoff
        s.last_error = error

    def full(self, name: str, error: str) -> None:
        s = self._state(name)
        if self._clock() >= s.full_until:
            log.warning("backend %s is full (%s); no new chunks for %.0f s", name, error, FULL_BACKOFF)
        s.full_until = self._clock() + min(FULL_BACKOFF, self.max_backoff)
        s.last_error = error

    def succeeded(self, name: str) -> None:
        s = self._state(name)
        if s.backoff:
            log.info("backend %s is back", name)
        s.down_until = 0.0
        s.backoff = 0.0

    def describe(self, name: str) -> str:
        s = self._state(name)
        if not self.available(name):
            return f"down ({s.last_error})"
        if not self.writable(name):
            return f"full ({s.last_error})"
        return "ok"
