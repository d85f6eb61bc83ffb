"""A circuit breaker for calls to a backend, without I/O: the caller reports each outcome.

    CLOSED --(failure_threshold failures in a row)--> OPEN
    OPEN --(reset_timeout passed, next call)--> HALF_OPEN: one trial call goes through
    HALF_OPEN --(trial succeeds)--> CLOSED
    HALF_OPEN --(trial fails)--> OPEN, for another reset_timeout

While the breaker is open, calls fail at once instead of waiting for a backend that is down,
so clients get a retryable error within milliseconds and the backend gets room to recover.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(enum.Enum):
    """States of a circuit breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    """Count failures of calls to one backend and stop calling it while it keeps failing."""

    __slots__ = ("_clock", "_failures", "_opened_at", "_trial", "failure_threshold",
                 "reset_timeout", "state")  # fmt: skip

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Open after failure_threshold failures in a row; try again after reset_timeout s."""
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, got {failure_threshold}")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.state = BreakerState.CLOSED
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self._trial = False  # a half-open trial call is in flight

    def allow(self) -> bool:
        """Tell whether a call may go to the backend now; call this before each attempt."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self.reset_timeout:
                return False
            self.state = BreakerState.HALF_OPEN
            self._trial = False
        if self._trial:
            return False  # one trial at a time while half-open
        self._trial = True
        return True

    def record_success(self) -> None:
        """Report a call that got a response from the backend: the breaker closes."""
        self.state = BreakerState.CLOSED
        self._failures = 0
        self._trial = False

    def abandon(self) -> None:
        """Report a call that ended with no outcome (cancelled): a new trial may start."""
        self._trial = False

    def record_failure(self) -> None:
        """Report a call that failed (timeout, connection error, 5xx)."""
        self._failures += 1
        if self.state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
            self.state = BreakerState.OPEN
            self._opened_at = self._clock()
            self._trial = False
