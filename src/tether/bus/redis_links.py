"""Subscriber connections of `RedisBus`, and the slot map of a Redis Cluster.

A `SubscriberLink` is one connection in subscribed mode and the state of the channels routed
to it. A standalone server gets one link, which uses SUBSCRIBE and UNSUBSCRIBE. A Redis Cluster
gets one link per primary, which uses sharded pub/sub (SSUBSCRIBE and SUNSUBSCRIBE, Redis >= 7.0):
a shard channel lives in the hash slot of its name, like a key, and only the primary that
serves that slot delivers its messages. `load_slot_owners` reads which primary serves each
slot (CLUSTER SLOTS).
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import ClusterDownError, ResponseError

from tether.protocol.errors import BusError

__all__ = [
    "REDIS_CLUSTER_HASH_SLOTS",
    "SUBSCRIBE_BATCH",
    "SubscriberLink",
    "load_slot_owners",
    "slot_of",
]

# Channels per (S)SUBSCRIBE or (S)UNSUBSCRIBE command, so one command stays a few hundred KB.
SUBSCRIBE_BATCH = 1024


def slot_of(channel: bytes) -> int:
    """Return the hash slot of a channel or key name (CRC16 of its hash tag, mod 16384)."""
    return key_slot(channel)


class SubscriberLink:
    """One connection in subscribed mode to one server, and its channels' state.

    `routed` contains the channels the bus routes to this server, `on_server` the ones this link
    has sent (S)SUBSCRIBE for, and `dirty` the channels whose two states may differ.
    `unconfirmed` counts the (un)subscriptions sent and not yet confirmed by the server.
    """

    __slots__ = (
        "address",
        "connection",
        "dirty",
        "on_server",
        "pending_unsubscribes",
        "pong_deadline",
        "routed",
        "sharded",
        "unconfirmed",
        "wakeup",
    )

    def __init__(self, address: str, connection: AbstractConnection, *, sharded: bool) -> None:
        self.address = address
        self.connection = connection
        self.sharded = sharded
        self.routed: set[bytes] = set()
        self.on_server: set[bytes] = set()
        self.dirty: set[bytes] = set()
        self.unconfirmed = 0
        # Unsubscriptions sent per channel and not yet confirmed. A (S)UNSUBSCRIBE reply for a
        # channel not counted here is the server dropping the channel on its own, which a
        # cluster node does when the channel's slot moves to another node.
        self.pending_unsubscribes: Counter[bytes] = Counter()
        self.pong_deadline: float | None = None
        self.wakeup = asyncio.Event()  # wakes the link's sender task

    @property
    def settled(self) -> bool:
        """Whether every channel is in the state the bus wants and the server confirmed it."""
        return not self.dirty and self.unconfirmed <= 0

    def mark(self, channel: bytes, subscribed: bool) -> None:
        """Record whether channel should be subscribed here; the sender task does the rest."""
        if subscribed:
            self.routed.add(channel)
        else:
            self.routed.discard(channel)
        self.dirty.add(channel)
        self.wakeup.set()

    def take_commands(self) -> list[tuple[bytes, ...]]:
        """Turn the dirty channels into (S)SUBSCRIBE and (S)UNSUBSCRIBE commands, in batches.

        A sharded command may name channels of one hash slot only (else the server replies
        CROSSSLOT), so sharded commands are grouped by slot first.
        """
        subscribe: list[bytes] = []
        unsubscribe: list[bytes] = []
        for channel in self.dirty:
            requested = channel in self.routed
            if requested and channel not in self.on_server:
                subscribe.append(channel)
                self.on_server.add(channel)
            elif not requested and channel in self.on_server:
                unsubscribe.append(channel)
                self.on_server.discard(channel)
                self.pending_unsubscribes[channel] += 1
        self.dirty.clear()
        self.unconfirmed += len(subscribe) + len(unsubscribe)

        if self.sharded:
            verbs = (b"SSUBSCRIBE", b"SUNSUBSCRIBE")
            groups = (_by_slot(subscribe), _by_slot(unsubscribe))
        else:
            verbs = (b"SUBSCRIBE", b"UNSUBSCRIBE")
            groups = ([subscribe], [unsubscribe])
        commands: list[tuple[bytes, ...]] = []
        for verb, names_per_group in zip(verbs, groups, strict=True):
            for names in names_per_group:
                for start in range(0, len(names), SUBSCRIBE_BATCH):
                    commands.append((verb, *names[start : start + SUBSCRIBE_BATCH]))
        return commands

    def confirm_unsubscribe(self, channel: bytes) -> bool:
        """Count a (S)UNSUBSCRIBE reply; return False if this link had not asked for it."""
        pending = self.pending_unsubscribes.get(channel, 0)
        if pending == 0:
            self.on_server.discard(channel)
            return False
        if pending == 1:
            del self.pending_unsubscribes[channel]
        else:
            self.pending_unsubscribes[channel] = pending - 1
        self.unconfirmed -= 1
        return True


def _by_slot(channels: Iterable[bytes]) -> list[list[bytes]]:
    groups: defaultdict[int, list[bytes]] = defaultdict(list)
    for channel in channels:
        groups[key_slot(channel)].append(channel)
    return list(groups.values())


async def load_slot_owners(connection: AbstractConnection, default_host: str) -> list[str]:
    """Return the "host:port" of the primary serving each hash slot, from CLUSTER SLOTS.

    Raises BusError if the server is not a cluster node, and ClusterDownError if some slot
    has no primary (the cluster is not ready or lost a node without a replica).
    """
    await connection.send_command("CLUSTER", "SLOTS")
    try:
        reply: Sequence[Any] = await connection.read_response()
    except ResponseError as error:
        if "cluster support disabled" in str(error):
            raise BusError(
                f"{default_host} is a standalone Redis server, not a Redis Cluster node; "
                "connect without the cluster option"
            ) from error
        raise

    owners: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
    for entry in reply:
        first, last, primary = int(entry[0]), int(entry[1]), entry[2]
        # Per the CLUSTER SLOTS documentation, a NULL endpoint means "the host this request
        # went to". An empty one (a node that does not know its IP yet) and "?" (a node with
        # a misconfigured hostname) fall back to that host too.
        host = "" if primary[0] is None else _text(primary[0])
        if host in ("", "?"):
            host = default_host
        address = f"{host}:{int(primary[1])}"
        owners[first : last + 1] = [address] * (last - first + 1)
    missing = owners.count(None)
    if missing:
        raise ClusterDownError(
            f"{missing} of {REDIS_CLUSTER_HASH_SLOTS} hash slots have no primary"
        )
    return [owner for owner in owners if owner is not None]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
