"""Connection states and the frames a client may send in each.

A server-side connection moves AWAITING_CONNECT -> AUTHENTICATING -> OPEN -> CLOSING -> CLOSED,
and may jump to CLOSING or CLOSED from any earlier state. `TRANSITIONS` is the whole table;
`check_transition` raises on any other move, because such a move is a bug in tether.
"""

from __future__ import annotations

import enum

__all__ = ["ALLOWED_FROM_CLIENT", "TRANSITIONS", "ConnectionState", "check_transition"]


class ConnectionState(enum.Enum):
    """Life cycle of one client connection on the server."""

    AWAITING_CONNECT = "awaiting_connect"  # transport up, no Connect frame yet
    AUTHENTICATING = "authenticating"  # token valid, waiting for the logic layer
    OPEN = "open"  # Connected sent, session registered
    CLOSING = "closing"  # Disconnect sent, transport closing
    CLOSED = "closed"  # transport gone


TRANSITIONS: dict[ConnectionState, frozenset[ConnectionState]] = {
    ConnectionState.AWAITING_CONNECT: frozenset(
        {ConnectionState.AUTHENTICATING, ConnectionState.CLOSING, ConnectionState.CLOSED}
    ),
    ConnectionState.AUTHENTICATING: frozenset(
        {ConnectionState.OPEN, ConnectionState.CLOSING, ConnectionState.CLOSED}
    ),
    ConnectionState.OPEN: frozenset({ConnectionState.CLOSING, ConnectionState.CLOSED}),
    ConnectionState.CLOSING: frozenset({ConnectionState.CLOSED}),
    ConnectionState.CLOSED: frozenset(),
}

# Frame kinds (the `Frame.kind` oneof field names) a client may send in each state.
# While the logic layer checks a Connect, only heartbeats are allowed: a client must wait
# for Connected before it sends anything else.
ALLOWED_FROM_CLIENT: dict[ConnectionState, frozenset[str]] = {
    ConnectionState.AWAITING_CONNECT: frozenset({"connect"}),
    ConnectionState.AUTHENTICATING: frozenset({"heartbeat"}),
    ConnectionState.OPEN: frozenset(
        {
            "heartbeat",
            "send",
            "deliver_ack",
            "set_status",
            "disconnect",
            "sync",
            "refresh",
            "unread",
            "group_request",
        }
    ),
    ConnectionState.CLOSING: frozenset(),
    ConnectionState.CLOSED: frozenset(),
}


def check_transition(current: ConnectionState, new: ConnectionState) -> None:
    """Raise RuntimeError unless the table allows moving from current to new."""
    if new not in TRANSITIONS[current]:
        raise RuntimeError(f"illegal connection state change {current.value} -> {new.value}")
