"""Counts of one gateway's activity since it started, as plain numbers for the metrics endpoint.

The gateway increments these attributes where things happen; nothing here runs on its own.
Gauges (connections open now, sessions, queued bytes) are not kept here: the metrics
endpoint reads them from the gateway's tables when it is scraped.
"""

from __future__ import annotations

from tether.stats import Histogram

__all__ = ["GatewayCounters"]


class GatewayCounters:
    """Counters of one gateway. Every count starts at 0 and only grows."""

    __slots__ = (
        "accepted",
        "closed",
        "deliveries",
        "delivery_latency",
        "disconnects",
        "frames_received",
        "heartbeats",
        "presence_in",
        "presence_latency",
        "presence_out",
        "request_latency",
        "requests_refused",
        "requests_replied",
        "requests_timed_out",
        "sends",
        "transitions",
    )

    def __init__(self) -> None:
        self.accepted: dict[str, int] = {}
        """Connections accepted, by transport name ("tcp", "ws")."""
        self.closed: dict[str, int] = {}
        """Connections whose transport is gone, by transport name."""
        self.frames_received = 0
        """Frames received from clients, every kind."""
        self.heartbeats = 0
        """Heartbeat frames received and answered."""
        self.sends = 0
        """Send frames (direct messages) received from clients."""
        self.deliveries = 0
        """Message frames queued to client connections, one per receiving device."""
        self.transitions: dict[int, int] = {}
        """Device transitions reported to presence, by `Transition.Kind` number."""
        self.presence_in = 0
        """Presence changes of watched users received from the bus."""
        self.presence_out = 0
        """Presence updates queued to watching clients."""
        self.disconnects: dict[int | None, int] = {}
        """Closes by the code sent in the Disconnect frame; None for closes the client asked
        for (a Disconnect frame or a half-close)."""
        self.requests_replied = 0
        """Requests to logic or presence over the bus that got a reply in time."""
        self.requests_timed_out = 0
        """Requests over the bus whose reply did not come within request_timeout."""
        self.requests_refused = 0
        """Requests the bus did not take (not connected, or its buffer full)."""
        self.request_latency = Histogram()
        """Seconds from sending a request over the bus to its reply."""
        self.delivery_latency = Histogram()
        """Seconds from the logic layer storing a message to this gateway queuing it to the
        recipient's devices (clocks of two processes in cluster mode)."""
        self.presence_latency = Histogram()
        """Seconds from presence publishing a change to this gateway receiving it, for changes
        to a visible online status (offline changes carry the last-seen time instead)."""
