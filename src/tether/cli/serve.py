"""`tether serve`: run embedded tether until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging

from tether.cli.main import configure_logging, install_stop_signals
from tether.gateway import GatewayConfig
from tether.presence import PresenceConfig
from tether.server import EmbeddedServer, ServerConfig

__all__ = ["serve"]

logger = logging.getLogger("tether.cli")


async def serve(arguments: argparse.Namespace) -> int:
    """Start an embedded server from parsed options and run it until a stop signal."""
    configure_logging(arguments.log_level)
    try:
        gateway = GatewayConfig(
            host=arguments.host,
            tcp_port=arguments.tcp_port,
            ws_port=arguments.ws_port,
            ws_path=arguments.ws_path,
            heartbeat_interval=arguments.heartbeat_interval,
            offline_timeout=arguments.offline_timeout,
            connect_timeout=arguments.connect_timeout,
            request_timeout=arguments.request_timeout,
            reconnect_spread=arguments.reconnect_spread,
            max_frame_bytes=arguments.max_frame_bytes,
            max_body_bytes=arguments.max_body_bytes,
            max_outgoing_bytes=arguments.max_outgoing_bytes,
        )
        config = ServerConfig(
            data_dir=arguments.data_dir,
            secret=arguments.secret,
            gateway=gateway,
            presence=PresenceConfig(grace_period=arguments.grace_period),
        )
    except ValueError as error:
        logger.error("invalid setting: %s", error)
        return 2
    server = EmbeddedServer(config)
    try:
        await server.start()
    except OSError as error:
        logger.error("cannot start: %s", error)
        await server.close()
        return 1
    # One line on stdout that scripts and tests can wait for.
    print(
        f"tether ready tcp={config.gateway.host}:{server.tcp_port} "
        f"ws={config.gateway.host}:{server.ws_port}{config.gateway.ws_path}",
        flush=True,
    )
    stop = asyncio.Event()
    install_stop_signals(stop)
    await stop.wait()
    await server.close()
    return 0
