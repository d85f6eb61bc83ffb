"""Client transports: TCP with varint-delimited frames, and WebSocket with one frame per message.

URL schemes: `tcp://host:port`, `tls://host:port` (TCP inside TLS), `ws://host:port/path` and
`wss://host:port/path`. TLS connections verify the server's certificate and host name with the
given `ssl.SSLContext`, or with the system's trusted certificates when none is given.

Both expose the same three calls to the client: `send(payload)`, `receive()` (the next frame
payload, or None once the connection is gone) and `close()`. Incoming frames wait in a bounded
buffer; when it fills, the transport stops reading from the socket, so a client that does not
consume events slows the server down instead of growing without bound.

A WebSocket may speak `tether.v1.json` instead of `tether.v1` (`json_frames=True`): each frame
travels as Protobuf's canonical JSON in a text message, readable in a packet capture or a
proxy's log. The transport converts at its edge, so the client still handles serialized
Protobuf frames; the conversion costs far more CPU than the binary form, so it is for
debugging and tools, not for load.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from typing import Any
from urllib.parse import SplitResult, urlsplit

import picows
from google.protobuf import json_format

from tether.protocol import tether_pb2 as pb
from tether.protocol.framing import StreamDecoder, prefix_frame
from tether.protocol.json_frames import JSON_SUBPROTOCOL, frame_to_json

__all__ = [
    "JSON_SUBPROTOCOL",
    "SUBPROTOCOL",
    "TLS_SCHEMES",
    "WS_SCHEMES",
    "ClientTransport",
    "check_url",
    "open_transport",
]

TLS_SCHEMES = frozenset({"tls", "wss"})
"""URL schemes whose connections use TLS."""
WS_SCHEMES = frozenset({"ws", "wss"})
"""URL schemes of WebSocket connections."""
SUBPROTOCOL = "tether.v1"
"""WebSocket subprotocol of binary frames."""

MAX_INCOMING_FRAME = 16 * 1024 * 1024
_READ_SIZE = 65_536
_BUFFERED_FRAMES = 1024  # frames read ahead of the consumer before reading pauses


class ClientTransport:
    """One connection to a gateway."""

    async def send(self, payload: bytes) -> None:
        raise NotImplementedError

    async def receive(self) -> bytes | None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _TcpTransport(ClientTransport):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._decoder = StreamDecoder(MAX_INCOMING_FRAME)
        self._frames: deque[bytes] = deque()

    async def send(self, payload: bytes) -> None:
        self._writer.write(prefix_frame(payload))
        await self._writer.drain()

    async def receive(self) -> bytes | None:
        while not self._frames:
            try:
                data = await self._reader.read(_READ_SIZE)
            except (ConnectionError, OSError):
                return None
            if not data:
                return None
            self._frames.extend(self._decoder.feed(data))
            if self._decoder.error is not None:
                self.close()
                return None
        return self._frames.popleft()

    def close(self) -> None:
        self._writer.close()


class _WsListener(picows.WSListener):
    def __init__(self, message_type: picows.WSMsgType) -> None:
        super().__init__()
        self.message_type = message_type  # BINARY for tether.v1, TEXT for tether.v1.json
        self.frames: deque[bytes] = deque()
        self.closed = False
        self.wakeup: asyncio.Event = asyncio.Event()
        self.transport: Any = None
        self.paused = False

    def on_ws_connected(self, transport: Any) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        if frame.msg_type == self.message_type:
            self.frames.append(frame.get_payload_as_bytes())
            if len(self.frames) >= _BUFFERED_FRAMES and not self.paused:
                transport.underlying_transport.pause_reading()
                self.paused = True
            self.wakeup.set()
        elif frame.msg_type == picows.WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
        elif frame.msg_type == picows.WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())

    def on_ws_disconnected(self, transport: Any) -> None:
        self.closed = True
        self.wakeup.set()


class _WsTransport(ClientTransport):
    def __init__(self, transport: Any, listener: _WsListener) -> None:
        self._transport = transport
        self._listener = listener

    async def send(self, payload: bytes) -> None:
        if self._listener.closed:
            raise ConnectionError("WebSocket is closed")
        self._transport.send(picows.WSMsgType.BINARY, payload)

    async def receive(self) -> bytes | None:
        listener = self._listener
        while not listener.frames:
            if listener.closed:
                return None
            listener.wakeup.clear()
            await listener.wakeup.wait()
        payload = listener.frames.popleft()
        if listener.paused and len(listener.frames) < _BUFFERED_FRAMES // 2:
            listener.paused = False
            self._transport.underlying_transport.resume_reading()
        return payload

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._transport.send_close(picows.WSCloseCode.OK)
        self._transport.disconnect()


class _WsJsonTransport(_WsTransport):
    """A `tether.v1.json` WebSocket: serialized frames in, JSON text messages on the wire."""

    async def send(self, payload: bytes) -> None:
        if self._listener.closed:
            raise ConnectionError("WebSocket is closed")
        self._transport.send(picows.WSMsgType.TEXT, frame_to_json(pb.Frame.FromString(payload)))

    async def receive(self) -> bytes | None:
        text = await super().receive()
        if text is None:
            return None
        frame = pb.Frame()
        try:
            # Fields of a newer server are skipped, as binary clients skip unknown fields.
            json_format.Parse(text.decode("utf-8"), frame, ignore_unknown_fields=True)
        except (json_format.ParseError, UnicodeDecodeError, RecursionError):
            self.close()  # the server broke the protocol; the client reconnects
            return None
        return frame.SerializeToString()


def check_url(url: str, *, json_frames: bool = False) -> SplitResult:
    """Return the parts of a gateway URL, or raise ValueError saying what is wrong with it."""
    parts = urlsplit(url)
    if parts.scheme not in ("tcp", "tls", "ws", "wss"):
        raise ValueError(f"invalid URL {url!r}: scheme must be tcp, tls, ws or wss")
    try:
        port = parts.port
    except ValueError as error:
        raise ValueError(f"invalid URL {url!r}: {error}") from None
    if parts.scheme not in WS_SCHEMES and (not parts.hostname or not port):
        raise ValueError(f"invalid URL {url!r}: expected {parts.scheme}://host:port")
    if parts.scheme in WS_SCHEMES and not parts.hostname:
        raise ValueError(f"invalid URL {url!r}: expected {parts.scheme}://host:port/path")
    if json_frames and parts.scheme not in WS_SCHEMES:
        raise ValueError(f"JSON frames need a ws:// or wss:// URL, got {url!r}")
    return parts


async def open_transport(
    url: str,
    *,
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
    json_frames: bool = False,
) -> ClientTransport:
    """Connect to a gateway at a tcp://, tls://, ws:// or wss:// URL.

    ssl_context applies to tls:// and wss:// only; None verifies the server against the
    system's trusted certificates. json_frames speaks `tether.v1.json` on a WebSocket.
    """
    parts = check_url(url, json_frames=json_frames)
    if ssl_context is not None and parts.scheme not in TLS_SCHEMES:
        raise ValueError(f"an SSL context needs a tls:// or wss:// URL, got {url!r}")
    if parts.scheme in ("tcp", "tls"):
        assert parts.hostname and parts.port, "check_url checked both"
        tls: ssl.SSLContext | None = None
        if parts.scheme == "tls":
            tls = ssl_context if ssl_context is not None else ssl.create_default_context()
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                parts.hostname,
                parts.port,
                limit=_READ_SIZE,
                ssl=tls,
                ssl_handshake_timeout=timeout if tls is not None else None,
            ),
            timeout,
        )
        return _TcpTransport(reader, writer)
    subprotocol = JSON_SUBPROTOCOL if json_frames else SUBPROTOCOL
    message_type = picows.WSMsgType.TEXT if json_frames else picows.WSMsgType.BINARY
    transport, listener = await asyncio.wait_for(
        picows.ws_connect(
            lambda: _WsListener(message_type),
            url,
            ssl_context=ssl_context,
            extra_headers={"Sec-WebSocket-Protocol": subprotocol},
            max_frame_size=MAX_INCOMING_FRAME,
            websocket_handshake_timeout=timeout,
        ),
        timeout,
    )
    assert isinstance(listener, _WsListener)
    # RFC 6455, section 4.1: a server may leave the header out (then it speaks the binary
    # default), but a subprotocol the client did not offer fails the connection.
    chosen = transport.response.headers.get("Sec-WebSocket-Protocol", "")
    if chosen != subprotocol and (chosen or json_frames):
        transport.disconnect()
        raise ConnectionError(f"the server chose subprotocol {chosen!r}, not {subprotocol!r}")
    if json_frames:
        return _WsJsonTransport(transport, listener)
    return _WsTransport(transport, listener)
