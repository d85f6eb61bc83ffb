"""Presence as the HTTP port reports it: the reader a process uses, and the JSON it returns.

The server API (`tether.ops.api`) and the admin dashboard (`tether.ops.dashboard`) both report
users' presence and devices. Both read and format it through these functions, so both
return the same JSON.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tether.presence.reader import (
    EmbeddedPresenceReader,
    PresenceReader,
    RedisPresenceReader,
    UserSessions,
)
from tether.protocol import tether_pb2 as pb

if TYPE_CHECKING:
    from tether.server import TetherServer

__all__ = ["presence_json", "presence_reader", "sessions_json"]

_STATUS_NAMES = {
    pb.STATUS_OFFLINE: "offline",
    pb.STATUS_ONLINE: "online",
    pb.STATUS_AWAY: "away",
    pb.STATUS_BUSY: "busy",
}
_ACTIVITY_NAMES = {pb.ACTIVITY_ACTIVE: "active", pb.ACTIVITY_IDLE: "idle"}


def presence_reader(server: TetherServer) -> PresenceReader:
    """Return the presence reader of server: its own tables embedded, else Redis."""
    if server.presence is not None and server.gateway is not None:
        return EmbeddedPresenceReader(server.presence, server.gateway)
    return RedisPresenceReader(server.config.redis_url, cluster=server.config.redis_cluster)


def presence_json(presence: pb.UserPresence) -> dict[str, object]:
    """Return a user's visible presence as the JSON object of the HTTP port."""
    return {
        "user_id": presence.user_id,
        "status": _STATUS_NAMES.get(presence.status, "offline"),
        "last_seen_ms": presence.last_seen_ms,
        "version": presence.version,
    }


def sessions_json(sessions: UserSessions) -> dict[str, object]:
    """Return a user's presence with a `devices` array, one entry per connected device."""
    answer = presence_json(sessions.presence)
    answer["devices"] = [
        {
            "device_id": device.device_id,
            "gateway_id": device.gateway_id,
            "connection_id": device.connection_id,
            "activity": _ACTIVITY_NAMES.get(device.activity, "active"),  # type: ignore[call-overload]
        }
        for device in sessions.devices
    ]
    return answer
