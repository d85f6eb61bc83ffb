"""Embedded tether: gateway, presence and logic in one process, joined by the in-process bus.

`EmbeddedServer` is what `tether serve` runs and what the tests start on free ports. It also
opens a control socket (a Unix socket in the data directory) through which `tether contacts`
changes contacts of a running server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from tether.auth import TokenVerifier
from tether.bus import channels
from tether.bus import envelope_pb2 as env
from tether.bus.memory import InProcessBus
from tether.bus.requests import AsyncRequester
from tether.gateway import Gateway, GatewayConfig, start_tcp_server, start_websocket_server
from tether.logic import LogicConfig, LogicService, default_database
from tether.presence import PresenceConfig, PresenceService
from tether.protocol.codes import Code
from tether.protocol.framing import StreamDecoder, prefix_frame

__all__ = ["CONTROL_SOCKET_NAME", "EmbeddedServer", "ServerConfig", "load_or_create_secret"]

logger = logging.getLogger("tether.server")

CONTROL_SOCKET_NAME = "control.sock"
SECRET_FILE_NAME = "secret"
_MAX_CONTROL_FRAME = 4096


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerConfig:
    """Settings of an embedded server."""

    data_dir: Path
    """Folder for the database, the development secret and the control socket."""
    secret: str = ""
    """HS256 token secret; empty reads or creates `secret` in data_dir."""
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    presence: PresenceConfig = field(default_factory=PresenceConfig)
    control_socket: bool = True
    """Open the control socket for `tether contacts` (default true)."""


def load_or_create_secret(data_dir: Path) -> str:
    """Return the secret stored in data_dir, creating a random one (mode 0600) if absent."""
    path = data_dir / SECRET_FILE_NAME
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(secret + "\n")
    return secret


class EmbeddedServer:
    """All of tether in one process."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.bus = InProcessBus()
        self.secret = config.secret or load_or_create_secret(config.data_dir)
        self.logic = LogicService(LogicConfig(database=default_database(config.data_dir)), self.bus)
        self.presence = PresenceService(config.presence, self.bus)
        self.gateway = Gateway(config.gateway, self.bus, TokenVerifier(secret=self.secret))
        self._admin = AsyncRequester(self.bus, f"{self.gateway.id}-admin")
        self._servers: list[asyncio.Server] = []
        self.tcp_port: int | None = None
        self.ws_port: int | None = None
        self.control_path: Path | None = None

    async def start(self) -> None:
        """Start every part and listen on the configured ports."""
        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        await self.bus.start()
        await self.logic.start()
        await self.presence.start()
        await self.gateway.start()
        self._admin.start()
        gateway_config = config.gateway
        if gateway_config.tcp_port is not None:
            server = await start_tcp_server(
                self.gateway, gateway_config.host, gateway_config.tcp_port
            )
            self._servers.append(server)
            self.tcp_port = server.sockets[0].getsockname()[1]
        if gateway_config.ws_port is not None:
            server = await start_websocket_server(
                self.gateway, gateway_config.host, gateway_config.ws_port
            )
            self._servers.append(server)
            self.ws_port = server.sockets[0].getsockname()[1]
        if config.control_socket:
            await self._start_control_socket()
        logger.info(
            "tether serving: tcp %s:%s, websocket %s:%s%s, data in %s",
            gateway_config.host,
            self.tcp_port,
            gateway_config.host,
            self.ws_port,
            gateway_config.ws_path,
            config.data_dir,
        )

    async def close(self) -> None:
        """Stop accepting, close every connection with SHUTDOWN and stop every part."""
        for server in self._servers:
            server.close()
        await self.gateway.close()
        await asyncio.sleep(0)  # let the Disconnect frames reach the transports
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        self._admin.close()
        await self.presence.close()
        await self.bus.close()
        await self.logic.close()
        if self.control_path is not None:
            self.control_path.unlink(missing_ok=True)
        logger.info("tether stopped")

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
        """Answer one admin request: a varint-delimited Envelope with an AdminRequest."""
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
            reply = await self._admin.request(
                channels.LOGIC_STREAM,
                env.Envelope(admin_request=request.admin_request),
                self.config.gateway.request_timeout,
            )
            if reply is None:
                reply = env.Envelope(
                    admin_result=env.AdminResult(
                        error_code=Code.UNAVAILABLE, error_message="logic did not answer in time"
                    )
                )
            writer.write(prefix_frame(reply.SerializeToString()))
            await writer.drain()
        except Exception as error:
            logger.warning("control request failed: %s", error)
        finally:
            writer.close()


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
                raise ConnectionError("server closed the control socket without answering")
            payloads = decoder.feed(data)
            if payloads:
                return env.Envelope.FromString(payloads[0]).admin_result
    finally:
        writer.close()
