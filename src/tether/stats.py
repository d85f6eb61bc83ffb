"""Counters and histograms as plain numbers, cheap enough for the gateway's hot paths.

The gateway and the bus count what they do in plain `int` attributes and `Histogram` objects;
`tether.ops.metrics` reads them when Prometheus scrapes. Incrementing an attribute costs tens of
nanoseconds. prometheus_client's `Counter.inc()` takes a lock and costs about ten times that,
which would show on a path that runs once per heartbeat.
"""

from __future__ import annotations

from bisect import bisect_left

__all__ = ["LATENCY_BUCKETS", "Histogram"]

# Upper bounds in seconds for latencies from sub-millisecond hops to multi-second stalls.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class Histogram:
    """Observations counted into buckets with fixed upper bounds, as Prometheus exposes them.

    `counts[i]` contains the observations above `bounds[i - 1]` and at most `bounds[i]`; the last
    entry counts those above every bound. Not cumulative: the exporter sums them up.
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        """Create an empty histogram; bounds must be sorted and distinct."""
        if list(bounds) != sorted(set(bounds)):
            raise ValueError(f"histogram bounds must be sorted and distinct, got {bounds}")
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        """Sum of every observed value."""

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        """Number of observations."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """Return (upper bound, observations at or below it) pairs, ending with infinity."""
        pairs: list[tuple[float, int]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            pairs.append((bound, running))
        return pairs
