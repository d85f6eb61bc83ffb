"""Length-delimited framing for the TCP transport, without I/O.

Each frame on a TCP stream is a base-128 varint length followed by that many bytes of an
encoded `tether.v1.Frame`: the format of Protobuf's `writeDelimitedTo` and
`parseDelimitedFrom`. WebSocket carries one frame per binary message and needs no prefix.

`StreamDecoder` checks every length against the maximum before it buffers the body, so a
hostile prefix costs at most the few bytes of the prefix itself.
"""

from __future__ import annotations

from tether.protocol.codes import Code
from tether.protocol.errors import FrameTooLarge, ProtocolError

__all__ = ["MAX_VARINT_BYTES", "StreamDecoder", "encode_varint", "prefix_frame"]

# A varint of a 64-bit integer takes at most 10 bytes.
MAX_VARINT_BYTES = 10

_SINGLE_BYTES = [bytes((value,)) for value in range(128)]


def encode_varint(value: int) -> bytes:
    """Encode a non-negative integer as a Protobuf base-128 varint."""
    if value < 128:
        return _SINGLE_BYTES[value]
    if value < 0:
        raise ValueError(f"varint must be non-negative, got {value}")
    out = bytearray()
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def prefix_frame(payload: bytes) -> bytes:
    """Return payload preceded by its varint length, ready for a TCP stream."""
    return encode_varint(len(payload)) + payload


class StreamDecoder:
    """Split a TCP byte stream into frame payloads.

    `feed` returns the complete payloads found so far. After a violation it records the error
    in `error`, returns the payloads that came before it and ignores all later input.
    """

    __slots__ = ("_buffer", "error", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.error: ProtocolError | None = None
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Number of bytes held while waiting for the rest of a frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes read from the stream and return every payload completed by them."""
        if self.error is not None:
            return []
        if self._buffer:
            self._buffer += data
            data = bytes(self._buffer)
            self._buffer.clear()

        payloads: list[bytes] = []
        position = 0
        end = len(data)
        limit = self.max_frame_bytes
        while position < end:
            # Fast path: lengths below 128 take a single byte.
            first = data[position]
            if first < 0x80:
                length = first
                body_start = position + 1
            else:
                length, body_start = self._read_long_varint(data, position)
                if body_start < 0:
                    break  # the prefix is incomplete, or an error was recorded
            if length > limit:
                self.error = FrameTooLarge(length, limit)
                return payloads
            body_end = body_start + length
            if body_end > end:
                break
            payloads.append(data[body_start:body_end])
            position = body_end

        if position < end:
            self._buffer += data[position:]
        return payloads

    def _read_long_varint(self, data: bytes, position: int) -> tuple[int, int]:
        """Decode a varint of two or more bytes; return (value, end) or (0, -1) if incomplete.

        An incomplete prefix whose bytes so far already prove a value above the maximum is
        rejected at once, so a client cannot hold the decoder waiting on a huge length.
        """
        value = 0
        shift = 0
        index = position
        end = len(data)
        while index < end:
            byte = data[index]
            value |= (byte & 0x7F) << shift
            index += 1
            if byte < 0x80:
                return value, index
            shift += 7
            if index - position >= MAX_VARINT_BYTES:
                self.error = ProtocolError(Code.PROTOCOL_ERROR, "varint length prefix too long")
                return 0, -1
            # More bytes follow, so the final value is at least 2**shift.
            if (1 << shift) > self.max_frame_bytes:
                self.error = FrameTooLarge(1 << shift, self.max_frame_bytes)
                return 0, -1
        return 0, -1
