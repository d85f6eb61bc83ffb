"""Frames as JSON text, for the `tether.v1.json` WebSocket subprotocol, without I/O.

A client that offers `tether.v1.json` sends and receives each frame as one WebSocket text
message. The message contains Protobuf's canonical JSON mapping of `tether.v1.Frame`
(https://protobuf.dev/programming-guides/json/). Field names are lowerCamelCase (the .proto's
snake_case names are accepted too), enum values are names, 64-bit integers are strings and
bytes are base64. Browsers show such frames as text in their developer tools.

`JsonServerProtocol` is `ServerProtocol` with a JSON decoder and encoder; every rule of the
protocol (frame kinds per state, size limit, violations) stays the same. Parsing is strict:
unknown fields, unknown enum names, duplicate keys, wrong types and numbers outside a field's
range are protocol violations, like undecodable Protobuf. The JSON mapping in
`google.protobuf.json_format` is pure Python and much slower than the binary codec
(docs/protocol.md, section 1.3, gives the measured cost), so binary clients never touch this
module.
"""

from __future__ import annotations

import json
from typing import ClassVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError

from tether.protocol import tether_pb2 as pb
from tether.protocol.connection import ServerProtocol
from tether.protocol.errors import FrameTooLarge

__all__ = [
    "JSON_SUBPROTOCOL",
    "JsonFrameError",
    "JsonServerProtocol",
    "frame_from_json",
    "frame_to_json",
]

JSON_SUBPROTOCOL = "tether.v1.json"
"""WebSocket subprotocol name of the JSON form of version 1."""

# The Frame schema nests messages 3 deep (Frame, Deliver, Message), so deeper input is hostile.
# json_format stops at this depth. The json module stops much deeper arrays and objects with
# RecursionError, which json_format turns into a ParseError too.
_MAX_DEPTH = 16
_REASON_CHARACTERS = 120  # a parse error quotes input; the sender sees this much of it


class JsonFrameError(DecodeError):
    """A text message that is not a valid JSON `tether.v1.Frame`; args[0] is the reason."""


def frame_from_json(data: bytes) -> pb.Frame:
    """Return the frame in one text message, or raise JsonFrameError saying why not.

    data is the message's raw payload: it must be UTF-8 (RFC 6455, section 8.1) holding one
    JSON object.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise JsonFrameError(f"text message is not UTF-8 (byte {error.start})") from None
    if not text.lstrip().startswith("{"):
        raise JsonFrameError("a tether.v1.json message must be a JSON object")
    frame = pb.Frame()
    try:
        json_format.Parse(text, frame, max_recursion_depth=_MAX_DEPTH)
    except (json_format.ParseError, RecursionError, ValueError, TypeError) as error:
        reason = str(error)[:_REASON_CHARACTERS]
        raise JsonFrameError(f"frame is not valid tether.v1 JSON: {reason}") from None
    return frame


def frame_to_json(frame: pb.Frame) -> bytes:
    """Return the canonical JSON text of a frame, UTF-8 encoded, without spaces."""
    value = json_format.MessageToDict(frame)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


class JsonServerProtocol(ServerProtocol):
    """`ServerProtocol` for a `tether.v1.json` WebSocket: each message is one JSON frame."""

    __slots__ = ()

    # The last frame converted for `frame_bytes`: a delivery to many JSON connections (the
    # devices of a user, a group's members) arrives as the same bytes object for each.
    _last_payload: ClassVar[bytes] = b""
    _last_json: ClassVar[bytes] = b""

    def __init__(self, *, max_frame_bytes: int) -> None:
        super().__init__(max_frame_bytes=max_frame_bytes, stream=False)

    def receive_message(self, data: bytes) -> list[pb.Frame]:
        """Return the frame in one text message (empty after a violation).

        The limit is max_frame_bytes of JSON text, the same number as for binary frames.
        """
        if self.violation is not None:
            return []
        if len(data) > self.max_frame_bytes:
            self._fail(FrameTooLarge(len(data), self.max_frame_bytes))
            return []
        return self._parse_all((data,), frame_from_json)

    def encode(self, frame: pb.Frame) -> bytes:
        """Return the JSON text of a frame."""
        return frame_to_json(frame)

    def frame_bytes(self, payload: bytes) -> bytes:
        """Return the JSON text of a frame serialized as binary Protobuf."""
        cls = JsonServerProtocol
        if payload is cls._last_payload:
            return cls._last_json
        text = frame_to_json(pb.Frame.FromString(payload))  # tether's own bus: always valid
        cls._last_payload, cls._last_json = payload, text
        return text
