"""Online counts of large groups in Redis (>= 7) or Valkey, for a cluster of gateways.

Keys (PREFIX is "tether:" by default):

- `PREFIX {gc}`: hash, group -> online members across the cluster (the total).
- `PREFIX {gc}:<gateway>\\t<run>`: hash, group -> online members on one run of one gateway.
- `PREFIX {gc}-leases`: sorted set of `<gateway>\\t<run>`, scored by lease expiry (Unix ms).

One Lua script does everything atomically. Each report renews the gateway's lease, moves the
total of every group it names by the difference between the new number and the gateway's
previous one, and first withdraws the numbers of every gateway whose lease lapsed. So a
gateway that dies drops out of the totals when the next report of any gateway runs after its
lease expired. A gateway that starts again takes a new run id and withdraws its older runs at
once. The script also touches the per-run hashes, which it does not declare. The `{gc}` hash
tag puts all these keys in one slot, so on a Redis Cluster one primary serves the script.
That primary therefore receives every count report of the cluster.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from tether.presence.group_counts import GroupCountStore
from tether.protocol.errors import BusError, BusUnavailable

__all__ = ["RedisGroupCounts", "RedisGroupCountsConfig", "read_totals"]

logger = logging.getLogger("tether.presence.group_counts")

# KEYS: totals hash, leases sorted set.
# ARGV: key prefix, this reporter, its gateway name, now (Unix ms), lease expiry (Unix ms),
# mode ("update", "fresh" or "release"), then pairs of group id and local count.
# Returns 0 when an update finds this reporter's lease gone (its numbers were withdrawn), else 1.
_SCRIPT = """
local totals, leases = KEYS[1], KEYS[2]
local prefix, me, gateway = ARGV[1], ARGV[2], ARGV[3]
local now, expiry, mode = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]

local function withdraw(reporter)
  local own = prefix .. "{gc}:" .. reporter
  local counts = redis.call("HGETALL", own)
  for i = 1, #counts, 2 do
    if redis.call("HINCRBY", totals, counts[i], -tonumber(counts[i + 1])) <= 0 then
      redis.call("HDEL", totals, counts[i])
    end
  end
  redis.call("DEL", own)
  redis.call("ZREM", leases, reporter)
end

for _, reporter in ipairs(redis.call("ZRANGEBYSCORE", leases, "-inf", "(" .. now)) do
  withdraw(reporter)
end
if mode == "release" then
  withdraw(me)
  return 1
end
if mode == "fresh" then
  local runs = gateway .. "\\t"
  for _, reporter in ipairs(redis.call("ZRANGE", leases, 0, -1)) do
    if string.sub(reporter, 1, #runs) == runs then
      withdraw(reporter)
    end
  end
  withdraw(me)
elseif not redis.call("ZSCORE", leases, me) then
  return 0
end

redis.call("ZADD", leases, expiry, me)
local own = prefix .. "{gc}:" .. me
for i = 7, #ARGV, 2 do
  local group, count = ARGV[i], tonumber(ARGV[i + 1])
  local old = tonumber(redis.call("HGET", own, group) or "0")
  if count ~= old then
    if redis.call("HINCRBY", totals, group, count - old) <= 0 then
      redis.call("HDEL", totals, group)
    end
    if count == 0 then
      redis.call("HDEL", own, group)
    else
      redis.call("HSET", own, group, count)
    end
  end
end
return 1
"""


def _totals_key(prefix: str) -> str:
    """Return the key of the hash of cluster totals: group -> online members."""
    return prefix + "{gc}"


async def read_totals(client: Any, prefix: str, group_ids: list[str]) -> dict[str, int]:
    """Return the cluster's online members of each group (0 if none is counted), in one HMGET.

    client is a redis-py asyncio client. Raises BusUnavailable when Redis fails.
    """
    if not group_ids:
        return {}
    try:
        values = await client.hmget(_totals_key(prefix), group_ids)
    except RedisError as error:
        raise BusUnavailable(f"online counts cannot be read: {error}") from error
    return {
        group_id: int(value) if value is not None else 0
        for group_id, value in zip(group_ids, values, strict=True)
    }


@dataclass(frozen=True, kw_only=True, slots=True)
class RedisGroupCountsConfig:
    """Settings of the online counts in Redis."""

    url: str
    """Redis URL, for example redis://127.0.0.1:6379/0."""
    key_prefix: str = "tether:"
    """Prefix of every key (default "tether:")."""
    cluster: bool = False
    """Whether url names a node of a Redis Cluster (default false)."""
    lease_timeout: float = 5.0
    """Seconds a gateway's numbers stay in the totals after its last report (default 5). It
    must exceed the time between reports."""


class RedisGroupCounts(GroupCountStore):
    """One gateway's side of the online counts kept in Redis."""

    def __init__(self, config: RedisGroupCountsConfig, gateway_id: str) -> None:
        self.config = config
        self.gateway_id = gateway_id
        # A new id per run distinguishes this run's numbers from those of earlier runs.
        self.reporter = f"{gateway_id}\t{os.urandom(4).hex()}"
        self._redis: Any = None
        self._script: Any = None
        prefix = config.key_prefix
        self._keys = [_totals_key(prefix), prefix + "{gc}-leases"]

    async def start(self) -> None:
        if self.config.cluster:
            self._redis = redis.RedisCluster.from_url(self.config.url, socket_timeout=5.0)
        else:
            self._redis = redis.Redis.from_url(self.config.url, socket_timeout=5.0)
        # The script object loads itself again after a Redis restart empties the script cache.
        self._script = self._redis.register_script(_SCRIPT)

    async def close(self) -> None:
        """Withdraw this gateway's numbers at once, rather than after its lease, and disconnect."""
        if self._redis is None:
            return
        try:
            await self._run("release", {})
        except BusError as error:
            logger.warning("online counts of %s not withdrawn: %s", self.reporter, error)
        await self._redis.aclose()
        self._redis = None

    async def report(self, counts: dict[str, int], *, fresh: bool) -> bool:
        return await self._run("fresh" if fresh else "update", counts)

    async def totals(self, group_ids: list[str]) -> dict[str, int]:
        return await read_totals(self._redis, self.config.key_prefix, group_ids)

    async def _run(self, mode: str, counts: dict[str, int]) -> bool:
        now = int(time.time() * 1000)
        expiry = now + int(self.config.lease_timeout * 1000)
        args: list[object] = [
            self.config.key_prefix, self.reporter, self.gateway_id, now, expiry, mode,
        ]  # fmt: skip
        for group_id, count in counts.items():
            args += (group_id, count)
        try:
            kept = await self._script(keys=self._keys, args=args)
        except RedisError as error:
            raise BusError(f"online counts cannot be reported: {error}") from error
        if not kept:
            logger.info("online counts of %s were withdrawn; reporting them again", self.reporter)
        return bool(kept)
