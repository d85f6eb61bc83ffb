"""Hostile and unlucky clients against catch-up (Unread, Sync), DeliverAck, Refresh and limits.

Some attacks run beside `Bystanders`: pairs of well-behaved SDK clients that chat while the
attack runs and must lose nothing. Tests that found a defect are marked `xfail(strict=True)`
with the defect in the reason, so they start to fail once it is fixed and the mark can go.

Every server binds to 127.0.0.1, every load is bounded in count, and every wait is a multiple of
`TIMEOUT` or `QUIET`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import jwt
import pytest
from conftest import (
    BOTH_BACKENDS,
    QUIET,
    SECRET,
    TIMEOUT,
    ClientFactory,
    RawClient,
    ServerFactory,
    add_contacts,
    drain,
    seed_messages,
    url_of,
)

from tether.auth import issue_token
from tether.client import Client
from tether.client import events as ev
from tether.gateway.limits import LimitsConfig
from tether.logic import service as logic_service
from tether.protocol import tether_pb2 as pb
from tether.protocol.codes import Code
from tether.protocol.framing import prefix_frame
from tether.server import EmbeddedServer

# Limits small enough for a flood to hit them, large enough for SDK clients that behave.
SMALL_RATE = LimitsConfig(frames_per_second=50, frame_burst=100)
MAX_SYNC_PAGE = 500  # documented upper bound of Sync.limit
SdkFactory = Callable[..., Awaitable[Client]]


def now() -> float:
    return asyncio.get_running_loop().time()


# Well-behaved clients beside an attack.


class Bystanders:
    """Pairs of SDK clients on TCP and WebSocket that chat while the block of `chatting` runs."""

    def __init__(self, pairs: list[tuple[Client, Client, str]]) -> None:
        self.pairs = pairs
        self.acked: dict[str, list[int]] = {receiver_id: [] for _, _, receiver_id in pairs}
        self._stop = asyncio.Event()

    @classmethod
    async def join(
        cls, server: EmbeddedServer, connect: ClientFactory, count: int = 3
    ) -> Bystanders:
        pairs = []
        for index in range(count):
            sender_id, receiver_id = f"calm{index}s", f"calm{index}r"
            await add_contacts(server, sender_id, receiver_id)
            transport = "ws" if index % 2 else "tcp"
            sender = await connect(server, sender_id, transport=transport)
            receiver = await connect(server, receiver_id, transport=transport)
            pairs.append((sender, receiver, receiver_id))
        return cls(pairs)

    @contextlib.asynccontextmanager
    async def chatting(self, interval: float = 0.03) -> AsyncIterator[None]:
        async def chat(sender: Client, receiver_id: str) -> None:
            number = 0
            while not self._stop.is_set():
                ack = await sender.send(receiver_id, f"calm {number}")
                self.acked[receiver_id].append(ack.message_id)
                number += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), interval)

        tasks = [asyncio.create_task(chat(sender, rid)) for sender, _, rid in self.pairs]
        try:
            yield
        finally:
            self._stop.set()
            await asyncio.gather(*tasks)

    async def check(self) -> None:
        """Assert that every acknowledged message arrived once, in order, on an unbroken session."""
        for _, receiver, receiver_id in self.pairs:
            expected = self.acked[receiver_id]
            assert expected, f"{receiver_id} was sent nothing"
            events = await collect_until(receiver, len(expected), TIMEOUT)
            events += await drain(receiver, 0.05)
            received = [e.message_id for e in events if isinstance(e, ev.Message)]
            closes = [e for e in events if isinstance(e, ev.Disconnected)]
            assert not closes, f"{receiver_id} was disconnected: {closes}"
            assert received == expected, f"{receiver_id} lost, repeated or reordered messages"


# Helpers.


async def logged_in(server: EmbeddedServer, user: str, device: str = "raw") -> RawClient:
    raw = await RawClient.open(server)
    raw.send_connect(user, device)
    await raw.receive_kind("connected")
    return raw


async def reply_to(raw: RawClient, kinds: tuple[str, ...]) -> pb.Frame:
    """Return the next frame of one of kinds; a Disconnect or a close fails the test."""
    while True:
        frame = await raw.receive()
        assert frame is not None, f"connection closed before a {kinds} frame"
        kind = frame.WhichOneof("kind")
        assert kind != "disconnect" or "disconnect" in kinds, f"closed: {frame.disconnect}"
        if kind in kinds:
            return frame


async def collect_until(
    client: Client, count: int, timeout: float, *, stop_on_close: bool = False
) -> list[ev.Event]:
    """Return events until count messages arrived, a final Disconnected, or timeout.

    With stop_on_close, any Disconnected ends the wait, for tests that allow none.
    """
    events: list[ev.Event] = []
    messages = 0
    deadline = now() + timeout
    while messages < count and now() < deadline:
        try:
            event = await client.next_event(deadline - now())
        except TimeoutError:
            break
        events.append(event)
        if isinstance(event, ev.Message):
            messages += 1
        elif isinstance(event, ev.Disconnected) and (stop_on_close or not event.reconnecting):
            break
    return events


def messages_of(events: list[ev.Event]) -> list[ev.Message]:
    return [event for event in events if isinstance(event, ev.Message)]


async def seed_direct(
    server: EmbeddedServer, sender: str, recipient: str, count: int, body: bytes = b"old"
) -> str:
    """Store count messages from sender to recipient in one transaction; return the conversation.

    Writing through the store takes milliseconds where the same count of Sends takes seconds.
    """
    return await seed_messages(server.logic.store, sender, recipient, count, body)


async def seed_senders(server: EmbeddedServer, recipient: str, count: int) -> None:
    """Store one message from each of count new contacts of recipient, in one transaction."""
    store = server.logic.store
    async with store.transaction():
        for index in range(count):
            sender = f"friend{index:04}"
            await store.add_contacts(sender, recipient)
            await store.store_direct(
                sender=sender, sender_device="seed", recipient=recipient,
                client_message_id="seed", body=b"hi",
            )  # fmt: skip


def sync_frame(conversation: str, request_id: str = "s1", **fields: int | bool) -> pb.Frame:
    return pb.Frame(sync=pb.Sync(request_id=request_id, conversation_id=conversation, **fields))


def abort_device(server: EmbeddedServer, user: str, device: str | None = None) -> int:
    """Abort a user's server-side connections (all devices, or one) with no Disconnect frame."""
    devices = server.gateway.sessions.get(user, {})
    targets = [c for d, c in list(devices.items()) if device is None or d == device]
    for connection in targets:
        connection.close_transport(abort=True)
    return len(targets)


def signed_token(claims_json: str) -> str:
    """Return an HS256 token over raw JSON claims, for claims PyJWT's encoder would not write."""

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(claims_json.encode())
    signature = b64(hmac.new(SECRET.encode(), header + b"." + body, hashlib.sha256).digest())
    return (header + b"." + body + b"." + signature).decode()


def peak_rss_reset() -> int:
    """Reset this process's peak resident set size (Linux clear_refs) and return the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pytest.skip("cannot reset the peak RSS through /proc/self/clear_refs")
    return _status_bytes("VmRSS:")


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} line in /proc/self/status")


@pytest.fixture
async def sdk() -> AsyncIterator[SdkFactory]:
    """Return a function that connects an SDK client with a backoff of 20 to 100 ms.

    A test can then cut its connection many times in a second. Every client closes at teardown.
    """
    clients: list[Client] = []

    async def open_client(
        server: EmbeddedServer, user: str, device: str = "phone", transport: str = "tcp"
    ) -> Client:
        client = Client(
            url_of(server, transport),
            issue_token(SECRET, user),
            device,
            reconnect=True,
            connect_timeout=TIMEOUT,
            ack_timeout=TIMEOUT,
            backoff_initial=0.02,
            backoff_max=0.1,
        )
        clients.append(client)
        await client.connect()
        return client

    yield open_client
    for client in clients:
        await client.close()


# NUL characters, which PostgreSQL cannot store in text.


@BOTH_BACKENDS
async def test_nul_in_ids_rejected(server: EmbeddedServer, connect: ClientFactory) -> None:
    bystanders = await Bystanders.join(server, connect)
    own = await seed_direct(server, "eve", "mallory", 1)
    mallory = await logged_in(server, "mallory")

    async with bystanders.chatting():
        for client_id, recipient in (("a\x00b", "eve"), ("ok-1", "eve\x00"), ("ok-2", "\x00")):
            send = pb.Send(client_message_id=client_id, recipient=recipient, body=b"x")
            mallory.send(pb.Frame(send=send))
            error = (await reply_to(mallory, ("error", "send_ack"))).error
            assert error.code == Code.BAD_REQUEST, repr(client_id + recipient)
            assert error.ref == client_id
            assert "NUL" in error.message

        mallory.send(sync_frame(own + "\x00", "nul"))
        error = (await reply_to(mallory, ("error", "sync_result"))).error
        assert error.code == Code.BAD_REQUEST
        assert error.ref == "nul"

        # An ack the gateway drops gets no reply; the Sync behind it still gets one.
        mallory.send(pb.Frame(deliver_ack=pb.DeliverAck(conversation_id=own + "\x00", sequence=1)))
        mallory.send(sync_frame(own, "own"))
        result = (await reply_to(mallory, ("sync_result",))).sync_result
        assert [m.sequence for m in result.messages] == [1]

        mallory.send(pb.Frame(send=pb.Send(client_message_id="ok-3", recipient="eve", body=b"x")))
        ack = (await reply_to(mallory, ("send_ack",))).send_ack
        assert ack.sequence == 2

        device = await RawClient.open(server)
        device.send_connect("mallory", "ph\x00ne")
        assert await device.disconnect_code() == Code.PROTOCOL_ERROR
        device.close()
    assert await server.logic.store.read_marker("mallory", "raw", own) == 0
    mallory.close()
    await bystanders.check()


# Sync abuse.


@BOTH_BACKENDS
async def test_sync_foreign_conversations(server: EmbeddedServer, connect: ClientFactory) -> None:
    bystanders = await Bystanders.join(server, connect)
    await seed_direct(server, "alice", "bob", 3)
    await seed_direct(server, "eve", "mallory", 1)
    mallory = await logged_in(server, "mallory")
    not_found = [
        "d:alice:bob",  # another pair's conversation
        "d:bob:alice",  # the same pair in the wrong order
        "d:mallory:eve",  # mallory's own pair in the wrong order
        "d:alice:bob:mallory",
        "d:eve:mallory ",
        "D:eve:mallory",
        "d:alice",
        "d::",
        "%",
        "' OR 1=1 --",
        "\u00e9" * 200,
        "x" * 30_000,
    ]
    async with bystanders.chatting():
        for index, conversation in enumerate(not_found):
            mallory.send(sync_frame(conversation, f"q{index}", limit=MAX_SYNC_PAGE))
            error = (await reply_to(mallory, ("error", "sync_result"))).error
            assert error.code == Code.NOT_FOUND, conversation[:40]
            assert error.ref == f"q{index}"

        mallory.send(sync_frame("", "empty"))
        error = (await reply_to(mallory, ("error", "sync_result"))).error
        assert error.code == Code.BAD_REQUEST
        assert error.ref == "empty"

        # Her own conversation still works on the same connection.
        mallory.send(sync_frame("d:eve:mallory", "own"))
        result = (await reply_to(mallory, ("sync_result",))).sync_result
        assert [m.sequence for m in result.messages] == [1]
    mallory.close()
    await bystanders.check()


@pytest.mark.parametrize(
    ("request_id", "code"),
    [
        ("r" * 64, None),
        ("r" * 65, Code.BAD_REQUEST),
        ("\u00e9" * 32, None),  # 64 bytes
        ("\u00e9" * 33, Code.BAD_REQUEST),  # 33 characters, 66 bytes
        ("r" * 20_000, Code.BAD_REQUEST),
        ("", Code.BAD_REQUEST),
    ],
    ids=["64-bytes", "65-bytes", "64-utf8-bytes", "66-utf8-bytes", "20000-bytes", "empty"],
)
async def test_sync_request_id_length(
    server: EmbeddedServer, request_id: str, code: Code | None
) -> None:
    conversation = await seed_direct(server, "alice", "bob", 2)
    bob = await logged_in(server, "bob")
    bob.send(sync_frame(conversation, request_id))
    frame = await reply_to(bob, ("error", "sync_result"))
    if code is None:
        assert frame.sync_result.request_id == request_id
        assert len(frame.sync_result.messages) == 2
    else:
        assert frame.error.code == code
    bob.close()


@BOTH_BACKENDS
async def test_sync_limit_capped(server: EmbeddedServer) -> None:
    conversation = await seed_direct(server, "alice", "bob", MAX_SYNC_PAGE + 100)
    bob = await logged_in(server, "bob")
    for limit, expected in ((2**32 - 1, MAX_SYNC_PAGE), (501, MAX_SYNC_PAGE), (0, 100), (1, 1)):
        bob.send(sync_frame(conversation, f"limit-{limit}", limit=limit))
        result = (await reply_to(bob, ("sync_result",))).sync_result
        assert result.request_id == f"limit-{limit}"
        assert len(result.messages) == expected, f"limit {limit}"
        assert [m.sequence for m in result.messages] == list(range(1, expected + 1))
        assert result.has_more is True
        assert result.last_sequence == MAX_SYNC_PAGE + 100

    bob.send(sync_frame(conversation, "tail", after_sequence=MAX_SYNC_PAGE, limit=2**32 - 1))
    result = (await reply_to(bob, ("sync_result",))).sync_result
    assert len(result.messages) == 100
    assert result.has_more is False
    bob.close()


@pytest.mark.parametrize(
    "after",
    [
        2**63 - 1,
        pytest.param(2**63),
        pytest.param(2**64 - 1),
    ],
    ids=["int64-max", "int64-max-plus-1", "uint64-max"],
)
@BOTH_BACKENDS
async def test_sync_after_huge_sequence(server: EmbeddedServer, after: int) -> None:
    conversation = await seed_direct(server, "alice", "bob", 3)
    bob = await logged_in(server, "bob")
    bob.send(sync_frame(conversation, "far", after_sequence=after))
    frame = await reply_to(bob, ("error", "sync_result"))
    assert frame.WhichOneof("kind") == "sync_result", f"got {frame.error}"
    assert list(frame.sync_result.messages) == []
    assert frame.sync_result.has_more is False
    assert frame.sync_result.last_sequence == 3
    bob.close()


async def test_sync_flood_rate_limited(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await start_server(limits=SMALL_RATE)
    bystanders = await Bystanders.join(server, connect)
    conversation = await seed_direct(server, "eve", "mallory", 5)
    mallory = await logged_in(server, "mallory")
    chunk = prefix_frame(sync_frame(conversation, "flood").SerializeToString()) * 50
    max_pending = 0

    async with bystanders.chatting():
        with contextlib.suppress(ConnectionError):
            for _ in range(60):  # 3,000 Syncs, as fast as the socket takes them
                mallory.send_raw(chunk)
                await mallory.writer.drain()
                max_pending = max(max_pending, server.gateway.stats()["pending_requests"])
                await asyncio.sleep(0.002)

        kinds: list[str] = []
        code = None
        while (frame := await mallory.receive()) is not None:
            kinds.append(frame.WhichOneof("kind"))
            if frame.HasField("disconnect"):
                code = frame.disconnect.code
        mallory.close()

    assert code == Code.RATE_LIMITED
    # Only the burst (plus a few refill tokens) reached the logic layer.
    assert kinds.count("sync_result") <= SMALL_RATE.frame_burst + 10
    assert max_pending <= SMALL_RATE.frame_burst + 10
    await bystanders.check()
    assert server.gateway.stats()["pending_requests"] <= len(bystanders.pairs)


async def test_sync_pages_bounded_memory(start_server: ServerFactory) -> None:
    server = await start_server(limits=SMALL_RATE)
    conversation = await seed_direct(server, "accomplice", "mallory", MAX_SYNC_PAGE, bytes(32_768))
    mallory = await logged_in(server, "mallory")
    gc.collect()
    before = peak_rss_reset()

    for index in range(6):
        mallory.send(sync_frame(conversation, f"big-{index}", limit=MAX_SYNC_PAGE))
    await mallory.disconnect_code()
    mallory.close()

    growth = _status_bytes("VmHWM:") - before
    assert growth < 64 * 2**20, f"peak memory grew by {growth / 2**20:.0f} MiB for 6 Syncs"


@pytest.mark.parametrize("kind", ["sync", "refresh", "deliver_ack"])
@pytest.mark.parametrize("when", ["first-frame", "while-authenticating"])
async def test_request_before_connected(server: EmbeddedServer, kind: str, when: str) -> None:
    frames = {
        "sync": sync_frame("d:alice:bob", "early"),
        "refresh": pb.Frame(refresh=pb.Refresh(token=issue_token(SECRET, "alice"))),
        "deliver_ack": pb.Frame(deliver_ack=pb.DeliverAck(conversation_id="d:a:b", sequence=1)),
    }
    raw = await RawClient.open(server)
    data = prefix_frame(frames[kind].SerializeToString())
    if when == "while-authenticating":
        connect = pb.Connect(protocol_version=1, token=issue_token(SECRET, "alice"), device_id="r")
        data = prefix_frame(pb.Frame(connect=connect).SerializeToString()) + data
    raw.send_raw(data)
    assert await raw.disconnect_code() == Code.PROTOCOL_ERROR
    raw.close()
    assert "alice" not in server.gateway.sessions


async def test_sdk_catches_up_large_messages(server: EmbeddedServer, sdk: SdkFactory) -> None:
    await seed_direct(server, "alice", "bob", 40, bytes(32_768))
    bob = await sdk(server, "bob")
    events = await collect_until(bob, 40, TIMEOUT, stop_on_close=True)
    closes = [e.code for e in events if isinstance(e, ev.Disconnected)]
    assert closes == []
    assert [m.sequence for m in messages_of(events)] == list(range(1, 41))


# DeliverAck abuse.


@BOTH_BACKENDS
async def test_ack_foreign_conversation(server: EmbeddedServer, connect: ClientFactory) -> None:
    bystanders = await Bystanders.join(server, connect)
    store = server.logic.store
    conversation = await seed_direct(server, "alice", "bob", 3)
    own = await seed_direct(server, "eve", "mallory", 2)
    bob = await logged_in(server, "bob", "phone")
    bob.send(pb.Frame(deliver_ack=pb.DeliverAck(conversation_id=conversation, sequence=1)))
    mallory = await logged_in(server, "mallory", "phone")

    async with bystanders.chatting():
        for target in (conversation, "d:bob:alice", "", "x" * 30_000, own + ":"):
            for sequence in (0, 3, 4, 2**63, 2**64 - 1):
                ack = pb.DeliverAck(conversation_id=target, sequence=sequence)
                mallory.send(pb.Frame(deliver_ack=ack))
        # The logic stream is FIFO, so this reply arrives after the logic layer handled every ack.
        mallory.send(sync_frame(own, "barrier"))
        await reply_to(mallory, ("sync_result",))

    assert await store.read_marker("bob", "phone", conversation) == 1
    assert await store.read_marker("alice", "phone", conversation) == 0
    assert await store.read_marker("mallory", "phone", conversation) == 0
    assert await store.read_marker("mallory", "phone", own) == 0
    # Ignored acks close nothing: both sessions are still open.
    assert "mallory" in server.gateway.sessions
    assert "bob" in server.gateway.sessions
    bob.close()
    mallory.close()
    await bystanders.check()


@BOTH_BACKENDS
async def test_ack_beyond_last_clamped(server: EmbeddedServer, connect: ClientFactory) -> None:
    store = server.logic.store
    conversation = await seed_direct(server, "alice", "bob", 3)
    bob = await logged_in(server, "bob", "phone")
    for sequence in (2**64 - 1, 2**63, 1, 0):  # the last two must not move the marker back
        bob.send(
            pb.Frame(deliver_ack=pb.DeliverAck(conversation_id=conversation, sequence=sequence))
        )
    bob.send(sync_frame(conversation, "barrier"))
    await reply_to(bob, ("sync_result",))
    assert await store.read_marker("bob", "phone", conversation) == 3
    bob.close()

    # The clamped marker still lets a later message show as unread.
    alice = await connect(server, "alice")
    ack = await alice.send("bob", "new")
    assert ack.sequence == 4
    again = await RawClient.open(server)
    again.send_connect("bob", "phone")
    unread = (await again.receive_kind("unread")).unread
    states = [(c.conversation_id, c.last_sequence, c.read_sequence) for c in unread.conversations]
    assert states == [(conversation, 4, 3)]
    again.close()


# Refresh abuse.


def _claims_token(claims: dict[str, object], secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


REFRESH_CASES = {
    "other-user": (lambda: issue_token(SECRET, "mallory", ttl=60), Code.UNAUTHORIZED),
    "expired": (
        lambda: _claims_token({"sub": "alice", "exp": int(time.time()) - 60}),
        Code.TOKEN_EXPIRED,
    ),
    "garbage": (lambda: "not.a.token", Code.UNAUTHORIZED),
    "empty": (lambda: "", Code.UNAUTHORIZED),
    "huge-garbage": (lambda: "A" * 60_000, Code.UNAUTHORIZED),
    "wrong-secret": (
        lambda: _claims_token({"sub": "alice"}, "another-secret-of-at-least-32-bytes!!"),
        Code.UNAUTHORIZED,
    ),
    "alg-none": (lambda: _claims_token({"sub": "alice"}, "", "none"), Code.UNAUTHORIZED),
    "audience": (lambda: _claims_token({"sub": "alice", "aud": "x"}), Code.UNAUTHORIZED),
    "not-yet-valid": (
        lambda: _claims_token({"sub": "alice", "nbf": int(time.time()) + 600}),
        Code.UNAUTHORIZED,
    ),
    "bad-sub": (lambda: _claims_token({"sub": "alice:bob"}), Code.UNAUTHORIZED),
    "no-sub": (lambda: _claims_token({"exp": int(time.time()) + 60}), Code.UNAUTHORIZED),
}


@pytest.mark.parametrize("case", REFRESH_CASES.values(), ids=REFRESH_CASES.keys())
async def test_refresh_rejected(
    start_server: ServerFactory, case: tuple[Callable[[], str], Code]
) -> None:
    make_token, code = case
    server = await start_server(token_leeway=0)
    alice = await logged_in(server, "alice")
    alice.send(pb.Frame(refresh=pb.Refresh(token=make_token())))
    assert await alice.disconnect_code() == code
    alice.close()
    assert "alice" not in server.gateway.sessions


async def test_refresh_storm_rate_limited(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await start_server(limits=SMALL_RATE)
    bystanders = await Bystanders.join(server, connect)
    refresh = prefix_frame(
        pb.Frame(
            refresh=pb.Refresh(token=issue_token(SECRET, "mallory", ttl=60))
        ).SerializeToString()
    )
    async with bystanders.chatting():
        # Within the burst, the server accepts every Refresh and sends Refreshed.
        steady = await logged_in(server, "steady")
        steady_refresh = pb.Refresh(token=issue_token(SECRET, "steady", ttl=60))
        for _ in range(SMALL_RATE.frame_burst // 2):
            steady.send(pb.Frame(refresh=steady_refresh))
        for _ in range(SMALL_RATE.frame_burst // 2):
            assert (await reply_to(steady, ("refreshed",))).refreshed.token_expires_ms > 0

        mallory = await logged_in(server, "mallory")
        with contextlib.suppress(ConnectionError):
            for _ in range(20):  # 1,000 Refresh frames
                mallory.send_raw(refresh * 50)
                await mallory.writer.drain()
        assert await mallory.disconnect_code() == Code.RATE_LIMITED
        mallory.close()
        steady.close()
    await bystanders.check()


async def test_refresh_expiry_heap_bounded(server: EmbeddedServer) -> None:
    alice = await logged_in(server, "alice")
    refresh = prefix_frame(
        pb.Frame(
            refresh=pb.Refresh(token=issue_token(SECRET, "alice", ttl=600))
        ).SerializeToString()
    )
    for _ in range(30):  # 3,000 Refresh frames, far below the test server's frame limit
        alice.send_raw(refresh * 100)
        await alice.writer.drain()
    answered = 0
    while answered < 3000:
        await reply_to(alice, ("refreshed",))
        answered += 1
    # Gateway._track_expiry rebuilds its heap once stale entries pass 2 * open + 1024.
    assert len(server.gateway._expiries) <= 2 * server.gateway.stats()["open"] + 1025
    alice.close()


async def test_refresh_shortens_expiry(start_server: ServerFactory) -> None:
    server = await start_server(token_leeway=0)
    alice = await logged_in(server, "alice")  # a token with no exp
    alice.send(pb.Frame(refresh=pb.Refresh(token=issue_token(SECRET, "alice", ttl=1))))
    refreshed = (await reply_to(alice, ("refreshed",))).refreshed
    assert 0 < refreshed.token_expires_ms <= (time.time() + 1) * 1000
    started = time.monotonic()
    assert await alice.disconnect_code() == Code.TOKEN_EXPIRED
    assert time.monotonic() - started < 1.0 + 0.5
    alice.close()


async def test_refresh_removes_expiry(start_server: ServerFactory) -> None:
    server = await start_server(token_leeway=0)
    alice = await RawClient.open(server)
    alice.send_connect("alice", token=issue_token(SECRET, "alice", ttl=1))
    await alice.receive_kind("connected")
    alice.send(pb.Frame(refresh=pb.Refresh(token=issue_token(SECRET, "alice"))))
    assert (await reply_to(alice, ("refreshed",))).refreshed.token_expires_ms == 0
    await asyncio.sleep(1.5)  # past the first token's exp
    alice.send(pb.Frame(heartbeat=pb.Heartbeat(nonce=9)))
    assert (await reply_to(alice, ("heartbeat_ack",))).heartbeat_ack.nonce == 9
    alice.close()


# An exp of 1e20 s passes PyJWT 2.15 and TokenVerifier, but exp * 1000 does not fit int64.
HUGE_EXP_TOKEN = '{"sub": "alice", "exp": 100000000000000000000}'


async def test_connect_huge_exp(server: EmbeddedServer) -> None:
    raw = await RawClient.open(server)
    raw.send_connect("alice", token=signed_token(HUGE_EXP_TOKEN))
    try:
        frame = await raw.receive(timeout=TIMEOUT / 5)
    except TimeoutError:
        frame = None
    assert frame is not None, "neither Connected nor Disconnect within a second"
    if frame.HasField("disconnect"):
        assert frame.disconnect.code == Code.UNAUTHORIZED
    else:
        assert frame.HasField("connected")
    raw.close()


async def test_refresh_huge_exp(server: EmbeddedServer) -> None:
    alice = await logged_in(server, "alice")
    alice.send(pb.Frame(refresh=pb.Refresh(token=signed_token(HUGE_EXP_TOKEN))))
    frame = await alice.receive()
    while frame is not None and frame.WhichOneof("kind") not in ("refreshed", "disconnect"):
        frame = await alice.receive()  # Unread and PresenceSnapshot come first
    assert frame is not None, "closed without a Disconnect frame"
    if frame.HasField("disconnect"):
        assert frame.disconnect.code == Code.UNAUTHORIZED
    else:
        assert frame.HasField("refreshed")
    alice.close()


# Catch-up under faults, with the SDK.


async def test_flapping_recipient_gets_all(
    server: EmbeddedServer, connect: ClientFactory, sdk: SdkFactory
) -> None:
    await add_contacts(server, "alice", "bob")
    alice = await connect(server, "alice")
    bob = await sdk(server, "bob")
    acked: list[pb.SendAck] = []
    cuts = 0

    async def send_all() -> None:
        for index in range(150):
            acked.append(await alice.send("bob", f"m{index}"))
            await asyncio.sleep(0.01)

    sender = asyncio.create_task(send_all())
    while not sender.done():
        await asyncio.sleep(0.12)
        cuts += abort_device(server, "bob")
    await sender

    events = await collect_until(bob, len(acked), TIMEOUT * 2)
    events += await drain(bob, QUIET)
    received = messages_of(events)
    reconnects = [e for e in events if isinstance(e, ev.Disconnected)]
    assert cuts >= 5, "the test cut too few connections to mean anything"
    assert len(reconnects) >= 5
    assert all(e.reconnecting for e in reconnects)
    assert [m.message_id for m in received] == [a.message_id for a in acked]
    assert [m.sequence for m in received] == list(range(1, 151))


async def test_two_devices_catch_up(
    server: EmbeddedServer, connect: ClientFactory, sdk: SdkFactory
) -> None:
    await add_contacts(server, "alice", "bob")
    alice = await connect(server, "alice", device="phone")
    backlog = [await alice.send("bob", f"old {index}") for index in range(120)]

    phone = await sdk(server, "bob", "phone", "tcp")
    laptop = await sdk(server, "bob", "laptop", "ws")
    tablet = await sdk(server, "alice", "tablet", "ws")  # the sender's other device
    live: list[pb.SendAck] = []

    async def send_live() -> None:
        for index in range(80):
            live.append(await alice.send("bob", f"new {index}"))
            await asyncio.sleep(0.01)

    sender = asyncio.create_task(send_live())
    turn = 0
    while not sender.done():
        await asyncio.sleep(0.1)
        device = "phone" if turn % 2 == 0 else "laptop"
        abort_device(server, "bob", device)
        turn += 1
    await sender

    expected = [a.message_id for a in backlog + live]
    for client in (phone, laptop, tablet):
        events = await collect_until(client, len(expected), TIMEOUT * 2)
        events += await drain(client, QUIET)
        received = messages_of(events)
        assert [m.message_id for m in received] == expected, client.device_id
        assert [m.sequence for m in received] == list(range(1, 201))
    own = messages_of(await drain(alice, QUIET))
    assert own == [], "the sending device got its own messages as received ones"


async def test_own_messages_not_handed(server: EmbeddedServer, connect: ClientFactory) -> None:
    await add_contacts(server, "alice", "bob")
    alice = await connect(server, "alice", device="phone")
    bob = await connect(server, "bob")
    sent = [await alice.send("bob", f"a{index}") for index in range(3)]
    reply = await bob.send("alice", "reply")
    (received,) = messages_of(await collect_until(alice, 1, TIMEOUT))
    assert received.message_id == reply.message_id
    assert messages_of(await drain(alice)) == []
    more = [await alice.send("bob", f"b{index}") for index in range(3)]
    await alice.close()

    # A new client of the same device catches up from its read marker and skips its own sends.
    again = await connect(server, "alice", device="phone")
    assert messages_of(await drain(again, QUIET * 2)) == []
    # A new device of the same user gets all of them, in order.
    laptop = await connect(server, "alice", device="laptop")
    events = await collect_until(laptop, 7, TIMEOUT)
    expected = [a.message_id for a in [*sent, reply, *more]]
    assert [m.message_id for m in messages_of(events)] == expected


@BOTH_BACKENDS
async def test_own_send_no_gap_sync(server: EmbeddedServer, connect: ClientFactory) -> None:
    await add_contacts(server, "alice", "bob")
    syncs: list[str] = []
    gateway = server.gateway
    handle_sync = gateway._on_sync

    def counting_sync(connection: object, sync: pb.Sync) -> None:
        syncs.append(connection.user_id)  # type: ignore[attr-defined]
        handle_sync(connection, sync)  # type: ignore[arg-type]

    gateway._on_sync = counting_sync  # type: ignore[method-assign]
    alice = await connect(server, "alice")
    bob = await connect(server, "bob")
    for index in range(3):
        await alice.send("bob", f"a{index}")
    await bob.send("alice", "reply")
    (received,) = messages_of(await collect_until(alice, 1, TIMEOUT))
    assert received.sequence == 4
    assert syncs.count("alice") == 0


# Catch-up limits.


async def test_catch_up_within_rate_limit(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await start_server(limits=LimitsConfig())
    await seed_senders(server, "bob", 150)
    bob = await connect(server, "bob", reconnect=True)
    events = await collect_until(bob, 150, TIMEOUT * 2, stop_on_close=True)
    assert [e.code for e in events if isinstance(e, ev.Disconnected)] == []
    assert len(messages_of(events)) == 150


@BOTH_BACKENDS
async def test_truncated_unread_caught_up(
    server: EmbeddedServer, connect: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logic_service, "MAX_UNREAD_LISTED", 10)  # the same path, smaller
    await seed_senders(server, "bob", 11)
    bob = await connect(server, "bob")
    received = messages_of(await drain(bob, quiet=QUIET * 4))
    assert len(received) == 11


# Count limits.


async def test_device_limit_ignores_stale(start_server: ServerFactory) -> None:
    server = await start_server(limits=LimitsConfig(max_devices_per_user=2))
    laptop = await logged_in(server, "alice", "laptop")
    stale: list[RawClient] = []
    for attempt in range(30):
        raw = await RawClient.open(server)
        raw.send_connect("alice", "phone")
        if attempt % 3 == 0:
            raw.close()  # gone, perhaps before Connected
            continue
        await raw.receive_kind("connected")
        if attempt % 3 == 1:
            abort_device(server, "alice", "phone")  # the server loses it
            raw.close()
        else:
            stale.append(raw)  # silent, to be replaced by the next attempt
    phone = await logged_in(server, "alice", "phone")

    assert sorted(server.gateway.sessions["alice"]) == ["laptop", "phone"]
    tablet = await RawClient.open(server)
    tablet.send_connect("alice", "tablet")
    assert await tablet.disconnect_code() == Code.TOO_MANY_DEVICES
    tablet.close()

    laptop.close()
    deadline = now() + TIMEOUT
    while "laptop" in server.gateway.sessions["alice"] and now() < deadline:
        await asyncio.sleep(0.01)
    tablet = await logged_in(server, "alice", "tablet")
    codes = await asyncio.gather(*(raw.disconnect_code() for raw in stale))
    assert set(codes) == {Code.REPLACED}
    for raw in [*stale, phone, tablet]:
        raw.close()


# How a connection ends, and what the test server needs for it.
CloseDriver = Callable[[EmbeddedServer, int], Awaitable[None]]
IP_LIMIT = 2


async def _wait_connections(server: EmbeddedServer, count: int) -> None:
    deadline = now() + TIMEOUT
    while len(server.gateway.connections) > count:
        assert now() < deadline, f"{len(server.gateway.connections)} connections still open"
        await asyncio.sleep(0.01)


async def _expect_code(raw: RawClient, code: Code) -> None:
    assert await raw.disconnect_code() == code
    raw.close()


async def _by_connect_timeout(server: EmbeddedServer, round_: int) -> None:
    await _expect_code(await RawClient.open(server), Code.CONNECT_TIMEOUT)


async def _by_heartbeat_timeout(server: EmbeddedServer, round_: int) -> None:
    await _expect_code(await logged_in(server, f"u{round_}"), Code.HEARTBEAT_TIMEOUT)


async def _by_protocol_error(server: EmbeddedServer, round_: int) -> None:
    raw = await logged_in(server, f"u{round_}")
    raw.send_raw(b"\x02\xff\xff")
    await _expect_code(raw, Code.PROTOCOL_ERROR)


async def _by_rate_limit(server: EmbeddedServer, round_: int) -> None:
    raw = await logged_in(server, f"u{round_}")
    raw.send_raw(prefix_frame(pb.Frame(heartbeat=pb.Heartbeat()).SerializeToString()) * 100)
    await _expect_code(raw, Code.RATE_LIMITED)


async def _by_slow_consumer(server: EmbeddedServer, round_: int) -> None:
    raw = await logged_in(server, "hog", f"d{round_}")
    raw.send(sync_frame("d:hog:peer", "big", limit=40))
    await _expect_code(raw, Code.SLOW_CONSUMER)


async def _by_bad_token(server: EmbeddedServer, round_: int) -> None:
    raw = await RawClient.open(server)
    raw.send_connect("alice", token="bad")
    await _expect_code(raw, Code.UNAUTHORIZED)


async def _by_too_many_devices(server: EmbeddedServer, round_: int) -> None:
    raw = await RawClient.open(server)
    raw.send_connect("holder", f"extra{round_}")
    await _expect_code(raw, Code.TOO_MANY_DEVICES)


async def _by_replaced(server: EmbeddedServer, round_: int) -> None:
    old = await logged_in(server, "holder", "phone")
    new = await logged_in(server, "holder", "phone")
    await _expect_code(old, Code.REPLACED)
    new.close()


async def _by_client_reset(server: EmbeddedServer, round_: int) -> None:
    raw = await logged_in(server, f"u{round_}")
    raw.writer.transport.abort()


async def _by_client_fin(server: EmbeddedServer, round_: int) -> None:
    raw = await logged_in(server, f"u{round_}")
    raw.writer.write_eof()
    assert await raw.disconnect_code() is None
    raw.close()


async def _by_client_disconnect(server: EmbeddedServer, round_: int) -> None:
    raw = await logged_in(server, f"u{round_}")
    raw.send(pb.Frame(disconnect=pb.Disconnect(code=1000)))
    assert await raw.disconnect_code() is None
    raw.close()


async def _by_server_abort(server: EmbeddedServer, round_: int) -> None:
    raw = await logged_in(server, f"u{round_}")
    assert abort_device(server, f"u{round_}") == 1
    assert await raw.disconnect_code() is None
    raw.close()


async def _by_websocket_close(server: EmbeddedServer, round_: int) -> None:
    client = Client(
        url_of(server, "ws"), issue_token(SECRET, f"u{round_}"), "ws",
        reconnect=False, connect_timeout=TIMEOUT,
    )  # fmt: skip
    await client.connect()
    await client.close()


CLOSE_PATHS: dict[str, tuple[CloseDriver, dict[str, object]]] = {
    "connect-timeout": (_by_connect_timeout, {"connect_timeout": 0.2}),
    "heartbeat-timeout": (
        _by_heartbeat_timeout,
        {"heartbeat_interval": 0.1, "offline_timeout": 0.3},
    ),
    "protocol-error": (_by_protocol_error, {}),
    "rate-limited": (_by_rate_limit, {"frames_per_second": 20, "frame_burst": 40}),
    "slow-consumer": (_by_slow_consumer, {"max_outgoing_bytes": 16_384}),
    "unauthorized": (_by_bad_token, {}),
    "too-many-devices": (_by_too_many_devices, {"max_devices_per_user": 1}),
    "replaced": (_by_replaced, {}),
    "client-reset": (_by_client_reset, {}),
    "client-fin": (_by_client_fin, {}),
    "client-disconnect": (_by_client_disconnect, {}),
    "server-abort": (_by_server_abort, {}),
    "websocket-close": (_by_websocket_close, {}),
}
_LIMIT_FIELDS = {"frames_per_second", "frame_burst", "max_devices_per_user"}


@pytest.mark.parametrize("path", CLOSE_PATHS.values(), ids=CLOSE_PATHS.keys())
async def test_ip_slots_released(
    start_server: ServerFactory, path: tuple[CloseDriver, dict[str, object]]
) -> None:
    close_by, settings = path
    limits = {k: v for k, v in settings.items() if k in _LIMIT_FIELDS}
    gateway = {k: v for k, v in settings.items() if k not in _LIMIT_FIELDS}
    server = await start_server(
        limits=LimitsConfig(max_connections_per_ip=IP_LIMIT, **limits),  # type: ignore[arg-type]
        **gateway,
    )
    await seed_direct(server, "peer", "hog", 20, bytes(2048))
    holder = None
    if close_by is _by_too_many_devices:
        holder = await logged_in(server, "holder", "phone")  # takes one of the slots

    for round_ in range(3 * IP_LIMIT):
        await close_by(server, round_)
        await _wait_connections(server, 0 if holder is None else 1)

    if holder is not None:
        holder.close()
        await _wait_connections(server, 0)
    clients = [await logged_in(server, f"after{index}") for index in range(IP_LIMIT)]
    for raw in clients:
        raw.close()


async def test_ip_slots_released_at_shutdown(start_server: ServerFactory) -> None:
    server = await start_server(limits=LimitsConfig(max_connections_per_ip=3))
    gateway = server.gateway
    opened = [await logged_in(server, f"u{index}") for index in range(2)]
    opened.append(await RawClient.open(server))  # still waiting for its Connect
    codes = asyncio.gather(*(raw.disconnect_code() for raw in opened))
    await server.close()
    assert await codes == [Code.SHUTDOWN] * 3
    for raw in opened:
        raw.close()
    assert gateway.connections == {}
    assert len(gateway._per_address) == 0, "per-address slots still held after shutdown"
