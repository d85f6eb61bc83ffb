"""Event loop lag: how late the loop runs a callback that was due.

Every callback of a tether process runs on one event loop, so one slow callback (a large
garbage collection, a blocking call, CPU saturation) delays every heartbeat and delivery
behind it. `LoopLagMonitor` schedules one timer per process (never one per connection),
measures how late it fires, and logs a warning when the lag passes a threshold.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from tether.stats import Histogram

__all__ = ["LoopLagMonitor"]

logger = logging.getLogger("tether.loop")


@dataclass(slots=True)
class LagStats:
    """Lag figures since the monitor started, in seconds."""

    last: float = 0.0
    maximum: float = 0.0
    samples: int = 0
    warnings: int = 0
    """Samples at or above the threshold."""
    histogram: Histogram = field(default_factory=Histogram)
    """Every sample, for the metrics endpoint."""


class LoopLagMonitor:
    """A timer that measures the event loop's lag every `interval` seconds."""

    def __init__(self, *, interval: float = 0.5, threshold: float = 0.1) -> None:
        """Prepare a monitor; a threshold of 0 measures without logging."""
        if interval <= 0:
            raise ValueError(f"loop lag interval must be positive, got {interval}")
        if threshold < 0:
            raise ValueError(f"loop lag threshold must not be negative, got {threshold}")
        self.interval = interval
        self.threshold = threshold
        self.stats = LagStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        """Schedule the first measurement on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._schedule()

    def stop(self) -> None:
        """Cancel the pending measurement."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self) -> None:
        assert self._loop is not None
        self._due = self._loop.time() + self.interval
        self._timer = self._loop.call_at(self._due, self._measure)

    def _measure(self) -> None:
        assert self._loop is not None
        lag = max(0.0, self._loop.time() - self._due)
        stats = self.stats
        stats.last = lag
        stats.maximum = max(stats.maximum, lag)
        stats.samples += 1
        stats.histogram.observe(lag)
        if self.threshold and lag >= self.threshold:
            stats.warnings += 1
            logger.warning(
                "event loop lagged %.0f ms (threshold %.0f ms): every connection waited",
                lag * 1000,
                self.threshold * 1000,
            )
        self._schedule()
