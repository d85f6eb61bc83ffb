"""Read-only views of presence for the server HTTP API: users' status, devices, group counts.

Embedded, all come from the process itself: the presence service for the visible status, the
gateway's session table for the devices and its count store for the online counts of large
groups. In a cluster, they come from what gateways write to Redis: the presence hashes
(layout in scripts.lua) and the hash of group totals (redis_group_counts.py). A bulk query is
one pipelined round trip. A user's devices are the `dev:` fields of one hash, each naming the
gateway and connection that own it.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from tether.presence.cluster import user_key
from tether.presence.redis_group_counts import read_totals
from tether.protocol import tether_pb2 as pb
from tether.protocol.errors import BusUnavailable

if TYPE_CHECKING:
    from tether.gateway import Gateway
    from tether.presence.service import PresenceService

__all__ = [
    "DeviceSession",
    "EmbeddedPresenceReader",
    "PresenceReader",
    "RedisPresenceReader",
    "UserSessions",
]


@dataclass(frozen=True, slots=True)
class DeviceSession:
    """One connected device of a user."""

    device_id: str
    gateway_id: str
    """Gateway process with the connection."""
    connection_id: str
    activity: int
    """`tether.v1.Activity`: ACTIVITY_ACTIVE or ACTIVITY_IDLE."""


@dataclass(frozen=True, slots=True)
class UserSessions:
    """A user's visible presence and every device connected now."""

    presence: pb.UserPresence
    devices: list[DeviceSession]


class PresenceReader(abc.ABC):
    """Presence as the server HTTP API reports it."""

    async def start(self) -> None:  # noqa: B027 (a default, not abstract)
        """Open what the reader needs."""

    async def close(self) -> None:  # noqa: B027 (a default, not abstract)
        """Release what start opened."""

    @abc.abstractmethod
    async def presence(self, user_ids: Sequence[str]) -> list[pb.UserPresence]:
        """Return the visible presence of each user, in order; raise BusUnavailable on failure."""

    @abc.abstractmethod
    async def sessions(self, user_id: str) -> UserSessions:
        """Return a user's presence and devices; raise BusUnavailable on failure."""

    @abc.abstractmethod
    async def group_totals(self, group_ids: Sequence[str]) -> dict[str, int]:
        """Return the online members of large groups as gateways count them (0 if unknown).

        Only groups above the gateways' count threshold are counted. Raises BusUnavailable
        on failure.
        """


class EmbeddedPresenceReader(PresenceReader):
    """Presence of an embedded server, read from its own presence service and gateway."""

    def __init__(self, presence: PresenceService, gateway: Gateway) -> None:
        self._presence = presence
        self._gateway = gateway

    async def presence(self, user_ids: Sequence[str]) -> list[pb.UserPresence]:
        return [self._presence.presence_of(user_id) for user_id in user_ids]

    async def sessions(self, user_id: str) -> UserSessions:
        devices = self._gateway.sessions.get(user_id, {})
        return UserSessions(
            presence=self._presence.presence_of(user_id),
            devices=[
                DeviceSession(device_id, self._gateway.id, connection.id, connection.activity)
                for device_id, connection in sorted(devices.items())
            ],
        )

    async def group_totals(self, group_ids: Sequence[str]) -> dict[str, int]:
        return await self._gateway.group_counts.totals(list(group_ids))


class RedisPresenceReader(PresenceReader):
    """Cluster presence, read from the hashes the gateways keep in Redis."""

    def __init__(
        self, url: str, key_prefix: str = "tether:", timeout: float = 5.0, *, cluster: bool = False
    ) -> None:
        """Prepare a reader of url; key_prefix must match the gateways' (default "tether:").

        With cluster, url names a node of a Redis Cluster and the bulk query is pipelined per
        node by redis-py's cluster client.
        """
        self._url = url
        self._cluster = cluster
        self._prefix = key_prefix
        self._timeout = timeout
        self._redis: Any = None

    async def start(self) -> None:
        # redis-py connects on first use, so a Redis outage at start fails requests, not start.
        if self._cluster:
            self._redis = redis.RedisCluster.from_url(self._url, socket_timeout=self._timeout)
        else:
            self._redis = redis.Redis.from_url(self._url, socket_timeout=self._timeout)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    def _user_key(self, user_id: str) -> str:
        return user_key(self._prefix, user_id)

    async def presence(self, user_ids: Sequence[str]) -> list[pb.UserPresence]:
        pipeline = self._redis.pipeline(transaction=False)
        for user_id in user_ids:
            pipeline.hmget(self._user_key(user_id), "status", "seen", "ver")
        try:
            rows = await pipeline.execute()
        except RedisError as error:
            raise BusUnavailable(f"presence query failed: {error}") from error
        return [
            _user_presence(user_id, status, seen, version)
            for user_id, (status, seen, version) in zip(user_ids, rows, strict=True)
        ]

    async def sessions(self, user_id: str) -> UserSessions:
        try:
            fields: dict[bytes, bytes] = await self._redis.hgetall(self._user_key(user_id))
        except RedisError as error:
            raise BusUnavailable(f"session query failed: {error}") from error
        devices = []
        for name, value in sorted(fields.items()):
            if not name.startswith(b"dev:"):
                continue
            # "<gateway>\t<epoch>\t<connection>\t<activity>", see scripts.lua.
            parts = value.decode().split("\t")
            if len(parts) != 4:
                continue
            gateway_id, _epoch, connection_id, activity = parts
            devices.append(
                DeviceSession(name[4:].decode(), gateway_id, connection_id, int(activity))
            )
        presence = _user_presence(
            user_id, fields.get(b"status"), fields.get(b"seen"), fields.get(b"ver")
        )
        return UserSessions(presence=presence, devices=devices)

    async def group_totals(self, group_ids: Sequence[str]) -> dict[str, int]:
        return await read_totals(self._redis, self._prefix, list(group_ids))


def _user_presence(
    user_id: str, status: bytes | None, seen: bytes | None, version: bytes | None
) -> pb.UserPresence:
    return pb.UserPresence(
        user_id=user_id,
        status=int(status) if status else pb.STATUS_OFFLINE,  # type: ignore[arg-type]
        last_seen_ms=int(seen or 0),
        version=int(version or 0),
    )
