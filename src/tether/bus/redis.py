"""The bus on Redis (>= 7) or Valkey, for tether processes spread over several machines.

Pub/sub channels are Redis channels. Streams are Redis streams read by the consumer group
`tether`, so each entry goes to one consumer of the group and stays pending until that
consumer acknowledges it (XACK) after its handler returned.

One bus uses these connections and tasks:

- the subscriber link: one connection in subscribed mode. A sender task writes SUBSCRIBE,
  UNSUBSCRIBE and health PINGs on it, and a reader task calls the message handlers. The
  supervisor task reopens the link with backoff when the PING times out or the socket fails,
  resubscribes every channel and then runs the reconnect callbacks.
- the writer task: pipelines every buffered PUBLISH and XADD in one round trip per batch.
- one consumer task per `consume` call, reading with XREADGROUP on its own pooled connection.

`ready` is true while the subscriber link is up and every subscription is confirmed. While it
is false, `publish` and `append` raise BusError at once instead of buffering, so a caller
can report a retryable error. `RedisBus` describes what happens to messages they accepted
before the outage was detected.
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
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tether.bus.base import Bus, BusCounters, MessageHandler, ReconnectCallback, StreamHandler
from tether.protocol.errors import BusError, BusOverloaded, BusUnavailable

__all__ = ["CONSUMER_GROUP", "ReconnectCallback", "RedisBus", "RedisBusConfig"]

logger = logging.getLogger("tether.bus.redis")

# Consumer group that every tether process reading a stream joins.
CONSUMER_GROUP = "tether"
# Field of a stream entry that contains the payload.
PAYLOAD_FIELD = b"p"
# Channels per SUBSCRIBE or UNSUBSCRIBE command, so one command stays a few hundred KB.
SUBSCRIBE_BATCH = 1024
# Pub/sub messages dispatched before the reader yields to the event loop, so a flood of
# messages already in the read buffer cannot starve other tasks.
MESSAGES_PER_YIELD = 256


# Failures of the link to the server, as opposed to errors the server replied with.
_LINK_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)
# Everything that can make opening a connection fail, server replies (such as a bad password)
# included.
_CONNECT_ERRORS = (RedisError, OSError, TimeoutError)


@dataclass(frozen=True, kw_only=True, slots=True)
class RedisBusConfig:
    """Settings of a RedisBus. Times are in seconds unless a name ends in `_ms`."""

    url: str = "redis://127.0.0.1:6379/0"
    """Server URL in redis-py's form: redis://, rediss:// (TLS) or unix:// (default local)."""
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

        # No retries inside redis-py, because this class decides what is resent after a
        # failure. RESP2 (protocol=2), because RESP3 turns pub/sub messages into push frames
        # that redis-py hands to its own callback, and the raw replies parsed below are RESP2.
        options: dict[str, Any] = {
            "socket_connect_timeout": config.command_timeout,
            "retry": Retry(NoBackoff(), 0),
            "protocol": 2,
        }
        self._commands = Redis.from_url(
            config.url, socket_timeout=config.command_timeout, **options
        )
        self._blocking = Redis.from_url(
            config.url, socket_timeout=config.command_timeout + config.block_ms / 1000, **options
        )
        # Raw replies: the consumer parses XREADGROUP and XAUTOCLAIM itself, so their shape
        # does not depend on the redis-py version.
        for client in (self._commands, self._blocking):
            for command in ("XREADGROUP", "XAUTOCLAIM"):
                client.set_response_callback(command, _raw_reply)

        # Subscriptions: `_channels` is what handlers want, `_on_server` what was sent to the
        # server on the current link, `_dirty` the channels whose two states may differ.
        self._channels: dict[bytes, _Subscription] = {}
        self._on_server: set[bytes] = set()
        self._dirty: set[bytes] = set()
        self._unconfirmed = 0  # (un)subscriptions sent on this link and not yet confirmed
        self._settled = asyncio.Event()  # nothing dirty and nothing unconfirmed
        self._settled.set()
        self._sender_wakeup = asyncio.Event()
        self._pong_deadline: float | None = None

        self._up = asyncio.Event()  # the `ready` state
        self._link_active = False  # the link tasks run; `_up` follows `_settled` meanwhile
        self._reconnect_callbacks: list[ReconnectCallback] = []

        self._publishes: deque[tuple[str, bytes]] = deque()
        self._appends: deque[tuple[str, bytes]] = deque()
        self._writer_wakeup = asyncio.Event()
        self._written = asyncio.Event()  # both buffers empty and no batch in flight
        self._written.set()

        self._consumed_streams: set[str] = set()
        self._supervisor: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._consumers: list[asyncio.Task[None]] = []
        self._started = False
        self._closed = False
        self.counters = BusCounters()

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
                    link = await self._open_link()
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
        self._supervisor = loop.create_task(self._supervise(link, first_up), name="redis-link")
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
                await _cancel(task)
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
            self._mark_dirty(key)
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
        self._mark_dirty(key)

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
        # NOTE: on Redis Cluster this should be SPUBLISH (sharded pub/sub), and the writer
        # would group the batch by the node that owns each channel's hash slot.
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
            self._consume(stream, handler), name=f"redis-consumer-{stream}"
        )
        self._consumers.append(task)

    async def flush(self) -> None:
        """Wait until every publish and append accepted so far has been written to Redis."""
        self._check_open()
        while not self._written.is_set():
            await self._written.wait()
        self._check_open()

    # -- subscriber link --------------------------------------------------------------------

    async def _open_link(self) -> AbstractConnection:
        """Open the subscriber connection and check that commands get through too."""
        pool = self._commands.connection_pool
        # No read timeout: the connection waits for messages indefinitely, and the PINGs
        # of the sender task detect a dead link instead.
        kwargs = {**pool.connection_kwargs, "socket_timeout": None}
        connection: AbstractConnection = pool.connection_class(**kwargs)
        try:
            await connection.connect()  # type: ignore[no-untyped-call]
            await _execute(self._commands, "PING")
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        return connection

    async def _supervise(self, link: AbstractConnection, first_up: asyncio.Future[None]) -> None:
        reconnected = False
        while True:
            error = await self._serve_link(link, reconnected, first_up)
            self._link_active = False
            self._up.clear()
            self.counters.link_failures += 1
            logger.info("lost the connection to Redis at %s: %s", self._address, error)
            # Every channel must be subscribed again, so flush_subscriptions waits meanwhile.
            self._dirty = set(self._channels)
            self._update_settled()
            # Interrupt stream reads and writes still waiting on the dead server.
            await self._commands.connection_pool.disconnect()
            await self._blocking.connection_pool.disconnect()
            link = await self._reconnect()
            reconnected = True

    async def _serve_link(
        self, link: AbstractConnection, reconnected: bool, first_up: asyncio.Future[None]
    ) -> BaseException | None:
        """Run the link until it fails; return why."""
        # A new connection has no subscriptions, so every wanted channel is subscribed again.
        self._on_server.clear()
        self._dirty = set(self._channels)
        self._unconfirmed = 0
        self._pong_deadline = None
        self._link_active = True
        self._update_settled()
        self._sender_wakeup.set()

        loop = asyncio.get_running_loop()
        reader = loop.create_task(self._read_link(link), name="redis-link-reader")
        sender = loop.create_task(self._send_link(link), name="redis-link-sender")
        link_tasks = {reader, sender}
        try:
            up = loop.create_task(self._up.wait())
            try:
                done, _ = await asyncio.wait({*link_tasks, up}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                up.cancel()
            if up in done and not done & link_tasks:
                logger.info(
                    "connected to Redis at %s, %d channels subscribed",
                    self._address, len(self._channels),
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
            await link.disconnect(nowait=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(
                outcome, asyncio.CancelledError
            ):
                return outcome
        return None

    async def _reconnect(self) -> AbstractConnection:
        attempt = 0
        while True:
            attempt += 1
            delay = self._backoff(attempt)
            await asyncio.sleep(delay)
            try:
                return await asyncio.wait_for(self._open_link(), self.config.command_timeout)
            except _CONNECT_ERRORS as exc:
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

    async def _send_link(self, link: AbstractConnection) -> None:
        """Write (un)subscriptions and health PINGs; raise when a PING times out."""
        config = self.config
        loop = asyncio.get_running_loop()
        next_ping = loop.time()
        while True:
            self._sender_wakeup.clear()
            now = loop.time()
            if self._pong_deadline is not None and now >= self._pong_deadline:
                raise TimeoutError(f"no reply to PING within {config.health_timeout} s")

            commands = self._take_subscription_commands()
            if now >= next_ping and self._pong_deadline is None:
                commands.append((b"PING",))
                self._pong_deadline = now + config.health_timeout
                next_ping = now + config.health_interval
            if commands:
                await link.send_packed_command(link.pack_commands(commands), check_health=False)

            wake_at = next_ping
            if self._pong_deadline is not None:
                wake_at = min(wake_at, self._pong_deadline)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(wake_at):
                    await self._sender_wakeup.wait()

    def _take_subscription_commands(self) -> list[tuple[bytes, ...]]:
        """Turn the dirty channels into SUBSCRIBE and UNSUBSCRIBE commands, in batches."""
        subscribe: list[bytes] = []
        unsubscribe: list[bytes] = []
        for key in self._dirty:
            wanted = key in self._channels
            if wanted and key not in self._on_server:
                subscribe.append(key)
                self._on_server.add(key)
            elif not wanted and key in self._on_server:
                unsubscribe.append(key)
                self._on_server.discard(key)
        self._dirty.clear()

        # NOTE: on Redis Cluster these would be SSUBSCRIBE and SUNSUBSCRIBE (sharded pub/sub),
        # sent on one connection per node and batched by hash slot, because a sharded command
        # must name channels of one slot only. Not implemented: this bus is tested standalone.
        commands: list[tuple[bytes, ...]] = []
        for verb, names in ((b"SUBSCRIBE", subscribe), (b"UNSUBSCRIBE", unsubscribe)):
            for start in range(0, len(names), SUBSCRIBE_BATCH):
                commands.append((verb, *names[start : start + SUBSCRIBE_BATCH]))
        self._unconfirmed += len(subscribe) + len(unsubscribe)
        self._update_settled()
        return commands

    async def _read_link(self, link: AbstractConnection) -> None:
        """Dispatch messages to handlers and count confirmations, until the link fails."""
        channels = self._channels
        dispatched = 0
        while True:
            reply = await link.read_response()
            if type(reply) is list:
                kind = reply[0]
                if kind == b"message":
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
                elif kind == b"subscribe" or kind == b"unsubscribe":
                    self._unconfirmed -= 1
                    self._update_settled()
                elif kind == b"pong":
                    self._pong_deadline = None
            elif reply == b"PONG":  # a PING sent while no channel is subscribed
                self._pong_deadline = None

    def _mark_dirty(self, key: bytes) -> None:
        self._dirty.add(key)
        self._settled.clear()
        self._sender_wakeup.set()

    def _update_settled(self) -> None:
        if not self._dirty and self._unconfirmed <= 0:
            self._settled.set()
            if self._link_active:
                self._up.set()  # before any flush_subscriptions waiter resumes
        else:
            self._settled.clear()

    # -- writer -----------------------------------------------------------------------------

    async def _write(self) -> None:
        """Pipeline every buffered PUBLISH and XADD, one round trip per batch."""
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
                pipeline.execute_command("PUBLISH", channel, payload)
            for stream, payload in appends:
                pipeline.execute_command(
                    "XADD", stream, "MAXLEN", "~", maxlen, "*", PAYLOAD_FIELD, payload
                )
            try:
                results = await pipeline.execute(raise_on_error=False)
            except _LINK_ERRORS as exc:
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

    # -- stream consumer --------------------------------------------------------------------

    async def _consume(self, stream: str, handler: StreamHandler) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        group_exists = False
        pending_from: bytes | None = b"0"  # own pending entries first, then new ones
        next_claim = loop.time()
        claim_cursor = b"0-0"
        while True:
            try:
                await self._up.wait()
                if not group_exists:
                    await self._create_group(stream)
                    group_exists = True

                if loop.time() >= next_claim:
                    claim_cursor, entries = await self._claim(stream, claim_cursor)
                    if claim_cursor == b"0-0":
                        next_claim = loop.time() + config.claim_interval
                    if entries:
                        await self._handle(stream, handler, entries)
                    continue

                if pending_from is not None:
                    entries = await self._read_group(stream, pending_from, block=False)
                    if not entries:
                        pending_from = None
                        continue
                    pending_from = entries[-1][0]
                else:
                    entries = await self._read_group(stream, b">", block=True)
                if entries:
                    await self._handle(stream, handler, entries)

            except ResponseError as exc:
                if str(exc).startswith("NOGROUP"):
                    # The stream or group vanished, for example after a server restart
                    # without persistence: create it again and start from the beginning.
                    logger.warning("stream %s lost its consumer group, recreating it", stream)
                    group_exists = False
                    pending_from = b"0"
                    continue
                self.counters.read_errors += 1
                logger.error("reading stream %s failed: %s", stream, exc)
                await asyncio.sleep(config.reconnect_delay_max)
            except _LINK_ERRORS as exc:
                # A reply lost in transit left its entries pending for this consumer: reread.
                pending_from = b"0"
                self.counters.read_errors += 1
                logger.warning("reading stream %s failed, will retry: %s", stream, exc)
                await asyncio.sleep(config.reconnect_delay_min)

    async def _create_group(self, stream: str) -> None:
        """Create the group at the stream's first entry, so no entry appended earlier is missed."""
        try:
            await _execute(
                self._commands, "XGROUP", "CREATE", stream, CONSUMER_GROUP, "0", "MKSTREAM"
            )
        except ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise

    async def _read_group(
        self, stream: str, start: bytes, *, block: bool
    ) -> list[tuple[bytes, bytes | None]]:
        config = self.config
        arguments: list[Any] = ["GROUP", CONSUMER_GROUP, config.consumer_name]
        arguments += ["COUNT", config.batch_size]
        client = self._commands
        if block:
            arguments += ["BLOCK", config.block_ms]
            client = self._blocking
        reply = await _execute(client, "XREADGROUP", *arguments, "STREAMS", stream, start)
        if not reply:
            return []
        return _parse_entries(reply[0][1])

    async def _claim(
        self, stream: str, cursor: bytes
    ) -> tuple[bytes, list[tuple[bytes, bytes | None]]]:
        """Claim a batch of entries idle for `claim_idle`; return the next cursor and them."""
        config = self.config
        reply = await _execute(
            self._commands,
            "XAUTOCLAIM", stream, CONSUMER_GROUP, config.consumer_name,
            int(config.claim_idle * 1000), cursor, "COUNT", config.batch_size,
        )  # fmt: skip
        entries = _parse_entries(reply[1])
        if entries:
            logger.warning(
                "claimed %d entries of stream %s idle for over %.1f s",
                len(entries), stream, config.claim_idle,
            )  # fmt: skip
        return bytes(reply[0]), entries

    async def _handle(
        self, stream: str, handler: StreamHandler, entries: list[tuple[bytes, bytes | None]]
    ) -> None:
        """Call handler with the payloads, then acknowledge every entry of the batch."""
        payloads = [payload for _, payload in entries if payload is not None]
        if payloads:
            try:
                await handler(payloads)
            except Exception:
                logger.exception(
                    "handler of stream %s failed on %d entries; they stay pending and are "
                    "retried after %.1f s", stream, len(payloads), self.config.claim_idle,
                )  # fmt: skip
                return
        # Entries without a payload were deleted or trimmed after delivery: acknowledged too,
        # so they leave the pending list.
        await _execute(
            self._commands, "XACK", stream, CONSUMER_GROUP, *(entry_id for entry_id, _ in entries)
        )

    # -- helpers ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise BusError("bus is closed")


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel task and wait until it has finished.

    The cancellation is repeated because on Python < 3.12 `asyncio.wait_for`, which redis-py
    uses around socket writes, can swallow a cancellation that arrives as the write ends.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.05)
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _execute(client: Redis, *arguments: Any) -> Any:
    """Run one command on client (redis-py leaves `execute_command` untyped)."""
    return await client.execute_command(*arguments)  # type: ignore[no-untyped-call]


def _raw_reply(response: Any, **options: Any) -> Any:
    return response


def _parse_entries(raw: Iterable[Any]) -> list[tuple[bytes, bytes | None]]:
    """Return (id, payload) pairs from raw stream entries; payload None for deleted ones."""
    entries: list[tuple[bytes, bytes | None]] = []
    for entry_id, fields in raw:
        payload = None
        if fields:
            for index in range(0, len(fields) - 1, 2):
                if fields[index] == PAYLOAD_FIELD:
                    payload = bytes(fields[index + 1])
                    break
        entries.append((bytes(entry_id), payload))
    return entries


def _address_of(url: str) -> str:
    """Return url without its credentials, for log records and error messages."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path or url
    netloc = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{netloc}{parts.path}"
