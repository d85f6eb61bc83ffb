"""Online counts of large groups in Redis (>= 7) or Valkey, for a cluster of gateways.

Keys (PREFIX is "tether:" by default):

- `PREFIX{gc}:online:<group>`: hash, user -> number of gateway runs that have the user online
  in the group. The group's online count is the number of fields (HLEN), so a user with
  devices on several gateways counts once.
- `PREFIX{gc}:run:<gateway>\\t<run>`: set of `<group>\\t<user>`, what one run of one gateway
  reported online, so its share can be withdrawn when it dies.
- `PREFIX{gc}-leases`: sorted set of `<gateway>\\t<run>`, scored by lease expiry (Unix ms).

One Lua script does everything atomically. Each call renews the gateway's lease and applies
its changes. A user reported online is added to the run's set and, if it was not there yet,
counted up in the group's hash. A user reported offline is removed from the set and counted
down, and its field is deleted at zero. So a report sent twice changes nothing the second
time. The script first
withdraws everything of every gateway run whose lease lapsed, so a gateway that dies drops
out of the counts when the next call of any gateway runs after its lease expired. A gateway
that starts again takes a new run id and withdraws its older runs at once. The script ends
by reading the counts the gateway asked for, so a gateway sends one command per count
interval. It touches keys it does not declare; the `{gc}` hash tag puts them all in one slot,
so on a Redis Cluster one primary serves the script and receives every count report.

Cost in Redis: one EVALSHA per gateway and interval, plus about two hash or set operations
per user that came online or went offline on that gateway in the interval, plus one HLEN per
group read. Memory: one hash field and one set member per online member of a large group
and gateway.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from tether.presence.group_counts import GroupCountStore, MemberChanges
from tether.protocol.errors import BusError, BusUnavailable

__all__ = ["RedisGroupCounts", "RedisGroupCountsConfig", "read_totals"]

logger = logging.getLogger("tether.presence.group_counts")

# Users named in one script call at most: a large report (a fresh start of a gateway with
# many members online) is split so that one call does not hold Redis for long.
_USERS_PER_CALL = 5000

# KEYS: leases sorted set.
# ARGV: key prefix, this reporter, its gateway name, now (Unix ms), lease expiry (Unix ms),
# mode ("update", "fresh" or "release"), the number R of groups to read, R group ids, then
# per changed group: group id, number N of users online, number F of users offline, N user
# ids, F user ids.
# Returns {0} when an update finds this reporter's lease gone (everything it reported was
# withdrawn, and nothing is applied), else {1, online count of each group read}.
_SCRIPT = """
local leases = KEYS[1]
local base = ARGV[1] .. "{gc}:"
local me, gateway = ARGV[2], ARGV[3]
local now, expiry, mode = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]

local function count_down(group, user)
  local online = base .. "online:" .. group
  if redis.call("HINCRBY", online, user, -1) <= 0 then
    redis.call("HDEL", online, user)
  end
end

local function withdraw(reporter)
  local own = base .. "run:" .. reporter
  for _, entry in ipairs(redis.call("SMEMBERS", own)) do
    local tab = string.find(entry, "\\t", 1, true)
    count_down(string.sub(entry, 1, tab - 1), string.sub(entry, tab + 1))
  end
  redis.call("DEL", own)
  redis.call("ZREM", leases, reporter)
end

for _, reporter in ipairs(redis.call("ZRANGEBYSCORE", leases, "-inf", "(" .. now)) do
  withdraw(reporter)
end
if mode == "release" then
  withdraw(me)
  return {1}
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
  return {0}
end

redis.call("ZADD", leases, expiry, me)
local own = base .. "run:" .. me
local reads = tonumber(ARGV[7])
local i = 8 + reads
while i <= #ARGV do
  local group, online, offline = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  i = i + 3
  for j = i, i + online - 1 do
    if redis.call("SADD", own, group .. "\\t" .. ARGV[j]) == 1 then
      redis.call("HINCRBY", base .. "online:" .. group, ARGV[j], 1)
    end
  end
  i = i + online
  for j = i, i + offline - 1 do
    if redis.call("SREM", own, group .. "\\t" .. ARGV[j]) == 1 then
      count_down(group, ARGV[j])
    end
  end
  i = i + offline
end

local result = {1}
for j = 8, 7 + reads do
  result[#result + 1] = redis.call("HLEN", base .. "online:" .. ARGV[j])
end
return result
"""


def _online_key(prefix: str, group_id: str) -> str:
    """Return the key of a group's hash of online users, user -> gateway runs."""
    return f"{prefix}{{gc}}:online:{group_id}"


async def read_totals(client: Any, prefix: str, group_ids: list[str]) -> dict[str, int]:
    """Return the cluster's online members of each group (0 if none is counted).

    One pipelined HLEN per group, all in the `{gc}` slot, so one round trip also on a Redis
    Cluster. client is a redis-py asyncio client. Raises BusUnavailable when Redis fails.
    """
    if not group_ids:
        return {}
    try:
        async with client.pipeline(transaction=False) as pipeline:
            for group_id in group_ids:
                pipeline.hlen(_online_key(prefix, group_id))
            values = await pipeline.execute()
    except RedisError as error:
        raise BusUnavailable(f"online counts cannot be read: {error}") from error
    return {group_id: int(value) for group_id, value in zip(group_ids, values, strict=True)}


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
    """Seconds a gateway's members stay in the counts after its last report (default 5). It
    must exceed the time between reports."""


class RedisGroupCounts(GroupCountStore):
    """One gateway's side of the online counts kept in Redis."""

    def __init__(self, config: RedisGroupCountsConfig, gateway_id: str) -> None:
        self.config = config
        self.gateway_id = gateway_id
        # A new id per run distinguishes this run's members from those of earlier runs.
        self.reporter = f"{gateway_id}\t{os.urandom(4).hex()}"
        self._redis: Any = None
        self._script: Any = None
        self._keys = [config.key_prefix + "{gc}-leases"]

    async def start(self) -> None:
        if self.config.cluster:
            self._redis = redis.RedisCluster.from_url(self.config.url, socket_timeout=5.0)
        else:
            self._redis = redis.Redis.from_url(self.config.url, socket_timeout=5.0)
        # The script object loads itself again after a Redis restart empties the script cache.
        self._script = self._redis.register_script(_SCRIPT)

    async def close(self) -> None:
        """Withdraw this gateway's members at once, rather than after its lease, and disconnect."""
        if self._redis is None:
            return
        try:
            await self._run("release", [], [])
        except BusError as error:
            logger.warning("online counts of %s not withdrawn: %s", self.reporter, error)
        await self._redis.aclose()
        self._redis = None

    async def exchange(
        self, changes: dict[str, MemberChanges], *, fresh: bool, read: list[str]
    ) -> dict[str, int] | None:
        mode = "fresh" if fresh else "update"
        calls = list(_split(changes)) or [[]]
        for index, call in enumerate(calls):
            # Only the first call may start afresh, and only the last one reads the counts.
            last = index == len(calls) - 1
            result = await self._run(mode if index == 0 else "update", call, read if last else [])
            if not result[0]:
                logger.info("online counts of %s were withdrawn; reporting again", self.reporter)
                return None
        return {group_id: int(count) for group_id, count in zip(read, result[1:], strict=True)}

    async def totals(self, group_ids: list[str]) -> dict[str, int]:
        return await read_totals(self._redis, self.config.key_prefix, group_ids)

    async def _run(self, mode: str, changes: list[object], read: list[str]) -> list[int]:
        now = int(time.time() * 1000)
        expiry = now + int(self.config.lease_timeout * 1000)
        args: list[object] = [
            self.config.key_prefix, self.reporter, self.gateway_id, now, expiry, mode, len(read),
        ]  # fmt: skip
        args += read
        args += changes
        try:
            result: list[int] = await self._script(keys=self._keys, args=args)
        except RedisError as error:
            raise BusError(f"online counts cannot be exchanged: {error}") from error
        return result


def _split(changes: dict[str, MemberChanges]) -> Iterator[list[object]]:
    """Yield the script arguments of changes, in calls of about _USERS_PER_CALL users."""
    call: list[object] = []
    users = 0
    for group_id, change in changes.items():
        online, offline = sorted(change.online), sorted(change.offline)
        # A group with more users than fit is cut into parts; each part is a group entry.
        while online or offline:
            room = _USERS_PER_CALL - users
            part_online, online = online[:room], online[room:]
            room -= len(part_online)
            part_offline, offline = offline[:room], offline[room:]
            call += [group_id, len(part_online), len(part_offline), *part_online, *part_offline]
            users += len(part_online) + len(part_offline)
            if users >= _USERS_PER_CALL:
                yield call
                call, users = [], 0
    if call:
        yield call
