"""Tests of the varint length-delimited framing, fed bytes directly (no sockets)."""

from __future__ import annotations

import pytest

from tether.protocol import pb
from tether.protocol.codes import Code
from tether.protocol.errors import FrameTooLarge
from tether.protocol.framing import MAX_VARINT_BYTES, StreamDecoder, encode_varint, prefix_frame

BOUNDARY_VALUES = [0, 1, 127, 128, 255, 300, 16383, 16384, 2**21, 2**31, 2**63, 2**64 - 1]

# Encodings worked out by hand. Base-128 puts the low 7 bits first and sets the high bit on every
# byte but the last.
KNOWN_ENCODINGS = [
    (0, b"\x00"),
    (1, b"\x01"),
    (127, b"\x7f"),
    (128, b"\x80\x01"),
    (300, b"\xac\x02"),
    (16383, b"\xff\x7f"),
    (16384, b"\x80\x80\x01"),
    (2**31, b"\x80\x80\x80\x80\x08"),
    (2**63, b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01"),
]


def feed_in_chunks(decoder: StreamDecoder, data: bytes, size: int) -> list[bytes]:
    """Feed data in chunks of `size` bytes and collect every payload returned."""
    payloads: list[bytes] = []
    for start in range(0, len(data), size):
        payloads.extend(decoder.feed(data[start : start + size]))
    return payloads


# encode_varint


@pytest.mark.parametrize(("value", "expected"), KNOWN_ENCODINGS)
def test_varint_known_encodings(value: int, expected: bytes) -> None:
    assert encode_varint(value) == expected


@pytest.mark.parametrize("value", [v for v in BOUNDARY_VALUES if v > 0])
def test_varint_matches_protobuf_encoder(value: int) -> None:
    # Field 1 of Heartbeat is a uint64, so its wire form is the tag byte 0x08 and a varint.
    # Proto3 leaves out a zero field, hence no zero here.
    expected = pb.Heartbeat(nonce=value).SerializeToString()

    assert b"\x08" + encode_varint(value) == expected


@pytest.mark.parametrize("value", BOUNDARY_VALUES)
def test_varint_decoded_by_protobuf(value: int) -> None:
    assert pb.Heartbeat.FromString(b"\x08" + encode_varint(value)).nonce == value


@pytest.mark.parametrize("value", BOUNDARY_VALUES)
def test_varint_length_per_seven_bits(value: int) -> None:
    expected_length = max(1, (value.bit_length() + 6) // 7)

    assert len(encode_varint(value)) == expected_length


def test_varint_max_fits_ten_bytes() -> None:
    assert len(encode_varint(2**64 - 1)) == MAX_VARINT_BYTES


@pytest.mark.parametrize("value", [-1, -1024])
def test_varint_negative_raises_value_error(value: int) -> None:
    with pytest.raises(ValueError, match="non-negative"):
        encode_varint(value)


# Decoding varint prefixes through StreamDecoder


@pytest.mark.parametrize("length", [0, 1, 127, 128, 16383, 16384, 70000])
def test_decoder_round_trip_lengths(length: int) -> None:
    payload = bytes(range(256)) * (length // 256) + bytes(length % 256)
    decoder = StreamDecoder(max_frame_bytes=length)

    assert decoder.feed(prefix_frame(payload)) == [payload]
    assert decoder.error is None
    assert decoder.buffered == 0


@pytest.mark.parametrize("length", [128, 16384, 2**31, 2**63])
def test_decoder_limit_boundary(length: int) -> None:
    at_limit = StreamDecoder(max_frame_bytes=length)
    below_limit = StreamDecoder(max_frame_bytes=length - 1)

    assert at_limit.feed(encode_varint(length)) == []
    assert at_limit.error is None
    assert at_limit.buffered == len(encode_varint(length))
    assert below_limit.feed(encode_varint(length)) == []
    assert isinstance(below_limit.error, FrameTooLarge)
    assert below_limit.error.code is Code.FRAME_TOO_LARGE
    assert below_limit.error.length == length
    assert below_limit.error.limit == length - 1


# StreamDecoder: splitting a stream into frames


def test_decoder_several_frames_one_chunk() -> None:
    payloads = [b"first", b"", b"x" * 200, b"last"]
    decoder = StreamDecoder(max_frame_bytes=1024)

    assert decoder.feed(b"".join(prefix_frame(p) for p in payloads)) == payloads
    assert decoder.buffered == 0


def test_decoder_frame_split_across_chunks() -> None:
    payload = b"y" * 300  # two-byte prefix, so the split can fall inside it too
    data = prefix_frame(payload)
    decoder = StreamDecoder(max_frame_bytes=1024)

    assert decoder.feed(data[:1]) == []
    assert decoder.buffered == 1
    assert decoder.feed(data[1:150]) == []
    assert decoder.buffered == 150
    assert decoder.feed(data[150:]) == [payload]
    assert decoder.buffered == 0


def test_decoder_frame_completed_with_next() -> None:
    decoder = StreamDecoder(max_frame_bytes=1024)
    data = prefix_frame(b"one") + prefix_frame(b"two")

    assert decoder.feed(data[:3]) == []
    assert decoder.feed(data[3:6]) == [b"one"]
    assert decoder.feed(data[6:]) == [b"two"]


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 64])
def test_decoder_small_chunks_same_frames(chunk_size: int) -> None:
    payloads = [b"", b"a", b"b" * 127, b"c" * 128, b"d" * 1000, b""]
    data = b"".join(prefix_frame(p) for p in payloads)
    decoder = StreamDecoder(max_frame_bytes=1024)

    assert feed_in_chunks(decoder, data, chunk_size) == payloads
    assert decoder.error is None
    assert decoder.buffered == 0


def test_decoder_zero_length_frame() -> None:
    decoder = StreamDecoder(max_frame_bytes=16)

    assert decoder.feed(b"\x00") == [b""]
    assert decoder.buffered == 0


def test_decoder_empty_feed() -> None:
    decoder = StreamDecoder(max_frame_bytes=16)

    assert decoder.feed(b"") == []
    assert decoder.buffered == 0


def test_decoder_returns_bytes() -> None:
    decoder = StreamDecoder(max_frame_bytes=16)
    decoder.feed(b"\x03ab")

    [payload] = decoder.feed(b"c")

    assert type(payload) is bytes


# StreamDecoder: limits are enforced before the body is buffered


def test_decoder_huge_prefix_rejected_alone() -> None:
    decoder = StreamDecoder(max_frame_bytes=1 << 20)

    assert decoder.feed(encode_varint(2**31)) == []
    assert isinstance(decoder.error, FrameTooLarge)
    assert decoder.error.code is Code.FRAME_TOO_LARGE
    assert decoder.buffered <= MAX_VARINT_BYTES


def test_decoder_complete_prefix_above_max() -> None:
    decoder = StreamDecoder(max_frame_bytes=100)

    assert decoder.feed(encode_varint(101)) == []
    assert isinstance(decoder.error, FrameTooLarge)
    assert decoder.error.length == 101
    assert decoder.buffered <= MAX_VARINT_BYTES


def test_decoder_huge_prefix_with_body_not_buffered() -> None:
    decoder = StreamDecoder(max_frame_bytes=1 << 20)

    decoder.feed(encode_varint(2**31) + bytes(100_000))

    assert decoder.error is not None
    assert decoder.buffered <= MAX_VARINT_BYTES


def test_decoder_complete_prefix_with_body_not_buffered() -> None:
    decoder = StreamDecoder(max_frame_bytes=100)

    decoder.feed(encode_varint(101) + bytes(101))

    assert decoder.error is not None
    assert decoder.buffered <= MAX_VARINT_BYTES


def test_decoder_incomplete_prefix_proves_too_large() -> None:
    # The third byte alone contributes 0x41 << 14 > 2**20, and its continuation bit is set.
    decoder = StreamDecoder(max_frame_bytes=2**20)

    assert decoder.feed(b"\x80\x80") == []
    assert decoder.error is None
    assert decoder.feed(b"\xc1") == []
    assert isinstance(decoder.error, FrameTooLarge)
    assert decoder.error.code is Code.FRAME_TOO_LARGE


def test_decoder_accepts_padded_prefix() -> None:
    # Protobuf parsers accept a varint padded with zero groups; 5 encoded in five bytes.
    decoder = StreamDecoder(max_frame_bytes=2**20)

    assert decoder.feed(b"\x85\x80\x80\x80\x00hello") == [b"hello"]
    assert decoder.error is None


def test_decoder_trickled_frame_completes() -> None:
    decoder = StreamDecoder(max_frame_bytes=2**20)
    frame = prefix_frame(bytes(5000))

    for byte in frame[:-1]:
        assert decoder.feed(bytes([byte])) == []
    assert decoder.buffered == len(frame) - 1
    assert decoder.feed(frame[-1:]) == [bytes(5000)]
    assert decoder.buffered == 0


def test_decoder_incomplete_prefix_within_max_waits() -> None:
    decoder = StreamDecoder(max_frame_bytes=2**21)

    assert decoder.feed(b"\x80\x80\x80") == []
    assert decoder.error is None
    assert decoder.buffered == 3


def test_decoder_eleven_byte_varint_rejected() -> None:
    # With a maximum above any 64-bit value only the varint length check can fire.
    decoder = StreamDecoder(max_frame_bytes=2**80)

    assert decoder.feed(b"\xff" * 10) == []
    assert decoder.error is not None
    assert decoder.error.code is Code.PROTOCOL_ERROR
    assert not isinstance(decoder.error, FrameTooLarge)


def test_decoder_eleven_byte_varint_byte_by_byte() -> None:
    decoder = StreamDecoder(max_frame_bytes=2**80)

    for _ in range(9):
        assert decoder.feed(b"\xff") == []
        assert decoder.error is None
    assert decoder.feed(b"\xff") == []
    assert decoder.error is not None
    assert decoder.error.code is Code.PROTOCOL_ERROR


def test_decoder_ten_byte_varint_accepted() -> None:
    decoder = StreamDecoder(max_frame_bytes=2**80)

    assert decoder.feed(encode_varint(2**64 - 1)) == []
    assert decoder.error is None
    assert decoder.buffered == MAX_VARINT_BYTES


def test_decoder_long_varint_usual_limit() -> None:
    # Under a usual maximum the size check fires long before the varint length check.
    decoder = StreamDecoder(max_frame_bytes=1 << 20)

    assert decoder.feed(b"\xff" * 11) == []
    assert isinstance(decoder.error, FrameTooLarge)


# StreamDecoder: behaviour after an error


def test_decoder_frames_before_error_returned() -> None:
    decoder = StreamDecoder(max_frame_bytes=10)
    data = prefix_frame(b"ok") + prefix_frame(b"") + encode_varint(11) + bytes(11)

    assert decoder.feed(data) == [b"ok", b""]
    assert decoder.error is not None


def test_decoder_ignores_input_after_error() -> None:
    decoder = StreamDecoder(max_frame_bytes=10)
    decoder.feed(encode_varint(11))
    first_error = decoder.error
    buffered = decoder.buffered

    assert decoder.feed(prefix_frame(b"valid")) == []
    assert decoder.error is first_error
    assert decoder.buffered == buffered


def test_decoder_error_mid_chunk_stream() -> None:
    decoder = StreamDecoder(max_frame_bytes=10)
    data = prefix_frame(b"a") + prefix_frame(b"b") + encode_varint(1000) + prefix_frame(b"c")

    payloads = feed_in_chunks(decoder, data, 1)

    assert payloads == [b"a", b"b"]
    assert isinstance(decoder.error, FrameTooLarge)
