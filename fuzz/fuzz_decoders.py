"""Atheris harness for tether's frame decoders: `StreamDecoder` and `ServerProtocol`.

Usage: python fuzz/fuzz_decoders.py [libFuzzer flags] [CORPUS_DIR ... | INPUT_FILE ...]
(scripts/fuzz.sh wraps this). An empty corpus directory is first filled with seed inputs.

The contract checked on every input: the decoders return frames or record a `ProtocolError`
whose code is a documented decoder code, and raise nothing else. Decoding the input whole, in
chunks and one byte at a time gives the same frames, the same error and the same state. A
WebSocket message and the same bytes behind a varint prefix on TCP decode alike. Any
exception, including a failed assert, is a crash that libFuzzer saves as an input file.

Layout of a fuzzer input, chosen so that seed inputs are easy to build by hand:

    byte 0          max_frame_bytes = byte * 8, so 0 to 2040
    byte 1          starting connection state: STATES[byte % 5]
    byte 2          number of cut offsets: byte % 16
    2 bytes each    cut offsets, big-endian, each taken modulo len(body) + 1
    rest            body: a TCP stream, or the WebSocket messages between the cuts

Missing header bytes count as zero, so every byte string is a valid input.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

import atheris

# Only tether's own modules get coverage instrumentation. Protobuf's upb parser is C code, which
# atheris cannot instrument, so seeds with valid frames lead the fuzzer past the parser.
with atheris.instrument_imports(include=["tether"]):
    from tether.protocol import pb
    from tether.protocol.codes import Code, describe
    from tether.protocol.connection import ServerProtocol
    from tether.protocol.errors import ProtocolError
    from tether.protocol.framing import StreamDecoder, prefix_frame
    from tether.protocol.states import ALLOWED_FROM_CLIENT, ConnectionState

# The codes a decoder may record. Every other code belongs to the gateway or the logic layer.
DECODER_CODES = frozenset({Code.PROTOCOL_ERROR, Code.FRAME_TOO_LARGE})

STATES = (
    ConnectionState.AWAITING_CONNECT,
    ConnectionState.AUTHENTICATING,
    ConnectionState.OPEN,
    ConnectionState.CLOSING,
    ConnectionState.CLOSED,
)

# The legal moves from a new connection to each starting state.
PATH_TO_STATE: dict[ConnectionState, tuple[ConnectionState, ...]] = {
    ConnectionState.AWAITING_CONNECT: (),
    ConnectionState.AUTHENTICATING: (ConnectionState.AUTHENTICATING,),
    ConnectionState.OPEN: (ConnectionState.AUTHENTICATING, ConnectionState.OPEN),
    ConnectionState.CLOSING: (ConnectionState.CLOSING,),
    ConnectionState.CLOSED: (ConnectionState.CLOSED,),
}

FRAME_LIMIT_STEP = 8  # bytes of max_frame_bytes per unit of header byte 0
MAX_CUTS = 16
HEADER_BYTES = 3

# Feeding one byte per call costs one call per byte, so longer bodies skip that variant to keep
# the execution rate up. Cut offsets from the input still split them anywhere.
MAX_BYTE_BY_BYTE_BODY = 1024


@dataclass(frozen=True, slots=True)
class FuzzCase:
    """One fuzzer input, decoded from the layout in the module docstring."""

    max_frame_bytes: int
    state: ConnectionState
    body: bytes
    cuts: tuple[int, ...]

    @classmethod
    def parse(cls, data: bytes) -> FuzzCase:
        header = data[:HEADER_BYTES].ljust(HEADER_BYTES, b"\x00")
        cut_count = header[2] % MAX_CUTS
        offsets_end = HEADER_BYTES + 2 * cut_count
        offsets = data[HEADER_BYTES:offsets_end].ljust(2 * cut_count, b"\x00")
        body = data[offsets_end:]
        cuts = tuple(
            int.from_bytes(offsets[index : index + 2], "big") % (len(body) + 1)
            for index in range(0, len(offsets), 2)
        )
        return cls(header[0] * FRAME_LIMIT_STEP, STATES[header[1] % len(STATES)], body, cuts)

    def chunks(self) -> list[bytes]:
        """Split the body at the cut offsets. Repeated offsets give empty chunks."""
        bounds = [0, *sorted(self.cuts), len(self.body)]
        return [self.body[start:end] for start, end in itertools.pairwise(bounds)]


def build_input(
    max_frame_bytes: int, state: ConnectionState, body: bytes, cuts: tuple[int, ...] = ()
) -> bytes:
    """Encode a case in the harness's input layout, the inverse of `FuzzCase.parse`."""
    assert max_frame_bytes % FRAME_LIMIT_STEP == 0, "max_frame_bytes must be a multiple of 8"
    assert len(cuts) < MAX_CUTS, f"at most {MAX_CUTS - 1} cut offsets fit in the header"
    header = bytes((max_frame_bytes // FRAME_LIMIT_STEP, STATES.index(state), len(cuts)))
    return header + b"".join(cut.to_bytes(2, "big") for cut in cuts) + body


# The contract


def check_error(error: ProtocolError | None) -> None:
    """Assert that a recorded error is a ProtocolError with a documented decoder code."""
    if error is None:
        return
    assert isinstance(error, ProtocolError), f"recorded error {error!r} is not a ProtocolError"
    assert error.code in DECODER_CODES, f"decoder recorded code {error.code!r}"
    describe(error.code)  # raises ValueError for a code missing from the documented table


def error_signature(error: ProtocolError | None) -> tuple[type, Code, str] | None:
    """Return the parts of an error that two equal decodings must share."""
    if error is None:
        return None
    return type(error), error.code, str(error)


def replay_states(frames: list[pb.Frame], state: ConnectionState) -> ConnectionState:
    """Assert that each accepted frame was allowed when it arrived, and return the final state.

    Mirrors the one move `ServerProtocol` makes on its own: a Connect moves it to AUTHENTICATING
    before the next frame of the same read is checked.
    """
    for frame in frames:
        kind = frame.WhichOneof("kind")
        assert kind in ALLOWED_FROM_CLIENT[state], f"accepted {kind!r} in state {state.value}"
        if kind == "connect":
            state = ConnectionState.AUTHENTICATING
    return state


def new_protocol(state: ConnectionState, max_frame_bytes: int, *, stream: bool) -> ServerProtocol:
    protocol = ServerProtocol(max_frame_bytes=max_frame_bytes, stream=stream)
    for step in PATH_TO_STATE[state]:
        protocol.move_to(step)
    return protocol


def check_after_violation(protocol: ServerProtocol, start: ConnectionState) -> None:
    """Assert the state a violation leaves and that later input is ignored."""
    expected = ConnectionState.CLOSING
    if start is ConnectionState.CLOSED:
        expected = ConnectionState.CLOSED  # CLOSED -> CLOSING is not a legal move
    assert protocol.state is expected, f"violation left state {protocol.state.value}"

    violation = protocol.violation
    later = prefix_frame(pb.Frame(heartbeat=pb.Heartbeat(nonce=1)).SerializeToString())
    if protocol.stream:
        assert protocol.receive_data(later) == [], "frames accepted after a violation"
    else:
        assert protocol.receive_message(later[1:]) == [], "frame accepted after a violation"
    assert protocol.violation is violation, "a later input replaced the first violation"


# StreamDecoder


def decode_stream(chunks: list[bytes], max_frame_bytes: int) -> tuple[list[bytes], StreamDecoder]:
    decoder = StreamDecoder(max_frame_bytes)
    payloads: list[bytes] = []
    for chunk in chunks:
        payloads.extend(decoder.feed(chunk))
    return payloads, decoder


def check_stream_decoder(case: FuzzCase) -> None:
    limit = case.max_frame_bytes
    payloads, whole = decode_stream([case.body], limit)

    check_error(whole.error)
    assert all(len(payload) <= limit for payload in payloads), "payload above max_frame_bytes"
    assert sum(map(len, payloads)) + whole.buffered <= len(case.body), "decoder invented bytes"
    if whole.error is not None:
        assert whole.feed(case.body) == [], "payloads returned after an error"

    variants = [case.chunks()]
    if len(case.body) <= MAX_BYTE_BY_BYTE_BODY:
        variants.append([case.body[index : index + 1] for index in range(len(case.body))])
    for chunks in variants:
        split_payloads, split = decode_stream(chunks, limit)
        assert split_payloads == payloads, "chunking changed the payloads"
        assert error_signature(split.error) == error_signature(whole.error), (
            f"chunking changed the error: {split.error!r} != {whole.error!r}"
        )
        assert split.buffered == whole.buffered, "chunking changed the buffered byte count"


# ServerProtocol, TCP stream mode


def receive_stream(
    chunks: list[bytes], state: ConnectionState, max_frame_bytes: int
) -> tuple[list[pb.Frame], ServerProtocol]:
    protocol = new_protocol(state, max_frame_bytes, stream=True)
    frames: list[pb.Frame] = []
    for chunk in chunks:
        frames.extend(protocol.receive_data(chunk))
    return frames, protocol


def check_stream_protocol(case: FuzzCase) -> None:
    frames, whole = receive_stream([case.body], case.state, case.max_frame_bytes)

    check_error(whole.violation)
    end_state = replay_states(frames, case.state)
    if whole.violation is None:
        assert whole.state is end_state, f"state {whole.state.value}, expected {end_state.value}"
    else:
        check_after_violation(whole, case.state)

    # The accepted frames are the first payloads the plain decoder finds, parsed, in order.
    payloads, _ = decode_stream([case.body], case.max_frame_bytes)
    assert [frame.SerializeToString() for frame in frames] == [
        pb.Frame.FromString(payload).SerializeToString() for payload in payloads[: len(frames)]
    ], "ServerProtocol dropped or reordered frames"

    split_frames, split = receive_stream(case.chunks(), case.state, case.max_frame_bytes)
    assert split_frames == frames, "chunking changed the frames"
    assert error_signature(split.violation) == error_signature(whole.violation), (
        f"chunking changed the violation: {split.violation!r} != {whole.violation!r}"
    )
    assert split.state is whole.state, "chunking changed the final state"


# ServerProtocol, WebSocket mode


def check_websocket_protocol(case: FuzzCase) -> None:
    messages = case.chunks()
    protocol = new_protocol(case.state, case.max_frame_bytes, stream=False)
    frames: list[pb.Frame] = []
    for message in messages:
        violated_before = protocol.violation is not None
        received = protocol.receive_message(message)
        assert len(received) <= 1, f"one message gave {len(received)} frames"
        if violated_before:
            assert received == [], "frame accepted after a violation"
        frames.extend(received)

    check_error(protocol.violation)
    end_state = replay_states(frames, case.state)
    if protocol.violation is None:
        assert protocol.state is end_state, f"state {protocol.state.value}, expected {end_state}"
    else:
        check_after_violation(protocol, case.state)

    # The same messages as varint-prefixed frames on TCP must decode alike. The error texts of
    # the two transports differ, so only the codes are compared.
    stream_bytes = b"".join(prefix_frame(message) for message in messages)
    stream_frames, stream = receive_stream([stream_bytes], case.state, case.max_frame_bytes)
    assert stream_frames == frames, "WebSocket and TCP accepted different frames"
    websocket_code = None if protocol.violation is None else protocol.violation.code
    stream_code = None if stream.violation is None else stream.violation.code
    assert websocket_code == stream_code, f"WebSocket code {websocket_code}, TCP {stream_code}"
    assert stream.state is protocol.state, "WebSocket and TCP ended in different states"


def test_one_input(data: bytes) -> None:
    """Check the decoders' contract on one fuzzer input (the libFuzzer entry point)."""
    case = FuzzCase.parse(data)
    check_stream_decoder(case)
    check_stream_protocol(case)
    check_websocket_protocol(case)


# Seeds


def seed_inputs() -> dict[str, bytes]:
    """Return named inputs holding valid frames of every kind a client may send, so the fuzzer
    starts past the Protobuf parser, plus the hostile prefixes a gateway must reject."""

    def stream(*frames: pb.Frame) -> bytes:
        return b"".join(prefix_frame(frame.SerializeToString()) for frame in frames)

    connect = pb.Frame(
        connect=pb.Connect(protocol_version=1, token="t", device_id="d", client_name="seed")
    )
    heartbeat = pb.Frame(heartbeat=pb.Heartbeat(nonce=300))
    send = pb.Frame(send=pb.Send(client_message_id="m1", recipient="bob", body=b"hi"))
    opening = stream(connect, heartbeat)
    awaiting = ConnectionState.AWAITING_CONNECT
    open_state = ConnectionState.OPEN
    seeds = {
        "connect-then-heartbeat": build_input(256, awaiting, opening, (3, len(opening) - 1)),
        "heartbeat-while-authenticating": build_input(
            64, ConnectionState.AUTHENTICATING, stream(heartbeat, heartbeat)
        ),
        "send-before-connect": build_input(256, awaiting, stream(send)),
        "server-frame-from-client": build_input(
            256, open_state, stream(pb.Frame(connected=pb.Connected(user_id="u")))
        ),
        "frame-too-large": build_input(8, open_state, stream(send)),
        "huge-length-prefix": build_input(2040, open_state, b"\xff\xff\xff\xff\x07"),
        "overlong-varint": build_input(2040, open_state, b"\x80" * 11),
        "padded-varint": build_input(256, open_state, b"\x85\x00" + stream(heartbeat)[1:]),
        "truncated-protobuf": build_input(256, open_state, b"\x03\x1a\x05\x08"),
        "frame-closed-state": build_input(256, ConnectionState.CLOSED, stream(heartbeat)),
    }

    # One seed per kind allowed in an open session, read from the state table so that a kind
    # added to the protocol gets a seed too. The cuts split the stream inside the frame.
    for kind in sorted(ALLOWED_FROM_CLIENT[open_state]):
        frame = pb.Frame()
        getattr(frame, kind).SetInParent()  # selects the kind with every field at its default
        body = stream(frame, send, heartbeat)
        seeds[f"open-{kind}"] = build_input(256, open_state, body, (1, len(body) // 2))
    return seeds


def seed_empty_corpus_dirs(arguments: list[str]) -> None:
    """Write the seed inputs into each corpus directory named in the arguments that is empty."""
    for argument in arguments:
        if argument.startswith("-"):
            continue
        directory = Path(argument)
        if directory.is_dir() and not any(directory.iterdir()):
            for name, data in seed_inputs().items():
                (directory / f"seed-{name}").write_bytes(data)


def main() -> None:
    seed_empty_corpus_dirs(sys.argv[1:])
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
