"""The server side of one tether connection, without I/O.

`ServerProtocol` turns received bytes into validated frames and keeps the connection state.
It never raises for bad input: the first violation is stored in `violation`, the state moves
to CLOSING, and later input is ignored. The gateway reads `violation` after each call and
closes the transport with its code.
"""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.message import DecodeError

from tether.protocol import tether_pb2 as pb
from tether.protocol.codes import Code
from tether.protocol.errors import FrameTooLarge, ProtocolError
from tether.protocol.framing import StreamDecoder, prefix_frame
from tether.protocol.heartbeats import encode_heartbeat_ack
from tether.protocol.states import ALLOWED_FROM_CLIENT, ConnectionState, check_transition

__all__ = ["PROTOCOL_VERSION", "ServerProtocol"]

PROTOCOL_VERSION = 1

_FrameFromString = pb.Frame.FromString
# Looking a member up on an Enum class calls EnumType.__getattr__ on Python 3.11, which costs
# more than the rest of a state check. The heartbeat path compares with this name instead.
_OPEN = ConnectionState.OPEN


class ServerProtocol:
    """Decode, validate and encode the frames of one server-side connection.

    `stream=True` is for TCP (varint-prefixed frames in a byte stream); `stream=False` is for
    WebSocket, where each received message is exactly one frame.
    """

    __slots__ = ("_decoder", "max_frame_bytes", "state", "stream", "violation")

    def __init__(self, *, max_frame_bytes: int, stream: bool) -> None:
        self.max_frame_bytes = max_frame_bytes
        self.stream = stream
        self.state = ConnectionState.AWAITING_CONNECT
        self.violation: ProtocolError | None = None
        self._decoder = StreamDecoder(max_frame_bytes) if stream else None

    def receive_data(self, data: bytes) -> list[pb.Frame]:
        """Return the frames completed by data from the TCP stream, in order."""
        assert self._decoder is not None, "receive_data is for stream transports"
        if self.violation is not None:
            return []
        payloads = self._decoder.feed(data)
        frames = self._parse_all(payloads)
        if self.violation is None and self._decoder.error is not None:
            self._fail(self._decoder.error)
        return frames

    def receive_message(self, data: bytes) -> list[pb.Frame]:
        """Return the frame in one WebSocket message (empty after a violation)."""
        if self.violation is not None:
            return []
        if len(data) > self.max_frame_bytes:
            self._fail(FrameTooLarge(len(data), self.max_frame_bytes))
            return []
        return self._parse_all((data,))

    def receive_heartbeat(self, data: bytes, server_time_ms: int) -> bytes | None:
        """Return the HeartbeatAck for data if it is exactly one heartbeat on an open session.

        data is what receive_data or receive_message would get next. This is their fast path
        for the most frequent frame, recognized by its bytes (`encode_heartbeat_ack`). On a
        match the frame is received, no state changes, and the HeartbeatAck returned is ready
        for the transport. On None nothing was received, and the caller passes data to
        receive_data or receive_message.
        """
        if self.state is not _OPEN or len(data) > self.max_frame_bytes:
            return None
        decoder = self._decoder
        if decoder is None:
            return encode_heartbeat_ack(data, server_time_ms, False)
        if decoder.pending:
            return None  # data continues a partial frame
        return encode_heartbeat_ack(data, server_time_ms, True)

    def encode(self, frame: pb.Frame) -> bytes:
        """Serialize a frame for this connection's transport."""
        payload = frame.SerializeToString()
        return prefix_frame(payload) if self.stream else payload

    def frame_bytes(self, payload: bytes) -> bytes:
        """Wrap an already serialized frame for this connection's transport."""
        return prefix_frame(payload) if self.stream else payload

    def move_to(self, new: ConnectionState) -> None:
        """Change state, raising RuntimeError on a move the state table forbids."""
        if new is self.state:
            return
        check_transition(self.state, new)
        self.state = new

    def _parse_all(
        self,
        payloads: list[bytes] | tuple[bytes, ...],
        decode: Callable[[bytes], pb.Frame] = _FrameFromString,
    ) -> list[pb.Frame]:
        """Decode payloads with decode, which raises DecodeError, and check each frame's kind.

        decode is a parameter, not an attribute, so the binary path keeps a local lookup.
        """
        frames: list[pb.Frame] = []
        for payload in payloads:
            try:
                frame = decode(payload)
            except DecodeError as error:
                reason = error.args[0] if decode is not _FrameFromString and error.args else None
                self._fail(
                    ProtocolError(Code.PROTOCOL_ERROR, reason or "frame is not a valid Protobuf")
                )
                break
            kind = frame.WhichOneof("kind")
            if kind is None:
                self._fail(ProtocolError(Code.PROTOCOL_ERROR, "frame has no known kind"))
                break
            if kind not in ALLOWED_FROM_CLIENT[self.state]:
                self._fail(
                    ProtocolError(
                        Code.PROTOCOL_ERROR,
                        f"frame {kind!r} is not allowed in state {self.state.value}",
                    )
                )
                break
            if kind == "connect":
                # Later frames of the same read are checked against the new state.
                self.move_to(ConnectionState.AUTHENTICATING)
            frames.append(frame)
        return frames

    def _fail(self, error: ProtocolError) -> None:
        self.violation = error
        if self.state is not ConnectionState.CLOSED:
            self.move_to(ConnectionState.CLOSING)
