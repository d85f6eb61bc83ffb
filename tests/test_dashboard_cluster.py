"""The admin dashboard in a cluster: gateways and a logic worker as processes on a test's Redis.

Every gateway writes its load to Redis, so the dashboard of any process lists all of them.
A gateway that stops removes its report, and one that is killed drops out when it expires.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ops_helpers import http_request, poll_until
from redis_server import RedisUnderTest, inspector
from test_cluster import Cluster, Process, connect, on_both

from tether.client import Client
from tether.ops.load_board import RedisLoadBoard

ADMIN_KEY = "cluster-admin-key-0123456789abcd"
ADMIN = ("--http-port", "0", "--admin-keys", ADMIN_KEY)
FAST_REPORTS = "0.5"  # seconds between load reports; a killed gateway drops out after 1.5 s
SLOW_REPORTS = "30"  # so a report gone right after a stop was removed, not expired


@pytest.fixture
def cluster(tmp_path: Path, redis_server: RedisUnderTest) -> Iterator[Cluster]:
    running = Cluster(tmp_path / "data", redis_server)
    yield running
    running.stop()


async def admin_request(process: Process, method: str, path: str, body: object = None) -> Any:
    """Send a request with the admin key to process's HTTP port; return the decoded JSON."""
    assert process.http_port, f"{process.name} has no HTTP port"
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    status, answer, _ = await http_request(
        process.http_port, method, path, headers=headers, body=body
    )
    assert status == 200, answer
    return answer


async def overview_until(process: Process, condition: Callable[[Any], bool]) -> Any:
    """Poll process's overview until condition holds for it; return that overview."""
    return await poll_until(
        lambda: admin_request(process, "GET", "/admin/api/overview"),
        condition,
        f"the overview of {process.name}",
    )


def connections_by_gateway(answer: Any) -> dict[str, int]:
    return {load["gateway_id"]: load["connections"] for load in answer["gateways"]}


@on_both
async def test_every_gateway_listed_with_its_load(cluster: Cluster, clients: list[Client]) -> None:
    logic = cluster.logic("logic", "", *ADMIN)
    gw1 = cluster.gateway("gw1", load_report_interval=FAST_REPORTS, http_port="0",
                          admin_keys=ADMIN_KEY)  # fmt: skip
    gw2 = cluster.gateway("gw2", load_report_interval=FAST_REPORTS)
    await connect(clients, gw1, "alice")
    await connect(clients, gw2, "bob", device="phone")
    await connect(clients, gw2, "bob", device="laptop")

    expected = {"gw1": 1, "gw2": 2}
    answer = await overview_until(logic, lambda a: connections_by_gateway(a) == expected)
    assert answer["mode"] == "cluster"
    assert answer["served_by_gateway"] is None  # a logic worker
    assert answer["totals"]["gateways"] == 2
    assert answer["totals"]["connections"] == 3
    assert answer["totals"]["users"] == 2
    assert answer["counters"]["presence_transitions"] == 3
    assert [load["gateway_id"] for load in answer["gateways"]] == ["gw1", "gw2"]

    # A gateway's own dashboard lists the same gateways, from the same reports.
    from_gateway = await overview_until(gw1, lambda a: connections_by_gateway(a) == expected)
    assert from_gateway["served_by_gateway"] == "gw1"

    # The user lookup reads cluster presence, so it finds devices on any gateway.
    sessions = await admin_request(logic, "POST", "/admin/api/sessions", {"user_id": "bob"})
    assert sessions["status"] == "online"
    assert {device["device_id"]: device["gateway_id"] for device in sessions["devices"]} == {
        "phone": "gw2",
        "laptop": "gw2",
    }


@on_both
async def test_stopped_and_killed_gateways_drop_out(
    cluster: Cluster, redis_server: RedisUnderTest
) -> None:
    logic = cluster.logic("logic", "", *ADMIN)
    stopped = cluster.gateway("gw-stopped", load_report_interval=SLOW_REPORTS)
    killed = cluster.gateway("gw-killed", load_report_interval=FAST_REPORTS)
    await overview_until(logic, lambda a: a["totals"]["gateways"] == 2)
    board = RedisLoadBoard(redis_server.url, cluster=redis_server.cluster)
    await board.start()
    try:
        # Stopped: the report is removed at once, long before its 90 s expiry.
        stopped.stop()
        loads, truncated = await board.read()
        assert [load.gateway_id for load in loads] == ["gw-killed"]
        assert not truncated

        # Killed: the report expires after three report intervals.
        killed.kill()
        await overview_until(logic, lambda a: a["totals"]["gateways"] == 0)
        loads, _ = await board.read()
        assert loads == []
    finally:
        await board.close()

    # Every write trims the ids of expired reports, so the index does not grow.
    restarted = cluster.gateway("gw-new", load_report_interval=FAST_REPORTS)
    await overview_until(logic, lambda a: a["totals"]["gateways"] == 1)
    redis_client = inspector(redis_server)
    try:
        assert await redis_client.zrange("tether:{load}", 0, -1) == [b"gw-new"]
    finally:
        await redis_client.aclose()
    restarted.stop()


@on_both
async def test_invalid_report_left_out(cluster: Cluster, redis_server: RedisUnderTest) -> None:
    logic = cluster.logic("logic", "", *ADMIN)
    cluster.gateway("gw1", load_report_interval=FAST_REPORTS)
    redis_client = inspector(redis_server)
    try:
        expiry_ms = 2**50  # far in the future
        await redis_client.zadd("tether:{load}", {"gw-broken": expiry_ms})
        await redis_client.set("tether:{load}:gw-broken", b"{not json")
    finally:
        await redis_client.aclose()
    answer = await overview_until(logic, lambda a: a["totals"]["gateways"] == 1)
    assert [load["gateway_id"] for load in answer["gateways"]] == ["gw1"]
