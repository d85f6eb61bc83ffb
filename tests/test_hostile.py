"""Hostile and unlucky clients against the embedded server.

Most tests run their attack inside an `Arena`: 100 well-behaved clients in 50 pairs (half over
TCP, half over WebSocket) chat and heartbeat while the attack runs. Afterwards the test checks
that the attacker got the documented code, that every acknowledged bystander message arrived
exactly once and without delay, and that the server's memory grew by less than 20 MB. The
server runs in the test process, so its memory is this process's VmRSS.

Every load is bounded in count and time, and every server binds to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import logging
import os
import socket
import struct
import time
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import jwt
import pytest
from conftest import (
    QUIET,
    SECRET,
    TIMEOUT,
    ClientFactory,
    RawClient,
    ServerFactory,
    add_contacts,
    drain,
    next_of,
    presence_of,
)
from google.protobuf import json_format

from tether.auth import issue_token
from tether.client import Client
from tether.client import events as ev
from tether.gateway.limits import LimitsConfig
from tether.protocol import tether_pb2 as pb
from tether.protocol.codes import Code
from tether.protocol.framing import encode_varint, prefix_frame
from tether.server import EmbeddedServer

MAX_RSS_GROWTH_BYTES = 20 * 1024 * 1024
# Maximum send-to-ack time of a bystander while an attack runs (1 s unscaled).
MAX_BYSTANDER_LATENCY = TIMEOUT / 5

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def rss_bytes() -> int:
    """Return this process's resident set size, read from /proc/self/status."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS line in /proc/self/status")


def now() -> float:
    return asyncio.get_running_loop().time()


# Well-behaved clients beside the attack.


@dataclass
class _Pair:
    sender: Client
    receiver: Client
    receiver_id: str
    acked: list[int] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


class Arena:
    """A server plus pairs of well-behaved clients that chat while an attack runs."""

    def __init__(self, server: EmbeddedServer, pairs: list[_Pair]) -> None:
        self.server = server
        self.pairs = pairs
        self.rss_before = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def open(
        cls,
        start_server: ServerFactory,
        connect: ClientFactory,
        *,
        pairs: int = 50,
        **settings: object,
    ) -> Arena:
        """Start a server with settings and connect 2 * pairs bystanders to it."""
        server = await start_server(**settings)
        joined: list[_Pair] = []
        for index in range(pairs):
            sender_id, receiver_id = f"by{index}s", f"by{index}r"
            await add_contacts(server, sender_id, receiver_id)
            transport = "tcp" if index % 2 else "ws"
            sender = await connect(server, sender_id, transport=transport)
            receiver = await connect(server, receiver_id, transport=transport)
            joined.append(_Pair(sender, receiver, receiver_id))
        arena = cls(server, joined)
        gc.collect()
        arena.rss_before = rss_bytes()
        return arena

    @contextlib.asynccontextmanager
    async def chatting(self, interval: float = 0.25) -> AsyncIterator[None]:
        """Keep every pair sending one message per interval until the block ends."""

        async def chat(pair: _Pair) -> None:
            number = 0
            while not self._stop.is_set():
                started = now()
                ack = await pair.sender.send(pair.receiver_id, f"bystander {number}")
                pair.latencies.append(now() - started)
                pair.acked.append(ack.message_id)
                number += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), interval)

        self._stop.clear()
        self._tasks = [asyncio.create_task(chat(pair)) for pair in self.pairs]
        try:
            yield
        finally:
            self._stop.set()
            await asyncio.gather(*self._tasks)

    async def check(self) -> None:
        """Assert that bystanders lost nothing and waited little, and memory stayed bounded."""
        for pair in self.pairs:
            assert pair.acked, f"the partner of {pair.receiver_id} never got an ack"
            expected = set(pair.acked)
            received: list[int] = []
            deadline = now() + TIMEOUT
            while not expected <= set(received):
                event = await next_of(pair.receiver, ev.Message, max(deadline - now(), 0.01))
                assert isinstance(event, ev.Message)
                received.append(event.message_id)
            late = await drain(pair.receiver, 0.02)
            received += [event.message_id for event in late if isinstance(event, ev.Message)]
            assert len(received) == len(set(received)), f"{pair.receiver_id} got duplicates"
            assert set(received) == expected
            slowest = max(pair.latencies)
            assert slowest < MAX_BYSTANDER_LATENCY, f"a bystander waited {slowest:.3f} s for an ack"
        gc.collect()
        growth = rss_bytes() - self.rss_before
        assert growth < MAX_RSS_GROWTH_BYTES, f"memory grew by {growth / 2**20:.1f} MiB"


@pytest.fixture
async def arena(start_server: ServerFactory, connect: ClientFactory) -> Arena:
    return await Arena.open(start_server, connect)


# Raw TCP clients.


def raw_frame(frame: pb.Frame) -> bytes:
    return prefix_frame(frame.SerializeToString())


def raw_frame_bytes(payload: bytes) -> bytes:
    """Return an already serialized frame with its length prefix."""
    return encode_varint(len(payload)) + payload


async def logged_in(server: EmbeddedServer, user: str, device: str = "raw") -> RawClient:
    raw = await RawClient.open(server)
    raw.send_connect(user, device)
    await raw.receive_kind("connected")
    return raw


async def open_unread(server: EmbeddedServer) -> RawClient:
    """Open a TCP client with a 4 KiB receive buffer, for a client that never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.tcp_port))
    reader, writer = await asyncio.open_connection(sock=sock)
    return RawClient(reader, writer)


async def frames_until_quiet(raw: RawClient, quiet: float = QUIET) -> list[pb.Frame]:
    """Return the frames that arrive until none has for quiet seconds, failing on a close."""
    frames: list[pb.Frame] = []
    while True:
        try:
            frame = await raw.receive(quiet)
        except TimeoutError:
            return frames
        assert frame is not None, "the server closed the connection"
        frames.append(frame)


async def closed_within(reader: asyncio.StreamReader, timeout: float) -> bool:
    """Read and discard until EOF, and return False if the stream stays open for timeout."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


# Raw WebSocket clients.


def _masked(payload: bytes, key: bytes) -> bytes:
    size = len(payload)
    repeated = (key * (size // 4 + 1))[:size]
    value = int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")
    return value.to_bytes(size, "big")


def ws_header(opcode: int, size: int, *, fin: bool = True) -> bytes:
    """Return a client frame header (RFC 6455, section 5.2) with a zero masking key."""
    first = (0x80 if fin else 0) | opcode
    if size < 126:
        head = struct.pack("!BB", first, 0x80 | size)
    elif size < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, size)
    return head + bytes(4)


class RawWebSocket:
    """A bare WebSocket client that writes frames by hand, for input a real client refuses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(
        cls, server: EmbeddedServer, path: str = "/ws", protocols: str | None = "tether.v1"
    ) -> tuple[RawWebSocket, int]:
        """Send an upgrade request and return the client and the HTTP status of the response."""
        reader, writer = await asyncio.open_connection("127.0.0.1", server.ws_port)
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: 127.0.0.1:{server.ws_port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
            "Sec-WebSocket-Version: 13",
        ]
        if protocols is not None:
            lines.append(f"Sec-WebSocket-Protocol: {protocols}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        return cls(reader, writer), int(head.split(b" ", 2)[1])

    def send_frame(self, opcode: int, payload: bytes, *, fin: bool = True) -> None:
        """Write one frame masked with a random key, as clients must (RFC 6455, section 5.3)."""
        key = os.urandom(4)
        header = ws_header(opcode, len(payload), fin=fin)[:-4] + key
        self.writer.write(header + _masked(payload, key))

    def send_tether(self, frame: pb.Frame) -> None:
        self.send_frame(OP_BINARY, frame.SerializeToString())

    async def receive(self, timeout: float = TIMEOUT) -> tuple[int, bytes] | None:
        """Return the next (opcode, payload) from the server, or None once it closed."""
        try:
            async with asyncio.timeout(timeout):
                head = await self.reader.readexactly(2)
                size = head[1] & 0x7F
                if size == 126:
                    (size,) = struct.unpack("!H", await self.reader.readexactly(2))
                elif size == 127:
                    (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
                payload = await self.reader.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        return head[0] & 0x0F, payload

    async def close_codes(self, timeout: float = TIMEOUT) -> tuple[int | None, int | None]:
        """Read to the end and return the codes of the last Disconnect frame and the Close frame."""
        disconnect = close = None
        while True:
            received = await self.receive(timeout)
            if received is None:
                return disconnect, close
            opcode, payload = received
            if opcode == OP_BINARY:
                frame = pb.Frame.FromString(payload)
                if frame.WhichOneof("kind") == "disconnect":
                    disconnect = frame.disconnect.code
            elif opcode == OP_TEXT:  # a tether.v1.json connection
                frame = pb.Frame()
                json_format.Parse(payload, frame)
                if frame.WhichOneof("kind") == "disconnect":
                    disconnect = frame.disconnect.code
            elif opcode == OP_CLOSE and len(payload) >= 2:
                close = struct.unpack("!H", payload[:2])[0]

    def close(self) -> None:
        self.writer.close()


async def ws_logged_in(server: EmbeddedServer, user: str) -> RawWebSocket:
    ws, status = await RawWebSocket.open(server)
    assert status == 101
    connect = pb.Connect(protocol_version=1, token=issue_token(SECRET, user), device_id="raw")
    ws.send_tether(pb.Frame(connect=connect))
    while True:
        received = await ws.receive()
        assert received is not None, "closed before Connected"
        opcode, payload = received
        if opcode == OP_BINARY and pb.Frame.FromString(payload).HasField("connected"):
            return ws


# Frames over TCP.


@pytest.mark.parametrize("login", [False, True], ids=["before-login", "after-login"])
async def test_huge_prefix_then_silence(arena: Arena, login: bool) -> None:
    server = arena.server
    async with arena.chatting():
        raw = await logged_in(server, "mallory") if login else await RawClient.open(server)
        started = now()
        raw.send_raw(encode_varint(2**31))  # then nothing more
        assert await raw.disconnect_code() == Code.FRAME_TOO_LARGE
        # Rejected from the prefix alone, not by the connect or offline timeout.
        assert now() - started < server.config.gateway.connect_timeout
        raw.close()
    await arena.check()


async def test_fifty_megabyte_frame_rejected(arena: Arena) -> None:
    server = arena.server
    async with arena.chatting():
        raw = await logged_in(server, "mallory")
        raw.send_raw(encode_varint(50 * 2**20))
        chunk = bytes(2**20)
        with contextlib.suppress(ConnectionError):
            for _ in range(50):
                raw.writer.write(chunk)
                await raw.writer.drain()
        assert await raw.disconnect_code() == Code.FRAME_TOO_LARGE
        raw.close()
    await arena.check()


TRUNCATED_FRAMES = {
    "submessage-longer-than-frame": bytes([0x1A, 0x05, 0x08]),
    "varint-cut-short": bytes([0x1A, 0x02, 0x08, 0xFF]),
    "send-body-cut-short": pb.Frame(
        send=pb.Send(client_message_id="m", recipient="bob", body=b"x" * 40)
    ).SerializeToString()[:-10],
    "tag-without-value": bytes([0x1A]),
    "invalid-utf8-recipient": bytes([0x2A, 0x04, 0x12, 0x02, 0xC3, 0x28]),
}


@pytest.mark.parametrize("payload", TRUNCATED_FRAMES.values(), ids=TRUNCATED_FRAMES.keys())
async def test_truncated_protobuf_closes_sender(
    start_server: ServerFactory, connect: ClientFactory, payload: bytes
) -> None:
    server = await start_server()
    await add_contacts(server, "alice", "bob")
    bob = await connect(server, "bob")
    alice = await logged_in(server, "alice")
    assert (await presence_of(bob, "alice")).status == "online"

    alice.send_raw(prefix_frame(payload))
    assert await alice.disconnect_code() == Code.PROTOCOL_ERROR
    alice.close()
    assert (await presence_of(bob, "alice")).status == "offline"
    assert server.gateway.stats()["open"] == 1


async def test_repeated_entries_stay_cheap(arena: Arena, connect: ClientFactory) -> None:
    server = arena.server
    await add_contacts(server, "alice", "bob")
    bob = await connect(server, "bob")
    async with arena.chatting():
        # A Send whose body field repeats 20,000 times in one 60 KB frame. The last one wins.
        alice = await logged_in(server, "alice")
        head = pb.Send(client_message_id="rep-1", recipient="bob").SerializeToString()
        repeated = b"".join(b"\x1a\x01" + bytes([65 + n % 26]) for n in range(20_000))
        alice.send_raw(
            raw_frame_bytes(b"\x2a" + encode_varint(len(head + repeated)) + head + repeated)
        )
        ack = await alice.receive_kind("send_ack")
        assert ack.send_ack.client_message_id == "rep-1"
        message = await next_of(bob, ev.Message)
        assert isinstance(message, ev.Message)
        assert message.body == bytes([65 + 19_999 % 26])

        # A Deliver (a kind clients may not send) of 30,000 empty messages in 60 KB.
        deliver = b"\x0a\x00" * 30_000
        alice.send_raw(raw_frame_bytes(b"\x3a" + encode_varint(len(deliver)) + deliver))
        assert await alice.disconnect_code() == Code.PROTOCOL_ERROR
        alice.close()

        # A million entries (2 MB) exceed the frame limit before any of them is parsed.
        mallory = await logged_in(server, "mallory")
        million = b"\x0a\x00" * 1_000_000
        with contextlib.suppress(ConnectionError):
            mallory.send_raw(raw_frame_bytes(b"\x3a" + encode_varint(len(million)) + million))
            await mallory.writer.drain()
        assert await mallory.disconnect_code() == Code.FRAME_TOO_LARGE
        mallory.close()
    await arena.check()


async def test_unknown_field_not_forwarded(arena: Arena) -> None:
    server = arena.server
    await add_contacts(server, "alice", "bob")
    bob = await logged_in(server, "bob")
    alice = await logged_in(server, "alice")
    await frames_until_quiet(bob)
    async with arena.chatting():
        # Field 99 of Send, 60,000 bytes: within the 64 KiB frame, above the 32 KiB body limit.
        send = pb.Send(client_message_id="unk-1", recipient="bob", body=b"hi").SerializeToString()
        unknown = encode_varint(99 << 3 | 2) + encode_varint(60_000) + bytes(60_000)
        payload = send + unknown
        alice.send_raw(raw_frame_bytes(b"\x2a" + encode_varint(len(payload)) + payload))
        ack = await alice.receive_kind("send_ack")
        assert ack.send_ack.client_message_id == "unk-1"
        deliver = await bob.receive_kind("deliver")
        assert [m.body for m in deliver.deliver.messages] == [b"hi"]
        assert deliver.ByteSize() < 500, "the unknown field travelled to the recipient"
    await arena.check()


async def test_garbage_flood_spares_others(arena: Arena) -> None:
    """One client sends about 1,000 bad frames a second for 1.5 s, in two ways."""
    server = arena.server
    await add_contacts(server, "mallory", "victim")
    duration = 1.5

    async def malformed_reconnects() -> list[int | None]:
        # Each connection sends 20 malformed frames in one write and is closed at the first.
        codes: list[int | None] = []
        end = now() + duration
        while now() < end:
            raw = await RawClient.open(server)
            raw.send_raw(b"\x05\xff\xff\xff\xff\xff" * 20)
            codes.append(await raw.disconnect_code())
            raw.close()
            await asyncio.sleep(0.02)
        return codes

    async def invalid_requests() -> tuple[int, list[pb.Frame]]:
        # Well-formed frames that each fail, so the connection stays open and gets Error frames.
        raw = await logged_in(server, "mallory")
        await frames_until_quiet(raw, 0.1)
        bad_send = raw_frame(pb.Frame(send=pb.Send(client_message_id="", recipient="victim")))
        bad_ack = raw_frame(
            pb.Frame(deliver_ack=pb.DeliverAck(conversation_id="d:x:y", sequence=9))
        )
        sent = 0
        end = now() + duration
        while now() < end:
            raw.send_raw((bad_send + bad_ack) * 5)
            sent += 5
            await asyncio.sleep(0.01)
        frames = await frames_until_quiet(raw)
        raw.close()
        return sent, frames

    async with arena.chatting():
        codes, (sent, answers) = await asyncio.gather(malformed_reconnects(), invalid_requests())
    assert len(codes) > 20
    assert set(codes) == {Code.PROTOCOL_ERROR}
    errors = [frame.error.code for frame in answers if frame.HasField("error")]
    assert errors == [Code.BAD_REQUEST] * sent
    await arena.check()


async def test_trickled_connect_times_out(arena: Arena) -> None:
    server = arena.server
    timeout = server.config.gateway.connect_timeout
    connect = pb.Connect(protocol_version=1, token=issue_token(SECRET, "slowpoke"), device_id="d")
    data = raw_frame(pb.Frame(connect=connect))
    async with arena.chatting():
        raw = await RawClient.open(server)
        started = now()

        async def trickle() -> None:
            # One byte every 20 ms, so the whole frame would take several connect timeouts.
            with contextlib.suppress(ConnectionError):
                for byte in data:
                    raw.send_raw(bytes([byte]))
                    await asyncio.sleep(0.02)

        trickling = asyncio.create_task(trickle())
        assert await raw.disconnect_code() == Code.CONNECT_TIMEOUT
        elapsed = now() - started
        trickling.cancel()
        raw.close()
    assert timeout * 0.9 <= elapsed < timeout + 1.0
    await arena.check()


async def test_trickled_frame_after_connect(start_server: ServerFactory) -> None:
    server = await start_server(offline_timeout=1.0, heartbeat_interval=0.5)
    await add_contacts(server, "alice", "bob")
    raw = await logged_in(server, "alice")
    await frames_until_quiet(raw, 0.1)
    data = raw_frame(pb.Frame(send=pb.Send(client_message_id="t-1", recipient="bob", body=b"x")))
    data += raw_frame(pb.Frame(heartbeat=pb.Heartbeat(nonce=7)))
    # Every byte counts as liveness, so the slow frame outlasts the 1 s offline timeout.
    delay = 1.5 / len(data)
    for byte in data:
        raw.send_raw(bytes([byte]))
        await asyncio.sleep(delay)
    ack = await raw.receive_kind("send_ack")
    assert ack.send_ack.client_message_id == "t-1"
    answer = await raw.receive_kind("heartbeat_ack")
    assert answer.heartbeat_ack.nonce == 7
    raw.close()


async def test_half_close_before_login(arena: Arena) -> None:
    server = arena.server
    async with arena.chatting():
        reader, writer = await asyncio.open_connection("127.0.0.1", server.tcp_port)
        writer.write_eof()
        # The server closes its side at once, long before the connect timeout.
        assert await closed_within(reader, server.config.gateway.connect_timeout / 2)
        writer.close()
    await arena.check()


async def test_half_close_ends_session(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await start_server()
    await add_contacts(server, "alice", "bob")
    bob = await connect(server, "bob")
    alice = await logged_in(server, "alice")
    assert (await presence_of(bob, "alice")).status == "online"

    alice.writer.write_eof()
    assert await closed_within(alice.reader, TIMEOUT)
    assert (await presence_of(bob, "alice")).status == "offline"
    assert "alice" not in server.gateway.sessions


async def test_frame_queued_before_half_close_goes_out(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server()
    gateway = server.gateway
    assert gateway is not None
    alice = await logged_in(server, "alice")
    await frames_until_quiet(alice, 0.1)

    # A frame is queued, as a group message from the bus would be, and the client's end of
    # input arrives in the same pass of the event loop. The frame must go out before the
    # gateway's own half-close, not be written after it.
    connection = gateway.sessions["alice"]["raw"]
    connection.send_frame(pb.Frame(heartbeat_ack=pb.HeartbeatAck(nonce=9)))
    gateway.peer_finished(connection)
    answer = await alice.receive_kind("heartbeat_ack")
    assert answer.heartbeat_ack.nonce == 9
    assert await closed_within(alice.reader, TIMEOUT)
    alice.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_half_close_during_login(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await start_server()
    await add_contacts(server, "alice", "bob")
    bob = await connect(server, "bob")
    await next_of(bob, ev.PresenceSnapshot)

    raw = await RawClient.open(server)
    raw.send_connect("alice")
    raw.writer.write_eof()
    assert await closed_within(raw.reader, TIMEOUT)
    raw.close()
    assert not [e for e in await drain(bob, 1.0) if isinstance(e, ev.PresenceChanged)]


# WebSocket.


async def test_ws_text_message_rejected(arena: Arena) -> None:
    async with arena.chatting():
        ws = await ws_logged_in(arena.server, "mallory")
        ws.send_frame(OP_TEXT, b"hello")
        assert await ws.close_codes() == (Code.PROTOCOL_ERROR, Code.PROTOCOL_ERROR)
        ws.close()
    await arena.check()


async def test_ws_fragments_over_limit(arena: Arena) -> None:
    limit = arena.server.config.gateway.max_frame_bytes
    async with arena.chatting():
        # Four fragments, each under the limit, together over it.
        ws = await ws_logged_in(arena.server, "mallory")
        part = bytes(limit // 3)
        ws.send_frame(OP_BINARY, part, fin=False)
        for _ in range(3):
            ws.send_frame(OP_CONTINUATION, part, fin=False)
        assert await ws.close_codes() == (Code.FRAME_TOO_LARGE, Code.FRAME_TOO_LARGE)
        ws.close()

        # Empty fragments cost a call each, so their number is bounded too.
        ws = await ws_logged_in(arena.server, "mallory")
        ws.send_frame(OP_BINARY, b"", fin=False)
        for _ in range(5_000):
            ws.send_frame(OP_CONTINUATION, b"", fin=False)
        with contextlib.suppress(ConnectionError):
            await ws.writer.drain()
        assert await ws.close_codes() == (Code.PROTOCOL_ERROR, Code.PROTOCOL_ERROR)
        ws.close()

        # A continuation with no message started.
        ws = await ws_logged_in(arena.server, "mallory")
        ws.send_frame(OP_CONTINUATION, b"\x1a\x00")
        assert await ws.close_codes() == (Code.PROTOCOL_ERROR, Code.PROTOCOL_ERROR)
        ws.close()
    await arena.check()


async def test_ws_fifty_megabyte_frame(arena: Arena) -> None:
    async with arena.chatting():
        ws = await ws_logged_in(arena.server, "mallory")
        # The header announces 50 MB. picows rejects the frame from the header alone, with
        # close code 1009 and no Disconnect frame, so the body need not follow.
        ws.writer.write(ws_header(OP_BINARY, 50 * 2**20) + bytes(2**20))
        assert await ws.close_codes() == (None, 1009)
        ws.close()
    await arena.check()


async def test_ws_bad_upgrades_rejected(arena: Arena) -> None:
    server = arena.server
    async with arena.chatting():
        ws, status = await RawWebSocket.open(server, path="/elsewhere")
        assert status == 404
        ws.close()
        ws, status = await RawWebSocket.open(server, protocols="chat, superchat")
        assert status == 400
        ws.close()
        # No subprotocol offered is accepted.
        ws, status = await RawWebSocket.open(server, protocols=None)
        assert status == 101
        ws.close()

        for garbage in (b"HELLO\r\n\r\n", b"GET /ws HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00\xa5"):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.ws_port)
            writer.write(garbage + os.urandom(100))
            answer = b""
            with contextlib.suppress(ConnectionError):
                answer = await asyncio.wait_for(reader.read(200), TIMEOUT)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 400 "), answer
            assert await closed_within(reader, TIMEOUT)
            writer.close()

        # A header line of four megabytes is cut off long before it is all buffered.
        reader, writer = await asyncio.open_connection("127.0.0.1", server.ws_port)
        writer.write(b"GET /ws HTTP/1.1\r\nX-Padding: ")
        with contextlib.suppress(ConnectionError):
            for _ in range(64):
                writer.write(b"a" * 65536)
                await writer.drain()
        assert await closed_within(reader, TIMEOUT)
        writer.close()
    await arena.check()


async def test_ws_close_without_code(start_server: ServerFactory) -> None:
    server = await start_server()
    ws = await ws_logged_in(server, "alice")
    ws.send_frame(OP_CLOSE, b"")
    # RFC 6455, section 7.4.2, reserves codes below 1000, so the reply to a Close without a
    # body is a Close without a body or with 1000.
    disconnect, close = await ws.close_codes()
    assert disconnect is None
    assert close in (None, 1000)
    ws.close()


# Sockets that stay silent or never read.


async def test_idle_sockets_closed_in_time(arena: Arena) -> None:
    server = arena.server
    timeout = server.config.gateway.connect_timeout
    baseline = server.gateway.stats()["connections"]
    async with arena.chatting():
        started = now()
        tcp = [await RawClient.open(server) for _ in range(30)]
        bare = [await asyncio.open_connection("127.0.0.1", server.ws_port) for _ in range(30)]
        upgraded = [(await RawWebSocket.open(server))[0] for _ in range(10)]

        tcp_codes = await asyncio.gather(*(raw.disconnect_code() for raw in tcp))
        ws_codes = await asyncio.gather(*(ws.close_codes() for ws in upgraded))
        closed = await asyncio.gather(*(closed_within(reader, TIMEOUT) for reader, _ in bare))
        elapsed = now() - started
        for raw in tcp:
            raw.close()
        for ws in upgraded:
            ws.close()
        for _, writer in bare:
            writer.close()
    assert tcp_codes == [Code.CONNECT_TIMEOUT] * 30
    assert ws_codes == [(Code.CONNECT_TIMEOUT, Code.CONNECT_TIMEOUT)] * 10
    assert all(closed)
    assert timeout * 0.9 <= elapsed < timeout + 1.0
    await asyncio.sleep(0.1)
    assert server.gateway.stats()["connections"] == baseline
    await arena.check()


async def test_slow_reader_closed_others_not_delayed(
    start_server: ServerFactory, connect: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tether.gateway")
    limit = 64 * 1024
    arena = await Arena.open(start_server, connect, max_outgoing_bytes=limit)
    server = arena.server
    await add_contacts(server, "flooder", "slow")
    slow = await open_unread(server)
    slow.send_connect("slow", "phone")
    flooder = await connect(server, "flooder")
    await asyncio.sleep(QUIET)
    connection = server.gateway.sessions["slow"]["phone"]

    async with arena.chatting():
        # Bounded: 600 messages of 8 KB are about 5 MB, far more than the buffers hold.
        for _ in range(600):
            await flooder.send("slow", bytes(8000))
            if "slow" not in server.gateway.sessions:
                break
    assert "slow" not in server.gateway.sessions, "the slow reader was never closed"
    assert f"conn={connection.id} user=slow device=phone: code {Code.SLOW_CONSUMER}" in caplog.text
    # The bytes already in the socket come first, then the Disconnect frame.
    assert await slow.disconnect_code() == Code.SLOW_CONSUMER
    slow.close()
    assert (await presence_of(flooder, "slow")).status == "offline"
    await arena.check()


async def test_slow_device_starves_other_device(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await start_server(max_outgoing_bytes=64 * 1024)
    await add_contacts(server, "alice", "bob")
    phone = await open_unread(server)  # first in bob's device table, never reads
    phone.send_connect("bob", "phone")
    await asyncio.sleep(QUIET)
    laptop = await connect(server, "bob", device="laptop")
    alice = await connect(server, "alice")

    acked: list[int] = []
    for _ in range(600):
        acked.append((await alice.send("bob", bytes(8000))).message_id)
        if "phone" not in server.gateway.sessions["bob"]:
            break
    assert "phone" not in server.gateway.sessions["bob"], "the phone was never closed"
    received = [e.message_id for e in await drain(laptop) if isinstance(e, ev.Message)]
    assert sorted(received) == acked
    phone.close()


# Reconnects, devices and sessions.


async def test_rapid_reconnects_one_device(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await start_server(grace_period=0.5)
    await add_contacts(server, "alice", "bob")
    bob = await connect(server, "bob")
    await next_of(bob, ev.PresenceSnapshot)

    left_open: list[RawClient] = []
    for attempt in range(49):
        raw = await RawClient.open(server)
        raw.send_connect("alice", "phone")
        if attempt % 4 == 0:
            await raw.receive_kind("connected")
        if attempt % 2:
            raw.close()  # gone at once, perhaps before its Connected
        else:
            left_open.append(raw)
    await asyncio.sleep(0.1)
    last = await logged_in(server, "alice", "phone")

    # Every connection left open was replaced, and none was closed with another code.
    codes = await asyncio.gather(*(raw.disconnect_code() for raw in left_open))
    assert set(codes) == {Code.REPLACED}
    assert list(server.gateway.sessions) == ["bob", "alice"]
    assert list(server.gateway.sessions["alice"]) == ["phone"]
    assert server.gateway.stats()["open"] == 2
    assert server.presence.presence_of("alice").status == pb.STATUS_ONLINE

    # Bob saw alice come online and never go offline while a connection of hers was open.
    changes = [
        e.presence.status for e in await drain(bob, 1.0) if isinstance(e, ev.PresenceChanged)
    ]
    assert changes == ["online"]
    last.close()
    assert (await presence_of(bob, "alice")).status == "offline"
    for raw in left_open:
        raw.close()


async def test_two_devices_different_statuses(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await start_server()
    await add_contacts(server, "alice", "bob")
    bob = await connect(server, "bob")
    phone = await connect(server, "alice", device="phone", status="away")
    assert (await presence_of(bob, "alice")).status == "away"
    laptop = await connect(server, "alice", device="laptop", transport="ws", status="online")
    assert (await presence_of(bob, "alice")).status == "online"

    # The active device leaves: the idle one remains, so alice is away, not offline.
    await laptop.close()
    assert (await presence_of(bob, "alice")).status == "away"
    late = await connect(server, "bob", device="tablet")
    snapshot = await next_of(late, ev.PresenceSnapshot)
    assert isinstance(snapshot, ev.PresenceSnapshot)
    assert snapshot.contacts["alice"].status == "away"

    await phone.close()
    offline = await presence_of(bob, "alice")
    assert offline.status == "offline"
    assert offline.last_seen_ms <= int(time.time() * 1000)
    assert not [e for e in await drain(bob) if isinstance(e, ev.PresenceChanged)]


async def test_replaced_during_traffic_loses_nothing(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await start_server()
    await add_contacts(server, "alice", "bob")
    bob = await connect(server, "bob")
    old = await connect(server, "alice", device="phone")
    replaced = asyncio.Event()
    acked: list[int] = []

    async def bob_sends() -> None:
        for number in range(60):
            acked.append((await bob.send("alice", f"m{number}")).message_id)
            if number == 20:
                replaced.set()
            await asyncio.sleep(0.005)

    async def replace() -> Client:
        await replaced.wait()
        return await connect(server, "alice", device="phone")

    _, new = await asyncio.gather(bob_sends(), replace())
    before: list[int] = []
    while True:
        event = await old.next_event(TIMEOUT)
        if isinstance(event, ev.Disconnected):
            assert event.code == Code.REPLACED
            assert event.reconnecting is False
            break
        if isinstance(event, ev.Message):
            before.append(event.message_id)
    after = [e.message_id for e in await drain(new) if isinstance(e, ev.Message)]
    # The new connection catches up from the device's last acknowledged position, so it gets
    # everything the old one did not acknowledge, in order, each message once.
    assert after == sorted(after)
    assert len(set(after)) == len(after)
    assert len(set(before)) == len(before)
    assert set(before) | set(after) == set(acked)
    assert before
    assert after
    assert after[-1] == acked[-1]
    session = next(iter(server.gateway.sessions["alice"].values()))
    assert new.session is not None
    assert session.id == new.session.session_id


# Requests with bad fields.

BAD_SENDS = [
    # (client_message_id, recipient, body size, expected code or 0 for an ack)
    ("", "bob", 1, Code.BAD_REQUEST),
    ("i" * 65, "bob", 1, Code.BAD_REQUEST),
    ("é" * 33, "bob", 1, Code.BAD_REQUEST),  # 66 bytes in UTF-8
    ("to-empty", "", 1, Code.BAD_REQUEST),
    ("to-long", "b" * 65, 1, Code.BAD_REQUEST),
    ("to-self", "alice", 1, Code.NOT_A_CONTACT),
    ("to-unknown", "nobody", 1, Code.NOT_A_CONTACT),
    ("to-colon", "bob:alice", 1, Code.NOT_A_CONTACT),
    ("to-newline", "bob\n", 1, Code.NOT_A_CONTACT),
    ("too-big", "bob", 32_769, Code.BODY_TOO_LARGE),
    ("i" * 64, "bob", 32_768, 0),
    ("empty-body", "bob", 0, 0),
]


async def test_bad_sends_get_errors(arena: Arena) -> None:
    server = arena.server
    await add_contacts(server, "alice", "bob")
    bob = await logged_in(server, "bob")
    await frames_until_quiet(bob, 0.1)
    alice = await logged_in(server, "alice")
    await frames_until_quiet(alice, 0.1)
    async with arena.chatting():
        for message_id, recipient, size, code in BAD_SENDS:
            send = pb.Send(client_message_id=message_id, recipient=recipient, body=bytes(size))
            alice.send(pb.Frame(send=send))
            answer = await alice.receive()
            assert answer is not None
            if code:
                assert answer.WhichOneof("kind") == "error", (message_id, recipient)
                assert (answer.error.code, answer.error.ref) == (code, message_id)
            else:
                assert answer.WhichOneof("kind") == "send_ack", (message_id, answer)
    delivered = [f for f in await frames_until_quiet(bob) if f.HasField("deliver")]
    ids = [m.client_message_id for f in delivered for m in f.deliver.messages]
    assert ids == ["i" * 64, "empty-body"]
    alice.close()
    bob.close()
    await arena.check()


async def test_status_out_of_enum_range(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await start_server()
    await add_contacts(server, "alice", "bob")
    bob = await connect(server, "bob")
    alice = await logged_in(server, "alice")
    assert (await presence_of(bob, "alice")).status == "online"
    alice.send(pb.Frame(set_status=pb.SetStatus(activity=pb.ACTIVITY_IDLE)))
    assert (await presence_of(bob, "alice")).status == "away"
    await frames_until_quiet(alice, 0.1)

    for nonce, status in enumerate([pb.SetStatus(activity=99), pb.SetStatus(mode=99)]):  # type: ignore[arg-type]
        # The server handles frames in order, so an Error must arrive before the HeartbeatAck.
        alice.send(pb.Frame(set_status=status))
        alice.send(pb.Frame(heartbeat=pb.Heartbeat(nonce=nonce)))
        answers: list[pb.Frame] = []
        while not answers or not answers[-1].HasField("heartbeat_ack"):
            answer = await alice.receive()
            assert answer is not None
            answers.append(answer)
        errors = [frame.error.code for frame in answers if frame.HasField("error")]
        assert errors == [Code.BAD_REQUEST], status
    # Bob gets no change: alice keeps the last valid status.
    assert not [e for e in await drain(bob) if isinstance(e, ev.PresenceChanged)]


with warnings.catch_warnings():
    warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
    HS512_TOKEN = jwt.encode({"sub": "alice"}, SECRET, algorithm="HS512")

HOSTILE_TOKENS = {
    "alg-none": jwt.encode({"sub": "alice"}, None, algorithm="none"),
    "hs512": HS512_TOKEN,
    "sub-with-colon": jwt.encode({"sub": "alice:bob"}, SECRET, algorithm="HS256"),
    "sub-not-string": jwt.encode({"sub": 42}, SECRET, algorithm="HS256"),
    "no-sub": jwt.encode({"name": "alice"}, SECRET, algorithm="HS256"),
    "empty": "",
    "huge": "x" * 60_000,
}


async def test_hostile_tokens_rejected(arena: Arena) -> None:
    async with arena.chatting():
        for name, token in HOSTILE_TOKENS.items():
            raw = await RawClient.open(arena.server)
            raw.send_connect("alice", token=token)
            assert await raw.disconnect_code() == Code.UNAUTHORIZED, name
            raw.close()
    assert "alice" not in arena.server.gateway.sessions
    await arena.check()


async def test_unread_heartbeat_acks_close_sender(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tether")
    server = await start_server(max_outgoing_bytes=64 * 1024)
    raw = await open_unread(server)
    raw.send_connect("greedy", "phone")
    await asyncio.sleep(QUIET)
    connection = server.gateway.sessions["greedy"]["phone"]
    limit = server.config.gateway.max_outgoing_bytes
    heartbeat = raw_frame(pb.Frame(heartbeat=pb.Heartbeat(nonce=1)))
    # Each 3-byte heartbeat draws a HeartbeatAck of about 17 bytes that the client never reads.
    # Batches of 3,000 fill the kernel buffers without overflowing one flush. Then smaller
    # batches, down to single heartbeats, fill the transport buffer up to the limit.
    try:
        for _ in range(2_000):
            if "greedy" not in server.gateway.sessions or "RecursionError" in caplog.text:
                break
            buffered = connection.write_buffer_size()
            free = limit - buffered - connection.outbox_bytes
            count = 3_000 if not buffered else max(1, (free - 1_000) // 20)
            raw.send_raw(heartbeat * count)
            await raw.writer.drain()
            await asyncio.sleep(0.002)
        assert "RecursionError" not in caplog.text
        assert "greedy" not in server.gateway.sessions, "the client that never reads stays open"
        assert f"code {Code.SLOW_CONSUMER}" in caplog.text
    finally:
        # Unread data makes this close a reset, which ends the server's side at once.
        raw.writer.transport.abort()
        await asyncio.sleep(QUIET)


# Limits on rates and counts.


async def test_frame_flood_rate_limited(start_server: ServerFactory) -> None:
    limits = LimitsConfig(frames_per_second=20, frame_burst=40)
    server = await start_server(limits=limits)
    flooder = await RawClient.open(server)
    flooder.send_connect("flooder")
    await flooder.receive_kind("connected")
    heartbeat = prefix_frame(pb.Frame(heartbeat=pb.Heartbeat(nonce=1)).SerializeToString())
    flooder.send_raw(heartbeat * 100)
    frame = await flooder.receive_kind("disconnect")
    assert frame.disconnect.code == Code.RATE_LIMITED
    assert 0 < frame.disconnect.reconnect_delay_ms <= limits.retry_window * 1000
    flooder.close()


async def test_steady_client_not_rate_limited(start_server: ServerFactory) -> None:
    server = await start_server(limits=LimitsConfig(frames_per_second=20, frame_burst=40))
    steady = await RawClient.open(server)
    steady.send_connect("steady")
    await steady.receive_kind("connected")
    for nonce in range(60):  # 3 s at 20 frames per second
        steady.send(pb.Frame(heartbeat=pb.Heartbeat(nonce=nonce)))
        assert (await steady.receive_kind("heartbeat_ack")).heartbeat_ack.nonce == nonce
        await asyncio.sleep(0.05)
    steady.close()


async def test_connections_per_address_capped(start_server: ServerFactory) -> None:
    server = await start_server(limits=LimitsConfig(max_connections_per_ip=3))
    held = [await RawClient.open(server) for _ in range(3)]
    extra = await RawClient.open(server)
    frame = await extra.receive_kind("disconnect")
    assert frame.disconnect.code == Code.OVERLOADED
    assert frame.disconnect.reconnect_delay_ms > 0
    extra.close()
    held[0].close()
    await asyncio.sleep(0.2)  # the freed slot is released when the transport closes
    again = await RawClient.open(server)
    again.send_connect("again")
    assert (await again.receive_kind("connected")).connected.user_id == "again"
    for raw in [*held[1:], again]:
        raw.close()


async def test_connect_storm_told_to_retry(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tether.gateway")
    limits = LimitsConfig(new_connections_per_second=5, new_connection_burst=5, retry_window=4)
    server = await start_server(limits=limits)
    clients = [await RawClient.open(server) for _ in range(15)]
    delays = []
    for raw in clients[5:]:
        frame = await raw.receive_kind("disconnect")
        assert frame.disconnect.code == Code.OVERLOADED
        delays.append(frame.disconnect.reconnect_delay_ms)
    assert all(0 < delay <= 4000 for delay in delays)
    assert len(set(delays)) > 1  # spread, so the storm does not come back at once
    await asyncio.sleep(0.2)  # a sweep or two
    summaries = [r.message for r in caplog.records if "limits closed connections" in r.message]
    assert summaries == [
        "limits closed connections since the last sweep: 10 too many new connections"
    ]
    for raw in clients:
        raw.close()


async def test_devices_per_user_capped(start_server: ServerFactory) -> None:
    server = await start_server(limits=LimitsConfig(max_devices_per_user=2))
    devices = []
    for name in ("phone", "laptop"):
        raw = await RawClient.open(server)
        raw.send_connect("alice", device=name)
        await raw.receive_kind("connected")
        devices.append(raw)
    third = await RawClient.open(server)
    third.send_connect("alice", device="tablet")
    assert await third.disconnect_code() == Code.TOO_MANY_DEVICES
    # The same device reconnecting replaces its old connection instead of counting twice.
    again = await RawClient.open(server)
    again.send_connect("alice", device="phone")
    await again.receive_kind("connected")
    for raw in [*devices, third, again]:
        raw.close()
