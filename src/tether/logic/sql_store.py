"""The store's queries, written once in the SQL that SQLite (>= 3.35) and PostgreSQL share.

A backend subclasses `SqlStore` and supplies transactions and statement execution on its own
connections. Queries here use `?` placeholders; the PostgreSQL backend numbers them.

The statements are chosen so that concurrent writers in several processes stay correct on
PostgreSQL, where transactions run under READ COMMITTED and are not serialized the way
SQLite serializes writers:

- A conversation's next sequence number is taken by one upsert of its `conversations` row
  (`... DO UPDATE SET last_sequence = last_sequence + 1 RETURNING last_sequence`). The upsert
  locks that row until the transaction ends, so a second writer waits, then increments the
  committed value: numbers are unique and, because a rolled-back increment is undone too,
  gapless.
- A message is inserted with `ON CONFLICT (sender, client_message_id) DO NOTHING`. When another
  transaction stored the same client message first, the insert waits for it to commit, stores
  nothing, and the store gives its sequence number back and returns the first message.

The group queries are in tether.logic.sql_groups.
"""

from __future__ import annotations

import time
import uuid
from abc import abstractmethod
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from typing import Any, Generic, TypeVar

from tether.logic import migrations
from tether.logic.sql_groups import SqlGroups
from tether.logic.store import (
    MESSAGE_KIND_GROUP_EVENT,
    MESSAGE_KIND_USER,
    Store,
    StoredMessage,
    StoreError,
    conversation_id,
    group_conversation_id,
)

__all__ = ["SqlStore"]

Connection = TypeVar("Connection")

_MESSAGE_COLUMNS = (
    "id, conversation_id, sequence, sender, sender_device, recipient, client_message_id, body, "
    "created_ms, kind"
)


class SqlStore(SqlGroups, Store, Generic[Connection]):
    """`Store` in portable SQL over a backend's connections."""

    def __init__(self, description: str) -> None:
        self.description = description
        """The database for messages and logs: a file path, or a URL with its password masked."""
        # The connection of the transaction the current task has open, if any. Each asyncio
        # task has its own value, so concurrent tasks never share a transaction.
        self._current: ContextVar[Connection | None] = ContextVar(
            f"tether-store-{id(self)}", default=None
        )

    # What a backend supplies.

    @abstractmethod
    def _begin(self) -> AbstractAsyncContextManager[Connection]:
        """Return a context that opens a transaction, yields its connection and commits.

        It rolls back when the block raises and raises StoreError when the database fails.
        """

    @abstractmethod
    async def _run(self, connection: Connection, sql: str, parameters: Sequence[object]) -> int:
        """Run one statement; return the number of rows it changed."""

    @abstractmethod
    async def _query(
        self, connection: Connection, sql: str, parameters: Sequence[object]
    ) -> list[tuple[Any, ...]]:
        """Run one statement; return its rows."""

    @abstractmethod
    async def _run_script(self, connection: Connection, script: str) -> None:
        """Run a migration script of several statements without parameters."""

    async def _lock_schema(self, connection: Connection) -> None:
        """Keep other processes from migrating until the transaction ends.

        SQLite needs nothing here: its write transactions exclude each other already.
        """

    # Transactions.

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        if self._current.get() is not None:
            yield  # joins the task's open transaction
            return
        async with self._begin() as connection:
            token = self._current.set(connection)
            try:
                yield
            finally:
                self._current.reset(token)

    async def _execute(self, sql: str, *parameters: object) -> int:
        connection = self._current.get()
        if connection is None:
            async with self.transaction():
                return await self._execute(sql, *parameters)
        return await self._run(connection, sql, parameters)

    async def _fetch(self, sql: str, *parameters: object) -> list[tuple[Any, ...]]:
        connection = self._current.get()
        if connection is None:
            async with self.transaction():
                return await self._fetch(sql, *parameters)
        return await self._query(connection, sql, parameters)

    async def _migrate(self, scripts: Sequence[str]) -> None:
        """Apply the migrations the database lacks, all in one transaction."""
        async with self.transaction():
            connection = self._current.get()
            assert connection is not None
            await self._lock_schema(connection)
            await self._execute(migrations.VERSION_TABLE)
            rows = await self._fetch("SELECT version FROM schema_version")
            version = int(rows[0][0]) if rows else 0
            if version > len(scripts):
                raise StoreError(
                    f"the database {self.description} has schema version {version}, newer than "
                    f"this tether knows ({len(scripts)}); upgrade tether"
                )
            for script in scripts[version:]:
                await self._run_script(connection, script)
            if version < len(scripts):
                await self._execute("DELETE FROM schema_version")
                await self._execute("INSERT INTO schema_version VALUES (?)", len(scripts))

    # Users and contacts.

    async def ensure_user(self, user_id: str) -> None:
        await self._execute(
            "INSERT INTO users VALUES (?, ?) ON CONFLICT DO NOTHING", user_id, _now_ms()
        )

    async def contacts(self, user_id: str) -> list[str]:
        rows = await self._fetch(
            "SELECT contact_id FROM contacts WHERE user_id = ? ORDER BY contact_id", user_id
        )
        return [str(row[0]) for row in rows]

    async def are_contacts(self, user_id: str, other: str) -> bool:
        rows = await self._fetch(
            "SELECT 1 FROM contacts WHERE user_id = ? AND contact_id = ?", user_id, other
        )
        return bool(rows)

    async def add_contacts(self, user_a: str, user_b: str) -> bool:
        if user_a == user_b:
            raise ValueError("a user cannot be their own contact")
        now = _now_ms()
        async with self.transaction():
            await self.ensure_user(user_a)
            await self.ensure_user(user_b)
            changed = 0
            for user, contact in ((user_a, user_b), (user_b, user_a)):
                changed += await self._execute(
                    "INSERT INTO contacts VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                    user,
                    contact,
                    now,
                )
        return changed > 0

    async def remove_contacts(self, user_a: str, user_b: str) -> bool:
        changed = await self._execute(
            "DELETE FROM contacts WHERE (user_id = ? AND contact_id = ?) "
            "OR (user_id = ? AND contact_id = ?)",
            user_a,
            user_b,
            user_b,
            user_a,
        )
        return changed > 0

    # Messages.

    async def store_direct(
        self,
        *,
        sender: str,
        sender_device: str,
        recipient: str,
        client_message_id: str,
        body: bytes,
    ) -> StoredMessage:
        return await self._store_message(
            conversation_id(sender, recipient),
            sender=sender,
            sender_device=sender_device,
            recipient=recipient,
            client_message_id=client_message_id,
            body=body,
            record_participants=True,
        )

    async def store_group(
        self,
        *,
        sender: str,
        sender_device: str,
        group_id: str,
        client_message_id: str,
        body: bytes,
    ) -> StoredMessage:
        conversation = group_conversation_id(group_id)
        return await self._store_message(
            conversation,
            sender=sender,
            sender_device=sender_device,
            recipient=conversation,
            client_message_id=client_message_id,
            body=body,
            record_participants=False,  # a group's participants are its members
        )

    async def store_group_event(self, *, group_id: str, actor: str, event: bytes) -> StoredMessage:
        conversation = group_conversation_id(group_id)
        return await self._store_message(
            conversation,
            sender=actor,
            sender_device="",
            recipient=conversation,
            client_message_id=f"group-event-{uuid.uuid4().hex}",  # unique, as the column must be
            body=event,
            record_participants=False,
            kind=MESSAGE_KIND_GROUP_EVENT,
        )

    async def _store_message(
        self,
        conversation: str,
        *,
        sender: str,
        sender_device: str,
        recipient: str,
        client_message_id: str,
        body: bytes,
        record_participants: bool,
        kind: int = MESSAGE_KIND_USER,
    ) -> StoredMessage:
        """Store a message with the next sequence number of its conversation, once per id."""
        async with self.transaction():
            existing = await self._find_message(sender, client_message_id)
            if existing is not None:
                return existing

            now = _now_ms()
            rows = await self._fetch(
                "INSERT INTO conversations VALUES (?, 1) ON CONFLICT (id) "
                "DO UPDATE SET last_sequence = conversations.last_sequence + 1 "
                "RETURNING last_sequence",
                conversation,
            )
            sequence = int(rows[0][0])
            inserted = await self._fetch(
                "INSERT INTO messages (conversation_id, sequence, sender, sender_device, "
                "recipient, client_message_id, body, created_ms, kind) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (sender, client_message_id) DO NOTHING RETURNING id",
                conversation,
                sequence,
                sender,
                sender_device,
                recipient,
                client_message_id,
                body,
                now,
                kind,
            )
            if not inserted:
                return await self._lost_race(conversation, sender, client_message_id)

            if record_participants:
                await self._execute(
                    "INSERT INTO conversation_members VALUES (?, ?), (?, ?) ON CONFLICT DO NOTHING",
                    sender,
                    conversation,
                    recipient,
                    conversation,
                )
        return StoredMessage(
            int(inserted[0][0]),
            conversation,
            sequence,
            sender,
            sender_device,
            recipient,
            client_message_id,
            body,
            now,
            new=True,
            kind=kind,
        )

    async def _lost_race(
        self, conversation: str, sender: str, client_message_id: str
    ) -> StoredMessage:
        """Undo this transaction's sequence number and return the message stored meanwhile.

        Another process committed the same (sender, client_message_id) after the first check
        of store_direct. This transaction still holds the lock on its conversation row, so no
        one has taken a number after its own and giving it back leaves no gap.
        """
        await self._execute(
            "UPDATE conversations SET last_sequence = last_sequence - 1 WHERE id = ?",
            conversation,
        )
        existing = await self._find_message(sender, client_message_id)
        if existing is None:
            raise StoreError(
                f"message {client_message_id!r} of {sender!r} conflicted, then was not found"
            )
        return existing

    async def _find_message(self, sender: str, client_message_id: str) -> StoredMessage | None:
        rows = await self._fetch(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE sender = ? AND client_message_id = ?",
            sender,
            client_message_id,
        )
        return _message(rows[0]) if rows else None

    async def history(
        self, conversation: str, after_sequence: int, limit: int
    ) -> list[StoredMessage]:
        rows = await self._fetch(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conversation_id = ? AND sequence > ? "
            "ORDER BY sequence LIMIT ?",
            conversation,
            after_sequence,
            limit,
        )
        return [_message(row) for row in rows]

    async def is_participant(self, user_id: str, conversation: str) -> bool:
        rows = await self._fetch(
            "SELECT 1 FROM conversation_members WHERE user_id = ? AND conversation_id = ?",
            user_id,
            conversation,
        )
        return bool(rows)

    async def last_sequence(self, conversation: str) -> int:
        rows = await self._fetch(
            "SELECT last_sequence FROM conversations WHERE id = ?", conversation
        )
        return int(rows[0][0]) if rows else 0

    async def unread(self, user_id: str, device_id: str, limit: int) -> list[tuple[str, int, int]]:
        rows = await self._fetch(
            "SELECT c.id, c.last_sequence, COALESCE(r.sequence, 0) AS read_sequence "
            "FROM conversation_members m JOIN conversations c ON c.id = m.conversation_id "
            "LEFT JOIN read_markers r ON r.user_id = m.user_id AND r.device_id = ? "
            "AND r.conversation_id = c.id "
            "WHERE m.user_id = ? AND c.last_sequence > COALESCE(r.sequence, 0) "
            "ORDER BY c.id LIMIT ?",
            device_id,
            user_id,
            limit,
        )
        return [(str(row[0]), int(row[1]), int(row[2])) for row in rows]

    async def mark_read(
        self, user_id: str, device_id: str, conversation: str, sequence: int
    ) -> None:
        async with self.transaction():
            last = await self._fetch(
                "SELECT last_sequence FROM conversations WHERE id = ?", conversation
            )
            if not last:
                return
            # Clamped to the last sequence, which also keeps it inside 64-bit integers.
            sequence = min(sequence, int(last[0][0]))
            await self._execute(
                "INSERT INTO read_markers VALUES (?, ?, ?, ?) "
                "ON CONFLICT (user_id, device_id, conversation_id) "
                "DO UPDATE SET sequence = excluded.sequence "
                "WHERE excluded.sequence > read_markers.sequence",
                user_id,
                device_id,
                conversation,
                sequence,
            )

    async def read_marker(self, user_id: str, device_id: str, conversation: str) -> int:
        rows = await self._fetch(
            "SELECT sequence FROM read_markers WHERE user_id = ? AND device_id = ? "
            "AND conversation_id = ?",
            user_id,
            device_id,
            conversation,
        )
        return int(rows[0][0]) if rows else 0


def _message(row: tuple[Any, ...]) -> StoredMessage:
    """Build a StoredMessage from a row of _MESSAGE_COLUMNS; it existed before, so not new."""
    return StoredMessage(
        message_id=int(row[0]),
        conversation_id=str(row[1]),
        sequence=int(row[2]),
        sender=str(row[3]),
        sender_device=str(row[4]),
        recipient=str(row[5]),
        client_message_id=str(row[6]),
        body=bytes(row[7]),
        created_ms=int(row[8]),
        new=False,
        kind=int(row[9]),
    )


def _now_ms() -> int:
    return int(time.time() * 1000)
