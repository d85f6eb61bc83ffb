"""The server HTTP API in a cluster: gateways and a logic worker as processes on a test's Redis.

Presence, sessions and group online counts come from Redis, so any process reports users on
every gateway. A disconnect published on the user's channel closes a device held by another
gateway, and group changes made through the logic stream reach members on any gateway.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TIMEOUT, drain, next_of
from redis_server import RedisUnderTest
from test_cluster import Cluster, Process, connect, on_both
from test_http_api_groups import online_until

from tether.api_client import ApiClient, ApiError, UserSessionsInfo
from tether.client import Client
from tether.client import events as ev
from tether.protocol.codes import Code

KEY = "cluster-api-key-0123456789abcdef"
API = ("--http-port", "0", "--api-keys", KEY)


@pytest.fixture
def cluster(tmp_path: Path, redis_server: RedisUnderTest) -> Iterator[Cluster]:
    running = Cluster(tmp_path / "data", redis_server)
    yield running
    running.stop()


def api_of(process: Process) -> ApiClient:
    assert process.http_port, f"{process.name} has no HTTP port"
    return ApiClient(f"http://127.0.0.1:{process.http_port}", KEY, timeout=TIMEOUT)


async def sessions_until(
    api: ApiClient, user_id: str, device_count: int, timeout: float = TIMEOUT
) -> UserSessionsInfo:
    """Poll a user's sessions until device_count devices show; cluster presence is written
    asynchronously after each connect and close."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        sessions = await api.sessions(user_id)
        if len(sessions.devices) == device_count:
            return sessions
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{user_id} has {sessions.devices}, not {device_count} devices")
        await asyncio.sleep(0.05)


@on_both
async def test_presence_and_sessions_span_gateways(cluster: Cluster, clients: list[Client]) -> None:
    logic = cluster.logic("logic", "", *API)
    gw1 = cluster.gateway("gw1", http_port="0", api_keys=KEY)
    gw2 = cluster.gateway("gw2", http_port="0", api_keys=KEY)
    await connect(clients, gw1, "alice", device="phone")
    await connect(clients, gw2, "alice", device="laptop", status="away")
    await connect(clients, gw2, "bob")

    async with api_of(gw1) as api:
        sessions = await sessions_until(api, "alice", 2)
        by_device = {device.device_id: device for device in sessions.devices}
        assert by_device["phone"].gateway_id == "gw1"
        assert by_device["laptop"].gateway_id == "gw2"
        assert by_device["laptop"].activity == "idle"
        assert by_device["phone"].connection_id != by_device["laptop"].connection_id
        assert sessions.presence.status == "online"

    # A logic worker has no gateway, and reads the same presence from Redis.
    async with api_of(logic) as api:
        users = await api.presence(["alice", "bob", "carol"])
    assert {user: info.status for user, info in users.items()} == {
        "alice": "online",
        "bob": "online",
        "carol": "offline",
    }


@on_both
async def test_disconnect_device_on_other_gateway(cluster: Cluster, clients: list[Client]) -> None:
    cluster.logic()
    gw1 = cluster.gateway("gw1", http_port="0", api_keys=KEY)
    gw2 = cluster.gateway("gw2", http_port="0", api_keys=KEY)
    phone = await connect(clients, gw1, "alice", device="phone")
    laptop = await connect(clients, gw2, "alice", device="laptop")

    async with api_of(gw2) as api:
        await sessions_until(api, "alice", 2)
        await api.disconnect("alice", device_id="phone", code=Code.FORBIDDEN, reason="banned")
        closed = await next_of(phone, ev.Disconnected)
        assert isinstance(closed, ev.Disconnected)
        assert (closed.code, closed.reason) == (Code.FORBIDDEN, "banned")
        assert not [e for e in await drain(laptop) if isinstance(e, ev.Disconnected)]
        remaining = await sessions_until(api, "alice", 1)
        assert remaining.devices[0].device_id == "laptop"

        # Without device_id, every gateway holding the user closes its devices.
        await connect(clients, gw1, "alice", device="tablet")
        await sessions_until(api, "alice", 2)
        await api.disconnect("alice", code=Code.SHUTDOWN)
        for client in (laptop, clients[-1]):
            closed = await next_of(client, ev.Disconnected)
            assert isinstance(closed, ev.Disconnected)
            assert closed.code == Code.SHUTDOWN


async def test_publish_and_contacts_through_logic_stream(
    cluster: Cluster, clients: list[Client]
) -> None:
    cluster.logic()
    gw1 = cluster.gateway("gw1", http_port="0", api_keys=KEY)
    gw2 = cluster.gateway("gw2")
    bob = await connect(clients, gw2, "bob")
    alice = await connect(clients, gw2, "alice")

    async with api_of(gw1) as api:
        result = await api.publish("bob", "from the backend", client_message_id="welcome-bob")
        message = await next_of(bob, ev.Message)
        assert isinstance(message, ev.Message)
        assert (message.message_id, message.body) == (result.message_id, b"from the backend")

        await api.add_contact("alice", "bob")
        changed = await next_of(alice, ev.ContactsChanged)
        assert isinstance(changed, ev.ContactsChanged)
        assert changed.added == ["bob"]


async def test_presence_unavailable_without_redis(
    cluster: Cluster, redis_server: RedisUnderTest
) -> None:
    gw1 = cluster.gateway("gw1", http_port="0", api_keys=KEY)
    redis_server.stop()
    async with api_of(gw1) as api:
        with pytest.raises(ApiError) as raised:
            await api.presence(["alice"])
    assert (raised.value.status, raised.value.code) == (503, "unavailable")
    assert raised.value.retryable
    redis_server.start()  # the fixture stops it again


async def test_group_routes_through_logic_stream(cluster: Cluster, clients: list[Client]) -> None:
    logic = cluster.logic("logic", "", *API)
    gw1 = cluster.gateway("gw1", http_port="0", api_keys=KEY)
    gw2 = cluster.gateway("gw2")
    bob = await connect(clients, gw2, "bob")
    carol = await connect(clients, gw1, "carol")

    async with api_of(gw1) as api:
        created = await api.create_group("team", "alice", ["bob", "carol"])
        assert (created.created, created.group.member_count) == (True, 3)
        for member in (bob, carol):
            joined = await next_of(member, ev.GroupsChanged)
            assert isinstance(joined, ev.GroupsChanged)
            assert [group.group_id for group in joined.joined] == ["team"]

        result = await api.publish_to_group("team", "from the backend", client_message_id="t1")
        # Sequence number 1 is the group's creation event, 3 the event of carol's removal.
        assert (result.conversation_id, result.sequence) == ("g:team", 2)
        for member in (bob, carol):
            message = await next_of(member, ev.Message)
            assert isinstance(message, ev.Message)
            assert (message.message_id, message.sequence) == (result.message_id, 2)

        removed = await api.remove_group_members("team", ["carol"])
        assert removed.changed == ["carol"]
        left = await next_of(carol, ev.GroupsChanged)
        assert isinstance(left, ev.GroupsChanged)
        assert left.left == ["team"]
        second = await api.publish_to_group("team", "carol is gone")
        message = await next_of(bob, ev.Message)
        assert isinstance(message, ev.Message)
        assert (message.message_id, message.sequence) == (second.message_id, 4)
        assert not [e for e in await drain(carol) if isinstance(e, ev.Message)]
        with pytest.raises(ApiError) as raised:
            await api.publish_to_group("team", "let me in", sender="carol")
        assert (raised.value.status, raised.value.code) == (403, "not_a_member")

    # A logic worker without a gateway lists members and counts a small group from Redis.
    async with api_of(logic) as api:
        assert (await api.group_members("team")).members == ["alice", "bob"]
        await online_until(api, "team", 1)
        with pytest.raises(ApiError) as raised:
            await api.add_group_members("nope", ["bob"])
        assert (raised.value.status, raised.value.code) == (404, "group_not_found")


@on_both
async def test_group_online_counts_span_gateways(cluster: Cluster, clients: list[Client]) -> None:
    counting = {"group_count_threshold": "2", "group_count_interval": "0.3"}
    logic = cluster.logic("logic", "", *API, "--group-count-threshold", "2")
    gw1 = cluster.gateway("gw1", http_port="0", api_keys=KEY, **counting)
    gw2 = cluster.gateway("gw2", **counting)

    async with api_of(logic) as api:
        await api.create_group("big", "owner", [f"m{index}" for index in range(5)])
        await api.create_group("small", "m0", ["m1"])
        await connect(clients, gw1, "m0")
        leaving = await connect(clients, gw2, "m1")
        await connect(clients, gw2, "m2")
        await connect(clients, gw2, "m3", status="invisible")
        await online_until(api, "big", 3)
        await online_until(api, "small", 2)
        counts = await api.group_online(["big", "small"])
        assert (counts["big"].member_count, counts["small"].member_count) == (6, 2)

        await leaving.close()
        await online_until(api, "big", 2)
        await online_until(api, "small", 1)

    # A gateway's API reads the same totals from Redis.
    async with api_of(gw1) as api:
        counts = await api.group_online(["big", "small", "nope"])
    assert {group: info.online for group, info in counts.items()} == {"big": 2, "small": 1}
