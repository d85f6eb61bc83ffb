"""Tests of the heartbeat fast path of the protocol core, against Protobuf's own encoding."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.protocol import pb
from tether.protocol.codes import Code
from tether.protocol.connection import ServerProtocol
from tether.protocol.framing import prefix_frame
from tether.protocol.heartbeats import encode_heartbeat_ack
from tether.protocol.states import ConnectionState

NOW_MS = 1_790_000_000_123
NONCES = [0, 1, 127, 128, 300, 16_383, 16_384, 2**31, 2**62, 2**63 - 1]
TIMES = [0, 1, 127, 128, 16_384, NOW_MS, 2**42, 2**63 - 1, -1, -(2**63)]
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None)

# Heartbeats that Protobuf decodes (or rejects) but that the fast path leaves to it.
NOT_MATCHED = {
    "nonce of 2**63": pb.Frame(heartbeat=pb.Heartbeat(nonce=2**63)).SerializeToString(),
    "nonce of 2**64 - 1": pb.Frame(heartbeat=pb.Heartbeat(nonce=2**64 - 1)).SerializeToString(),
    "padded nonce": b"\x1a\x03\x08\x81\x00",
    "padded zero nonce": b"\x1a\x02\x08\x00",
    "nonce key without value": b"\x1a\x01\x08",
    "unterminated nonce": b"\x1a\x02\x08\x81",
    "byte after the nonce": b"\x1a\x03\x08\x01\x01",
    "unknown Heartbeat field": b"\x1a\x02\x10\x01",
    "unknown field after the nonce": b"\x1a\x04\x08\x01\x10\x01",
    "unknown Frame field after": b"\x1a\x02\x08\x01\x98\x06\x01",
    "two heartbeats in one Frame": b"\x1a\x02\x08\x01\x1a\x02\x08\x02",
    "length past the end": b"\x1a\x05\x08\x01",
    "length short of the end": b"\x1a\x01\x08\x01",
    "heartbeat_ack": pb.Frame(heartbeat_ack=pb.HeartbeatAck(nonce=1)).SerializeToString(),
    "send": pb.Frame(send=pb.Send(client_message_id="m", recipient="bob")).SerializeToString(),
    "empty": b"",
}


def heartbeat(nonce: int) -> bytes:
    return pb.Frame(heartbeat=pb.Heartbeat(nonce=nonce)).SerializeToString()


def ack(nonce: int, server_time_ms: int) -> bytes:
    answer = pb.HeartbeatAck(nonce=nonce, server_time_ms=server_time_ms)
    return pb.Frame(heartbeat_ack=answer).SerializeToString()


def open_protocol(*, stream: bool, max_frame_bytes: int = 4096) -> ServerProtocol:
    protocol = ServerProtocol(max_frame_bytes=max_frame_bytes, stream=stream)
    protocol.move_to(ConnectionState.AUTHENTICATING)
    protocol.move_to(ConnectionState.OPEN)
    return protocol


# encode_heartbeat_ack


@pytest.mark.parametrize("nonce", NONCES)
@pytest.mark.parametrize("server_time_ms", TIMES)
def test_ack_as_protobuf_encodes(nonce: int, server_time_ms: int) -> None:
    expected = ack(nonce, server_time_ms)

    assert encode_heartbeat_ack(heartbeat(nonce), server_time_ms, False) == expected
    assert encode_heartbeat_ack(prefix_frame(heartbeat(nonce)), server_time_ms, True) == (
        prefix_frame(expected)
    )


@PROPERTY_SETTINGS
@given(
    st.integers(min_value=0, max_value=2**63 - 1),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
def test_ack_as_protobuf_encodes_any(nonce: int, server_time_ms: int) -> None:
    expected = ack(nonce, server_time_ms)

    assert encode_heartbeat_ack(heartbeat(nonce), server_time_ms, False) == expected
    assert encode_heartbeat_ack(prefix_frame(heartbeat(nonce)), server_time_ms, True) == (
        prefix_frame(expected)
    )


@pytest.mark.parametrize("data", NOT_MATCHED.values(), ids=NOT_MATCHED.keys())
def test_other_encodings_left_to_protobuf(data: bytes) -> None:
    assert encode_heartbeat_ack(data, NOW_MS, False) is None
    assert encode_heartbeat_ack(prefix_frame(data), NOW_MS, True) is None


@pytest.mark.parametrize(
    "data",
    [
        heartbeat(1),  # no length prefix
        b"\x05" + heartbeat(1),  # a prefix one byte too long
        b"\x03" + heartbeat(1),  # a prefix one byte too short
        prefix_frame(heartbeat(1)) * 2,  # two frames in one read
        prefix_frame(heartbeat(1)) + b"\x00",  # the start of another frame
    ],
    ids=["unprefixed", "prefix-long", "prefix-short", "two-frames", "trailing-byte"],
)
def test_stream_needs_exactly_one_frame(data: bytes) -> None:
    assert encode_heartbeat_ack(data, NOW_MS, True) is None


# Mutations of heartbeats: the bytes right next to what the fast path must recognize.
mutated_heartbeats = st.builds(
    lambda data, index, byte, cut: (data[:index] + bytes([byte]) + data[index + 1 :])[:cut],
    st.sampled_from([heartbeat(nonce) for nonce in NONCES] + list(NOT_MATCHED.values())),
    st.integers(min_value=0, max_value=12),
    st.integers(min_value=0, max_value=255),
    st.integers(min_value=0, max_value=14),
)


@PROPERTY_SETTINGS
@given(st.one_of(mutated_heartbeats, st.binary(max_size=14)))
def test_matched_only_protobuf_heartbeats(data: bytes) -> None:
    answer = encode_heartbeat_ack(data, NOW_MS, False)
    if answer is None:
        return

    frame = pb.Frame.FromString(data)  # raises if the fast path matched invalid bytes
    assert frame.WhichOneof("kind") == "heartbeat"
    assert answer == ack(frame.heartbeat.nonce, NOW_MS)
    assert data == heartbeat(frame.heartbeat.nonce)


# ServerProtocol.receive_heartbeat


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "message"])
def test_receive_heartbeat_when_open(stream: bool) -> None:
    protocol = open_protocol(stream=stream)
    data = prefix_frame(heartbeat(300)) if stream else heartbeat(300)
    expected = prefix_frame(ack(300, NOW_MS)) if stream else ack(300, NOW_MS)

    assert protocol.receive_heartbeat(data, NOW_MS) == expected
    assert protocol.state is ConnectionState.OPEN
    assert protocol.violation is None


@pytest.mark.parametrize(
    "path",
    [
        [],
        [ConnectionState.AUTHENTICATING],
        [ConnectionState.AUTHENTICATING, ConnectionState.OPEN, ConnectionState.CLOSING],
        [ConnectionState.CLOSED],
    ],
    ids=["awaiting-connect", "authenticating", "closing", "closed"],
)
def test_receive_heartbeat_only_when_open(path: list[ConnectionState]) -> None:
    protocol = ServerProtocol(max_frame_bytes=4096, stream=True)
    for state in path:
        protocol.move_to(state)

    assert protocol.receive_heartbeat(prefix_frame(heartbeat(1)), NOW_MS) is None


def test_receive_heartbeat_not_after_partial_frame() -> None:
    protocol = open_protocol(stream=True)
    send = prefix_frame(NOT_MATCHED["send"])
    assert protocol.receive_data(send[:3]) == []
    # The rest of the Send, then a whole heartbeat: the read continues the partial frame.
    data = send[3:] + prefix_frame(heartbeat(1))

    assert protocol.receive_heartbeat(data, NOW_MS) is None
    kinds = [frame.WhichOneof("kind") for frame in protocol.receive_data(data)]
    assert kinds == ["send", "heartbeat"]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "message"])
def test_receive_heartbeat_over_size_limit(stream: bool) -> None:
    protocol = open_protocol(stream=stream, max_frame_bytes=3)
    frame = heartbeat(300)  # 5 bytes
    data = prefix_frame(frame) if stream else frame

    assert protocol.receive_heartbeat(data, NOW_MS) is None
    assert (protocol.receive_data(data) if stream else protocol.receive_message(data)) == []
    assert protocol.violation is not None
    assert protocol.violation.code == Code.FRAME_TOO_LARGE
