"""The bus interface: how gateway, presence and logic talk to each other.

Two primitives, both carrying opaque bytes (encoded `tether.bus.v1.Envelope` messages):

- pub/sub: `publish(channel, payload)` reaches every current subscriber of the channel, or no
  one. Used for deliveries, presence changes and replies, where the subscriber set is the
  routing.
- streams: `append(stream, payload)` queues a request that exactly one consumer handles.
  Used for requests to the logic layer, which must survive a logic restart on a durable bus.

Handlers run on the event loop, one at a time, never inside the call that published or
appended, so a handler may publish without re-entering itself.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

__all__ = ["Bus", "BusCounters", "MessageHandler", "ReconnectCallback", "StreamHandler"]

# Called with (channel, payload) for each message on a subscribed channel.
MessageHandler = Callable[[str, bytes], None]
# Called with a batch of payloads taken from a stream, in order.
StreamHandler = Callable[[list[bytes]], Awaitable[None]]
# Called after the bus has reconnected and resubscribed, for example to re-publish sessions.
ReconnectCallback = Callable[[], Awaitable[None] | None]


@dataclass(slots=True)
class BusCounters:
    """Counts of what a bus did since it started, read by the metrics endpoint. Counts only grow."""

    published: int = 0
    """Messages published (written to the broker, for a bus with one)."""
    appended: int = 0
    """Stream entries appended (written to the broker, for a bus with one)."""
    round_trips: int = 0
    """Batches of publishes and appends written to the broker, one round trip each."""
    write_errors: int = 0
    """Batches whose write failed on the link to the broker."""
    rejected: int = 0
    """Commands the broker answered with an error."""
    read_errors: int = 0
    """Failed stream reads, retried."""
    link_failures: int = 0
    """Times the subscriber link to the broker was lost."""
    dropped: int = 0
    """Publishes dropped because the batch carrying them failed (pub/sub is at most once)."""


class Bus(abc.ABC):
    """Pub/sub channels and request streams shared by all parts of tether.

    Every implementation sets `counters` in its constructor.
    """

    counters: BusCounters

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect and start delivering messages."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop delivering and release connections; later calls raise BusError."""

    @abc.abstractmethod
    def subscribe(self, channel: str, handler: MessageHandler) -> None:
        """Deliver messages published on channel from now on to handler.

        A handler subscribes to a channel at most once; a second call for the same pair is
        ignored.
        """

    @abc.abstractmethod
    def unsubscribe(self, channel: str, handler: MessageHandler) -> None:
        """Stop delivering channel's messages to handler; unknown pairs are ignored."""

    @abc.abstractmethod
    def publish(self, channel: str, payload: bytes) -> None:
        """Send payload to every subscriber of channel.

        Raises BusOverloaded when the bus cannot accept more messages right now.
        """

    @abc.abstractmethod
    def append(self, stream: str, payload: bytes) -> None:
        """Queue payload for one consumer of stream.

        Raises BusOverloaded when the stream's bounded queue is full.
        """

    @abc.abstractmethod
    def consume(self, stream: str, handler: StreamHandler) -> None:
        """Hand the entries of stream to handler in batches until the bus closes."""

    # Connection state. A bus that cannot lose its connection keeps these defaults.

    @property
    def ready(self) -> bool:
        """Whether the bus is connected and every subscription is in effect."""
        return True

    async def flush_subscriptions(self) -> None:  # noqa: B027 (a default, not abstract)
        """Return once every subscribe and unsubscribe made so far is in effect."""

    def add_reconnect_callback(self, callback: ReconnectCallback) -> None:  # noqa: B027 (a default)
        """Call callback each time the bus is ready again after an outage."""
