"""The load of one gateway, sampled every few seconds for the admin dashboard.

`LoadSampler` reads a gateway's counters and tables, the loop lag monitor and the process's
CPU time and memory, and turns the counter increments since its previous sample into rates
per second. `LoadReporter` takes a sample every `interval` seconds on one task per process
(never one per connection) and keeps the latest one. In a cluster it also writes each sample
to Redis (`tether.ops.load_board`), where the dashboard of any process reads the loads of
every live gateway.

A sample reads a few dozen integers and visits no connection, so its cost does not grow with
the number of connections.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tether.bus.redis import cancel_and_wait
from tether.ops.process_stats import cpu_seconds, resident_bytes
from tether.protocol.codes import Code
from tether.protocol.errors import BusError

if TYPE_CHECKING:
    from tether.gateway import Gateway
    from tether.loop_lag import LoopLagMonitor
    from tether.ops.load_board import RedisLoadBoard

__all__ = [
    "COUNTERS",
    "MAX_MAGNITUDE",
    "GatewayLoad",
    "LoadReporter",
    "LoadSampler",
    "counter_totals",
]

logger = logging.getLogger("tether.ops.load")

COUNTERS = (
    "connections_accepted",
    "presence_transitions",
    "presence_updates",
    "messages",
    "deliveries",
    "heartbeats",
    "slow_consumer_disconnects",
)
"""Counters a load sample carries as totals since start and as rates per second."""
MAX_MAGNITUDE = 2**53
"""Largest absolute value of a number in a load read back: the largest integer a JavaScript
number represents exactly. Sums over any number of gateways the dashboard lists stay finite, so
its JSON never contains Infinity, which browsers cannot parse."""


def counter_totals(gateway: Gateway) -> dict[str, int]:
    """Return every counter of COUNTERS for gateway, as counted since it started."""
    counters = gateway.counters
    return {
        "connections_accepted": sum(counters.accepted.values()),
        "presence_transitions": sum(counters.transitions.values()),
        "presence_updates": counters.presence_out,
        "messages": counters.sends,
        "deliveries": counters.deliveries,
        "heartbeats": counters.heartbeats,
        "slow_consumer_disconnects": counters.disconnects.get(Code.SLOW_CONSUMER, 0),
    }


@dataclass(frozen=True, kw_only=True, slots=True)
class GatewayLoad:
    """One sample of a gateway's load; the JSON of the dashboard and of Redis has its fields."""

    gateway_id: str
    sampled_at_ms: int
    """When the sample was taken, in Unix milliseconds."""
    started_at_ms: int
    """When the gateway's sampler started, in Unix milliseconds."""
    interval_s: float
    """Seconds the rates span: the time since the previous sample, 0 for the first one."""
    connections: int
    """Client connections open now, logged in or not."""
    sessions: int
    """Logged-in sessions (devices) open now."""
    users: int
    """Users with at least one session on this gateway."""
    watched_users: int
    """Users whose presence a connection of this gateway watches."""
    pending_requests: int
    """Requests to logic or presence waiting for a reply."""
    loop_lag_ms: float
    """Mean event loop lag over the interval, in milliseconds."""
    loop_lag_max_ms: float
    """Largest event loop lag since the process started, in milliseconds."""
    cpu_percent: float
    """CPU time used over the interval, as a percentage of one core."""
    resident_bytes: int
    """Resident memory of the process; 0 where /proc is missing."""
    rates: dict[str, float]
    """Each counter of COUNTERS, per second over the interval."""
    totals: dict[str, int]
    """Each counter of COUNTERS since the gateway started."""

    def to_json(self) -> dict[str, Any]:
        """Return the sample as a JSON object."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: object) -> GatewayLoad:
        """Return the sample a JSON object describes; raise ValueError when it is malformed.

        A counter or number the object lacks reads as 0, so gateways of an older or newer
        version can share one dashboard. gateway_id and sampled_at_ms are required.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a gateway load must be a JSON object, not {type(data).__name__}")
        gateway_id = data.get("gateway_id")
        if not isinstance(gateway_id, str) or not gateway_id:
            raise ValueError("a gateway load needs a gateway_id string")
        if data.get("sampled_at_ms") is None:
            raise ValueError(f"the load of {gateway_id} has no sampled_at_ms")
        return cls(
            gateway_id=gateway_id,
            sampled_at_ms=_integer(data, "sampled_at_ms"),
            started_at_ms=_integer(data, "started_at_ms"),
            interval_s=_number(data, "interval_s"),
            connections=_integer(data, "connections"),
            sessions=_integer(data, "sessions"),
            users=_integer(data, "users"),
            watched_users=_integer(data, "watched_users"),
            pending_requests=_integer(data, "pending_requests"),
            loop_lag_ms=_number(data, "loop_lag_ms"),
            loop_lag_max_ms=_number(data, "loop_lag_max_ms"),
            cpu_percent=_number(data, "cpu_percent"),
            resident_bytes=_integer(data, "resident_bytes"),
            rates={name: _number(data.get("rates"), name) for name in COUNTERS},
            totals={name: _integer(data.get("totals"), name) for name in COUNTERS},
        )


def _number(data: object, name: str) -> float:
    """Return data[name]; 0 when data or the field is missing, ValueError when it is not a
    number of at most MAX_MAGNITUDE."""
    if not isinstance(data, dict) or data.get(name) is None:
        return 0.0
    value = data[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} of a gateway load must be a finite number, got {value!r}")
    if abs(value) > MAX_MAGNITUDE:
        raise ValueError(f"{name} of a gateway load is out of range, got {value!r}")
    return float(value)


def _integer(data: object, name: str) -> int:
    """Return data[name] as an integer; 0 when missing, ValueError when not an integer."""
    value = _number(data, name)
    if not value.is_integer():
        raise ValueError(f"{name} of a gateway load must be an integer, got {value!r}")
    return int(value)


@dataclass(frozen=True, slots=True)
class _Reading:
    """The cumulative figures of one sample, kept to compute the next sample's rates."""

    monotonic: float
    totals: dict[str, int]
    cpu_seconds: float
    lag_total: float
    lag_count: int


class LoadSampler:
    """Takes samples of one gateway's load; each computes rates since the previous one."""

    def __init__(
        self,
        gateway: Gateway,
        loop_lag: LoopLagMonitor,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._gateway = gateway
        self._loop_lag = loop_lag
        self._clock = clock
        self._started_at_ms = _now_ms()
        self._previous: _Reading | None = None

    def sample(self) -> GatewayLoad:
        """Return the load now; rates cover the time since the previous call (0 the first time)."""
        gateway = self._gateway
        lag = self._loop_lag.stats
        reading = _Reading(
            monotonic=self._clock(),
            totals=counter_totals(gateway),
            cpu_seconds=cpu_seconds() or 0.0,
            lag_total=lag.histogram.total,
            lag_count=lag.histogram.count,
        )
        previous, self._previous = self._previous, reading

        interval = reading.monotonic - previous.monotonic if previous is not None else 0.0
        rates = dict.fromkeys(COUNTERS, 0.0)
        cpu_percent = 0.0
        lag_mean = lag.last
        if previous is not None and interval > 0:
            for name in COUNTERS:
                rates[name] = (reading.totals[name] - previous.totals[name]) / interval
            cpu_percent = 100.0 * (reading.cpu_seconds - previous.cpu_seconds) / interval
            lag_samples = reading.lag_count - previous.lag_count
            if lag_samples > 0:
                lag_mean = (reading.lag_total - previous.lag_total) / lag_samples

        stats = gateway.stats()
        return GatewayLoad(
            gateway_id=gateway.id,
            sampled_at_ms=_now_ms(),
            started_at_ms=self._started_at_ms,
            interval_s=round(interval, 3),
            connections=stats["connections"],
            sessions=stats["open"],
            users=stats["users"],
            watched_users=stats["watched_users"],
            pending_requests=stats["pending_requests"],
            loop_lag_ms=round(lag_mean * 1000, 3),
            loop_lag_max_ms=round(lag.maximum * 1000, 3),
            cpu_percent=round(cpu_percent, 1),
            resident_bytes=resident_bytes() or 0,
            rates={name: round(value, 3) for name, value in rates.items()},
            totals=reading.totals,
        )


class LoadReporter:
    """Samples a gateway's load every interval and, in a cluster, writes it to Redis."""

    def __init__(
        self, sampler: LoadSampler, *, interval: float, board: RedisLoadBoard | None = None
    ) -> None:
        """Prepare a reporter; board is the Redis side in a cluster, None embedded."""
        if interval <= 0:
            raise ValueError(f"load report interval must be positive, got {interval}")
        self.interval = interval
        self.ttl = 3 * interval
        """Seconds a report stays in Redis: three intervals after its last report, a gateway
        drops out."""
        self._sampler = sampler
        self._board = board
        self.latest = sampler.sample()
        """The most recent sample."""
        self._task: asyncio.Task[None] | None = None
        self._board_started = False
        self._failing = False

    async def start(self) -> None:
        """Write the first sample (in a cluster) and start sampling every interval."""
        if self._board is not None:
            await self._board.start()
            self._board_started = True
            await self._report()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="load-reporter")

    async def close(self) -> None:
        """Stop sampling and remove this gateway's report from Redis at once."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if self._board is None or not self._board_started:
            return  # a server that failed to start closes a reporter that never started
        self._board_started = False
        try:
            await self._board.remove(self.latest.gateway_id)
        except BusError as error:
            logger.warning(
                "load report of %s not removed, it expires in %g s: %s",
                self.latest.gateway_id,
                self.ttl,
                error,
            )
        await self._board.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.latest = self._sampler.sample()
            if self._board is not None:
                await self._report()

    async def _report(self) -> None:
        """Write the latest sample; log the first failure of an outage and the recovery."""
        assert self._board is not None
        try:
            await self._board.write(self.latest, self.ttl)
        except BusError as error:
            if not self._failing:
                logger.warning("load report of %s failed: %s", self.latest.gateway_id, error)
            self._failing = True
            return
        if self._failing:
            logger.info("load report of %s written again", self.latest.gateway_id)
        self._failing = False


def _now_ms() -> int:
    return int(time.time() * 1000)
