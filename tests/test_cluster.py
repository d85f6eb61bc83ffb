"""Cluster mode with real processes: gateways and a logic worker joined by a real Redis server.

Tests marked `on_both` run twice: on a standalone server and on a Redis Cluster of three
primaries (`--redis-cluster true`); the others run on a standalone server.
"""

from __future__ import annotations

import asyncio
import functools
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TIMEOUT, drain, next_of, presence_of
from redis.asyncio import Redis, RedisCluster
from redis_server import REDIS_KINDS, RedisUnderTest, inspector, subscriber_counts

from tether.auth import issue_token
from tether.client import Client, RequestError
from tether.client import events as ev
from tether.protocol import tether_pb2 as pb
from tether.protocol.codes import Code
from tether.protocol.framing import prefix_frame
from tether.server import send_admin_request

SECRET = "cluster-test-secret-of-at-least-32-bytes"
LEASE = 1.5  # seconds; short so a crash is noticed quickly
TETHER = [sys.executable, "-m", "tether"]
# A program that runs `python -m tether` with time.time() moved by its first argument, in
# seconds, like the wall clock of a machine that is ahead or behind. The event loop's monotonic
# clock is untouched.
_SHIFTED_CLOCK = """
import runpy, sys, time
shift = float(sys.argv.pop(1))
wall_clock = time.time
time.time = lambda: wall_clock() + shift
runpy.run_module("tether", run_name="__main__", alter_sys=True)
"""

on_both = pytest.mark.parametrize("redis_server", REDIS_KINDS, indirect=True)


class Process:
    """A tether process started by a test, stopped by its PID.

    Its stderr goes to `<name>.stderr` in log_dir: a pipe that no one reads would stop the
    process once its log filled the pipe's buffer.
    """

    def __init__(self, name: str, command: list[str], log_dir: Path) -> None:
        self.name = name
        self.command = command
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = log_dir / f"{name}.stderr"
        with self.stderr_path.open("a") as stderr:
            self.popen = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline()
        if not line.startswith("tether ready"):
            self.popen.kill()
            self.popen.wait()
            raise RuntimeError(f"{name} did not start: {line!r} {self.stderr_path.read_text()}")
        found = re.search(r"tcp=[\d.]+:(\d+)", line)
        self.tcp_port = int(found.group(1)) if found else 0
        found = re.search(r"http=[\d.]+:(\d+)", line)
        self.http_port = int(found.group(1)) if found else 0  # 0 without --http-port

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.tcp_port}"

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=TIMEOUT * 2)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def kill(self) -> None:
        self.popen.kill()
        self.popen.wait()


class Cluster:
    def __init__(self, directory: Path, redis_server: RedisUnderTest, lease: float = LEASE) -> None:
        self.directory = directory
        self.redis = redis_server
        self.lease = lease
        self.processes: list[Process] = []

    def common(self) -> list[str]:
        return ["--data-dir", str(self.directory), "--secret", SECRET, "--redis", self.redis.url,
                "--redis-cluster", str(self.redis.cluster).lower(),
                "--lease-timeout", str(self.lease), "--log-level", "warning"]  # fmt: skip

    def gateway(self, name: str, clock_shift: float = 0.0, **settings: str) -> Process:
        """Start a gateway. clock_shift moves its wall clock by that many seconds."""
        options = {
            "--grace-period": "0.3", "--offline-timeout": "2", "--heartbeat-interval": "0.5",
            "--connect-timeout": "2", "--request-timeout": "2",
        }  # fmt: skip
        options.update({f"--{key.replace('_', '-')}": value for key, value in settings.items()})
        program = TETHER
        if clock_shift:
            program = [sys.executable, "-c", _SHIFTED_CLOCK, str(clock_shift)]
        command = [*program, "serve", *self.common(), "--logic", "false", "--gateway-id", name,
                   "--tcp-port", "0", "--ws-port", "off"]  # fmt: skip
        for key, value in options.items():
            command += [key, value]
        process = Process(name, command, self.directory.parent / "logs")
        self.processes.append(process)
        return process

    def logic(self, name: str = "logic", database: str = "", *options: str) -> Process:
        """Start a logic worker; database empty means tether.db in the shared data folder."""
        command = [*TETHER, "logic", *self.common(), "--database", database, *options]
        process = Process(name, command, self.directory.parent / "logs")
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


@pytest.fixture
def cluster(tmp_path: Path, redis_server: RedisUnderTest) -> Iterator[Cluster]:
    running = Cluster(tmp_path / "data", redis_server)
    yield running
    running.stop()


async def connect(
    clients: list[Client], gateway: Process, user: str, device: str = "phone", **options: object
) -> Client:
    url = options.pop("url", gateway.url)
    client = Client(url, issue_token(SECRET, user), device, connect_timeout=TIMEOUT,  # type: ignore[arg-type]
                    ack_timeout=TIMEOUT, **options)  # type: ignore[arg-type]  # fmt: skip
    await client.connect()
    clients.append(client)
    return client


async def befriend(cluster: Cluster, user_a: str, user_b: str) -> None:
    result = await send_admin_request(cluster.directory, "contacts.add", [user_a, user_b])
    assert result is not None and result.error_code == 0


@on_both
async def test_presence_and_messages_cross_gateways(
    cluster: Cluster, clients: list[Client]
) -> None:
    cluster.logic()
    gw1, gw2 = cluster.gateway("gw1"), cluster.gateway("gw2")
    await befriend(cluster, "alice", "bob")
    bob = await connect(clients, gw2, "bob")
    await next_of(bob, ev.PresenceSnapshot)  # gw2 watches alice from here on
    alice = await connect(clients, gw1, "alice")
    assert (await presence_of(bob, "alice")).status == "online"
    snapshot = await next_of(alice, ev.PresenceSnapshot)
    assert isinstance(snapshot, ev.PresenceSnapshot)
    if snapshot.contacts["bob"].status != "online":
        # bob's session opens before gw2 reports him ONLINE: that waits for his channel's
        # subscription and the next transition flush. alice then learns it as a change.
        assert (await presence_of(alice, "bob")).status == "online"

    ack = await alice.send("bob", "across")
    message = await next_of(bob, ev.Message)
    assert isinstance(message, ev.Message)
    assert message.message_id == ack.message_id
    reply = await bob.send("alice", "and back")
    answer = await next_of(alice, ev.Message)
    assert isinstance(answer, ev.Message)
    assert answer.sequence == reply.sequence == 2

    await alice.set_status("busy")
    assert (await presence_of(bob, "alice")).status == "busy"


@on_both
async def test_killed_gateway_users_go_offline(cluster: Cluster, clients: list[Client]) -> None:
    cluster.logic()
    gw1, gw2 = cluster.gateway("gw1"), cluster.gateway("gw2")
    await befriend(cluster, "alice", "bob")
    bob = await connect(clients, gw2, "bob")
    await next_of(bob, ev.PresenceSnapshot)  # gw2 watches alice from here on
    await connect(clients, gw1, "alice")
    assert (await presence_of(bob, "alice")).status == "online"

    loop = asyncio.get_running_loop()
    killed_at = loop.time()
    gw1.kill()
    offline = await presence_of(bob, "alice", timeout=LEASE + TIMEOUT)
    assert offline.status == "offline"
    assert loop.time() - killed_at < LEASE + 2.0  # lease plus reaper passes

    restarted = cluster.gateway("gw1")
    assert restarted.tcp_port > 0
    events = await drain(bob, quiet=LEASE + 0.5)
    assert not [e for e in events if isinstance(e, ev.PresenceChanged)]


@on_both
async def test_device_moves_gateway_without_flap(cluster: Cluster, clients: list[Client]) -> None:
    cluster.logic()
    gw1, gw2 = cluster.gateway("gw1"), cluster.gateway("gw2")
    await befriend(cluster, "alice", "bob")
    bob = await connect(clients, gw2, "bob")
    await next_of(bob, ev.PresenceSnapshot)  # gw2 watches alice from here on
    # Alice's phone on gw1 goes silent with its socket open (no heartbeats, no close).
    reader, writer = await asyncio.open_connection("127.0.0.1", gw1.tcp_port)
    connect_frame = pb.Connect(
        protocol_version=1, token=issue_token(SECRET, "alice"), device_id="phone"
    )
    writer.write(prefix_frame(pb.Frame(connect=connect_frame).SerializeToString()))
    assert await asyncio.wait_for(reader.read(65536), TIMEOUT)  # Connected arrived
    assert (await presence_of(bob, "alice")).status == "online"

    await connect(clients, gw2, "alice", device="phone")
    # gw1 times the old connection out after 2 s; its cleanup must not remove the new session.
    events = await drain(bob, quiet=3.5)
    assert not [e for e in events if isinstance(e, ev.PresenceChanged)]
    assert await asyncio.wait_for(reader.read(65536), TIMEOUT)  # gw1's Disconnect: it did time out
    writer.close()


@on_both
async def test_only_watching_gateways_subscribe(
    cluster: Cluster, clients: list[Client], redis_server: RedisUnderTest
) -> None:
    cluster.logic()
    gw1, gw2, gw3 = cluster.gateway("gw1"), cluster.gateway("gw2"), cluster.gateway("gw3")
    await befriend(cluster, "alice", "bob")
    await connect(clients, gw1, "alice")
    bob = await connect(clients, gw2, "bob")
    await next_of(bob, ev.PresenceSnapshot)  # gw2 watches alice from here on
    carol = await connect(clients, gw3, "carol")

    watching_alice, watching_carol = subscriber_counts(
        redis_server, "tether.presence.{alice}", "tether.presence.{carol}"
    )
    assert watching_alice == 1  # only gw2, where bob watches alice
    assert watching_carol == 0  # carol is no one's contact
    assert not [e for e in await drain(carol) if isinstance(e, ev.PresenceChanged)]


@on_both
async def test_redis_restart_recovers(
    cluster: Cluster, clients: list[Client], redis_server: RedisUnderTest
) -> None:
    cluster.logic()
    gw1, gw2 = cluster.gateway("gw1"), cluster.gateway("gw2")
    await befriend(cluster, "alice", "bob")
    bob = await connect(clients, gw2, "bob")
    await next_of(bob, ev.PresenceSnapshot)  # gw2 watches alice from here on
    alice = await connect(clients, gw1, "alice")
    assert (await presence_of(bob, "alice")).status == "online"

    redis_server.stop()
    await asyncio.sleep(2.5)  # past the bus's health check: the gateways know Redis is gone
    with pytest.raises(RequestError) as failure:
        await alice.send("bob", "during the outage")
    assert failure.value.code == Code.UNAVAILABLE
    redis_server.start()

    # Gateways resubscribe and report their sessions again; clients stay connected.
    deadline = asyncio.get_running_loop().time() + TIMEOUT * 2
    while True:
        try:
            # The same id on every attempt: an attempt that timed out may still be stored.
            ack = await alice.send("bob", "after the outage", client_message_id="after-outage")
            break
        except RequestError as error:
            assert error.code == Code.UNAVAILABLE
            assert asyncio.get_running_loop().time() < deadline, "cluster did not recover"
            await asyncio.sleep(0.3)
    message = await next_of(bob, ev.Message, timeout=TIMEOUT)
    assert isinstance(message, ev.Message)
    assert message.body == b"after the outage"
    assert message.message_id == ack.message_id
    # Online again in the rebuilt cluster presence (status 2 is STATUS_ONLINE).
    await asyncio.wait_for(_wait_for_status(redis_server, "alice", b"2"), TIMEOUT)


async def chat_until(
    stop: asyncio.Event, client: Client, receiver: str, acked: list[int], *, pause: float
) -> None:
    """Send numbered messages to receiver until stop is set, appending each ack's message id.

    Like an application, it resends a message with the same client_message_id until the
    server acks it, so a send that failed during a restart is stored once.
    """
    number = 0
    while not stop.is_set():
        message_id = f"{client.device_id}-{receiver}-{number}"
        while True:
            try:
                ack = await client.send(receiver, message_id, client_message_id=message_id)
                break
            except (RequestError, TimeoutError):
                await asyncio.sleep(0.1)
        acked.append(ack.message_id)
        number += 1
        await asyncio.sleep(pause)


async def _until_online(client: Client, user: str) -> None:
    """Wait until the client's presence view shows user online, from a snapshot or a change."""
    while True:
        known = client.presence.get(user)
        if known is not None and known.status == "online":
            return
        await asyncio.sleep(0.05)


async def _wait_for_status(redis_server: RedisUnderTest, user: str, expected: bytes) -> None:
    client = inspector(redis_server)
    try:
        while await client.hget(f"tether:p:{{{user}}}", "status") != expected:
            await asyncio.sleep(0.1)
    finally:
        await client.aclose()


async def test_logic_worker_killed_others_continue(cluster: Cluster, clients: list[Client]) -> None:
    first = cluster.logic("logic1")
    cluster.logic("logic2")
    gw1 = cluster.gateway("gw1")
    await befriend(cluster, "alice", "bob")
    alice = await connect(clients, gw1, "alice")
    bob = await connect(clients, gw1, "bob")
    await next_of(bob, ev.PresenceSnapshot)

    acked = [await alice.send("bob", f"before {index}") for index in range(5)]
    first.kill()
    acked += [await alice.send("bob", f"after {index}") for index in range(5)]
    received = [e for e in await drain(bob, quiet=1.0) if isinstance(e, ev.Message)]
    assert sorted(m.message_id for m in received) == sorted(a.message_id for a in acked)
    assert [m.sequence for m in received] == list(range(1, 11))


async def test_same_device_on_two_gateways_one_survives(
    cluster: Cluster, clients: list[Client], redis_server: RedisUnderTest
) -> None:
    """Check that one of two connections of a device opened at once survives, the one
    presence records, so that its close leaves no session behind."""
    cluster.logic()
    # Info logs name each open and close, for the failure message.
    gw1 = cluster.gateway("gw1", log_level="info")
    gw2 = cluster.gateway("gw2", log_level="info")
    first, second = await asyncio.gather(
        connect(clients, gw1, "alice", "phone"), connect(clients, gw2, "alice", "phone")
    )
    closed: list[tuple[Client, int]] = []
    seen: list[str] = []
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    # Wait for the first close (the device claims cross the bus), then long enough for a second.
    while not closed and asyncio.get_running_loop().time() < deadline:
        for client in (first, second):
            for event in await drain(client, quiet=0.3):
                seen.append(f"{client.url}: {event!r}")
                if isinstance(event, ev.Disconnected):
                    closed.append((client, event.code))
    for client in (first, second):
        for event in await drain(client, quiet=1.0):
            seen.append(f"{client.url}: {event!r}")
            if isinstance(event, ev.Disconnected):
                closed.append((client, event.code))
    logs = "\n".join(f"{p.name}: {p.stderr_path.read_text()[-3000:]}" for p in (gw1, gw2))
    assert len(closed) == 1, "\n".join([*seen, logs])
    assert closed[0][1] == Code.REPLACED

    survivor = second if closed[0][0] is first else first
    await survivor.close()
    inspect = inspector(redis_server)
    await _until_owned(inspect, "tether:p:{alice}", None)
    await inspect.aclose()


async def test_device_taken_over_despite_clock_skew(
    cluster: Cluster, clients: list[Client], redis_server: RedisUnderTest
) -> None:
    """Check that a device moving to a gateway whose clock is behind replaces the old session.

    gw1's clock runs 3 s ahead of gw2's. Alice's phone opens on gw1, then on gw2, which did not
    listen on alice's channel when gw1 opened the first session. Presence in Redis, not the
    clocks, decides which connection is newer: the one on gw2.
    """
    cluster.lease = 10.0  # well above the skew, so neither gateway reaps the other's lease
    cluster.logic()
    gw1 = cluster.gateway("gw1", clock_shift=3.0)
    gw2 = cluster.gateway("gw2")
    inspect = inspector(redis_server)
    key = "tether:p:{alice}"
    first = await connect(clients, gw1, "alice", "phone")
    await _until_owned(inspect, key, "gw1")
    second = await connect(clients, gw2, "alice", "phone")

    closed = await next_of(first, ev.Disconnected)
    assert isinstance(closed, ev.Disconnected)
    assert closed.code == Code.REPLACED
    assert not [e for e in await drain(second) if isinstance(e, ev.Disconnected)]
    owner = await inspect.hget(key, "dev:phone")
    assert owner is not None
    assert owner.decode().split("\t")[0] == "gw2"

    await second.close()
    await _until_owned(inspect, key, None)  # no session is left behind
    await inspect.aclose()


async def _until_owned(inspect: Redis | RedisCluster, key: str, gateway: str | None) -> None:
    """Wait until the phone's device field names gateway, or is gone for None."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while True:
        owner = await inspect.hget(key, "dev:phone")
        if (owner.decode().split("\t")[0] if owner else None) == gateway:
            return
        assert asyncio.get_running_loop().time() < deadline, f"device field is {owner!r}"
        await asyncio.sleep(0.02)


async def test_gateway_drain_shows_no_flap(cluster: Cluster, clients: list[Client]) -> None:
    cluster.logic()
    gw1 = cluster.gateway("gw1", grace_period="3")
    gw2 = cluster.gateway("gw2", grace_period="3")
    await befriend(cluster, "alice", "bob")
    bob = await connect(clients, gw2, "bob")
    await next_of(bob, ev.PresenceSnapshot)
    alice = await connect(clients, gw1, "alice")
    assert (await presence_of(bob, "alice")).status == "online"

    gw1.stop()  # SIGTERM: a drain, as in a rolling restart
    closed = await next_of(alice, ev.Disconnected)
    assert isinstance(closed, ev.Disconnected)
    assert closed.code == Code.SHUTDOWN
    await connect(clients, gw2, "alice")  # back on another gateway inside the grace period
    events = await drain(bob, quiet=4.0)
    assert not [e for e in events if isinstance(e, ev.PresenceChanged)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_send_waits_for_logic_worker(cluster: Cluster, clients: list[Client]) -> None:
    """Check that a send with no logic worker fails with UNAVAILABLE and is stored once later."""
    first = cluster.logic("logic1")
    gw1 = cluster.gateway("gw1", request_timeout="1")
    await befriend(cluster, "alice", "bob")
    alice = await connect(clients, gw1, "alice")
    bob = await connect(clients, gw1, "bob")
    await next_of(bob, ev.PresenceSnapshot)
    first.kill()

    with pytest.raises(RequestError) as failure:
        await alice.send("bob", "while no worker runs", client_message_id="m-1")
    assert failure.value.code == Code.UNAVAILABLE
    await asyncio.sleep(1.5)  # several heartbeat intervals: the clients stay connected
    assert alice.session is not None and bob.session is not None

    cluster.logic("logic2")  # joins the group and reads the waiting request
    message = await next_of(bob, ev.Message, timeout=TIMEOUT * 2)
    assert isinstance(message, ev.Message)
    assert message.body == b"while no worker runs"
    ack = await alice.send("bob", "while no worker runs", client_message_id="m-1")
    assert ack.message_id == message.message_id  # the resend found the stored message
    late = [e for e in await drain(bob, quiet=1.0) if isinstance(e, ev.Message)]
    assert late == []


async def test_rolling_restart_loses_nothing(cluster: Cluster, clients: list[Client]) -> None:
    """Check that restarting every gateway in turn delivers each acked message exactly once."""
    cluster.logic()
    grace = 4.0
    settings = {"grace_period": str(grace), "reconnect_spread": "0.5"}
    ports = {name: free_port() for name in ("gw1", "gw2")}
    gateways = {
        name: cluster.gateway(name, tcp_port=str(port), **settings) for name, port in ports.items()
    }
    urls = [gateway.url for gateway in gateways.values()]
    pairs = [(f"s{index}", f"r{index}") for index in range(4)]
    for sender, receiver in pairs:
        await befriend(cluster, sender, receiver)
    connected: dict[str, Client] = {}
    for index, (sender, receiver) in enumerate(pairs):
        # Half of the senders start on gw1 and half on gw2, each receiver on the other gateway
        # than its sender, so a receiver is connected when its sender's gateway drains. Every
        # client moves to the other gateway when its own drains.
        order = urls[index % 2 :] + urls[: index % 2]
        connected[receiver] = await connect(clients, gateways["gw1"], receiver, url=order[::-1])
        connected[sender] = await connect(clients, gateways["gw1"], sender, url=order)
    for sender, receiver in pairs:
        await asyncio.wait_for(_until_online(connected[receiver], sender), TIMEOUT)

    acked: dict[str, list[int]] = {sender: [] for sender, _ in pairs}
    stop = asyncio.Event()

    senders = [
        asyncio.create_task(
            chat_until(stop, connected[sender], receiver, acked[sender], pause=0.05)
        )
        for sender, receiver in pairs
    ]
    loop = asyncio.get_running_loop()
    for name, port in ports.items():
        await asyncio.sleep(1.0)
        # SIGTERM: drain, then exit. Stopping and starting a process block, so they run in a
        # thread while the clients in this event loop reconnect.
        last_drain = loop.time()
        await asyncio.to_thread(gateways[name].stop)
        gateways[name] = await asyncio.to_thread(
            functools.partial(cluster.gateway, name, tcp_port=str(port), **settings)
        )
    await asyncio.sleep(1.5)
    stop.set()
    await asyncio.gather(*senders)
    # An offline caused by the last drain would be published when its grace period ends.
    await asyncio.sleep(max(0.0, last_drain + grace + 0.5 - loop.time()))

    for sender, receiver in pairs:
        events = await drain(connected[receiver], quiet=1.5)
        received = [e.message_id for e in events if isinstance(e, ev.Message)]
        assert len(acked[sender]) > 20, "the senders barely sent anything"
        assert sorted(received) == sorted(acked[sender]), f"{receiver} lost or doubled messages"
        flaps = [
            e
            for e in events
            if isinstance(e, ev.PresenceChanged) and e.presence.status == "offline"
        ]
        assert flaps == [], f"{receiver} saw {sender} go offline during the restart: {events}"


async def test_logic_workers_share_postgres(
    cluster: Cluster, clients: list[Client], postgres_url: str
) -> None:
    """Two logic workers store one conversation's messages in PostgreSQL at the same time."""
    first = cluster.logic("logic1", database=postgres_url)
    cluster.logic("logic2", database=postgres_url)
    gw1, gw2 = cluster.gateway("gw1"), cluster.gateway("gw2")
    await befriend(cluster, "alice", "bob")
    alice = await connect(clients, gw1, "alice")
    bob = await connect(clients, gw2, "bob")
    await next_of(bob, ev.PresenceSnapshot)

    # Both users send at once, so the workers' batches for the conversation overlap.
    acks = await asyncio.gather(
        *(alice.send("bob", f"from alice {index}") for index in range(20)),
        *(bob.send("alice", f"from bob {index}") for index in range(20)),
    )
    assert sorted(ack.sequence for ack in acks) == list(range(1, 41))
    assert len({ack.message_id for ack in acks}) == 40

    first.kill()  # the other worker carries on with the same database
    later = await alice.send("bob", "after the kill")
    assert later.sequence == 41
    received = [e for e in await drain(bob, quiet=1.0) if isinstance(e, ev.Message)]
    from_alice = [*acks[:20], later]
    assert sorted(m.message_id for m in received) == sorted(a.message_id for a in from_alice)
    assert not (cluster.directory / "tether.db").exists()  # nothing went to SQLite


async def test_reuse_port_shares_port(cluster: Cluster, clients: list[Client]) -> None:
    """Two gateways listening on one port with SO_REUSEPORT both take connections."""
    cluster.logic()
    port = str(free_port())
    gw1 = cluster.gateway("gw1", tcp_port=port, reuse_port="true")
    cluster.gateway("gw2", tcp_port=port, reuse_port="true")
    await befriend(cluster, "user0", "user1")
    users = [await connect(clients, gw1, f"user{index}") for index in range(24)]

    # Session ids start with a prefix each gateway picks at start; the kernel spread the
    # connections, so both prefixes appear (all 24 on one gateway has odds of about 1e-7).
    prefixes = {client.session.session_id.split("-")[0] for client in users if client.session}
    assert len(prefixes) == 2
    await asyncio.wait_for(_until_online(users[1], "user0"), TIMEOUT)  # across gateways
    ack = await users[0].send("user1", b"one port, two gateways")
    assert ack.sequence == 1


def test_reuse_port_needs_redis(tmp_path: Path) -> None:
    result = subprocess.run(
        [*TETHER, "serve", "--data-dir", str(tmp_path), "--reuse-port", "true"],
        capture_output=True, text=True, timeout=TIMEOUT * 4, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "reuse_port shares a port between gateways of one cluster: set redis_url" in (
        result.stderr
    )
