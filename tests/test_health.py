"""Liveness and readiness probes on the HTTP port: embedded, while draining, and in a cluster
whose Redis stops and comes back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TIMEOUT, RawClient, ServerFactory
from ops_helpers import TetherProcess, http_get, wait_for_status
from prometheus_client.parser import text_string_to_metric_families

from tether.auth import issue_token
from tether.local_redis import RedisServer, free_port
from tether.server import ServerState

SECRET = "health-test-secret-of-at-least-32-bytes"


async def test_embedded_server_is_live_and_ready(start_server: ServerFactory) -> None:
    server = await start_server(http_port=0)
    assert server.http is not None
    assert server.http.port

    assert await http_get(server.http.port, "/healthz/live") == (200, '{"status": "live"}')
    status, body = await http_get(server.http.port, "/healthz/ready")
    assert (status, json.loads(body)) == (200, {"status": "ready"})
    assert (await http_get(server.http.port, "/nothing-here"))[0] == 404


async def test_http_port_is_off_unless_asked_for(start_server: ServerFactory) -> None:
    server = await start_server()
    assert server.http is None


async def test_not_ready_while_draining(start_server: ServerFactory) -> None:
    # close_timeout is 1 s in tests: a client that never closes its side keeps the drain going
    # that long.
    server = await start_server(http_port=0)
    assert server.http is not None
    port = server.http.port
    assert port is not None
    raw = await RawClient.open(server)
    raw.send_connect("alice")
    await raw.receive_kind("connected")

    closing = asyncio.create_task(server.close())
    try:
        _status, body = await wait_for_status(port, "/healthz/ready", 503)
        assert json.loads(body)["reason"].startswith("draining")
        assert server.state is ServerState.DRAINING
        assert (await http_get(port, "/healthz/live"))[0] == 200
    finally:
        raw.close()
        await asyncio.wait_for(closing, TIMEOUT)
    assert server.state is ServerState.STOPPED


@pytest.fixture
def processes() -> Iterator[list[TetherProcess]]:
    started: list[TetherProcess] = []
    yield started
    for process in reversed(started):
        process.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


def _cluster_options(tmp_path: Path, redis: RedisServer) -> list[str]:
    return ["--data-dir", str(tmp_path / "data"), "--secret", SECRET, "--redis", redis.url,
            "--log-level", "warning", "--http-port", "0"]  # fmt: skip


async def test_serve_not_ready_while_draining_after_sigterm(
    tmp_path: Path, processes: list[TetherProcess]
) -> None:
    process = TetherProcess(
        [
            "serve",
            "--data-dir",
            str(tmp_path / "data"),
            "--secret",
            SECRET,
            "--tcp-port",
            "0",
            "--ws-port",
            "off",
            "--http-port",
            "0",
            "--log-level",
            "warning",
        ],
        tmp_path,
    )
    processes.append(process)
    await process.wait_ready()
    http_port = process.port("http")
    assert (await http_get(http_port, "/healthz/ready"))[0] == 200

    # A client that never closes its side keeps the drain going for the close timeout (5 s).
    _reader, writer = await asyncio.open_connection("127.0.0.1", process.port("tcp"))
    try:
        process.terminate()
        _status, body = await wait_for_status(http_port, "/healthz/ready", 503)
        assert json.loads(body)["status"] == "not ready"
        assert json.loads(body)["reason"].startswith("draining")
        assert (await http_get(http_port, "/healthz/live"))[0] == 200
    finally:
        writer.close()
    assert await asyncio.to_thread(process.wait) == 0


async def test_cluster_readiness_follows_redis(
    tmp_path: Path, redis_server: RedisServer, processes: list[TetherProcess]
) -> None:
    redis_server.start()
    options = _cluster_options(tmp_path, redis_server)
    gateway = TetherProcess(
        ["serve", *options, "--logic", "false", "--tcp-port", "0", "--ws-port", "off"],
        tmp_path,
        "gateway",
    )
    processes.append(gateway)
    logic = TetherProcess(["logic", *options], tmp_path, "logic")
    processes.append(logic)
    await gateway.wait_ready()
    await logic.wait_ready()
    ports = {"gateway": gateway.port("http"), "logic": logic.port("http")}
    for port in ports.values():
        assert (await http_get(port, "/healthz/ready"))[0] == 200

    redis_server.stop()
    for name, port in ports.items():
        _status, body = await wait_for_status(port, "/healthz/ready", 503)
        assert "bus not connected" in json.loads(body)["reason"], name
        assert (await http_get(port, "/healthz/live"))[0] == 200, name

    redis_server.start()  # the same port
    for port in ports.values():
        # Reconnect backoff grows to 5 s between attempts.
        await wait_for_status(port, "/healthz/ready", 200, timeout=TIMEOUT * 3)

    # The outage shows in the gateway's metrics, and a login makes bus round trips.
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port("tcp"))
    raw = RawClient(reader, writer)
    raw.send_connect("alice", token=issue_token(SECRET, "alice"))
    await raw.receive_kind("connected")
    raw.close()
    _status, text = await http_get(ports["gateway"], "/metrics")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples[("tether_bus_errors_total", (("kind", "link"),))] >= 1
    assert samples[("tether_bus_round_trips_total", ())] >= 1
    assert samples[("tether_bus_connected", ())] == 1
    assert samples[("tether_ready", ())] == 1


async def test_cluster_gateway_not_ready_while_starting(
    tmp_path: Path, redis_server: RedisServer, processes: list[TetherProcess]
) -> None:
    # Redis is not running yet, so the gateway keeps trying to connect (up to 10 s).
    http_port = free_port()
    options = [*_cluster_options(tmp_path, redis_server)[:-1], str(http_port)]
    gateway = TetherProcess(
        ["serve", *options, "--logic", "false", "--tcp-port", "0", "--ws-port", "off"],
        tmp_path,
    )
    processes.append(gateway)
    _status, body = await wait_for_status(http_port, "/healthz/ready", 503)
    assert json.loads(body) == {"status": "not ready", "reason": "starting"}
    assert (await http_get(http_port, "/healthz/live"))[0] == 200

    redis_server.start()
    await gateway.wait_ready()
    await wait_for_status(http_port, "/healthz/ready", 200)
