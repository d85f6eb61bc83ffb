"""WebSocket transport of the gateway, on picows.

One binary WebSocket message carries one frame, with subprotocol `tether.v1`. picows checks each
WebSocket frame's length from its header against `max_frame_size` before reading the payload;
a message split into fragments is reassembled here up to the same limit. docs/websocket-library.md
records the measurement that chose picows over websockets.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import picows

from tether.gateway.connection import Connection
from tether.gateway.gateway import Gateway
from tether.protocol.codes import Code
from tether.protocol.errors import ProtocolError

__all__ = ["SUBPROTOCOL", "WsConnection", "start_websocket_server"]

logger = logging.getLogger("tether.gateway.websocket")

SUBPROTOCOL = "tether.v1"

_BINARY = picows.WSMsgType.BINARY
_CONTINUATION = picows.WSMsgType.CONTINUATION
_CLOSE = picows.WSMsgType.CLOSE
_PING = picows.WSMsgType.PING
_PONG = picows.WSMsgType.PONG
_NO_CODE = picows.WSCloseCode.NO_INFO
# Fragments of one message accepted before the sender is closed, whatever their size: each
# costs a Python call, so empty fragments must be bounded too.
MAX_FRAGMENTS = 64


class WsConnection(Connection):
    """Connection over WebSocket: each queued item is one binary message."""

    __slots__ = ("fragment_bytes", "fragments", "transport")

    transport_name = "ws"

    def __init__(self, gateway: Gateway, connection_id: str) -> None:
        super().__init__(gateway, connection_id, stream=False)
        self.transport: Any = None
        self.fragments: list[bytes] | None = None
        self.fragment_bytes = 0

    def write_chunks(self, chunks: list[bytes]) -> None:
        send = self.transport.send
        # NOTE: picows writes each message separately; uvloop still sends them in one
        # syscall when the socket buffer is already non-empty, but not otherwise.
        for chunk in chunks:
            send(_BINARY, chunk)

    def write_buffer_size(self) -> int:
        transport = self.transport
        if transport is None:
            return 0
        return int(transport.underlying_transport.get_write_buffer_size())

    def close_transport(self, *, abort: bool, code: int = 1000) -> None:
        transport = self.transport
        if transport is None:
            return
        if abort:
            transport.underlying_transport.abort()
            return
        try:
            transport.send_close(_close_code(code))
        except Exception as error:  # the peer may be gone already
            logger.debug("send_close failed for %s: %s", self.describe(), error)
        transport.disconnect(graceful=True)


class _Listener(picows.WSListener):
    """picows callbacks for one connection, forwarded to its WsConnection."""

    __slots__ = ("connection",)

    def __init__(self, connection: WsConnection) -> None:
        super().__init__()
        self.connection = connection

    def on_ws_connected(self, transport: Any) -> None:
        connection = self.connection
        connection.transport = transport
        peer = transport.underlying_transport.get_extra_info("peername")
        connection.gateway.connection_made(connection, peer)

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        connection = self.connection
        message_type = frame.msg_type
        if message_type is _BINARY or message_type is _CONTINUATION:
            payload = self._assemble(frame)
            if payload is None:
                return
        elif message_type is _PING:
            transport.send_pong(frame.get_payload_as_bytes())
            connection.gateway.heard(connection)
            return
        elif message_type is _PONG:
            connection.gateway.heard(connection)  # unsolicited pongs are allowed (RFC 6455 5.5.3)
            return
        elif message_type is _CLOSE:
            code = frame.get_close_code()
            # A Close without a code gets 1000 back (RFC 6455 7.4.1), because 0 is not a code.
            transport.send_close(picows.WSCloseCode.OK if code is _NO_CODE else code)
            transport.disconnect()
            return
        else:
            connection.protocol.violation = ProtocolError(
                Code.PROTOCOL_ERROR, f"expected a binary WebSocket message, got {message_type.name}"
            )
            connection.gateway.protocol_violation(connection)
            return

        gateway = connection.gateway
        gateway.heard(connection)
        frames = connection.protocol.receive_message(payload)
        if frames:
            gateway.handle_frames(connection, frames)
        if connection.protocol.violation is not None:
            gateway.protocol_violation(connection)

    def on_ws_disconnected(self, transport: Any) -> None:
        connection = self.connection
        connection.gateway.connection_lost(connection, None)
        connection.transport = None  # break the reference cycle for reference counting

    def _assemble(self, frame: Any) -> bytes | None:
        """Return a complete message payload, or None while fragments are still arriving."""
        connection = self.connection
        fragments = connection.fragments
        starts_message = frame.msg_type is _BINARY
        if starts_message and frame.fin and fragments is None:
            payload: bytes = frame.get_payload_as_bytes()  # the usual case: one message, one frame
            return payload
        if starts_message == (fragments is not None):
            # A continuation with no message started, or a new message inside a fragmented one.
            self._fail(Code.PROTOCOL_ERROR, "invalid sequence of WebSocket fragments")
            return None
        if fragments is None:
            fragments = connection.fragments = []
            connection.fragment_bytes = 0
        part = frame.get_payload_as_bytes()
        fragments.append(part)
        connection.fragment_bytes += len(part)
        if connection.fragment_bytes > connection.protocol.max_frame_bytes:
            self._fail(
                Code.FRAME_TOO_LARGE,
                f"fragmented message of over {connection.fragment_bytes} bytes",
            )
            return None
        if len(fragments) > MAX_FRAGMENTS:
            self._fail(Code.PROTOCOL_ERROR, f"message split into over {MAX_FRAGMENTS} fragments")
            return None
        if not frame.fin:
            return None
        connection.fragments = None
        return b"".join(fragments)

    def _fail(self, code: Code, reason: str) -> None:
        connection = self.connection
        connection.fragments = None
        connection.protocol.violation = ProtocolError(code, reason)
        connection.gateway.protocol_violation(connection)


def _picows_logger() -> logging.Logger:
    """Return the logger for picows, quiet by default: it logs every connection at INFO."""
    picows_logger = logging.getLogger("tether.gateway.websocket.picows")
    if picows_logger.level == logging.NOTSET:
        picows_logger.setLevel(logging.WARNING)
    return picows_logger


def _close_code(code: int) -> Any:
    """Return the picows close code for a tether code (picows accepts its enum only)."""
    try:
        return picows.WSCloseCode(code)
    except ValueError:
        return code


async def start_websocket_server(gateway: Gateway, host: str, port: int) -> asyncio.Server:
    """Listen for WebSocket clients on host:port at the gateway's configured path."""
    path = gateway.config.ws_path.encode()

    def route(request: Any) -> Any:
        if request.path.split(b"?", 1)[0] != path:
            return None  # picows replies 404 Not Found
        offered = request.headers.get("Sec-WebSocket-Protocol")
        headers = {}
        if offered is not None:
            names = [name.strip() for name in offered.split(",")]
            if SUBPROTOCOL not in names:
                return picows.WSUpgradeResponseWithListener(
                    picows.WSUpgradeResponse.create_error_response(
                        400, f"unsupported subprotocol; offer {SUBPROTOCOL}".encode()
                    ),
                    None,
                )
            headers["Sec-WebSocket-Protocol"] = SUBPROTOCOL
        connection = WsConnection(gateway, gateway.new_connection_id())
        return picows.WSUpgradeResponseWithListener(
            picows.WSUpgradeResponse.create_101_response(extra_headers=headers),
            _Listener(connection),
        )

    return await picows.ws_create_server(
        route,
        host,
        port,
        max_frame_size=gateway.config.max_frame_bytes,
        # Measured in docs/websocket-library.md: picows's default 16 KiB read buffer per
        # connection dominated idle memory, and uvloop's transports used less than aiofastnet's.
        read_buffer_init_size=2048,
        use_aiofastnet=False,
        websocket_handshake_timeout=gateway.config.connect_timeout,
        logger_name=_picows_logger(),
    )
