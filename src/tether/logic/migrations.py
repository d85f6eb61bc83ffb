"""Schema migrations of the logic store, one list per SQL dialect.

Migration N of SQLITE and migration N of POSTGRES make the same change, each in its own
dialect, so both backends have the same tables and columns at every version (a test compares
them). The version a database has reached is the one row of its `schema_version` table.
Append new migrations to both lists; never edit one that has shipped, because databases
that already applied it would not run it again.

Differences between the dialects:

- PostgreSQL declares text keys `COLLATE "C"`, so ORDER BY sorts them in byte order, as
  SQLite does, whatever the database's default collation is.
- Integers are BIGINT in PostgreSQL, the same signed 64-bit range as SQLite's INTEGER.
- Message ids come from AUTOINCREMENT in SQLite and from an identity column in PostgreSQL.
"""

from __future__ import annotations

__all__ = ["POSTGRES", "SQLITE", "VERSION_TABLE", "statements"]

VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"

SQLITE: list[str] = [
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
    # Groups. Their members are the participants of the conversation "g:" || id, and the
    # index lists a conversation's participants.
    """
    CREATE TABLE chat_groups (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        member_count INTEGER NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE INDEX conversation_members_by_conversation
        ON conversation_members (conversation_id, user_id);
    """,
    # What a message is: 0 a message a user sent, 1 a group's system message, whose body is
    # an encoded tether.v1.GroupEvent.
    """
    ALTER TABLE messages ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;
    """,
    # A group's incarnation: the message id of its first message, the event of its creation.
    # Message ids are never reused, so a group created again under a deleted group's id gets
    # another one. A group without messages keeps 0, which clients read as unknown.
    """
    ALTER TABLE chat_groups ADD COLUMN incarnation INTEGER NOT NULL DEFAULT 0;
    UPDATE chat_groups SET incarnation = COALESCE(
        (SELECT m.id FROM messages m
         WHERE m.conversation_id = 'g:' || chat_groups.id AND m.sequence = 1), 0);
    """,
]

POSTGRES: list[str] = [
    """
    CREATE TABLE users (
        id TEXT COLLATE "C" PRIMARY KEY,
        created_ms BIGINT NOT NULL
    );
    CREATE TABLE contacts (
        user_id TEXT COLLATE "C" NOT NULL,
        contact_id TEXT COLLATE "C" NOT NULL,
        created_ms BIGINT NOT NULL,
        PRIMARY KEY (user_id, contact_id)
    );
    CREATE TABLE conversations (
        id TEXT COLLATE "C" PRIMARY KEY,
        last_sequence BIGINT NOT NULL
    );
    CREATE TABLE messages (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        conversation_id TEXT COLLATE "C" NOT NULL,
        sequence BIGINT NOT NULL,
        sender TEXT COLLATE "C" NOT NULL,
        sender_device TEXT NOT NULL,
        recipient TEXT COLLATE "C" NOT NULL,
        client_message_id TEXT NOT NULL,
        body BYTEA NOT NULL,
        created_ms BIGINT NOT NULL,
        UNIQUE (conversation_id, sequence),
        UNIQUE (sender, client_message_id)
    );
    CREATE TABLE read_markers (
        user_id TEXT COLLATE "C" NOT NULL,
        device_id TEXT NOT NULL,
        conversation_id TEXT COLLATE "C" NOT NULL,
        sequence BIGINT NOT NULL,
        PRIMARY KEY (user_id, device_id, conversation_id)
    );
    """,
    """
    CREATE TABLE conversation_members (
        user_id TEXT COLLATE "C" NOT NULL,
        conversation_id TEXT COLLATE "C" NOT NULL,
        PRIMARY KEY (user_id, conversation_id)
    );
    INSERT INTO conversation_members
        SELECT sender, conversation_id FROM messages ON CONFLICT DO NOTHING;
    INSERT INTO conversation_members
        SELECT recipient, conversation_id FROM messages ON CONFLICT DO NOTHING;
    """,
    """
    CREATE TABLE chat_groups (
        id TEXT COLLATE "C" PRIMARY KEY,
        owner TEXT COLLATE "C" NOT NULL,
        member_count BIGINT NOT NULL,
        created_ms BIGINT NOT NULL
    );
    CREATE INDEX conversation_members_by_conversation
        ON conversation_members (conversation_id, user_id);
    """,
    """
    ALTER TABLE messages ADD COLUMN kind BIGINT NOT NULL DEFAULT 0;
    """,
    """
    ALTER TABLE chat_groups ADD COLUMN incarnation BIGINT NOT NULL DEFAULT 0;
    UPDATE chat_groups SET incarnation = COALESCE(
        (SELECT m.id FROM messages m
         WHERE m.conversation_id = 'g:' || chat_groups.id AND m.sequence = 1), 0);
    """,
]

if len(SQLITE) != len(POSTGRES):
    raise AssertionError("every migration needs a SQLite and a PostgreSQL version")


def statements(script: str) -> list[str]:
    """Split a migration into its statements (the scripts contain no ';' inside literals)."""
    return [statement.strip() for statement in script.split(";") if statement.strip()]
