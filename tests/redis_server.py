"""The throwaway Redis-protocol servers the tests start (the ones `tether cluster` uses), and
helpers that look at them the same way whether they are one server or a Redis Cluster.

Tests that take the `redis_kind` fixture (conftest.py) run once against a standalone server
and once against a three-primary Redis Cluster.
"""

from __future__ import annotations

from pathlib import Path

import redis
import redis.asyncio

from tether.local_redis import (
    BINARY_ENV,
    LocalRedisCluster,
    RedisServer,
    find_server_binary,
    free_port,
)

__all__ = [
    "BINARY_ENV",
    "REDIS_KINDS",
    "LocalRedisCluster",
    "RedisServer",
    "RedisUnderTest",
    "find_server_binary",
    "flush",
    "free_port",
    "inspector",
    "new_redis",
    "subscriber_counts",
]

REDIS_KINDS = ["standalone", "cluster"]
RedisUnderTest = RedisServer | LocalRedisCluster


def new_redis(kind: str, directory: Path) -> RedisUnderTest:
    """Return a stopped server of kind "standalone" or "cluster" (three primaries)."""
    if kind == "cluster":
        return LocalRedisCluster(directory)
    return RedisServer(directory)


def inspector(server: RedisUnderTest) -> redis.asyncio.Redis | redis.asyncio.RedisCluster:
    """Return a plain redis-py client of server, for looking at its state."""
    if server.cluster:
        return redis.asyncio.RedisCluster.from_url(server.url)
    return redis.asyncio.Redis.from_url(server.url)


def _nodes(server: RedisUnderTest) -> list[RedisServer]:
    return server.nodes if isinstance(server, LocalRedisCluster) else [server]


def flush(server: RedisUnderTest) -> None:
    """Delete every key on every node (FLUSHALL)."""
    for node in _nodes(server):
        with redis.Redis(port=node.port) as client:
            client.flushall()


def subscriber_counts(server: RedisUnderTest, *channels: str) -> list[int]:
    """Return how many connections subscribe to each channel.

    On a cluster the channels are shard channels, so each is counted with PUBSUB SHARDNUMSUB
    on the node that serves its slot.
    """
    counts = []
    for channel in channels:
        if isinstance(server, LocalRedisCluster):
            with redis.Redis(port=server.nodes[0].port) as client:
                slot = int(client.execute_command("CLUSTER", "KEYSLOT", channel))
            with redis.Redis(port=server.node_of_slot(slot).port) as client:
                reply = client.execute_command("PUBSUB", "SHARDNUMSUB", channel)
        else:
            with redis.Redis(port=server.port) as client:
                reply = client.execute_command("PUBSUB", "NUMSUB", channel)
        counts.append(int(reply[1]))  # the reply is [channel, count]
    return counts
