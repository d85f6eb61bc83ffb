"""Measure what online counts of large groups cost Redis, per count interval.

    .venv/bin/python bench/group_counts.py --gateways 3 --members 10000 --churn 200

Starts a private Redis server (the binary that `tether cluster` uses) and plays the count
reports of `--gateways` gateways with the store the gateways use (`RedisGroupCounts`). The
members of one group are spread over the gateways, and `--shared` of them are online on two
gateways at once, as a user with a phone and a laptop would be. In each simulated count
interval, every gateway makes its one call: it reports `--churn` / `--gateways` members going
offline and those that went offline in the interval before coming back, and reads the group's
count. No real interval passes between rounds; the figures are per call. Prints one JSON
line with the commands Redis ran per call: the EVALSHA the gateway sends and the commands the
script runs. It also gives the Redis CPU time per call and per change (INFO commandstats),
the Redis memory per online member and gateway, and whether the count came out right, with
each user once, the shared ones too.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

import redis.asyncio as redis
import uvloop

from tether.local_redis import RedisServer
from tether.presence.group_counts import MemberChanges
from tether.presence.redis_group_counts import RedisGroupCounts, RedisGroupCountsConfig


async def measure(
    gateways: int, members: int, shared: int, churn: int, intervals: int
) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory))
        server.start()
        try:
            return await _measure(server.url, gateways, members, shared, churn, intervals)
        finally:
            server.stop()


async def _measure(
    url: str, gateways: int, members: int, shared: int, churn: int, intervals: int
) -> dict[str, object]:
    config = RedisGroupCountsConfig(url=url, lease_timeout=60.0)
    stores = [RedisGroupCounts(config, f"gw{index}") for index in range(gateways)]
    users = [f"user{index}" for index in range(members)]
    # User n is online on gateway n modulo gateways; the first `shared` also on the next one.
    online: list[set[str]] = [set(users[index::gateways]) for index in range(gateways)]
    for index, user in enumerate(users[:shared]):
        online[(index + 1) % gateways].add(user)
    probe = redis.Redis.from_url(url)
    for store in stores:
        await store.start()
    try:
        memory_before = (await probe.info("memory"))["used_memory"]
        for store, users_here in zip(stores, online, strict=True):
            await store.exchange(
                {"big": MemberChanges(online=frozenset(users_here))}, fresh=True, read=[]
            )
        memory = (await probe.info("memory"))["used_memory"] - memory_before

        await probe.config_resetstat()
        rng = random.Random(1)
        away: list[frozenset[str]] = [frozenset() for _ in stores]  # offline since the last round
        count = 0
        for _ in range(intervals):
            for index, store in enumerate(stores):
                leaving = frozenset(
                    rng.sample(sorted(online[index] - away[index]), churn // gateways)
                )
                change = MemberChanges(online=away[index], offline=leaving)
                totals = await store.exchange({"big": change}, fresh=False, read=["big"])
                assert totals is not None
                away[index] = leaving
        for index, store in enumerate(stores):  # everyone back, for the check of the count
            totals = await store.exchange(
                {"big": MemberChanges(online=away[index])}, fresh=False, read=["big"]
            )
            assert totals is not None
            count = totals["big"]
        stats = await probe.info("commandstats")
    finally:
        for store in stores:
            await store.close()
        await probe.aclose()

    calls = {
        name.removeprefix("cmdstat_"): value
        for name, value in stats.items()
        if name != "cmdstat_config|resetstat"
    }
    script = calls.get("evalsha", {"calls": 0, "usec": 0})
    rounds = intervals * gateways + gateways
    changes = 2 * (churn // gateways)
    return {
        "gateways": gateways,
        "members": members,
        "shared": shared,
        "changes_per_call": changes,
        "commands_per_call": {
            name: round(value["calls"] / rounds, 2) for name, value in calls.items()
        },
        "script_usec_per_call": round(script["usec"] / max(script["calls"], 1), 1),
        "script_usec_per_change": (
            round(script["usec"] / (rounds * changes), 2) if changes else None
        ),
        "redis_bytes_per_online_member": round(memory / (members + shared)),
        "count": count,
        "count_right": count == members,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateways", type=int, default=3)
    parser.add_argument("--members", type=int, default=10_000, help="members online")
    parser.add_argument("--shared", type=int, default=1000, help="members on two gateways")
    parser.add_argument("--churn", type=int, default=200, help="members leaving per interval")
    parser.add_argument("--intervals", type=int, default=50)
    arguments = parser.parse_args()
    if 2 * (arguments.churn // arguments.gateways) > arguments.members // arguments.gateways:
        parser.error("--churn may be at most half of --members: each round needs new leavers")
    result = uvloop.run(
        measure(
            arguments.gateways,
            arguments.members,
            arguments.shared,
            arguments.churn,
            arguments.intervals,
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
