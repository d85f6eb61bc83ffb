"""One client connection on the gateway, for either transport.

A `Connection` owns the sans-I/O `ServerProtocol`, the identity the client proved, and an
outbox of encoded frames. Frames queued during one pass of the event loop are written
together by the gateway's single flush callback, so a burst of deliveries costs one
`write()` per connection on TCP. HeartbeatAck frames and group pushes, whose rate per
connection is bounded by pacing, are written at once instead when nothing waits before them
(`send_now`). The outbox is bounded: a client that lets more than `max_outgoing_bytes` pile
up is closed as a slow consumer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tether.gateway.limits import TokenBucket
from tether.ops.logs import ConnectionLabel
from tether.protocol import tether_pb2 as pb
from tether.protocol.connection import ServerProtocol
from tether.protocol.states import ConnectionState

if TYPE_CHECKING:
    from tether.gateway.gateway import Gateway

__all__ = ["Connection", "TcpConnection"]

logger = logging.getLogger("tether.gateway")

# Enum members looked up once. On Python 3.11 each lookup on the class calls
# EnumType.__getattr__, which costs more than the rest of a state check on the heartbeat path.
_CLOSING = ConnectionState.CLOSING
_CLOSED = ConnectionState.CLOSED

# Shared by every connection with no contacts or no groups: an empty set costs 216 bytes, about
# 6 % of an idle connection, and Python 3.11 makes a new one on each frozenset() call.
NO_NAMES: frozenset[str] = frozenset()


class Connection:
    """State of one client connection; subclasses do the transport's writes."""

    __slots__ = (
        "activity",
        "address",
        "bucket",
        "claimed",
        "closing_deadline",
        "contacts",
        "device_id",
        "gateway",
        "groups",
        "id",
        "last_heard",
        "mode",
        "outbox",
        "outbox_bytes",
        "peer",
        "platform",
        "protocol",
        "push_at",
        "push_queue",
        "push_queue_bytes",
        "push_tokens",
        "snapshot_sent",
        "token_expires",
        "user_id",
    )

    transport_name = "?"

    def __init__(self, gateway: Gateway, connection_id: str, *, stream: bool) -> None:
        self.gateway = gateway
        self.id = connection_id
        self.protocol = ServerProtocol(
            max_frame_bytes=gateway.config.max_frame_bytes, stream=stream
        )
        self.user_id = ""
        self.device_id = ""
        self.platform: pb.Platform = pb.PLATFORM_UNSPECIFIED
        self.activity: pb.Activity = pb.ACTIVITY_UNSPECIFIED
        self.mode: pb.Mode = pb.MODE_UNSPECIFIED
        self.peer = ""
        self.contacts: frozenset[str] = NO_NAMES
        self.snapshot_sent = False
        self.last_heard = 0.0
        self.closing_deadline = 0.0
        self.outbox: list[bytes] = []
        self.outbox_bytes = 0
        self.address = ""  # peer IP counted against the per-address limit; empty if not counted
        self.bucket: TokenBucket | None = None  # frames per second, set once accepted
        self.token_expires = 0.0  # Unix time the token expires, 0 if it never does
        # Whether its ONLINE transition was reported, which makes it the device's owner in
        # presence (see Gateway._claim_device). Its status changes and OFFLINE follow only then.
        self.claimed = False
        # Groups of the user once the session opened; a set of its own from the first group on.
        self.groups: set[str] | frozenset[str] = NO_NAMES
        # Pacing of group pushes (tether.gateway.groups): a token bucket, and the encoded
        # messages waiting for the next push tick (None when none wait) with their size.
        self.push_tokens = 0.0
        self.push_at = 0.0  # loop time of the last refill; 0 makes the first push find it full
        self.push_queue: list[bytes] | None = None
        self.push_queue_bytes = 0

    @property
    def state(self) -> ConnectionState:
        return self.protocol.state

    def send_frame(self, frame: pb.Frame) -> None:
        """Queue a frame for the next flush."""
        self.queue(self.protocol.encode(frame))

    def send_payload(self, payload: bytes) -> None:
        """Queue an already serialized frame for the next flush."""
        self.queue(self.protocol.frame_bytes(payload))

    def queue(self, data: bytes) -> None:
        """Queue transport-ready bytes; close the connection if its outbox overflows."""
        if self.closing_deadline or self.protocol.state is _CLOSED:
            return  # closing: the Disconnect was the last frame
        outbox = self.outbox
        if not outbox:
            self.gateway.mark_dirty(self)
        outbox.append(data)
        self.outbox_bytes += len(data)
        queued = self.outbox_bytes + self.push_queue_bytes + self.write_buffer_size()
        if queued > self.gateway.config.max_outgoing_bytes:
            self.gateway.slow_consumer(self)

    def send_now(self, data: bytes) -> None:
        """Write transport-ready bytes at once unless a frame is queued before them.

        For HeartbeatAck frames and group pushes, whose rate per connection pacing bounds. Each
        gets one write, as the next flush would make, without scheduling the flush callback.
        So the first members of a large group have their copy before the gateway reaches the
        last ones. A frame queued earlier in this pass keeps its place: then the bytes join
        the outbox behind it. The outgoing limit of `queue` holds, counted on what the
        transport buffers.
        """
        if self.outbox or self.closing_deadline or self.protocol.state is _CLOSED:
            self.queue(data)
            return
        try:
            buffered = self.write_now(data)
        except Exception:
            # As in the gateway's flush: one broken transport must not stop a fan-out.
            logger.exception("write failed for %s", self.describe())
            return
        if buffered + self.push_queue_bytes > self.gateway.config.max_outgoing_bytes:
            self.gateway.slow_consumer(self)

    def flush(self) -> None:
        """Write every queued frame."""
        if not self.outbox:
            return
        chunks = self.outbox
        self.outbox = []
        self.outbox_bytes = 0
        if self.protocol.state is not _CLOSED:
            self.write_chunks(chunks)

    def describe(self) -> ConnectionLabel:
        """Return the ids that every log record about this connection carries.

        Pass it as a log argument: `%s` prints `conn=... user=... device=...`, and the JSON
        log format also puts the ids in fields of their own.
        """
        return ConnectionLabel(self.id, self.user_id, self.device_id)

    # Transport operations, implemented per transport.

    def write_chunks(self, chunks: Sequence[bytes]) -> None:
        raise NotImplementedError

    def write_now(self, data: bytes) -> int:
        """Write data and return the bytes the transport buffers now."""
        raise NotImplementedError

    def write_buffer_size(self) -> int:
        raise NotImplementedError

    def close_transport(self, *, abort: bool, code: int = 1000) -> None:
        raise NotImplementedError


class TcpConnection(Connection, asyncio.Protocol):
    """Connection over raw TCP with varint-delimited frames; also its asyncio protocol."""

    __slots__ = ("transport",)

    transport_name = "tcp"

    def __init__(self, gateway: Gateway, connection_id: str) -> None:
        super().__init__(gateway, connection_id, stream=True)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.gateway.connection_made(self, transport.get_extra_info("peername"))

    def data_received(self, data: bytes) -> None:
        protocol = self.protocol
        gateway = self.gateway
        ack = protocol.receive_heartbeat(data, int(time.time() * 1000))
        if ack is not None:
            gateway.send_heartbeat_ack(self, ack)
            return
        if protocol.state is _CLOSING:
            return  # lingering after our FIN: input is read and discarded
        gateway.heard(self)
        frames = protocol.receive_data(data)
        if frames:
            gateway.handle_frames(self, frames)
        if protocol.violation is not None:
            gateway.protocol_violation(self)

    def eof_received(self) -> bool:
        # A client that half-closes sends nothing more, not even the heartbeats that keep a
        # session: end it now, also when the logic layer has not yet replied to its Connect.
        self.gateway.peer_finished(self)
        return False  # the transport closes our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.gateway.connection_lost(self, exc)
        self.transport = None  # break the reference cycle for reference counting

    def write_chunks(self, chunks: Sequence[bytes]) -> None:
        assert self.transport is not None
        self.transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def write_now(self, data: bytes) -> int:
        transport = self.transport
        assert transport is not None
        transport.write(data)
        return transport.get_write_buffer_size()

    def write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def close_transport(self, *, abort: bool, code: int = 1000) -> None:
        if self.transport is None:
            return
        if abort:
            self.transport.abort()
        elif self.transport.can_write_eof():
            # Half-close and keep reading until the peer closes or the gateway's close timeout
            # aborts us. Closing at once while the peer's data is still unread makes the kernel
            # send a reset, which can destroy the Disconnect frame before the peer reads it.
            self.transport.write_eof()
        else:
            self.transport.close()
