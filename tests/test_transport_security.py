"""TLS, WebSocket Origin checks and client addresses from proxies, over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import websockets
from conftest import SECRET, TIMEOUT, RawClient, ServerFactory, add_contacts, next_of
from tls_support import client_context, make_certificate
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from tether.auth import issue_token
from tether.client import Client
from tether.client import events as ev
from tether.gateway.limits import LimitsConfig
from tether.gateway.proxy_protocol import encode_v1, encode_v2
from tether.gateway.security import TransportSecurityConfig
from tether.protocol import tether_pb2 as pb
from tether.protocol.codes import Code
from tether.protocol.framing import StreamDecoder, prefix_frame
from tether.server import EmbeddedServer

GATEWAY = ("127.0.0.1", 7400)  # the destination address written into PROXY headers


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    return make_certificate(tmp_path)


@pytest.fixture
def trust(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    return client_context(certificate[0])


def secured(**settings: object) -> dict[str, object]:
    """Return start_server arguments for a gateway with these transport security settings."""
    return {"transport_security": TransportSecurityConfig(**settings)}  # type: ignore[arg-type]


def ws_url(server: EmbeddedServer, scheme: str = "ws") -> str:
    return f"{scheme}://127.0.0.1:{server.ws_port}{server.config.gateway.ws_path}"


def connect_frame(user: str, device: str = "web") -> bytes:
    connect = pb.Connect(protocol_version=1, token=issue_token(SECRET, user), device_id=device)
    return pb.Frame(connect=connect).SerializeToString()


async def ws_open_session(
    url: str, user: str, **options: object
) -> tuple[ClientConnection, pb.Frame]:
    """Connect with the websockets library, send Connect, return the socket and first frame."""
    socket_ = await ws_connect(
        url,
        subprotocols=["tether.v1"],
        open_timeout=TIMEOUT,
        **options,  # type: ignore[list-item, arg-type]
    )
    # A limit may close the connection at once; its Disconnect frame is still to be read.
    with contextlib.suppress(websockets.exceptions.ConnectionClosed):
        await socket_.send(connect_frame(user))
    reply = pb.Frame.FromString(await asyncio.wait_for(socket_.recv(), TIMEOUT))  # type: ignore[arg-type]
    return socket_, reply


async def proxied_socket(port: int, header: bytes) -> socket.socket:
    """Return a connected non-blocking socket that has sent header, as a load balancer would."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, header)
    return sock


async def proxied_raw(
    server: EmbeddedServer, header: bytes, tls: ssl.SSLContext | None = None
) -> RawClient:
    """Return a raw TCP client whose connection starts with a PROXY header."""
    assert server.tcp_port is not None
    sock = await proxied_socket(server.tcp_port, header)
    reader, writer = await asyncio.open_connection(
        sock=sock, ssl=tls, server_hostname="127.0.0.1" if tls else None
    )
    return RawClient(reader, writer)


async def closed_without_reply(reader: asyncio.StreamReader) -> bytes:
    """Read until the server closes the connection; return what arrived."""
    received = b""
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), TIMEOUT)
            if not data:
                return received
            received += data
    except (ConnectionResetError, ssl.SSLError):
        return received


async def eventually(check: Callable[[], bool], description: str) -> None:
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {description}"
        await asyncio.sleep(0.02)


# TLS


async def test_sdk_over_tls_and_wss(
    start_server: ServerFactory, certificate: tuple[Path, Path], trust: ssl.SSLContext
) -> None:
    cert, key = certificate
    server = await start_server(**secured(tls_cert=cert, tls_key=key))
    await add_contacts(server, "alice", "bob")
    alice = Client(
        f"tls://127.0.0.1:{server.tcp_port}",
        issue_token(SECRET, "alice"),
        "phone",
        ssl_context=trust,
        reconnect=False,
        connect_timeout=TIMEOUT,
    )
    bob = Client(
        ws_url(server, "wss"),
        issue_token(SECRET, "bob"),
        "laptop",
        ssl_context=trust,
        reconnect=False,
        connect_timeout=TIMEOUT,
    )
    try:
        assert (await alice.connect()).user_id == "alice"
        assert (await bob.connect()).user_id == "bob"

        ack = await alice.send("bob", "over TLS")
        received = await next_of(bob, ev.Message)
        assert isinstance(received, ev.Message)
        assert received.body == b"over TLS"
        assert received.message_id == ack.message_id

        await bob.send("alice", "over wss")
        answer = await next_of(alice, ev.Message)
        assert isinstance(answer, ev.Message)
        assert answer.body == b"over wss"
    finally:
        await alice.close()
        await bob.close()


async def test_websockets_library_over_wss(
    start_server: ServerFactory, certificate: tuple[Path, Path], trust: ssl.SSLContext
) -> None:
    cert, key = certificate
    server = await start_server(**secured(tls_cert=cert, tls_key=key))
    socket_, reply = await ws_open_session(ws_url(server, "wss"), "carol", ssl=trust)
    assert reply.WhichOneof("kind") == "connected"
    assert reply.connected.user_id == "carol"
    await socket_.close()


@pytest.mark.parametrize("scheme", ["ws", "wss"])
async def test_open_websocket_keeps_no_headers_or_logger(
    start_server: ServerFactory,
    certificate: tuple[Path, Path],
    trust: ssl.SSLContext,
    scheme: str,
) -> None:
    """Once a connection is open, picows keeps neither its upgrade headers nor a logger of
    its own, which would cost idle memory (docs/benchmarks.md). wss goes through the preamble."""
    cert, key = certificate
    server = await start_server(**(secured(tls_cert=cert, tls_key=key) if scheme == "wss" else {}))
    gateway = server.gateway
    assert gateway is not None
    tls: dict[str, object] = {"ssl": trust} if scheme == "wss" else {}
    socket_, reply = await ws_open_session(ws_url(server, scheme), "alice", **tls)
    assert reply.WhichOneof("kind") == "connected"

    (connection,) = gateway.connections.values()
    transport = connection.transport  # type: ignore[attr-defined]
    assert len(transport.request.headers) == 0
    assert len(transport.response.headers) == 0
    assert transport.request.path == server.config.gateway.ws_path.encode()
    own_loggers = [
        item
        for item in gc.get_objects()
        # type(), not isinstance(): a dead weakref.proxy among the objects raises on the latter.
        if type(item) is logging.Logger and item.name.startswith("tether.gateway.websocket.picows.")
    ]
    assert own_loggers == []

    # The connection still replies to a heartbeat.
    await socket_.send(pb.Frame(heartbeat=pb.Heartbeat(nonce=7)).SerializeToString())
    while True:
        frame = pb.Frame.FromString(await asyncio.wait_for(socket_.recv(), TIMEOUT))  # type: ignore[arg-type]
        if frame.WhichOneof("kind") == "heartbeat_ack":
            break
    assert frame.heartbeat_ack.nonce == 7
    await socket_.close()


async def test_tls_client_refuses_untrusted_server(
    start_server: ServerFactory, certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = certificate
    server = await start_server(**secured(tls_cert=cert, tls_key=key))
    other, _ = make_certificate(tmp_path, "other")
    client = Client(
        f"tls://127.0.0.1:{server.tcp_port}",
        issue_token(SECRET, "alice"),
        "phone",
        ssl_context=client_context(other),
        reconnect=False,
        connect_timeout=TIMEOUT,
    )
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        await client.connect()
    await client.close()


async def test_tls_1_2_client_accepted(
    start_server: ServerFactory, certificate: tuple[Path, Path], trust: ssl.SSLContext
) -> None:
    cert, key = certificate
    server = await start_server(**secured(tls_cert=cert, tls_key=key))
    trust.maximum_version = ssl.TLSVersion.TLSv1_2
    raw = await proxied_raw_plain(server, trust)
    raw.send_connect("dave")
    assert (await raw.receive_kind("connected")).connected.user_id == "dave"
    assert raw.writer.get_extra_info("ssl_object").version() == "TLSv1.2"
    raw.close()


async def proxied_raw_plain(server: EmbeddedServer, tls: ssl.SSLContext) -> RawClient:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", server.tcp_port, ssl=tls, server_hostname="127.0.0.1"
    )
    return RawClient(reader, writer)


async def test_plaintext_client_on_tls_port_closed(
    start_server: ServerFactory, certificate: tuple[Path, Path], trust: ssl.SSLContext
) -> None:
    cert, key = certificate
    server = await start_server(**secured(tls_cert=cert, tls_key=key))
    steady = await proxied_raw_plain(server, trust)
    steady.send_connect("steady")
    await steady.receive_kind("connected")

    plain = await RawClient.open(server)
    plain.send_connect("plain")
    assert await closed_without_reply(plain.reader) == b""

    # The TLS client carries on.
    steady.send(pb.Frame(heartbeat=pb.Heartbeat(nonce=7)))
    assert (await steady.receive_kind("heartbeat_ack")).heartbeat_ack.nonce == 7
    assert server.gateway is not None
    assert server.gateway.stats()["open"] == 1
    steady.close()
    plain.close()


async def test_plain_websocket_on_wss_port_fails(
    start_server: ServerFactory, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    server = await start_server(**secured(tls_cert=cert, tls_key=key))
    with pytest.raises((websockets.exceptions.InvalidMessage, OSError, EOFError)):
        await ws_open_session(ws_url(server, "ws"), "plain")


async def test_silent_client_closed_during_tls_handshake(
    start_server: ServerFactory, certificate: tuple[Path, Path], trust: ssl.SSLContext
) -> None:
    cert, key = certificate
    server = await start_server(connect_timeout=0.5, **secured(tls_cert=cert, tls_key=key))
    for port in (server.tcp_port, server.ws_port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = asyncio.get_running_loop().time()
        assert await closed_without_reply(reader) == b""
        assert asyncio.get_running_loop().time() - started < TIMEOUT
        writer.close()
    # A client that finishes TLS but sends no Connect is closed by the connect timeout.
    raw = await proxied_raw_plain(server, trust)
    assert await raw.disconnect_code() == Code.CONNECT_TIMEOUT
    raw.close()


# WebSocket Origin


async def test_origin_allow_list(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tether.gateway")
    server = await start_server(**secured(ws_allowed_origins=("https://chat.example.com",)))
    gateway = server.gateway
    assert gateway is not None

    allowed, reply = await ws_open_session(
        ws_url(server), "alice", origin="https://chat.example.com"
    )
    assert reply.WhichOneof("kind") == "connected"
    no_origin, reply = await ws_open_session(ws_url(server), "bob")
    assert reply.WhichOneof("kind") == "connected"

    ids_before = gateway.new_connection_id()
    with pytest.raises(websockets.exceptions.InvalidStatus) as rejected:
        await ws_open_session(ws_url(server), "mallory", origin="https://evil.example")
    assert rejected.value.response.status_code == 403
    # No connection was made for the rejected upgrade: no id taken, none registered.
    ids_after = gateway.new_connection_id()
    assert int(ids_after.rsplit("-", 1)[1]) == int(ids_before.rsplit("-", 1)[1]) + 1
    assert gateway.stats()["connections"] == 2

    await eventually(
        lambda: any("WebSocket origin not allowed" in r.message for r in caplog.records),
        "the sweep's summary of rejections",
    )
    await allowed.close()
    await no_origin.close()


async def test_origin_star_allows_any(start_server: ServerFactory) -> None:
    server = await start_server()
    socket_, reply = await ws_open_session(ws_url(server), "alice", origin="https://any.example")
    assert reply.WhichOneof("kind") == "connected"
    await socket_.close()


# PROXY protocol


async def test_proxy_headers_count_per_client_address(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tether.gateway")
    server = await start_server(
        limits=LimitsConfig(
            max_connections_per_ip=2, frames_per_second=1_000_000, frame_burst=1_000_000
        ),
        **secured(proxy_protocol=True),
    )
    gateway = server.gateway
    assert gateway is not None

    first = await proxied_raw(server, encode_v1(("203.0.113.1", 1001), GATEWAY))
    second = await proxied_raw(server, encode_v2(("203.0.113.1", 1002), GATEWAY))
    other = await proxied_raw(server, encode_v2(("203.0.113.2", 2001), GATEWAY))
    for raw, user in ((first, "u1"), (second, "u2"), (other, "u3")):
        raw.send_connect(user)
        assert (await raw.receive_kind("connected")).connected.user_id == user

    # The third connection from 203.0.113.1 is over its limit; the balancer's own address
    # (127.0.0.1) carries none of them.
    third = await proxied_raw(server, encode_v1(("203.0.113.1", 1003), GATEWAY))
    frame = await third.receive_kind("disconnect")
    assert frame.disconnect.code == Code.OVERLOADED
    assert gateway._per_address.count("203.0.113.1") == 2
    assert gateway._per_address.count("203.0.113.2") == 1
    assert gateway._per_address.count("127.0.0.1") == 0

    opened = [r.message for r in caplog.records if r.message.startswith("opened")]
    assert any("from 203.0.113.1:1001 via 127.0.0.1:" in line for line in opened)
    assert any("from 203.0.113.2:2001 via 127.0.0.1:" in line for line in opened)
    for raw in (first, second, other, third):
        raw.close()


async def test_proxy_local_and_unknown_keep_peer(start_server: ServerFactory) -> None:
    server = await start_server(**secured(proxy_protocol=True))
    gateway = server.gateway
    assert gateway is not None
    local = await proxied_raw(server, encode_v2(None, None))
    unknown = await proxied_raw(server, b"PROXY UNKNOWN\r\n")
    for raw, user in ((local, "health"), (unknown, "other")):
        raw.send_connect(user)
        await raw.receive_kind("connected")
    assert gateway._per_address.count("127.0.0.1") == 2
    local.close()
    unknown.close()


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY TCP4 300.1.1.1 10.0.0.1 1000 7400\r\n",
        b"PROXY TCP4 203.0.113.1 10.0.0.1 1000\r\n",
        b"PROXY UNKNOWN " + b"x" * 200,
        encode_v2(("203.0.113.1", 1), GATEWAY)[:12] + b"\x11\x11\x00\x0c" + bytes(12),
        b"\x0a\x02\x08\x01",  # a tether frame without a header
    ],
)
async def test_malformed_proxy_header_closes_only_that_connection(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture, header: bytes
) -> None:
    caplog.set_level(logging.INFO, logger="tether.gateway")
    server = await start_server(**secured(proxy_protocol=True))
    good = await proxied_raw(server, encode_v1(("203.0.113.1", 1001), GATEWAY))
    good.send_connect("good")
    await good.receive_kind("connected")

    bad = await proxied_raw(server, header)
    assert await closed_without_reply(bad.reader) == b""
    lines = [r.message for r in caplog.records if "invalid PROXY protocol header" in r.message]
    assert len(lines) == 1
    assert "closed connection from 127.0.0.1:" in lines[0]

    good.send(pb.Frame(heartbeat=pb.Heartbeat(nonce=1)))
    assert (await good.receive_kind("heartbeat_ack")).heartbeat_ack.nonce == 1
    good.close()
    bad.close()


async def test_proxy_header_split_in_pieces(start_server: ServerFactory) -> None:
    server = await start_server(**secured(proxy_protocol=True))
    assert server.tcp_port is not None
    header = encode_v1(("198.51.100.4", 4444), GATEWAY)
    sock = await proxied_socket(server.tcp_port, header[:3])
    loop = asyncio.get_running_loop()
    for index in range(3, len(header)):
        await asyncio.sleep(0.005)
        await loop.sock_sendall(sock, header[index : index + 1])
    reader, writer = await asyncio.open_connection(sock=sock)
    raw = RawClient(reader, writer)
    raw.send_connect("slow")
    await raw.receive_kind("connected")
    assert server.gateway is not None
    assert server.gateway._per_address.count("198.51.100.4") == 1
    raw.close()


async def test_incomplete_proxy_header_times_out(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tether.gateway")
    server = await start_server(connect_timeout=0.5, **secured(proxy_protocol=True))
    raw = await proxied_raw(server, b"PROXY TCP4 203.0.113.1 ")
    assert await closed_without_reply(raw.reader) == b""
    await eventually(
        lambda: any("1 handshake timed out" in r.message for r in caplog.records),
        "the sweep's summary",
    )
    assert server.gateway is not None
    assert not server.gateway._handshakes
    raw.close()


async def test_health_check_without_bytes_not_logged(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tether.gateway")
    server = await start_server(**secured(proxy_protocol=True))
    _, writer = await asyncio.open_connection("127.0.0.1", server.tcp_port)
    writer.close()
    await writer.wait_closed()
    assert server.gateway is not None
    await eventually(lambda: not server.gateway._handshakes, "the preamble to end")  # type: ignore[union-attr]
    assert not [r for r in caplog.records if "closed connection from" in r.message]


async def test_proxy_header_only_from_trusted_proxies(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tether.gateway")
    server = await start_server(**secured(proxy_protocol=True, trusted_proxies=("10.0.0.0/8",)))
    raw = await proxied_raw(server, encode_v1(("203.0.113.1", 1001), GATEWAY))
    raw.send_connect("spoofer")
    assert await closed_without_reply(raw.reader) == b""
    assert any("not in trusted_proxies" in r.message for r in caplog.records)
    raw.close()


async def test_proxy_header_without_proxy_protocol_is_bad_frame(
    start_server: ServerFactory,
) -> None:
    server = await start_server()
    for header in (
        encode_v1(("203.0.113.1", 1001), GATEWAY),
        encode_v2(("203.0.113.1", 1001), GATEWAY),
    ):
        raw = await RawClient.open(server)
        raw.send_raw(header)
        raw.send_connect("confused")  # what the balancer forwards from its client
        assert await raw.disconnect_code() == Code.PROTOCOL_ERROR
        raw.close()


async def test_proxy_header_without_proxy_protocol_fails_upgrade(
    start_server: ServerFactory,
) -> None:
    server = await start_server()
    assert server.ws_port is not None and server.gateway is not None
    sock = await proxied_socket(server.ws_port, encode_v1(("203.0.113.1", 1001), GATEWAY))
    with pytest.raises(websockets.exceptions.InvalidStatus) as rejected:
        await ws_open_session(ws_url(server), "confused", sock=sock)
    assert rejected.value.response.status_code == 400
    assert server.gateway.stats()["connections"] == 0


async def test_proxy_protocol_with_tls(
    start_server: ServerFactory, certificate: tuple[Path, Path], trust: ssl.SSLContext
) -> None:
    cert, key = certificate
    server = await start_server(
        connect_timeout=0.5, **secured(tls_cert=cert, tls_key=key, proxy_protocol=True)
    )
    gateway = server.gateway
    assert gateway is not None
    raw = await proxied_raw(server, encode_v2(("2001:db8::7", 5555), ("::1", 7400)), trust)
    raw.send_connect("alice")
    assert (await raw.receive_kind("connected")).connected.user_id == "alice"
    assert gateway._per_address.count("2001:db8::7") == 1

    # The header, then no TLS handshake: closed within the handshake time.
    silent = await proxied_raw(server, encode_v1(("203.0.113.9", 9), GATEWAY))
    assert await closed_without_reply(silent.reader) == b""
    # The header, then plaintext: the TLS handshake fails.
    plain = await proxied_raw(server, encode_v1(("203.0.113.9", 10), GATEWAY))
    plain.send_connect("plain")
    assert await closed_without_reply(plain.reader) == b""

    raw.send(pb.Frame(heartbeat=pb.Heartbeat(nonce=3)))
    assert (await raw.receive_kind("heartbeat_ack")).heartbeat_ack.nonce == 3
    for client in (raw, silent, plain):
        client.close()


async def test_proxy_header_and_frame_in_one_segment(start_server: ServerFactory) -> None:
    server = await start_server(**secured(proxy_protocol=True))
    assert server.tcp_port is not None
    header = encode_v2(("203.0.113.77", 7777), GATEWAY)
    sock = await proxied_socket(server.tcp_port, header + prefix_frame(connect_frame("eager")))
    reader, writer = await asyncio.open_connection(sock=sock)
    raw = RawClient(reader, writer)
    assert (await raw.receive_kind("connected")).connected.user_id == "eager"
    assert server.gateway is not None
    assert server.gateway._per_address.count("203.0.113.77") == 1
    raw.close()


async def test_proxy_header_and_client_hello_in_one_segment(
    start_server: ServerFactory, certificate: tuple[Path, Path], trust: ssl.SSLContext
) -> None:
    """The preamble must not read past the header into the TLS ClientHello."""
    cert, key = certificate
    server = await start_server(**secured(tls_cert=cert, tls_key=key, proxy_protocol=True))
    assert server.tcp_port is not None
    loop = asyncio.get_running_loop()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = trust.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    client_hello = outgoing.read()
    header = encode_v1(("203.0.113.88", 8888), GATEWAY)
    sock = await proxied_socket(server.tcp_port, header + client_hello)

    async def exchange() -> None:
        """Send what TLS wrote and feed TLS what the server sent."""
        if outgoing.pending:
            await loop.sock_sendall(sock, outgoing.read())
        data = await asyncio.wait_for(loop.sock_recv(sock, 65536), TIMEOUT)
        assert data, "server closed the connection during the TLS handshake"
        incoming.write(data)

    while True:
        await exchange()
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            continue
    tls.write(prefix_frame(connect_frame("hello")))
    decoder = StreamDecoder(1 << 20)
    frames: list[pb.Frame] = []
    while not frames:
        await exchange()
        with contextlib.suppress(ssl.SSLWantReadError):
            frames = [pb.Frame.FromString(p) for p in decoder.feed(tls.read(65536))]
    assert frames[0].WhichOneof("kind") == "connected"
    assert server.gateway is not None
    assert server.gateway._per_address.count("203.0.113.88") == 1
    sock.close()


async def test_proxy_protocol_on_websocket(start_server: ServerFactory) -> None:
    server = await start_server(
        limits=LimitsConfig(max_connections_per_ip=1), **secured(proxy_protocol=True)
    )
    gateway = server.gateway
    assert gateway is not None
    assert server.ws_port is not None
    sessions = []
    for address, user in (("203.0.113.1", "a"), ("203.0.113.2", "b")):
        sock = await proxied_socket(server.ws_port, encode_v2((address, 1234), GATEWAY))
        socket_, reply = await ws_open_session(ws_url(server), user, sock=sock)
        assert reply.WhichOneof("kind") == "connected"
        sessions.append(socket_)
    sock = await proxied_socket(server.ws_port, encode_v1(("203.0.113.1", 1235), GATEWAY))
    _, reply = await ws_open_session(ws_url(server), "c", sock=sock)
    assert reply.disconnect.code == Code.OVERLOADED
    assert gateway._per_address.count("203.0.113.1") == 1
    assert gateway._per_address.count("127.0.0.1") == 0
    for socket_ in sessions:
        await socket_.close()


async def test_proxy_protocol_on_wss(
    start_server: ServerFactory, certificate: tuple[Path, Path], trust: ssl.SSLContext
) -> None:
    cert, key = certificate
    server = await start_server(**secured(tls_cert=cert, tls_key=key, proxy_protocol=True))
    assert server.ws_port is not None
    sock = await proxied_socket(server.ws_port, encode_v1(("198.51.100.20", 20), GATEWAY))
    socket_, reply = await ws_open_session(
        ws_url(server, "wss"), "alice", sock=sock, ssl=trust, server_hostname="127.0.0.1"
    )
    assert reply.WhichOneof("kind") == "connected"
    assert server.gateway is not None
    assert server.gateway._per_address.count("198.51.100.20") == 1
    await socket_.close()


async def test_shutdown_closes_pending_handshakes(start_server: ServerFactory) -> None:
    server = await start_server(connect_timeout=30.0, **secured(proxy_protocol=True))
    gateway = server.gateway
    assert gateway is not None
    raw = await proxied_raw(server, b"PROXY ")
    await eventually(lambda: len(gateway._handshakes) == 1, "the preamble to start")
    await server.close()
    assert not gateway._handshakes
    assert await closed_without_reply(raw.reader) == b""
    raw.close()


# X-Forwarded-For


async def test_forwarded_for_from_trusted_proxy(start_server: ServerFactory) -> None:
    server = await start_server(
        limits=LimitsConfig(max_connections_per_ip=1), **secured(trusted_proxies=("127.0.0.0/8",))
    )
    gateway = server.gateway
    assert gateway is not None
    first, reply = await ws_open_session(
        ws_url(server), "a", additional_headers={"X-Forwarded-For": "203.0.113.10"}
    )
    assert reply.WhichOneof("kind") == "connected"
    second, reply = await ws_open_session(
        ws_url(server), "b", additional_headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.11"}
    )
    assert reply.WhichOneof("kind") == "connected"
    third, reply = await ws_open_session(
        ws_url(server), "c", additional_headers={"X-Forwarded-For": "203.0.113.10"}
    )
    assert reply.disconnect.code == Code.OVERLOADED
    assert gateway._per_address.count("203.0.113.10") == 1
    assert gateway._per_address.count("203.0.113.11") == 1
    assert gateway._per_address.count("127.0.0.1") == 0
    for socket_ in (first, second, third):
        await socket_.close()


async def test_forwarded_for_ignored_without_trusted_proxies(
    start_server: ServerFactory,
) -> None:
    server = await start_server()
    gateway = server.gateway
    assert gateway is not None
    socket_, reply = await ws_open_session(
        ws_url(server), "a", additional_headers={"X-Forwarded-For": "203.0.113.10"}
    )
    assert reply.WhichOneof("kind") == "connected"
    assert gateway._per_address.count("127.0.0.1") == 1
    assert gateway._per_address.count("203.0.113.10") == 0
    await socket_.close()


async def test_forwarded_for_ignored_from_untrusted_peer(start_server: ServerFactory) -> None:
    server = await start_server(**secured(trusted_proxies=("10.0.0.0/8",)))
    gateway = server.gateway
    assert gateway is not None
    socket_, reply = await ws_open_session(
        ws_url(server), "a", additional_headers={"X-Forwarded-For": "203.0.113.10"}
    )
    assert reply.WhichOneof("kind") == "connected"
    assert gateway._per_address.count("127.0.0.1") == 1
    await socket_.close()
