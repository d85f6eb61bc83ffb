"""Groups in a real cluster: one group spread over three gateway processes joined by Redis.

A swarm process (`tether.bench.swarm`) keeps the connections of most members, spread over the
gateways. Several
senders send at the same time while SDK members drop their connections and come back. Every
member must get each sender's messages once and in the sender's order: the swarm members
live, the SDK members live or by catching up after each reconnect. The full-size run, 10,000
members, is a benchmark (docs/groups.md has the command); this one is sized for CI.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as redis
from conftest import TIMEOUT, next_of
from redis_server import RedisUnderTest
from test_cluster import SECRET, Cluster, connect, on_both

from tether.client import Client
from tether.client import events as ev

SWARM_MEMBERS = 600
CHURNERS = 24
SENDERS = 3
MESSAGES = 40  # per sender
SEND_INTERVAL = 0.03  # seconds between one sender's messages
LEASE = 1.5


class SwarmProcess:
    """A swarm child process and the last report line it printed."""

    def __init__(self, urls: list[str], users: int) -> None:
        command = [sys.executable, "-m", "tether.bench.swarm", "--urls", ",".join(urls),
                   "--secret", SECRET, "--users", str(users), "--duration", "60",
                   "--connect-rate", "1000", "--spread"]  # fmt: skip
        self.popen = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        self.last: dict[str, object] = {}

    async def until(
        self, condition: str, predicate: Callable[[dict[str, object]], bool], timeout: float
    ) -> dict[str, object]:
        """Read report lines until predicate(report) holds; fail after timeout seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        assert self.popen.stdout is not None
        while True:
            line = await asyncio.wait_for(
                loop.run_in_executor(None, self.popen.stdout.readline),
                max(deadline - loop.time(), 0.1),
            )
            assert line, f"the swarm exited before {condition}: {self.last}"
            self.last = json.loads(line)
            if predicate(self.last):
                return self.last

    async def finish(self) -> dict[str, object]:
        self.popen.terminate()
        return await self.until("its final report", lambda report: bool(report.get("final")), 10)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()


@pytest.fixture
def cluster(tmp_path: Path, redis_server: RedisUnderTest) -> Iterator[Cluster]:
    running = Cluster(tmp_path / "data", redis_server, lease=LEASE)
    yield running
    running.stop()


def check_streams(messages: list[ev.Message], senders: list[str], skip: str = "") -> None:
    """Assert that messages hold each sender's stream once, complete and in order."""
    by_sender: dict[str, list[int]] = {sender: [] for sender in senders if sender != skip}
    for message in messages:
        tag, number, _ = message.body.decode().split(":")
        by_sender[tag].append(int(number))
    for sender, numbers in by_sender.items():
        assert numbers == list(range(MESSAGES)), f"{sender}: {numbers}"


async def reconnected(client: Client) -> None:
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while client.session is None:
        assert asyncio.get_running_loop().time() < deadline, "the client did not come back"
        await asyncio.sleep(0.05)


async def collect(client: Client, count: int, timeout: float) -> list[ev.Message]:
    messages: list[ev.Message] = []
    while len(messages) < count:
        message = await next_of(client, ev.Message, timeout)
        assert isinstance(message, ev.Message)
        messages.append(message)
    return messages


async def test_group_across_three_gateways(cluster: Cluster, clients: list[Client]) -> None:
    cluster.logic()
    gateways = [cluster.gateway(f"gw{index}", offline_timeout="10") for index in range(3)]
    urls = [gateway.url for gateway in gateways]
    swarm_users = [f"swarm{index}" for index in range(SWARM_MEMBERS)]
    churners = [f"churn{index}" for index in range(CHURNERS)]
    senders = [f"sender{index}" for index in range(SENDERS)]

    owner = await connect(clients, gateways[0], "owner")
    members = swarm_users + churners + senders
    await owner.create_group("big", members[:1000])
    for start in range(1000, len(members), 1000):
        await owner.add_group_members("big", members[start : start + 1000])

    swarm = SwarmProcess(urls, SWARM_MEMBERS)
    try:
        await swarm.until("all connected", lambda r: r["open"] == SWARM_MEMBERS, TIMEOUT * 4)
        # Each churning member moves to the next gateway on every reconnect.
        churning = [
            await connect(
                clients,
                gateways[index % 3],
                user,
                url=urls[index % 3 :] + urls[: index % 3],
                backoff_initial=0.05,
                backoff_max=0.2,
            )
            for index, user in enumerate(churners)
        ]
        sending = [
            await connect(clients, gateways[index % 3], user) for index, user in enumerate(senders)
        ]
        probe = redis.Redis.from_url(cluster.redis.url)
        try:
            subscribed = await probe.pubsub_numsub("tether.group.big")
        finally:
            await probe.aclose()
        assert subscribed == [(b"tether.group.big", 3)]  # one subscription per gateway

        async def send_all(client: Client, name: str) -> None:
            for number in range(MESSAGES):
                await client.send_to_group("big", f"{name}:{number}:{int(time.time() * 1000)}")
                await asyncio.sleep(SEND_INTERVAL)

        drops: list[str] = []

        async def churn() -> None:
            while True:
                await asyncio.sleep(0.15)
                for client in random.sample(churning, 4):
                    transport = client._transport  # the SDK keeps its connection private
                    if transport is not None:
                        transport.close()  # a dropped connection; the client reconnects
                        drops.append(client.device_id)

        churner = asyncio.create_task(churn())
        collectors = [
            asyncio.create_task(collect(client, SENDERS * MESSAGES, TIMEOUT * 4))
            for client in churning
        ]
        await asyncio.gather(*(send_all(c, n) for c, n in zip(sending, senders, strict=True)))
        churner.cancel()
        assert len(drops) >= 20, f"only {len(drops)} connections were dropped during the run"

        expected = SWARM_MEMBERS * SENDERS * MESSAGES
        report = await swarm.until(
            "every swarm member has every message",
            lambda r: r["group_messages"] == expected,
            TIMEOUT * 4,
        )
        for client, received in zip(churning, await asyncio.gather(*collectors), strict=True):
            check_streams(received, senders)
            await reconnected(client)  # it comes back after its last drop
        for client, name in zip(sending, senders, strict=True):
            check_streams(await collect(client, (SENDERS - 1) * MESSAGES, TIMEOUT), senders, name)
        final = await swarm.finish()
    finally:
        swarm.kill()

    assert report["duplicates"] == report["gaps"] == 0, report
    by_client = final["group_messages_by_client"]
    assert isinstance(by_client, dict)
    assert set(by_client.values()) == {SENDERS * MESSAGES}
    opened = final["opened_at"]
    assert isinstance(opened, dict)
    assert all(len(times) == 1 for times in opened.values()), "a swarm member reconnected"
    print(f"group delivery delay over 3 gateways: {final['latency_ms']}")


async def online_counts(client: Client, group_id: str, expected: int, timeout: float) -> None:
    """Wait until client receives a count of expected online members of the group."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        event = await next_of(client, ev.GroupOnline, max(remaining, 0.01))
        assert isinstance(event, ev.GroupOnline)
        if event.group_id == group_id and event.online == expected:
            return


@on_both
async def test_online_counts_across_gateways(
    tmp_path: Path, redis_server: RedisUnderTest, clients: list[Client]
) -> None:
    interval, lease = 0.3, 3.0
    settings = {"group_count_threshold": "3", "group_count_interval": str(interval)}
    cluster = Cluster(tmp_path / "counts", redis_server, lease=lease)
    try:
        cluster.logic()
        gw1, gw2, gw3 = (cluster.gateway(f"gw{index}", **settings) for index in (1, 2, 3))
        owner = await connect(clients, gw1, "owner")
        await owner.create_group("big", [f"m{index}" for index in range(6)])
        await online_counts(owner, "big", 1, TIMEOUT)
        # Within about two intervals: one for the report, one for the read.
        settle = interval * 2 + 1.0

        watcher = await connect(clients, gw2, "m0")
        await online_counts(owner, "big", 2, settle)
        await online_counts(watcher, "big", 2, settle)
        on_gw3 = [await connect(clients, gw3, f"m{index}") for index in (1, 2, 3)]
        await online_counts(owner, "big", 5, settle)
        await online_counts(watcher, "big", 5, settle)
        await on_gw3[0].close()
        await online_counts(owner, "big", 4, settle)

        # Membership changes reach a live session on another gateway.
        newcomer = await connect(clients, gw2, "m6")
        assert await owner.add_group_members("big", ["m6"]) == ["m6"]
        joined = await next_of(newcomer, ev.GroupsChanged)
        assert isinstance(joined, ev.GroupsChanged)
        assert [group.group_id for group in joined.joined] == ["big"]
        await online_counts(owner, "big", 5, settle)
        ack = await owner.send_to_group("big", "welcome")
        message = await next_of(newcomer, ev.Message)
        assert isinstance(message, ev.Message)
        assert message.message_id == ack.message_id
        assert await owner.remove_group_members("big", ["m6"]) == ["m6"]
        left = await next_of(newcomer, ev.GroupsChanged)
        assert isinstance(left, ev.GroupsChanged)
        assert left.left == ["big"]
        await online_counts(owner, "big", 4, settle)

        # A gateway restarted under the same name withdraws its killed run's numbers at once,
        # long before that run's lease would lapse.
        gw3.kill()
        killed_at = time.monotonic()
        restarted = cluster.gateway("gw3", **settings)
        await connect(clients, restarted, "m4")
        await online_counts(owner, "big", 3, settle)
        assert time.monotonic() - killed_at < lease

        # A killed gateway's members leave the count once its lease lapses.
        gw2.kill()
        await online_counts(owner, "big", 2, lease + settle + 1.0)
    finally:
        cluster.stop()
