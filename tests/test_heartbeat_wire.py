"""Heartbeats over real sockets: the HeartbeatAck's bytes and the limits, on both transports.

A heartbeat alone in a read takes the gateway's fast path, which builds the HeartbeatAck from
the heartbeat's bytes. These tests send each heartbeat alone and wait for its HeartbeatAck,
so every one of them takes that path unless its encoding sends it through Protobuf.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
from conftest import TIMEOUT, RawClient, ServerFactory
from test_hostile import OP_BINARY, ws_logged_in

from tether.gateway.limits import LimitsConfig
from tether.protocol import tether_pb2 as pb
from tether.protocol.codes import Code
from tether.protocol.framing import prefix_frame
from tether.server import EmbeddedServer

# The same heartbeat, nonce 300, as Protobuf writes it and with its varint padded to three
# bytes (valid Protobuf that the fast path leaves to the parser). Both get the same bytes back.
HEARTBEATS = {
    "canonical": pb.Frame(heartbeat=pb.Heartbeat(nonce=300)).SerializeToString(),
    "padded": b"\x1a\x04\x08\xac\x82\x00",
}
LIMITS = LimitsConfig(frames_per_second=20, frame_burst=40)


def now_ms() -> int:
    return int(time.time() * 1000)


def expected_ack(payload: bytes) -> bytes:
    """Return what Protobuf writes for the HeartbeatAck frame that payload decodes to."""
    frame = pb.Frame.FromString(payload)
    assert frame.WhichOneof("kind") == "heartbeat_ack"
    return frame.SerializeToString()


@pytest.mark.parametrize("encoding", HEARTBEATS, ids=HEARTBEATS.keys())
async def test_ack_bytes_over_tcp(start_server: ServerFactory, encoding: str) -> None:
    server = await start_server()
    raw = await RawClient.open(server)
    raw.send_connect("alice")
    await raw.receive_kind("presence_snapshot")  # the last frame of a login
    assert not raw.frames
    assert not raw.decoder.pending

    before = now_ms()
    raw.send_raw(prefix_frame(HEARTBEATS[encoding]))
    data = await asyncio.wait_for(raw.reader.read(65536), TIMEOUT)
    after = now_ms()

    payload = data[1:]
    assert data[0] == len(payload)
    assert payload == expected_ack(payload)
    ack = pb.Frame.FromString(payload).heartbeat_ack
    assert ack.nonce == 300
    assert before <= ack.server_time_ms <= after
    raw.close()


@pytest.mark.parametrize("encoding", HEARTBEATS, ids=HEARTBEATS.keys())
async def test_ack_bytes_over_websocket(start_server: ServerFactory, encoding: str) -> None:
    server = await start_server()
    ws = await ws_logged_in(server, "alice")

    before = now_ms()
    ws.send_frame(OP_BINARY, HEARTBEATS[encoding])
    while True:
        received = await ws.receive()
        assert received is not None, "closed before the HeartbeatAck"
        opcode, payload = received
        if pb.Frame.FromString(payload).HasField("heartbeat_ack"):
            break
    after = now_ms()

    assert opcode == OP_BINARY
    assert payload == expected_ack(payload)
    ack = pb.Frame.FromString(payload).heartbeat_ack
    assert ack.nonce == 300
    assert before <= ack.server_time_ms <= after
    ws.close()


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_one_heartbeat_reads_rate_limited(
    start_server: ServerFactory, transport: str
) -> None:
    server = await start_server(limits=LIMITS)
    client = await logged_in(server, transport, "flooder")
    started = asyncio.get_running_loop().time()

    acks = 0
    code = None
    for nonce in range(1, 201):
        client.send(pb.Frame(heartbeat=pb.Heartbeat(nonce=nonce)))
        frame = await client.receive()
        assert frame is not None, "closed without a Disconnect"
        if frame.HasField("disconnect"):
            code = frame.disconnect.code
            break
        assert frame.heartbeat_ack.nonce == nonce
        acks += 1
    elapsed = asyncio.get_running_loop().time() - started

    assert code == Code.RATE_LIMITED
    assert acks <= LIMITS.frame_burst + LIMITS.frames_per_second * elapsed
    client.close()


@dataclass
class FrameClient:
    """Frames in and out of a raw TCP or WebSocket client."""

    send: Callable[[pb.Frame], None]
    receive: Callable[[], Awaitable[pb.Frame | None]]
    close: Callable[[], None]


async def logged_in(server: EmbeddedServer, transport: str, user: str) -> FrameClient:
    """Log user in over transport and read the frames of the login up to the snapshot."""
    if transport == "tcp":
        raw = await RawClient.open(server)
        raw.send_connect(user)
        client = FrameClient(raw.send, raw.receive, raw.close)
    else:
        ws = await ws_logged_in(server, user)

        async def receive() -> pb.Frame | None:
            received = await ws.receive()
            return None if received is None else pb.Frame.FromString(received[1])

        client = FrameClient(ws.send_tether, receive, ws.close)
    while True:
        frame = await client.receive()
        assert frame is not None, "closed before the presence snapshot"
        if frame.HasField("presence_snapshot"):
            return client
