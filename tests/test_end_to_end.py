"""End-to-end behaviour of embedded tether over real TCP and WebSocket connections."""

from __future__ import annotations

import asyncio

import pytest
from conftest import (
    QUIET,
    TIMEOUT,
    ClientFactory,
    RawClient,
    ServerFactory,
    add_contacts,
    drain,
    next_of,
    presence_of,
)

from tether.auth import issue_token
from tether.client import Client, ConnectionClosed, RequestError
from tether.client import events as ev
from tether.protocol import tether_pb2 as pb
from tether.protocol.codes import Code
from tether.server import EmbeddedServer

TRANSPORTS = ["tcp", "ws"]


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def friends(server: EmbeddedServer) -> None:
    """Make alice and bob contacts; carol has no contacts."""
    await add_contacts(server, "alice", "bob")


async def test_contact_sees_online_and_snapshot(
    server: EmbeddedServer, connect: ClientFactory, transport: str
) -> None:
    await friends(server)
    bob = await connect(server, "bob", transport=transport)
    snapshot = await next_of(bob, ev.PresenceSnapshot)
    assert isinstance(snapshot, ev.PresenceSnapshot)
    assert snapshot.contacts["alice"].status == "offline"

    alice = await connect(server, "alice", transport=transport)
    change = await presence_of(bob, "alice")
    assert change.status == "online"
    alice_snapshot = await next_of(alice, ev.PresenceSnapshot)
    assert isinstance(alice_snapshot, ev.PresenceSnapshot)
    assert alice_snapshot.contacts["bob"].status == "online"
    assert set(alice_snapshot.contacts) == {"bob"}


async def test_messages_both_ways_with_acks(
    server: EmbeddedServer, connect: ClientFactory, transport: str
) -> None:
    await friends(server)
    alice = await connect(server, "alice", transport=transport)
    bob = await connect(server, "bob", transport=transport)

    first = await alice.send("bob", "hello bob")
    received = await next_of(bob, ev.Message)
    assert isinstance(received, ev.Message)
    assert received.body == b"hello bob"
    assert received.sender == "alice"
    assert received.message_id == first.message_id
    assert received.sequence == first.sequence == 1
    assert received.conversation_id == first.conversation_id == "d:alice:bob"

    second = await bob.send("alice", "hello alice")
    answer = await next_of(alice, ev.Message)
    assert isinstance(answer, ev.Message)
    assert answer.body == b"hello alice"
    assert second.sequence == 2
    assert second.message_id > first.message_id


async def test_sender_other_device_gets_message(
    server: EmbeddedServer, connect: ClientFactory, transport: str
) -> None:
    await friends(server)
    phone = await connect(server, "alice", device="phone", transport=transport)
    laptop = await connect(server, "alice", device="laptop", transport=transport)
    await connect(server, "bob")

    ack = await phone.send("bob", "from my phone")
    copy = await next_of(laptop, ev.Message)
    assert isinstance(copy, ev.Message)
    assert copy.message_id == ack.message_id
    assert copy.sender_device == "phone"
    # The sending device has the ack and gets no copy of its own message.
    assert not [e for e in await drain(phone) if isinstance(e, ev.Message)]


async def test_silent_client_goes_offline_after_timeout(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await start_server(offline_timeout=1.0, heartbeat_interval=0.5, grace_period=0.2)
    await friends(server)
    bob = await connect(server, "bob")
    raw = await RawClient.open(server)
    raw.send_connect("alice")
    await raw.receive_kind("connected")
    assert (await presence_of(bob, "alice")).status == "online"

    # The socket stays open but alice sends nothing more.
    went_offline = asyncio.get_running_loop().time()
    assert (await presence_of(bob, "alice", timeout=TIMEOUT)).status == "offline"
    elapsed = asyncio.get_running_loop().time() - went_offline
    assert elapsed >= 0.9  # not before the offline timeout
    assert await raw.disconnect_code() == Code.HEARTBEAT_TIMEOUT
    raw.close()


async def test_heartbeats_keep_client_online(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await start_server(offline_timeout=0.8, heartbeat_interval=0.2)
    await friends(server)
    bob = await connect(server, "bob")
    await connect(server, "alice")
    assert (await presence_of(bob, "alice")).status == "online"
    # Three offline timeouts pass; the SDK's heartbeats keep alice online throughout.
    events = await drain(bob, quiet=2.5)
    assert not [e for e in events if isinstance(e, ev.PresenceChanged)]


async def test_closed_socket_offline_after_grace(
    start_server: ServerFactory, connect: ClientFactory, transport: str
) -> None:
    server = await start_server(grace_period=0.5)
    await friends(server)
    bob = await connect(server, "bob", transport=transport)
    alice = await connect(server, "alice", transport=transport)
    assert (await presence_of(bob, "alice")).status == "online"

    await alice.close()
    closed_at = asyncio.get_running_loop().time()
    offline = await presence_of(bob, "alice")
    assert offline.status == "offline"
    assert asyncio.get_running_loop().time() - closed_at >= 0.45
    assert offline.last_seen_ms > 0


async def test_own_close_not_reported_as_lost(
    server: EmbeddedServer, connect: ClientFactory, transport: str
) -> None:
    """close() reports code 1000 "client closed", never 1006 "connection lost"."""
    alice = await connect(server, "alice", transport=transport)
    await alice.close()
    events = await drain(alice, quiet=0.3)
    closes = [(e.code, e.reason, e.reconnecting) for e in events if isinstance(e, ev.Disconnected)]
    assert closes == [(1000, "client closed", False)]


async def test_reconnect_within_grace_is_invisible(
    start_server: ServerFactory, connect: ClientFactory, transport: str
) -> None:
    server = await start_server(grace_period=1.0)
    await friends(server)
    bob = await connect(server, "bob", transport=transport)
    alice = await connect(server, "alice", transport=transport)
    assert (await presence_of(bob, "alice")).status == "online"

    await alice.close()
    await asyncio.sleep(0.2)
    await connect(server, "alice", transport=transport)
    events = await drain(bob, quiet=1.5)
    assert not [e for e in events if isinstance(e, ev.PresenceChanged)]


async def test_second_device_keeps_user_online(
    server: EmbeddedServer, connect: ClientFactory, transport: str
) -> None:
    await friends(server)
    bob = await connect(server, "bob", transport=transport)
    phone = await connect(server, "alice", device="phone", transport=transport)
    await connect(server, "alice", device="laptop", transport=transport)
    assert (await presence_of(bob, "alice")).status == "online"

    await phone.close()
    events = await drain(bob, quiet=1.0)  # grace period is 0.3 s
    assert not [e for e in events if isinstance(e, ev.PresenceChanged)]


async def test_status_aggregates_over_devices(
    server: EmbeddedServer, connect: ClientFactory
) -> None:
    await friends(server)
    bob = await connect(server, "bob")
    phone = await connect(server, "alice", device="phone")
    laptop = await connect(server, "alice", device="laptop")
    assert (await presence_of(bob, "alice")).status == "online"

    await phone.set_status("away")
    await asyncio.sleep(QUIET)  # laptop is still active: nothing changes
    await laptop.set_status("away")
    assert (await presence_of(bob, "alice")).status == "away"
    await laptop.set_status("busy")
    assert (await presence_of(bob, "alice")).status == "busy"
    await laptop.set_status("online")
    assert (await presence_of(bob, "alice")).status == "online"


async def test_invisible_user_looks_offline(
    server: EmbeddedServer, connect: ClientFactory, transport: str
) -> None:
    await friends(server)
    bob = await connect(server, "bob", transport=transport)
    alice = await connect(server, "alice", transport=transport, status="invisible")
    # Connecting invisibly shows nothing at all.
    events = await drain(bob, quiet=0.6)
    assert not [e for e in events if isinstance(e, ev.PresenceChanged)]

    late = await connect(server, "bob", device="laptop", transport=transport)
    snapshot = await next_of(late, ev.PresenceSnapshot)
    assert isinstance(snapshot, ev.PresenceSnapshot)
    assert snapshot.contacts["alice"].status == "offline"

    await alice.set_status("online")
    assert (await presence_of(bob, "alice")).status == "online"
    await alice.set_status("invisible")
    assert (await presence_of(bob, "alice")).status == "offline"
    # Invisible alice can still chat.
    ack = await alice.send("bob", "psst")
    assert ack.sequence == 1


async def test_stranger_learns_nothing(
    server: EmbeddedServer, connect: ClientFactory, transport: str
) -> None:
    await friends(server)
    carol = await connect(server, "carol", transport=transport)
    snapshot = await next_of(carol, ev.PresenceSnapshot)
    assert isinstance(snapshot, ev.PresenceSnapshot)
    assert snapshot.contacts == {}

    alice = await connect(server, "alice", transport=transport)
    await alice.set_status("busy")
    bob = await connect(server, "bob", transport=transport)
    await alice.send("bob", "secret")
    await alice.close()
    await asyncio.sleep(0.5)  # past the grace period

    events = await drain(carol, quiet=0.5)
    assert not [e for e in events if not isinstance(e, ev.SessionOpened)]
    with pytest.raises(RequestError) as error:
        await carol.send("alice", "hi")
    assert error.value.code == Code.NOT_A_CONTACT
    assert not [e for e in await drain(bob) if isinstance(e, ev.Message) and e.sender == "carol"]


async def test_bad_token_rejected(server: EmbeddedServer, transport: str) -> None:
    from conftest import url_of

    client = Client(url_of(server, transport), "not-a-token", "phone", connect_timeout=TIMEOUT)
    with pytest.raises(ConnectionClosed) as error:
        await client.connect()
    assert error.value.code == Code.UNAUTHORIZED

    forged = issue_token("another-secret-also-32-bytes-long-ok", "alice")
    client = Client(url_of(server, transport), forged, "phone", connect_timeout=TIMEOUT)
    with pytest.raises(ConnectionClosed) as error:
        await client.connect()
    assert error.value.code == Code.UNAUTHORIZED


async def test_expired_token_rejected(server: EmbeddedServer, transport: str) -> None:
    import jwt
    from conftest import SECRET, url_of

    expired = jwt.encode({"sub": "alice", "exp": 1_000_000_000}, SECRET, algorithm="HS256")
    client = Client(url_of(server, transport), expired, "phone", connect_timeout=TIMEOUT)
    with pytest.raises(ConnectionClosed) as error:
        await client.connect()
    assert error.value.code == Code.TOKEN_EXPIRED


async def test_oversized_frame_closes_only_sender(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await start_server(max_frame_bytes=4096, max_body_bytes=2048)
    await friends(server)
    alice = await connect(server, "alice")
    bob = await connect(server, "bob", transport="ws")

    attacker = await RawClient.open(server)
    attacker.send_connect("mallory")
    await attacker.receive_kind("connected")
    # A length prefix of 1 MiB, then only part of the body.
    attacker.send_raw(bytes([0x80, 0x80, 0x40]) + b"x" * 1000)
    assert await attacker.disconnect_code() == Code.FRAME_TOO_LARGE
    attacker.close()

    ack = await alice.send("bob", "still here?")
    message = await next_of(bob, ev.Message)
    assert isinstance(message, ev.Message)
    assert message.message_id == ack.message_id
    reply = await bob.send("alice", "yes")
    assert reply.sequence == 2


async def test_oversized_body_is_request_error(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await start_server(max_frame_bytes=4096, max_body_bytes=2048)
    await friends(server)
    alice = await connect(server, "alice")
    with pytest.raises(RequestError) as error:
        await alice.send("bob", b"x" * 3000)
    assert error.value.code == Code.BODY_TOO_LARGE
    ack = await alice.send("bob", "short")
    assert ack.sequence == 1


async def test_new_connection_replaces_same_device(
    server: EmbeddedServer, connect: ClientFactory
) -> None:
    await friends(server)
    bob = await connect(server, "bob")
    old = await connect(server, "alice", device="phone")
    assert (await presence_of(bob, "alice")).status == "online"
    await connect(server, "alice", device="phone")
    closed = await next_of(old, ev.Disconnected)
    assert isinstance(closed, ev.Disconnected)
    assert closed.code == Code.REPLACED
    assert closed.reconnecting is False
    # The replaced connection's cleanup must not take alice offline.
    events = await drain(bob, quiet=0.8)
    assert not [e for e in events if isinstance(e, ev.PresenceChanged)]


async def test_connect_frame_required_in_time(server: EmbeddedServer) -> None:
    raw = await RawClient.open(server)
    assert await raw.disconnect_code() == Code.CONNECT_TIMEOUT
    raw.close()


async def test_frame_before_connect_is_protocol_error(server: EmbeddedServer) -> None:
    raw = await RawClient.open(server)
    raw.send(pb.Frame(heartbeat=pb.Heartbeat(nonce=1)))
    assert await raw.disconnect_code() == Code.PROTOCOL_ERROR
    raw.close()


async def test_garbage_after_login_is_protocol_error(
    server: EmbeddedServer, connect: ClientFactory
) -> None:
    await friends(server)
    bob = await connect(server, "bob")
    raw = await RawClient.open(server)
    raw.send_connect("alice")
    await raw.receive_kind("connected")
    raw.send_raw(bytes([5]) + b"\xff\xff\xff\xff\xff")
    assert await raw.disconnect_code() == Code.PROTOCOL_ERROR
    raw.close()
    assert (await presence_of(bob, "alice")).status == "online"
    assert (await presence_of(bob, "alice")).status == "offline"


async def test_heartbeat_answered_with_nonce(server: EmbeddedServer) -> None:
    raw = await RawClient.open(server)
    raw.send_connect("alice")
    connected = await raw.receive_kind("connected")
    assert connected.connected.heartbeat_interval_ms == 500
    assert connected.connected.offline_timeout_ms == 2000
    assert connected.connected.max_body_bytes == server.config.gateway.max_body_bytes
    raw.send(pb.Frame(heartbeat=pb.Heartbeat(nonce=42)))
    answer = await raw.receive_kind("heartbeat_ack")
    assert answer.heartbeat_ack.nonce == 42
    assert answer.heartbeat_ack.server_time_ms > 0
    raw.close()


async def test_live_contact_add_reaches_clients(
    server: EmbeddedServer, connect: ClientFactory
) -> None:
    alice = await connect(server, "alice")
    bob = await connect(server, "bob")
    with pytest.raises(RequestError):
        await alice.send("bob", "before")

    await add_contacts(server, "alice", "bob")
    changed = await next_of(alice, ev.ContactsChanged)
    assert isinstance(changed, ev.ContactsChanged)
    assert changed.added == ["bob"]
    assert (await presence_of(alice, "bob")).status == "online"
    assert (await presence_of(bob, "alice")).status == "online"
    ack = await alice.send("bob", "after")
    assert ack.sequence == 1


async def test_resend_same_id_is_idempotent(server: EmbeddedServer, connect: ClientFactory) -> None:
    await friends(server)
    alice = await connect(server, "alice")
    bob = await connect(server, "bob")
    first = await alice.send("bob", "once", client_message_id="m-1")
    again = await alice.send("bob", "once", client_message_id="m-1")
    assert again.message_id == first.message_id
    assert again.sequence == first.sequence
    messages = [e for e in await drain(bob) if isinstance(e, ev.Message)]
    assert len(messages) == 1


async def test_shutdown_tells_clients_to_reconnect(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await start_server()
    alice = await connect(server, "alice", reconnect=True)
    await server.close()
    closed = await next_of(alice, ev.Disconnected)
    assert isinstance(closed, ev.Disconnected)
    assert closed.code == Code.SHUTDOWN
    assert closed.reconnecting is True


async def test_invisible_departure_hides_last_seen(
    server: EmbeddedServer, connect: ClientFactory
) -> None:
    await friends(server)
    bob = await connect(server, "bob")
    alice = await connect(server, "alice")
    assert (await presence_of(bob, "alice")).status == "online"
    await alice.set_status("invisible")
    hidden = await presence_of(bob, "alice")
    assert hidden.status == "offline"

    await asyncio.sleep(0.05)  # a later departure would show a later time
    await alice.close()
    await asyncio.sleep(0.5)  # past the grace period
    late = await connect(server, "bob", device="laptop")
    snapshot = await next_of(late, ev.PresenceSnapshot)
    assert isinstance(snapshot, ev.PresenceSnapshot)
    assert snapshot.contacts["alice"].status == "offline"
    assert snapshot.contacts["alice"].last_seen_ms == hidden.last_seen_ms


async def test_shutdown_spreads_reconnect_delays(start_server: ServerFactory) -> None:
    server = await start_server(reconnect_spread=1.5)
    clients = []
    for index in range(20):
        raw = await RawClient.open(server)
        raw.send_connect(f"user{index}")
        await raw.receive_kind("connected")
        clients.append(raw)
    await server.close()

    delays = []
    for raw in clients:
        frame = await raw.receive_kind("disconnect")
        assert frame.disconnect.code == Code.SHUTDOWN
        delays.append(frame.disconnect.reconnect_delay_ms)
        raw.close()
    assert max(delays) <= 1500
    assert len(set(delays)) > 1  # spread, not one instant
