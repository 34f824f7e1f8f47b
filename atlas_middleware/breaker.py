"""Circuit breakers for model endpoints on the call path: a teacher that is down, hangs or answers
500 is skipped for a cool-down instead of costing every call its timeouts.

One breaker per endpoint (:attr:`ChatModel.endpoint`), shared by every supervised function in
the process that uses it:

- **closed**: calls go through; ``failures`` failures in a row (errors a retry might fix, and
  timeouts) open it.
- **open**: calls are skipped at once for ``cooldown_s`` seconds.
- **half-open**: after the cool-down one call goes through as a trial (the others are still
  skipped); its success closes the breaker, its failure opens it for another cool-down.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


@dataclass(frozen=True, slots=True)
class BreakerState:
    endpoint: str
    state: str
    failures: int  # in a row
    opened: int  # times it opened since the process started
    skipped: int  # calls skipped while open


class CircuitBreaker:
    def __init__(self, endpoint: str, *, failures: int = 3, cooldown_s: float = 30.0) -> None:
        if failures < 1 or cooldown_s <= 0:
            raise ValueError("a breaker needs failures >= 1 and cooldown_s > 0")
        self.endpoint = endpoint
        self.threshold = failures
        self.cooldown_s = cooldown_s
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial = False  # a half-open trial call is in flight
        self._opened = 0
        self._skipped = 0

    def allow(self) -> bool:
        """Whether a call may go to the endpoint now; a True in half-open state is the trial,
        which must be followed by :meth:`success` or :meth:`failure`."""
        with self._lock:
            if self._state == CLOSED:
                return True
            if self._state == OPEN and time.monotonic() - self._opened_at >= self.cooldown_s:
                self._state, self._trial = HALF_OPEN, False
            if self._state == HALF_OPEN and not self._trial:
                self._trial = True
                return True
            self._skipped += 1
            return False

    def retry_in(self) -> float:
        """Seconds until the next trial call (0 when calls go through)."""
        with self._lock:
            if self._state != OPEN:
                return 0.0
            return max(0.0, self.cooldown_s - (time.monotonic() - self._opened_at))

    def success(self) -> None:
        with self._lock:
            self._state, self._failures, self._trial = CLOSED, 0, False

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._state == HALF_OPEN or self._failures >= self.threshold:
                if self._state != OPEN:
                    self._opened += 1
                self._state, self._opened_at, self._trial = OPEN, time.monotonic(), False

    def abandoned(self) -> None:
        """A call was cancelled before it could succeed or fail: it proves nothing, but a
        half-open trial cancelled this way counts as failed (the next trial comes after another
        cool-down) rather than leaving the breaker waiting for it forever."""
        with self._lock:
            if self._state == HALF_OPEN and self._trial:
                self._state, self._opened_at, self._trial = OPEN, time.monotonic(), False

    def snapshot(self) -> BreakerState:
        with self._lock:
            return BreakerState(
                self.endpoint, self._state, self._failures, self._opened, self._skipped
            )


_breakers: dict[str, CircuitBreaker] = {}
_registry_lock = threading.Lock()


def breaker_for(endpoint: str, *, failures: int = 3, cooldown_s: float = 30.0) -> CircuitBreaker:
    """The process's breaker for ``endpoint`` (made on first use with these settings; later
    callers share it as it is)."""
    with _registry_lock:
        breaker = _breakers.get(endpoint)
        if breaker is None:
            breaker = _breakers[endpoint] = CircuitBreaker(
                endpoint, failures=failures, cooldown_s=cooldown_s
            )
        return breaker


def breakers() -> list[BreakerState]:
    """Every endpoint's breaker, as it stands."""
    with _registry_lock:
        found = list(_breakers.values())
    return [b.snapshot() for b in found]


def reset() -> None:
    """Forget every breaker (tests; a process that knows its endpoints were replaced)."""
    with _registry_lock:
        _breakers.clear()
