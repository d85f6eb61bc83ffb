"""Groups in a real cluster: one group spread over three gateway processes joined by Redis.

test_group_across_three_gateways runs a group of MEMBERS members: 10,000, the group size that
tether serves with one publish per message (the environment variable
TETHER_TEST_GROUP_MEMBERS sets another number for a quick local run). A swarm process
(`tether.bench.swarm`) keeps the connections of most of them, spread over the gateways, and
SDK clients are the other members. In turn:

- every member comes online, and the online count shows all of them;
- several senders send at the same time while 200 SDK members drop their connections and come
  back on the next gateway, and one member that never reads is flooded until the gateway
  closes it as a slow consumer. Every swarm member gets each sender's messages once and in
  order, merged into few pushes and with a low delay. Every SDK member gets them once and in
  order, live or by catching up after each reconnect;
- members removed from the group while connected stop receiving its messages;
- the counts follow the slow consumer's close, the removals, the SDK members' departure and a
  gateway kill, whose members reconnect to the other gateways without being counted twice.

test_online_counts_across_gateways checks the counts step by step in a small group.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as redis
from conftest import TIMEOUT, SilentReader, drain, next_of, presence_of
from redis_server import RedisUnderTest
from test_cluster import SECRET, Cluster, befriend, connect, on_both

from tether.auth import issue_token
from tether.client import Client
from tether.client import events as ev
from tether.presence.group_counts import MemberChanges
from tether.presence.redis_group_counts import RedisGroupCounts, RedisGroupCountsConfig
from tether.protocol import tether_pb2 as pb
from tether.protocol.codes import Code

MEMBERS = int(os.environ.get("TETHER_TEST_GROUP_MEMBERS", "10000"))  # with the owner
CHURNERS = 200  # SDK members whose connections are dropped during the sending
SENDERS = 3
MESSAGES = 20  # per sender
SEND_INTERVAL = 0.15  # seconds between one sender's messages
CHURN_STEPS = 10  # steps in which all churning members are dropped, in half the sending time
SWARM = MEMBERS - CHURNERS - SENDERS - 2  # the owner and the silent member are the other two
PUSHES_PER_SECOND = 4
REMOVED = 100  # swarm members removed from the group while connected
COUNT_INTERVAL = 0.5
# A count shows a change within two intervals: one until the gateway that saw it reports, one
# until the member's gateway reads the total. The rest is slack for a loaded machine.
SETTLE = 2 * COUNT_INTERVAL + 1.0
LEASE = 3.0  # seconds; a loaded machine can stall a gateway for more than a second


class SwarmProcess:
    """A swarm child process and the last report line it printed."""

    def __init__(self, urls: list[str], users: int) -> None:
        command = [sys.executable, "-m", "tether.bench.swarm", "--urls", ",".join(urls),
                   "--secret", SECRET, "--users", str(users), "--duration", "180",
                   "--connect-rate", "3000", "--spread"]  # fmt: skip
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


async def create_group(owner: Client, group_id: str, members: list[str]) -> None:
    """Create a group of any size, 1,000 members per request (the protocol's limit)."""
    await owner.create_group(group_id, members[:1000])
    for start in range(1000, len(members), 1000):
        await owner.add_group_members(group_id, members[start : start + 1000])


async def flood(flooder: Client, user: str) -> int:
    """Send 30 KB direct messages to user until it goes offline; return how many were sent.

    The gateway closes a reader that never reads once what waits for it passes the gateway's
    max_outgoing_bytes, which happens only after the kernel's socket buffers (a few MB) are
    full. Group messages of a few dozen bytes would take far too long to get there.
    """
    body = "x" * 30_000
    sent = 0
    while True:
        await asyncio.gather(*(flooder.send(user, body) for _ in range(5)))
        sent += 5
        try:
            presence = await presence_of(flooder, user, timeout=0.01)
        except TimeoutError:
            continue
        if presence.status == "offline":
            return sent
        assert sent < 1000, f"{user} was not closed after {sent} messages"


async def counted(
    client: Client, online: int, timeout: float, member_count: int | None = None
) -> list[int]:
    """Wait until client gets the count online for group "big"; return every count it got.

    With member_count, the count must also carry that number of members.
    """
    seen: list[int] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            event = await next_of(client, ev.GroupOnline, max(remaining, 0.01))
        except TimeoutError:
            raise AssertionError(f"no count of {online} within {timeout} s; got {seen}") from None
        assert isinstance(event, ev.GroupOnline)
        if event.group_id != "big":
            continue
        seen.append(event.online)
        if event.online == online and member_count in (None, event.member_count):
            return seen


async def test_group_across_three_gateways(cluster: Cluster, clients: list[Client]) -> None:
    cluster.logic()
    settings = {
        "offline_timeout": "30", "heartbeat_interval": "5",  # the swarm's beats are few
        "max_connections_per_ip": "20000", "new_connections_per_second": "20000",
        "group_count_interval": str(COUNT_INTERVAL),
        # A hot group: 20 messages per second, merged into 4 pushes per second per member.
        "pushes_per_second": str(PUSHES_PER_SECOND), "push_burst": "2",
    }  # fmt: skip
    gateways = [cluster.gateway(f"gw{index}", **settings) for index in range(3)]
    urls = [gateway.url for gateway in gateways]
    swarm_users = [f"swarm{index}" for index in range(SWARM)]
    churners = [f"churn{index}" for index in range(CHURNERS)]
    senders = [f"sender{index}" for index in range(SENDERS)]

    await befriend(cluster, "flooder", "slow")  # so the flooder sees when slow is closed
    owner = await connect(clients, gateways[0], "owner")
    await create_group(owner, "big", [*swarm_users, *churners, *senders, "slow"])

    swarm = SwarmProcess(urls, SWARM)
    slow: SilentReader | None = None
    try:
        await swarm.until("all connected", lambda r: r["open"] == SWARM, TIMEOUT * 6)
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
        flooder = await connect(clients, gateways[1], "flooder")
        slow = await SilentReader.open(gateways[0].tcp_port, issue_token(SECRET, "slow"))
        assert (await presence_of(flooder, "slow")).status == "online"

        # Joins: every member is online.
        await counted(owner, MEMBERS, SETTLE, member_count=MEMBERS)
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

        dropped: set[Client] = set()

        async def churn() -> None:
            # Every churning member loses its connection once in the first half of the
            # sending, and again in the second.
            order = random.sample(churning, len(churning))
            per_step = math.ceil(len(order) / CHURN_STEPS)
            while True:
                for start in range(0, len(order), per_step):
                    for client in order[start : start + per_step]:
                        transport = client._transport  # the SDK keeps its connection private
                        if transport is not None:
                            transport.close()  # a dropped connection; the client reconnects
                            dropped.add(client)
                    await asyncio.sleep(MESSAGES * SEND_INTERVAL / 2 / CHURN_STEPS)

        churner = asyncio.create_task(churn())

        async def close_silent(silent: SilentReader) -> tuple[int, list[pb.Frame]]:
            sent = await flood(flooder, "slow")
            # Read at once: the gateway aborts the connection a close timeout after the close.
            return sent, await silent.read_to_end()

        flooding = asyncio.create_task(close_silent(slow))
        collectors = [
            asyncio.create_task(collect(client, SENDERS * MESSAGES, TIMEOUT * 4))
            for client in churning
        ]
        started = time.monotonic()
        await asyncio.gather(*(send_all(c, n) for c, n in zip(sending, senders, strict=True)))
        churner.cancel()
        flood_messages, frames = await flooding
        assert len(dropped) == CHURNERS, f"{len(dropped)} of {CHURNERS} members were dropped"

        expected = SWARM * SENDERS * MESSAGES
        report = await swarm.until(
            "every swarm member has every message",
            lambda r: r["group_messages"] == expected,
            TIMEOUT * 4,
        )
        elapsed = time.monotonic() - started
        assert report["duplicates"] == report["gaps"] == 0, report
        assert report["sessions"] == SWARM, "a swarm member reconnected"
        # Hot group: each member got its burst, then at most one merged frame per push tick.
        pushes = report["group_frames"]
        assert isinstance(pushes, int)
        assert pushes <= SWARM * (2 + PUSHES_PER_SECOND * elapsed + 1), (pushes, elapsed)
        for client, received in zip(churning, await asyncio.gather(*collectors), strict=True):
            check_streams(received, senders)
            await reconnected(client)  # it comes back after its last drop
        for client, name in zip(sending, senders, strict=True):
            check_streams(await collect(client, (SENDERS - 1) * MESSAGES, TIMEOUT), senders, name)

        # The member that never read was closed as a slow consumer, after the bytes it had.
        disconnects = [f.disconnect.code for f in frames if f.WhichOneof("kind") == "disconnect"]
        assert disconnects == [Code.SLOW_CONSUMER]
        online = MEMBERS - 1
        await counted(owner, online, SETTLE)

        # Membership changes on live sessions: removed members get no more group messages.
        removed = swarm_users[:REMOVED]
        assert await owner.remove_group_members("big", removed) == removed
        online -= REMOVED
        await counted(owner, online, SETTLE, member_count=MEMBERS - REMOVED)
        await owner.send_to_group("big", f"owner:0:{int(time.time() * 1000)}")
        expected += SWARM - REMOVED
        await swarm.until(
            "the swarm has the owner's message", lambda r: r["group_messages"] == expected, TIMEOUT
        )

        # Leaves: the SDK members close.
        for client in churning:
            await client.close()
        online -= CHURNERS
        await counted(owner, online, SETTLE)

        # A gateway kill: its swarm members reconnect to the next gateway. Until the killed
        # gateway's lease lapses, they are online on two gateways and must count once.
        before = online
        gateways[2].kill()
        online -= sum(1 for index in range(SENDERS) if index % 3 == 2)  # they stay away
        moved = swarm_users[2::3]  # client n of the swarm started on gateway n modulo 3
        await swarm.until(
            "all reconnected", lambda r: r["sessions"] == SWARM + len(moved), TIMEOUT * 2
        )
        seen = await counted(owner, online, LEASE + SETTLE)
        assert max(seen) <= before, seen
        later = [e for e in await drain(owner, quiet=SETTLE) if isinstance(e, ev.GroupOnline)]
        assert later == []  # the count stays right
        final = await swarm.finish()
    finally:
        swarm.kill()
        if slow is not None:
            slow.close()

    assert final["duplicates"] == final["gaps"] == 0, final
    by_client = final["group_messages_by_client"]
    assert isinstance(by_client, dict)
    assert {by_client[user] for user in removed} == {SENDERS * MESSAGES}
    assert {by_client[user] for user in swarm_users[REMOVED:]} == {SENDERS * MESSAGES + 1}
    opened = final["opened_at"]
    assert isinstance(opened, dict)
    # The killed gateway's members came back once; the others never left.
    assert {len(opened[user]) for user in moved} == {2}
    assert {len(opened[user]) for user in set(swarm_users) - set(moved)} == {1}
    latency = final["latency_ms"]
    assert isinstance(latency, dict)
    # A slow reader delays no one: the others' messages kept flowing.
    assert latency["p99"] < TIMEOUT * 1000, latency
    print(
        f"{MEMBERS} members over 3 gateways: delivery delay {latency}, "
        f"silent member closed after {flood_messages} direct messages of 30 KB, "
        f"counts after the gateway kill {seen}"
    )


async def online_counts(client: Client, group_id: str, expected: int, timeout: float) -> None:
    """Wait until client receives a count of expected online members of the group."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        event = await next_of(client, ev.GroupOnline, max(remaining, 0.01))
        assert isinstance(event, ev.GroupOnline)
        if event.group_id == group_id and event.online == expected:
            return


async def no_counts(client: Client, group_id: str, quiet: float) -> None:
    """Assert that client receives no count of the group for quiet seconds."""
    events = await drain(client, quiet=quiet)
    assert [e for e in events if isinstance(e, ev.GroupOnline) and e.group_id == group_id] == []


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

        # A user with devices on two gateways is one online member.
        laptop = await connect(clients, gw2, "m1", device="laptop")
        await no_counts(owner, "big", settle)
        await on_gw3[0].close()
        await no_counts(owner, "big", settle)
        await laptop.close()
        await online_counts(owner, "big", 4, settle)

        # Membership changes reach a live session on another gateway.
        newcomer = await connect(clients, gw2, "m6")
        assert await owner.add_group_members("big", ["m6"]) == ["m6"]
        joined = await next_of(newcomer, ev.GroupsChanged)
        assert isinstance(joined, ev.GroupsChanged)
        assert [group.group_id for group in joined.joined] == ["big"]
        # Members on other gateways are notified by the group's system message.
        added = await next_of(watcher, ev.GroupEvent)
        assert isinstance(added, ev.GroupEvent)
        assert (added.kind, added.actor, added.user_ids) == ("members_added", "owner", ["m6"])
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
        m4 = await connect(clients, restarted, "m4")
        await online_counts(owner, "big", 3, settle)
        assert time.monotonic() - killed_at < lease

        # A killed gateway's members leave the count once its lease lapses.
        gw2.kill()
        await online_counts(owner, "big", 2, lease + settle + 1.0)

        # A deletion reaches the members on every gateway with one publish.
        await owner.delete_group("big")
        deleted = await next_of(m4, ev.GroupsChanged)
        assert isinstance(deleted, ev.GroupsChanged)
        assert (deleted.left, deleted.deleted) == (["big"], ["big"])
    finally:
        for client in clients:  # first, or each gateway waits its close timeout for them
            await client.close()
        cluster.stop()


@on_both
async def test_count_store_counts_each_user_once(redis_server: RedisUnderTest) -> None:
    def store(name: str, lease: float = 30.0) -> RedisGroupCounts:
        config = RedisGroupCountsConfig(
            url=redis_server.url, cluster=redis_server.cluster, lease_timeout=lease
        )
        return RedisGroupCounts(config, name)

    def users(first: int, last: int) -> frozenset[str]:
        return frozenset(f"u{index}" for index in range(first, last))

    gw0, gw1, short = store("gw0"), store("gw1"), store("gw2", lease=0.5)
    for each in (gw0, gw1, short):
        await each.start()
    try:
        # More users than one script call takes: the report is split, the count is whole.
        many = {"big": MemberChanges(online=users(0, 12_000))}
        assert await gw0.exchange(many, fresh=True, read=["big"]) == {"big": 12_000}
        # Users online on two gateways count once; a report sent twice changes nothing.
        both = {"big": MemberChanges(online=users(11_000, 12_500))}
        assert await gw1.exchange(both, fresh=True, read=["big"]) == {"big": 12_500}
        assert await gw1.exchange(both, fresh=False, read=["big"]) == {"big": 12_500}
        gone = {"big": MemberChanges(offline=users(11_000, 12_000))}
        assert await gw1.exchange(gone, fresh=False, read=["big"]) == {"big": 12_500}
        assert await gw0.exchange(gone, fresh=False, read=["big"]) == {"big": 11_500}

        # A gateway whose lease lapsed drops out with the next call of any gateway, and its
        # own next update is refused until it reports everything again.
        extra = {"big": MemberChanges(online=users(20_000, 20_010))}
        assert await short.exchange(extra, fresh=True, read=["big"]) == {"big": 11_510}
        await asyncio.sleep(0.6)
        assert await gw1.exchange({}, fresh=False, read=["big"]) == {"big": 11_500}
        assert await short.exchange({}, fresh=False, read=["big"]) is None
        assert await short.exchange(extra, fresh=True, read=["big"]) == {"big": 11_510}

        # A gateway that stops withdraws its members at once.
        await gw0.close()
        assert await gw1.exchange({}, fresh=False, read=["big", "other"]) == {
            "big": 510,
            "other": 0,
        }
    finally:
        for each in (gw0, gw1, short):
            await each.close()
