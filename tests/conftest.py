"""Fixtures shared by the tests: servers on free ports, clients, raw sockets, database queries.

Every wait in the tests is a multiple of `TIMEOUT`, which TETHER_TEST_TIMEOUT_SCALE scales
for slow machines.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import uvloop
from browser_support import launch_chromium
from postgres_server import ENABLE_HINT, PostgresUnavailable, TestDatabase
from redis_server import REDIS_KINDS, RedisUnderTest, new_redis

from tether.auth import issue_token
from tether.client import Client
from tether.client import events as ev
from tether.gateway import GatewayConfig
from tether.gateway.limits import LimitsConfig
from tether.logic import Store, conversation_id, is_postgres_url
from tether.presence import PresenceConfig
from tether.protocol import tether_pb2 as pb
from tether.protocol.framing import StreamDecoder, prefix_frame
from tether.server import EmbeddedServer, ServerConfig, send_admin_request

SCALE = float(os.environ.get("TETHER_TEST_TIMEOUT_SCALE", "1"))
TIMEOUT = 5.0 * SCALE  # maximum wait for something that should happen
QUIET = 0.3 * SCALE  # how long "nothing arrives" is watched for
SECRET = "test-secret-of-at-least-32-bytes-for-hs256"


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Run every async test on uvloop, the loop tether runs on in production."""
    return {"uvloop": uvloop.new_event_loop}


def test_gateway_config(**overrides: object) -> GatewayConfig:
    settings: dict[str, object] = {
        "tcp_port": 0,
        "ws_port": 0,
        "heartbeat_interval": 0.5,
        "offline_timeout": 2.0,
        "connect_timeout": 1.0,
        "sweep_interval": 0.05,
        "request_timeout": 2.0,
        "close_timeout": 1.0,
        # Tests send bursts of hundreds of frames; the limits have tests of their own.
        "limits": LimitsConfig(frames_per_second=1_000_000, frame_burst=1_000_000),
    }
    settings.update(overrides)
    return GatewayConfig(**settings)  # type: ignore[arg-type]


test_gateway_config.__test__ = False  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[TestDatabase]:
    """A PostgreSQL database for this test run, dropped at its end (see postgres_server.py)."""
    try:
        database = TestDatabase()
    except PostgresUnavailable as error:
        pytest.skip(f"PostgreSQL tests skipped: {error}. To run them, {ENABLE_HINT}.")
    yield database
    database.close()


@pytest.fixture
def postgres_url(postgres_database: TestDatabase) -> str:
    """The URL of an empty PostgreSQL schema of this test's own."""
    return postgres_database.new_schema()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty logic database of each backend in turn: a SQLite file, then a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "tether.db")
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def logic_database(request: pytest.FixtureRequest) -> str:
    """The database of the servers start_server starts; empty is tether.db in each data folder.

    Tests marked with BOTH_BACKENDS get "sqlite" and "postgresql" as indirect parameters, and
    run once with the default and once with a PostgreSQL schema of their own.
    """
    if getattr(request, "param", "sqlite") == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return ""


BOTH_BACKENDS = pytest.mark.parametrize("logic_database", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture(scope="module", params=REDIS_KINDS)
def redis_kind(request: pytest.FixtureRequest) -> str:
    """Run the tests that use it against a standalone server and against a Redis Cluster."""
    kind: str = request.param
    return kind


@pytest.fixture(scope="module")
def shared_redis(
    redis_kind: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisUnderTest]:
    """A server of redis_kind shared by a module's tests; they must not stop it."""
    server = new_redis(redis_kind, tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisUnderTest]:
    """A running server of one test's own: standalone, or the kind that the on_both mark passes."""
    server = new_redis(getattr(request, "param", "standalone"), tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def clients() -> AsyncIterator[list[Client]]:
    """SDK clients that a test opens and appends; each is closed at teardown."""
    opened: list[Client] = []
    yield opened
    for client in opened:
        await client.close()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Headless Chromium driven by Playwright; the test is skipped without either."""
    async with launch_chromium() as launched:
        yield launched


ServerFactory = Callable[..., Awaitable[EmbeddedServer]]


@pytest.fixture
async def start_server(tmp_path: Path, logic_database: str) -> AsyncIterator[ServerFactory]:
    """Return a function that starts an embedded server on free ports; all stop at teardown."""
    servers: list[EmbeddedServer] = []

    async def start(
        *,
        grace_period: float = 0.3,
        token_leeway: float = 5.0,
        http_port: int | None = None,
        api_keys: tuple[str, ...] = (),
        admin_keys: tuple[str, ...] = (),
        load_report_interval: float = 2.0,
        **gateway: object,
    ) -> EmbeddedServer:
        config = ServerConfig(
            data_dir=tmp_path / f"server{len(servers)}",
            secret=SECRET,
            gateway=test_gateway_config(**gateway),
            presence=PresenceConfig(grace_period=grace_period),
            token_leeway=token_leeway,
            database=logic_database,
            http_port=http_port,
            api_keys=api_keys,
            admin_keys=admin_keys,
            load_report_interval=load_report_interval,
        )
        server = EmbeddedServer(config)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def server(start_server: ServerFactory) -> EmbeddedServer:
    return await start_server()


def url_of(server: EmbeddedServer, transport: str) -> str:
    if transport == "tcp":
        return f"tcp://127.0.0.1:{server.tcp_port}"
    return f"ws://127.0.0.1:{server.ws_port}{server.config.gateway.ws_path}"


ClientFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
async def connect() -> AsyncIterator[ClientFactory]:
    """Return a function that connects a client; every client closes at teardown."""
    clients: list[Client] = []

    async def open_client(
        server: EmbeddedServer,
        user: str,
        *,
        device: str = "phone",
        transport: str = "tcp",
        status: str = "online",
        reconnect: bool = False,
    ) -> Client:
        client = Client(
            url_of(server, transport),
            issue_token(SECRET, user),
            device,
            status=status,
            reconnect=reconnect,
            connect_timeout=TIMEOUT,
            ack_timeout=TIMEOUT,
        )
        await client.connect()
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        await client.close()


async def add_contacts(server: EmbeddedServer, user_a: str, user_b: str) -> None:
    result = await send_admin_request(server.config.data_dir, "contacts.add", [user_a, user_b])
    assert result is not None, "control socket not reachable"
    assert result.error_code == 0, result.error_message


async def next_of(client: Client, kind: type, timeout: float = TIMEOUT) -> object:
    """Return the next event of a kind, skipping others."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise TimeoutError(f"no {kind.__name__} within {timeout} s")
        event = await client.next_event(remaining)
        if isinstance(event, kind):
            return event


async def presence_of(client: Client, user: str, timeout: float = TIMEOUT) -> ev.Presence:
    """Return the next presence change of user seen by client."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise TimeoutError(f"no presence change of {user} within {timeout} s")
        event = await client.next_event(remaining)
        if isinstance(event, ev.PresenceChanged) and event.presence.user_id == user:
            return event.presence


async def drain(client: Client, quiet: float = QUIET) -> list[ev.Event]:
    """Return every event that arrives until none has for quiet seconds."""
    seen: list[ev.Event] = []
    while True:
        try:
            seen.append(await client.next_event(quiet))
        except TimeoutError:
            return seen


class SilentReader:
    """A client that logs in and then never reads, with a small receive buffer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    async def open(cls, port: int, token: str, device: str = "silent") -> SilentReader:
        """Connect to a gateway's TCP port on 127.0.0.1 and send a Connect with token."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", port))
        connect = pb.Connect(protocol_version=1, token=token, device_id=device)
        await loop.sock_sendall(sock, prefix_frame(pb.Frame(connect=connect).SerializeToString()))
        return cls(sock)

    async def read_to_end(self) -> list[pb.Frame]:
        """Read everything the server sent until it closed the connection."""
        loop = asyncio.get_running_loop()
        decoder = StreamDecoder(1 << 24)
        frames: list[pb.Frame] = []
        while True:
            try:
                data = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), TIMEOUT)
            except ConnectionResetError:
                return frames
            if not data:
                return frames
            frames.extend(pb.Frame.FromString(payload) for payload in decoder.feed(data))

    def close(self) -> None:
        self.sock.close()


class RawClient:
    """A bare TCP client that speaks frames, for input no well-behaved client would send."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = StreamDecoder(16 * 1024 * 1024)
        self.frames: list[pb.Frame] = []

    @classmethod
    async def open(cls, server: EmbeddedServer) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.tcp_port)
        return cls(reader, writer)

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def send(self, frame: pb.Frame) -> None:
        self.writer.write(prefix_frame(frame.SerializeToString()))

    def send_connect(self, user: str, device: str = "raw", token: str | None = None) -> None:
        connect = pb.Connect(
            protocol_version=1,
            token=issue_token(SECRET, user) if token is None else token,
            device_id=device,
        )
        self.send(pb.Frame(connect=connect))

    async def receive(self, timeout: float = TIMEOUT) -> pb.Frame | None:
        """Return the next frame, or None when the server closed the connection."""
        while not self.frames:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                return None
            self.frames.extend(pb.Frame.FromString(p) for p in self.decoder.feed(data))
        return self.frames.pop(0)

    async def receive_kind(self, kind: str, timeout: float = TIMEOUT) -> pb.Frame:
        """Return the next frame of a kind, skipping others; fail if the connection closes."""
        while True:
            frame = await self.receive(timeout)
            assert frame is not None, f"connection closed before a {kind} frame"
            if frame.WhichOneof("kind") == kind:
                return frame

    async def disconnect_code(self, timeout: float = TIMEOUT) -> int | None:
        """Return the code of the Disconnect frame that precedes the close, if any."""
        code = None
        while True:
            try:
                frame = await self.receive(timeout)
            except (ConnectionError, OSError):
                return code
            if frame is None:
                return code
            if frame.WhichOneof("kind") == "disconnect":
                code = frame.disconnect.code

    def close(self) -> None:
        self.writer.close()


async def query_database(database: str, *statements: str) -> list[tuple[object, ...]]:
    """Run statements on a database directly, bypassing the store; return the last one's rows."""
    if is_postgres_url(database):
        connection = await asyncpg.connect(database)
        try:
            rows: list[tuple[object, ...]] = []
            for statement in statements:
                rows = [tuple(record) for record in await connection.fetch(statement)]
            return rows
        finally:
            await connection.close()
    with closing(sqlite3.connect(database)) as db, db:
        for statement in statements:
            rows = db.execute(statement).fetchall()
        return rows


async def seed_messages(
    store: Store, sender: str, recipient: str, count: int, body: bytes = b"old"
) -> str:
    """Store count messages from sender to recipient in one transaction; return the conversation.

    The two users become contacts first.
    """
    async with store.transaction():
        await store.add_contacts(sender, recipient)
        for index in range(count):
            await store.store_direct(
                sender=sender,
                sender_device="seed",
                recipient=recipient,
                client_message_id=f"seed-{sender}-{index}",
                body=body,
            )
    return conversation_id(sender, recipient)
