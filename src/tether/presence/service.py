"""In-memory presence for embedded tether.

Gateways report device transitions on the bus; this service aggregates them per user,
publishes a user's visible presence on that user's presence channel when it changes, and
answers snapshot queries. Only transitions reach it: heartbeats stay on the gateways.

When a user's last device goes, the OFFLINE change waits `grace_period` seconds, so a quick
reconnect shows nothing to contacts. One periodic sweep handles every waiting user.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from tether.bus import channels
from tether.bus import envelope_pb2 as env
from tether.bus.base import Bus
from tether.presence.model import visible_status
from tether.protocol import tether_pb2 as pb

__all__ = ["PresenceConfig", "PresenceService"]

logger = logging.getLogger("tether.presence")


@dataclass(frozen=True, kw_only=True, slots=True)
class PresenceConfig:
    """Settings of the presence service."""

    grace_period: float = 5.0
    """Seconds between a user's last device leaving and OFFLINE being announced (default 5)."""


@dataclass(slots=True)
class _Device:
    connection_id: str
    activity: int


@dataclass(slots=True)
class _User:
    devices: dict[str, _Device] = field(default_factory=dict)
    mode: int = pb.MODE_AVAILABLE
    status: pb.Status = pb.STATUS_OFFLINE  # last published visible status
    last_seen_ms: int = 0
    version: int = 0
    offline_deadline: float | None = None  # monotonic time the pending OFFLINE is due


class PresenceService:
    """Aggregate device transitions into user presence and publish the changes."""

    def __init__(self, config: PresenceConfig, bus: Bus) -> None:
        self.config = config
        self._bus = bus
        self._users: dict[str, _User] = {}
        # Users whose OFFLINE waits for the grace period, in deadline order (every wait has
        # the same length, so arrival order is deadline order).
        self._grace: deque[tuple[float, str]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        self._bus.subscribe(channels.PRESENCE_TRANSITIONS, self._on_transitions)
        self._bus.subscribe(channels.PRESENCE_REQUESTS, self._on_request)
        self._schedule_sweep()
        logger.info("presence started (grace period %.1f s)", self.config.grace_period)

    async def close(self) -> None:
        self._bus.unsubscribe(channels.PRESENCE_TRANSITIONS, self._on_transitions)
        self._bus.unsubscribe(channels.PRESENCE_REQUESTS, self._on_request)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def presence_of(self, user_id: str) -> pb.UserPresence:
        """Return the presence of a user as others see it now."""
        user = self._users.get(user_id)
        if user is None:
            return pb.UserPresence(user_id=user_id, status=pb.STATUS_OFFLINE)
        return pb.UserPresence(
            user_id=user_id,
            status=user.status,
            last_seen_ms=user.last_seen_ms,
            version=user.version,
        )

    def _on_transitions(self, channel: str, payload: bytes) -> None:
        batch = env.Envelope.FromString(payload).transitions
        for transition in batch.transitions:
            self._apply(transition)

    def _apply(self, transition: env.Transition) -> None:
        user = self._users.get(transition.user_id)
        if user is None:
            user = self._users[transition.user_id] = _User()
        device = user.devices.get(transition.device_id)
        kind = transition.kind
        status = transition.status

        if kind == env.Transition.KIND_ONLINE:
            # A new connection of the device replaces any older entry.
            activity = status.activity or pb.ACTIVITY_ACTIVE
            user.devices[transition.device_id] = _Device(transition.connection_id, activity)
            if status.mode:
                user.mode = status.mode
        elif device is None or device.connection_id != transition.connection_id:
            # A late transition of a replaced connection must not touch the newer session.
            return
        elif kind == env.Transition.KIND_OFFLINE:
            del user.devices[transition.device_id]
            if user.mode != pb.MODE_INVISIBLE:  # others must not learn when invisible users leave
                user.last_seen_ms = max(user.last_seen_ms, min(transition.at_ms, _now_ms()))
        elif kind == env.Transition.KIND_STATUS:
            if status.activity:
                device.activity = status.activity
            if status.mode:
                user.mode = status.mode
        self._update(transition.user_id, user)

    def _update(self, user_id: str, user: _User) -> None:
        new_status = visible_status((d.activity for d in user.devices.values()), user.mode)
        if new_status == user.status:
            user.offline_deadline = None  # back before the grace period ended: nothing to say
            return
        if new_status == pb.STATUS_OFFLINE and not user.devices:
            if user.offline_deadline is None:
                deadline = time.monotonic() + self.config.grace_period
                user.offline_deadline = deadline
                self._grace.append((deadline, user_id))
            return
        self._publish(user_id, user, new_status)

    def _publish(self, user_id: str, user: _User, status: pb.Status) -> None:
        user.offline_deadline = None
        now_ms = _now_ms()
        if status == pb.STATUS_OFFLINE:
            if user.devices:  # invisible: last seen is when the user chose it
                user.last_seen_ms = now_ms
        else:
            user.last_seen_ms = now_ms
        user.status = status
        # Versions follow the clock, so they keep growing across a restart of presence.
        user.version = max(user.version + 1, now_ms)
        change = env.Envelope(
            presence_change=env.PresenceChange(
                presence=pb.UserPresence(
                    user_id=user_id,
                    status=status,
                    last_seen_ms=user.last_seen_ms,
                    version=user.version,
                )
            )
        )
        self._bus.publish(channels.presence_channel(user_id), change.SerializeToString())
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("user %s is now %s", user_id, pb.Status.Name(status))

    def _on_request(self, channel: str, payload: bytes) -> None:
        request = env.Envelope.FromString(payload)
        if request.WhichOneof("kind") != "snapshot_request" or not request.reply_to:
            logger.warning("ignored presence request of kind %s", request.WhichOneof("kind"))
            return
        users = [self.presence_of(user_id) for user_id in request.snapshot_request.user_ids]
        reply = env.Envelope(
            request_id=request.request_id, snapshot_result=env.SnapshotResult(users=users)
        )
        self._bus.publish(request.reply_to, reply.SerializeToString())

    def _schedule_sweep(self) -> None:
        interval = max(0.02, min(1.0, self.config.grace_period / 4))
        self._sweeper = asyncio.get_running_loop().call_later(interval, self._sweep)

    def _sweep(self) -> None:
        now = time.monotonic()
        grace = self._grace
        while grace and grace[0][0] <= now:
            deadline, user_id = grace.popleft()
            user = self._users.get(user_id)
            # Skip entries cancelled by a reconnect or superseded by a later wait.
            if user is None or user.offline_deadline != deadline:
                continue
            self._publish(user_id, user, pb.STATUS_OFFLINE)
        self._schedule_sweep()


def _now_ms() -> int:
    return int(time.time() * 1000)
