"""Cluster presence scripts against real Redis-protocol servers: every test runs once on a
standalone server and once on a Redis Cluster of three primaries, where each user's hash and
presence channel live on the primary of the user's hash slot."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import pytest
from conftest import TIMEOUT
from redis_server import RedisUnderTest, inspector

from tether.bus import channels
from tether.bus import envelope_pb2 as env
from tether.bus.redis import RedisBus, RedisBusConfig
from tether.presence.cluster import ClusterPresenceConfig, LocalDevice, RedisPresence
from tether.protocol import tether_pb2 as pb

_prefixes = itertools.count()


class Watcher:
    """A collector of presence changes and device claims published for some users."""

    def __init__(self, server: RedisUnderTest) -> None:
        self.bus = RedisBus(RedisBusConfig(url=server.url, cluster=server.cluster))
        self.changes: asyncio.Queue[pb.UserPresence] = asyncio.Queue()
        self.claims: asyncio.Queue[env.DeviceClaim] = asyncio.Queue()

    async def watch(self, *users: str) -> None:
        await self.bus.start()
        for user in users:
            self.bus.subscribe(channels.presence_channel(user), self._on_change)
        await self.bus.flush_subscriptions()

    async def watch_claims(self, user: str) -> None:
        await self.bus.start()
        self.bus.subscribe(channels.user_channel(user), self._on_claim)
        await self.bus.flush_subscriptions()

    def _on_change(self, channel: str, payload: bytes) -> None:
        envelope = env.Envelope.FromString(payload)
        self.changes.put_nowait(envelope.presence_change.presence)

    def _on_claim(self, channel: str, payload: bytes) -> None:
        self.claims.put_nowait(env.Envelope.FromString(payload).device_claim)

    async def next_claim(self, timeout: float = TIMEOUT) -> env.DeviceClaim:
        return await asyncio.wait_for(self.claims.get(), timeout)

    async def next(self, timeout: float = TIMEOUT) -> pb.UserPresence:
        return await asyncio.wait_for(self.changes.get(), timeout)

    async def nothing(self, wait: float = 0.5) -> bool:
        try:
            await asyncio.wait_for(self.changes.get(), wait)
        except TimeoutError:
            return True
        return False

    async def close(self) -> None:
        await self.bus.close()


@pytest.fixture
async def cluster(shared_redis: RedisUnderTest) -> AsyncIterator[dict[str, object]]:
    """A fresh key prefix, a watcher, and a factory for gateways' presence."""
    prefix = f"test{next(_prefixes)}:"
    client = inspector(shared_redis)
    watcher = Watcher(shared_redis)
    started: list[RedisPresence] = []

    async def gateway(name: str, devices: list[LocalDevice] | None = None) -> RedisPresence:
        config = ClusterPresenceConfig(
            url=shared_redis.url,
            cluster=shared_redis.cluster,
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


async def phone_moves(
    cluster: dict,  # type: ignore[type-arg]
    devices: list[LocalDevice] | None = None,
) -> tuple[RedisPresence, RedisPresence]:
    """Report alice's phone ONLINE as connection "old" on gw1, then as "new" on gw2."""
    first = await cluster["gateway"]("gw1", devices)
    first.report([transition(ONLINE, "alice", "phone", "old")])
    await cluster["watcher"].next()
    second = await cluster["gateway"]("gw2")
    second.report([transition(ONLINE, "alice", "phone", "new")])
    return first, second


async def test_stale_cleanup_keeps_new_session(cluster: dict) -> None:  # type: ignore[type-arg]
    watcher = cluster["watcher"]
    await watcher.watch("alice")
    first, second = await phone_moves(cluster)
    await asyncio.sleep(0.1)
    first.report([transition(OFFLINE, "alice", "phone", "old")])
    assert await watcher.nothing(0.8)
    (presence,) = await second.query(["alice"])
    assert presence.status == pb.STATUS_ONLINE


async def test_online_elsewhere_names_replaced_connection(cluster: dict) -> None:  # type: ignore[type-arg]
    watcher = cluster["watcher"]
    await watcher.watch("alice")
    await watcher.watch_claims("alice")
    first, second = await phone_moves(cluster)
    claim = await watcher.next_claim()
    assert (claim.device_id, claim.gateway_id, claim.connection_id) == ("phone", "gw2", "new")
    assert (claim.replaced_gateway_id, claim.replaced_connection_id) == ("gw1", "old")

    second.report([transition(ONLINE, "alice", "phone", "newer")])  # gw2 replaces its own
    first.report([transition(ONLINE, "alice", "laptop", "other")])  # another device
    await asyncio.sleep(0.3)
    assert watcher.claims.empty()


async def test_restored_session_yields_to_other_gateway(cluster: dict) -> None:  # type: ignore[type-arg]
    watcher = cluster["watcher"]
    await watcher.watch("alice")
    await watcher.watch_claims("alice")
    devices = [LocalDevice("alice", "phone", "old", pb.ACTIVITY_ACTIVE, 0)]
    first, _ = await phone_moves(cluster, devices)
    assert (await watcher.next_claim()).replaced_connection_id == "old"

    # Suppose gw1 missed that claim and resyncs: its session must not take the device back.
    first.request_resync()
    claim = await watcher.next_claim()
    assert (claim.gateway_id, claim.connection_id) == ("gw2", "new")
    assert (claim.replaced_gateway_id, claim.replaced_connection_id) == ("gw1", "old")
    holder = await cluster["redis"].hget(cluster["prefix"] + "p:{alice}", "dev:phone")
    gateway, _, connection, _ = holder.decode().split("\t")
    assert (gateway, connection) == ("gw2", "new")


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
    client = cluster["redis"]
    keys = [key async for key in client.scan_iter(match=cluster["prefix"] + "*")]
    for key in keys:  # as a Redis restart without persistence would
        await client.delete(key)
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


async def test_grace_finished_by_other_gateway(cluster: dict) -> None:  # type: ignore[type-arg]
    watcher = cluster["watcher"]
    await watcher.watch("alice")
    crashed = await cluster["gateway"]("gw1")
    await cluster["gateway"]("gw2")
    crashed.report([transition(ONLINE, "alice", "phone", "c1")])
    assert (await watcher.next()).status == pb.STATUS_ONLINE

    crashed.report([transition(OFFLINE, "alice", "phone", "c1")])
    await asyncio.sleep(0.1)  # the OFFLINE is written, its grace period runs
    await crashed.close()  # dies before its own maintenance pass finishes the grace period

    offline = await watcher.next()
    assert offline.status == pb.STATUS_OFFLINE
    grace_entries = await cluster["redis"].zrange(cluster["prefix"] + "grace", 0, -1)
    assert grace_entries == []  # the check was done and removed


async def test_unfinished_reap_is_retried(cluster: dict) -> None:  # type: ignore[type-arg]
    watcher = cluster["watcher"]
    await watcher.watch("alice")
    crashed = await cluster["gateway"]("gw1")
    crashed.report([transition(ONLINE, "alice", "phone", "c1")])
    assert (await watcher.next()).status == pb.STATUS_ONLINE
    await crashed.close()

    # A reaper claimed gw1's lapsed lease and was killed before it removed any device.
    client = cluster["redis"]
    prefix = cluster["prefix"]
    member = f"gw1\t{crashed.epoch}"
    await client.zrem(prefix + "{leases}", member)
    await client.zadd(prefix + "{leases}:reaping", {f"{member}\t{int(time.time() * 1000)}": 1})
    survivor = await cluster["gateway"]("gw2")

    offline = await watcher.next()
    assert offline.status == pb.STATUS_OFFLINE
    async with asyncio.timeout(TIMEOUT):  # the claim ends after the devices are removed
        while await client.zcard(prefix + "{leases}:reaping"):
            await asyncio.sleep(0.05)
    (alice,) = await survivor.query(["alice"])
    assert alice.status == pb.STATUS_OFFLINE


async def test_reap_covers_many_users(cluster: dict) -> None:  # type: ignore[type-arg]
    users = [f"user{number}" for number in range(2500)]  # several SSCAN pages, every slot range
    crashed = await cluster["gateway"]("gw1")
    crashed.report([transition(ONLINE, user, "phone", f"c{user}") for user in users])
    survivor = await cluster["gateway"]("gw2")
    async with asyncio.timeout(TIMEOUT):
        while any(p.status != pb.STATUS_ONLINE for p in await survivor.query(users)):
            await asyncio.sleep(0.05)

    await crashed.close()

    async with asyncio.timeout(TIMEOUT):
        while any(p.status != pb.STATUS_OFFLINE for p in await survivor.query(users)):
            await asyncio.sleep(0.1)
    members_key = f"{cluster['prefix']}g:{{gw1}}:{crashed.epoch}"
    assert await cluster["redis"].exists(members_key) == 0
