"""Events a client receives, as plain dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field

from tether.protocol import tether_pb2 as pb

__all__ = [
    "ContactsChanged",
    "Disconnected",
    "Event",
    "Group",
    "GroupEvent",
    "GroupOnline",
    "GroupsChanged",
    "Message",
    "Presence",
    "PresenceChanged",
    "PresenceSnapshot",
    "SessionOpened",
    "status_name",
]


def status_name(status: int) -> str:
    """Return "online", "away", "busy" or "offline" for a `tether.v1.Status` value."""
    return pb.Status.Name(status).removeprefix("STATUS_").lower()


@dataclass(frozen=True, slots=True)
class Presence:
    """Presence of one user."""

    user_id: str
    status: str  # "online", "away", "busy" or "offline"
    last_seen_ms: int
    version: int

    @classmethod
    def from_proto(cls, presence: pb.UserPresence) -> Presence:
        return cls(
            presence.user_id, status_name(presence.status), presence.last_seen_ms, presence.version
        )


@dataclass(frozen=True, slots=True)
class SessionOpened:
    """The server accepted the connection (sent after every reconnect too)."""

    session_id: str
    user_id: str
    heartbeat_interval: float
    offline_timeout: float


@dataclass(frozen=True, slots=True)
class PresenceSnapshot:
    """Presence of every contact, sent once per connection."""

    contacts: dict[str, Presence]


@dataclass(frozen=True, slots=True)
class PresenceChanged:
    """One contact's presence changed."""

    presence: Presence


@dataclass(frozen=True, slots=True)
class ContactsChanged:
    added: list[str]
    removed: list[str]


@dataclass(frozen=True, slots=True)
class Group:
    """A group this user belongs to. Its messages carry `conversation_id` ("g:" + group_id)."""

    group_id: str
    conversation_id: str
    owner: str
    member_count: int
    incarnation: int = 0
    """Differs between groups created under the same id one after the other; 0 if the
    server does not send it."""

    @classmethod
    def from_proto(cls, group: pb.Group) -> Group:
        return cls(
            group.group_id,
            group.conversation_id,
            group.owner,
            group.member_count,
            group.incarnation,
        )


@dataclass(frozen=True, slots=True)
class GroupsChanged:
    """This user was added to or removed from groups while connected.

    `deleted` lists the groups of `left` that were deleted rather than left.
    """

    joined: list[Group]
    left: list[str]
    deleted: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class GroupEvent:
    """A change of a group's members or owner, in order with the group's messages.

    `kind` is "created" (user_ids are the first members besides the owner), "members_added",
    "members_removed" (user_ids == [actor] when a member left) or "owner_changed" (user_ids
    is the new owner). `actor` is the member who made the change, empty for an operator.
    """

    group_id: str
    conversation_id: str
    sequence: int
    kind: str
    actor: str
    user_ids: list[str]
    timestamp_ms: int

    @classmethod
    def from_proto(cls, message: pb.Message) -> GroupEvent:
        event = message.group_event
        return cls(
            message.conversation_id.removeprefix("g:"),
            message.conversation_id,
            message.sequence,
            pb.GroupEventKind.Name(event.kind).removeprefix("GROUP_EVENT_").lower(),
            event.actor,
            list(event.user_ids),
            message.timestamp_ms,
        )


@dataclass(frozen=True, slots=True)
class GroupOnline:
    """How many members of a large group are online, across the whole cluster."""

    group_id: str
    online: int
    member_count: int


@dataclass(frozen=True, slots=True)
class Message:
    """A message for this user: direct (from a contact or from this user's other device) or in
    a group, where `recipient` and `conversation_id` are "g:" + the group id."""

    message_id: int
    conversation_id: str
    sequence: int
    sender: str
    sender_device: str
    recipient: str
    body: bytes
    timestamp_ms: int
    client_message_id: str

    @classmethod
    def from_proto(cls, message: pb.Message) -> Message:
        return cls(
            message.message_id,
            message.conversation_id,
            message.sequence,
            message.sender,
            message.sender_device,
            message.recipient,
            message.body,
            message.timestamp_ms,
            message.client_message_id,
        )


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The connection closed. `reconnecting` is False after a final code or `close()`."""

    code: int
    reason: str
    reconnecting: bool


Event = (
    SessionOpened
    | PresenceSnapshot
    | PresenceChanged
    | ContactsChanged
    | Message
    | GroupsChanged
    | GroupEvent
    | GroupOnline
    | Disconnected
)
