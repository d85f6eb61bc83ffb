"""The Python asyncio client SDK, also used by the tests and the load generator."""

from tether.client.client import TRANSPORT_LOST, Client
from tether.client.events import (
    ContactsChanged,
    Disconnected,
    Event,
    Group,
    GroupOnline,
    GroupsChanged,
    Message,
    Presence,
    PresenceChanged,
    PresenceSnapshot,
    SessionOpened,
)
from tether.protocol.codes import Code
from tether.protocol.errors import ConnectionClosed, RequestError

__all__ = [
    "TRANSPORT_LOST",
    "Client",
    "Code",
    "ConnectionClosed",
    "ContactsChanged",
    "Disconnected",
    "Event",
    "Group",
    "GroupOnline",
    "GroupsChanged",
    "Message",
    "Presence",
    "PresenceChanged",
    "PresenceSnapshot",
    "RequestError",
    "SessionOpened",
]
