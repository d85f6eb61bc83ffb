"""The bus on Redis (>= 7) or Valkey, for tether processes spread over several machines.

Pub/sub channels are Redis channels: classic pub/sub (PUBLISH, SUBSCRIBE) on a standalone
server, sharded pub/sub (SPUBLISH, SSUBSCRIBE) on a Redis Cluster, where a channel lives in
the hash slot of its name and only that slot's primary carries it. Streams are Redis streams
read by the consumer group `tether`, so each entry goes to one consumer of the group and stays
pending until that consumer acknowledges it (XACK) after its handler returned.

One bus uses these connections and tasks:

- the subscriber links (tether.bus.redis_links): one connection in subscribed mode to the
  server, or to each primary of a cluster. Per link, a sender task writes (S)SUBSCRIBE,
  (S)UNSUBSCRIBE and health PINGs, and a reader task calls the message handlers. The
  supervisor task reopens every link with backoff when a PING times out or a socket fails,
  resubscribes every channel and then runs the reconnect callbacks. On a cluster it also
  follows slot moves: when a primary drops channels because their slot moved, it reloads
  the slot map and subscribes them on their new primary.
- the writer task: pipelines every buffered publish and XADD in one round trip per batch
  (per primary on a cluster).
- one consumer task per `consume` call (tether.bus.redis_streams), reading with XREADGROUP
  on its own pooled connection.

`ready` is true while every subscriber link is up and every subscription made before the
last (re)connect is confirmed. While it is false, `publish` and `append` raise BusError at
once instead of buffering, so a caller can report a retryable error. `RedisBus` describes
what happens to messages they accepted before the outage was detected.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import random
import socket
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from tether.bus.base import Bus, BusCounters, MessageHandler, ReconnectCallback, StreamHandler
from tether.bus.redis_links import SubscriberLink, load_slot_owners, slot_of
from tether.bus.redis_streams import (
    CONSUMER_GROUP,
    LINK_ERRORS,
    PAYLOAD_FIELD,
    RedisClient,
    StreamConsumer,
    execute,
    raw_reply,
)
from tether.protocol.errors import BusError, BusOverloaded, BusUnavailable

__all__ = ["CONSUMER_GROUP", "ReconnectCallback", "RedisBus", "RedisBusConfig", "cancel_and_wait"]

logger = logging.getLogger("tether.bus.redis")

# Pub/sub messages dispatched before the reader yields to the event loop, so a flood of
# messages already in the read buffer cannot starve other tasks.
MESSAGES_PER_YIELD = 256


# Everything that can make opening a connection fail, server replies (such as a bad password)
# included.
_CONNECT_ERRORS = (RedisError, RedisClusterException, OSError, TimeoutError)


@dataclass(frozen=True, kw_only=True, slots=True)
class RedisBusConfig:
    """Settings of a RedisBus. Times are in seconds unless a name ends in `_ms`."""

    url: str = "redis://127.0.0.1:6379/0"
    """Server URL in redis-py's form: redis://, rediss:// (TLS) or unix:// (default local).
    With `cluster`, the URL of any one node (redis:// or rediss://, database 0)."""
    cluster: bool = False
    """Whether the server is a Redis Cluster (default false). A cluster bus discovers the
    primaries from the URL's node and uses sharded pub/sub on each of them."""
    max_pending_publishes: int = 100_000
    """Messages published but not yet written to Redis before BusOverloaded (default 100,000)."""
    max_pending_appends: int = 100_000
    """Stream entries appended but not yet written to Redis before BusOverloaded (default
    100,000)."""
    stream_maxlen: int = 1_000_000
    """Approximate bound on each stream's length, passed as XADD MAXLEN ~ (default 1,000,000).
    Redis trims whole macro nodes (100 entries by default), so a stream can be slightly
    longer, and an entry not yet read when it is trimmed is lost."""
    block_ms: int = 1_000
    """Milliseconds one XREADGROUP waits for new entries (default 1000). It also bounds how late
    a consumer notices that it is time to claim entries of dead consumers."""
    batch_size: int = 512
    """Largest number of stream entries handed to a stream handler at once (default 512)."""
    claim_idle: float = 30.0
    """Idle time after which a pending entry of another consumer is claimed (default 30). It
    must exceed the longest a handler takes, or a slow but live consumer loses its entries."""
    claim_interval: float = 5.0
    """Time between XAUTOCLAIM scans of each consumed stream (default 5)."""
    health_interval: float = 1.0
    """Time between PINGs on the subscriber connection (default 1)."""
    health_timeout: float = 2.0
    """Time a PING may wait for its reply before the link is declared dead (default 2)."""
    command_timeout: float = 5.0
    """Time a command or connect may wait for the server; stream reads get block_ms more
    (default 5)."""
    connect_timeout: float = 10.0
    """Time `start` keeps trying to connect before it raises BusError (default 10)."""
    reconnect_delay_min: float = 0.1
    """First delay before reconnecting; it doubles per failed attempt (default 0.1)."""
    reconnect_delay_max: float = 5.0
    """Largest delay between reconnect attempts, before jitter (default 5)."""
    consumer_name: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    """Name of this process in the consumer group, unique per live process (default
    "<hostname>-<pid>"). A process restarted with the same name takes over its own pending
    entries at once."""

    def __post_init__(self) -> None:
        for name in ("max_pending_publishes", "max_pending_appends", "stream_maxlen",
                     "block_ms", "batch_size"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"RedisBusConfig.{name} must be at least 1")
        for name in ("claim_idle", "claim_interval", "health_interval", "health_timeout",
                     "command_timeout", "connect_timeout", "reconnect_delay_min"):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ValueError(f"RedisBusConfig.{name} must be positive")
        if self.reconnect_delay_max < self.reconnect_delay_min:
            raise ValueError("RedisBusConfig.reconnect_delay_max is below reconnect_delay_min")
        if not self.consumer_name:
            raise ValueError("RedisBusConfig.consumer_name must not be empty")


class _Subscription:
    """The handlers of one subscribed channel; `handlers` is replaced, never mutated."""

    __slots__ = ("handlers", "name")

    def __init__(self, name: str, handler: MessageHandler) -> None:
        self.name = name
        self.handlers: tuple[MessageHandler, ...] = (handler,)


class RedisBus(Bus):
    """Bus on a Redis or Valkey server.

    Delivery guarantees:

    - `publish` is at most once. A message reaches the subscribers connected when Redis
      handles it. Messages buffered when the link fails are kept and sent after the
      reconnect, but a batch already written when the failure hit is dropped and counted in
      a WARNING, because Redis may or may not have delivered it.
    - `append` is at least once. An entry that `append` accepted is written, re-sent after a
      link failure (which can duplicate it) and handed to handlers until one returns, so
      handlers must tolerate duplicates. An entry is lost if the stream is trimmed past it
      before it is read, if the server loses it (a restart without persistence), or if this
      process exits or `close` times out before the entry was written.
    - `publish` and `append` raise BusError while `ready` is false and BusOverloaded when
      their bounded buffer is full. Neither waits.
    """

    def __init__(self, config: RedisBusConfig | None = None) -> None:
        self.config = config = config or RedisBusConfig()
        self._address = _address_of(config.url)
        self._publish_command = "SPUBLISH" if config.cluster else "PUBLISH"

        # No retries inside redis-py, because this class decides what is resent after a
        # failure. RESP2 (protocol=2), because RESP3 turns pub/sub messages into push frames
        # that redis-py hands to its own callback, and the raw replies parsed below are RESP2.
        options: dict[str, Any] = {
            "socket_connect_timeout": config.command_timeout,
            "retry": Retry(NoBackoff(), 0),
            "protocol": 2,
        }
        blocking_timeout = config.command_timeout + config.block_ms / 1000
        self._commands: RedisClient
        self._blocking: RedisClient
        if config.cluster:
            self._commands = RedisCluster.from_url(
                config.url, socket_timeout=config.command_timeout, **options
            )
            self._blocking = RedisCluster.from_url(
                config.url, socket_timeout=blocking_timeout, **options
            )
        else:
            self._commands = Redis.from_url(
                config.url, socket_timeout=config.command_timeout, **options
            )
            self._blocking = Redis.from_url(config.url, socket_timeout=blocking_timeout, **options)
        # Raw replies: the consumer parses XREADGROUP and XAUTOCLAIM itself, so their shape
        # does not depend on the redis-py version.
        for client in (self._commands, self._blocking):
            for command in ("XREADGROUP", "XAUTOCLAIM"):
                client.set_response_callback(command, raw_reply)

        # Subscriptions: `_channels` is what handlers want. Each channel is routed to the link
        # of the server that carries it, which tracks what it has sent (SubscriberLink).
        # `_displaced` contains channels a cluster node dropped because their slot moved, until
        # the slot map is reloaded and they are routed to their new primary.
        self._channels: dict[bytes, _Subscription] = {}
        self._links: dict[str, SubscriberLink] = {}
        self._slot_owners: list[str] = []  # cluster only: "host:port" of each slot's primary
        self._displaced: set[bytes] = set()
        self._topology_stale = asyncio.Event()
        self._settled = asyncio.Event()  # every link settled and nothing displaced
        self._settled.set()

        self._up = asyncio.Event()  # the `ready` state
        self._link_active = False  # the link tasks run; `_up` follows `_settled` meanwhile
        self._reconnect_callbacks: list[ReconnectCallback] = []

        self._publishes: deque[tuple[str, bytes]] = deque()
        self._appends: deque[tuple[str, bytes]] = deque()
        self._writer_wakeup = asyncio.Event()
        self._written = asyncio.Event()  # both buffers empty and no batch in flight
        self._written.set()

        self.counters = BusCounters()
        self._consumer = StreamConsumer(
            config, self._commands, self._blocking, self._up, self.counters
        )
        self._consumed_streams: set[str] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._consumers: list[asyncio.Task[None]] = []
        self._started = False
        self._closed = False

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether the bus is connected and, after each (re)connect, has every channel that was
        subscribed at that time confirmed by the server."""
        return self._up.is_set() and not self._closed

    async def start(self) -> None:
        """Connect, retrying until `connect_timeout`; raise BusError if that fails."""
        self._check_open()
        if self._started:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.connect_timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                async with asyncio.timeout_at(deadline):
                    links = await self._open_links()
                break
            except _CONNECT_ERRORS as exc:
                delay = self._backoff(attempt)
                if loop.time() + delay >= deadline:
                    raise BusError(
                        f"cannot connect to Redis at {self._address} within "
                        f"{self.config.connect_timeout} s: {exc}"
                    ) from exc
                logger.warning(
                    "connect to Redis at %s failed (attempt %d), retrying in %.2f s: %s",
                    self._address, attempt, delay, exc,
                )  # fmt: skip
                await asyncio.sleep(delay)

        self._started = True
        first_up = loop.create_future()
        self._supervisor = loop.create_task(self._supervise(links, first_up), name="redis-link")
        self._writer = loop.create_task(self._write(), name="redis-writer")
        try:
            async with asyncio.timeout_at(deadline):
                await asyncio.shield(first_up)
        except TimeoutError as exc:
            await self.close()
            raise BusError(
                f"connected to Redis at {self._address} but could not subscribe within "
                f"{self.config.connect_timeout} s"
            ) from exc

    async def close(self) -> None:
        """Send what is buffered (for up to `command_timeout`), then stop every task."""
        if self._closed:
            return
        if self._up.is_set() and not self._written.is_set():
            try:
                await asyncio.wait_for(self.flush(), self.config.command_timeout)
            except (TimeoutError, BusError):
                logger.warning(
                    "closing with %d publishes and %d stream entries not sent",
                    len(self._publishes), len(self._appends),
                )  # fmt: skip
        self._closed = True
        for task in (*self._consumers, self._writer, self._supervisor):
            if task is not None:
                await cancel_and_wait(task)
        self._consumers.clear()
        self._link_active = False
        self._up.clear()

        self._settled.set()  # wakes flush_subscriptions, which then raises BusError
        self._written.set()
        await self._commands.aclose()
        await self._blocking.aclose()
        if self._started:
            logger.info("closed the bus to Redis at %s", self._address)

    def add_reconnect_callback(self, callback: ReconnectCallback) -> None:
        """Call callback (plain or async) each time the bus is ready again after an outage.

        Callbacks run one at a time, in the order added, after every channel is subscribed
        again. An exception is logged and the next callback runs.
        """
        self._reconnect_callbacks.append(callback)

    # -- pub/sub ----------------------------------------------------------------------------

    def subscribe(self, channel: str, handler: MessageHandler) -> None:
        self._check_open()
        key = channel.encode()
        entry = self._channels.get(key)
        if entry is None:
            self._channels[key] = _Subscription(channel, handler)
            self._route(key, subscribed=True)
        elif handler not in entry.handlers:
            entry.handlers = (*entry.handlers, handler)

    def unsubscribe(self, channel: str, handler: MessageHandler) -> None:
        key = channel.encode()
        entry = self._channels.get(key)
        if entry is None or handler not in entry.handlers:
            return
        remaining = tuple(h for h in entry.handlers if h != handler)
        if remaining:
            entry.handlers = remaining
            return
        del self._channels[key]
        self._route(key, subscribed=False)

    def subscriber_count(self, channel: str) -> int:
        """Return how many handlers receive channel's messages (for tests and metrics)."""
        entry = self._channels.get(channel.encode())
        return 0 if entry is None else len(entry.handlers)

    async def flush_subscriptions(self) -> None:
        """Wait until the server has confirmed every subscribe and unsubscribe made so far.

        After it returns, a message published anywhere reaches the handlers subscribed
        before the call, so "subscribe, flush, then ask for a snapshot" misses no change.
        While Redis is down it waits for the reconnect. Raises BusError if the bus closes.
        """
        self._check_open()
        while not self._settled.is_set():
            await self._settled.wait()
        self._check_open()

    def publish(self, channel: str, payload: bytes) -> None:
        self._check_open()
        if not self._up.is_set():
            raise BusUnavailable(f"Redis at {self._address} is not reachable; publish not sent")
        if len(self._publishes) >= self.config.max_pending_publishes:
            raise BusOverloaded(f"{len(self._publishes)} publishes waiting to be sent to Redis")
        self._publishes.append((channel, payload))
        self._written.clear()
        self._writer_wakeup.set()

    # -- streams ----------------------------------------------------------------------------

    def append(self, stream: str, payload: bytes) -> None:
        self._check_open()
        if not self._up.is_set():
            raise BusUnavailable(f"Redis at {self._address} is not reachable; entry not appended")
        if len(self._appends) >= self.config.max_pending_appends:
            raise BusOverloaded(f"{len(self._appends)} stream entries waiting to be sent")
        self._appends.append((stream, payload))
        self._written.clear()
        self._writer_wakeup.set()

    def consume(self, stream: str, handler: StreamHandler) -> None:
        """Hand stream's entries to handler, one consumer of group `tether` per stream.

        The entries this consumer name left pending come first, then new ones. Entries of
        other consumers idle for `claim_idle` are claimed every `claim_interval`. An entry is
        acknowledged only after handler returned; if it raises, the batch stays pending and
        is retried after `claim_idle`. Raises BusError if this bus already consumes stream.
        """
        self._check_open()
        if stream in self._consumed_streams:
            raise BusError(f"stream {stream} already has a consumer on this bus")
        self._consumed_streams.add(stream)
        task = asyncio.get_running_loop().create_task(
            self._consumer.consume(stream, handler), name=f"redis-consumer-{stream}"
        )
        self._consumers.append(task)

    async def flush(self) -> None:
        """Wait until every publish and append accepted so far has been written to Redis."""
        self._check_open()
        while not self._written.is_set():
            await self._written.wait()
        self._check_open()

    # -- subscriber links -------------------------------------------------------------------

    async def _open_links(self) -> list[SubscriberLink]:
        """Open the subscriber connection(s) and check that commands get through too.

        A standalone server gets one link. A cluster gets one link per primary, found from
        the slot map of the first node that replies, and each link is checked with a PING.
        """
        if not self.config.cluster:
            connection = await self._open_connection(self._node_kwargs(None))
            try:
                await execute(self._commands, "PING")
                await self._check_standalone()
            except BaseException:
                await connection.disconnect(nowait=True)
                raise
            return [SubscriberLink(self._address, connection, sharded=False)]

        self._slot_owners = owners = await self._load_slot_owners()
        links: list[SubscriberLink] = []
        try:
            for address in sorted(set(owners)):
                connection = await self._open_connection(self._node_kwargs(address))
                links.append(SubscriberLink(address, connection, sharded=True))
                await connection.send_command("PING")
                await connection.read_response()
            await execute(self._commands, "PING")
        except BaseException:
            for link in links:
                await link.connection.disconnect(nowait=True)
            raise
        return links

    def _node_kwargs(self, address: str | None) -> tuple[type[AbstractConnection], dict[str, Any]]:
        """Return the connection class and arguments for the server, or one cluster node."""
        if address is None:
            pool = self._commands.connection_pool  # type: ignore[union-attr]
            return pool.connection_class, dict(pool.connection_kwargs)
        host, _, port = address.rpartition(":")
        assert isinstance(self._commands, RedisCluster)
        kwargs: dict[str, Any] = dict(self._commands.get_connection_kwargs())
        node = ClusterNode(host, int(port), **kwargs)
        return node.connection_class, dict(node.connection_kwargs)

    @staticmethod
    async def _open_connection(
        node: tuple[type[AbstractConnection], dict[str, Any]],
    ) -> AbstractConnection:
        connection_class, kwargs = node
        # No read timeout: the connection waits for messages indefinitely, and the PINGs
        # of the sender task detect a dead link instead.
        connection = connection_class(**{**kwargs, "socket_timeout": None})
        try:
            await connection.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        return connection

    async def _check_standalone(self) -> None:
        """Raise BusError if the server is a cluster node, which needs `cluster=True`."""
        info = await execute(self._commands, "INFO", "cluster")
        if info.get("cluster_enabled"):
            raise BusError(
                f"Redis at {self._address} is a Redis Cluster node; enable the cluster option "
                "(RedisBusConfig.cluster, tether --redis-cluster)"
            )

    async def _load_slot_owners(self) -> list[str]:
        """Read the slot map from the URL's node, else from the primaries known so far."""
        seed = urlsplit(self.config.url)
        seed_address = f"{seed.hostname or '127.0.0.1'}:{seed.port or 6379}"
        candidates = [seed_address, *sorted(set(self._slot_owners) - {seed_address})]
        failure: BaseException | None = None
        for address in candidates:
            try:
                connection = await self._open_connection(self._node_kwargs(address))
            except _CONNECT_ERRORS as error:
                failure = error
                continue
            try:
                host = address.rpartition(":")[0]
                return await load_slot_owners(connection, host)
            except _CONNECT_ERRORS as error:
                failure = error
            finally:
                await connection.disconnect(nowait=True)
        assert failure is not None
        raise failure

    async def _supervise(self, links: list[SubscriberLink], first_up: asyncio.Future[None]) -> None:
        reconnected = False
        while True:
            error = await self._serve_links(links, reconnected, first_up)
            self._link_active = False
            self._up.clear()
            self.counters.link_failures += 1
            self._links = {}
            logger.info("lost the connection to Redis at %s: %s", self._address, error)
            # Every channel must be subscribed again, so flush_subscriptions waits meanwhile.
            self._update_settled()
            # Interrupt stream reads and writes still waiting on the dead server.
            await _disconnect_pool(self._commands)
            await _disconnect_pool(self._blocking)
            links = await self._reconnect()
            reconnected = True

    async def _serve_links(
        self, links: list[SubscriberLink], reconnected: bool, first_up: asyncio.Future[None]
    ) -> BaseException | None:
        """Run the links until one fails or the cluster's primaries change; return why."""
        # New connections have no subscriptions, so every channel is subscribed again.
        self._links = {link.address: link for link in links}
        self._displaced.clear()
        self._topology_stale.clear()
        self._link_active = True
        for key in self._channels:
            self._route(key, subscribed=True)
        self._update_settled()

        loop = asyncio.get_running_loop()
        link_tasks: set[asyncio.Task[None]] = set()
        for link in links:
            link_tasks.add(loop.create_task(self._read_link(link), name="redis-link-reader"))
            link_tasks.add(loop.create_task(self._send_link(link), name="redis-link-sender"))
        if self.config.cluster:
            link_tasks.add(loop.create_task(self._follow_slots(), name="redis-slot-follower"))
        try:
            up = loop.create_task(self._up.wait())
            try:
                done, _ = await asyncio.wait({*link_tasks, up}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                up.cancel()
            if up in done and not done & link_tasks:
                logger.info(
                    "connected to Redis at %s (%d subscriber links), %d channels subscribed",
                    self._address, len(links), len(self._channels),
                )  # fmt: skip
                if not first_up.done():
                    first_up.set_result(None)
                if reconnected:
                    await self._run_reconnect_callbacks()
                await asyncio.wait(link_tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in link_tasks:
                task.cancel()
            outcomes = await asyncio.gather(*link_tasks, return_exceptions=True)
            for link in links:
                await link.connection.disconnect(nowait=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(
                outcome, asyncio.CancelledError
            ):
                return outcome
        return None

    async def _reconnect(self) -> list[SubscriberLink]:
        attempt = 0
        while True:
            attempt += 1
            delay = self._backoff(attempt)
            await asyncio.sleep(delay)
            try:
                return await asyncio.wait_for(self._open_links(), self.config.command_timeout)
            except (*_CONNECT_ERRORS, BusError) as exc:
                logger.warning(
                    "reconnect to Redis at %s failed (attempt %d, waited %.2f s): %s",
                    self._address, attempt, delay, exc,
                )  # fmt: skip

    def _backoff(self, attempt: int) -> float:
        """Return the delay before attempt: exponential, capped, with "equal jitter"."""
        config = self.config
        exponential = config.reconnect_delay_min * 2.0 ** min(attempt - 1, 30)
        ceiling = min(config.reconnect_delay_max, exponential)
        return ceiling * random.uniform(0.5, 1.0)

    async def _run_reconnect_callbacks(self) -> None:
        for callback in tuple(self._reconnect_callbacks):
            try:
                result = callback()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("reconnect callback %r failed", callback)

    def _route(self, key: bytes, *, subscribed: bool) -> None:
        """Record on the channel's link whether it should be subscribed there.

        While no link is up, nothing is recorded: the next link start routes every channel.
        """
        self._settled.clear()
        if not self._link_active:
            self._update_settled()
            return
        if self.config.cluster:
            link = self._links.get(self._slot_owners[slot_of(key)])
            if link is None:  # the slot map names a primary without a link
                self._displaced.add(key)
                self._topology_stale.set()
                return
        else:
            (link,) = self._links.values()
        link.mark(key, subscribed)

    async def _follow_slots(self) -> None:
        """Move channels to their new primary after a cluster node dropped them.

        Redis and Valkey drop a node's shard channel subscriptions, each with an unsolicited
        SUNSUBSCRIBE, when the channel's slot moves to another node. Returns (which ends the
        links and reconnects) when the set of primaries changed.
        """
        while True:
            await self._topology_stale.wait()
            self._topology_stale.clear()
            owners = await self._load_slot_owners()
            if set(owners) != set(self._links):
                logger.info(
                    "the primaries of Redis Cluster %s changed; reconnecting", self._address
                )
                return
            self._slot_owners = owners

            moved = 0
            for link in self._links.values():
                for key in [key for key in link.routed if owners[slot_of(key)] != link.address]:
                    link.routed.discard(key)
                    link.dirty.discard(key)
                    link.on_server.discard(key)  # the old primary dropped it when the slot moved
                    self._links[owners[slot_of(key)]].mark(key, True)
                    moved += 1
            displaced, self._displaced = self._displaced, set()
            for key in displaced:
                if key in self._channels:
                    self._links[owners[slot_of(key)]].mark(key, True)
            self._update_settled()
            logger.info(
                "Redis Cluster slots moved: %d channels resubscribed on their new primary",
                moved + len(displaced),
            )  # fmt: skip

    async def _send_link(self, link: SubscriberLink) -> None:
        """Write (un)subscriptions and health PINGs; raise when a PING times out."""
        config = self.config
        loop = asyncio.get_running_loop()
        connection = link.connection
        next_ping = loop.time()
        while True:
            link.wakeup.clear()
            now = loop.time()
            if link.pong_deadline is not None and now >= link.pong_deadline:
                raise TimeoutError(
                    f"no reply to PING from {link.address} within {config.health_timeout} s"
                )

            commands = link.take_commands()
            self._update_settled()
            if now >= next_ping and link.pong_deadline is None:
                commands.append((b"PING",))
                link.pong_deadline = now + config.health_timeout
                next_ping = now + config.health_interval
            if commands:
                packed = connection.pack_commands(commands)
                await connection.send_packed_command(packed, check_health=False)

            wake_at = next_ping
            if link.pong_deadline is not None:
                wake_at = min(wake_at, link.pong_deadline)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(wake_at):
                    await link.wakeup.wait()

    async def _read_link(self, link: SubscriberLink) -> None:
        """Dispatch messages to handlers and count confirmations, until the link fails."""
        channels = self._channels
        connection = link.connection
        dispatched = 0
        while True:
            reply = await connection.read_response()
            if type(reply) is list:
                kind = reply[0]
                if kind == b"message" or kind == b"smessage":
                    entry = channels.get(reply[1])
                    if entry is not None:
                        # Hot path: handlers run here, in this one task, with no task per message.
                        for handler in entry.handlers:
                            try:
                                handler(entry.name, reply[2])
                            except Exception:
                                logger.exception("subscriber of %s failed", entry.name)
                    dispatched += 1
                    if dispatched % MESSAGES_PER_YIELD == 0:
                        await asyncio.sleep(0)
                elif kind == b"subscribe" or kind == b"ssubscribe":
                    link.unconfirmed -= 1
                    self._update_settled()
                elif kind == b"unsubscribe" or kind == b"sunsubscribe":
                    if not link.confirm_unsubscribe(reply[1]):
                        self._on_dropped(link, reply[1])
                    self._update_settled()
                elif kind == b"pong":
                    link.pong_deadline = None
            elif reply == b"PONG":  # a PING sent while no channel is subscribed
                link.pong_deadline = None

    def _on_dropped(self, link: SubscriberLink, key: bytes) -> None:
        """Handle a channel the server unsubscribed without being asked."""
        if key not in link.routed:
            return  # already routed elsewhere, or no longer subscribed
        logger.debug("Redis at %s dropped channel %r; rerouting it", link.address, key)
        if self.config.cluster:
            link.routed.discard(key)
            self._displaced.add(key)
            self._topology_stale.set()
        else:
            link.mark(key, True)

    def _update_settled(self) -> None:
        if self._link_active:
            settled = not self._displaced and all(link.settled for link in self._links.values())
        else:
            settled = not self._channels
        if settled:
            self._settled.set()
            if self._link_active:
                self._up.set()  # before any flush_subscriptions waiter resumes
        else:
            self._settled.clear()

    # -- writer -----------------------------------------------------------------------------

    async def _write(self) -> None:
        """Pipeline every buffered publish and XADD, one round trip per batch and server."""
        maxlen = str(self.config.stream_maxlen).encode()
        while True:
            if not self._publishes and not self._appends:
                self._written.set()
                self._writer_wakeup.clear()
                await self._writer_wakeup.wait()
                continue
            await self._up.wait()

            publishes, self._publishes = self._publishes, deque()
            appends, self._appends = self._appends, deque()
            pipeline = self._commands.pipeline(transaction=False)
            for channel, payload in publishes:
                pipeline.execute_command(self._publish_command, channel, payload)
            for stream, payload in appends:
                pipeline.execute_command(
                    "XADD", stream, "MAXLEN", "~", maxlen, "*", PAYLOAD_FIELD, payload
                )
            try:
                results = await pipeline.execute(raise_on_error=False)
            except LINK_ERRORS as exc:
                # Redis may have run part of the batch. Publishes are at most once, so they are
                # dropped; stream entries are at least once, so they go back to the front.
                self._appends.extendleft(reversed(appends))
                self.counters.write_errors += 1
                self.counters.dropped += len(publishes)
                logger.warning(
                    "writing to Redis at %s failed: %s; dropped %d publishes, will resend "
                    "%d stream entries", self._address, exc, len(publishes), len(appends),
                )  # fmt: skip
                await asyncio.sleep(self.config.reconnect_delay_min)
                continue
            finally:
                await pipeline.reset()  # type: ignore[no-untyped-call]

            counters = self.counters
            counters.round_trips += 1
            counters.published += len(publishes)
            counters.appended += len(appends)
            failures = [result for result in results if isinstance(result, Exception)]
            counters.rejected += len(failures)
            if failures:
                logger.error(
                    "Redis at %s rejected %d of %d commands, first: %s",
                    self._address, len(failures), len(results), failures[0],
                )  # fmt: skip

    # -- helpers ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BusError("bus is closed")


async def cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel task and wait until it has finished.

    The cancellation is repeated because on Python < 3.12 `asyncio.wait_for`, which redis-py
    uses around socket writes, can swallow a cancellation that arrives as the write ends.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.05)
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _disconnect_pool(client: RedisClient) -> None:
    """Close every pooled connection of client, failing the commands that wait on them."""
    if isinstance(client, RedisCluster):
        for node in client.get_nodes():
            await node.disconnect()
    else:
        await client.connection_pool.disconnect()


def _address_of(url: str) -> str:
    """Return url without its credentials, for log records and error messages."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path or url
    netloc = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{netloc}{parts.path}"
