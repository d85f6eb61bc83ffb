"""`tether serve` and `tether logic`: run one tether process until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from tether.cli.hook_options import hook_config
from tether.cli.main import configure_logging, install_stop_signals
from tether.cli.settings import Setting
from tether.cli.transport_options import transport_security_config
from tether.gateway import GatewayConfig
from tether.gateway.groups import GroupConfig
from tether.gateway.limits import LimitsConfig
from tether.keys import KeyConfig
from tether.ops.api_keys import load_api_keys
from tether.presence import PresenceConfig
from tether.protocol.errors import TetherError
from tether.server import ServerConfig, TetherServer

__all__ = ["apply_demo_defaults", "logic_config", "logic_worker", "serve", "serve_config"]

logger = logging.getLogger("tether.cli")

DEMO_HTTP_PORT = 7402
DEMO_GROUP_COUNT_THRESHOLD = 0
"""Group count threshold of `--demo true` when none is set: the demo's group has 4 members."""


async def serve(arguments: argparse.Namespace) -> int:
    """Start an embedded server from parsed options and run it until a stop signal."""
    configure_logging(arguments.log_level, arguments.log_format)
    try:
        config = serve_config(arguments)
    except ValueError as error:
        logger.error("invalid setting: %s", error)
        return 2
    return await _run(config)


async def logic_worker(arguments: argparse.Namespace) -> int:
    """Run a logic worker of a cluster until a stop signal."""
    configure_logging(arguments.log_level, arguments.log_format)
    try:
        config = logic_config(arguments)
    except ValueError as error:
        logger.error("invalid setting: %s", error)
        return 2
    return await _run(config)


def serve_config(arguments: argparse.Namespace) -> ServerConfig:
    """Return the settings of `tether serve`; ValueError names a setting that is invalid."""
    gateway = GatewayConfig(
        host=arguments.host,
        tcp_port=arguments.tcp_port,
        ws_port=arguments.ws_port,
        ws_path=arguments.ws_path,
        reuse_port=arguments.reuse_port,
        transport_security=transport_security_config(arguments),
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
            retry_window=arguments.connect_retry_window,
            max_connections_per_ip=arguments.max_connections_per_ip,
            max_devices_per_user=arguments.max_devices_per_user,
        ),
        groups=GroupConfig(
            count_threshold=arguments.group_count_threshold,
            count_interval=arguments.group_count_interval,
            pushes_per_second=arguments.pushes_per_second,
            push_burst=arguments.push_burst,
        ),
    )
    return ServerConfig(
        data_dir=arguments.data_dir,
        secret=arguments.secret,
        keys=KeyConfig(
            public_key_files=arguments.public_key_files,
            jwks_file=arguments.jwks_file,
            reload_interval=arguments.key_reload_interval,
        ),
        gateway=gateway,
        presence=PresenceConfig(grace_period=arguments.grace_period),
        redis_url=arguments.redis,
        redis_cluster=arguments.redis_cluster,
        database=arguments.database,
        run_logic=arguments.logic or not arguments.redis,
        lease_timeout=arguments.lease_timeout,
        loop_lag_threshold=arguments.loop_lag_warning,
        http_host=arguments.host,
        http_port=_http_port(arguments),
        api_keys=load_api_keys(arguments.api_keys, arguments.api_keys_file),
        admin_keys=load_api_keys(arguments.admin_keys, arguments.admin_keys_file, "admin"),
        load_report_interval=arguments.load_report_interval,
        hooks=hook_config(arguments),
        demo=arguments.demo,
    )


def apply_demo_defaults(arguments: argparse.Namespace, settings: dict[str, Setting]) -> None:
    """With `--demo true`, give every group online counts unless a threshold was set.

    The demo page shows the online count of its four-member group, which the default
    threshold of 100 members would leave without one. Only a default is replaced: a threshold
    from a flag, the environment or the file stays.
    """
    demo = settings.get("demo")
    threshold = settings.get("group_count_threshold")
    if demo is None or threshold is None or not demo.value or threshold.source != "default":
        return
    arguments.group_count_threshold = DEMO_GROUP_COUNT_THRESHOLD
    settings["group_count_threshold"] = Setting(
        threshold.spec, DEMO_GROUP_COUNT_THRESHOLD, "default with --demo true"
    )


def _http_port(arguments: argparse.Namespace) -> int | None:
    """Return the HTTP port of `tether serve`: the demo needs one, 7402 unless one is set."""
    port: int | None = arguments.http_port
    if port is None and arguments.demo:
        return DEMO_HTTP_PORT
    return port


def logic_config(arguments: argparse.Namespace) -> ServerConfig:
    """Return the settings of `tether logic`; ValueError names a setting that is invalid."""
    if not arguments.redis:
        raise ValueError("tether logic needs --redis URL (or TETHER_REDIS, or redis in the file)")
    return ServerConfig(
        data_dir=arguments.data_dir,
        secret=arguments.secret,
        redis_url=arguments.redis,
        database=arguments.database,
        redis_cluster=arguments.redis_cluster,
        run_gateway=False,
        gateway=GatewayConfig(groups=GroupConfig(count_threshold=arguments.group_count_threshold)),
        lease_timeout=arguments.lease_timeout,
        loop_lag_threshold=arguments.loop_lag_warning,
        http_host=arguments.host,
        http_port=arguments.http_port,
        api_keys=load_api_keys(arguments.api_keys, arguments.api_keys_file),
        admin_keys=load_api_keys(arguments.admin_keys, arguments.admin_keys_file, "admin"),
        hooks=hook_config(arguments),
    )


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
    # Handlers first: a script may send SIGTERM as soon as it reads the ready line.
    stop = asyncio.Event()
    install_stop_signals(stop)
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, server.reload_keys)
    # One line on stdout that scripts and tests can wait for.
    http = f" http={config.http_host}:{server.http.port}" if server.http is not None else ""
    if server.gateway is not None:
        gateway = config.gateway
        tcp = f"{gateway.host}:{server.tcp_port}" if gateway.tcp_port is not None else "off"
        ws = "off"
        if gateway.ws_port is not None:
            ws = f"{gateway.host}:{server.ws_port}{gateway.ws_path}"
        # Scripts parse the tcp= and ws= keys, so TLS adds tls=true instead of other key names.
        tls = " tls=true" if gateway.transport_security.tls_enabled else ""
        print(
            f"tether ready tcp={tcp} ws={ws}{tls} gateway={server.gateway.id}" + http,
            flush=True,
        )
    else:
        print("tether ready logic" + http, flush=True)
    await stop.wait()
    await server.close()
    return 0
