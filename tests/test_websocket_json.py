"""The `tether.v1.json` WebSocket subprotocol: frames as canonical JSON text messages.

The sans-I/O part (`JsonServerProtocol`) is tested with bytes. The gateway is tested with real
sockets: a JSON client chats with a binary one, the subprotocol is negotiated, and hostile JSON
is sent inside an `Arena` of well-behaved clients, which must lose nothing.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from conftest import SECRET, TIMEOUT, ClientFactory, ServerFactory, add_contacts, next_of
from test_hostile import (
    OP_BINARY,
    OP_CONTINUATION,
    OP_TEXT,
    Arena,
    RawWebSocket,
    ws_header,
)
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from tether.auth import issue_token
from tether.client import events as ev
from tether.protocol import tether_pb2 as pb
from tether.protocol.codes import Code
from tether.protocol.json_frames import (
    JSON_SUBPROTOCOL,
    JsonServerProtocol,
    frame_from_json,
    frame_to_json,
)
from tether.protocol.states import ConnectionState
from tether.server import EmbeddedServer

MAX_FRAME = 65_536

# Input that is not a valid JSON tether frame, each closed with PROTOCOL_ERROR.
HOSTILE = {
    "bad-json": b'{"heartbeat": {',
    "not-an-object": b'[{"heartbeat": {}}]',
    "a-string": b'"heartbeat"',
    "null": b"null",
    "wrong-type": b'{"heartbeat": {"nonce": "many"}}',
    "object-for-number": b'{"heartbeat": {"nonce": {"a": 1}}}',
    "huge-number": b'{"heartbeat": {"nonce": 18446744073709551616}}',
    "thousand-digits": b'{"heartbeat": {"nonce": ' + b"9" * 1000 + b"}}",
    "ten-thousand-digits": b'{"heartbeat": {"nonce": ' + b"9" * 10_000 + b"}}",
    "negative-unsigned": b'{"heartbeat": {"nonce": -1}}',
    "float-for-integer": b'{"heartbeat": {"nonce": 1.5}}',
    "infinity": b'{"heartbeat": {"nonce": 1e999}}',
    "nan": b'{"heartbeat": {"nonce": NaN}}',
    "deep-arrays": b"[" * 30_000 + b"]" * 30_000,
    "deep-objects": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    "deep-in-a-field": b'{"heartbeat": {"nonce": ' + b"[" * 20_000 + b"]" * 20_000 + b"}}",
    "unknown-field": b'{"heartbeat": {"nonce": 1, "colour": "red"}}',
    "unknown-kind": b'{"teleport": {}}',
    "two-kinds": b'{"heartbeat": {}, "send": {}}',
    "duplicate-key": b'{"heartbeat": {}, "heartbeat": {}}',
    "no-kind": b"{}",
    "null-kind": b'{"heartbeat": null}',
    "unknown-enum-name": b'{"setStatus": {"activity": "ACTIVITY_ASLEEP"}}',
    "invalid-utf8": b'{"heartbeat": {"nonce": 1}}\xff',
    "lone-surrogate": b'{"send": {"recipient": "\\ud800"}}',
}


@pytest.fixture
async def arena(start_server: ServerFactory, connect: ClientFactory) -> Arena:
    return await Arena.open(start_server, connect)


def logged_in_protocol() -> JsonServerProtocol:
    protocol = JsonServerProtocol(max_frame_bytes=MAX_FRAME)
    protocol.move_to(ConnectionState.AUTHENTICATING)
    protocol.move_to(ConnectionState.OPEN)
    return protocol


# Without sockets.


def test_json_frame_round_trip_uses_canonical_names() -> None:
    frame = pb.Frame(
        deliver=pb.Deliver(
            messages=[pb.Message(message_id=2**63, sequence=3, body=b"\x00\xffhi", sender="bob")]
        )
    )
    text = frame_to_json(frame)
    assert json.loads(text) == {
        "deliver": {
            "messages": [
                {
                    "messageId": "9223372036854775808",
                    "sequence": "3",
                    "sender": "bob",
                    "body": "AP9oaQ==",
                }
            ]
        }
    }
    assert frame_from_json(text) == frame


def test_both_field_name_styles_and_numbers_as_strings_are_accepted() -> None:
    protocol = logged_in_protocol()
    frames = protocol.receive_message(b'{"set_status": {"activity": "ACTIVITY_IDLE", "mode": 2}}')
    assert frames == [
        pb.Frame(set_status=pb.SetStatus(activity=pb.ACTIVITY_IDLE, mode=pb.MODE_BUSY))
    ]
    frames = protocol.receive_message(b'{"sync": {"requestId": "r", "afterSequence": "12"}}')
    assert frames[0].sync.after_sequence == 12
    assert protocol.violation is None


@pytest.mark.parametrize("data", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_json_is_a_protocol_violation(data: bytes) -> None:
    protocol = logged_in_protocol()
    assert protocol.receive_message(data) == []
    assert protocol.violation is not None
    assert protocol.violation.code == Code.PROTOCOL_ERROR
    assert len(str(protocol.violation)) < 300  # the reason quotes little of the input
    assert protocol.state is ConnectionState.CLOSING
    assert protocol.receive_message(b'{"heartbeat": {}}') == []  # later input is ignored


def test_json_over_the_frame_limit_is_too_large() -> None:
    protocol = logged_in_protocol()
    padding = " " * MAX_FRAME
    assert protocol.receive_message(f'{{"heartbeat": {{}}}}{padding}'.encode()) == []
    assert protocol.violation is not None
    assert protocol.violation.code == Code.FRAME_TOO_LARGE


def test_kinds_are_checked_against_the_state_as_for_binary() -> None:
    protocol = JsonServerProtocol(max_frame_bytes=MAX_FRAME)
    assert protocol.receive_message(b'{"send": {"recipient": "bob"}}') == []
    assert protocol.violation is not None
    assert "not allowed in state awaiting_connect" in str(protocol.violation)


def test_a_delivery_for_many_devices_is_converted_once() -> None:
    protocol = logged_in_protocol()
    other = logged_in_protocol()
    payload = pb.Frame(heartbeat_ack=pb.HeartbeatAck(nonce=1)).SerializeToString()
    first = protocol.frame_bytes(payload)
    assert other.frame_bytes(payload) is first
    assert json.loads(first) == {"heartbeatAck": {"nonce": "1"}}
    assert other.frame_bytes(bytes(payload)) == first  # an equal payload, converted again


# Over real sockets.


async def json_socket(server: EmbeddedServer, protocols: list[str]) -> ClientConnection:
    url = f"ws://127.0.0.1:{server.ws_port}{server.config.gateway.ws_path}"
    return await ws_connect(url, subprotocols=protocols, open_timeout=TIMEOUT)  # type: ignore[arg-type]


async def receive_json(socket_: ClientConnection, kind: str) -> Any:
    """Return the body of the next text frame of a kind, skipping others."""
    while True:
        message = await asyncio.wait_for(socket_.recv(), TIMEOUT)
        assert isinstance(message, str), f"expected a text message, got {message!r}"
        frame = json.loads(message)
        if kind in frame:
            return frame[kind]


async def test_json_client_chats_with_a_binary_client(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await start_server()
    await add_contacts(server, "alice", "bob")
    bob = await connect(server, "bob")
    alice = await json_socket(server, [JSON_SUBPROTOCOL])
    assert alice.subprotocol == JSON_SUBPROTOCOL
    token = issue_token(SECRET, "alice")
    await alice.send(
        json.dumps({"connect": {"protocolVersion": 1, "token": token, "deviceId": "web"}})
    )
    connected = await receive_json(alice, "connected")
    assert connected["userId"] == "alice"
    assert connected["heartbeatIntervalMs"] == 500  # uint32 stays a JSON number
    assert isinstance(connected["serverTimeMs"], str)  # int64 is a string
    snapshot = await receive_json(alice, "presenceSnapshot")
    assert snapshot["contacts"][0]["userId"] == "bob"
    assert snapshot["contacts"][0]["status"] == "STATUS_ONLINE"

    await alice.send('{"heartbeat": {"nonce": "18446744073709551615"}}')
    heartbeat_ack = await receive_json(alice, "heartbeatAck")
    assert heartbeat_ack["nonce"] == "18446744073709551615"
    assert heartbeat_ack["serverTimeMs"].isdigit()

    await alice.send(
        json.dumps({"send": {"clientMessageId": "m1", "recipient": "bob", "body": "aGkgYm9i"}})
    )
    ack = await receive_json(alice, "sendAck")
    assert ack["conversationId"] == "d:alice:bob"
    message = await next_of(bob, ev.Message)
    assert isinstance(message, ev.Message)
    assert message.body == b"hi bob"
    assert str(message.message_id) == ack["messageId"]

    await bob.send("alice", b"\x00\x01 hello")
    deliver = await receive_json(alice, "deliver")
    assert deliver["messages"][0]["body"] == "AAEgaGVsbG8="
    assert deliver["messages"][0]["sender"] == "bob"
    await alice.send('{"setStatus": {"activity": "ACTIVITY_IDLE"}}')
    changed = await next_of(bob, ev.PresenceChanged)
    assert isinstance(changed, ev.PresenceChanged)
    assert changed.presence.status == "away"
    await alice.close()


async def test_group_messages_reach_a_json_client_as_text(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    """Group pushes, one at a time and merged by pacing, are JSON text like every frame."""
    server = await start_server()
    alice = await connect(server, "alice")
    await alice.create_group("team", ["bob"])
    bob = await json_socket(server, [JSON_SUBPROTOCOL])
    token = issue_token(SECRET, "bob")
    await bob.send(json.dumps({"connect": {"protocolVersion": 1, "token": token, "deviceId": "w"}}))
    await receive_json(bob, "connected")
    # More than the push burst, so that some go out alone and the rest merged by pacing.
    count = server.config.gateway.groups.push_burst + 10
    for index in range(count):
        await alice.send_to_group("team", f"m{index}")
    texts: list[str] = []
    while len(texts) < count:
        deliver = await receive_json(bob, "deliver")  # fails on a binary message
        for message in deliver["messages"]:
            assert message["recipient"] == "g:team"
            texts.append(base64.b64decode(message["body"]).decode())
    assert texts == [f"m{index}" for index in range(count)]
    await bob.close()


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        ("tether.v1.json", "tether.v1.json"),
        ("tether.v1.json, tether.v1", "tether.v1.json"),
        ("tether.v1, tether.v1.json", "tether.v1"),
        ("chat, tether.v1.json", "tether.v1.json"),
    ],
)
async def test_the_first_offered_subprotocol_the_server_speaks_is_chosen(
    start_server: ServerFactory, offered: str, expected: str
) -> None:
    server = await start_server()
    ws, status = await RawWebSocket.open(server, protocols=offered)
    ws.close()
    assert status == 101
    socket_ = await json_socket(server, [name.strip() for name in offered.split(",")])
    assert socket_.subprotocol == expected
    await socket_.close()


async def json_logged_in(server: EmbeddedServer, user: str) -> RawWebSocket:
    ws, status = await RawWebSocket.open(server, protocols=JSON_SUBPROTOCOL)
    assert status == 101
    token = issue_token(SECRET, user)
    connect = {"connect": {"protocolVersion": 1, "token": token, "deviceId": "raw-json"}}
    ws.send_frame(OP_TEXT, json.dumps(connect).encode())
    while True:
        received = await ws.receive()
        assert received is not None, "closed before Connected"
        opcode, payload = received
        assert opcode == OP_TEXT
        if "connected" in json.loads(payload):
            return ws


@pytest.mark.parametrize("login", [False, True], ids=["before-login", "after-login"])
async def test_hostile_json_costs_only_its_sender(arena: Arena, login: bool) -> None:
    server = arena.server
    limit = server.config.gateway.max_frame_bytes
    async with arena.chatting():
        for name, data in HOSTILE.items():
            if login:
                ws = await json_logged_in(server, "mallory")
            else:
                ws, _status = await RawWebSocket.open(server, protocols=JSON_SUBPROTOCOL)
            ws.send_frame(OP_TEXT, data)
            codes = await ws.close_codes()
            assert codes == (Code.PROTOCOL_ERROR, Code.PROTOCOL_ERROR), name
            ws.close()

        # A binary message on a JSON connection.
        ws = await json_logged_in(server, "mallory")
        ws.send_frame(OP_BINARY, pb.Frame(heartbeat=pb.Heartbeat()).SerializeToString())
        assert await ws.close_codes() == (Code.PROTOCOL_ERROR, Code.PROTOCOL_ERROR)
        ws.close()

        # Text fragments, each under the limit, together over it.
        ws = await json_logged_in(server, "mallory")
        part = b" " * (limit // 3)
        ws.send_frame(OP_TEXT, b'{"heartbeat": {}}' + part, fin=False)
        for _ in range(3):
            ws.send_frame(OP_CONTINUATION, part, fin=False)
        assert await ws.close_codes() == (Code.FRAME_TOO_LARGE, Code.FRAME_TOO_LARGE)
        ws.close()

        # One text frame over the limit: picows refuses it from its header (close code 1009).
        ws = await json_logged_in(server, "mallory")
        ws.writer.write(ws_header(OP_TEXT, limit + 1) + bytes(limit + 1))
        assert await ws.close_codes() == (None, 1009)
        ws.close()
    await arena.check()


async def test_fragmented_json_message_is_reassembled(start_server: ServerFactory) -> None:
    server = await start_server()
    ws = await json_logged_in(server, "alice")
    text = b'{"heartbeat": {"nonce": "42"}}'
    ws.send_frame(OP_TEXT, text[:10], fin=False)
    ws.send_frame(OP_CONTINUATION, text[10:20], fin=False)
    ws.send_frame(OP_CONTINUATION, text[20:])
    while True:
        received = await ws.receive()
        assert received is not None, "closed before the HeartbeatAck"
        opcode, payload = received
        assert opcode == OP_TEXT
        frame = json.loads(payload)
        if "heartbeatAck" in frame:
            break
    assert frame["heartbeatAck"]["nonce"] == "42"
    ws.close()
