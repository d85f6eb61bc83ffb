"""The logic store, without a server, on SQLite and on PostgreSQL.

Every test that takes the `store` fixture runs once per backend. The tests at the end need
several processes' worth of connections to one database, which only PostgreSQL has.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import query_database

from tether.logic import migrations
from tether.logic.store import (
    MESSAGE_KIND_GROUP_EVENT,
    MESSAGE_KIND_USER,
    GroupRecord,
    Store,
    StoreConflict,
    StoredMessage,
    StoreError,
    conversation_id,
    describe_database,
    group_of_conversation,
    is_postgres_url,
    open_store,
    validate_group_id,
)
from tether.urls import redact_url


@pytest.fixture
async def store(any_database: str) -> AsyncIterator[Store]:
    opened = await open_store(any_database)
    await opened.add_contacts("alice", "bob")
    yield opened
    await opened.close()


async def send(
    store: Store, sender: str, recipient: str, client_id: str, body: bytes = b"x"
) -> StoredMessage:
    return await store.store_direct(
        sender=sender,
        sender_device="d",
        recipient=recipient,
        client_message_id=client_id,
        body=body,
    )


def test_conversation_id_ignores_order() -> None:
    assert conversation_id("bob", "alice") == conversation_id("alice", "bob") == "d:alice:bob"


async def test_contacts_are_mutual(store: Store) -> None:
    assert await store.contacts("alice") == ["bob"]
    assert await store.contacts("bob") == ["alice"]
    assert await store.are_contacts("bob", "alice")


async def test_contacts_in_byte_order(store: Store) -> None:
    # PostgreSQL's default collation would sort these by language rules (case-insensitively,
    # ignoring punctuation); both backends must sort by bytes, as SQLite does.
    for other in ("b-2", "B1", "a_3", "ä4"):
        await store.add_contacts("zed", other)
    assert await store.contacts("zed") == ["B1", "a_3", "b-2", "ä4"]


async def test_add_contacts_twice_reports_no_change(store: Store) -> None:
    assert await store.add_contacts("bob", "alice") is False


async def test_own_contact_rejected(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.add_contacts("alice", "alice")


async def test_remove_contacts_both_ways(store: Store) -> None:
    assert await store.remove_contacts("bob", "alice") is True
    assert await store.contacts("alice") == []
    assert await store.remove_contacts("bob", "alice") is False


async def test_sequence_grows_per_conversation(store: Store) -> None:
    await store.add_contacts("alice", "carol")
    first = await send(store, "alice", "bob", "1")
    second = await send(store, "bob", "alice", "2")
    other = await send(store, "alice", "carol", "3")
    assert (first.sequence, second.sequence, other.sequence) == (1, 2, 1)
    assert first.message_id < second.message_id < other.message_id
    assert await store.last_sequence("d:alice:bob") == 2


async def test_same_client_id_stored_once(store: Store) -> None:
    first = await send(store, "alice", "bob", "same", b"one")
    again = await send(store, "alice", "bob", "same", b"two")
    assert first.new is True
    assert again.new is False
    assert again.message_id == first.message_id
    assert again.sequence == first.sequence
    assert again.created_ms == first.created_ms
    assert again.body == b"one"
    assert len(await store.history("d:alice:bob", 0, 10)) == 1
    assert await store.last_sequence("d:alice:bob") == 1


async def test_same_client_id_other_sender(store: Store) -> None:
    first = await send(store, "alice", "bob", "same")
    other = await send(store, "bob", "alice", "same")
    assert other.new is True
    assert other.message_id != first.message_id


async def test_history_pages_by_sequence(store: Store) -> None:
    for index in range(5):
        await send(store, "alice", "bob", str(index), body=bytes([index]))
    page = await store.history("d:alice:bob", 2, 2)
    assert [message.sequence for message in page] == [3, 4]
    assert [message.body for message in page] == [b"\x02", b"\x03"]
    assert all(message.conversation_id == "d:alice:bob" for message in page)
    assert await store.history("d:alice:bob", 2**63 - 1, 10) == []


async def test_history_returns_stored_fields(store: Store) -> None:
    stored = await send(store, "alice", "bob", "c1", b"\x00\xffbinary")
    (read,) = await store.history("d:alice:bob", 0, 10)
    assert read == StoredMessage(
        stored.message_id,
        "d:alice:bob",
        1,
        "alice",
        "d",
        "bob",
        "c1",
        b"\x00\xffbinary",
        stored.created_ms,
        new=False,
    )


async def test_read_marker_never_moves_back(store: Store) -> None:
    for index in range(5):
        await send(store, "alice", "bob", str(index))
    await store.mark_read("bob", "phone", "d:alice:bob", 5)
    await store.mark_read("bob", "phone", "d:alice:bob", 3)
    assert await store.read_marker("bob", "phone", "d:alice:bob") == 5


async def test_read_marker_stops_at_last_message(store: Store) -> None:
    await send(store, "alice", "bob", "1")
    await store.mark_read("bob", "phone", "d:alice:bob", 2**64 - 1)
    assert await store.read_marker("bob", "phone", "d:alice:bob") == 1
    await store.mark_read("bob", "phone", "d:nobody:zed", 1)
    assert await store.read_marker("bob", "phone", "d:nobody:zed") == 0


async def test_unread_lists_conversations_behind(store: Store) -> None:
    await store.add_contacts("carol", "bob")
    for index in range(3):
        await send(store, "alice", "bob", f"a{index}")
    await send(store, "carol", "bob", "c0")
    await store.mark_read("bob", "phone", "d:alice:bob", 1)
    await store.mark_read("bob", "phone", "d:bob:carol", 1)
    assert await store.unread("bob", "phone", 10) == [("d:alice:bob", 3, 1)]
    assert await store.unread("bob", "laptop", 10) == [("d:alice:bob", 3, 0), ("d:bob:carol", 1, 0)]
    assert await store.unread("bob", "laptop", 1) == [("d:alice:bob", 3, 0)]
    assert await store.unread("alice", "phone", 10) == [("d:alice:bob", 3, 0)]
    assert await store.unread("dave", "phone", 10) == []


async def test_participant_check(store: Store) -> None:
    await send(store, "alice", "bob", "1")
    assert await store.is_participant("bob", "d:alice:bob")
    assert not await store.is_participant("carol", "d:alice:bob")
    assert not await store.is_participant("bob", "d:bob:zed")  # no such conversation
    assert not await store.is_participant("bob", "g:bob")


async def test_transaction_rolls_back_on_error(store: Store) -> None:
    with pytest.raises(RuntimeError):
        async with store.transaction():
            await send(store, "alice", "bob", "lost")
            await store.add_contacts("alice", "carol")
            raise RuntimeError("abort the transaction")
    assert await store.history("d:alice:bob", 0, 10) == []
    assert await store.last_sequence("d:alice:bob") == 0
    assert await store.contacts("carol") == []
    assert (await send(store, "alice", "bob", "kept")).sequence == 1


async def test_nested_transaction_joins_outer(store: Store) -> None:
    with pytest.raises(RuntimeError):
        async with store.transaction():
            async with store.transaction():
                await send(store, "alice", "bob", "inner")
            raise RuntimeError("abort the outer transaction")
    assert await store.history("d:alice:bob", 0, 10) == []


async def test_tasks_get_separate_transactions(store: Store) -> None:
    """Two tasks run transactions on one store at once; the rolled-back one leaves no trace."""

    async def writer(name: str, fail: bool) -> None:
        async with store.transaction():
            for index in range(3):
                await send(store, "alice", "bob", f"{name}{index}")
                await asyncio.sleep(0.01)
            if fail:
                raise RuntimeError("roll this writer back")

    results = await asyncio.gather(writer("a", False), writer("b", True), return_exceptions=True)
    assert results[0] is None
    assert isinstance(results[1], RuntimeError)
    history = await store.history("d:alice:bob", 0, 10)
    assert [m.client_message_id for m in history] == ["a0", "a1", "a2"]
    assert [m.sequence for m in history] == [1, 2, 3]


# Groups.


async def send_group(
    store: Store, sender: str, group_id: str, client_id: str, body: bytes = b"x"
) -> StoredMessage:
    return await store.store_group(
        sender=sender,
        sender_device="d",
        group_id=group_id,
        client_message_id=client_id,
        body=body,
    )


def test_group_ids_checked() -> None:
    assert validate_group_id("team-1.a@b+c=d_e") == "team-1.a@b+c=d_e"
    assert validate_group_id("x" * 62) == "x" * 62
    for bad in ("", "x" * 63, "a:b", "a b", "caf\u00e9", "a\n"):
        with pytest.raises(ValueError):
            validate_group_id(bad)
    assert group_of_conversation("g:team") == "team"
    assert group_of_conversation("d:alice:bob") is None


async def test_group_created_with_owner(store: Store) -> None:
    assert await store.create_group("team", "alice")
    assert not await store.create_group("team", "bob")
    record = await store.group("team")
    assert isinstance(record, GroupRecord)
    assert (record.group_id, record.owner, record.member_count) == ("team", "alice", 1)
    assert record.conversation_id == "g:team"
    assert await store.group_members("team") == ["alice"]
    assert await store.group("nothing") is None


async def test_group_members_added_once(store: Store) -> None:
    await store.create_group("team", "alice")
    added = await store.add_group_members("team", ["carol", "bob", "carol", "alice"])
    assert added == ["carol", "bob"]
    assert await store.add_group_members("team", ["bob"]) == []
    assert await store.group_members("team") == ["alice", "bob", "carol"]
    record = await store.group("team")
    assert record is not None and record.member_count == 3
    assert await store.is_participant("carol", "g:team")


async def test_group_members_removed(store: Store) -> None:
    await store.create_group("team", "alice")
    await store.add_group_members("team", ["bob", "carol"])
    assert await store.remove_group_members("team", ["carol", "zed", "carol"]) == ["carol"]
    assert await store.remove_group_members("team", ["carol"]) == []
    assert await store.group_members("team") == ["alice", "bob"]
    record = await store.group("team")
    assert record is not None and record.member_count == 2
    assert not await store.is_participant("carol", "g:team")


async def test_group_members_in_pages(store: Store) -> None:
    await store.create_group("team", "alice")
    # "Z" sorts before "a" in byte order, and "bob" before "bob-2".
    await store.add_group_members("team", ["bob-2", "Zed", "bob", "carol"])
    assert await store.group_members("team") == ["Zed", "alice", "bob", "bob-2", "carol"]
    assert await store.group_members("team", limit=2) == ["Zed", "alice"]
    assert await store.group_members("team", after="alice", limit=2) == ["bob", "bob-2"]
    assert await store.group_members("team", after="bob-2", limit=2) == ["carol"]
    assert await store.group_members("team", after="carol") == []
    assert await store.group_members("team", after="b") == ["bob", "bob-2", "carol"]
    assert await store.group_members("nothing", limit=5) == []


async def test_many_members_in_chunks(store: Store) -> None:
    await store.create_group("big", "alice")
    users = [f"user{index:04d}" for index in range(1000)]
    assert await store.add_group_members("big", users) == users
    record = await store.group("big")
    assert record is not None and record.member_count == 1001
    assert len(await store.group_members("big")) == 1001
    assert await store.remove_group_members("big", users[:900]) == users[:900]
    record = await store.group("big")
    assert record is not None and record.member_count == 101


async def test_user_groups_listed(store: Store) -> None:
    await store.create_group("b-team", "alice")
    await store.create_group("a-team", "bob")
    await store.add_group_members("a-team", ["alice"])
    await send(store, "alice", "bob", "direct")  # a direct conversation is no group
    listed = await store.user_groups("alice")
    assert [(g.group_id, g.owner, g.member_count) for g in listed] == [
        ("a-team", "bob", 2),
        ("b-team", "alice", 1),
    ]
    assert await store.user_groups("carol") == []
    counts = await store.group_counts(["alice", "bob", "carol"])
    assert counts == {"alice": 2, "bob": 1}


async def test_group_sequence_and_resend(store: Store) -> None:
    await store.create_group("team", "alice")
    await store.add_group_members("team", ["bob"])
    first = await send_group(store, "alice", "team", "m1")
    second = await send_group(store, "bob", "team", "m2")
    again = await send_group(store, "alice", "team", "m1", b"other body")
    assert (first.conversation_id, first.recipient, first.sequence) == ("g:team", "g:team", 1)
    assert second.sequence == 2
    assert first.new
    assert second.new
    assert not again.new
    assert (again.message_id, again.sequence, again.body) == (first.message_id, 1, b"x")
    # One client_message_id per sender across direct and group messages.
    direct = await send(store, "alice", "bob", "m1")
    assert not direct.new
    assert direct.conversation_id == "g:team"
    history = await store.history("g:team", 0, 10)
    assert [(m.sender, m.sequence) for m in history] == [("alice", 1), ("bob", 2)]


async def test_group_event_stored_in_sequence(store: Store) -> None:
    await store.create_group("team", "alice")
    first = await send_group(store, "alice", "team", "m1")
    event = await store.store_group_event(group_id="team", actor="", event=b"\x08\x02")
    again = await store.store_group_event(group_id="team", actor="", event=b"\x08\x02")
    assert (first.kind, event.kind) == (MESSAGE_KIND_USER, MESSAGE_KIND_GROUP_EVENT)
    assert (event.sequence, again.sequence) == (2, 3)  # each call is a new event
    assert (event.sender, event.sender_device, event.body) == ("", "", b"\x08\x02")
    history = await store.history("g:team", 0, 10)
    assert [(m.sequence, m.kind) for m in history] == [
        (1, MESSAGE_KIND_USER),
        (2, MESSAGE_KIND_GROUP_EVENT),
        (3, MESSAGE_KIND_GROUP_EVENT),
    ]


async def test_group_deleted_with_history(store: Store) -> None:
    await store.create_group("team", "alice")
    await store.add_group_members("team", ["bob"])
    await send_group(store, "bob", "team", "m1")
    await store.mark_read("bob", "phone", "g:team", 1)
    await store.set_group_owner("team", "bob")
    record = await store.group("team")
    assert record is not None and record.owner == "bob"

    assert await store.delete_group("team")
    assert not await store.delete_group("team")
    assert await store.group("team") is None
    assert await store.history("g:team", 0, 10) == []
    assert await store.last_sequence("g:team") == 0
    assert await store.read_marker("bob", "phone", "g:team") == 0
    assert await store.user_groups("bob") == []
    assert not await store.is_participant("alice", "g:team")
    # The id can be taken again, and its messages start at 1.
    assert await store.create_group("team", "carol")
    assert (await send_group(store, "carol", "team", "m2")).sequence == 1


async def test_unread_includes_groups(store: Store) -> None:
    await store.create_group("team", "alice")
    await store.add_group_members("team", ["bob"])
    for index in range(3):
        await send_group(store, "alice", "team", f"g{index}")
    await send(store, "alice", "bob", "d0")
    await store.mark_read("bob", "phone", "g:team", 1)
    assert await store.unread("bob", "phone", 10) == [("d:alice:bob", 1, 0), ("g:team", 3, 1)]
    await store.remove_group_members("team", ["bob"])
    assert await store.unread("bob", "phone", 10) == [("d:alice:bob", 1, 0)]


async def test_reopen_keeps_data(any_database: str) -> None:
    first = await open_store(any_database)
    await first.add_contacts("alice", "bob")
    await first.close()
    reopened = await open_store(any_database)
    try:
        assert await reopened.contacts("alice") == ["bob"]
    finally:
        await reopened.close()


# Migrations.


def test_migrations_in_step() -> None:
    assert len(migrations.SQLITE) == len(migrations.POSTGRES) >= 3


async def test_schema_version_recorded(store: Store, any_database: str) -> None:
    versions = await query_database(any_database, "SELECT version FROM schema_version")
    assert versions == [(len(migrations.SQLITE),)]


async def test_newer_schema_rejected(any_database: str) -> None:
    opened = await open_store(any_database)
    await opened.close()
    await query_database(any_database, "UPDATE schema_version SET version = 999")
    with pytest.raises(StoreError, match="schema version 999"):
        await open_store(any_database)


async def test_backends_have_same_columns(tmp_path: Path, postgres_url: str) -> None:
    sqlite_path = str(tmp_path / "tether.db")
    for database in (sqlite_path, postgres_url):
        await (await open_store(database)).close()
    # Primary keys count as NOT NULL: PostgreSQL implies it, SQLite does not enforce it on
    # text keys of rowid tables (a documented SQLite quirk), and tether never stores NULL.
    sqlite_columns = {
        (table, column, bool(not_null or primary_key))
        for (table,) in await query_database(
            sqlite_path, "SELECT name FROM sqlite_master WHERE type = 'table'"
        )
        if table != "sqlite_sequence"  # SQLite's bookkeeping for AUTOINCREMENT
        for _, column, _, not_null, _, primary_key in await query_database(
            sqlite_path, f"PRAGMA table_info({table})"
        )
    }
    postgres_columns = {
        (table, column, nullable == "NO")
        for table, column, nullable in await query_database(
            postgres_url,
            "SELECT table_name, column_name, is_nullable FROM information_schema.columns "
            "WHERE table_schema = current_schema()",
        )
    }
    assert sqlite_columns == postgres_columns
    assert ("messages", "sequence", True) in sqlite_columns


async def test_first_migration_upgraded(any_database: str) -> None:
    """A database left at version 1 gets conversation_members filled from its messages."""
    scripts = migrations.POSTGRES if is_postgres_url(any_database) else migrations.SQLITE
    statements = [migrations.VERSION_TABLE, *migrations.statements(scripts[0])]
    await query_database(any_database, *statements, "INSERT INTO schema_version VALUES (1)")
    await query_database(
        any_database,
        "INSERT INTO conversations VALUES ('d:alice:bob', 1)",
        "INSERT INTO messages (conversation_id, sequence, sender, sender_device, recipient, "
        "client_message_id, body, created_ms) "
        "VALUES ('d:alice:bob', 1, 'alice', 'd', 'bob', 'c', 'x', 0)",
    )
    upgraded = await open_store(any_database)
    try:
        assert await upgraded.is_participant("alice", "d:alice:bob")
        assert await upgraded.is_participant("bob", "d:alice:bob")
        assert await upgraded.unread("bob", "phone", 10) == [("d:alice:bob", 1, 0)]
    finally:
        await upgraded.close()


async def test_incarnation_migration_fills_groups(any_database: str) -> None:
    """Groups of a version 4 database take the id of their first message as incarnation."""
    scripts = migrations.POSTGRES if is_postgres_url(any_database) else migrations.SQLITE
    statements = [migrations.VERSION_TABLE]
    for script in scripts[:4]:
        statements += migrations.statements(script)
    await query_database(any_database, *statements, "INSERT INTO schema_version VALUES (4)")
    await query_database(
        any_database,
        "INSERT INTO chat_groups VALUES ('team', 'alice', 1, 0), ('quiet', 'alice', 1, 0)",
        "INSERT INTO conversations VALUES ('g:team', 2)",
        "INSERT INTO messages (conversation_id, sequence, sender, sender_device, recipient, "
        "client_message_id, body, created_ms, kind) VALUES "
        "('d:alice:bob', 1, 'alice', 'd', 'bob', 'c0', 'x', 0, 0), "
        "('g:team', 1, 'alice', '', 'g:team', 'c1', 'x', 0, 1), "
        "('g:team', 2, 'alice', 'd', 'g:team', 'c2', 'x', 0, 0)",
    )
    upgraded = await open_store(any_database)
    try:
        [(first_id,)] = await query_database(
            any_database, "SELECT id FROM messages WHERE client_message_id = 'c1'"
        )
        team = await upgraded.group("team")
        quiet = await upgraded.group("quiet")
        assert team is not None and quiet is not None
        assert (team.incarnation, quiet.incarnation) == (first_id, 0)
    finally:
        await upgraded.close()


async def test_concurrent_opens_migrate_once(any_database: str) -> None:
    opened = await asyncio.gather(*(open_store(any_database) for _ in range(4)))
    for store in opened:
        await store.close()
    versions = await query_database(any_database, "SELECT version FROM schema_version")
    assert versions == [(len(migrations.SQLITE),)]


# Settings and errors.


def test_database_url_recognised() -> None:
    assert is_postgres_url("postgresql://db.example/tether")
    assert is_postgres_url("postgres://db.example/tether")
    assert not is_postgres_url("/var/lib/tether/tether.db")
    assert not is_postgres_url(Path("postgresql:"))


def test_password_masked_in_description() -> None:
    described = describe_database(
        "postgresql://tether:hunter2@db.example:5432/chat?sslmode=require"
    )
    assert described == "postgresql://tether:***@db.example:5432/chat?sslmode=require"
    in_query = redact_url("postgresql://db.example/chat?user=t&password=hunter2&sslpassword=k")
    assert in_query == "postgresql://db.example/chat?user=t&password=***&sslpassword=***"
    assert describe_database("/data/tether.db") == "/data/tether.db"
    assert (
        redact_url("redis://:hunter2@cache.example:6379/0") == "redis://:***@cache.example:6379/0"
    )
    assert redact_url("redis://cache.example:6379/0") == "redis://cache.example:6379/0"


async def test_unreachable_postgres_error_masks_password() -> None:
    # Port 1 of 127.0.0.1 has no server: the connection is refused at once.
    with pytest.raises(StoreError) as failure:
        await open_store("postgresql://tether:hunter2@127.0.0.1:1/chat")
    assert "hunter2" not in str(failure.value)
    assert "tether:***@127.0.0.1:1" in str(failure.value)


async def test_unwritable_sqlite_path_raises_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot open database"):
        await open_store(str(blocker / "tether.db"))


# Several writers on one PostgreSQL database, as several logic workers are.


async def test_concurrent_writers_gapless(postgres_url: str) -> None:
    stores = await asyncio.gather(*(open_store(postgres_url) for _ in range(4)))
    try:
        await stores[0].add_contacts("alice", "bob")
        await stores[0].add_contacts("carol", "bob")

        async def worker(index: int, store: Store) -> list[StoredMessage]:
            stored = []
            for number in range(15):
                sender = ("alice", "bob", "carol")[(index + number) % 3]
                recipient = "bob" if sender != "bob" else ("alice", "carol")[number % 2]
                async with store.transaction():
                    stored.append(await send(store, sender, recipient, f"w{index}-{number}"))
                await asyncio.sleep(0)
            return stored

        results = await asyncio.gather(*(worker(i, s) for i, s in enumerate(stores)))
    finally:
        for store in stores:
            await store.close()

    stored = [message for result in results for message in result]
    assert len({message.message_id for message in stored}) == 60
    for conversation in ("d:alice:bob", "d:bob:carol"):
        sequences = sorted(m.sequence for m in stored if m.conversation_id == conversation)
        assert sequences == list(range(1, len(sequences) + 1)), conversation
    reopened = await open_store(postgres_url)
    try:
        history = await reopened.history("d:alice:bob", 0, 100)
        assert [m.sequence for m in history] == list(range(1, len(history) + 1))
        expected = sum(1 for m in stored if m.conversation_id == "d:alice:bob")
        assert await reopened.last_sequence("d:alice:bob") == expected == len(history)
    finally:
        await reopened.close()


@pytest.mark.parametrize("recipients", [("bob", "bob"), ("bob", "carol")])
async def test_racing_resend_returns_original(
    postgres_url: str, recipients: tuple[str, str]
) -> None:
    """Workers store the same client message while the first one's transaction is open."""
    stores = await asyncio.gather(*(open_store(postgres_url) for _ in range(4)))
    first_stored = asyncio.Event()

    async def first_writer() -> StoredMessage:
        async with stores[0].transaction():
            message = await send(stores[0], "alice", recipients[0], "same", b"first")
            first_stored.set()
            await asyncio.sleep(0.3)  # the others reach the conflict while this is uncommitted
        return message

    async def later_writer(store: Store) -> StoredMessage:
        await first_stored.wait()
        async with store.transaction():
            return await send(store, "alice", recipients[1], "same", b"later")

    try:
        results = await asyncio.gather(first_writer(), *(later_writer(s) for s in stores[1:]))
        first = results[0]
        assert first.new is True
        for later in results[1:]:
            assert later.new is False
            assert later.message_id == first.message_id
            assert later.body == b"first"
        assert await stores[0].last_sequence(conversation_id("alice", recipients[0])) == 1
        # The losers gave their numbers back: the next message follows the first without a gap.
        same_conversation = recipients[0] == recipients[1]
        after = await send(stores[1], "alice", recipients[1], "next")
        assert after.sequence == (2 if same_conversation else 1)
    finally:
        for store in stores:
            await store.close()


@pytest.mark.parametrize("existing", [None, 1])
@pytest.mark.parametrize(("first", "second"), [(5, 3), (3, 5)])
async def test_racing_read_markers_keep_highest(
    postgres_url: str, existing: int | None, first: int, second: int
) -> None:
    """Two workers move one marker while the first one's transaction is open: the higher wins.

    Logic workers store read markers in the order they took them from the stream, which need
    not be the order the device sent them in.
    """
    stores = await asyncio.gather(*(open_store(postgres_url) for _ in range(2)))
    first_written = asyncio.Event()

    async def first_writer() -> None:
        async with stores[0].transaction():
            await stores[0].mark_read("bob", "phone", "d:alice:bob", first)
            first_written.set()
            await asyncio.sleep(0.3)  # the second writer waits for this row meanwhile

    async def second_writer() -> None:
        await first_written.wait()
        await stores[1].mark_read("bob", "phone", "d:alice:bob", second)

    try:
        await stores[0].add_contacts("alice", "bob")
        for index in range(5):
            await send(stores[0], "alice", "bob", str(index))
        if existing is not None:
            await stores[0].mark_read("bob", "phone", "d:alice:bob", existing)
        await asyncio.gather(first_writer(), second_writer())
        assert await stores[1].read_marker("bob", "phone", "d:alice:bob") == 5
    finally:
        for store in stores:
            await store.close()


async def test_deadlock_raises_conflict(postgres_url: str) -> None:
    """Two transactions that lock two conversations in opposite orders: one is rolled back."""
    stores = await asyncio.gather(*(open_store(postgres_url) for _ in range(2)))
    both_hold_one = asyncio.Barrier(2)

    async def writer(store: Store, first: str, second: str) -> None:
        async with store.transaction():
            await send(store, "alice", first, f"to-{first}")
            await both_hold_one.wait()
            await send(store, "alice", second, f"to-{second}")

    try:
        results = await asyncio.gather(
            writer(stores[0], "bob", "carol"),
            writer(stores[1], "carol", "bob"),
            return_exceptions=True,
        )
        conflicts = [result for result in results if isinstance(result, StoreConflict)]
        assert len(conflicts) == 1, results
        assert results.count(None) == 1, results
        assert await stores[0].last_sequence("d:alice:bob") == 1
        assert await stores[0].last_sequence("d:alice:carol") == 1
    finally:
        for store in stores:
            await store.close()
