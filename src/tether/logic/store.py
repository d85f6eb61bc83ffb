"""SQLite store of the reference logic: users, mutual contacts, direct messages, read markers.

The database lives in the data directory. WAL mode lets `tether contacts add` write while a
server runs. Schema changes are numbered migrations applied in order at open.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Store", "StoreError", "StoredMessage", "conversation_id"]

_MIGRATIONS: list[str] = [
    """
    CREATE TABLE users (
        id TEXT PRIMARY KEY,
        created_ms INTEGER NOT NULL
    );
    CREATE TABLE contacts (
        user_id TEXT NOT NULL,
        contact_id TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        PRIMARY KEY (user_id, contact_id)
    ) WITHOUT ROWID;
    CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        last_sequence INTEGER NOT NULL
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation_id TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        sender TEXT NOT NULL,
        sender_device TEXT NOT NULL,
        recipient TEXT NOT NULL,
        client_message_id TEXT NOT NULL,
        body BLOB NOT NULL,
        created_ms INTEGER NOT NULL,
        UNIQUE (conversation_id, sequence),
        UNIQUE (sender, client_message_id)
    );
    CREATE TABLE read_markers (
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        conversation_id TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        PRIMARY KEY (user_id, device_id, conversation_id)
    ) WITHOUT ROWID;
    """,
    # Who takes part in each conversation, so a device's unread conversations are one query.
    """
    CREATE TABLE conversation_members (
        user_id TEXT NOT NULL,
        conversation_id TEXT NOT NULL,
        PRIMARY KEY (user_id, conversation_id)
    ) WITHOUT ROWID;
    INSERT OR IGNORE INTO conversation_members
        SELECT sender, conversation_id FROM messages;
    INSERT OR IGNORE INTO conversation_members
        SELECT recipient, conversation_id FROM messages;
    """,
]


class StoreError(Exception):
    """The store failed; wraps the sqlite3 error that caused it."""


def conversation_id(user_a: str, user_b: str) -> str:
    """Return the id of the direct conversation between two users (order does not matter)."""
    first, second = sorted((user_a, user_b))
    return f"d:{first}:{second}"


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


class Store:
    """Synchronous access to the SQLite database. Not thread-safe: one owner at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, timeout=5.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.Error as error:
            raise StoreError(f"cannot open database {path}: {error}") from error

    def close(self) -> None:
        self._db.close()

    def _migrate(self) -> None:
        db = self._db
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = db.execute("SELECT version FROM schema_version").fetchone()
        version = row[0] if row else 0
        for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in script.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute("DELETE FROM schema_version")
                db.execute("INSERT INTO schema_version VALUES (?)", (number,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    # Transactions: the logic service groups a batch of requests into one.

    def begin(self) -> None:
        self._run("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self._run("COMMIT")

    def rollback(self) -> None:
        if self._db.in_transaction:
            self._run("ROLLBACK")

    # Users and contacts.

    def ensure_user(self, user_id: str) -> None:
        self._run("INSERT OR IGNORE INTO users VALUES (?, ?)", (user_id, _now_ms()))

    def contacts(self, user_id: str) -> list[str]:
        rows = self._query(
            "SELECT contact_id FROM contacts WHERE user_id = ? ORDER BY contact_id", (user_id,)
        )
        return [row[0] for row in rows]

    def are_contacts(self, user_id: str, other: str) -> bool:
        rows = self._query(
            "SELECT 1 FROM contacts WHERE user_id = ? AND contact_id = ?", (user_id, other)
        )
        return bool(rows)

    def add_contacts(self, user_a: str, user_b: str) -> bool:
        """Make two users mutual contacts; return False if they were already."""
        if user_a == user_b:
            raise ValueError("a user cannot be their own contact")
        now = _now_ms()
        self.ensure_user(user_a)
        self.ensure_user(user_b)
        before = self._db.total_changes
        self._run("INSERT OR IGNORE INTO contacts VALUES (?, ?, ?)", (user_a, user_b, now))
        self._run("INSERT OR IGNORE INTO contacts VALUES (?, ?, ?)", (user_b, user_a, now))
        return self._db.total_changes > before

    def remove_contacts(self, user_a: str, user_b: str) -> bool:
        """End a contact relation in both directions; return False if there was none."""
        before = self._db.total_changes
        self._run(
            "DELETE FROM contacts WHERE (user_id = ? AND contact_id = ?) "
            "OR (user_id = ? AND contact_id = ?)",
            (user_a, user_b, user_b, user_a),
        )
        return self._db.total_changes > before

    # Messages.

    def store_direct(
        self,
        *,
        sender: str,
        sender_device: str,
        recipient: str,
        client_message_id: str,
        body: bytes,
    ) -> StoredMessage:
        """Store a direct message with the next sequence number of its conversation.

        A second call with the same sender and client_message_id stores nothing and returns
        the first message, with `new` set to False.
        """
        existing = self._query(
            "SELECT id, conversation_id, sequence, sender_device, recipient, body, created_ms "
            "FROM messages WHERE sender = ? AND client_message_id = ?",
            (sender, client_message_id),
        )
        if existing:
            row = existing[0]
            return StoredMessage(
                row[0],
                row[1],
                row[2],
                sender,
                row[3],
                row[4],
                client_message_id,
                row[5],
                row[6],
                new=False,
            )
        conversation = conversation_id(sender, recipient)
        now = _now_ms()
        self._run(
            "INSERT INTO conversations VALUES (?, 1) "
            "ON CONFLICT (id) DO UPDATE SET last_sequence = last_sequence + 1",
            (conversation,),
        )
        sequence = self._query(
            "SELECT last_sequence FROM conversations WHERE id = ?", (conversation,)
        )[0][0]
        for member in (sender, recipient):
            self._run(
                "INSERT OR IGNORE INTO conversation_members VALUES (?, ?)", (member, conversation)
            )
        cursor = self._run(
            "INSERT INTO messages (conversation_id, sequence, sender, sender_device, recipient, "
            "client_message_id, body, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                conversation,
                sequence,
                sender,
                sender_device,
                recipient,
                client_message_id,
                body,
                now,
            ),
        )
        message_id = cursor.lastrowid
        assert message_id is not None
        return StoredMessage(
            message_id,
            conversation,
            sequence,
            sender,
            sender_device,
            recipient,
            client_message_id,
            body,
            now,
            new=True,
        )

    def history(self, conversation: str, after_sequence: int, limit: int) -> list[StoredMessage]:
        """Return up to limit messages of a conversation with sequence above after_sequence."""
        rows = self._query(
            "SELECT id, sequence, sender, sender_device, recipient, client_message_id, body, "
            "created_ms FROM messages WHERE conversation_id = ? AND sequence > ? "
            "ORDER BY sequence LIMIT ?",
            (conversation, after_sequence, limit),
        )
        return [
            StoredMessage(r[0], conversation, r[1], r[2], r[3], r[4], r[5], r[6], r[7], new=False)
            for r in rows
        ]

    def is_participant(self, user_id: str, conversation: str) -> bool:
        """Tell whether user_id takes part in a stored conversation."""
        rows = self._query(
            "SELECT 1 FROM conversation_members WHERE user_id = ? AND conversation_id = ?",
            (user_id, conversation),
        )
        return bool(rows)

    def last_sequence(self, conversation: str) -> int:
        """Return the newest sequence number of a conversation, 0 if it has no message."""
        rows = self._query("SELECT last_sequence FROM conversations WHERE id = ?", (conversation,))
        return int(rows[0][0]) if rows else 0

    def unread(self, user_id: str, device_id: str, limit: int) -> list[tuple[str, int, int]]:
        """Return (conversation, last sequence, read sequence) where the device is behind.

        At most limit rows, in conversation id order.
        """
        rows = self._query(
            "SELECT c.id, c.last_sequence, COALESCE(r.sequence, 0) AS read_sequence "
            "FROM conversation_members m JOIN conversations c ON c.id = m.conversation_id "
            "LEFT JOIN read_markers r ON r.user_id = m.user_id AND r.device_id = ? "
            "AND r.conversation_id = c.id "
            "WHERE m.user_id = ? AND c.last_sequence > COALESCE(r.sequence, 0) "
            "ORDER BY c.id LIMIT ?",
            (device_id, user_id, limit),
        )
        return [(str(row[0]), int(row[1]), int(row[2])) for row in rows]

    def mark_read(self, user_id: str, device_id: str, conversation: str, sequence: int) -> None:
        # Clamped below to the last sequence, which also keeps it inside SQLite's integers.
        """Advance a device's read marker in a conversation (never back, never past the end)."""
        rows = self._query("SELECT last_sequence FROM conversations WHERE id = ?", (conversation,))
        if not rows:
            return
        sequence = min(sequence, int(rows[0][0]))
        self._run(
            "INSERT INTO read_markers VALUES (?, ?, ?, ?) "
            "ON CONFLICT DO UPDATE SET sequence = max(sequence, excluded.sequence)",
            (user_id, device_id, conversation, sequence),
        )

    def read_marker(self, user_id: str, device_id: str, conversation: str) -> int:
        rows = self._query(
            "SELECT sequence FROM read_markers WHERE user_id = ? AND device_id = ? "
            "AND conversation_id = ?",
            (user_id, device_id, conversation),
        )
        return int(rows[0][0]) if rows else 0

    def _run(self, sql: str, parameters: tuple[object, ...] = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, parameters)
        except sqlite3.Error as error:
            raise StoreError(f"{error} in: {sql.split()[0]} ...") from error

    def _query(self, sql: str, parameters: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self._run(sql, parameters).fetchall()
        return rows


def _now_ms() -> int:
    return int(time.time() * 1000)
