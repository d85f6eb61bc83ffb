"""The store of the reference logic: users, mutual contacts, direct messages, read markers.

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

from abc import ABC, abstractmethod
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

from tether.protocol.errors import TetherError
from tether.urls import redact_url

__all__ = [
    "MAX_STORED_INTEGER",
    "POSTGRES_SCHEMES",
    "Store",
    "StoreConflict",
    "StoreError",
    "StoredMessage",
    "conversation_id",
    "describe_database",
    "is_postgres_url",
    "open_store",
]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")

# Sequence numbers and ids are signed 64-bit integers in both backends (SQLite INTEGER,
# PostgreSQL BIGINT). Larger values from clients are clamped to this before a query.
MAX_STORED_INTEGER = 2**63 - 1


class StoreError(TetherError):
    """The store failed; wraps the database driver's error that caused it."""


class StoreConflict(StoreError):
    """A transaction lost a race with another writer (deadlock); running it again may succeed."""


def conversation_id(user_a: str, user_b: str) -> str:
    """Return the id of the direct conversation between two users (order does not matter)."""
    first, second = sorted((user_a, user_b))
    return f"d:{first}:{second}"


def is_postgres_url(database: str | Path) -> bool:
    """Tell whether a database setting names a PostgreSQL server rather than a SQLite file."""
    return isinstance(database, str) and database.startswith(POSTGRES_SCHEMES)


def describe_database(database: str | Path) -> str:
    """Return the database setting in a form safe to log: a URL's password is masked."""
    if is_postgres_url(database):
        return redact_url(str(database))
    return str(database)


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A direct message as stored."""

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
    async def history(
        self, conversation: str, after_sequence: int, limit: int
    ) -> list[StoredMessage]:
        """Return up to limit messages of a conversation with sequence above after_sequence."""

    @abstractmethod
    async def is_participant(self, user_id: str, conversation: str) -> bool:
        """Tell whether user_id takes part in a stored conversation."""

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
