"""What a connection sends before the tether protocol: a PROXY header and a TLS handshake.

When TLS or the PROXY protocol is on, each accepted socket first gets a `Preamble` protocol,
which hands the transport to the listener's own protocol once the client's address is known
and the TLS handshake is done. The connection's time to send its Connect frame counts from the
TCP accept, so PROXY header, TLS handshake and Connect frame share the one `connect_timeout`.

- TLS only: the server runs the TLS handshake itself (`ssl=` of `create_server`, with
  `ssl_handshake_timeout` set to `connect_timeout`) and the preamble, created at the accept,
  hands over as soon as the handshake is done.
- PROXY protocol, with or without TLS: the preamble reads the header, exactly its bytes and no
  more (`tether.gateway.proxy_protocol`), then runs the TLS handshake with `loop.start_tls`
  on the same socket. The gateway's sweep closes a preamble that is not done within
  `connect_timeout` of the accept. `start_tls` is a coroutine, so the handshake runs in one
  task per connection while it lasts. No task or timer is left once the connection is handed
  over.

A plaintext listener without the PROXY protocol never creates a preamble, so its connections
cost nothing extra.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tether.gateway.config import LISTEN_BACKLOG
from tether.gateway.proxy_protocol import ProxyHeaderReader
from tether.gateway.security import TransportSecurity

if TYPE_CHECKING:
    from tether.gateway.gateway import Gateway

__all__ = [
    "MAX_EARLY_BYTES",
    "ClientPeer",
    "HandOver",
    "Preamble",
    "create_preamble_server",
    "switch_protocol",
]

logger = logging.getLogger("tether.gateway.preamble")

MAX_EARLY_BYTES = 262_144
"""Bytes a client may send after its TLS handshake before the connection is handed over, at
most. The hand-over follows within one pass of the event loop, so this only stops a runaway."""

# Bytes a new ProxyHeaderReader needs. A connection that still needs them has sent nothing.
_NOTHING_READ = ProxyHeaderReader().bytes_needed()


@dataclass(frozen=True, slots=True)
class ClientPeer:
    """Addresses and accept time of a connection, as the preamble learned them."""

    address: Any
    """The client's address as asyncio reports a peer: (host, port, ...) for TCP."""
    via: Any
    """The direct peer's address when a PROXY header reported another client; else None."""
    accepted_at: float
    """Event loop time of the TCP accept."""


HandOver = Callable[[asyncio.BaseTransport, ClientPeer], asyncio.BaseProtocol]
"""Create the listener's protocol for a transport, switch the transport to it, and start it."""


def switch_protocol(transport: Any, protocol: asyncio.BaseProtocol) -> None:
    """Make protocol receive what transport reads from now on.

    Reading pauses around the switch: uvloop chooses its read callbacks, plain or buffered,
    when reading starts, and the new protocol may be of the other kind.
    """
    transport.pause_reading()
    transport.set_protocol(protocol)
    transport.resume_reading()


class Preamble(asyncio.BufferedProtocol):
    """First protocol of a connection on a listener with TLS or the PROXY protocol."""

    __slots__ = (
        "_accepted_at",
        "_chunk",
        "_client",
        "_done",
        "_gateway",
        "_hand_over",
        "_peer",
        "_reader",
        "_security",
        "_task",
        "_transport",
    )

    def __init__(self, gateway: Gateway, security: TransportSecurity, hand_over: HandOver) -> None:
        self._gateway = gateway
        self._security = security
        self._hand_over = hand_over
        self._transport: asyncio.Transport | None = None
        self._peer: Any = None
        self._client: Any = None  # the address a PROXY header reported, once read
        # The server creates protocols when it accepts a socket, so now is the accept time.
        self._accepted_at = asyncio.get_running_loop().time()
        self._reader: ProxyHeaderReader | None = None
        self._chunk = bytearray()
        self._task: asyncio.Task[None] | None = None
        self._done = False

    @property
    def accepted_at(self) -> float:
        """Event loop time of the TCP accept."""
        return self._accepted_at

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._peer = transport.get_extra_info("peername")
        if not self._security.proxy_protocol:
            # TLS only: the server finished the handshake before calling this.
            self._finish(transport, ClientPeer(self._peer, None, self._accepted_at), b"")
            return

        # uvloop starts reading right after this method returns, even if it paused reading, so
        # the header is read first and reading is paused only after it (in buffer_updated).
        self._gateway.track_handshake(self)
        host = _host(self._peer)
        if not self._security.may_send_proxy_header(host):
            self._fail(f"peer {host} is not in trusted_proxies, so it may not send a PROXY header")
            return
        self._reader = ProxyHeaderReader()

    def get_buffer(self, sizehint: int) -> bytearray:
        # Exactly the bytes the header still needs: what follows belongs to TLS or the
        # listener's protocol. Without a reader, 1 byte is asked for, and buffer_updated fails
        # the connection if one arrives.
        needed = self._reader.bytes_needed() if self._reader is not None else 0
        self._chunk = bytearray(max(needed, 1))
        return self._chunk

    def buffer_updated(self, nbytes: int) -> None:
        reader = self._reader
        if reader is None or self._done:
            self._fail("bytes arrived while the TLS handshake was being set up")
            return
        reader.feed(bytes(self._chunk[:nbytes]))
        if reader.error is not None:
            self._fail(f"invalid PROXY protocol header: {reader.error}")
            return
        header = reader.header
        if header is None:
            return  # more of the header is to come

        self._reader = None
        if header.source is None:
            self._after_proxy_header(self._peer, None)
        else:
            self._client = header.source
            self._after_proxy_header(header.source, self._peer)

    def eof_received(self) -> bool:
        if self._reader is not None and self._reader.bytes_needed() == _NOTHING_READ:
            # Connected and closed without a byte, as TCP health checks do: not worth a line.
            self._fail("closed before sending anything", log=False)
        else:
            self._fail("closed in the middle of the PROXY header")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done:
            self._done = True
            self._gateway.end_handshake(self)
        self._transport = None

    def expire(self) -> None:
        """Close a preamble that outlived the handshake time; the gateway counts these."""
        self._fail("handshake timed out", log=False)

    def abort(self) -> None:
        """Close the connection at once, as at shutdown."""
        self._fail("server shutting down", log=False)

    def _after_proxy_header(self, client: Any, via: Any) -> None:
        assert self._transport is not None
        context = self._security.ssl_context
        if context is None:
            self._finish(self._transport, ClientPeer(client, via, self._accepted_at), b"")
            return
        # Paused until start_tls hands the socket to the TLS layer: a ClientHello read now
        # would reach this protocol instead.
        self._transport.pause_reading()
        self._task = asyncio.get_running_loop().create_task(
            self._start_tls(context, ClientPeer(client, via, self._accepted_at))
        )

    async def _start_tls(self, context: ssl.SSLContext, peer: ClientPeer) -> None:
        """Run the TLS handshake within what is left of the handshake time, then hand over."""
        transport = self._transport
        assert transport is not None
        loop = asyncio.get_running_loop()
        remaining = self._accepted_at + self._gateway.config.connect_timeout - loop.time()
        early = _EarlyData()
        try:
            tls_transport = await loop.start_tls(
                transport,
                early,
                context,
                server_side=True,
                ssl_handshake_timeout=max(remaining, 0.001),
            )
        except TimeoutError:
            self._fail("TLS handshake timed out")
            return
        except (OSError, ConnectionError) as error:  # ssl.SSLError is an OSError
            self._fail(f"TLS handshake failed: {error}")
            return
        self._task = None
        if tls_transport is None or self._done:
            self._fail("closed during the TLS handshake", log=False)
            return
        if early.failure:
            self._fail(early.failure)
            tls_transport.abort()
            return
        self._finish(tls_transport, peer, bytes(early.data))

    def _finish(self, transport: asyncio.BaseTransport, peer: ClientPeer, early: bytes) -> None:
        """Hand the connection to the listener's protocol."""
        self._done = True
        self._gateway.end_handshake(self)
        self._transport = None
        try:
            protocol = self._hand_over(transport, peer)
        except Exception:
            logger.exception("hand-over failed for %s", self._describe())
            transport.abort()  # type: ignore[attr-defined]
            return
        if early and not transport.is_closing():
            _deliver(protocol, early)

    def _describe(self) -> str:
        """Return where the connection comes from, for logs: the client first, if known."""
        peer = _describe_peer(self._peer)
        return peer if self._client is None else f"{_describe_peer(self._client)} via {peer}"

    def _fail(self, reason: str, *, log: bool = True) -> None:
        """Close the connection before the tether protocol started."""
        if self._done:
            return
        self._done = True
        self._gateway.end_handshake(self)
        if log:
            logger.info("closed connection from %s: %s", self._describe(), reason)
        task = self._task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        if self._transport is not None:
            self._transport.abort()
            self._transport = None


async def create_preamble_server(
    gateway: Gateway, security: TransportSecurity, hand_over: HandOver, host: str, port: int
) -> asyncio.Server:
    """Listen on host:port; each connection passes a preamble, then hand_over."""
    loop = asyncio.get_running_loop()

    def create_protocol() -> Preamble:
        return Preamble(gateway, security, hand_over)

    # With a PROXY header to read first, the preamble starts TLS itself after the header.
    tls: dict[str, Any] = {}
    if not security.proxy_protocol:
        tls = {"ssl": security.ssl_context, "ssl_handshake_timeout": gateway.config.connect_timeout}
    return await loop.create_server(
        create_protocol,
        host,
        port,
        reuse_address=True,
        reuse_port=gateway.config.reuse_port,
        backlog=LISTEN_BACKLOG,
        **tls,
    )


class _EarlyData(asyncio.Protocol):
    """Receives what the client sends right after its TLS handshake, until the hand-over."""

    __slots__ = ("data", "failure")

    def __init__(self) -> None:
        self.data = bytearray()
        self.failure = ""

    def data_received(self, data: bytes) -> None:
        if self.failure:
            return
        self.data += data
        if len(self.data) > MAX_EARLY_BYTES:
            self.failure = f"over {MAX_EARLY_BYTES} bytes sent before the hand-over"
            self.data.clear()

    def eof_received(self) -> bool:
        self.failure = self.failure or "closed right after the TLS handshake"
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.failure = self.failure or "connection lost right after the TLS handshake"


def _deliver(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    """Pass bytes read before the hand-over to the listener's protocol."""
    if isinstance(protocol, asyncio.BufferedProtocol):
        view = memoryview(data)
        while view:
            buffer = memoryview(protocol.get_buffer(len(view)))
            count = min(len(buffer), len(view))
            buffer[:count] = view[:count]
            protocol.buffer_updated(count)
            view = view[count:]
    else:
        assert isinstance(protocol, asyncio.Protocol)
        protocol.data_received(data)


def _host(peer: Any) -> str:
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


def _describe_peer(peer: Any) -> str:
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) > 1 else str(peer)
