"""`tether serve` and `tether logic`: run one tether process until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging

from tether.cli.main import configure_logging, install_stop_signals
from tether.gateway import GatewayConfig
from tether.gateway.limits import LimitsConfig
from tether.presence import PresenceConfig
from tether.protocol.errors import TetherError
from tether.server import ServerConfig, TetherServer

__all__ = ["logic_worker", "serve"]

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
            gateway_id=arguments.gateway_id,
            limits=LimitsConfig(
                frames_per_second=arguments.frames_per_second,
                frame_burst=arguments.frame_burst,
                new_connections_per_second=arguments.new_connections_per_second,
                new_connection_burst=max(1, int(arguments.new_connections_per_second * 2)),
                max_connections_per_ip=arguments.max_connections_per_ip,
                max_devices_per_user=arguments.max_devices_per_user,
            ),
        )
        config = ServerConfig(
            data_dir=arguments.data_dir,
            secret=arguments.secret,
            gateway=gateway,
            presence=PresenceConfig(grace_period=arguments.grace_period),
            redis_url=arguments.redis,
            redis_cluster=arguments.redis_cluster,
            run_logic=arguments.logic or not arguments.redis,
            lease_timeout=arguments.lease_timeout,
        )
    except ValueError as error:
        logger.error("invalid setting: %s", error)
        return 2
    return await _run(config)


async def logic_worker(arguments: argparse.Namespace) -> int:
    """Run a logic worker of a cluster until a stop signal."""
    configure_logging(arguments.log_level)
    if not arguments.redis:
        logger.error("tether logic needs --redis URL (or TETHER_REDIS)")
        return 2
    config = ServerConfig(
        data_dir=arguments.data_dir,
        secret=arguments.secret,
        redis_url=arguments.redis,
        redis_cluster=arguments.redis_cluster,
        run_gateway=False,
        lease_timeout=arguments.lease_timeout,
    )
    return await _run(config)


async def _run(config: ServerConfig) -> int:
    try:
        server = TetherServer(config)
    except ValueError as error:
        logger.error("invalid setting: %s", error)
        return 2
    try:
        await server.start()
    except (OSError, TetherError) as error:
        logger.error("cannot start: %s", error)
        await server.close()
        return 1
    # One line on stdout that scripts and tests can wait for.
    if server.gateway is not None:
        gateway = config.gateway
        print(
            f"tether ready tcp={gateway.host}:{server.tcp_port} "
            f"ws={gateway.host}:{server.ws_port}{gateway.ws_path} gateway={server.gateway.id}",
            flush=True,
        )
    else:
        print("tether ready logic", flush=True)
    stop = asyncio.Event()
    install_stop_signals(stop)
    await stop.wait()
    await server.close()
    return 0
