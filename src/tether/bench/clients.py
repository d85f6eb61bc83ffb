"""The clients of a load process: tether over TCP or WebSocket, and Socket.IO over WebSocket.

Each client parses what its server sends and reports it to its `Load` (counters, latencies,
presence notifications); the `Load` decides what to send and when. Hot path of the load
process: one parse per frame, no task per frame or per client.

A client parses a frame only when its load process gets to it. A process that reads thousands
of sockets which became readable at once reaches the last of them only after parsing all the
others. `TetherSocketClient` therefore also records when the kernel queued the bytes to its
socket, a time that does not depend on how busy the load process is.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from typing import TYPE_CHECKING, Any, cast

import picows

from tether.auth import issue_token
from tether.protocol import tether_pb2 as pb
from tether.protocol.connection import PROTOCOL_VERSION
from tether.protocol.framing import StreamDecoder, prefix_frame

if TYPE_CHECKING:
    from tether.bench.load import Load

__all__ = [
    "MAX_FRAME",
    "BenchClient",
    "SocketIoClient",
    "TetherClient",
    "TetherSocketClient",
    "TetherTcpClient",
    "TetherWsClient",
    "WsListener",
]

MAX_FRAME = 1 << 20
_STATUS_NAMES = {
    pb.STATUS_OFFLINE: "offline",
    pb.STATUS_ONLINE: "online",
    pb.STATUS_AWAY: "away",
    pb.STATUS_BUSY: "busy",
}
_ACTIVITY = {"online": pb.ACTIVITY_ACTIVE, "away": pb.ACTIVITY_IDLE}
# SO_TIMESTAMPNS of Linux's asm-generic/socket.h, which Python's socket module does not name.
# The control message that carries the time in recvmsg() has the same number (SCM_TIMESTAMPNS).
_SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@qq")  # struct timespec on 64-bit Linux: seconds, nanoseconds
_READ_BYTES = 1 << 16
_ANCILLARY_BYTES = socket.CMSG_SPACE(_TIMESPEC.size)


class BenchClient:
    """One user's connection, whatever its protocol; subclasses encode the frames."""

    __slots__ = ("deliver_acks", "load", "open", "ready", "user")

    def __init__(self, load: Load, user: str, *, deliver_acks: bool = True) -> None:
        self.load = load
        self.user = user
        self.open = False
        self.deliver_acks = deliver_acks
        """Whether a tether client acknowledges every Deliver frame, as the SDK does."""
        self.ready: asyncio.Future[None] = load.loop.create_future()
        """Done once the session is usable: tether's snapshot or Socket.IO's CONNECT ack."""

    def send_message(self, recipient: str, body: str, message_id: int) -> None:
        raise NotImplementedError

    def send_group(self, group_id: str, body: str, message_id: int) -> None:
        raise NotImplementedError

    def set_status(self, status: str) -> None:
        raise NotImplementedError

    def heartbeat(self) -> None:
        """Send one heartbeat; Socket.IO clients only reply to the server's pings."""

    def close(self) -> None:
        raise NotImplementedError

    def on_ready(self) -> None:
        self.open = True
        if not self.ready.done():
            self.ready.set_result(None)

    def on_closed(self, reason: str) -> None:
        if self.open:
            self.open = False
            self.load.counters["disconnects"] += 1
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))


# --- tether ----------------------------------------------------------------------------------


class TetherClient(BenchClient):
    """A tether client; `write` puts one encoded frame on its transport."""

    __slots__ = ("nonce",)

    def __init__(self, load: Load, user: str, *, deliver_acks: bool = True) -> None:
        super().__init__(load, user, deliver_acks=deliver_acks)
        self.nonce = 0

    def write(self, payload: bytes) -> None:
        raise NotImplementedError

    def hello(self, secret: str) -> None:
        connect = pb.Connect(
            protocol_version=PROTOCOL_VERSION, token=issue_token(secret, self.user), device_id="b"
        )
        self.write(pb.Frame(connect=connect).SerializeToString())

    def on_payload(self, payload: bytes, received: float | None = None) -> None:
        """Act on one frame; received is when its bytes reached the socket, if known."""
        # Hot path of the load process: one parse per frame, no task per frame.
        frame = pb.Frame.FromString(payload)
        kind = frame.WhichOneof("kind")
        load = self.load
        if kind == "heartbeat_ack":
            load.counters["heartbeats"] += 1
        elif kind == "deliver":
            now = time.time()
            messages = frame.deliver.messages
            grouped = False
            for message in messages:
                if message.conversation_id.startswith("g:"):
                    load.on_group_delivered(now, message.body.decode(), received)
                    grouped = True
                else:
                    load.on_delivered(now, message.body.decode())
            if grouped:
                load.group_frames += 1
            if self.deliver_acks:
                last = messages[-1]
                ack = pb.DeliverAck(conversation_id=last.conversation_id, sequence=last.sequence)
                self.write(pb.Frame(deliver_ack=ack).SerializeToString())
        elif kind == "send_ack":
            load.on_acked(frame.send_ack.client_message_id)
        elif kind == "presence_update":
            presence = frame.presence_update.presence
            status = _STATUS_NAMES.get(presence.status, "unknown")
            load.on_presence(self.user, presence.user_id, status)
        elif kind == "connected":
            load.on_connected(self, frame.connected.heartbeat_interval_ms / 1000)
        elif kind == "presence_snapshot":
            self.on_ready()
        elif kind == "error":
            load.counters[f"error_{frame.error.code}"] += 1
            if frame.error.ref:
                load.on_failed(frame.error.ref)
        elif kind == "disconnect":
            load.counters[f"disconnect_{frame.disconnect.code}"] += 1

    def send_message(self, recipient: str, body: str, message_id: int) -> None:
        send = pb.Send(client_message_id=str(message_id), recipient=recipient, body=body.encode())
        self.write(pb.Frame(send=send).SerializeToString())

    def send_group(self, group_id: str, body: str, message_id: int) -> None:
        self.send_message(f"g:{group_id}", body, message_id)

    def set_status(self, status: str) -> None:
        change = pb.SetStatus(activity=_ACTIVITY[status], mode=pb.MODE_AVAILABLE)
        self.write(pb.Frame(set_status=change).SerializeToString())

    def heartbeat(self) -> None:
        self.nonce += 1
        self.write(pb.Frame(heartbeat=pb.Heartbeat(nonce=self.nonce)).SerializeToString())


class TetherTcpClient(TetherClient, asyncio.Protocol):
    """A tether client over TCP with varint-delimited frames."""

    __slots__ = ("decoder", "transport")

    def __init__(self, load: Load, user: str, *, deliver_acks: bool = True) -> None:
        super().__init__(load, user, deliver_acks=deliver_acks)
        self.decoder = StreamDecoder(MAX_FRAME)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        for payload in self.decoder.feed(data):
            self.on_payload(payload)
        if self.decoder.error is not None and self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.on_closed(f"connection lost: {exc}")

    def write(self, payload: bytes) -> None:
        if self.transport is not None:
            self.transport.write(prefix_frame(payload))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class TetherSocketClient(TetherClient):
    """A tether client over TCP that reads its socket itself, to learn when bytes arrived.

    With SO_TIMESTAMPNS set, Linux stamps each TCP segment when it is queued to the socket,
    and recvmsg() returns the stamp of the last segment it read along with the bytes. On
    loopback a segment is queued within the sender's write(), so the stamp is when the server
    wrote the frame, however late this process reads it. The stamp uses the same clock as
    time.time() (CLOCK_REALTIME).

    The socket is connected and non-blocking; the client watches it with the loop's
    add_reader() instead of a transport, because transports read without ancillary data.

    NOTE: Linux turns receive timestamps on for the whole machine shortly after the first
    socket asks for them (a deferred static key), so the first bytes read can come without a
    time. Such deliveries count in the figures of parse times only.
    """

    __slots__ = ("decoder", "pending", "sock")

    def __init__(
        self, load: Load, user: str, sock: socket.socket, *, deliver_acks: bool = True
    ) -> None:
        super().__init__(load, user, deliver_acks=deliver_acks)
        self.decoder = StreamDecoder(MAX_FRAME)
        self.sock: socket.socket | None = sock
        self.pending = bytearray()
        """Bytes written while the socket's send buffer was full, sent when it drains."""
        sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as asyncio transports do
        load.loop.add_reader(sock.fileno(), self._on_readable)

    def write(self, payload: bytes) -> None:
        if self.sock is None:
            return
        data = prefix_frame(payload)
        if not self.pending:
            try:
                sent = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as error:
                self._shut(f"write failed: {error}")
                return
            if sent == len(data):
                return
            data = data[sent:]
            self.load.loop.add_writer(self.sock.fileno(), self._on_writable)
        self.pending += data

    def close(self) -> None:
        self._shut("closed by the client")

    def _on_readable(self) -> None:
        if self.sock is None:
            return
        try:
            data, ancillary, _flags, _address = self.sock.recvmsg(_READ_BYTES, _ANCILLARY_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._shut(f"connection lost: {error}")
            return
        if not data:
            self._shut("connection closed by the server")
            return
        received = _receive_time(ancillary)
        for payload in self.decoder.feed(data):
            self.on_payload(payload, received)
        if self.decoder.error is not None:
            self._shut(f"bad frame: {self.decoder.error}")

    def _on_writable(self) -> None:
        if self.sock is None:
            return
        try:
            sent = self.sock.send(self.pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._shut(f"write failed: {error}")
            return
        del self.pending[:sent]
        if not self.pending:
            self.load.loop.remove_writer(self.sock.fileno())

    def _shut(self, reason: str) -> None:
        """Stop watching the socket and close it; what waits in pending is dropped."""
        sock = self.sock
        if sock is None:
            return
        self.sock = None
        loop = self.load.loop
        loop.remove_reader(sock.fileno())
        loop.remove_writer(sock.fileno())
        sock.close()
        self.pending.clear()
        self.on_closed(reason)


def _receive_time(ancillary: list[tuple[int, int, bytes]]) -> float | None:
    """Return the SO_TIMESTAMPNS time among recvmsg()'s control messages, None if absent."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            return float(seconds + nanoseconds / 1e9)
    return None


class WsListener(picows.WSListener):
    """picows callbacks of one WebSocket client, handed to its BenchClient."""

    def __init__(self, client: TetherWsClient | SocketIoClient) -> None:
        super().__init__()
        self.client = client

    def on_ws_connected(self, transport: Any) -> None:
        self.client.transport = transport

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        kind = frame.msg_type
        if kind == picows.WSMsgType.BINARY or kind == picows.WSMsgType.TEXT:
            self.client.on_message(frame.get_payload_as_bytes())
        elif kind == picows.WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: Any) -> None:
        self.client.transport = None
        self.client.on_closed("WebSocket closed")


class TetherWsClient(TetherClient):
    """A tether client over WebSocket: one binary message per frame, subprotocol tether.v1."""

    __slots__ = ("transport",)

    def __init__(self, load: Load, user: str, *, deliver_acks: bool = True) -> None:
        super().__init__(load, user, deliver_acks=deliver_acks)
        self.transport: Any = None

    def on_message(self, payload: bytes) -> None:
        self.on_payload(payload)

    def write(self, payload: bytes) -> None:
        if self.transport is not None:
            self.transport.send(picows.WSMsgType.BINARY, payload)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.send_close(picows.WSCloseCode.OK)
            self.transport.disconnect()


# --- Socket.IO -------------------------------------------------------------------------------


class SocketIoClient(BenchClient):
    """A Socket.IO 5 client on Engine.IO 4 over WebSocket, main namespace only.

    The server's peer scripts read the user id from the CONNECT packet's auth object,
    `40{"user": "..."}`, and put the socket in a room named after the user and in a room
    `g:<group id>` for each of the user's groups. A group message is a "gm" event
    `{"group", "body"}`, emitted by the server to the group's room without its sender.
    """

    __slots__ = ("transport",)

    def __init__(self, load: Load, user: str, *, deliver_acks: bool = True) -> None:
        # Socket.IO has no delivery acknowledgement, so deliver_acks changes nothing here.
        super().__init__(load, user, deliver_acks=deliver_acks)
        self.transport: Any = None

    def on_message(self, payload: bytes) -> None:
        text = payload.decode()
        load = self.load
        if text == "2":  # Engine.IO PING from the server
            self.write("3")
            load.counters["heartbeats"] += 1
        elif text.startswith("42"):
            self._on_event(json.loads(text[text.index("[") :]))
        elif text.startswith("43"):
            ack_id = text[2 : text.index("[")]
            load.on_acked(ack_id)
        elif text.startswith("40"):
            self.on_ready()
        elif text.startswith("0"):  # Engine.IO OPEN: join the main namespace
            self.write("40" + json.dumps({"user": self.user}))
        elif text.startswith("44"):
            load.counters["connect_errors"] += 1
            self.close()
        elif text.startswith("41") or text == "1":
            load.counters["server_disconnects"] += 1

    def _on_event(self, packet: list[Any]) -> None:
        name, data = packet[0], packet[1] if len(packet) > 1 else None
        if name == "dm" and isinstance(data, dict):
            self.load.on_delivered(time.time(), str(data.get("body")))
        elif name == "gm" and isinstance(data, dict):
            self.load.on_group_delivered(time.time(), str(data.get("body")))
            self.load.group_frames += 1
        elif name == "presence" and isinstance(data, dict):
            self.load.on_presence(self.user, str(data.get("user")), str(data.get("status")))

    def write(self, text: str) -> None:
        if self.transport is not None:
            self.transport.send(picows.WSMsgType.TEXT, text.encode())

    def send_message(self, recipient: str, body: str, message_id: int) -> None:
        self.write(f"42{message_id}" + json.dumps(["dm", {"to": recipient, "body": body}]))

    def send_group(self, group_id: str, body: str, message_id: int) -> None:
        self.write(f"42{message_id}" + json.dumps(["gm", {"group": group_id, "body": body}]))

    def set_status(self, status: str) -> None:
        self.write("42" + json.dumps(["status", status]))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.send_close(picows.WSCloseCode.OK)
            self.transport.disconnect()
