"""The stream consumer of `RedisBus`, and helpers that the bus's tasks share.

A `StreamConsumer` reads streams as a consumer of the group `tether`: each entry goes to one
consumer of the group and stays pending until that consumer acknowledges it (XACK) after its
handler returned. `RedisBus.consume` runs one `consume` task per stream.

The XACK of a batch goes out in one pipeline with the next blocking XREADGROUP, one round trip
instead of two. Redis runs the XACK as soon as it arrives, before the read blocks, so an entry
is acknowledged as early as with a separate XACK: after its handler returned, and never before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis, RedisCluster
from redis.exceptions import ClusterError, RedisClusterException, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tether.bus.base import BusCounters, StreamHandler

if TYPE_CHECKING:
    from tether.bus.redis import RedisBusConfig

__all__ = [
    "CONSUMER_GROUP",
    "LINK_ERRORS",
    "PAYLOAD_FIELD",
    "RedisClient",
    "StreamConsumer",
    "execute",
    "parse_entries",
    "raw_reply",
]

logger = logging.getLogger("tether.bus.redis")

# Consumer group that every tether process reading a stream joins.
CONSUMER_GROUP = "tether"
# Field of a stream entry that contains the payload.
PAYLOAD_FIELD = b"p"
# Failures of the link to the server, as opposed to errors the server replied with. On a
# cluster, CLUSTERDOWN replies (ClusterError) and a slot missing from redis-py's slot map
# (RedisClusterException) are outages too.
LINK_ERRORS = (
    RedisConnectionError, RedisTimeoutError, OSError, TimeoutError, ClusterError,
    RedisClusterException,
)  # fmt: skip
# A command client: one server, or a cluster whose keys redis-py routes by hash slot.
RedisClient = Redis | RedisCluster


class StreamConsumer:
    """Reads streams for `RedisBus`, with the bus's clients and its `ready` event."""

    def __init__(
        self,
        config: RedisBusConfig,
        commands: RedisClient,
        blocking: RedisClient,
        up: asyncio.Event,
        counters: BusCounters,
    ) -> None:
        self.config = config
        self.counters = counters
        self._commands = commands
        self._blocking = blocking  # its read timeout leaves room for XREADGROUP BLOCK
        self._up = up

    async def consume(self, stream: str, handler: StreamHandler) -> None:
        """Hand stream's entries to handler until cancelled (see RedisBus.consume)."""
        config = self.config
        loop = asyncio.get_running_loop()
        group_exists = False
        pending_from: bytes | None = b"0"  # own pending entries first, then new ones
        next_claim = loop.time()
        claim_cursor = b"0-0"
        # Ids of handled entries not acknowledged yet. After a link error they stay here, so
        # that they are acknowledged before the pending entries are read again.
        acks: list[bytes] = []
        while True:
            try:
                await self._up.wait()
                if not group_exists:
                    await self._create_group(stream)
                    group_exists = True

                if loop.time() >= next_claim:
                    await self._acknowledge(stream, acks)
                    claim_cursor, entries = await self._claim(stream, claim_cursor)
                    if claim_cursor == b"0-0":
                        next_claim = loop.time() + config.claim_interval
                    if entries:
                        await self._handle(stream, handler, entries, acks)
                    continue

                if pending_from is not None:
                    await self._acknowledge(stream, acks)
                    entries = await self._read_group(stream, pending_from, block=False)
                    if not entries:
                        pending_from = None
                        continue
                    pending_from = entries[-1][0]
                else:
                    entries = await self._read_group(stream, b">", block=True, acks=acks)
                if entries:
                    await self._handle(stream, handler, entries, acks)

            except LINK_ERRORS as exc:
                # Before ResponseError, because a CLUSTERDOWN reply is one too.
                # A reply lost in transit left its entries pending for this consumer: reread.
                pending_from = b"0"
                self.counters.read_errors += 1
                logger.warning("reading stream %s failed, will retry: %s", stream, exc)
                await asyncio.sleep(config.reconnect_delay_min)
            except ResponseError as exc:
                # Redis rejected a command, so sending the same XACK again would not help. The
                # entries it left pending are claimed and handled again after `claim_idle`.
                acks.clear()
                if str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                    # The stream or group vanished, for example after a server restart
                    # without persistence, or FLUSHALL, which ends a blocked read with
                    # UNBLOCKED: create it again and start from the beginning.
                    logger.warning("stream %s lost its consumer group, recreating it", stream)
                    group_exists = False
                    pending_from = b"0"
                    continue
                self.counters.read_errors += 1
                logger.error("reading stream %s failed: %s", stream, exc)
                await asyncio.sleep(config.reconnect_delay_max)

    async def _create_group(self, stream: str) -> None:
        """Create the group at the stream's first entry, so no entry appended earlier is missed."""
        try:
            await execute(
                self._commands, "XGROUP", "CREATE", stream, CONSUMER_GROUP, "0", "MKSTREAM"
            )
        except ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise

    async def _read_group(
        self, stream: str, start: bytes, *, block: bool, acks: list[bytes] | None = None
    ) -> list[tuple[bytes, bytes | None]]:
        """Read entries. With acks, acknowledge those ids first in the same round trip."""
        config = self.config
        arguments: list[Any] = ["GROUP", CONSUMER_GROUP, config.consumer_name]
        arguments += ["COUNT", config.batch_size]
        client = self._commands
        if block:
            arguments += ["BLOCK", config.block_ms]
            client = self._blocking
        read = ("XREADGROUP", *arguments, "STREAMS", stream, start)
        if not acks:
            reply = await execute(client, *read)
        else:
            pipeline = client.pipeline(transaction=False)
            pipeline.execute_command("XACK", stream, CONSUMER_GROUP, *acks)
            pipeline.execute_command(*read)
            try:
                ack_reply, reply = await pipeline.execute(raise_on_error=False)
            finally:
                await pipeline.reset()  # type: ignore[no-untyped-call]
            if isinstance(reply, Exception):
                raise reply
            acks.clear()
            if isinstance(ack_reply, Exception):
                # The read delivered its entries anyway, so they are handled. The entries this
                # XACK left pending are claimed and handled again after `claim_idle`.
                logger.error("acknowledging entries of stream %s failed: %s", stream, ack_reply)
        if not reply:
            return []
        return parse_entries(reply[0][1])

    async def _claim(
        self, stream: str, cursor: bytes
    ) -> tuple[bytes, list[tuple[bytes, bytes | None]]]:
        """Claim a batch of entries idle for `claim_idle`; return the next cursor and them."""
        config = self.config
        reply = await execute(
            self._commands,
            "XAUTOCLAIM", stream, CONSUMER_GROUP, config.consumer_name,
            int(config.claim_idle * 1000), cursor, "COUNT", config.batch_size,
        )  # fmt: skip
        entries = parse_entries(reply[1])
        if entries:
            logger.warning(
                "claimed %d entries of stream %s idle for over %.1f s",
                len(entries), stream, config.claim_idle,
            )  # fmt: skip
        return bytes(reply[0]), entries

    async def _handle(
        self,
        stream: str,
        handler: StreamHandler,
        entries: list[tuple[bytes, bytes | None]],
        acks: list[bytes],
    ) -> None:
        """Call handler with the payloads, then add every entry of the batch to acks."""
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
        acks.extend(entry_id for entry_id, _ in entries)

    async def _acknowledge(self, stream: str, acks: list[bytes]) -> None:
        """Acknowledge the ids in acks in a round trip of their own, then empty the list."""
        if acks:
            await execute(self._commands, "XACK", stream, CONSUMER_GROUP, *acks)
            acks.clear()


async def execute(client: RedisClient, *arguments: Any) -> Any:
    """Run one command on client (redis-py leaves `execute_command` untyped on Redis)."""
    return await client.execute_command(*arguments)  # type: ignore[no-untyped-call,unused-ignore]


def raw_reply(response: Any, **options: Any) -> Any:
    """Return a reply unparsed (a redis-py response callback)."""
    return response


def parse_entries(raw: Iterable[Any]) -> list[tuple[bytes, bytes | None]]:
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
