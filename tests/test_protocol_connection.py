"""Tests of ServerProtocol, the sans-I/O server side of a connection, fed bytes directly."""

from __future__ import annotations

import pytest

from tether.protocol import pb
from tether.protocol.codes import Code
from tether.protocol.connection import PROTOCOL_VERSION, ServerProtocol
from tether.protocol.framing import StreamDecoder, encode_varint, prefix_frame
from tether.protocol.states import (
    ALLOWED_FROM_CLIENT,
    TRANSITIONS,
    ConnectionState,
    check_transition,
)

MAX_FRAME_BYTES = 4096

# One frame of every kind, with every scalar field set to a value other than its default, so a
# field lost in a round trip shows up as a difference.
SAMPLE_FRAMES: dict[str, pb.Frame] = {
    "connect": pb.Frame(
        connect=pb.Connect(
            protocol_version=PROTOCOL_VERSION,
            token="header.payload.signature",
            device_id="phone-1",
            platform=pb.PLATFORM_ANDROID,
            client_name="tests 1.0",
            status=pb.SetStatus(activity=pb.ACTIVITY_IDLE, mode=pb.MODE_BUSY),
        )
    ),
    "connected": pb.Frame(
        connected=pb.Connected(
            session_id="s-1",
            user_id="alice",
            heartbeat_interval_ms=4000,
            offline_timeout_ms=60000,
            server_time_ms=1_700_000_000_000,
            max_frame_bytes=MAX_FRAME_BYTES,
            protocol_version=PROTOCOL_VERSION,
        )
    ),
    "heartbeat": pb.Frame(heartbeat=pb.Heartbeat(nonce=2**64 - 1)),
    "heartbeat_ack": pb.Frame(
        heartbeat_ack=pb.HeartbeatAck(nonce=7, server_time_ms=1_700_000_000_000)
    ),
    "send": pb.Frame(send=pb.Send(client_message_id="m-1", recipient="bob", body=b"\x00hi\xff")),
    "send_ack": pb.Frame(
        send_ack=pb.SendAck(
            client_message_id="m-1",
            message_id=42,
            conversation_id="d:alice:bob",
            sequence=3,
            timestamp_ms=1_700_000_000_001,
        )
    ),
    "deliver": pb.Frame(
        deliver=pb.Deliver(
            messages=[
                pb.Message(
                    message_id=42,
                    conversation_id="d:alice:bob",
                    sequence=3,
                    sender="alice",
                    sender_device="phone-1",
                    recipient="bob",
                    body="héllo".encode(),
                    timestamp_ms=1_700_000_000_001,
                    client_message_id="m-1",
                ),
                pb.Message(message_id=43, conversation_id="d:alice:bob", sequence=4, body=b""),
            ]
        )
    ),
    "deliver_ack": pb.Frame(deliver_ack=pb.DeliverAck(conversation_id="d:alice:bob", sequence=4)),
    "set_status": pb.Frame(
        set_status=pb.SetStatus(activity=pb.ACTIVITY_ACTIVE, mode=pb.MODE_INVISIBLE)
    ),
    "presence_update": pb.Frame(
        presence_update=pb.PresenceUpdate(
            presence=pb.UserPresence(
                user_id="bob", status=pb.STATUS_AWAY, last_seen_ms=1_700_000_000_000, version=9
            )
        )
    ),
    "presence_snapshot": pb.Frame(
        presence_snapshot=pb.PresenceSnapshot(
            contacts=[
                pb.UserPresence(user_id="bob", status=pb.STATUS_ONLINE, version=1),
                pb.UserPresence(user_id="carol", status=pb.STATUS_OFFLINE, last_seen_ms=5),
            ]
        )
    ),
    "error": pb.Frame(error=pb.Error(code=Code.NOT_A_CONTACT, message="not a contact", ref="m-1")),
    "disconnect": pb.Frame(
        disconnect=pb.Disconnect(code=Code.SHUTDOWN, reason="draining", reconnect_delay_ms=1500)
    ),
    "contacts_changed": pb.Frame(
        contacts_changed=pb.ContactsChanged(added=["dave", "erin"], removed=["frank"])
    ),
    "unread": pb.Frame(
        unread=pb.Unread(
            conversations=[
                pb.ConversationState(
                    conversation_id="d:alice:bob", last_sequence=9, read_sequence=4
                )
            ],
            truncated=True,
        )
    ),
    "refresh": pb.Frame(refresh=pb.Refresh(token="header.payload.signature")),
    "refreshed": pb.Frame(refreshed=pb.Refreshed(token_expires_ms=1_796_400_000_000)),
    "sync": pb.Frame(
        sync=pb.Sync(request_id="s-1", conversation_id="d:alice:bob", after_sequence=4, limit=2)
    ),
    "group_request": pb.Frame(
        group_request=pb.GroupRequest(
            request_id="g-1", action=pb.GROUP_ACTION_ADD, group_id="team", user_ids=["bob"]
        )
    ),
    "group_result": pb.Frame(
        group_result=pb.GroupResult(
            request_id="g-1",
            groups=[pb.Group(group_id="team", conversation_id="g:team", owner="alice")],
            changed=["bob"],
        )
    ),
    "groups_changed": pb.Frame(
        groups_changed=pb.GroupsChanged(
            joined=[pb.Group(group_id="team", conversation_id="g:team", member_count=2)],
            left=["old"],
        )
    ),
    "group_counts": pb.Frame(
        group_counts=pb.GroupCounts(
            counts=[pb.GroupCount(group_id="team", online=7, member_count=120)]
        )
    ),
    "sync_result": pb.Frame(
        sync_result=pb.SyncResult(
            request_id="s-1",
            conversation_id="d:alice:bob",
            messages=[pb.Message(message_id=5, conversation_id="d:alice:bob", sequence=5)],
            has_more=True,
            last_sequence=9,
        )
    ),
}

FRAME_KINDS = [field.name for field in pb.Frame.DESCRIPTOR.oneofs_by_name["kind"].fields]
CLIENT_KINDS = sorted(set().union(*ALLOWED_FROM_CLIENT.values()))
SERVER_ONLY_KINDS = sorted(set(FRAME_KINDS) - set(CLIENT_KINDS))
OPEN_KINDS = sorted(ALLOWED_FROM_CLIENT[ConnectionState.OPEN])


# The legal path from a new connection to each state.
PATH_TO_STATE: dict[ConnectionState, list[ConnectionState]] = {
    ConnectionState.AWAITING_CONNECT: [],
    ConnectionState.AUTHENTICATING: [ConnectionState.AUTHENTICATING],
    ConnectionState.OPEN: [ConnectionState.AUTHENTICATING, ConnectionState.OPEN],
    ConnectionState.CLOSING: [
        ConnectionState.AUTHENTICATING,
        ConnectionState.OPEN,
        ConnectionState.CLOSING,
    ],
    ConnectionState.CLOSED: [
        ConnectionState.AUTHENTICATING,
        ConnectionState.OPEN,
        ConnectionState.CLOSING,
        ConnectionState.CLOSED,
    ],
}


def new_protocol(state: ConnectionState, *, stream: bool = True) -> ServerProtocol:
    """Create a protocol and move it to `state` through legal moves only."""
    protocol = ServerProtocol(max_frame_bytes=MAX_FRAME_BYTES, stream=stream)
    for step in PATH_TO_STATE[state]:
        protocol.move_to(step)
    return protocol


def truncated_send_payload() -> bytes:
    """Return a serialized Send frame cut inside its body field."""
    payload = SAMPLE_FRAMES["send"].SerializeToString()
    return payload[:-2]


def send_frame_of_size(size: int) -> pb.Frame:
    """Return a Send frame whose encoding is exactly `size` bytes long."""
    frame = pb.Frame(send=pb.Send(client_message_id="m", recipient="bob"))
    for body_length in range(size, -1, -1):
        frame.send.body = bytes(body_length)
        if frame.ByteSize() == size:
            return frame
    raise ValueError(f"no Send frame encodes to exactly {size} bytes")


# The sample table itself


def test_samples_cover_every_kind() -> None:
    assert sorted(SAMPLE_FRAMES) == sorted(FRAME_KINDS)


@pytest.mark.parametrize("kind", FRAME_KINDS)
def test_sample_has_its_kind(kind: str) -> None:
    assert SAMPLE_FRAMES[kind].WhichOneof("kind") == kind


def test_allowed_kinds_are_frame_kinds() -> None:
    for state, kinds in ALLOWED_FROM_CLIENT.items():
        assert kinds <= set(FRAME_KINDS), state


def test_allowed_table_covers_states() -> None:
    assert set(ALLOWED_FROM_CLIENT) == set(ConnectionState)
    assert set(TRANSITIONS) == set(ConnectionState)


# Round trips


@pytest.mark.parametrize("kind", CLIENT_KINDS)
def test_client_kind_round_trip_stream(kind: str) -> None:
    frame = SAMPLE_FRAMES[kind]
    state = ConnectionState.AWAITING_CONNECT if kind == "connect" else ConnectionState.OPEN
    sender = ServerProtocol(max_frame_bytes=MAX_FRAME_BYTES, stream=True)
    receiver = new_protocol(state)

    frames = receiver.receive_data(sender.encode(frame))

    assert frames == [frame]
    assert receiver.violation is None


@pytest.mark.parametrize("kind", CLIENT_KINDS)
def test_client_kind_round_trip_websocket(kind: str) -> None:
    frame = SAMPLE_FRAMES[kind]
    state = ConnectionState.AWAITING_CONNECT if kind == "connect" else ConnectionState.OPEN
    sender = ServerProtocol(max_frame_bytes=MAX_FRAME_BYTES, stream=False)
    receiver = new_protocol(state, stream=False)

    frames = receiver.receive_message(sender.encode(frame))

    assert frames == [frame]
    assert receiver.violation is None


@pytest.mark.parametrize("kind", FRAME_KINDS)
def test_every_kind_round_trip_framing(kind: str) -> None:
    frame = SAMPLE_FRAMES[kind]
    decoder = StreamDecoder(MAX_FRAME_BYTES)

    data = ServerProtocol(max_frame_bytes=MAX_FRAME_BYTES, stream=True).encode(frame)

    [payload] = decoder.feed(data)

    assert pb.Frame.FromString(payload) == frame
    assert decoder.error is None


@pytest.mark.parametrize("kind", FRAME_KINDS)
def test_encode_stream_adds_prefix(kind: str) -> None:
    frame = SAMPLE_FRAMES[kind]
    payload = frame.SerializeToString()
    protocol = ServerProtocol(max_frame_bytes=MAX_FRAME_BYTES, stream=True)

    assert protocol.encode(frame) == prefix_frame(payload)
    assert protocol.frame_bytes(payload) == prefix_frame(payload)


@pytest.mark.parametrize("kind", FRAME_KINDS)
def test_encode_websocket_no_prefix(kind: str) -> None:
    frame = SAMPLE_FRAMES[kind]
    payload = frame.SerializeToString()
    protocol = ServerProtocol(max_frame_bytes=MAX_FRAME_BYTES, stream=False)

    assert protocol.encode(frame) == payload
    assert protocol.frame_bytes(payload) == payload


def test_open_frames_byte_by_byte() -> None:
    frames = [SAMPLE_FRAMES[kind] for kind in OPEN_KINDS]
    data = b"".join(prefix_frame(frame.SerializeToString()) for frame in frames)
    protocol = new_protocol(ConnectionState.OPEN)

    received: list[pb.Frame] = []
    for index in range(len(data)):
        received.extend(protocol.receive_data(data[index : index + 1]))

    assert received == frames
    assert protocol.violation is None


def test_empty_heartbeat_is_valid_frame() -> None:
    # A Heartbeat with nonce 0 encodes as an empty submessage, and the kind is still set.
    frame = pb.Frame(heartbeat=pb.Heartbeat())
    protocol = new_protocol(ConnectionState.OPEN)

    assert protocol.receive_data(prefix_frame(frame.SerializeToString())) == [frame]
    assert protocol.violation is None


# State rules


def test_initial_state_awaits_connect() -> None:
    protocol = ServerProtocol(max_frame_bytes=MAX_FRAME_BYTES, stream=True)

    assert protocol.state is ConnectionState.AWAITING_CONNECT
    assert protocol.violation is None


def test_only_connect_allowed_first() -> None:
    assert ALLOWED_FROM_CLIENT[ConnectionState.AWAITING_CONNECT] == {"connect"}


@pytest.mark.parametrize("kind", [kind for kind in FRAME_KINDS if kind != "connect"])
def test_first_frame_not_connect_rejected(kind: str) -> None:
    protocol = new_protocol(ConnectionState.AWAITING_CONNECT)

    assert protocol.receive_data(protocol.encode(SAMPLE_FRAMES[kind])) == []
    assert protocol.violation is not None
    assert protocol.violation.code is Code.PROTOCOL_ERROR
    assert protocol.state is ConnectionState.CLOSING


def test_connect_moves_to_authenticating() -> None:
    protocol = new_protocol(ConnectionState.AWAITING_CONNECT)

    protocol.receive_data(protocol.encode(SAMPLE_FRAMES["connect"]))

    assert protocol.state is ConnectionState.AUTHENTICATING
    assert protocol.violation is None


def test_authenticating_allows_heartbeat() -> None:
    protocol = new_protocol(ConnectionState.AUTHENTICATING)
    frame = SAMPLE_FRAMES["heartbeat"]

    assert protocol.receive_data(protocol.encode(frame)) == [frame]
    assert protocol.violation is None
    assert protocol.state is ConnectionState.AUTHENTICATING


@pytest.mark.parametrize("kind", [kind for kind in FRAME_KINDS if kind != "heartbeat"])
def test_authenticating_rejects_other_kinds(kind: str) -> None:
    protocol = new_protocol(ConnectionState.AUTHENTICATING)

    assert protocol.receive_data(protocol.encode(SAMPLE_FRAMES[kind])) == []
    assert protocol.violation is not None
    assert protocol.violation.code is Code.PROTOCOL_ERROR


def test_connect_then_heartbeat_same_read() -> None:
    protocol = new_protocol(ConnectionState.AWAITING_CONNECT)
    connect, heartbeat = SAMPLE_FRAMES["connect"], SAMPLE_FRAMES["heartbeat"]

    frames = protocol.receive_data(protocol.encode(connect) + protocol.encode(heartbeat))

    assert frames == [connect, heartbeat]
    assert protocol.violation is None
    assert protocol.state is ConnectionState.AUTHENTICATING


def test_connect_then_send_same_read() -> None:
    # The frame after Connect is checked against AUTHENTICATING, where Send is not allowed.
    protocol = new_protocol(ConnectionState.AWAITING_CONNECT)
    connect, send = SAMPLE_FRAMES["connect"], SAMPLE_FRAMES["send"]

    frames = protocol.receive_data(protocol.encode(connect) + protocol.encode(send))

    assert frames == [connect]
    assert protocol.violation is not None
    assert protocol.violation.code is Code.PROTOCOL_ERROR


def test_two_connects_rejected() -> None:
    protocol = new_protocol(ConnectionState.AWAITING_CONNECT)
    connect = SAMPLE_FRAMES["connect"]

    frames = protocol.receive_data(protocol.encode(connect) + protocol.encode(connect))

    assert frames == [connect]
    assert protocol.violation is not None
    assert protocol.violation.code is Code.PROTOCOL_ERROR


@pytest.mark.parametrize("kind", OPEN_KINDS)
def test_open_allows_client_kind(kind: str) -> None:
    protocol = new_protocol(ConnectionState.OPEN)
    frame = SAMPLE_FRAMES[kind]

    assert protocol.receive_data(protocol.encode(frame)) == [frame]
    assert protocol.violation is None
    assert protocol.state is ConnectionState.OPEN


def test_open_kinds_as_specified() -> None:
    expected = {
        "heartbeat",
        "send",
        "deliver_ack",
        "set_status",
        "disconnect",
        "sync",
        "refresh",
        "unread",
        "group_request",
    }

    assert ALLOWED_FROM_CLIENT[ConnectionState.OPEN] == expected


def test_open_rejects_connect() -> None:
    protocol = new_protocol(ConnectionState.OPEN)

    assert protocol.receive_data(protocol.encode(SAMPLE_FRAMES["connect"])) == []
    assert protocol.violation is not None
    assert protocol.violation.code is Code.PROTOCOL_ERROR
    assert protocol.state is ConnectionState.CLOSING


@pytest.mark.parametrize("kind", SERVER_ONLY_KINDS)
def test_open_rejects_server_kind(kind: str) -> None:
    protocol = new_protocol(ConnectionState.OPEN)

    assert protocol.receive_data(protocol.encode(SAMPLE_FRAMES[kind])) == []
    assert protocol.violation is not None
    assert protocol.violation.code is Code.PROTOCOL_ERROR


def test_frames_before_bad_frame_returned() -> None:
    protocol = new_protocol(ConnectionState.OPEN)
    heartbeat, send = SAMPLE_FRAMES["heartbeat"], SAMPLE_FRAMES["send"]
    data = protocol.encode(heartbeat) + protocol.encode(send) + prefix_frame(b"\xff\xff")

    assert protocol.receive_data(data) == [heartbeat, send]
    assert protocol.violation is not None
    assert protocol.violation.code is Code.PROTOCOL_ERROR


def test_closed_rejects_every_frame() -> None:
    protocol = new_protocol(ConnectionState.OPEN)
    protocol.move_to(ConnectionState.CLOSED)

    assert protocol.receive_data(protocol.encode(SAMPLE_FRAMES["heartbeat"])) == []
    assert protocol.violation is not None
    assert protocol.state is ConnectionState.CLOSED


# Malformed input


def test_garbage_bytes_protocol_error() -> None:
    # 0xff is the key of field 15 with wire type 7, which does not exist.
    protocol = new_protocol(ConnectionState.AWAITING_CONNECT)

    assert protocol.receive_data(prefix_frame(b"\xff\xff\xff\xff")) == []
    assert protocol.violation is not None
    assert protocol.violation.code is Code.PROTOCOL_ERROR
    assert protocol.state is ConnectionState.CLOSING


def test_garbage_message_protocol_error() -> None:
    protocol = new_protocol(ConnectionState.AWAITING_CONNECT, stream=False)

    assert protocol.receive_message(b"\xff\xff\xff\xff") == []
    assert protocol.violation is not None
    assert protocol.violation.code is Code.PROTOCOL_ERROR


def test_truncated_protobuf_protocol_error() -> None:
    protocol = new_protocol(ConnectionState.OPEN)

    assert protocol.receive_data(prefix_frame(truncated_send_payload())) == []
    assert protocol.violation is not None
    assert protocol.violation.code is Code.PROTOCOL_ERROR


def test_truncated_message_protocol_error() -> None:
    protocol = new_protocol(ConnectionState.OPEN, stream=False)

    assert protocol.receive_message(truncated_send_payload()) == []
    assert protocol.violation is not None
    assert protocol.violation.code is Code.PROTOCOL_ERROR


def test_invalid_utf8_string_protocol_error() -> None:
    # Field 2 of Send is a proto3 string, which must be valid UTF-8.
    send = b"\x12\x01\xff"
    payload = b"\x2a" + encode_varint(len(send)) + send
    protocol = new_protocol(ConnectionState.OPEN)

    assert protocol.receive_data(prefix_frame(payload)) == []
    assert protocol.violation is not None
    assert protocol.violation.code is Code.PROTOCOL_ERROR


@pytest.mark.parametrize("stream", [True, False])
def test_empty_frame_protocol_error(stream: bool) -> None:
    protocol = new_protocol(ConnectionState.OPEN, stream=stream)

    frames = protocol.receive_data(b"\x00") if stream else protocol.receive_message(b"")

    assert frames == []
    assert protocol.violation is not None
    assert protocol.violation.code is Code.PROTOCOL_ERROR


def test_unknown_field_only_protocol_error() -> None:
    # Field 99 with the varint 1 is kept as an unknown field, so no kind is set.
    payload = encode_varint(99 << 3) + b"\x01"
    protocol = new_protocol(ConnectionState.OPEN)

    assert protocol.receive_data(prefix_frame(payload)) == []
    assert protocol.violation is not None
    assert protocol.violation.code is Code.PROTOCOL_ERROR


def test_stream_oversized_frame_too_large() -> None:
    protocol = new_protocol(ConnectionState.OPEN)

    assert protocol.receive_data(encode_varint(MAX_FRAME_BYTES + 1)) == []
    assert protocol.violation is not None
    assert protocol.violation.code is Code.FRAME_TOO_LARGE
    assert protocol.state is ConnectionState.CLOSING


def test_stream_frame_at_max_accepted() -> None:
    frame = send_frame_of_size(MAX_FRAME_BYTES)
    protocol = new_protocol(ConnectionState.OPEN)

    assert protocol.receive_data(protocol.encode(frame)) == [frame]
    assert protocol.violation is None


def test_stream_frames_before_oversized() -> None:
    protocol = new_protocol(ConnectionState.OPEN)
    heartbeat = SAMPLE_FRAMES["heartbeat"]

    frames = protocol.receive_data(protocol.encode(heartbeat) + encode_varint(2**31))

    assert frames == [heartbeat]
    assert protocol.violation is not None
    assert protocol.violation.code is Code.FRAME_TOO_LARGE


def test_websocket_oversized_frame_too_large() -> None:
    payload = send_frame_of_size(MAX_FRAME_BYTES + 1).SerializeToString()
    protocol = new_protocol(ConnectionState.OPEN, stream=False)

    assert protocol.receive_message(payload) == []
    assert protocol.violation is not None
    assert protocol.violation.code is Code.FRAME_TOO_LARGE
    assert protocol.state is ConnectionState.CLOSING


def test_websocket_frame_at_max_accepted() -> None:
    frame = send_frame_of_size(MAX_FRAME_BYTES)
    payload = frame.SerializeToString()
    protocol = new_protocol(ConnectionState.OPEN, stream=False)

    assert len(payload) == MAX_FRAME_BYTES
    assert protocol.receive_message(payload) == [frame]
    assert protocol.violation is None


# After a violation


def test_violation_moves_to_closing() -> None:
    protocol = new_protocol(ConnectionState.OPEN)

    protocol.receive_data(prefix_frame(b"\xff"))

    assert protocol.state is ConnectionState.CLOSING


def test_data_after_violation_ignored() -> None:
    protocol = new_protocol(ConnectionState.OPEN)
    protocol.receive_data(prefix_frame(b"\xff"))
    first_violation = protocol.violation

    assert protocol.receive_data(protocol.encode(SAMPLE_FRAMES["heartbeat"])) == []
    assert protocol.violation is first_violation
    assert protocol.state is ConnectionState.CLOSING


def test_message_after_violation_ignored() -> None:
    protocol = new_protocol(ConnectionState.OPEN, stream=False)
    protocol.receive_message(b"\xff")
    first_violation = protocol.violation

    assert protocol.receive_message(protocol.encode(SAMPLE_FRAMES["heartbeat"])) == []
    assert protocol.violation is first_violation
    assert protocol.state is ConnectionState.CLOSING


def test_violation_then_close_allowed() -> None:
    protocol = new_protocol(ConnectionState.OPEN)
    protocol.receive_data(prefix_frame(b"\xff"))

    protocol.move_to(ConnectionState.CLOSED)

    assert protocol.state is ConnectionState.CLOSED


# move_to and the transition table


LEGAL_MOVES = [(current, new) for current, targets in TRANSITIONS.items() for new in targets]
ILLEGAL_MOVES = [
    (current, new)
    for current in ConnectionState
    for new in ConnectionState
    if new is not current and new not in TRANSITIONS[current]
]


@pytest.mark.parametrize(("current", "new"), LEGAL_MOVES)
def test_move_to_legal(current: ConnectionState, new: ConnectionState) -> None:
    protocol = new_protocol(current)

    protocol.move_to(new)

    assert protocol.state is new


@pytest.mark.parametrize(("current", "new"), ILLEGAL_MOVES)
def test_move_to_illegal_raises(current: ConnectionState, new: ConnectionState) -> None:
    protocol = new_protocol(current)

    with pytest.raises(RuntimeError, match="illegal connection state change"):
        protocol.move_to(new)
    assert protocol.state is current


@pytest.mark.parametrize("state", list(ConnectionState))
def test_move_to_same_state_noop(state: ConnectionState) -> None:
    protocol = new_protocol(state)

    protocol.move_to(state)

    assert protocol.state is state


def test_illegal_moves_include_backwards() -> None:
    assert (ConnectionState.OPEN, ConnectionState.AUTHENTICATING) in ILLEGAL_MOVES
    assert (ConnectionState.AWAITING_CONNECT, ConnectionState.OPEN) in ILLEGAL_MOVES
    assert (ConnectionState.CLOSED, ConnectionState.CLOSING) in ILLEGAL_MOVES


def test_check_transition_names_states() -> None:
    with pytest.raises(RuntimeError, match="open -> authenticating"):
        check_transition(ConnectionState.OPEN, ConnectionState.AUTHENTICATING)


def test_receive_data_needs_stream() -> None:
    protocol = new_protocol(ConnectionState.OPEN, stream=False)

    with pytest.raises(AssertionError):
        protocol.receive_data(b"\x00")
