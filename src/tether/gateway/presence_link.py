"""How a gateway reports transitions to presence and requests snapshots from it.

Two implementations of one small interface:

- `BusPresenceLink` (embedded): transitions go as one batch per event-loop pass to the
  presence service over the bus, and snapshots are requests over the bus.
- `ClusterPresenceLink` (cluster): the gateway applies its own transitions to Redis with the
  atomic scripts of `tether.presence.cluster`, and reads snapshots from Redis in one pipelined
  round trip, after the bus has confirmed the presence subscriptions that precede them.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Awaitable, Callable

from tether.bus import channels
from tether.bus import envelope_pb2 as env
from tether.bus.base import Bus
from tether.presence.cluster import RedisPresence
from tether.protocol import tether_pb2 as pb
from tether.protocol.errors import BusError

__all__ = ["BusPresenceLink", "ClusterPresenceLink", "PresenceLink", "SnapshotCallback"]

logger = logging.getLogger("tether.gateway.presence")

# Called once with the presence of the requested users, or None when presence did not respond.
SnapshotCallback = Callable[[list[pb.UserPresence] | None], None]
# Sends a request whose reply goes to a callback; returns False if the bus did not take it.
RequestSender = Callable[[str, env.Envelope, Callable[[env.Envelope | None], None]], bool]


class PresenceLink(abc.ABC):
    """A gateway's connection to presence."""

    @abc.abstractmethod
    def report(self, gateway_id: str, transitions: list[env.Transition]) -> None:
        """Hand over transitions, in order; they must not be reordered after this call."""

    @abc.abstractmethod
    def query(self, user_ids: list[str], callback: SnapshotCallback) -> None:
        """Look up users' presence and call callback once with the result."""


class BusPresenceLink(PresenceLink):
    """Presence reached over the bus (the in-memory presence service of embedded tether)."""

    def __init__(self, bus: Bus, send_request: RequestSender) -> None:
        self._bus = bus
        self._send_request = send_request

    def report(self, gateway_id: str, transitions: list[env.Transition]) -> None:
        batch = env.Envelope(
            transitions=env.TransitionBatch(gateway_id=gateway_id, transitions=transitions)
        )
        try:
            self._bus.publish(channels.PRESENCE_TRANSITIONS, batch.SerializeToString())
        except BusError as error:
            # NOTE: the in-process bus only fails here when closed or a million messages
            # behind; these transitions are then lost until the devices change again.
            logger.error("lost %d presence transitions: %s", len(transitions), error)

    def query(self, user_ids: list[str], callback: SnapshotCallback) -> None:
        def on_reply(reply: env.Envelope | None) -> None:
            callback(None if reply is None else list(reply.snapshot_result.users))

        request = env.Envelope(snapshot_request=env.SnapshotRequest(user_ids=user_ids))
        if not self._send_request(channels.PRESENCE_REQUESTS, request, on_reply):
            callback(None)


class ClusterPresenceLink(PresenceLink):
    """Presence kept in Redis and written by this gateway."""

    def __init__(
        self, presence: RedisPresence, flush_subscriptions: Callable[[], Awaitable[None]]
    ) -> None:
        self._presence = presence
        self._flush_subscriptions = flush_subscriptions
        self._queries: set[asyncio.Task[None]] = set()

    def report(self, gateway_id: str, transitions: list[env.Transition]) -> None:
        self._presence.report(transitions)

    def query(self, user_ids: list[str], callback: SnapshotCallback) -> None:
        task = asyncio.get_running_loop().create_task(self._query(user_ids, callback))
        self._queries.add(task)
        task.add_done_callback(self._queries.discard)

    async def _query(self, user_ids: list[str], callback: SnapshotCallback) -> None:
        try:
            # A change published after the subscription is confirmed reaches us; one published
            # before it is in what we read next. Versions drop whichever arrives second.
            await self._flush_subscriptions()
            result: list[pb.UserPresence] | None = await self._presence.query(user_ids)
        except Exception as error:
            logger.warning("presence snapshot of %d users failed: %s", len(user_ids), error)
            result = None
        callback(result)
