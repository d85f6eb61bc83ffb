"""`tether cluster`: a local cluster for trying cluster mode on one machine.

It starts a private Redis-protocol server on a free port (unless --redis names one; with
--redis-cluster, a private Redis Cluster of three primaries), N gateway processes on
consecutive ports and M logic workers, all sharing one data folder and one database
(--database), prints where each listens, and stops everything on Ctrl-C or SIGTERM, children
first, each by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from tether.cli.main import check_config_file, configure_logging, install_stop_signals
from tether.cli.settings import SettingError
from tether.local_redis import LocalRedisCluster, RedisServer
from tether.server import load_or_create_secret

__all__ = ["cluster"]

logger = logging.getLogger("tether.cli.cluster")

_START_TIMEOUT = 30.0


async def cluster(arguments: argparse.Namespace) -> int:
    """Run a local cluster until a stop signal; return the exit status."""
    configure_logging(arguments.log_level, arguments.log_format)
    data_dir: Path = arguments.data_dir
    # The children inherit this process's environment, so TETHER_* variables reach them as is.
    child_environment: dict[str, str] = {}
    if arguments.config is not None:
        config: Path = arguments.config
        if not config.is_file():
            logger.error("invalid setting config: %s is not a readable file", config)
            return 2
        try:
            check_config_file(config)
        except SettingError as error:
            logger.error("invalid setting config: %s", error)
            return 2
        child_environment["TETHER_CONFIG"] = str(config.resolve())

    load_or_create_secret(data_dir)  # one secret for every process, created before they race
    redis_server: RedisServer | LocalRedisCluster | None = None
    url = arguments.redis
    if not url:
        if arguments.redis_cluster:
            redis_server = LocalRedisCluster(data_dir / "redis-cluster")
        else:
            redis_server = RedisServer(data_dir / "redis")
        try:
            redis_server.start()
        except (OSError, RuntimeError, TimeoutError) as error:
            logger.error("cannot start a Redis server: %s", error)
            return 1
        url = redis_server.url
        kind = "Redis Cluster of 3 primaries, " if arguments.redis_cluster else ""
        print(f"redis  {url}  ({kind}{redis_server.version()})", flush=True)

    base = [sys.executable, "-m", "tether"]
    common = ["--data-dir", str(data_dir), "--redis", url, "--log-level", arguments.log_level,
              "--log-format", arguments.log_format,
              "--redis-cluster", str(arguments.redis_cluster).lower()]  # fmt: skip
    # The database goes to the logic workers in the environment, not on the command line,
    # where any user of the machine could read a password in it.
    logic_environment = {**child_environment, "TETHER_DATABASE": arguments.database}
    children: list[tuple[str, subprocess.Popen[str]]] = []
    http_base: int | None = arguments.http_port

    def http_port(offset: int) -> str:
        return "off" if http_base is None else str(http_base + offset if http_base else 0)

    try:
        for index in range(arguments.logic_workers):
            http = http_port(arguments.gateways + index)
            command = [*base, "logic", *common, "--http-port", http]
            children.append((f"logic{index + 1}", _spawn(command, logic_environment)))
        for index in range(arguments.gateways):
            command = [
                *base, "serve", *common, "--logic", "false",
                "--gateway-id", f"gw{index + 1}",
                "--tcp-port", str(arguments.tcp_port + index),
                "--ws-port", str(arguments.ws_port + index),
                "--http-port", http_port(index),
            ]  # fmt: skip
            children.append((f"gw{index + 1}", _spawn(command, child_environment)))
        for name, child in children:
            line = await asyncio.wait_for(asyncio.to_thread(_ready_line, child), _START_TIMEOUT)
            if line is None:
                logger.error("%s exited before it was ready (status %s)", name, child.poll())
                return 1
            print(f"{name:6} pid {child.pid}  {line}", flush=True)
        # Before the line that invites Ctrl-C, so a stop signal that follows it at once stops
        # the cluster cleanly rather than raising KeyboardInterrupt.
        stop = asyncio.Event()
        install_stop_signals(stop)
        print("cluster ready; Ctrl-C stops it", flush=True)

        watcher = asyncio.create_task(_watch_children(children, stop))
        await stop.wait()
        watcher.cancel()
        return 0
    finally:
        _stop_children(children)
        if redis_server is not None:
            redis_server.stop()


def _spawn(command: list[str], environment: dict[str, str] | None = None) -> subprocess.Popen[str]:
    # A session of its own keeps a terminal's Ctrl-C away from the child, so the parent can
    # stop the children in order: gateways release their leases while Redis still runs.
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        env={**os.environ, **(environment or {}), "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )  # fmt: skip


def _ready_line(child: subprocess.Popen[str]) -> str | None:
    """Return what follows "tether ready" on the child's stdout, or None if it exited."""
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith("tether ready"):
            return line.removeprefix("tether ready").strip()
    return None


async def _watch_children(
    children: list[tuple[str, subprocess.Popen[str]]], stop: asyncio.Event
) -> None:
    """Stop the cluster when a child exits on its own."""
    while not stop.is_set():
        for name, child in children:
            if child.poll() is not None:
                logger.error("%s exited with status %s; stopping the cluster", name, child.poll())
                stop.set()
                return
        await asyncio.sleep(0.5)


def _stop_children(children: list[tuple[str, subprocess.Popen[str]]]) -> None:
    """Stop gateways first, then logic workers: the reverse of the start order."""
    for name, child in reversed(children):
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in 15 s; killing pid %d", name, child.pid)
            child.kill()
            child.wait()
