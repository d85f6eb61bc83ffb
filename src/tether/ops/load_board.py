"""Gateway loads in Redis, so the admin dashboard of any process lists every live gateway.

Keys (PREFIX is "tether:", as for the presence keys):

- `PREFIX{load}`: sorted set of gateway ids, scored by when each one's last report expires
  (Unix ms).
- `PREFIX{load}:<gateway id>`: the gateway's latest `GatewayLoad` as JSON, expiring at the
  same time (PX).

Each gateway writes its report every few seconds, one pipelined round trip of SET, ZADD and a
ZREMRANGEBYSCORE that trims the ids whose reports lapsed. A gateway that stops removes its
entry; one that dies drops out when its report expires, because readers ask only for ids
scored after now. The `{load}` hash tag puts every key in one slot, so on a Redis Cluster one
node serves the writes, and a read is two round trips to that node whatever the number of
gateways.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisClusterException, RedisError

from tether.ops.gateway_load import GatewayLoad
from tether.protocol.errors import BusUnavailable

__all__ = ["MAX_GATEWAYS", "RedisLoadBoard"]

logger = logging.getLogger("tether.ops.load")

MAX_GATEWAYS = 1000
"""Maximum number of gateways one read returns; the overview sets `truncated` when more exist."""
# redis-py raises RedisClusterException, which is no RedisError, when its slot map is stale.
_REDIS_ERRORS = (RedisError, RedisClusterException)


class RedisLoadBoard:
    """The gateway loads in one Redis deployment: written by gateways, read by dashboards."""

    def __init__(
        self, url: str, *, cluster: bool = False, key_prefix: str = "tether:", timeout: float = 5.0
    ) -> None:
        """Prepare a board on url; with cluster, url names any node of a Redis Cluster."""
        self._url = url
        self._cluster = cluster
        self._timeout = timeout
        self._index_key = key_prefix + "{load}"
        self._redis: Any = None
        # Gateways whose invalid report was logged, so a dashboard polling every second
        # logs each one once; bounded like the reads.
        self._reported_invalid: set[bytes] = set()

    def _report_key(self, gateway_id: str) -> str:
        return f"{self._index_key}:{gateway_id}"

    async def start(self) -> None:
        """Create the client; redis-py connects on first use, so an outage fails requests only."""
        client_class = redis.RedisCluster if self._cluster else redis.Redis
        self._redis = client_class.from_url(self._url, socket_timeout=self._timeout)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def write(self, load: GatewayLoad, ttl: float) -> None:
        """Store load as its gateway's report for ttl seconds; raise BusUnavailable on failure."""
        now = _now_ms()
        ttl_ms = max(1, int(ttl * 1000))
        pipeline = self._redis.pipeline(transaction=False)
        pipeline.set(self._report_key(load.gateway_id), json.dumps(load.to_json()), px=ttl_ms)
        pipeline.zadd(self._index_key, {load.gateway_id: now + ttl_ms})
        pipeline.zremrangebyscore(self._index_key, "-inf", f"({now}")
        try:
            await pipeline.execute()
        except _REDIS_ERRORS as error:
            raise BusUnavailable(f"gateway load cannot be written: {error}") from error

    async def remove(self, gateway_id: str) -> None:
        """Delete a gateway's report; raise BusUnavailable on failure."""
        pipeline = self._redis.pipeline(transaction=False)
        pipeline.zrem(self._index_key, gateway_id)
        pipeline.delete(self._report_key(gateway_id))
        try:
            await pipeline.execute()
        except _REDIS_ERRORS as error:
            raise BusUnavailable(f"gateway load cannot be removed: {error}") from error

    async def read(self, limit: int = MAX_GATEWAYS) -> tuple[list[GatewayLoad], bool]:
        """Return the live reports sorted by gateway id, at most limit, and whether more exist.

        A report that is not valid JSON of a `GatewayLoad` is left out with a warning. Raises
        BusUnavailable when Redis fails.
        """
        try:
            ids: list[bytes] = await self._redis.zrangebyscore(
                self._index_key, _now_ms(), "+inf", start=0, num=limit + 1
            )
            truncated = len(ids) > limit
            ids = sorted(ids[:limit])
            pipeline = self._redis.pipeline(transaction=False)
            for gateway_id in ids:
                pipeline.get(self._report_key(gateway_id.decode()))
            reports: list[bytes | None] = await pipeline.execute() if ids else []
        except _REDIS_ERRORS as error:
            raise BusUnavailable(f"gateway loads cannot be read: {error}") from error

        loads = []
        for gateway_id, report in zip(ids, reports, strict=True):
            if report is None:
                continue  # expired between the two round trips
            try:
                loads.append(GatewayLoad.from_json(json.loads(report)))
            except ValueError as error:  # json.JSONDecodeError is a ValueError
                self._warn_invalid(gateway_id, error)
        return loads, truncated

    def _warn_invalid(self, gateway_id: bytes, error: ValueError) -> None:
        if gateway_id in self._reported_invalid or len(self._reported_invalid) >= MAX_GATEWAYS:
            return
        self._reported_invalid.add(gateway_id)
        logger.warning(
            "invalid load report of gateway %r left out of the dashboard: %s",
            gateway_id.decode(errors="replace"),
            error,
        )


def _now_ms() -> int:
    return int(time.time() * 1000)
