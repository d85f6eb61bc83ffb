"""Names of every bus channel and stream, in one place.

Pub/sub channels carry deliveries and presence changes to whichever processes subscribed.
Streams carry requests that one consumer of a group must handle exactly once.

A user's channels carry the user id as a Redis Cluster hash tag (`{alice}`), like the user's
presence key, so on Redis Cluster they all hash to one slot: the presence script that changes
a user's key can publish the change with SPUBLISH, which a script may only do within the slot
of its keys. User ids never contain braces (see `tether.auth.validate_user_id`), so the tag is
exactly the user id.
"""

from __future__ import annotations

__all__ = [
    "LOGIC_STREAM",
    "PRESENCE_REQUESTS",
    "PRESENCE_TRANSITIONS",
    "gateway_channel",
    "group_channel",
    "presence_channel",
    "user_channel",
    "user_of_channel",
]

# Requests for the logic layer (connect checks, sends, delivery acks, admin commands).
LOGIC_STREAM = "tether.logic"
# Batches of device transitions, from gateways to presence.
PRESENCE_TRANSITIONS = "tether.presence.transitions"
# Snapshot queries, from gateways to presence.
PRESENCE_REQUESTS = "tether.presence.requests"

_USER_PREFIX = "tether.user."
_PRESENCE_PREFIX = "tether.presence."


def user_channel(user_id: str) -> str:
    """Channel of deliveries to one user, subscribed by the gateways where it is connected."""
    return f"{_USER_PREFIX}{{{user_id}}}"


def group_channel(group_id: str) -> str:
    """Channel of one group's messages, subscribed by gateways with an online member."""
    return f"tether.group.{group_id}"


def presence_channel(user_id: str) -> str:
    """Channel of one user's presence changes, subscribed by gateways with watchers."""
    return f"{_PRESENCE_PREFIX}{{{user_id}}}"


def user_of_channel(channel: str) -> str:
    """Return the user id of a `user_channel` or `presence_channel` name."""
    return channel[channel.index("{") + 1 : -1]


def gateway_channel(gateway_id: str) -> str:
    """Channel of replies to one process's requests."""
    return f"tether.reply.{gateway_id}"
