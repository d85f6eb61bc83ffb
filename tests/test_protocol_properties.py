"""Property-based tests of the frame decoders: arbitrary input, arbitrary chunking."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from tether.protocol import pb
from tether.protocol.codes import Code
from tether.protocol.connection import ServerProtocol
from tether.protocol.errors import ProtocolError
from tether.protocol.framing import StreamDecoder, encode_varint, prefix_frame
from tether.protocol.states import ALLOWED_FROM_CLIENT, ConnectionState

# Modest example counts keep this whole file to a few seconds.
PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)

DECODER_CODES = {Code.PROTOCOL_ERROR, Code.FRAME_TOO_LARGE}

# The legal path from a new connection to each state a client can send frames in.
PATH_TO_STATE = {
    ConnectionState.AWAITING_CONNECT: [],
    ConnectionState.AUTHENTICATING: [ConnectionState.AUTHENTICATING],
    ConnectionState.OPEN: [ConnectionState.AUTHENTICATING, ConnectionState.OPEN],
}

uint64_values = st.integers(min_value=0, max_value=2**64 - 1)
short_text = st.text(max_size=40)

heartbeat_frames = st.builds(
    lambda nonce: pb.Frame(heartbeat=pb.Heartbeat(nonce=nonce)), uint64_values
)
send_frames = st.builds(
    lambda message_id, recipient, body: pb.Frame(
        send=pb.Send(client_message_id=message_id, recipient=recipient, body=body)
    ),
    short_text,
    short_text,
    st.binary(max_size=300),
)
set_status_frames = st.builds(
    lambda activity, mode: pb.Frame(set_status=pb.SetStatus(activity=activity, mode=mode)),
    st.sampled_from(pb.Activity.values()),
    st.sampled_from(pb.Mode.values()),
)
open_frames = st.one_of(heartbeat_frames, send_frames, set_status_frames)

# Stream input that is partly well formed, so decoding gets past the first bytes more often
# than uniformly random bytes would. Each piece is a valid frame, a prefixed random body or
# raw bytes.
stream_pieces = st.one_of(
    open_frames.map(lambda frame: prefix_frame(frame.SerializeToString())),
    st.binary(max_size=40).map(prefix_frame),
    st.binary(max_size=12),
)
mixed_streams = st.lists(stream_pieces, max_size=8).map(b"".join)
any_streams = st.one_of(st.binary(max_size=400), mixed_streams)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split data at the given offsets, which may repeat and come in any order."""
    bounds = [0, *sorted(cut for cut in cuts if 0 < cut < len(data)), len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds)]


def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """Draw a random chunking of data, from one chunk to one chunk per byte."""
    cuts = draw(st.lists(st.integers(min_value=0, max_value=len(data)), max_size=len(data)))
    return split_at(data, cuts)


@st.composite
def stream_chunks(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    data = draw(any_streams)
    return data, chunked(draw, data)


def decode_chunks(chunks: list[bytes], max_frame_bytes: int) -> tuple[list[bytes], StreamDecoder]:
    """Feed every chunk to a new StreamDecoder and collect the payloads."""
    decoder = StreamDecoder(max_frame_bytes)
    payloads: list[bytes] = []
    for chunk in chunks:
        payloads.extend(decoder.feed(chunk))
    return payloads, decoder


def receive_chunks(
    chunks: list[bytes], state: ConnectionState, max_frame_bytes: int
) -> tuple[list[pb.Frame], ServerProtocol]:
    """Feed every chunk to a new stream ServerProtocol in `state` and collect the frames."""
    protocol = ServerProtocol(max_frame_bytes=max_frame_bytes, stream=True)
    for step in PATH_TO_STATE[state]:
        protocol.move_to(step)
    frames: list[pb.Frame] = []
    for chunk in chunks:
        frames.extend(protocol.receive_data(chunk))
    return frames, protocol


def describe_error(error: ProtocolError | None) -> tuple[type, Code, str] | None:
    """Return the parts of an error that two equal decodings must share."""
    if error is None:
        return None
    return type(error), error.code, str(error)


# Arbitrary input never raises


@PROPERTY_SETTINGS
@given(stream_chunks(), st.integers(min_value=0, max_value=300))
def test_decoder_any_input_no_exception(
    data_and_chunks: tuple[bytes, list[bytes]], max_frame_bytes: int
) -> None:
    data, chunks = data_and_chunks

    payloads, decoder = decode_chunks(chunks, max_frame_bytes)

    assert all(len(payload) <= max_frame_bytes for payload in payloads)
    assert sum(len(payload) for payload in payloads) <= len(data)
    assert decoder.error is None or decoder.error.code in DECODER_CODES


@PROPERTY_SETTINGS
@given(stream_chunks(), st.sampled_from(list(PATH_TO_STATE)))
def test_protocol_any_input_no_exception(
    data_and_chunks: tuple[bytes, list[bytes]], state: ConnectionState
) -> None:
    _, chunks = data_and_chunks
    allowed = ALLOWED_FROM_CLIENT[state] | ALLOWED_FROM_CLIENT[ConnectionState.AUTHENTICATING]

    frames, protocol = receive_chunks(chunks, state, max_frame_bytes=256)

    assert all(frame.WhichOneof("kind") in allowed for frame in frames)
    assert protocol.violation is None or protocol.violation.code in DECODER_CODES
    if protocol.violation is None:
        assert protocol.state in (state, ConnectionState.AUTHENTICATING)
    else:
        assert protocol.state is ConnectionState.CLOSING


@PROPERTY_SETTINGS
@given(st.lists(st.binary(max_size=300), max_size=6), st.sampled_from(list(PATH_TO_STATE)))
def test_websocket_any_message_no_exception(messages: list[bytes], state: ConnectionState) -> None:
    protocol = ServerProtocol(max_frame_bytes=256, stream=False)
    for step in PATH_TO_STATE[state]:
        protocol.move_to(step)

    for message in messages:
        frames = protocol.receive_message(message)
        assert len(frames) <= 1

    assert protocol.violation is None or protocol.violation.code in DECODER_CODES


@PROPERTY_SETTINGS
@given(st.binary(max_size=200))
def test_violation_always_means_closing(data: bytes) -> None:
    _, protocol = receive_chunks([data], ConnectionState.OPEN, max_frame_bytes=64)

    if protocol.violation is not None:
        assert protocol.state is ConnectionState.CLOSING
    else:
        assert protocol.state is ConnectionState.OPEN


# Round trips


@st.composite
def framed_messages(draw: st.DrawFn) -> tuple[list[pb.Frame], list[bytes]]:
    frames = draw(st.lists(open_frames, max_size=8))
    data = b"".join(prefix_frame(frame.SerializeToString()) for frame in frames)
    return frames, chunked(draw, data)


@PROPERTY_SETTINGS
@given(framed_messages())
def test_protocol_round_trip_chunked(frames_and_chunks: tuple[list[pb.Frame], list[bytes]]) -> None:
    frames, chunks = frames_and_chunks

    received, protocol = receive_chunks(chunks, ConnectionState.OPEN, max_frame_bytes=1024)

    assert received == frames
    assert protocol.violation is None


@PROPERTY_SETTINGS
@given(framed_messages())
def test_decoder_round_trip_chunked(frames_and_chunks: tuple[list[pb.Frame], list[bytes]]) -> None:
    frames, chunks = frames_and_chunks

    payloads, decoder = decode_chunks(chunks, max_frame_bytes=1024)

    assert [pb.Frame.FromString(payload) for payload in payloads] == frames
    assert decoder.error is None
    assert decoder.buffered == 0


@PROPERTY_SETTINGS
@given(open_frames)
def test_websocket_round_trip(frame: pb.Frame) -> None:
    protocol = ServerProtocol(max_frame_bytes=1024, stream=False)
    for step in PATH_TO_STATE[ConnectionState.OPEN]:
        protocol.move_to(step)

    assert protocol.receive_message(protocol.encode(frame)) == [frame]
    assert protocol.violation is None


@PROPERTY_SETTINGS
@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_varint_round_trip(value: int) -> None:
    # Field 1 of Heartbeat is a uint64 varint, so protobuf itself decodes what we encode.
    assert pb.Heartbeat.FromString(b"\x08" + encode_varint(value)).nonce == value


# Chunking never changes the result


@PROPERTY_SETTINGS
@given(stream_chunks(), st.integers(min_value=0, max_value=300))
def test_decoder_chunking_same_result(
    data_and_chunks: tuple[bytes, list[bytes]], max_frame_bytes: int
) -> None:
    data, chunks = data_and_chunks

    whole_payloads, whole = decode_chunks([data], max_frame_bytes)
    split_payloads, split = decode_chunks(chunks, max_frame_bytes)

    assert split_payloads == whole_payloads
    assert describe_error(split.error) == describe_error(whole.error)


@PROPERTY_SETTINGS
@given(stream_chunks(), st.sampled_from(list(PATH_TO_STATE)))
def test_protocol_chunking_same_result(
    data_and_chunks: tuple[bytes, list[bytes]], state: ConnectionState
) -> None:
    data, chunks = data_and_chunks

    whole_frames, whole = receive_chunks([data], state, max_frame_bytes=256)
    split_frames, split = receive_chunks(chunks, state, max_frame_bytes=256)

    assert split_frames == whole_frames
    assert describe_error(split.violation) == describe_error(whole.violation)
    assert split.state is whole.state


@PROPERTY_SETTINGS
@given(stream_chunks(), st.integers(min_value=0, max_value=300))
def test_decoder_byte_by_byte_same_result(
    data_and_chunks: tuple[bytes, list[bytes]], max_frame_bytes: int
) -> None:
    data, _ = data_and_chunks
    single_bytes = [data[index : index + 1] for index in range(len(data))]

    whole_payloads, whole = decode_chunks([data], max_frame_bytes)
    split_payloads, split = decode_chunks(single_bytes, max_frame_bytes)

    assert split_payloads == whole_payloads
    assert describe_error(split.error) == describe_error(whole.error)
