"""The store of the reference logic: users, contacts, groups, messages and read markers.

`Store` is the interface the logic service uses. Two backends implement it with the same
schema and the same behaviour, and one test suite runs against both:

- `SqliteStore` (tether.logic.sqlite_store): a SQLite file, the embedded default.
- `PostgresStore` (tether.logic.postgres_store): a PostgreSQL server through asyncpg, for
  logic workers on several machines.

`open_store` picks the backend from the database setting: a `postgresql://` or
`postgres://` URL opens PostgreSQL, anything else is the path of a SQLite file. Opening a
store applies the schema migrations it lacks (tether.logic.migrations).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

from tether.protocol.errors import TetherError
from tether.urls import redact_url

__all__ = [
    "GROUP_PREFIX",
    "MAX_GROUP_ID_CHARS",
    "MAX_STORED_INTEGER",
    "MESSAGE_KIND_GROUP_EVENT",
    "MESSAGE_KIND_USER",
    "POSTGRES_SCHEMES",
    "GroupRecord",
    "Store",
    "StoreConflict",
    "StoreError",
    "StoredMessage",
    "conversation_id",
    "describe_database",
    "group_conversation_id",
    "group_of_conversation",
    "is_postgres_url",
    "open_store",
    "validate_group_id",
]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")

# Sequence numbers and ids are signed 64-bit integers in both backends (SQLite INTEGER,
# PostgreSQL BIGINT). Larger values from clients are clamped to this before a query.
MAX_STORED_INTEGER = 2**63 - 1

# A group's conversation id is this prefix and the group id. User ids cannot contain ":", so
# a recipient or conversation id that starts with it always names a group.
GROUP_PREFIX = "g:"
# Group ids are shorter than user ids so that "g:" + id fits the 64 bytes of a Send recipient.
MAX_GROUP_ID_CHARS = 62

# Values of StoredMessage.kind (the messages table's kind column).
MESSAGE_KIND_USER = 0
MESSAGE_KIND_GROUP_EVENT = 1
_GROUP_ID_PATTERN = re.compile(r"[A-Za-z0-9_\-.@+=]+")


class StoreError(TetherError):
    """The store failed; wraps the database driver's error that caused it."""


class StoreConflict(StoreError):
    """A transaction lost a race with another writer (deadlock); running it again may succeed."""


def conversation_id(user_a: str, user_b: str) -> str:
    """Return the id of the direct conversation between two users (order does not matter)."""
    first, second = sorted((user_a, user_b))
    return f"d:{first}:{second}"


def group_conversation_id(group_id: str) -> str:
    """Return the conversation id of a group's messages."""
    return GROUP_PREFIX + group_id


def group_of_conversation(conversation: str) -> str | None:
    """Return the group id of a group conversation id, or None for a direct conversation."""
    if conversation.startswith(GROUP_PREFIX):
        return conversation[len(GROUP_PREFIX) :]
    return None


def validate_group_id(group_id: str) -> str:
    """Return group_id if it is valid; else raise ValueError.

    A group id is 1 to 62 ASCII letters, digits and `_-.@+=`, the characters of a user id.
    """
    if not 0 < len(group_id) <= MAX_GROUP_ID_CHARS:
        raise ValueError(
            f"group id must be 1 to {MAX_GROUP_ID_CHARS} characters, got {len(group_id)}"
        )
    if not _GROUP_ID_PATTERN.fullmatch(group_id):
        raise ValueError(
            f"group id {group_id!r} may contain only ASCII letters, digits and the characters "
            "_-.@+="
        )
    return group_id


def is_postgres_url(database: str | Path) -> bool:
    """Tell whether a database setting names a PostgreSQL server rather than a SQLite file."""
    return isinstance(database, str) and database.startswith(POSTGRES_SCHEMES)


def describe_database(database: str | Path) -> str:
    """Return the database setting in a form safe to log: a URL's password is masked."""
    if is_postgres_url(database):
        return redact_url(str(database))
    return str(database)


@dataclass(frozen=True, slots=True)
class GroupRecord:
    """A group as stored: its owner and how many members it has."""

    group_id: str
    owner: str
    member_count: int
    created_ms: int
    incarnation: int = 0
    """The message id of the group's creation event, which distinguishes this group from
    others created under its id before or after; 0 until the event is stored."""

    @property
    def conversation_id(self) -> str:
        """The id of the group's conversation, `g:` and the group id."""
        return group_conversation_id(self.group_id)


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A direct or group message as stored.

    For a group message, `recipient` and `conversation_id` are both the group's conversation
    id.
    """

    message_id: int
    conversation_id: str
    sequence: int
    sender: str
    sender_device: str
    recipient: str
    client_message_id: str
    body: bytes
    created_ms: int
    new: bool
    """False when the message existed already (a resend with the same client_message_id)."""
    kind: int = MESSAGE_KIND_USER
    """MESSAGE_KIND_USER for a message a user sent, MESSAGE_KIND_GROUP_EVENT for a group's
    system message, whose body is an encoded tether.v1.GroupEvent."""


class Store(ABC):
    """Async access to the logic's database.

    Every method runs in the caller's open transaction (`transaction()`), or else in a
    transaction of its own, so a method that writes several rows is atomic either way.
    Database failures raise StoreError; a deadlock with another writer raises StoreConflict.
    """

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[None]:
        """Return a context that runs the calls of the current task in one transaction.

        It commits when the block ends and rolls back when the block raises. A nested
        `transaction()` of the same task joins the outer one.
        """

    @abstractmethod
    async def close(self) -> None:
        """Close the database connections."""

    # Users and contacts.

    @abstractmethod
    async def ensure_user(self, user_id: str) -> None:
        """Record a user if it is not known yet."""

    @abstractmethod
    async def contacts(self, user_id: str) -> list[str]:
        """Return the contacts of a user in id order (byte order of the UTF-8 ids)."""

    @abstractmethod
    async def are_contacts(self, user_id: str, other: str) -> bool:
        """Tell whether other is a contact of user_id."""

    @abstractmethod
    async def add_contacts(self, user_a: str, user_b: str) -> bool:
        """Make two users mutual contacts; return False if they were already.

        Raises ValueError when both are the same user.
        """

    @abstractmethod
    async def remove_contacts(self, user_a: str, user_b: str) -> bool:
        """End a contact relation in both directions; return False if there was none."""

    # Messages.

    @abstractmethod
    async def store_direct(
        self,
        *,
        sender: str,
        sender_device: str,
        recipient: str,
        client_message_id: str,
        body: bytes,
    ) -> StoredMessage:
        """Store a direct message with the next sequence number of its conversation.

        Sequence numbers of a conversation start at 1 and have no gaps, even when several
        processes store to the conversation at once. A second call with the same sender and
        client_message_id stores nothing and returns the first message with `new` set to
        False, also when the two calls race in different processes.
        """

    @abstractmethod
    async def store_group(
        self,
        *,
        sender: str,
        sender_device: str,
        group_id: str,
        client_message_id: str,
        body: bytes,
    ) -> StoredMessage:
        """Store a group message with the next sequence number of the group's conversation.

        The same rules as store_direct apply: gapless sequence numbers, and one message per
        sender and client_message_id across direct and group messages. The caller checks
        that the sender is a member.
        """

    @abstractmethod
    async def store_group_event(self, *, group_id: str, actor: str, event: bytes) -> StoredMessage:
        """Store a system message of a group (kind MESSAGE_KIND_GROUP_EVENT) with the next
        sequence number of the group's conversation.

        event is an encoded tether.v1.GroupEvent, and actor the user who made the change
        (empty for an operator). Each call stores a new message.
        """

    @abstractmethod
    async def history(
        self, conversation: str, after_sequence: int, limit: int
    ) -> list[StoredMessage]:
        """Return up to limit messages of a conversation with sequence above after_sequence."""

    @abstractmethod
    async def is_participant(self, user_id: str, conversation: str) -> bool:
        """Tell whether user_id takes part in a conversation.

        A user takes part in a direct conversation once it contains a message of the user, and
        in a group's conversation while the user is a member.
        """

    @abstractmethod
    async def last_sequence(self, conversation: str) -> int:
        """Return the newest sequence number of a conversation, 0 if it has no message."""

    @abstractmethod
    async def unread(self, user_id: str, device_id: str, limit: int) -> list[tuple[str, int, int]]:
        """Return (conversation, last sequence, read sequence) where the device is behind.

        At most limit rows, in conversation id order.
        """

    @abstractmethod
    async def mark_read(
        self, user_id: str, device_id: str, conversation: str, sequence: int
    ) -> None:
        """Advance a device's read marker in a conversation (never back, never past the end)."""

    @abstractmethod
    async def read_marker(self, user_id: str, device_id: str, conversation: str) -> int:
        """Return a device's read marker in a conversation, 0 if it has none."""

    # Groups. Members are the participants of the group's conversation.

    @abstractmethod
    async def create_group(self, group_id: str, owner: str) -> bool:
        """Create a group with owner as its first member; return False if the id is taken."""

    @abstractmethod
    async def group(self, group_id: str, *, lock: bool = False) -> GroupRecord | None:
        """Return a group, or None if there is none with this id.

        With lock set, the group's row stays locked until the transaction ends, so that no
        other logic worker changes or deletes the group between a check and the change it
        allows (PostgreSQL; SQLite has one writer at a time anyway).
        """

    @abstractmethod
    async def add_group_members(self, group_id: str, user_ids: list[str]) -> list[str]:
        """Add users to an existing group; return those who were not members, in input order.

        Users not known yet are recorded. The group's member count grows by the number
        returned.
        """

    @abstractmethod
    async def remove_group_members(self, group_id: str, user_ids: list[str]) -> list[str]:
        """Remove users from a group; return those who were members, in input order."""

    @abstractmethod
    async def delete_group(self, group_id: str) -> bool:
        """Delete a group with its members, messages and read markers; False if it was gone."""

    @abstractmethod
    async def set_group_owner(self, group_id: str, owner: str) -> None:
        """Make owner, a member of the group, its owner."""

    @abstractmethod
    async def set_group_incarnation(self, group_id: str, incarnation: int) -> None:
        """Record the message id of a new group's creation event as its incarnation."""

    @abstractmethod
    async def group_members(
        self, group_id: str, *, after: str = "", limit: int | None = None
    ) -> list[str]:
        """Return the members of a group in id order (byte order of the UTF-8 ids).

        With after, only members whose id sorts after it; with limit, at most that many.
        """

    @abstractmethod
    async def user_groups(self, user_id: str) -> list[GroupRecord]:
        """Return the groups a user belongs to, in group id order."""

    @abstractmethod
    async def group_counts(self, user_ids: list[str]) -> dict[str, int]:
        """Return how many groups each of the users belongs to; users in none are left out."""


async def open_store(database: str | Path) -> Store:
    """Open the store a database setting names and apply the migrations it lacks.

    Raises StoreError when the database cannot be opened or migrated.
    """
    # The backends are imported here, so an embedded server never loads asyncpg.
    if is_postgres_url(database):
        from tether.logic.postgres_store import PostgresStore

        return await PostgresStore.open(str(database))
    from tether.logic.sqlite_store import SqliteStore

    return await SqliteStore.open(Path(database))
