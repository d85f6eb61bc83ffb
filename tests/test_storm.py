"""Reconnect storm: a killed gateway's clients come back spread out, with no presence flap.

A swarm process (`tether.bench.swarm`) keeps STORM_USERS connections on gateway gw1 of a real
cluster. Watchers on gw2 see a sample of the swarm's users. The test SIGKILLs gw1: every swarm
client reconnects to gw2, which accepts at most its configured connection rate and turns the
rest away with OVERLOADED and a random retry delay. The test checks that every client is back,
that gw2 never opened more sessions in a second than its rate and burst allow, and that no
watcher saw a swarm user go offline, since all came back before gw1's lease ran out.
The full-size storm is `tether bench`'s job; this one runs small enough for CI.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TIMEOUT, drain
from redis_server import RedisUnderTest
from test_cluster import (
    SECRET,
    Cluster,
    _until_online,
    befriend,
    connect,
    free_port,
)

from tether.auth import issue_token
from tether.client import Client
from tether.client import events as ev
from tether.protocol import tether_pb2 as pb
from tether.protocol.codes import Code
from tether.protocol.framing import prefix_frame

STORM_USERS = 2500
RATE = 600  # gw2's new connections per second; its burst is twice that
RETRY_WINDOW = 2.0
LEASE = 8.0  # long enough for the whole swarm to return to gw2 before gw1's lease lapses
WATCHERS = 10
WATCHED_PER_WATCHER = 10


class SwarmProcess:
    """A `tether.bench.swarm` child process and the last report line it printed."""

    def __init__(self, urls: list[str], users: int) -> None:
        command = [sys.executable, "-m", "tether.bench.swarm", "--urls", ",".join(urls),
                   "--secret", SECRET, "--users", str(users), "--duration", "120",
                   "--connect-rate", "500"]  # fmt: skip
        self.popen = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        self.last: dict[str, object] = {}

    async def until(self, condition: str, predicate: object, timeout: float) -> dict[str, object]:
        """Read report lines until predicate(report) holds; fail after timeout seconds."""
        assert callable(predicate)
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
        """Stop the swarm and return its final report."""
        self.popen.terminate()
        return await self.until("its final report", lambda report: report.get("final"), TIMEOUT)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()


def cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU time of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def cluster(tmp_path: Path, redis_server: RedisUnderTest) -> Iterator[Cluster]:
    running = Cluster(tmp_path / "data", redis_server, lease=LEASE)
    yield running
    running.stop()


async def test_killed_gateway_clients_return_spread(
    cluster: Cluster, clients: list[Client]
) -> None:
    cluster.logic()
    settings = {
        "grace_period": "3",
        "heartbeat_interval": "5",
        "offline_timeout": "15",
        "new_connections_per_second": str(RATE),
        "connect_retry_window": str(RETRY_WINDOW),
        "max_connections_per_ip": str(STORM_USERS * 2),
    }
    gw1 = cluster.gateway("gw1", tcp_port=str(free_port()), **settings)
    gw2 = cluster.gateway("gw2", tcp_port=str(free_port()), **settings)
    watched: dict[str, list[str]] = {}
    for index in range(WATCHERS):
        watcher = f"watcher{index}"
        users = [f"swarm{index * 37 + n * 101}" for n in range(WATCHED_PER_WATCHER)]
        for user in users:
            await befriend(cluster, watcher, user)
        watched[watcher] = users

    swarm = SwarmProcess([gw1.url, gw2.url], STORM_USERS)
    try:
        await swarm.until("all connected", lambda r: r["open"] == STORM_USERS, TIMEOUT * 6)
        watchers = {w: await connect(clients, gw2, w) for w in watched}
        for watcher, users in watched.items():
            for user in users:
                await asyncio.wait_for(_until_online(watchers[watcher], user), TIMEOUT)

        cpu_before = cpu_seconds(gw2.popen.pid)
        gw1.kill()
        killed_at = time.time()
        await swarm.until(
            "all back",
            lambda r: r["open"] == STORM_USERS and r["time"] > killed_at + 0.3,
            TIMEOUT * 6,
        )
        storm_cpu = cpu_seconds(gw2.popen.pid) - cpu_before
        # Watch until gw1's lease has lapsed and its devices have been reaped.
        events = {w: await drain(c, quiet=0.1) for w, c in watchers.items()}
        await asyncio.sleep(max(0.0, killed_at + LEASE + 2.0 - time.time()))
        for watcher, client in watchers.items():
            events[watcher] += await drain(client, quiet=0.5)
        report = await swarm.finish()
    finally:
        swarm.kill()

    opened_at = report["opened_at"]
    assert isinstance(opened_at, dict)
    assert all(len(times) == 2 for times in opened_at.values()), "not every client moved once"
    returns = sorted(times[-1] for times in opened_at.values())
    assert returns[0] > killed_at

    # The gateway's connection rate spread the returns: in no second did gw2 open more
    # sessions than its burst plus one second of its rate.
    per_second: dict[int, int] = {}
    for moment in returns:
        per_second[int(moment - returns[0])] = per_second.get(int(moment - returns[0]), 0) + 1
    assert max(per_second.values()) <= RATE * 3, per_second
    spread = returns[-1] - returns[0]
    print(f"storm: {len(returns)} clients back over {spread:.2f} s, gw2 CPU {storm_cpu:.2f} s")

    for watcher, seen in events.items():
        offline = [
            e.presence.user_id
            for e in seen
            if isinstance(e, ev.PresenceChanged) and e.presence.status == "offline"
        ]
        assert offline == [], f"{watcher} saw swarm users go offline: {offline}"
        assert all(watchers[watcher].presence[u].status == "online" for u in watched[watcher])


async def test_sdk_waits_server_delay() -> None:
    """Check that the SDK reconnects no sooner than the delay in an OVERLOADED disconnect."""
    delay_ms = 700
    arrivals: list[float] = []

    async def overloaded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        arrivals.append(asyncio.get_running_loop().time())
        frame = pb.Frame(
            disconnect=pb.Disconnect(
                code=Code.OVERLOADED, reason="too many new connections", reconnect_delay_ms=delay_ms
            )
        )
        writer.write(prefix_frame(frame.SerializeToString()))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(overloaded, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = Client(f"tcp://127.0.0.1:{port}", issue_token(SECRET, "alice"), "phone",
                    backoff_initial=0.01, connect_timeout=2.5)  # fmt: skip
    try:
        with pytest.raises(TimeoutError):
            await client.connect()
    finally:
        await client.close()
        server.close()
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert gaps, "the client never came back"
    assert min(gaps) >= delay_ms / 1000 - 0.01, gaps
