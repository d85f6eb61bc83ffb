"""Hostile input against token keys, TLS, the PROXY protocol, PostgreSQL and SDK reconnects.

Tests that found a defect and could not be fixed simply are marked `xfail(strict=True)` with the
defect in the reason, so they fail once it is fixed and the mark can go.

The attacks on transports run inside the `Arena` of tests/test_hostile.py: well-behaved clients
(100, or 10 where the connection rate is low) chat while the attack runs and must lose nothing.
Every server binds to 127.0.0.1, every load is bounded in count, and every wait is a multiple
of `TIMEOUT` or `QUIET`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import os
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import jwt
import pytest
import redis.asyncio as redis
from conftest import (
    QUIET,
    SECRET,
    TIMEOUT,
    ClientFactory,
    RawClient,
    ServerFactory,
    add_contacts,
    drain,
    next_of,
    test_gateway_config,
)
from postgres_server import TestDatabase
from redis_server import RedisUnderTest
from test_cluster import Cluster, _until_online, befriend, chat_until, free_port
from test_cluster import connect as cluster_connect
from test_hostile import (
    OP_BINARY,
    Arena,
    RawWebSocket,
    _Pair,
    closed_within,
    raw_frame,
    rss_bytes,
    ws_header,
)
from test_keys import ec_key, jwk_of, rsa_key, sign, write_jwks
from tls_support import client_context, make_certificate

from tether.auth import TokenVerifier, issue_token
from tether.bench.swarm import Swarm
from tether.bus import envelope_pb2 as env
from tether.bus.channels import LOGIC_STREAM, user_channel
from tether.bus.memory import InProcessBus
from tether.client import Client
from tether.client import events as ev
from tether.gateway.limits import LimitsConfig
from tether.gateway.proxy_protocol import V2_SIGNATURE, encode_v1, encode_v2
from tether.gateway.security import TransportSecurity, TransportSecurityConfig
from tether.keys import KeyConfig, KeyStore
from tether.logic import LogicConfig, LogicService, open_store
from tether.logic.store import StoreError, conversation_id
from tether.presence import PresenceConfig
from tether.protocol import tether_pb2 as pb
from tether.protocol.codes import Code
from tether.protocol.errors import AuthenticationError
from tether.protocol.framing import StreamDecoder
from tether.server import EmbeddedServer, ServerConfig


def now() -> float:
    return asyncio.get_running_loop().time()


# Token keys.


@pytest.fixture
def jwks(tmp_path: Path) -> Path:
    """A JWKS file with the ES256 keys k0 and k1, last changed a minute ago."""
    path = tmp_path / "jwks.json"
    write_jwks(path, jwk_of(ec_key("k0"), "k0"), jwk_of(ec_key("k1"), "k1"))
    a_minute_ago = time.time() - 60
    os.utime(path, (a_minute_ago, a_minute_ago))
    return path


def verifies(verifier: TokenVerifier, token: str) -> bool:
    try:
        verifier.verify(token)
    except AuthenticationError:
        return False
    return True


@pytest.mark.parametrize("replacement", ["directory", "symlink loop", "named pipe"])
def test_key_file_replaced_by_no_file(jwks: Path, replacement: str) -> None:
    """A key file replaced by something else fails its reload, keeps the old keys, and never
    blocks the event loop (a named pipe would, until a writer came)."""
    store = KeyStore(KeyConfig(jwks_file=jwks, reload_interval=0))
    jwks.unlink()
    if replacement == "directory":
        jwks.mkdir()
    elif replacement == "symlink loop":
        jwks.symlink_to(jwks)
    else:
        os.mkfifo(jwks)
    checked = threading.Thread(target=store.current, daemon=True)
    checked.start()
    checked.join(QUIET * 3)
    blocked = checked.is_alive()
    if blocked:
        # Let the reader see an empty pipe, so the thread ends with the test.
        os.close(os.open(jwks, os.O_WRONLY | os.O_NONBLOCK))
        checked.join(TIMEOUT)
    assert not blocked, f"reading a {replacement} as a key file blocked the event loop"
    assert [key.kid for key in store.current().keys] == ["k0", "k1"]


class _TornRead:
    """A key file that an in-place rewrite changes between two reads of one `read()` call.

    A read of a regular file may take several read calls. When a writer truncates the file and
    writes a new version between them, the reader gets the start of the old version and the end
    of the new one. This object makes that happen every time, at `split` bytes.
    """

    def __init__(self, path: Path, new_text: bytes, split: int) -> None:
        # Unbuffered, so each read below is one read call on the file.
        self._file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by __exit__
        self._path = path
        self._new_text = new_text
        self._split = split

    def __enter__(self) -> _TornRead:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._file.close()

    def fileno(self) -> int:
        return self._file.fileno()

    def read(self, size: int = -1) -> bytes:
        head = self._file.read(self._split)
        with open(self._path, "r+b") as writer:  # in place: same inode, truncated first
            writer.truncate(0)
            writer.write(self._new_text)
        tail = self._file.read(size - len(head))
        assert head is not None and tail is not None
        return head + tail


def test_torn_read_of_key_file_not_loaded(jwks: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read that mixes two versions of a key file must not load keys found in neither."""
    store = KeyStore(KeyConfig(jwks_file=jwks, reload_interval=0))
    verifier = TokenVerifier(keys=store)
    old_text = jwks.read_bytes()
    new_text = json.dumps(
        {"keys": [jwk_of(ec_key("k1"), "k1"), jwk_of(ec_key("k2"), "k2")]}
    ).encode()
    assert len(new_text) == len(old_text)  # so the old start and the new end make valid JSON
    split = old_text.index(b', {"kty"') + 2  # after the old first key, k0
    original_open = Path.open

    def open_torn(path: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if path == jwks and mode == "rb":
            return _TornRead(path, new_text, split)
        return original_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_torn)
    os.utime(jwks)  # a new mtime, so the next check reloads the file
    loaded = [key.kid for key in store.current().keys]
    monkeypatch.undo()

    assert loaded in (["k0", "k1"], ["k1", "k2"]), f"a torn read loaded {loaded}"
    assert verifies(verifier, sign(ec_key("k1"), "k1"))  # in both versions
    store.reload()  # the file is whole now
    assert [key.kid for key in store.current().keys] == ["k1", "k2"]


@pytest.mark.parametrize("member", ["jwk", "jku", "x5u", "x5c"])
def test_keys_named_in_the_token_are_ignored(jwks: Path, member: str) -> None:
    """A token that brings its own key, or points at one, is checked against configured keys."""
    verifier = TokenVerifier(keys=KeyStore(KeyConfig(jwks_file=jwks)))
    attacker = ec_key("attacker")
    public = attacker.public_key()
    embedded: dict[str, object] = {
        "jwk": jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True),
        "jku": "https://attacker.example/jwks.json",
        "x5u": "https://attacker.example/cert.pem",
        "x5c": [base64.b64encode(b"not a certificate").decode()],
    }
    for kid in (None, "k0"):
        headers: dict[str, object] = {member: embedded[member]}
        if kid is not None:
            headers["kid"] = kid
        token = jwt.encode({"sub": "mallory"}, attacker, algorithm="ES256", headers=headers)
        with pytest.raises(AuthenticationError) as raised:
            verifier.verify(token)
        assert raised.value.code == Code.UNAUTHORIZED


@pytest.mark.parametrize(
    "header",
    [
        {"crit": ["exp"], "exp": 1},  # an extension tether does not implement
        {"crit": []},
        {"crit": "b64"},
        {"kid": "../../../../etc/passwd"},
        {"kid": "k0\u0000"},
        {"kid": "k" * 100_000},
    ],
)
def test_crafted_headers_rejected(jwks: Path, header: dict[str, object]) -> None:
    """Headers that a verifier must reject, on tokens signed by a configured key."""
    verifier = TokenVerifier(keys=KeyStore(KeyConfig(jwks_file=jwks)))
    headers = {"kid": "k0", **header}
    token = jwt.encode({"sub": "alice"}, ec_key("k0"), algorithm="ES256", headers=headers)
    with pytest.raises(AuthenticationError) as raised:
        verifier.verify(token)
    assert raised.value.code == Code.UNAUTHORIZED
    assert len(str(raised.value)) < 200


def test_token_without_kid_costs_bounded_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "jwks.json"
    public = jwk_of(rsa_key("many"), "unused")
    write_jwks(path, *({**public, "kid": f"key-{index}"} for index in range(64)))
    verifier = TokenVerifier(keys=KeyStore(KeyConfig(jwks_file=path)))
    checks = 0
    decode = jwt.decode

    def counting_decode(*args: Any, **kwargs: Any) -> Any:
        nonlocal checks
        checks += 1
        return decode(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    garbage = sign(rsa_key("attacker"))  # no kid, signed by a key the server does not have
    with pytest.raises(AuthenticationError):
        verifier.verify(garbage)
    assert checks <= 4, f"one token without kid cost {checks} signature checks"


def test_token_without_kid_uses_a_lone_jwks_key(tmp_path: Path) -> None:
    """Check that a kid-less token is verified by a JWKS key only when it is the only one."""
    path = tmp_path / "jwks.json"
    private = rsa_key("only")
    write_jwks(path, jwk_of(private, "only"))
    verifier = TokenVerifier(keys=KeyStore(KeyConfig(jwks_file=path)))
    assert verifier.verify(sign(private)) == "alice"

    write_jwks(path, jwk_of(private, "only"), jwk_of(rsa_key("second"), "second"))
    verifier = TokenVerifier(keys=KeyStore(KeyConfig(jwks_file=path)))
    with pytest.raises(AuthenticationError) as raised:
        verifier.verify(sign(private))
    assert raised.value.code == Code.UNAUTHORIZED


async def test_garbage_rs256_tokens_bounded_by_connection_rate(
    tmp_path: Path, closing: list[Client]
) -> None:
    """Each connection gets one token check, and the connection rate bounds the checks."""
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, jwk_of(rsa_key("server"), "k1"))
    rate, burst = 20, 40
    limits = LimitsConfig(new_connections_per_second=rate, new_connection_burst=burst)
    config = ServerConfig(
        data_dir=tmp_path / "server",
        secret=SECRET,  # for the bystanders
        keys=KeyConfig(jwks_file=jwks),
        gateway=test_gateway_config(limits=limits),
        presence=PresenceConfig(grace_period=0.3),
    )
    server = EmbeddedServer(config)
    await server.start()
    started = now()
    try:
        arena = await arena_at(
            server,
            f"tcp://127.0.0.1:{server.tcp_port}",
            f"ws://127.0.0.1:{server.ws_port}{config.gateway.ws_path}",
            pairs=5,
        )
        closing.extend(client for pair in arena.pairs for client in (pair.sender, pair.receiver))
        garbage = sign(rsa_key("attacker"), "k1")  # the server's kid, another key's signature

        async def attempt() -> int | None:
            raw = await RawClient.open(server)
            # Many Connect frames in one write: only the first is read.
            raw.send_raw(raw_frame(pb.Frame(connect=pb.Connect(
                protocol_version=1, token=garbage, device_id="d"))) * 50)  # fmt: skip
            code = await raw.disconnect_code()
            raw.close()
            return code

        async with arena.chatting():
            codes = await asyncio.gather(*(attempt() for _ in range(200)))
        elapsed = now() - started
        await arena.check()
    finally:
        await server.close()
    checked = codes.count(Code.UNAUTHORIZED)
    assert checked + codes.count(Code.OVERLOADED) == len(codes)
    assert checked <= burst + rate * elapsed, f"{checked} token checks in {elapsed:.1f} s"


# TLS and the PROXY protocol.


def client_hello() -> bytes:
    """Return the first flight of a TLS client: a complete ClientHello record."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


async def arena_at(
    server: EmbeddedServer,
    tcp_url: str,
    ws_url: str,
    *,
    trust: ssl.SSLContext | None = None,
    pairs: int = 50,
) -> Arena:
    """Connect 2 * pairs bystanders to server through the given addresses; return the Arena."""
    joined: list[_Pair] = []
    for index in range(pairs):
        sender_id, receiver_id = f"by{index}s", f"by{index}r"
        await add_contacts(server, sender_id, receiver_id)
        opened = []
        for user in (sender_id, receiver_id):
            client = Client(
                tcp_url if index % 2 else ws_url,
                issue_token(SECRET, user),
                "phone",
                reconnect=False,
                connect_timeout=TIMEOUT,
                ack_timeout=TIMEOUT,
                ssl_context=trust,
            )
            await client.connect()
            opened.append(client)
        joined.append(_Pair(opened[0], opened[1], receiver_id))
    arena = Arena(server, joined)
    gc.collect()
    arena.rss_before = rss_bytes()
    return arena


@pytest.fixture
async def closing() -> AsyncIterator[list[Client]]:
    """Clients that tests open outside the connect fixture; each is closed at teardown."""
    clients: list[Client] = []
    yield clients
    for client in clients:
        await client.close()


async def tls_arena(
    start_server: ServerFactory, tmp_path: Path, closing: list[Client], **settings: object
) -> tuple[Arena, ssl.SSLContext]:
    """Start a TLS server and connect 100 bystanders to it over tls:// and wss://."""
    cert, key = make_certificate(tmp_path)
    trust = client_context(cert)
    security = TransportSecurityConfig(tls_cert=cert, tls_key=key)
    server = await start_server(transport_security=security, **settings)
    arena = await arena_at(
        server,
        f"tls://127.0.0.1:{server.tcp_port}",
        f"wss://127.0.0.1:{server.ws_port}{server.config.gateway.ws_path}",
        trust=trust,
    )
    closing.extend(client for pair in arena.pairs for client in (pair.sender, pair.receiver))
    return arena, trust


async def open_partial_hello(
    port: int, hello: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(hello[: len(hello) // 2])
    return reader, writer


async def wss_logged_in(server: EmbeddedServer, trust: ssl.SSLContext, user: str) -> RawWebSocket:
    """Open a WebSocket over TLS with a small receive buffer, log in as user, and return it."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", server.ws_port))
    reader, writer = await asyncio.open_connection(
        sock=sock, ssl=trust, server_hostname="127.0.0.1", limit=4096
    )
    request = (
        f"GET {server.config.gateway.ws_path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: tether.v1\r\n\r\n"
    )
    writer.write(request.encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101"), head
    ws = RawWebSocket(reader, writer)
    connect = pb.Connect(protocol_version=1, token=issue_token(SECRET, user), device_id="raw")
    ws.send_tether(pb.Frame(connect=connect))
    while True:
        received = await ws.receive()
        assert received is not None, "closed before Connected"
        opcode, payload = received
        if opcode == OP_BINARY and pb.Frame.FromString(payload).HasField("connected"):
            return ws


async def test_wss_client_that_never_reads(
    start_server: ServerFactory, tmp_path: Path, closing: list[Client]
) -> None:
    arena, trust = await tls_arena(start_server, tmp_path, closing, max_outgoing_bytes=64 * 1024)
    server = arena.server
    gateway = server.gateway
    assert gateway is not None
    async with arena.chatting():
        greedy = await wss_logged_in(server, trust, "greedy")
        heartbeat = pb.Frame(heartbeat=pb.Heartbeat(nonce=1)).SerializeToString()
        frame = ws_header(OP_BINARY, len(heartbeat)) + heartbeat  # zero mask key
        started = now()
        while "greedy" in gateway.sessions and now() - started < TIMEOUT:
            greedy.writer.write(frame * 500)
            await asyncio.sleep(0.005)
        elapsed = now() - started
        greedy.writer.transport.abort()
    print("closed after", elapsed)
    assert "greedy" not in gateway.sessions
    await arena.check()


async def closed_after(reader: asyncio.StreamReader, started: float) -> tuple[float, bytes]:
    """Read until the server closes; return the seconds from started to the close and the
    bytes that arrived."""
    received = b""
    try:
        async with asyncio.timeout(TIMEOUT):
            while data := await reader.read(65536):
                received += data
    except ConnectionError:
        pass
    return now() - started, received


async def test_partial_client_hellos_closed_in_time(
    start_server: ServerFactory, tmp_path: Path, closing: list[Client]
) -> None:
    """Check that 200 stalled TLS handshakes end at connect_timeout and cost no bystander."""
    timeout = 1.0
    arena, _ = await tls_arena(start_server, tmp_path, closing, connect_timeout=timeout)
    server = arena.server
    hello = client_hello()
    async with arena.chatting():
        started = now()
        stalled = []
        for port in (server.tcp_port, server.ws_port) * 100:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(hello[: len(hello) // 2])
            stalled.append((reader, writer))
        closed = await asyncio.gather(*(closed_after(reader, started) for reader, _ in stalled))
        for _, writer in stalled:
            writer.close()
    assert all(timeout * 0.9 <= elapsed < timeout + 1.0 for elapsed, _ in closed), closed
    await arena.check()


@pytest.mark.xfail(
    strict=True,
    reason="max_connections_per_ip is checked only after the TLS handshake, so one address "
    "holds any number of stalled handshakes (sockets and TLS state) for connect_timeout each",
)
async def test_stalled_handshakes_count_per_address(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    cert, key = make_certificate(tmp_path)
    server = await start_server(
        connect_timeout=2.0,
        limits=LimitsConfig(max_connections_per_ip=10),
        transport_security=TransportSecurityConfig(tls_cert=cert, tls_key=key),
    )
    hello = client_hello()
    stalled = []
    for _ in range(50):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.tcp_port)
        writer.write(hello[: len(hello) // 2])
        stalled.append((reader, writer))
    await asyncio.sleep(0.5)  # well inside connect_timeout
    closed = await asyncio.gather(*(closed_within(reader, QUIET) for reader, _ in stalled))
    for _, writer in stalled:
        writer.close()
    assert closed.count(False) <= 10


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("HTTPS://KIT.EXAMPLE", True),
        ("https://kit.example/", False),  # browsers send no path
        ("https://kit.example:443", False),  # nor the default port
        ("https://kit.example.", False),
        ("https://kit.example, https://evil.example", False),
        # U+212A KELVIN SIGN lowercases to "k": an origin is ASCII (RFC 6454, 6.2), so a
        # non-ASCII value is never one, whatever its case folding.
        ("https://\u212ait.example", False),
        ("https://k\u0130t.example", False),
    ],
)
def test_origin_tricks(origin: str, allowed: bool) -> None:
    config = TransportSecurityConfig(ws_allowed_origins=("https://kit.example",))
    assert TransportSecurity.from_config(config).origin_allowed(origin) is allowed


def test_null_origin_can_be_allowed() -> None:
    """`null`, the origin of sandboxed frames and local files, is allowed when listed."""
    config = TransportSecurityConfig(ws_allowed_origins=("null", "https://kit.example"))
    checks = TransportSecurity.from_config(config)
    assert checks.origin_allowed("null")
    assert checks.origin_allowed("https://kit.example")
    assert not checks.origin_allowed("https://other.example")


@pytest.mark.parametrize(
    ("origin", "problem"),
    [
        ("https://b\u00fccher.example", "xn--"),  # browsers send xn--bcher-kva.example
        ("https://kit.example:443", "default port 443"),
        ("HTTP://kit.example:80", "default port 80"),
    ],
)
def test_origin_settings_browsers_never_send(origin: str, problem: str) -> None:
    """An allowed origin that no browser sends would silently reject every page."""
    with pytest.raises(ValueError, match=problem):
        TransportSecurityConfig(ws_allowed_origins=(origin,))


class Balancer:
    """A TCP relay that starts each connection with a PROXY v2 header, as a load balancer does.

    Each client gets its own reported address, 198.51.100.N, so per-address limits apply to it.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._clients = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients += 1
        client = (f"198.51.100.{self._clients % 250 + 1}", 40000 + self._clients)
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )
        upstream_writer.write(encode_v2(client, ("127.0.0.1", self.target_port)))
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except ConnectionError:
            pass
        finally:
            sink.close()


@pytest.fixture
async def balancers() -> AsyncIterator[list[Balancer]]:
    started: list[Balancer] = []
    yield started
    for balancer in started:
        await balancer.close()


async def bound_connection(
    port: int, source: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a TCP connection to 127.0.0.1:port from the loopback address source."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


# Headers that must close the connection at once, with no reply.
BAD_PROXY_HEADERS = [
    V2_SIGNATURE + b"\x21\x11\xff\xff",  # a version 2 header announcing 65,535 bytes of TLVs
    V2_SIGNATURE + b"\x21\x11\x10\x00" + bytes(4096),  # 4,112 bytes: over MAX_V2_BYTES
    b"PROXY TCP4 203.0.113.1 10.0.0.1 99999 7400\r\n",
    b"PROXY TCP4 203.0.113.1 10.0.0.1 -0 7400\r\n",
    b"PROXY TCP4 203.0.113.1 10.0.0.1 +80 7400\r\n",
    b"PROXY TCP4 203.0.113.1 10.0.0.1 \xd9\xa3 7400\r\n",  # an Arabic-Indic digit
    b"PROXY TCP4 0x7f.1 10.0.0.1 80 7400\r\n",
    b"PROXY TCP4 127.1 10.0.0.1 80 7400\r\n",
    b"PROXY TCP6 ::1%\nforged ::1 80 7400\r\n",
    b"PROXY " + b"9" * 200,
]


async def test_proxy_protocol_attacks_cost_only_their_senders(
    start_server: ServerFactory, closing: list[Client], balancers: list[Balancer]
) -> None:
    """Run malformed, spoofed and stalled PROXY headers beside 100 clients behind a balancer."""
    timeout = 1.0
    server = await start_server(
        connect_timeout=timeout,
        transport_security=TransportSecurityConfig(
            proxy_protocol=True, trusted_proxies=("127.0.0.1/32",)
        ),
    )
    gateway = server.gateway
    assert gateway is not None
    assert server.tcp_port is not None
    assert server.ws_port is not None
    tcp, ws = Balancer(server.tcp_port), Balancer(server.ws_port)
    balancers.extend((tcp, ws))
    arena = await arena_at(
        server,
        f"tcp://127.0.0.1:{await tcp.start()}",
        f"ws://127.0.0.1:{await ws.start()}{server.config.gateway.ws_path}",
    )
    closing.extend(client for pair in arena.pairs for client in (pair.sender, pair.receiver))
    connections_before = len(gateway.connections)

    async with arena.chatting():
        started = now()
        at_once = []
        for port in (server.tcp_port, server.ws_port):
            for header in BAD_PROXY_HEADERS:
                reader, writer = await bound_connection(port)
                writer.write(header)
                at_once.append((reader, writer))
            # A peer outside trusted_proxies claims to be a trusted balancer's client.
            reader, writer = await bound_connection(port, source="127.0.0.2")
            writer.write(encode_v1(("203.0.113.9", 1), ("127.0.0.1", port)))
            at_once.append((reader, writer))
        # An upgrade request whose X-Forwarded-For has 10,000 entries (120 KB): picows reads
        # at most 16 KiB of request head.
        reader, writer = await bound_connection(server.ws_port)
        writer.write(encode_v1(("127.0.0.1", 1), ("127.0.0.1", server.ws_port)))
        hops = ", ".join(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}" for n in range(10_000))
        writer.write(f"GET /ws HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {hops}\r\n".encode())
        at_once.append((reader, writer))
        stalled = []
        for index, port in enumerate((server.tcp_port, server.ws_port) * 50):
            reader, writer = await bound_connection(port)
            # Incomplete headers; a line ended by LF alone waits for its CR as well.
            writer.write(b"PROXY TCP4 203.0.113.1 10.0.0.1 80 7400\n" if index < 4 else b"PROXY ")
            stalled.append((reader, writer))

        quick = await asyncio.gather(*(closed_after(reader, started) for reader, _ in at_once))
        slow = await asyncio.gather(*(closed_after(reader, started) for reader, _ in stalled))
        for _, writer in at_once + stalled:
            writer.close()

    assert all(elapsed < timeout / 2 for elapsed, _ in quick), quick
    assert not any(reply for _, reply in quick + slow), "a rejected PROXY header got a reply"
    assert all(timeout * 0.9 <= elapsed < timeout + 1.0 for elapsed, _ in slow), slow
    assert not gateway._handshakes
    assert len(gateway.connections) == connections_before
    await arena.check()


# The PostgreSQL store.


@pytest.fixture
def cluster(tmp_path: Path, redis_server: RedisUnderTest) -> Iterator[Cluster]:
    running = Cluster(tmp_path / "data", redis_server)
    yield running
    running.stop()


async def test_database_not_in_utf8_rejected(postgres_database: TestDatabase) -> None:
    """A LATIN1 database fails every batch with one id outside Latin-1, so open_store rejects it."""
    name = f"{postgres_database.name}_latin1"
    admin = await asyncpg.connect(postgres_database.admin_url)
    await admin.execute(
        f"CREATE DATABASE \"{name}\" ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' "
        "TEMPLATE template0"
    )
    url = urlunsplit(urlsplit(postgres_database.admin_url)._replace(path=f"/{name}"))
    store = None
    try:
        # Opened, such a database would fail the statement of an id such as "\U0001f600"
        # ("has no equivalent in encoding LATIN1"), and with it the batch around it.
        with pytest.raises(StoreError, match="tether needs UTF8"):
            store = await open_store(url)
    finally:
        if store is not None:
            await store.close()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


REPLIES = "test.replies"


def send_request(request_id: int, sender: str, recipient: str, client_id: str) -> bytes:
    send = pb.Send(client_message_id=client_id, recipient=recipient, body=b"x" * 32_768)
    request = env.Envelope(
        reply_to=REPLIES,
        request_id=request_id,
        send_request=env.SendRequest(sender=sender, sender_device="phone", send=send),
    )
    return request.SerializeToString()


async def test_statement_failing_mid_batch_stores_nothing(postgres_url: str) -> None:
    """A statement that fails in the middle of a batch rolls back the requests before it."""
    bus = InProcessBus()
    await bus.start()
    service = LogicService(LogicConfig(database=postgres_url), bus)
    await service.start()
    store = service.store
    assert store is not None
    replies: asyncio.Queue[env.Envelope] = asyncio.Queue()
    bus.subscribe(REPLIES, lambda _, payload: replies.put_nowait(env.Envelope.FromString(payload)))
    deliveries: list[bytes] = []
    bus.subscribe(user_channel("bob"), lambda _, payload: deliveries.append(payload))
    database = await asyncpg.connect(postgres_url)
    try:
        for sender, recipient in (("alice", "bob"), ("carol", "dave"), ("erin", "frank")):
            await store.add_contacts(sender, recipient)
        # A real failure inside PostgreSQL, raised for one message only.
        await database.execute(
            """
            CREATE FUNCTION reject_poison() RETURNS trigger AS $$
            BEGIN
                IF NEW.client_message_id = 'poison' THEN
                    RAISE EXCEPTION 'rejected by the test';
                END IF;
                RETURN NEW;
            END $$ LANGUAGE plpgsql;
            CREATE TRIGGER reject_poison BEFORE INSERT ON messages
                FOR EACH ROW EXECUTE FUNCTION reject_poison();
            """
        )
        # Appended together, the three requests reach the service as one batch.
        bus.append(LOGIC_STREAM, send_request(1, "alice", "bob", "first"))
        bus.append(LOGIC_STREAM, send_request(2, "carol", "dave", "poison"))
        bus.append(LOGIC_STREAM, send_request(3, "erin", "frank", "third"))
        failed = [await asyncio.wait_for(replies.get(), TIMEOUT) for _ in range(3)]
        stored = await database.fetch("SELECT client_message_id FROM messages")
        sequences = await database.fetch("SELECT id, last_sequence FROM conversations")

        await database.execute("DROP TRIGGER reject_poison ON messages")
        for request_id in (4, 5):  # the application resends with the same id
            bus.append(LOGIC_STREAM, send_request(request_id, "alice", "bob", "first"))
            await asyncio.sleep(QUIET)  # one batch each
        resent = [await asyncio.wait_for(replies.get(), TIMEOUT) for _ in range(2)]
    finally:
        await database.close()
        await bus.close()
        await service.close()

    assert sorted(reply.request_id for reply in failed) == [1, 2, 3]
    assert all(reply.send_result.error_code == Code.UNAVAILABLE for reply in failed)
    assert stored == [], "a failed batch left messages behind"
    assert sequences == [], "a failed batch left sequence numbers behind"
    first, again = (reply.send_result for reply in resent)
    assert first.error_code == again.error_code == 0
    assert first.ack.sequence == 1
    assert again.ack.message_id == first.ack.message_id
    assert len(deliveries) == 1, "a failed batch published, or a resend delivered twice"


async def until(check: Callable[[], Awaitable[bool]], description: str) -> None:
    deadline = now() + TIMEOUT
    while not await check():
        assert now() < deadline, f"timed out waiting for {description}"
        await asyncio.sleep(0.05)


async def test_logic_worker_killed_mid_transaction(
    cluster: Cluster, postgres_url: str, redis_server: RedisUnderTest
) -> None:
    """SIGKILL a logic worker inside a batch transaction that has written one message and
    waits for a lock: nothing of the batch is stored, and the resends are stored once."""
    worker = cluster.logic("logic1", database=postgres_url)
    store = await open_store(postgres_url)
    database = await asyncpg.connect(postgres_url)
    bus = redis.Redis.from_url(redis_server.url)
    replies = bus.pubsub()
    try:
        await store.add_contacts("alice", "bob")
        await store.add_contacts("carol", "dave")
        await store.store_direct(
            sender="carol", sender_device="phone", recipient="dave",
            client_message_id="seed", body=b"",
        )  # fmt: skip
        await replies.subscribe(REPLIES)
        lock = database.transaction()
        await lock.start()
        await database.execute(
            "SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", conversation_id("carol", "dave")
        )
        # One MULTI/EXEC, so the worker reads both requests in one batch: it stores alice's
        # message, then waits for the lock on carol's conversation.
        async with bus.pipeline(transaction=True) as pipe:
            pipe.xadd(LOGIC_STREAM, {"p": send_request(1, "alice", "bob", "a-1")})
            pipe.xadd(LOGIC_STREAM, {"p": send_request(2, "carol", "dave", "c-1")})
            await pipe.execute()

        async def waiting_for_lock() -> bool:
            return bool(await database.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"))

        async def messages_written() -> bool:
            """Tell whether another session's open transaction has written to messages."""
            held = await database.fetchval(
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                "WHERE c.relname = 'messages' AND l.pid <> pg_backend_pid()"
            )
            return bool(held)

        await until(waiting_for_lock, "the worker's batch to wait for the lock")
        assert await messages_written(), "the batch should have stored alice's message by now"
        worker.kill()
        await lock.rollback()

        async def rolled_back() -> bool:
            return not await messages_written()

        await until(rolled_back, "PostgreSQL to end the killed worker's transaction")
        left = await database.fetch(
            "SELECT client_message_id FROM messages WHERE client_message_id <> 'seed'"
        )
        assert left == [], "the killed worker's batch left rows behind"
        sequences = await database.fetch("SELECT id, last_sequence FROM conversations")
        assert [tuple(row) for row in sequences] == [(conversation_id("carol", "dave"), 1)]

        cluster.logic("logic2", database=postgres_url)
        for request_id, sender, recipient, client_id in (
            (3, "alice", "bob", "a-1"), (4, "carol", "dave", "c-1"), (5, "alice", "bob", "a-1"),
        ):  # fmt: skip
            await bus.xadd(
                LOGIC_STREAM, {"p": send_request(request_id, sender, recipient, client_id)}
            )
        acks: dict[int, pb.SendAck] = {}
        deadline = now() + TIMEOUT
        while len(acks) < 3:
            assert now() < deadline, "the new worker did not answer"
            message = await replies.get_message(timeout=QUIET)
            if message is None or message["type"] != "message":
                continue
            reply = env.Envelope.FromString(message["data"])
            assert reply.send_result.error_code == 0, reply.send_result.error_message
            acks[reply.request_id] = reply.send_result.ack
    finally:
        await replies.aclose()
        await bus.aclose()
        await database.close()
        await store.close()

    assert acks[3].sequence == 1  # the killed transaction's number was rolled back
    assert acks[4].sequence == 2  # after the seed, without a gap
    assert acks[5].message_id == acks[3].message_id  # a second resend: the same message


# SDK reconnects over several gateway addresses.


def refused_url() -> str:
    """Return the address of a port that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


@pytest.fixture
async def silent_url() -> AsyncIterator[str]:
    """The address of a server that accepts TCP connections and never replies."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()
    for writer in held:
        writer.close()


@pytest.mark.parametrize("dead", ["refused", "silent", "refused twice"])
async def test_connect_tries_every_address(
    server: EmbeddedServer, closing: list[Client], silent_url: str, dead: str
) -> None:
    """connect() must reach a live gateway behind addresses that refuse or never reply."""
    live = f"tcp://127.0.0.1:{server.tcp_port}"
    urls = {
        "refused": [refused_url(), silent_url, live],
        "silent": [silent_url, live],
        "refused twice": [refused_url()] * 2 + [live],  # a list may name an address twice
    }[dead]
    client = Client(
        urls, issue_token(SECRET, "alice"), "phone", connect_timeout=0.5, backoff_initial=0.05
    )
    closing.append(client)
    session = await client.connect()
    assert session.user_id == "alice"
    assert client.url == live


async def test_swarm_moves_past_silent_gateway(server: EmbeddedServer, silent_url: str) -> None:
    """A swarm client whose gateway accepts and never replies gives up and tries the next."""
    swarm = Swarm(
        [silent_url, f"tcp://127.0.0.1:{server.tcp_port}"], SECRET, 2, connect_timeout=0.5
    )
    await swarm.start()
    try:
        deadline = now() + TIMEOUT
        while swarm.open_count < 2:
            assert now() < deadline, f"{swarm.open_count} of 2 swarm clients got a session"
            await asyncio.sleep(0.05)
    finally:
        swarm.stop()


class CuttableRelay:
    """A TCP relay to a gateway that counts the Send frames its clients write, and that can
    swallow traffic in either direction and cut its connections, as a failing network does."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.sends: Counter[str] = Counter()
        """Send frames written by clients, by client_message_id, forwarded or not."""
        self.hold_requests = False
        self.drop_replies = False
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return f"tcp://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def cut(self) -> None:
        """Reset every connection through the relay."""
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )
        self._writers += [writer, upstream_writer]
        for task in (
            asyncio.create_task(self._requests(reader, upstream_writer)),
            asyncio.create_task(self._replies(upstream_reader, writer)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _requests(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        decoder = StreamDecoder(1 << 20)
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                for payload in decoder.feed(data):
                    frame = pb.Frame.FromString(payload)
                    if frame.WhichOneof("kind") == "send":
                        self.sends[frame.send.client_message_id] += 1
                if not self.hold_requests:
                    sink.write(data)

    async def _replies(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                if not self.drop_replies:
                    sink.write(data)


@pytest.fixture
async def relays() -> AsyncIterator[list[CuttableRelay]]:
    started: list[CuttableRelay] = []
    yield started
    for relay in started:
        await relay.close()


async def test_unacked_sends_resent_once_on_next_address(
    server: EmbeddedServer,
    connect: ClientFactory,
    closing: list[Client],
    relays: list[CuttableRelay],
) -> None:
    """Cut a sender's link while its acks are lost and its newest sends are held.

    After the reconnect to the next address, the sender resends each unacked message once.
    Messages the server had stored get their original ack, and the recipient gets every
    message once.
    """
    await add_contacts(server, "alice", "bob")
    bob = await connect(server, "bob")
    assert server.tcp_port is not None
    first, second = CuttableRelay(server.tcp_port), CuttableRelay(server.tcp_port)
    relays += [first, second]
    alice = Client(
        [await first.start(), await second.start()],
        issue_token(SECRET, "alice"),
        "phone",
        connect_timeout=TIMEOUT,
        ack_timeout=TIMEOUT,
        backoff_initial=0.05,
    )
    closing.append(alice)
    await alice.connect()

    first.drop_replies = True  # stored by the server, but the acks never arrive
    stored = [
        asyncio.create_task(alice.send("bob", f"m{n}", client_message_id=f"m{n}")) for n in range(5)
    ]
    delivered = await collect_messages(bob, 5)
    first.hold_requests = True  # never reach the server
    held = [
        asyncio.create_task(alice.send("bob", f"m{n}", client_message_id=f"m{n}"))
        for n in range(5, 10)
    ]
    await asyncio.sleep(QUIET)
    first.cut()
    acks = await asyncio.gather(*stored, *held)
    delivered += await collect_messages(bob, 5)
    delivered += [event for event in await drain(bob) if isinstance(event, ev.Message)]

    names = [f"m{n}" for n in range(10)]
    assert first.sends == Counter(names), "each message crossed the first link once"
    assert second.sends == Counter(names), "each unacked message is resent once"
    assert sorted(message.body.decode() for message in delivered) == names
    by_body = {message.body.decode(): message.message_id for message in delivered}
    assert [ack.message_id for ack in acks] == [by_body[name] for name in names]
    assert sorted(ack.sequence for ack in acks) == list(range(1, 11))


async def collect_messages(client: Client, count: int) -> list[ev.Message]:
    """Return the next count messages client receives, skipping other events."""
    messages: list[ev.Message] = []
    while len(messages) < count:
        event = await next_of(client, ev.Message)
        assert isinstance(event, ev.Message)
        messages.append(event)
    return messages


async def test_gateway_killed_during_rolling_restart(
    cluster: Cluster, closing: list[Client]
) -> None:
    """Drain and restart gw1, then SIGKILL gw2 while sends are in flight and restart it: every
    acknowledged message reaches its recipient exactly once."""
    cluster.logic()
    ports = {name: free_port() for name in ("gw1", "gw2")}
    gateways = {name: cluster.gateway(name, tcp_port=str(port)) for name, port in ports.items()}
    urls = [gateway.url for gateway in gateways.values()]
    pairs = [(f"s{index}", f"r{index}") for index in range(4)]
    connected: dict[str, Client] = {}
    for index, (sender, receiver) in enumerate(pairs):
        await befriend(cluster, sender, receiver)
        order = urls[index % 2 :] + urls[: index % 2]  # receivers on the sender's other gateway
        connected[receiver] = await cluster_connect(
            closing, gateways["gw1"], receiver, url=order[::-1]
        )
        connected[sender] = await cluster_connect(closing, gateways["gw1"], sender, url=order)
    for sender, receiver in pairs:
        await asyncio.wait_for(_until_online(connected[receiver], sender), TIMEOUT)

    acked: dict[str, list[int]] = {sender: [] for sender, _ in pairs}
    stop = asyncio.Event()

    senders = [
        asyncio.create_task(
            chat_until(stop, connected[sender], receiver, acked[sender], pause=0.02)
        )
        for sender, receiver in pairs
    ]
    await asyncio.sleep(0.5)
    await asyncio.to_thread(gateways["gw1"].stop)  # drained
    gateways["gw1"] = await asyncio.to_thread(cluster.gateway, "gw1", tcp_port=str(ports["gw1"]))
    await asyncio.sleep(0.5)
    gateways["gw2"].kill()  # SIGKILL: no drain, requests in flight are lost with it
    gateways["gw2"] = await asyncio.to_thread(cluster.gateway, "gw2", tcp_port=str(ports["gw2"]))
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*senders), TIMEOUT * 2)

    for sender, receiver in pairs:
        assert len(acked[sender]) > 10, "the senders barely sent anything"
        messages = await collect_messages(connected[receiver], len(acked[sender]))
        late = [e for e in await drain(connected[receiver], QUIET) if isinstance(e, ev.Message)]
        received = [message.message_id for message in messages + late]
        assert sorted(received) == sorted(acked[sender]), f"{receiver} lost or doubled messages"
