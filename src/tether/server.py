"""One tether process: embedded (everything on the in-process bus) or a cluster member.

`TetherServer` is what `tether serve` and `tether logic` run and what the tests start on free
ports. A process that runs logic also opens a control socket (a Unix socket in the data
directory) through which `tether contacts` and `tether groups` change contacts and groups of a
running server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tether.auth import TokenVerifier
from tether.bus import channels
from tether.bus import envelope_pb2 as env
from tether.bus.base import Bus
from tether.bus.memory import InProcessBus
from tether.bus.redis import RedisBus, RedisBusConfig
from tether.bus.requests import AsyncRequester
from tether.gateway import Gateway, GatewayConfig, start_tcp_server, start_websocket_server
from tether.gateway.presence_link import ClusterPresenceLink
from tether.gateway.security import TransportSecurity
from tether.hooks import HookConfig
from tether.keys import KeyConfig, KeyStore
from tether.logic import LogicConfig, LogicService, default_database
from tether.loop_lag import LoopLagMonitor
from tether.ops.gateway_load import LoadReporter, LoadSampler
from tether.ops.load_board import RedisLoadBoard
from tether.presence import PresenceConfig, PresenceService
from tether.presence.cluster import ClusterPresenceConfig, RedisPresence
from tether.presence.redis_group_counts import RedisGroupCounts, RedisGroupCountsConfig
from tether.protocol.codes import Code
from tether.protocol.framing import StreamDecoder, prefix_frame
from tether.urls import redact_url

if TYPE_CHECKING:
    from tether.hooks.logic import HookLogic
    from tether.ops.http import HttpPort

__all__ = [
    "CONTROL_SOCKET_NAME",
    "EmbeddedServer",
    "ServerConfig",
    "ServerState",
    "TetherServer",
    "load_or_create_secret",
    "send_admin_request",
]

logger = logging.getLogger("tether.server")

CONTROL_SOCKET_NAME = "control.sock"
SECRET_FILE_NAME = "secret"
# Large enough for a `tether groups` request of 500 user ids.
_MAX_CONTROL_FRAME = 65_536


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerConfig:
    """Settings of one tether process."""

    data_dir: Path
    """Folder for the database, the development secret and the control socket."""
    secret: str = ""
    """HS256 token secret, added to `keys.secrets`. If it is empty and `keys` names no secret
    and no key file, the server reads or creates `secret` in data_dir."""
    keys: KeyConfig = field(default_factory=KeyConfig)
    """Token verification keys besides `secret`: public key files, a JWKS file, more secrets."""
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    presence: PresenceConfig = field(default_factory=PresenceConfig)
    control_socket: bool = True
    """Open the control socket for `tether contacts` when logic runs here (default true)."""
    redis_url: str = ""
    """Redis or Valkey URL; empty runs embedded on the in-process bus (default empty)."""
    database: str = ""
    """Store of the reference logic: a SQLite file path or a `postgresql://` URL (default
    empty: `tether.db` in data_dir)."""
    redis_cluster: bool = False
    """Whether redis_url names a node of a Redis Cluster (default false)."""
    run_gateway: bool = True
    """Serve clients in this process (default true)."""
    run_logic: bool = True
    """Run the reference logic in this process (default true; always true when embedded)."""
    lease_timeout: float = 5.0
    """Cluster only: seconds a gateway's devices outlive it without a lease renewal."""
    token_leeway: float = 5.0
    """Seconds of clock skew tolerated on token expiry (default 5)."""
    loop_lag_threshold: float = 0.1
    """Seconds of event loop lag that log a warning; 0 measures without logging."""
    http_host: str = "127.0.0.1"
    """Address of the HTTP port for health probes and metrics (default 127.0.0.1)."""
    http_port: int | None = None
    """HTTP port for health probes and metrics; 0 picks a free one, None disables it
    (default None)."""
    api_keys: tuple[str, ...] = ()
    """Keys of the server HTTP API on the HTTP port; empty turns the API off (default)."""
    admin_keys: tuple[str, ...] = ()
    """Keys of the admin dashboard at /admin/ on the HTTP port; empty turns it off (default)."""
    load_report_interval: float = 2.0
    """Seconds between samples of the gateway's load for the admin dashboard; in a cluster,
    each sample is written to Redis (default 2)."""
    hooks: HookConfig | None = None
    """Connect and message hooks over HTTP to run as the logic instead of the reference logic
    (default None: the reference logic)."""
    demo: bool = False
    """Serve the demo messenger at /demo/ on the HTTP port, which hands out tokens for its
    users (default false). Allowed only embedded, with the reference logic and the development
    secret of data_dir; see docs/demo.md."""


class ServerState(enum.Enum):
    """Life cycle of a `TetherServer`, as the readiness probe reports it."""

    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


def load_or_create_secret(data_dir: Path) -> str:
    """Return the secret stored in data_dir, creating a random one (mode 0600) if absent."""
    path = data_dir / SECRET_FILE_NAME
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()  # another process created it first
    with os.fdopen(descriptor, "w") as file:
        file.write(secret + "\n")
    return secret


class TetherServer:
    """The parts of tether that run in one process.

    Embedded (no redis_url): gateway, in-memory presence and logic on the in-process bus.
    Cluster: a gateway with Redis presence, a logic worker, or both, on the Redis bus.
    """

    def __init__(self, config: ServerConfig) -> None:
        if not config.redis_url and not (config.run_gateway and config.run_logic):
            raise ValueError("embedded tether runs gateway and logic together; set redis_url")
        if not (config.run_gateway or config.run_logic):
            raise ValueError("nothing to run: enable the gateway, the logic or both")
        if config.gateway.reuse_port and not config.redis_url:
            # Embedded processes share no presence or logic: a user would land in one of
            # several disconnected worlds, chosen by the kernel per connection.
            raise ValueError(
                "reuse_port shares a port between gateways of one cluster: set redis_url"
            )
        self.config = config
        secrets = (*config.keys.secrets, config.secret) if config.secret else config.keys.secrets
        self.development_secret: str | None = None
        """The secret generated in data_dir, when the server runs with it and nothing else."""
        if not secrets and not config.keys.has_files:
            secrets = (load_or_create_secret(config.data_dir),)
            self.development_secret = secrets[0]
        if config.demo:
            _check_demo_config(config, self.development_secret)
        self.keys = KeyStore(dataclasses.replace(config.keys, secrets=secrets))
        self.bus: Bus
        self.cluster_presence: RedisPresence | None = None
        self.group_counts: RedisGroupCounts | None = None
        self.presence: PresenceService | None = None
        self.gateway: Gateway | None = None
        self.logic: LogicService | HookLogic | None = None
        verifier = TokenVerifier(keys=self.keys, leeway=config.token_leeway)
        self.loop_lag = LoopLagMonitor(threshold=config.loop_lag_threshold)
        # Loaded now, so a missing or bad certificate fails before anything starts.
        self.transport_security: TransportSecurity | None = None
        if config.run_gateway:
            self.transport_security = TransportSecurity.from_config(
                config.gateway.transport_security
            )

        if config.redis_url:
            gateway_id = config.gateway.gateway_id or f"gw-{os.urandom(4).hex()}"
            self.bus = RedisBus(RedisBusConfig(url=config.redis_url, cluster=config.redis_cluster))
            if config.run_gateway:
                gateway_config = dataclasses.replace(config.gateway, gateway_id=gateway_id)
                self.gateway = Gateway(gateway_config, self.bus, verifier)
                self.cluster_presence = RedisPresence(
                    ClusterPresenceConfig(
                        url=config.redis_url,
                        cluster=config.redis_cluster,
                        lease_timeout=config.lease_timeout,
                        grace_period=config.presence.grace_period,
                    ),
                    gateway_id,
                    self.gateway.local_devices,
                )
                self.gateway.presence = ClusterPresenceLink(
                    self.cluster_presence, self.bus.flush_subscriptions
                )
                # A gateway reports counts every count interval, so its lease must span a few.
                count_lease = max(config.lease_timeout, 3 * gateway_config.groups.count_interval)
                self.group_counts = RedisGroupCounts(
                    RedisGroupCountsConfig(
                        url=config.redis_url,
                        cluster=config.redis_cluster,
                        lease_timeout=count_lease,
                    ),
                    gateway_id,
                )
                self.gateway.group_counts = self.group_counts
        else:
            self.bus = InProcessBus()
            self.presence = PresenceService(config.presence, self.bus)
            self.gateway = Gateway(config.gateway, self.bus, verifier)
        if config.run_logic and config.hooks is not None:
            from tether.hooks.logic import HookLogic  # aiohttp is imported only when it is used

            self.logic = HookLogic(config.hooks, self.bus)
        elif config.run_logic:
            database = config.database or default_database(config.data_dir)
            self.logic = LogicService(LogicConfig(database=database), self.bus)
        self.load_reporter: LoadReporter | None = None
        if self.gateway is not None:
            board = None
            if config.redis_url:
                board = RedisLoadBoard(config.redis_url, cluster=config.redis_cluster)
            self.load_reporter = LoadReporter(
                LoadSampler(self.gateway, self.loop_lag),
                interval=config.load_report_interval,
                board=board,
            )
        self._admin = AsyncRequester(self.bus, f"admin-{os.getpid()}-{os.urandom(3).hex()}")
        self._servers: list[asyncio.Server] = []
        self.state = ServerState.STARTING
        self.http: HttpPort | None = None
        if config.http_port is not None:
            from tether.ops.http import HttpPort  # aiohttp is imported only when it is used

            self.http = HttpPort(self, config.http_host, config.http_port, config.api_keys)
        self.tcp_port: int | None = None
        self.ws_port: int | None = None
        self.control_path: Path | None = None

    @property
    def ready(self) -> bool:
        """Whether this process can serve: running, and the bus is connected."""
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        """Return why this process cannot serve now, or None when it can.

        Ready means started, not draining, and the bus connected with every subscription in
        effect (always true embedded). The readiness probe of the HTTP port reports this.
        """
        if self.state is ServerState.STARTING:
            return "starting"
        if self.state is ServerState.DRAINING:
            return "draining: stopping, connections are being closed"
        if self.state is ServerState.STOPPED:
            return "stopped"
        if not self.bus.ready:
            return f"bus not connected: no link to {redact_url(self.config.redis_url)}"
        return None

    def reload_keys(self) -> None:
        """Re-read the token key files now; `tether serve` calls this on SIGHUP."""
        self.keys.reload()

    async def start(self) -> None:
        """Start every part and listen on the configured ports.

        Raises FileExistsError when an embedded server already runs on the data folder.
        """
        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        if self.logic is not None and config.control_socket and not config.redis_url:
            await _check_no_embedded_server(config.data_dir)
        if self.http is not None:
            await self.http.start()  # first, so probes get "starting" rather than no answer
        self.loop_lag.start()
        await self.bus.start()
        if self.logic is not None:
            await self.logic.start()
        if self.presence is not None:
            await self.presence.start()
        if self.cluster_presence is not None:
            await self.cluster_presence.start()
            self.bus.add_reconnect_callback(self.cluster_presence.request_resync)
        if self.group_counts is not None:
            await self.group_counts.start()
        if self.gateway is not None:
            self.bus.add_reconnect_callback(self.gateway.after_bus_outage)
        self._admin.start()
        gateway = self.gateway
        if gateway is not None:
            await gateway.start()
            gateway_config = config.gateway
            if gateway_config.tcp_port is not None:
                server = await start_tcp_server(
                    gateway, gateway_config.host, gateway_config.tcp_port, self.transport_security
                )
                self._servers.append(server)
                self.tcp_port = server.sockets[0].getsockname()[1]
            if gateway_config.ws_port is not None:
                server = await start_websocket_server(
                    gateway, gateway_config.host, gateway_config.ws_port, self.transport_security
                )
                self._servers.append(server)
                self.ws_port = server.sockets[0].getsockname()[1]
            tls = gateway_config.transport_security.tls_enabled
            logger.info(
                "gateway %s serving: %s %s:%s, %s %s:%s%s%s",
                gateway.id,
                "tls" if tls else "tcp",
                gateway_config.host,
                self.tcp_port,
                "wss" if tls else "ws",
                gateway_config.host,
                self.ws_port,
                gateway_config.ws_path,
                ", PROXY protocol on" if gateway_config.transport_security.proxy_protocol else "",
            )
        if self.load_reporter is not None:
            await self.load_reporter.start()
        if self.logic is not None and config.control_socket:
            await self._start_control_socket()
        logger.info(
            "tether started (%s, data in %s)",
            _mode(config),
            config.data_dir,
        )
        self.state = ServerState.RUNNING

    async def close(self) -> None:
        """Stop accepting, close every connection with SHUTDOWN and stop every part."""
        self.state = ServerState.DRAINING
        for server in self._servers:
            server.close()
        if self.gateway is not None:
            await self.gateway.close()
            await asyncio.sleep(0)  # let the Disconnect frames reach the transports
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self.load_reporter is not None:
            await self.load_reporter.close()
        if self.cluster_presence is not None:
            await self.cluster_presence.release()
            await self.cluster_presence.close()
        if self.group_counts is not None:
            await self.group_counts.close()
        self._admin.close()
        if self.presence is not None:
            await self.presence.close()
        await self.bus.close()
        if self.logic is not None:
            await self.logic.close()
        if self.control_path is not None:
            self.control_path.unlink(missing_ok=True)
        self.loop_lag.stop()
        self.state = ServerState.STOPPED
        if self.http is not None:
            await self.http.close()
        logger.info("tether stopped")

    async def request_logic(
        self, request: env.Envelope, timeout: float | None = None
    ) -> env.Envelope | None:
        """Send request to the logic layer and return its reply, or None after timeout.

        timeout defaults to the gateway's request_timeout. Raises BusError when the bus does
        not take the request.
        """
        if timeout is None:
            timeout = self.config.gateway.request_timeout
        return await self._admin.request(channels.LOGIC_STREAM, request, timeout)

    async def _start_control_socket(self) -> None:
        path = self.config.data_dir / CONTROL_SOCKET_NAME
        path.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(self._on_control_client, path)
        os.chmod(path, 0o600)
        self._servers.append(server)
        self.control_path = path

    async def _on_control_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Handle one admin request: a varint-delimited Envelope with an AdminRequest."""
        decoder = StreamDecoder(_MAX_CONTROL_FRAME)
        try:
            payloads: list[bytes] = []
            while not payloads and decoder.error is None:
                data = await asyncio.wait_for(reader.read(_MAX_CONTROL_FRAME), 5.0)
                if not data:
                    return
                payloads = decoder.feed(data)
            if decoder.error is not None:
                return
            request = env.Envelope.FromString(payloads[0])
            if request.WhichOneof("kind") != "admin_request":
                return
            reply = await self.request_logic(env.Envelope(admin_request=request.admin_request))
            if reply is None:
                reply = env.Envelope(
                    admin_result=env.AdminResult(
                        error_code=Code.UNAVAILABLE,
                        error_message="logic layer did not respond in time",
                    )
                )
            writer.write(prefix_frame(reply.SerializeToString()))
            await writer.drain()
        except Exception as error:
            logger.warning("control request failed: %s", error)
        finally:
            writer.close()


# The name the tests and the first release used for the all-in-one server.
EmbeddedServer = TetherServer


async def send_admin_request(
    data_dir: Path, operation: str, args: list[str], timeout: float = 10.0
) -> env.AdminResult | None:
    """Send an admin request to the server running on data_dir; None if none is running."""
    path = data_dir / CONTROL_SOCKET_NAME
    if not path.exists():
        return None
    try:
        reader, writer = await asyncio.open_unix_connection(path)
    except OSError:
        return None  # a socket file left behind by a server that died
    try:
        request = env.Envelope(admin_request=env.AdminRequest(operation=operation, args=args))
        writer.write(prefix_frame(request.SerializeToString()))
        await writer.drain()
        decoder = StreamDecoder(_MAX_CONTROL_FRAME)
        while True:
            data = await asyncio.wait_for(reader.read(_MAX_CONTROL_FRAME), timeout)
            if not data:
                raise ConnectionError("server closed the control socket without a response")
            payloads = decoder.feed(data)
            if payloads:
                return env.Envelope.FromString(payloads[0]).admin_result
    finally:
        writer.close()


async def _check_no_embedded_server(data_dir: Path) -> None:
    """Raise FileExistsError if a running server accepts on the data folder's control socket.

    A second embedded server there would take over the socket, so `tether contacts` and
    `tether groups` would no longer reach the first one's clients. Logic workers of a cluster
    may share the socket, because each of them forwards a request to the same logic stream.
    NOTE: a worker that stops still removes the socket while the other workers run.
    """
    path = data_dir / CONTROL_SOCKET_NAME
    try:
        _reader, writer = await asyncio.open_unix_connection(path)
    except OSError:
        return  # no socket, or one left behind by a server that died
    writer.close()
    raise FileExistsError(
        f"another tether server runs on the data folder {data_dir} (its control socket "
        "accepts connections): stop it, or give this server another --data-dir"
    )


def _check_demo_config(config: ServerConfig, development_secret: str | None) -> None:
    """Raise ValueError unless the demo may run: it signs tokens for anyone who asks."""
    if development_secret is None or config.redis_url or config.hooks is not None:
        raise ValueError(
            "the demo hands out tokens signed with the development secret of the data folder: "
            "run it embedded, without --secret, key files, --redis or hooks"
        )
    if config.http_port is None:
        raise ValueError("the demo is served on the HTTP port: set http_port")


def _mode(config: ServerConfig) -> str:
    """Return how this process runs, for the start log record."""
    if not config.redis_url:
        return "embedded"
    kind = "Redis Cluster" if config.redis_cluster else "Redis"
    return f"cluster on {kind} {redact_url(config.redis_url)}"
