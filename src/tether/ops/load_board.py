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

A read lists the first MAX_GATEWAYS live gateways by id. It leaves out, with one warning each,
what no gateway of this version wrote: an id that is not UTF-8, a key that contains no string,
and a report that is not a valid sample of the gateway it is filed under.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisClusterException, RedisError

from tether.ops.gateway_load import GatewayLoad
from tether.ops.json_input import decode_json
from tether.protocol.errors import BusUnavailable

__all__ = ["DEFAULT_TIMEOUT", "MAX_GATEWAYS", "MAX_INDEX_READ", "RedisLoadBoard"]

logger = logging.getLogger("tether.ops.load")

MAX_GATEWAYS = 1000
"""Maximum number of gateways one read returns; the overview sets `truncated` when more exist."""
MAX_INDEX_READ = 10 * MAX_GATEWAYS
"""Ids one read takes from the index at most, so that it lists the first MAX_GATEWAYS live
gateways by id. NOTE: with more live gateways than this, the ids come from the ones whose
reports expire first, and the first MAX_GATEWAYS of those are listed."""
DEFAULT_TIMEOUT = 5.0
"""Seconds a read or write waits for Redis before it fails as unavailable."""
# redis-py raises RedisClusterException, which is no RedisError, when its slot map is stale.
_REDIS_ERRORS = (RedisError, RedisClusterException)


class RedisLoadBoard:
    """The gateway loads in one Redis deployment: written by gateways, read by dashboards."""

    def __init__(
        self,
        url: str,
        *,
        cluster: bool = False,
        key_prefix: str = "tether:",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """Prepare a board on url; with cluster, url names any node of a Redis Cluster."""
        self._url = url
        self._cluster = cluster
        self._timeout = timeout
        self._index_key = key_prefix + "{load}"
        self._redis: Any = None
        # Gateways whose invalid report was logged, so a dashboard polling every second
        # logs each one once; bounded like the reads.
        self._reported_invalid: set[str] = set()

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

        A report that is not valid JSON of a `GatewayLoad` under its own gateway's id is left
        out with a warning, as is an id that is not UTF-8 or a key that contains no string.
        Raises BusUnavailable when Redis fails.
        """
        try:
            members: list[bytes] = await self._redis.zrangebyscore(
                self._index_key, _now_ms(), "+inf", start=0, num=MAX_INDEX_READ
            )
        except _REDIS_ERRORS as error:
            raise BusUnavailable(f"gateway loads cannot be read: {error}") from error
        ids = []
        for member in members:
            try:
                ids.append(member.decode())
            except UnicodeDecodeError:
                self._warn_invalid(member.decode(errors="replace"), "its id is not UTF-8")
        ids.sort()  # code point order, which is the byte order of UTF-8
        truncated = len(ids) > limit
        ids = ids[:limit]

        pipeline = self._redis.pipeline(transaction=False)
        for gateway_id in ids:
            pipeline.get(self._report_key(gateway_id))
        try:
            # A key of another type makes Redis return a WRONGTYPE error in its place.
            reports: list[object] = await pipeline.execute(raise_on_error=False) if ids else []
        except _REDIS_ERRORS as error:
            raise BusUnavailable(f"gateway loads cannot be read: {error}") from error

        loads = []
        for gateway_id, report in zip(ids, reports, strict=True):
            if report is None:
                continue  # expired between the two round trips
            if not isinstance(report, bytes):
                self._warn_invalid(gateway_id, f"its key cannot be read: {report}")
                continue
            try:
                load = GatewayLoad.from_json(decode_json(report))
            except ValueError as error:  # JsonInputError is a ValueError
                self._warn_invalid(gateway_id, str(error))
                continue
            if load.gateway_id != gateway_id:
                self._warn_invalid(gateway_id, f"it names gateway {load.gateway_id!r}")
                continue
            loads.append(load)
        return loads, truncated

    def _warn_invalid(self, gateway_id: str, problem: str) -> None:
        if gateway_id in self._reported_invalid or len(self._reported_invalid) >= MAX_GATEWAYS:
            return
        self._reported_invalid.add(gateway_id)
        logger.warning(
            "invalid load report of gateway %r left out of the dashboard: %s", gateway_id, problem
        )


def _now_ms() -> int:
    return int(time.time() * 1000)
