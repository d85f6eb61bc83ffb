"""Prometheus metrics of one tether process, read from its counters at scrape time.

The gateway, the bus and the loop lag monitor count in plain attributes (`GatewayCounters`,
`BusCounters`, `LagStats`). `TetherCollector` turns them into metric families only when
Prometheus scrapes, so the hot paths never call into prometheus_client. Each process has a
registry of its own, so several servers in one test process do not collide.

Labels take a few fixed values (transport name, close code name, transition kind, outcome);
none carries a user, device or connection id. docs/operations.md lists every metric.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from tether.bus import envelope_pb2 as env
from tether.ops.process_stats import cpu_seconds, resident_bytes
from tether.protocol.codes import Code
from tether.stats import Histogram

if TYPE_CHECKING:
    from tether.gateway import Gateway
    from tether.ops.api import BackendApi
    from tether.server import TetherServer

__all__ = ["MetricsEndpoint", "ProcessMetrics", "TetherCollector"]

# Label value for closes the client asked for, which carry no code.
CLIENT_CLOSED = "CLIENT_CLOSED"
_TRANSITION_KINDS = {
    env.Transition.KIND_ONLINE: "online",
    env.Transition.KIND_OFFLINE: "offline",
    env.Transition.KIND_STATUS: "status",
}


def _tether_version() -> str:
    try:
        return version("tether")
    except PackageNotFoundError:
        return "unknown"


def _code_name(code: int | None) -> str:
    if code is None:
        return CLIENT_CLOSED
    try:
        return Code(code).name
    except ValueError:
        return str(code)


def _histogram(name: str, documentation: str, histogram: Histogram) -> HistogramMetricFamily:
    buckets = [
        ("+Inf" if bound == float("inf") else repr(bound), float(count))
        for bound, count in histogram.cumulative()
    ]
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=histogram.total)


class TetherCollector(Collector):
    """Reads a `TetherServer`'s counters and tables when the registry collects."""

    def __init__(self, server: TetherServer, api: BackendApi | None = None) -> None:
        self._server = server
        self._api = api
        self._version = _tether_version()

    def collect(self) -> Iterator[Metric]:
        """Yield every tether metric family; called once per scrape."""
        server = self._server
        info = GaugeMetricFamily(
            "tether_info",
            "Constant 1, labelled with the version, the mode and the gateway id of this process.",
            labels=["version", "mode", "gateway"],
        )
        gateway_id = server.gateway.id if server.gateway is not None else ""
        mode = "cluster" if server.config.redis_url else "embedded"
        info.add_metric([self._version, mode, gateway_id], 1)
        yield info
        yield GaugeMetricFamily(
            "tether_ready", "1 while the readiness probe answers 200, else 0.", value=server.ready
        )
        yield from self._bus_metrics()
        yield from self._loop_metrics()
        if server.gateway is not None:
            yield from self._gateway_metrics(server.gateway)
        if self._api is not None and self._api.keys.enabled:
            yield from self._api_metrics(self._api)

    def _api_metrics(self, api: BackendApi) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "tether_api_requests",
            "Server HTTP API requests answered, by route and HTTP status.",
            labels=["route", "status"],
        )
        for (route, status), count in sorted(api.requests.items()):
            requests.add_metric([route, str(status)], count)
        yield requests
        yield _histogram(
            "tether_api_request_seconds",
            "Time from a server HTTP API request's arrival to its response, in seconds.",
            api.latency,
        )

    def _bus_metrics(self) -> Iterator[Metric]:
        bus = self._server.bus
        yield GaugeMetricFamily(
            "tether_bus_connected",
            "1 while the bus is connected with every subscription in effect, else 0.",
            value=bus.ready,
        )
        counters = bus.counters
        yield CounterMetricFamily(
            "tether_bus_published", "Messages published on the bus.", value=counters.published
        )
        yield CounterMetricFamily(
            "tether_bus_appended", "Entries appended to bus streams.", value=counters.appended
        )
        yield CounterMetricFamily(
            "tether_bus_round_trips",
            "Batches of publishes and appends written to Redis, one round trip each.",
            value=counters.round_trips,
        )
        errors = CounterMetricFamily(
            "tether_bus_errors",
            "Bus failures by kind: write (a batch failed on the link), rejected (Redis replied "
            "with an error), read (a stream read failed), link (the subscriber link was lost).",
            labels=["kind"],
        )
        errors.add_metric(["write"], counters.write_errors)
        errors.add_metric(["rejected"], counters.rejected)
        errors.add_metric(["read"], counters.read_errors)
        errors.add_metric(["link"], counters.link_failures)
        yield errors
        yield CounterMetricFamily(
            "tether_bus_dropped_publishes",
            "Publishes dropped because the batch carrying them failed.",
            value=counters.dropped,
        )

    def _loop_metrics(self) -> Iterator[Metric]:
        stats = self._server.loop_lag.stats
        yield _histogram(
            "tether_event_loop_lag_seconds",
            "How late the event loop ran a timer that was due, sampled every 0.5 s.",
            stats.histogram,
        )
        yield GaugeMetricFamily(
            "tether_event_loop_lag_max_seconds",
            "Largest event loop lag since the process started.",
            value=stats.maximum,
        )
        yield CounterMetricFamily(
            "tether_event_loop_lag_warnings",
            "Loop lag samples at or above the warning threshold.",
            value=stats.warnings,
        )

    def _gateway_metrics(self, gateway: Gateway) -> Iterator[Metric]:
        counters = gateway.counters
        transports = sorted(set(counters.accepted) | set(counters.closed))
        open_now = GaugeMetricFamily(
            "tether_connections", "Client connections open now, by transport.", labels=["transport"]
        )
        accepted = CounterMetricFamily(
            "tether_connections_accepted",
            "Client connections accepted, by transport.",
            labels=["transport"],
        )
        for transport in transports:
            opened = counters.accepted.get(transport, 0)
            open_now.add_metric([transport], opened - counters.closed.get(transport, 0))
            accepted.add_metric([transport], opened)
        yield open_now
        yield accepted

        stats = gateway.stats()
        yield GaugeMetricFamily(
            "tether_sessions", "Logged-in sessions (devices) open now.", value=stats["open"]
        )
        yield GaugeMetricFamily(
            "tether_users", "Users with at least one session here.", value=stats["users"]
        )
        yield GaugeMetricFamily(
            "tether_watched_users",
            "Users whose presence a local connection watches.",
            value=stats["watched_users"],
        )
        yield GaugeMetricFamily(
            "tether_pending_requests",
            "Requests to logic or presence waiting for a reply.",
            value=stats["pending_requests"],
        )
        yield GaugeMetricFamily(
            "tether_outgoing_queue_bytes",
            "Bytes queued to clients and not yet sent, over every connection.",
            value=_queued_bytes(gateway),
        )

        yield CounterMetricFamily(
            "tether_heartbeats", "Heartbeats received and answered.", value=counters.heartbeats
        )
        yield CounterMetricFamily(
            "tether_client_messages",
            "Send frames (direct messages) received from clients.",
            value=counters.sends,
        )
        yield CounterMetricFamily(
            "tether_deliveries",
            "Message frames queued to client connections, one per receiving device.",
            value=counters.deliveries,
        )
        transitions = CounterMetricFamily(
            "tether_presence_transitions",
            "Device transitions reported to presence, by kind.",
            labels=["kind"],
        )
        for kind, name in _TRANSITION_KINDS.items():
            transitions.add_metric([name], counters.transitions.get(kind, 0))
        yield transitions
        yield CounterMetricFamily(
            "tether_presence_events_received",
            "Presence changes of watched users received from the bus.",
            value=counters.presence_in,
        )
        yield CounterMetricFamily(
            "tether_presence_updates_sent",
            "Presence updates queued to watching clients.",
            value=counters.presence_out,
        )
        disconnects = CounterMetricFamily(
            "tether_disconnects",
            "Connections closed by the gateway, by the close code sent; CLIENT_CLOSED when the "
            "client asked to close.",
            labels=["code"],
        )
        for code, count in sorted(counters.disconnects.items(), key=lambda item: item[0] or 0):
            disconnects.add_metric([_code_name(code)], count)
        yield disconnects

        requests = CounterMetricFamily(
            "tether_bus_requests",
            "Requests to logic or presence over the bus, by outcome.",
            labels=["outcome"],
        )
        requests.add_metric(["reply"], counters.requests_replied)
        requests.add_metric(["timeout"], counters.requests_timed_out)
        requests.add_metric(["refused"], counters.requests_refused)
        yield requests
        yield _histogram(
            "tether_bus_request_seconds",
            "Round trip of a request to logic or presence over the bus, until its reply.",
            counters.request_latency,
        )
        yield _histogram(
            "tether_delivery_latency_seconds",
            "From the logic layer storing a message to this gateway queuing it to the "
            "recipient's devices.",
            counters.delivery_latency,
        )
        yield _histogram(
            "tether_presence_propagation_seconds",
            "From presence publishing a visible online status to this gateway receiving it.",
            counters.presence_latency,
        )


def _queued_bytes(gateway: Gateway) -> int:
    """Return the bytes waiting in outboxes and transport buffers of every connection.

    NOTE: this visits every connection, so a scrape costs time in proportion to the
    connections; docs/operations.md gives the measured figure.
    """
    return sum(
        connection.outbox_bytes + connection.write_buffer_size()
        for connection in gateway.connections.values()
    )


class ProcessMetrics(Collector):
    """CPU time, memory, open file limit and start time of this process.

    Used instead of prometheus_client's ProcessCollector, which also counts open files by
    listing /proc/self/fd on every scrape. On the development VM that listing took 4.4 ms at
    10,000 open sockets, so 100,000 connections would block the loop for about 45 ms per
    scrape. `tether_connections` counts the sockets that matter without that cost.
    """

    def __init__(self) -> None:
        self._start_time = _process_start_time()

    def collect(self) -> Iterator[Metric]:
        """Yield the process metrics; reads /proc/self/statm on Linux, nothing else."""
        try:
            import resource
        except ImportError:  # not on Unix
            return
        yield CounterMetricFamily(
            "process_cpu_seconds",
            "User and system CPU time of this process, in seconds.",
            value=cpu_seconds() or 0.0,
        )
        resident = resident_bytes()
        if resident is not None:
            yield GaugeMetricFamily(
                "process_resident_memory_bytes", "Resident memory, in bytes.", value=resident
            )
        soft_limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        yield GaugeMetricFamily(
            "process_max_fds", "Open file limit (soft) of this process.", value=soft_limit
        )
        yield GaugeMetricFamily(
            "process_start_time_seconds",
            "Start time of this process, in seconds since the Unix epoch.",
            value=self._start_time,
        )


def _process_start_time() -> float:
    """Return when this process started, from /proc on Linux; elsewhere, now."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, IndexError, ValueError, StopIteration):
        return time.time()
    return boot + ticks / os.sysconf("SC_CLK_TCK")


class MetricsEndpoint:
    """The registry behind `GET /metrics`: tether's collector and the process collectors."""

    def __init__(self, server: TetherServer, api: BackendApi | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(TetherCollector(server, api))
        # Process figures, garbage collection and the Python version, read at scrape time too.
        self.registry.register(ProcessMetrics())
        for collector in (GC_COLLECTOR, PLATFORM_COLLECTOR):
            self.registry.register(collector)

    def render(self, accept: str) -> tuple[bytes, str]:
        """Return the exposition for an Accept header (text or OpenMetrics) and its type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
