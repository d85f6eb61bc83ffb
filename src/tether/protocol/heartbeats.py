"""Heartbeats recognized by their bytes, and their HeartbeatAck built without Protobuf objects.

Heartbeats are most of what a gateway receives, and parsing one into Protobuf objects and
building its HeartbeatAck from them cost more than the rest of its path. A heartbeat that a
client's Protobuf library encoded is always the same short byte pattern, so
`encode_heartbeat_ack` recognizes it by its bytes and writes the HeartbeatAck byte for byte as
Protobuf would. Any other encoding of a heartbeat (a nonce of 2**63 or more, unknown fields, a
padded varint) is not matched, and the caller decodes it with Protobuf as any other frame.

Wire format (https://protobuf.dev/programming-guides/encoding/): a field is a key byte,
(field number << 3) | wire type, then its value. A varint is little-endian base 128 with the
high bit set on every byte but the last. Proto3 leaves out fields whose value is zero.
"""

from __future__ import annotations

import functools

from tether.protocol.framing import encode_varint

__all__ = ["encode_heartbeat_ack"]

_HEARTBEAT_KEY = 3 << 3 | 2  # Frame.heartbeat: field 3, length-delimited
_HEARTBEAT_ACK_KEY = 4 << 3 | 2  # Frame.heartbeat_ack: field 4, length-delimited
_NONCE_KEY = 1 << 3 | 0  # Heartbeat.nonce and HeartbeatAck.nonce: field 1, varint
_SERVER_TIME_KEY = 2 << 3 | 0  # HeartbeatAck.server_time_ms: field 2, varint

# Maximum length of a matched nonce varint: 9 bytes carry 63 bits. Larger nonces take the
# Protobuf path.
_MAX_NONCE_VARINT_BYTES = 9
# Length prefix, Frame key, Heartbeat length, nonce key and the longest nonce varint.
_MAX_HEARTBEAT_BYTES = 4 + _MAX_NONCE_VARINT_BYTES
_UINT64_MASK = (1 << 64) - 1  # Protobuf writes a negative int64 as its 64-bit two's complement
_HIGH_BYTES = bytes(range(0x80, 0x100))
_LAST_VARINT_BYTES = frozenset(bytes((value,)) for value in range(1, 0x80))  # 0 would pad


def _heartbeat_heads(prefixed: bool) -> list[bytes]:
    """Return, by the size of a matched heartbeat frame, the bytes it starts with.

    These are the optional length prefix, the Frame key, the Heartbeat's length and, unless
    the Heartbeat is empty, the nonce key. Sizes that no matched frame has get bytes longer
    than the size, which nothing of that size starts with.
    """
    prefix_bytes = 1 if prefixed else 0
    no_match = bytes(32)
    heads = [no_match] * (_MAX_HEARTBEAT_BYTES + 1)
    for varint_bytes in range(_MAX_NONCE_VARINT_BYTES + 1):
        # 0 bytes: an empty Heartbeat, for a nonce of 0, which Protobuf leaves out.
        message_length = 1 + varint_bytes if varint_bytes else 0
        head = bytes((_HEARTBEAT_KEY, message_length))
        if varint_bytes:
            head += bytes((_NONCE_KEY,))
        if prefixed:
            head = bytes((2 + message_length,)) + head
        heads[prefix_bytes + 2 + message_length] = head
    return heads


# By the size of the data: what a heartbeat of that size starts with. Each varint length
# prefix of a matched frame is a single byte, because the frame is under 128 bytes.
_HEADS = _heartbeat_heads(False)
_HEADS_PREFIXED = _heartbeat_heads(True)

# By the length of the HeartbeatAck message (at most 10 bytes of nonce field and 11 of time
# field): the bytes before the nonce field of the HeartbeatAck frame, the Frame key and message
# length, and for a stream first the frame's length prefix.
_ACK_HEADS = [bytes((_HEARTBEAT_ACK_KEY, length)) for length in range(22)]
_ACK_HEADS_PREFIXED = [bytes((length + 2, _HEARTBEAT_ACK_KEY, length)) for length in range(22)]
# By the low 7 bits of a server_time_ms of 128 or more: its key and first varint byte.
_TIME_FIELD_STARTS = [bytes((_SERVER_TIME_KEY, bits | 0x80)) for bits in range(0x80)]


def encode_heartbeat_ack(data: bytes, server_time_ms: int, prefixed: bool) -> bytes | None:
    """Return the encoded HeartbeatAck frame for the heartbeat frame in data, or None.

    The frame is Frame(heartbeat_ack=HeartbeatAck(nonce, server_time_ms)) with the
    heartbeat's nonce, byte for byte as Protobuf encodes it. prefixed=True is for a TCP
    stream: data must be one frame with its varint length prefix, and the HeartbeatAck
    frame gets one too.

    Only a Frame that contains nothing but the heartbeat, with nothing but a nonce below
    2**63 and no padding in its varint, is matched. Every other input returns None, also a
    valid heartbeat in another encoding, and the caller decodes it with Protobuf.
    """
    size = len(data)
    if size > _MAX_HEARTBEAT_BYTES:
        return None
    if prefixed:
        if not data.startswith(_HEADS_PREFIXED[size]):
            return None
        nonce_field = data[3:]
        ack_heads = _ACK_HEADS_PREFIXED
    else:
        if not data.startswith(_HEADS[size]):
            return None
        nonce_field = data[2:]
        ack_heads = _ACK_HEADS
    # A varint has the high bit set on every byte but the last. The nonce field of a
    # HeartbeatAck is the same as that of a Heartbeat, field 1, so it is copied as it is.
    if nonce_field and nonce_field[1:].lstrip(_HIGH_BYTES) not in _LAST_VARINT_BYTES:
        return None

    if server_time_ms >= 0x80:
        # The low 7 bits make the first varint byte. The rest changes every 128 ms, so it
        # is cached.
        time_field = _TIME_FIELD_STARTS[server_time_ms & 0x7F] + _cached_varint(server_time_ms >> 7)
    elif server_time_ms:
        time_field = bytes((_SERVER_TIME_KEY,)) + encode_varint(server_time_ms & _UINT64_MASK)
    else:
        time_field = b""  # Protobuf leaves out a zero field
    return ack_heads[len(nonce_field) + len(time_field)] + nonce_field + time_field


@functools.lru_cache(maxsize=2)
def _cached_varint(value: int) -> bytes:
    return encode_varint(value)
