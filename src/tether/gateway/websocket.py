"""WebSocket transport of the gateway, on picows.

One binary WebSocket message carries one frame, with subprotocol `tether.v1`. picows checks each
WebSocket frame's length from its header against `max_frame_size` before reading the payload;
a message split into fragments is reassembled here up to the same limit. docs/websocket-library.md
records the measurement that chose picows over websockets.

A client that offers `tether.v1.json` instead sends and receives each frame as one text message
of JSON (`tether.protocol.json_frames`), under the same limits. Its connection and listener are
subclasses, so binary connections run exactly the code they ran before.

The upgrade request is checked against the allowed Origins before any per-connection state is
made. With TLS or the PROXY protocol on, each socket starts with a `Preamble`, which hands it to
a picows protocol made here once the client's address is known and the TLS handshake is done.
Once a connection is open, the headers of its upgrade are dropped: docs/benchmarks.md shows
what an idle connection costs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Sequence
from typing import Any

import picows
from multidict import CIMultiDict, CIMultiDictProxy
from picows.picows import WSProtocol  # type: ignore[attr-defined]

from tether.gateway.config import LISTEN_BACKLOG
from tether.gateway.connection import Connection
from tether.gateway.gateway import Gateway
from tether.gateway.preamble import ClientPeer, create_preamble_server, switch_protocol
from tether.gateway.security import TransportSecurity
from tether.protocol.codes import Code
from tether.protocol.errors import ProtocolError
from tether.protocol.json_frames import JSON_SUBPROTOCOL, JsonServerProtocol

__all__ = [
    "JSON_SUBPROTOCOL",
    "SUBPROTOCOL",
    "WsConnection",
    "WsJsonConnection",
    "start_websocket_server",
]

logger = logging.getLogger("tether.gateway.websocket")

SUBPROTOCOL = "tether.v1"
_SUBPROTOCOLS = (SUBPROTOCOL, JSON_SUBPROTOCOL)
_UNSUPPORTED_SUBPROTOCOL = (
    f"unsupported subprotocol; offer {SUBPROTOCOL} or {JSON_SUBPROTOCOL}".encode()
)

_BINARY = picows.WSMsgType.BINARY
_TEXT = picows.WSMsgType.TEXT
_CONTINUATION = picows.WSMsgType.CONTINUATION
_CLOSE = picows.WSMsgType.CLOSE
_PING = picows.WSMsgType.PING
_PONG = picows.WSMsgType.PONG
_NO_CODE = picows.WSCloseCode.NO_INFO
# Fragments of one message accepted before the sender is closed, whatever their size: each
# costs a Python call, so empty fragments must be bounded too.
MAX_FRAGMENTS = 64
# Measured in docs/websocket-library.md: picows's default 16 KiB read buffer per connection
# dominated idle memory. picows 2.3 raises any smaller size to 2048.
_READ_BUFFER_BYTES = 2048
# Headers of a finished upgrade: empty and read-only, shared by every connection.
_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


class WsConnection(Connection):
    """Connection over WebSocket: each queued item is one binary message."""

    __slots__ = ("fragment_bytes", "fragments", "transport")

    transport_name = "ws"
    message_type = _BINARY  # of every message this connection sends

    def __init__(self, gateway: Gateway, connection_id: str) -> None:
        super().__init__(gateway, connection_id, stream=False)
        self.transport: Any = None
        self.fragments: list[bytes] | None = None
        self.fragment_bytes = 0

    def write_chunks(self, chunks: Sequence[bytes]) -> None:
        send = self.transport.send
        message_type = self.message_type
        # NOTE: picows writes each message separately; uvloop still sends them in one
        # syscall when the socket buffer is already non-empty, but not otherwise.
        for chunk in chunks:
            send(message_type, chunk)

    def write_now(self, data: bytes) -> int:
        transport = self.transport
        transport.send(self.message_type, data)
        return int(transport.underlying_transport.get_write_buffer_size())

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


class WsJsonConnection(WsConnection):
    """Connection over WebSocket with subprotocol `tether.v1.json`: one text message a frame."""

    __slots__ = ()

    message_type = _TEXT

    def __init__(self, gateway: Gateway, connection_id: str) -> None:
        super().__init__(gateway, connection_id)
        self.protocol = JsonServerProtocol(max_frame_bytes=gateway.config.max_frame_bytes)


class _Listener(picows.WSListener):
    """picows callbacks for one connection, forwarded to its WsConnection."""

    __slots__ = ("connection", "forwarded", "peer", "security")

    def __init__(
        self,
        connection: WsConnection,
        security: TransportSecurity,
        peer: ClientPeer | None,
        forwarded: list[str] | None,
    ) -> None:
        """Wrap connection; peer comes from a preamble, forwarded from X-Forwarded-For."""
        super().__init__()
        self.connection = connection
        self.security = security
        self.peer = peer
        self.forwarded = forwarded

    def on_ws_connected(self, transport: Any) -> None:
        _release_upgrade_headers(transport)
        connection = self.connection
        connection.transport = transport
        peer = self.peer
        accepted_at = None
        via = None
        if peer is None:
            address = transport.underlying_transport.get_extra_info("peername")
        else:
            address, via, accepted_at = peer.address, peer.via, peer.accepted_at
        if self.forwarded:
            host = str(address[0]) if isinstance(address, tuple) else str(address)
            client = self.security.forwarded_client(host, self.forwarded)
            if client is not None:
                address, via = client, address
        self.peer = self.forwarded = None
        connection.gateway.connection_made(connection, address, accepted_at=accepted_at, via=via)

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        connection = self.connection
        # Read once: each read of msg_type makes a Python enum member (picows 2.3).
        message_type = frame.msg_type
        if message_type is _BINARY and frame.fin and connection.fragments is None:
            payload = frame.get_payload_as_bytes()  # the usual case: one message, one frame
        elif message_type is _BINARY or message_type is _CONTINUATION:
            payload = self._assemble(frame, message_type)
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
        protocol = connection.protocol
        ack = protocol.receive_heartbeat(payload, int(time.time() * 1000))
        if ack is not None:
            gateway.send_heartbeat_ack(connection, ack)
            return
        gateway.heard(connection)
        frames = protocol.receive_message(payload)
        if frames:
            gateway.handle_frames(connection, frames)
        if protocol.violation is not None:
            gateway.protocol_violation(connection)

    def on_ws_disconnected(self, transport: Any) -> None:
        connection = self.connection
        connection.gateway.connection_lost(connection, None)
        connection.transport = None  # break the reference cycle for reference counting

    def _assemble(self, frame: Any, message_type: Any) -> bytes | None:
        """Return a complete message payload, or None while fragments are still arriving."""
        connection = self.connection
        fragments = connection.fragments
        starts_message = message_type is not _CONTINUATION
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


class _JsonListener(_Listener):
    """picows callbacks for a `tether.v1.json` connection: text messages carry the frames."""

    __slots__ = ()

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        message_type = frame.msg_type
        if message_type is _BINARY:
            self._fail(Code.PROTOCOL_ERROR, "expected a text WebSocket message on tether.v1.json")
            return
        if message_type is not _TEXT and message_type is not _CONTINUATION:
            super().on_ws_frame(transport, frame)  # ping, pong and close are handled alike
            return
        payload = self._assemble(frame, message_type)
        if payload is None:
            return
        # The same steps as for a binary message, which keeps its own copy for speed.
        connection = self.connection
        gateway = connection.gateway
        gateway.heard(connection)
        frames = connection.protocol.receive_message(payload)
        if frames:
            gateway.handle_frames(connection, frames)
        if connection.protocol.violation is not None:
            gateway.protocol_violation(connection)


def _release_upgrade_headers(transport: Any) -> None:
    """Drop the headers of the upgrade request and response.

    picows 2.3 keeps both on the transport (`request`, `response`) while the connection is
    open, but the server side never reads them after the upgrade. Dropping them saved 2.9 KB of
    the 12 KB of resident memory that an idle connection used (docs/benchmarks.md). The request
    keeps its method, path and version.
    """
    transport.request.headers = _NO_HEADERS
    transport.response.headers = _NO_HEADERS


def _picows_logger() -> logging.LoggerAdapter[logging.Logger]:
    """Return the logger for picows, quiet by default: it logs every connection at INFO.

    It is an adapter, not a `logging.Logger`, because picows 2.3 makes a child Logger for every
    connection when given a Logger. Each costs 0.6 KB of resident memory (docs/benchmarks.md).
    An adapter is used as it is.
    """
    picows_logger = logging.getLogger("tether.gateway.websocket.picows")
    if picows_logger.level == logging.NOTSET:
        picows_logger.setLevel(logging.WARNING)
    return logging.LoggerAdapter(picows_logger)


def _close_code(code: int) -> Any:
    """Return the picows close code for a tether code (picows accepts its enum only)."""
    try:
        return picows.WSCloseCode(code)
    except ValueError:
        return code


async def start_websocket_server(
    gateway: Gateway, host: str, port: int, security: TransportSecurity | None = None
) -> asyncio.Server:
    """Listen for WebSocket clients on host:port at the gateway's configured path.

    security defaults to the one built from the gateway's config, which loads the TLS
    certificate if one is set.
    """
    if security is None:
        security = TransportSecurity.from_config(gateway.config.transport_security)
    config = gateway.config
    route = functools.partial(_route, gateway, security, config.ws_path.encode())
    picows_logger = _picows_logger()
    if not security.needs_preamble:
        return await picows.ws_create_server(
            route,
            host,
            port,
            max_frame_size=config.max_frame_bytes,
            read_buffer_init_size=_READ_BUFFER_BYTES,
            # Measured in docs/websocket-library.md: uvloop's transports used less memory
            # than aiofastnet's.
            use_aiofastnet=False,
            websocket_handshake_timeout=config.connect_timeout,
            logger_name=picows_logger,
            backlog=LISTEN_BACKLOG,
            reuse_port=config.reuse_port,
        )

    def hand_over(transport: asyncio.BaseTransport, peer: ClientPeer) -> asyncio.BaseProtocol:
        # The upgrade request must arrive within what is left of the handshake time.
        loop = asyncio.get_running_loop()
        remaining = peer.accepted_at + config.connect_timeout - loop.time()
        protocol = _new_ws_protocol(
            functools.partial(route, peer=peer), gateway, max(remaining, 0.001), picows_logger
        )
        switch_protocol(transport, protocol)
        protocol.connection_made(transport)
        return protocol  # type: ignore[no-any-return]

    return await create_preamble_server(gateway, security, hand_over, host, port)


def _route(
    gateway: Gateway,
    security: TransportSecurity,
    path: bytes,
    request: Any,
    peer: ClientPeer | None = None,
) -> Any:
    """Route one upgrade request: reject it with 404, 403 or 400 before any state is made, or
    accept it with a new connection."""
    if request.path.split(b"?", 1)[0] != path:
        return None  # picows replies 404 Not Found
    origin = request.headers.get("Origin")
    if not security.origin_allowed(origin):
        # Counted, not logged one by one: a page opening sockets in a loop would flood the log.
        gateway.count_rejection("WebSocket origin not allowed")
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("rejected WebSocket upgrade from origin %r", origin[:200])
        return picows.WSUpgradeResponseWithListener(
            picows.WSUpgradeResponse.create_error_response(403, b"origin not allowed"), None
        )
    offered = request.headers.get("Sec-WebSocket-Protocol")
    headers = {}
    chosen = SUBPROTOCOL
    if offered is not None:
        # The first name the client lists that this server speaks (RFC 6455, section 4.2.2).
        names = [name.strip() for name in offered.split(",")]
        chosen = next((name for name in names if name in _SUBPROTOCOLS), "")
        if not chosen:
            return picows.WSUpgradeResponseWithListener(
                picows.WSUpgradeResponse.create_error_response(400, _UNSUPPORTED_SUBPROTOCOL),
                None,
            )
        headers["Sec-WebSocket-Protocol"] = chosen
    forwarded = None
    if security.config.trusted_proxies:
        forwarded = request.headers.getall("X-Forwarded-For", None)
    connection_id = gateway.new_connection_id()
    if chosen == JSON_SUBPROTOCOL:
        connection: WsConnection = WsJsonConnection(gateway, connection_id)
        listener: _Listener = _JsonListener(connection, security, peer, forwarded)
    else:
        connection = WsConnection(gateway, connection_id)
        listener = _Listener(connection, security, peer, forwarded)
    return picows.WSUpgradeResponseWithListener(
        picows.WSUpgradeResponse.create_101_response(extra_headers=headers), listener
    )


def _new_ws_protocol(
    route: Any,
    gateway: Gateway,
    handshake_timeout: float,
    picows_logger: logging.LoggerAdapter[logging.Logger],
) -> Any:
    """Return a picows server protocol for one connection, set up as ws_create_server does.

    NOTE: picows 2.x has no public way to serve a socket that another protocol read from
    first, so this calls its WSProtocol constructor with the arguments ws_create_server
    passes (picows 2.3.1, api.py). A picows release that changes them fails the WebSocket
    tests with TLS or the PROXY protocol.
    """
    return WSProtocol(
        None,  # host and port: client side only
        None,  # path: client side only
        False,  # is_client_side
        route,
        picows_logger,
        True,  # disconnect_on_exception
        handshake_timeout,
        False,  # enable_auto_ping: the gateway's sweep finds silent clients
        20.0,  # auto_ping_idle_timeout, unused
        20.0,  # auto_ping_reply_timeout, unused
        picows.WSAutoPingStrategy.PING_WHEN_IDLE,
        True,  # enable_auto_pong
        gateway.config.max_frame_bytes,
        None,  # extra_headers: client side only
        _READ_BUFFER_BYTES,
    )
