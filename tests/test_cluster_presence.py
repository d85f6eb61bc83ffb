"""Cluster presence scripts against a real Redis-protocol server."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as redis
from conftest import TIMEOUT
from redis_server import RedisServer

from tether.bus import channels
from tether.bus import envelope_pb2 as env
from tether.presence.cluster import ClusterPresenceConfig, LocalDevice, RedisPresence
from tether.protocol import tether_pb2 as pb

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


class Watcher:
    """Collects presence changes published for some users."""

    def __init__(self, client: redis.Redis) -> None:
        self.pubsub = client.pubsub()
        self.changes: asyncio.Queue[pb.UserPresence] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def watch(self, *users: str) -> None:
        await self.pubsub.subscribe(*(channels.presence_channel(user) for user in users))
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.pubsub.listen():
            if message["type"] == "message":
                envelope = env.Envelope.FromString(message["data"])
                self.changes.put_nowait(envelope.presence_change.presence)

    async def next(self, timeout: float = TIMEOUT) -> pb.UserPresence:
        return await asyncio.wait_for(self.changes.get(), timeout)

    async def nothing(self, wait: float = 0.5) -> bool:
        try:
            await asyncio.wait_for(self.changes.get(), wait)
        except TimeoutError:
            return True
        return False

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        await self.pubsub.aclose()


@pytest.fixture
async def cluster(redis_server: RedisServer) -> AsyncIterator[dict[str, object]]:
    """A fresh key prefix, a watcher, and a factory for gateways' presence."""
    prefix = f"test{next(_prefixes)}:"
    client = redis.Redis.from_url(redis_server.url)
    watcher = Watcher(client)
    started: list[RedisPresence] = []

    async def gateway(name: str, devices: list[LocalDevice] | None = None) -> RedisPresence:
        config = ClusterPresenceConfig(
            url=redis_server.url,
            key_prefix=prefix,
            lease_timeout=0.6,
            reap_interval=0.1,
            grace_period=0.3,
        )
        presence = RedisPresence(config, name, lambda: list(devices or []))
        await presence.start()
        started.append(presence)
        return presence

    yield {"gateway": gateway, "watcher": watcher, "redis": client, "prefix": prefix}
    for presence in started:
        await presence.close()
    await watcher.close()
    await client.aclose()


def transition(kind: int, user: str, device: str, connection: str, **status: int) -> env.Transition:
    return env.Transition(
        kind=kind,  # type: ignore[arg-type]
        user_id=user,
        device_id=device,
        connection_id=connection,
        status=pb.SetStatus(**status),  # type: ignore[arg-type]
        at_ms=int(time.time() * 1000),
    )


ONLINE = env.Transition.KIND_ONLINE
OFFLINE = env.Transition.KIND_OFFLINE
STATUS = env.Transition.KIND_STATUS


async def test_online_change_published(cluster: dict) -> None:  # type: ignore[type-arg]
    await cluster["watcher"].watch("alice")
    gateway = await cluster["gateway"]("gw1")
    gateway.report([transition(ONLINE, "alice", "phone", "c1")])
    change = await cluster["watcher"].next()
    assert change.user_id == "alice"
    assert change.status == pb.STATUS_ONLINE
    assert change.version >= change.last_seen_ms > 0  # versions follow the clock


async def test_offline_waits_for_grace(cluster: dict) -> None:  # type: ignore[type-arg]
    watcher = cluster["watcher"]
    await watcher.watch("alice")
    gateway = await cluster["gateway"]("gw1")
    gateway.report([transition(ONLINE, "alice", "phone", "c1")])
    online = await watcher.next()
    left = transition(OFFLINE, "alice", "phone", "c1")
    gateway.report([left])
    started = time.monotonic()
    offline = await watcher.next()
    assert offline.status == pb.STATUS_OFFLINE
    assert time.monotonic() - started >= 0.25
    assert offline.last_seen_ms == left.at_ms
    assert offline.version > online.version


async def test_reconnect_inside_grace_is_silent(cluster: dict) -> None:  # type: ignore[type-arg]
    watcher = cluster["watcher"]
    await watcher.watch("alice")
    gateway = await cluster["gateway"]("gw1")
    gateway.report([transition(ONLINE, "alice", "phone", "c1")])
    await watcher.next()
    gateway.report([transition(OFFLINE, "alice", "phone", "c1")])
    await asyncio.sleep(0.1)
    gateway.report([transition(ONLINE, "alice", "phone", "c2")])
    assert await watcher.nothing(0.8)


async def test_stale_cleanup_keeps_new_session(cluster: dict) -> None:  # type: ignore[type-arg]
    watcher = cluster["watcher"]
    await watcher.watch("alice")
    first = await cluster["gateway"]("gw1")
    second = await cluster["gateway"]("gw2")
    first.report([transition(ONLINE, "alice", "phone", "old")])
    await watcher.next()
    second.report([transition(ONLINE, "alice", "phone", "new")])
    await asyncio.sleep(0.1)
    first.report([transition(OFFLINE, "alice", "phone", "old")])
    assert await watcher.nothing(0.8)
    (presence,) = await second.query(["alice"])
    assert presence.status == pb.STATUS_ONLINE


async def test_statuses_aggregate(cluster: dict) -> None:  # type: ignore[type-arg]
    watcher = cluster["watcher"]
    await watcher.watch("alice")
    gateway = await cluster["gateway"]("gw1")
    gateway.report(
        [
            transition(ONLINE, "alice", "phone", "c1"),
            transition(ONLINE, "alice", "laptop", "c2"),
            transition(STATUS, "alice", "phone", "c1", activity=pb.ACTIVITY_IDLE),
        ]
    )
    assert (await watcher.next()).status == pb.STATUS_ONLINE
    gateway.report([transition(STATUS, "alice", "laptop", "c2", activity=pb.ACTIVITY_IDLE)])
    assert (await watcher.next()).status == pb.STATUS_AWAY
    gateway.report([transition(STATUS, "alice", "laptop", "c2", mode=pb.MODE_BUSY)])
    assert (await watcher.next()).status == pb.STATUS_BUSY
    gateway.report([transition(STATUS, "alice", "laptop", "c2", mode=pb.MODE_INVISIBLE)])
    hidden = await watcher.next()
    assert hidden.status == pb.STATUS_OFFLINE
    gateway.report([transition(OFFLINE, "alice", "laptop", "c2")])
    assert await watcher.nothing(0.6)
    (presence,) = await gateway.query(["alice"])
    assert presence.last_seen_ms == hidden.last_seen_ms


async def test_lapsed_lease_reaped(cluster: dict) -> None:  # type: ignore[type-arg]
    watcher = cluster["watcher"]
    await watcher.watch("alice", "bob")
    crashed = await cluster["gateway"]("gw1")
    survivor = await cluster["gateway"]("gw2")
    crashed.report([transition(ONLINE, "alice", "phone", "c1")])
    survivor.report([transition(ONLINE, "bob", "phone", "c2")])
    assert {(await watcher.next()).user_id, (await watcher.next()).user_id} == {"alice", "bob"}

    await crashed.close()  # stops renewing, as a killed process would
    stopped = time.monotonic()
    change = await watcher.next()
    assert (change.user_id, change.status) == ("alice", pb.STATUS_OFFLINE)
    assert time.monotonic() - stopped < 0.6 + 0.5  # lease plus a couple of reaper passes
    (bob,) = await survivor.query(["bob"])
    assert bob.status == pb.STATUS_ONLINE


async def test_restart_never_resurrects(cluster: dict) -> None:  # type: ignore[type-arg]
    watcher = cluster["watcher"]
    await watcher.watch("alice")
    before = await cluster["gateway"]("gw1")
    before.report([transition(ONLINE, "alice", "phone", "c1")])
    await watcher.next()
    await before.close()

    after = await cluster["gateway"]("gw1")  # same name, new epoch, no devices
    assert after.epoch == before.epoch + 1
    assert (await watcher.next()).status == pb.STATUS_OFFLINE
    await asyncio.sleep(0.8)  # past the old lease
    (alice,) = await after.query(["alice"])
    assert alice.status == pb.STATUS_OFFLINE


async def test_resync_shows_no_flap(cluster: dict) -> None:  # type: ignore[type-arg]
    watcher = cluster["watcher"]
    await watcher.watch("alice")
    devices = [LocalDevice("alice", "phone", "c1", pb.ACTIVITY_ACTIVE, 0)]
    gateway = await cluster["gateway"]("gw1", devices)
    gateway.report([transition(ONLINE, "alice", "phone", "c1")])
    await watcher.next()
    epoch = gateway.epoch
    gateway.request_resync()
    assert await watcher.nothing(0.8)
    assert gateway.epoch == epoch + 1
    (alice,) = await gateway.query(["alice"])
    assert alice.status == pb.STATUS_ONLINE


async def test_resync_restores_lost_state(cluster: dict) -> None:  # type: ignore[type-arg]
    watcher = cluster["watcher"]
    await watcher.watch("alice")
    devices = [LocalDevice("alice", "phone", "c1", pb.ACTIVITY_ACTIVE, 0)]
    gateway = await cluster["gateway"]("gw1", devices)
    gateway.report([transition(ONLINE, "alice", "phone", "c1")])
    await watcher.next()
    client: redis.Redis = cluster["redis"]
    keys = [key async for key in client.scan_iter(match=cluster["prefix"] + "*")]
    await client.delete(*keys)  # as a Redis restart without persistence would
    gateway.request_resync()
    change = await watcher.next()
    assert change.status == pb.STATUS_ONLINE
    (alice,) = await gateway.query(["alice"])
    assert alice.status == pb.STATUS_ONLINE


async def test_query_unknown_users_offline(cluster: dict) -> None:  # type: ignore[type-arg]
    gateway = await cluster["gateway"]("gw1")
    result = await gateway.query(["nobody", "x" * 64])
    assert [p.status for p in result] == [pb.STATUS_OFFLINE, pb.STATUS_OFFLINE]
    assert [p.version for p in result] == [0, 0]
