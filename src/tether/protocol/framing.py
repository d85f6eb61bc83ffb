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
    if value < 0:
        raise ValueError(f"varint must be non-negative, got {value}")
    if value < 128:
        return _SINGLE_BYTES[value]
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

    A partial frame waits in a buffer. While the buffer is shorter than the frame it belongs
    to, `feed` only appends to it, so a frame trickled in byte by byte costs linear time.
    """

    __slots__ = ("_needed", "error", "max_frame_bytes", "pending")

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.error: ProtocolError | None = None
        self.pending = bytearray()
        """Bytes of an incomplete frame, held until the rest arrives. Callers only read it."""
        self._needed = 0  # buffered bytes needed before parsing can make progress

    @property
    def buffered(self) -> int:
        """Number of bytes held while waiting for the rest of a frame."""
        return len(self.pending)

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes read from the stream and return every payload completed by them."""
        if self.error is not None:
            return []
        if self.pending:
            self.pending += data
            if len(self.pending) < self._needed:
                return []
            data = bytes(self.pending)
            self.pending.clear()

        payloads: list[bytes] = []
        position = 0
        end = len(data)
        limit = self.max_frame_bytes
        needed = 0
        while position < end:
            # Fast path: lengths below 128 take a single byte.
            first = data[position]
            if first < 0x80:
                length = first
                body_start = position + 1
            else:
                length, body_start = self._read_long_varint(data, position)
                if self.error is not None:
                    return payloads
                if body_start < 0:
                    needed = end - position + 1  # the prefix is incomplete
                    break
            if length > limit:
                self.error = FrameTooLarge(length, limit)
                return payloads
            body_end = body_start + length
            if body_end > end:
                needed = body_end - position
                break
            payloads.append(data[body_start:body_end])
            position = body_end

        if position < end:
            self.pending += data[position:]
            self._needed = needed
        return payloads

    def _read_long_varint(self, data: bytes, position: int) -> tuple[int, int]:
        """Decode a varint of two or more bytes; return (value, end) or (0, -1) if incomplete.

        A prefix is rejected as soon as the bits read so far exceed the maximum, even before
        it is complete, and a prefix longer than 10 bytes is rejected outright. Padded
        encodings of small lengths (allowed by Protobuf, never written by its encoders) pass.
        """
        value = 0
        shift = 0
        index = position
        end = len(data)
        limit = self.max_frame_bytes
        while index < end:
            byte = data[index]
            value |= (byte & 0x7F) << shift
            index += 1
            if value > limit:
                self.error = FrameTooLarge(value, limit)
                return 0, -1
            if byte < 0x80:
                return value, index
            shift += 7
            if index - position >= MAX_VARINT_BYTES:
                self.error = ProtocolError(Code.PROTOCOL_ERROR, "varint length prefix too long")
                return 0, -1
        return 0, -1
