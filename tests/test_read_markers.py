"""Read markers written behind by the logic service, on a SQLite file and on PostgreSQL.

Most tests run the service on the in-process bus and feed it requests as gateways do. A marker
delay of an hour keeps the timer out of tests about the other ways markers are stored.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    BOTH_BACKENDS,
    SECRET,
    TIMEOUT,
    RawClient,
    query_database,
    seed_messages,
    test_gateway_config,
)

from tether.bus import channels
from tether.bus import envelope_pb2 as env
from tether.bus.memory import InProcessBus
from tether.logic import LogicConfig, LogicService, open_store
from tether.logic.store import Store
from tether.protocol import tether_pb2 as pb
from tether.server import EmbeddedServer, ServerConfig

REPLIES = "test.replies"
HOUR = 3600.0  # a marker delay that no test waits for


class Logic:
    """A logic service on an in-process bus, fed requests the way gateways send them."""

    def __init__(self, service: LogicService, bus: InProcessBus) -> None:
        self.service = service
        self.bus = bus
        self._replies: dict[int, asyncio.Future[env.Envelope]] = {}
        self._request_ids = itertools.count(1)
        bus.subscribe(REPLIES, self._on_reply)

    @classmethod
    async def start(cls, database: str, **settings: Any) -> Logic:
        bus = InProcessBus()
        await bus.start()
        service = LogicService(LogicConfig(database=database, **settings), bus)
        await service.start()
        return cls(service, bus)

    async def close(self) -> None:
        await self.bus.close()  # first, as the server does: no batch runs during the close
        await self.service.close()

    def _on_reply(self, channel: str, payload: bytes) -> None:
        reply = env.Envelope.FromString(payload)
        self._replies.pop(reply.request_id).set_result(reply)

    def ack(self, user: str, device: str, conversation: str, sequence: int) -> None:
        ack = pb.DeliverAck(conversation_id=conversation, sequence=sequence)
        request = env.DeliverAckRequest(user_id=user, device_id=device, ack=ack)
        self.bus.append(
            channels.LOGIC_STREAM, env.Envelope(deliver_ack=request).SerializeToString()
        )

    async def request(self, request: env.Envelope) -> env.Envelope:
        request.reply_to = REPLIES
        request.request_id = next(self._request_ids)
        reply = self._replies[request.request_id] = asyncio.get_running_loop().create_future()
        self.bus.append(channels.LOGIC_STREAM, request.SerializeToString())
        return await asyncio.wait_for(reply, TIMEOUT)

    async def unread(self, user: str, device: str) -> list[tuple[str, int, int]]:
        """Connect a device; return its Unread list as (conversation, last, read) tuples."""
        connect = env.ConnectRequest(user_id=user, device_id=device)
        result = (await self.request(env.Envelope(connect_request=connect))).connect_result
        assert result.error_code == 0, result.error_message
        return [
            (state.conversation_id, state.last_sequence, state.read_sequence)
            for state in result.unread.conversations
        ]

    async def sync(
        self, user: str, device: str, conversation: str, *, from_read_marker: bool
    ) -> list[int]:
        """Return the sequence numbers a Sync from the start or the read marker returns."""
        sync = pb.Sync(
            request_id="s", conversation_id=conversation, from_read_marker=from_read_marker
        )
        request = env.SyncRequest(user_id=user, device_id=device, sync=sync)
        reply = (await self.request(env.Envelope(sync_request=request))).sync_reply
        assert reply.error_code == 0, reply.error_message
        return [message.sequence for message in reply.result.messages]

    async def send(self, sender: str, recipient: str, client_id: str) -> env.SendResult:
        send = pb.Send(client_message_id=client_id, recipient=recipient, body=b"x")
        request = env.SendRequest(sender=sender, sender_device="phone", send=send)
        return (await self.request(env.Envelope(send_request=request))).send_result


LogicFactory = Callable[..., Awaitable[Logic]]


@pytest.fixture
async def start_logic(any_database: str) -> AsyncIterator[LogicFactory]:
    """Return a function that starts a logic service on any_database, stopped at teardown."""
    started: list[Logic] = []

    async def start(**settings: Any) -> Logic:
        logic = await Logic.start(any_database, **settings)
        started.append(logic)
        return logic

    yield start
    for logic in started:
        await logic.close()


@pytest.fixture
async def store(any_database: str) -> AsyncIterator[Store]:
    """A second connection to the service's database, as another process would have."""
    opened = await open_store(any_database)
    yield opened
    await opened.close()


async def seed_to_bob(store: Store, senders: tuple[str, ...]) -> list[str]:
    """Store two messages from each sender to bob; return the conversations."""
    return [await seed_messages(store, sender, "bob", 2) for sender in senders]


async def until(check: Callable[[], Awaitable[bool]], description: str) -> None:
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {description}"
        await asyncio.sleep(0.02)


async def pending(logic: Logic, count: int) -> None:
    """Wait until count markers wait in the service, which shows that the acks were handled."""

    async def reached() -> bool:
        return logic.service.pending_read_markers == count

    await until(reached, f"{count} pending read markers")


async def logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    async def found() -> bool:
        return text in caplog.text

    await until(found, f"a log record with {text!r}")


async def hide_read_markers(database: str, caplog: pytest.LogCaptureFixture) -> None:
    """Rename the read_markers table, so that every write of markers fails until it is back."""
    caplog.set_level(logging.WARNING, logger="tether.logic")
    await query_database(database, "ALTER TABLE read_markers RENAME TO read_markers_away")


async def restore_read_markers(database: str) -> None:
    await query_database(database, "ALTER TABLE read_markers_away RENAME TO read_markers")


async def marker_stored(
    store: Store, user: str, device: str, conversation: str, sequence: int
) -> None:
    async def stored() -> bool:
        return await store.read_marker(user, device, conversation) == sequence

    await until(stored, f"read marker {sequence} of {user}/{device} in {conversation}")


async def test_pending_markers_seen_by_unread_and_sync(
    start_logic: LogicFactory, store: Store
) -> None:
    conversation = await seed_messages(store, "alice", "bob", 3)
    logic = await start_logic(read_marker_delay=HOUR)

    logic.ack("bob", "phone", conversation, 2)
    await pending(logic, 1)
    assert await logic.unread("bob", "phone") == [(conversation, 3, 2)]
    assert logic.service.pending_read_markers == 0
    assert await store.read_marker("bob", "phone", conversation) == 2

    logic.ack("bob", "tablet", conversation, 1)
    await pending(logic, 1)
    assert await logic.sync("bob", "tablet", conversation, from_read_marker=True) == [2, 3]
    assert await store.read_marker("bob", "tablet", conversation) == 1


async def test_later_ack_covers_earlier(start_logic: LogicFactory, store: Store) -> None:
    conversation = await seed_messages(store, "alice", "bob", 5)
    logic = await start_logic(read_marker_delay=HOUR)
    for sequence in (2, 4, 3, 1):
        logic.ack("bob", "phone", conversation, sequence)
    await pending(logic, 1)
    assert await logic.unread("bob", "phone") == [(conversation, 5, 4)]


async def test_sends_leave_markers_waiting(start_logic: LogicFactory, store: Store) -> None:
    conversation = await seed_messages(store, "alice", "bob", 3)
    logic = await start_logic(read_marker_delay=HOUR)
    logic.ack("bob", "phone", conversation, 3)
    await pending(logic, 1)
    result = await logic.send("alice", "bob", "after-ack")
    assert result.error_code == 0, result.error_message
    assert logic.service.pending_read_markers == 1
    assert await store.read_marker("bob", "phone", conversation) == 0


async def test_foreign_ack_still_ignored(start_logic: LogicFactory, store: Store) -> None:
    conversation = await seed_messages(store, "alice", "bob", 2)
    logic = await start_logic(read_marker_delay=HOUR)
    logic.ack("mallory", "phone", conversation, 2)
    logic.ack("bob", "phone", conversation, 1)
    await pending(logic, 2)
    assert await logic.unread("bob", "phone") == [(conversation, 2, 1)]
    assert await store.read_marker("mallory", "phone", conversation) == 0


async def test_markers_stored_after_delay(start_logic: LogicFactory, store: Store) -> None:
    conversation = await seed_messages(store, "alice", "bob", 3)
    logic = await start_logic(read_marker_delay=0.05)
    logic.ack("bob", "phone", conversation, 3)
    # No other request follows: only the timer can store it.
    await marker_stored(store, "bob", "phone", conversation, 3)
    assert logic.service.pending_read_markers == 0


async def test_markers_stored_on_close(any_database: str, store: Store) -> None:
    first = await seed_messages(store, "alice", "bob", 3)
    second = await seed_messages(store, "carol", "bob", 2)
    logic = await Logic.start(any_database, read_marker_delay=HOUR)
    logic.ack("bob", "phone", first, 3)
    logic.ack("bob", "phone", second, 1)
    await pending(logic, 2)
    assert await store.read_marker("bob", "phone", first) == 0
    await logic.close()
    assert await store.read_marker("bob", "phone", first) == 3
    assert await store.read_marker("bob", "phone", second) == 1


async def test_full_table_stored_at_once(start_logic: LogicFactory, store: Store) -> None:
    conversations = await seed_to_bob(store, ("alice", "carol", "dave"))
    logic = await start_logic(read_marker_delay=HOUR, max_pending_read_markers=2)
    for conversation in conversations:
        logic.ack("bob", "phone", conversation, 2)
    await pending(logic, 1)
    assert await store.read_marker("bob", "phone", conversations[0]) == 2
    assert await store.read_marker("bob", "phone", conversations[1]) == 2
    assert await store.read_marker("bob", "phone", conversations[2]) == 0


async def test_full_table_drops_while_store_fails(
    start_logic: LogicFactory,
    store: Store,
    any_database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    conversations = await seed_to_bob(store, ("alice", "carol", "dave"))
    logic = await start_logic(read_marker_delay=HOUR, max_pending_read_markers=2)
    await hide_read_markers(any_database, caplog)

    for conversation in conversations:
        logic.ack("bob", "phone", conversation, 2)

    await logged(caplog, "dropping new read markers")
    assert logic.service.pending_read_markers == 2


async def test_failed_timer_write_keeps_markers(
    start_logic: LogicFactory,
    store: Store,
    any_database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    conversation = await seed_messages(store, "alice", "bob", 3)
    logic = await start_logic(read_marker_delay=0.05)
    await hide_read_markers(any_database, caplog)

    logic.ack("bob", "phone", conversation, 3)

    await logged(caplog, "storing 1 read markers failed")
    assert logic.service.pending_read_markers == 1
    # Other requests do not fail with the markers.
    assert (await logic.send("alice", "bob", "during")).error_code == 0
    assert logic.service.pending_read_markers == 1

    await restore_read_markers(any_database)
    await marker_stored(store, "bob", "phone", conversation, 3)
    assert logic.service.pending_read_markers == 0


async def test_failed_batch_write_runs_batch_again(
    start_logic: LogicFactory,
    store: Store,
    any_database: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    conversation = await seed_messages(store, "alice", "bob", 3)
    logic = await start_logic(read_marker_delay=HOUR)
    await hide_read_markers(any_database, caplog)

    logic.ack("bob", "phone", conversation, 3)
    await pending(logic, 1)
    # A Sync stores the waiting markers first. Reading from the start, it needs no marker.
    assert await logic.sync("alice", "phone", conversation, from_read_marker=False) == [1, 2, 3]
    assert "storing 1 read markers failed" in caplog.text
    assert logic.service.pending_read_markers == 1

    # The retry timer stores it once the table is back, although the delay is an hour.
    await restore_read_markers(any_database)
    await marker_stored(store, "bob", "phone", conversation, 3)


@BOTH_BACKENDS
async def test_markers_survive_server_restart(tmp_path: Path, logic_database: str) -> None:
    config = ServerConfig(
        data_dir=tmp_path / "data",
        secret=SECRET,
        gateway=test_gateway_config(),
        database=logic_database,
    )
    first = EmbeddedServer(config)
    assert isinstance(first.logic, LogicService)
    first.logic.config = dataclasses.replace(first.logic.config, read_marker_delay=HOUR)
    await first.start()
    try:
        assert first.logic.store is not None
        conversation = await seed_messages(first.logic.store, "alice", "bob", 3)
        bob = await RawClient.open(first)
        bob.send_connect("bob", "phone")
        await bob.receive_kind("connected")
        bob.send(pb.Frame(deliver_ack=pb.DeliverAck(conversation_id=conversation, sequence=3)))

        async def acknowledged() -> bool:
            return first.logic.pending_read_markers == 1

        await until(acknowledged, "the DeliverAck in the logic layer")
        bob.close()
    finally:
        await first.close()

    second = EmbeddedServer(config)
    await second.start()
    try:
        bob = await RawClient.open(second)
        bob.send_connect("bob", "phone")
        await bob.receive_kind("connected")
        unread = (await bob.receive_kind("unread")).unread
        assert list(unread.conversations) == []
        bob.close()
    finally:
        await second.close()
