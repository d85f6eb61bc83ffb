"""Catch-up after being offline: Unread, Sync pages, order and deduplication in the SDK.

Every test runs on both logic stores, SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio

from conftest import BOTH_BACKENDS, TIMEOUT, ClientFactory, RawClient, add_contacts, drain

from tether.client import Client
from tether.client import events as ev
from tether.protocol import tether_pb2 as pb
from tether.protocol.codes import Code
from tether.server import EmbeddedServer

pytestmark = BOTH_BACKENDS


async def collect_messages(
    client: Client, count: int, timeout: float = TIMEOUT * 4
) -> list[ev.Message]:
    messages: list[ev.Message] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while len(messages) < count:
        remaining = deadline - asyncio.get_running_loop().time()
        assert remaining > 0, f"only {len(messages)} of {count} messages arrived"
        event = await client.next_event(remaining)
        if isinstance(event, ev.Message):
            messages.append(event)
    return messages


def abort_sessions(server: EmbeddedServer, user: str) -> None:
    """Cut a user's connections as a network failure would, with no Disconnect frame."""
    assert server.gateway is not None
    for connection in list(server.gateway.sessions.get(user, {}).values()):
        connection.close_transport(abort=True)


async def test_offline_recipient_catches_up(server: EmbeddedServer, connect: ClientFactory) -> None:
    await add_contacts(server, "alice", "bob")
    alice = await connect(server, "alice")
    acks = [await alice.send("bob", f"message {index}") for index in range(5)]

    bob = await connect(server, "bob")
    messages = await collect_messages(bob, 5)
    assert [m.message_id for m in messages] == [a.message_id for a in acks]
    assert [m.sequence for m in messages] == [1, 2, 3, 4, 5]
    assert not [e for e in await drain(bob) if isinstance(e, ev.Message)]


async def test_backlog_arrives_in_pages(server: EmbeddedServer, connect: ClientFactory) -> None:
    await add_contacts(server, "alice", "bob")
    alice = await connect(server, "alice")
    for index in range(250):
        await alice.send("bob", f"message {index}")

    bob = await connect(server, "bob")
    messages = await collect_messages(bob, 250)
    assert [m.sequence for m in messages] == list(range(1, 251))


async def test_acknowledged_messages_not_listed_again(
    server: EmbeddedServer, connect: ClientFactory
) -> None:
    await add_contacts(server, "alice", "bob")
    alice = await connect(server, "alice")
    for index in range(3):
        await alice.send("bob", f"message {index}")
    bob = await connect(server, "bob")
    await collect_messages(bob, 3)
    await asyncio.sleep(0.2)  # the DeliverAcks reach the store
    await bob.close()

    again = await connect(server, "bob")
    assert not [e for e in await drain(again) if isinstance(e, ev.Message)]


async def test_reconnects_during_catch_up(server: EmbeddedServer, connect: ClientFactory) -> None:
    await add_contacts(server, "alice", "bob")
    alice = await connect(server, "alice")
    for index in range(300):
        await alice.send("bob", f"old {index}")

    bob = await connect(server, "bob", reconnect=True)
    received = await collect_messages(bob, 40)
    abort_sessions(server, "bob")
    received += await collect_messages(bob, 40)
    abort_sessions(server, "bob")
    # Live messages keep coming while bob catches up.
    for index in range(20):
        await alice.send("bob", f"new {index}")
    received += await collect_messages(bob, 320 - len(received))

    assert [m.sequence for m in received] == list(range(1, 321))
    assert len({m.message_id for m in received}) == 320
    assert not [e for e in await drain(bob) if isinstance(e, ev.Message)]


async def test_unread_frame_lists_backlog(server: EmbeddedServer, connect: ClientFactory) -> None:
    await add_contacts(server, "alice", "bob")
    alice = await connect(server, "alice")
    for index in range(4):
        await alice.send("bob", f"message {index}")

    raw = await RawClient.open(server)
    raw.send_connect("bob")
    await raw.receive_kind("connected")
    unread = (await raw.receive_kind("unread")).unread
    assert [
        (c.conversation_id, c.last_sequence, c.read_sequence) for c in unread.conversations
    ] == [("d:alice:bob", 4, 0)]
    raw.send(pb.Frame(sync=pb.Sync(request_id="s1", conversation_id="d:alice:bob", limit=3)))
    page = (await raw.receive_kind("sync_result")).sync_result
    assert page.request_id == "s1"
    assert [m.sequence for m in page.messages] == [1, 2, 3]
    assert page.has_more is True
    assert page.last_sequence == 4
    raw.close()


async def test_sync_foreign_conversation_rejected(
    server: EmbeddedServer, connect: ClientFactory
) -> None:
    await add_contacts(server, "alice", "bob")
    alice = await connect(server, "alice")
    await alice.send("bob", "private")

    raw = await RawClient.open(server)
    raw.send_connect("mallory")
    await raw.receive_kind("connected")
    raw.send(pb.Frame(sync=pb.Sync(request_id="peek", conversation_id="d:alice:bob")))
    error = (await raw.receive_kind("error")).error
    assert error.code == Code.NOT_FOUND
    assert error.ref == "peek"
    raw.close()


async def test_unlisted_conversation_resumes_at_marker(
    server: EmbeddedServer, connect: ClientFactory
) -> None:
    await add_contacts(server, "alice", "bob")
    alice = await connect(server, "alice")
    for index in range(3):
        await alice.send("bob", f"old {index}")
    first = await connect(server, "bob")
    await collect_messages(first, 3)
    await asyncio.sleep(0.3)  # the coalesced DeliverAck reaches the store
    await first.close()

    # A new client of the same device has no position; nothing is unread, so Unread is empty.
    second = await connect(server, "bob")
    ack = await alice.send("bob", "new")
    (message,) = await collect_messages(second, 1)
    assert message.message_id == ack.message_id
    assert message.sequence == 4
    assert not [e for e in await drain(second) if isinstance(e, ev.Message)]
