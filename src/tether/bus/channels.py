"""Names of every bus channel and stream, in one place.

Pub/sub channels carry deliveries and presence changes to whichever processes subscribed.
Streams carry requests that one consumer of a group must handle exactly once.
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
]

# Requests for the logic layer (connect checks, sends, delivery acks, admin commands).
LOGIC_STREAM = "tether.logic"
# Batches of device transitions, from gateways to presence.
PRESENCE_TRANSITIONS = "tether.presence.transitions"
# Snapshot queries, from gateways to presence.
PRESENCE_REQUESTS = "tether.presence.requests"


def user_channel(user_id: str) -> str:
    """Channel of deliveries to one user, subscribed by the gateways where it is connected."""
    return f"tether.user.{user_id}"


def group_channel(group_id: str) -> str:
    """Channel of one group's messages, subscribed by gateways with an online member."""
    return f"tether.group.{group_id}"


def presence_channel(user_id: str) -> str:
    """Channel of one user's presence changes, subscribed by gateways with watchers."""
    return f"tether.presence.{user_id}"


def gateway_channel(gateway_id: str) -> str:
    """Channel of replies to one process's requests."""
    return f"tether.reply.{gateway_id}"
