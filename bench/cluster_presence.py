"""Measure cluster presence: change-to-contact latency, Redis commands, crash detection.

    .venv/bin/python bench/cluster_presence.py [--changers 200 --watchers 200 --contacts 50]

The script starts a private Redis server (`tether.local_redis.RedisServer`, a free port of
127.0.0.1), one logic worker and two gateways (`gw1`, `gw2`) as child processes, all with the
data folder in a temporary directory. Before the logic worker starts, it writes the contacts
straight into the SQLite store: each watcher (on gw2) gets `--contacts` random changers (on
gw1) as contacts, and each chat pair is one user on each gateway. Clients run in three load
processes of their own, so client CPU is not charged to a server process:

- `changers`: the changer users' clients on gw1; they call `set_status` at a fixed rate;
- `watchers`: the watcher users' clients on gw2; they record every PresenceChanged;
- `chat`: chat pairs (one client on each gateway) sending direct messages at a fixed rate,
  and, later, raw TCP connections that only send heartbeats.

Phases, in order:

1. `baseline`: no clients for `--idle-seconds`. The `INFO commandstats` counts of this phase,
   per second, are the background of health PINGs, lease renewals, reaper passes and stream
   reads that every later phase subtracts.
2. `presence`: `--changes` status changes (away, online, away, ...) at `--change-rate` per
   second, round-robin over the changers, with no other traffic. Gives the latency and the
   Redis commands per transition.
3. `presence+chat`: the same, while the chat pairs send `--chat-rate` messages per second.
4. `heartbeats`: `--heartbeat-connections` raw connections, half on each gateway, send one
   heartbeat every `--heartbeat-interval` seconds for `--idle-seconds`; every other client is
   connected and idle. Gives the Redis commands per heartbeat.
5. `gateway kill`: SIGKILL of gw1, then the time until each changer's watchers have all
   received its OFFLINE.

Latency is the time from `time.time()` just before the changer's client writes SetStatus to
`time.time()` when the watcher's client hands the PresenceChanged to its consumer. Both clocks
are the same system clock of one machine, so no synchronisation is needed. Each notification is
matched to the last change of that user to that status sent before it. A user changes once
every `changers / change-rate` seconds (10 s by default), so the match is unambiguous.

Every load is bounded by a count and a time limit. Each load process arms `signal.alarm` with
`--deadline` seconds, the server processes also get SIGTERM when this script dies
(PR_SET_PDEATHSIG), and a `try`/`finally` stops every process by its PID on the way out.
Results: a table on stdout and JSON in bench/results/cluster_presence.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import hashlib
import json
import math
import multiprocessing
import os
import platform
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple

import redis
import uvloop

from tether.auth import issue_token
from tether.bench.stats import kill_summary, match_latencies, summarize_ms
from tether.client import Client
from tether.client import events as ev
from tether.local_redis import RedisServer
from tether.logic import default_database, open_store
from tether.presence.cluster import load_scripts
from tether.protocol import tether_pb2 as pb
from tether.protocol.connection import PROTOCOL_VERSION
from tether.protocol.framing import StreamDecoder, prefix_frame

HOST = "127.0.0.1"
SECRET = "cluster-benchmark-secret-of-at-least-32-bytes"
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "cluster_presence.json"
TETHER = [sys.executable, "-m", "tether"]
CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")

# Seconds a server process has to print its ready line.
START_TIMEOUT = 30.0
# Clients connecting at once per load process.
CONNECT_CONCURRENCY = 50
# Seconds without a new notification after which a phase's notifications count as complete,
# and the longest wait for that quiet.
QUIET_SECONDS = 1.0
MAX_DRAIN_SECONDS = 15.0
# Seconds after new connections before a command count starts: their ONLINE transitions and
# connect requests must not land in the measured phase.
SETTLE_SECONDS = 2.0
# Extra seconds the kill phase waits beyond the lease timeout and the reaper interval (1 s).
KILL_WAIT_MARGIN = 10.0
# Commands this script sends itself, left out of every count.
OWN_COMMANDS = frozenset({"info"})
# Commands that tether's processes send on timers, with or without clients. The bus sends
# health PINGs, stream reads and claims. Each gateway runs the lease renewal and the claims of
# its reaper and grace checks (EVALSHA renew, claim_leases, claim_grace).
PERIODIC_COMMANDS = frozenset(
    {
        "PING", "XREADGROUP", "XAUTOCLAIM",
        "EVALSHA renew", "EVALSHA claim_leases", "EVALSHA claim_grace",
    }
)  # fmt: skip
# A MONITOR line: "+<unix time> [<db> <client address or lua>] "<COMMAND>" "<argument>" ...".
MONITOR_LINE = re.compile(rb'^\+[\d.]+ \[\d+ ([^\]]+)\] "([^"]*)"(?: "([^"]*)")?')


# --- small helpers ---------------------------------------------------------------------------


def read_cpu_seconds(pid: int) -> float:
    """Return utime + stime of process `pid` in seconds, or NaN once it has exited."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except FileNotFoundError:
        return math.nan
    # The command name in field 2 may contain spaces, so split after its closing bracket.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_SECOND


def read_machine_busy_seconds() -> float:
    """Return the CPU time all processes of the machine used since boot, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle, iowait = fields[3], fields[4]
    return (sum(fields[:8]) - idle - iowait) / CLOCK_TICKS_PER_SECOND


def command_counts(client: redis.Redis) -> Counter[str]:
    """Return the calls of each command type since the server started, from INFO commandstats.

    Redis counts the commands that a Lua script runs with `redis.call` as well, so a script
    call shows up as one EVALSHA plus the HGET, HSET, PUBLISH, ... it ran.
    """
    stats = client.info("commandstats")
    counts: Counter[str] = Counter()
    for name, fields in stats.items():
        command = name.removeprefix("cmdstat_")
        if command not in OWN_COMMANDS:
            counts[command] = int(fields["calls"])
    return counts


class CommandMonitor:
    """Count the commands that clients send (scripts' inner commands excluded), from MONITOR.

    INFO commandstats cannot tell a lease renewal from a presence transition, because both are
    EVALSHA, nor a command a script ran from one a client sent. MONITOR shows each command
    with its client, so this names every EVALSHA by its script. It costs Redis a write to
    this connection per command, so it runs only in phases with little traffic.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.script_names = {
            hashlib.sha1(source.encode()).hexdigest(): name
            for name, source in load_scripts().items()
        }
        self.counts: Counter[str] = Counter()
        self._stopping = threading.Event()
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> CommandMonitor:
        link = socket.create_connection((HOST, self.port), timeout=5.0)
        link.sendall(b"MONITOR\r\n")
        reply = link.recv(5)
        if reply != b"+OK\r\n":
            link.close()
            raise RuntimeError(f"MONITOR failed: {reply!r}")
        link.settimeout(0.1)
        self._socket = link
        self._thread = threading.Thread(target=self._read, name="redis-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5.0)
        if self._socket is not None:
            self._socket.close()

    def _read(self) -> None:
        assert self._socket is not None
        pending = b""
        while not self._stopping.is_set():
            try:
                data = self._socket.recv(65536)
            except TimeoutError:
                continue
            if not data:
                return
            *lines, pending = (pending + data).split(b"\r\n")
            for line in lines:
                self._count(line)

    def _count(self, line: bytes) -> None:
        found = MONITOR_LINE.match(line)
        if found is None or found.group(1) == b"lua":
            return
        command = found.group(2).decode().upper()
        if command in ("INFO", "MONITOR"):
            return
        if command == "EVALSHA" and found.group(3) is not None:
            sha = found.group(3).decode()
            command = f"EVALSHA {self.script_names.get(sha, sha[:12])}"
        self.counts[command] += 1


def _terminate_with_parent() -> None:
    """Ask Linux to send this child SIGTERM when the benchmark process dies (PR_SET_PDEATHSIG)."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 is PR_SET_PDEATHSIG


# --- server processes ------------------------------------------------------------------------


class ServerProcess:
    """One `tether serve` or `tether logic` child, started and stopped by its PID."""

    def __init__(self, name: str, command: list[str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # a terminal's Ctrl-C reaches only this script
            preexec_fn=_terminate_with_parent,
        )
        self.tcp_port = 0

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait for the "tether ready" line and read the TCP port from it."""
        stdout = self.popen.stdout
        assert stdout is not None
        readable, _, _ = select.select([stdout], [], [], timeout)
        line = stdout.readline() if readable else ""
        if not line.startswith("tether ready"):
            raise RuntimeError(
                f"{self.name} not ready within {timeout} s (first line {line!r}); "
                f"see {self.log_path}"
            )
        found = re.search(r"tcp=[\d.]+:(\d+)", line)
        self.tcp_port = int(found.group(1)) if found else 0

    @property
    def url(self) -> str:
        return f"tcp://{HOST}:{self.tcp_port}"

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self.popen.kill()
        self.popen.wait(10)

    def stop(self) -> None:
        """Send SIGTERM, then SIGKILL after 15 s, and close the pipes."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self._log.close()


def write_contacts(
    data_dir: Path,
    changers: list[str],
    watchers: list[str],
    contacts: int,
    chat_pairs: list[tuple[str, str]],
    seed: int,
) -> dict[str, list[str]]:
    """Store the contact graph before logic starts and return each changer's watchers."""
    chooser = random.Random(seed)
    watchers_of: dict[str, list[str]] = {changer: [] for changer in changers}

    async def write() -> None:
        store = await open_store(default_database(data_dir))
        try:
            async with store.transaction():
                for watcher in watchers:
                    for changer in chooser.sample(changers, min(contacts, len(changers))):
                        await store.add_contacts(watcher, changer)
                        watchers_of[changer].append(watcher)
                for sender, recipient in chat_pairs:
                    await store.add_contacts(sender, recipient)
        finally:
            await store.close()

    asyncio.run(write())
    return watchers_of


# --- load processes --------------------------------------------------------------------------


class HeartbeatConnection(asyncio.Protocol):
    """A raw TCP client that only sends Connect, then heartbeats, and counts the acks."""

    def __init__(self, worker: LoadWorker) -> None:
        self.worker = worker
        self.decoder = StreamDecoder(1 << 20)
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        for payload in self.decoder.feed(data):
            kind = pb.Frame.FromString(payload).WhichOneof("kind")
            if kind == "heartbeat_ack":
                self.worker.heartbeat_acks += 1
            elif kind == "presence_snapshot" and not self.opened.done():
                self.opened.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.worker.disconnects += 1
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed before the snapshot: {exc}"))


class LoadWorker:
    """Client side of the benchmark in a load process, which runs one command at a time."""

    def __init__(self) -> None:
        self.clients: dict[str, Client] = {}
        self.consumers: list[asyncio.Task[None]] = []
        self.snapshots = 0
        self.disconnects = 0
        # (receive time, watcher, watched user, status) of every PresenceChanged.
        self.receipts: list[tuple[float, str, str, str]] = []
        self.offline_receipts = 0
        # Send-to-receive seconds of every direct message received (the body is the send time).
        self.delivery_seconds: list[float] = []
        self.statuses: dict[str, str] = {}
        self.raw: list[HeartbeatConnection] = []
        self.heartbeat_acks = 0

    async def run(self, connection: Connection) -> None:
        loop = asyncio.get_running_loop()
        commands: dict[str, Callable[..., Any]] = {
            "open": self.open_clients,
            "set_status": self.change_statuses,
            "chat": self.chat,
            "take_receipts": self.take_receipts,
            "wait_offline": self.wait_offline,
            "take_deliveries": self.take_deliveries,
            "open_raw": self.open_raw,
            "heartbeat": self.heartbeat,
        }
        while True:
            name, arguments = await loop.run_in_executor(None, connection.recv)
            if name == "stop":
                await self.close()
                connection.send({"stopped": True})
                return
            try:
                reply = await commands[name](**arguments)
            except Exception as error:
                reply = {"error": f"{name} failed: {type(error).__name__}: {error}"}
            connection.send(reply)

    async def open_clients(self, url: str, users: list[str], timeout: float) -> dict[str, Any]:
        """Connect one SDK client per user and wait until each received its snapshot."""
        limit = asyncio.Semaphore(CONNECT_CONCURRENCY)
        expected = self.snapshots + len(users)

        async def open_one(user: str) -> None:
            client = Client(
                url,
                issue_token(SECRET, user),
                "bench",
                reconnect=False,
                connect_timeout=timeout,
                ack_timeout=timeout,
            )
            self.clients[user] = client
            self.statuses[user] = "online"
            self.consumers.append(asyncio.create_task(self._consume(user, client)))
            async with limit:
                await client.connect()

        await asyncio.gather(*(open_one(user) for user in users))
        deadline = time.monotonic() + timeout
        while self.snapshots < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{expected - self.snapshots} snapshots missing after {timeout} s"
                )
            await asyncio.sleep(0.05)
        return {"opened": len(users)}

    async def _consume(self, user: str, client: Client) -> None:
        async for event in client.events():
            now = time.time()
            if isinstance(event, ev.PresenceChanged):
                status = event.presence.status
                self.receipts.append((now, user, event.presence.user_id, status))
                if status == "offline":
                    self.offline_receipts += 1
            elif isinstance(event, ev.Message):
                self.delivery_seconds.append(now - float(event.body))
            elif isinstance(event, ev.PresenceSnapshot):
                self.snapshots += 1
            elif isinstance(event, ev.Disconnected):
                self.disconnects += 1

    async def change_statuses(self, users: list[str], count: int, rate: float) -> dict[str, Any]:
        """Toggle users between away and online, round-robin, `rate` changes per second."""
        loop = asyncio.get_running_loop()
        sends: list[tuple[float, str, str]] = []
        errors = 0
        started = loop.time()
        for index in range(count):
            await asyncio.sleep(max(0.0, started + index / rate - loop.time()))
            user = users[index % len(users)]
            status = "away" if self.statuses[user] == "online" else "online"
            self.statuses[user] = status
            sent_at = time.time()
            try:
                await self.clients[user].set_status(status)
            except (ConnectionError, OSError):
                errors += 1
                continue
            sends.append((sent_at, user, status))
        return {"sends": sends, "errors": errors, "seconds": loop.time() - started}

    async def chat(
        self, pairs: list[tuple[str, str]], count: int, rate: float, ack_timeout: float
    ) -> dict[str, Any]:
        """Send `count` direct messages at `rate` per second, alternating direction per pair."""
        loop = asyncio.get_running_loop()
        ack_seconds: list[float] = []
        failures: Counter[str] = Counter()

        async def send_one(sender: str, recipient: str) -> None:
            sent_at = time.time()
            try:
                await asyncio.wait_for(
                    self.clients[sender].send(recipient, repr(sent_at)), ack_timeout
                )
            except Exception as error:
                failures[type(error).__name__] += 1
                return
            ack_seconds.append(time.time() - sent_at)

        tasks = []
        started = loop.time()
        for index in range(count):
            await asyncio.sleep(max(0.0, started + index / rate - loop.time()))
            first, second = pairs[index % len(pairs)]
            sender, recipient = (
                (first, second) if (index // len(pairs)) % 2 == 0 else (second, first)
            )
            tasks.append(asyncio.create_task(send_one(sender, recipient)))
        await asyncio.gather(*tasks)
        return {
            "sent": count,
            "acked": len(ack_seconds),
            "failures": dict(failures),
            "ack_seconds": ack_seconds,
            "seconds": loop.time() - started,
        }

    async def take_deliveries(self, expected: int, timeout: float) -> dict[str, Any]:
        """Wait for `expected` messages or `timeout`, then return and clear their latencies."""
        deadline = time.monotonic() + timeout
        while len(self.delivery_seconds) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        latencies, self.delivery_seconds = self.delivery_seconds, []
        return {"delivery_seconds": latencies}

    async def take_receipts(self, quiet: float, timeout: float) -> dict[str, Any]:
        """Wait until no notification arrived for `quiet` seconds, then return and clear them."""
        deadline = time.monotonic() + timeout
        seen = -1
        while seen != len(self.receipts) and time.monotonic() < deadline:
            seen = len(self.receipts)
            await asyncio.sleep(quiet)
        receipts, self.receipts = self.receipts, []
        return {"receipts": receipts, "disconnects": self.disconnects}

    async def wait_offline(self, expected: int, timeout: float) -> dict[str, Any]:
        """Wait for `expected` more OFFLINE notifications, then return and clear every receipt."""
        target = self.offline_receipts + expected
        deadline = time.monotonic() + timeout
        while self.offline_receipts < target and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        receipts, self.receipts = self.receipts, []
        return {"receipts": receipts, "complete": self.offline_receipts >= target}

    async def open_raw(self, urls: list[str], users: list[str], timeout: float) -> dict[str, Any]:
        """Open raw heartbeat connections, spread over `urls`, and wait for their snapshots."""
        loop = asyncio.get_running_loop()
        limit = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def open_one(index: int, user: str) -> None:
            port = int(urls[index % len(urls)].rsplit(":", 1)[1])
            async with limit:
                _, protocol = await loop.create_connection(
                    lambda: HeartbeatConnection(self), HOST, port
                )
                connect = pb.Connect(
                    protocol_version=PROTOCOL_VERSION,
                    token=issue_token(SECRET, user),
                    device_id="raw",
                )
                assert protocol.transport is not None
                protocol.transport.write(
                    prefix_frame(pb.Frame(connect=connect).SerializeToString())
                )
                await asyncio.wait_for(protocol.opened, timeout)
            self.raw.append(protocol)

        await asyncio.gather(*(open_one(index, user) for index, user in enumerate(users)))
        return {"opened": len(self.raw)}

    async def heartbeat(self, interval: float, duration: float) -> dict[str, Any]:
        """Send each raw connection one heartbeat per `interval`, spread evenly, for `duration`."""
        loop = asyncio.get_running_loop()
        connections = self.raw
        total = int(len(connections) * duration / interval)
        step = interval / len(connections)
        acks_before = self.heartbeat_acks
        started = loop.time()
        sent = 0
        while sent < total:
            due = min(total, int((loop.time() - started) / step) + 1)
            for index in range(sent, due):
                transport = connections[index % len(connections)].transport
                assert transport is not None
                frame = pb.Frame(heartbeat=pb.Heartbeat(nonce=index))
                transport.write(prefix_frame(frame.SerializeToString()))
            sent = due
            await asyncio.sleep(0.005)
        elapsed = loop.time() - started
        deadline = time.monotonic() + 5.0
        while self.heartbeat_acks - acks_before < total and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return {"sent": total, "acked": self.heartbeat_acks - acks_before, "seconds": elapsed}

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self.clients.values()))
        for task in self.consumers:
            task.cancel()
        for connection in self.raw:
            if connection.transport is not None:
                connection.transport.close()


def load_process(connection: Connection, deadline: float) -> None:
    """Entry point of a load process: run commands from the pipe until "stop"."""
    signal.alarm(int(deadline))  # the default SIGALRM action ends the process
    uvloop.run(LoadWorker().run(connection))


class LoadProcess:
    """A load process and the pipe that carries its commands."""

    def __init__(self, name: str, deadline: float) -> None:
        context = multiprocessing.get_context("spawn")
        self.name = name
        self.pipe, child_end = context.Pipe()
        self.process = context.Process(
            target=load_process, args=(child_end, deadline), name=name, daemon=True
        )
        self.process.start()
        child_end.close()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def start(self, command: str, /, **arguments: Any) -> None:
        self.pipe.send((command, arguments))

    def result(self, timeout: float) -> dict[str, Any]:
        if not self.pipe.poll(timeout):
            raise TimeoutError(f"load process {self.name} did not reply within {timeout} s")
        reply: dict[str, Any] = self.pipe.recv()
        if "error" in reply:
            raise RuntimeError(f"load process {self.name}: {reply['error']}")
        return reply

    def call(self, command: str, reply_timeout: float, /, **arguments: Any) -> dict[str, Any]:
        self.start(command, **arguments)
        return self.result(reply_timeout)

    def stop(self) -> None:
        """Ask the process to close its clients and exit, else send SIGTERM, then SIGKILL."""
        if self.process.is_alive():
            with contextlib.suppress(OSError, TimeoutError, RuntimeError):
                self.call("stop", 10.0)
            self.process.join(5.0)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5.0)
        self.pipe.close()


# --- analysis --------------------------------------------------------------------------------


def attribute_commands(
    phase: Counter[str], seconds: float, baseline: Counter[str], baseline_seconds: float
) -> dict[str, float]:
    """Return per command type the calls of a phase minus the baseline's calls for its length."""
    scale = seconds / baseline_seconds
    return {
        command: round(phase[command] - baseline[command] * scale, 1)
        for command in sorted(set(phase) | set(baseline))
    }


# --- the run ---------------------------------------------------------------------------------


class Phase(NamedTuple):
    """Result and cost of one measured phase."""

    result: Any
    counts: Counter[str]
    """Calls per command type from INFO commandstats, scripts' inner commands included."""
    seconds: float
    cpu_percent: dict[str, float]
    """CPU time of each process over the phase, in percent of one core."""
    client_commands: Counter[str] | None
    """Commands sent by clients, from MONITOR, when the phase ran with it."""


class Benchmark:
    """Processes of one run and the measurements taken from them."""

    def __init__(self, arguments: argparse.Namespace, workdir: Path) -> None:
        self.arguments = arguments
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.step = arguments.step_timeout
        self.changers = [f"c{i:04d}" for i in range(arguments.changers)]
        self.watchers = [f"w{i:04d}" for i in range(arguments.watchers)]
        self.pairs = [(f"m{i:04d}a", f"m{i:04d}b") for i in range(arguments.chat_pairs)]
        self.watchers_of: dict[str, list[str]] = {}
        self.redis_server: RedisServer | None = None
        self.servers: dict[str, ServerProcess] = {}
        self.loads: dict[str, LoadProcess] = {}
        self.redis: redis.Redis | None = None
        self.baseline: Phase | None = None
        self.results: dict[str, Any] = {}

    # Starting and stopping.

    def start(self) -> None:
        """Write the contacts, then start Redis, logic, both gateways and the load processes."""
        arguments = self.arguments
        self.data_dir.mkdir(parents=True)
        self.watchers_of = write_contacts(
            self.data_dir,
            self.changers,
            self.watchers,
            arguments.contacts,
            self.pairs,
            arguments.seed,
        )

        self.redis_server = RedisServer(self.workdir / "redis")
        self.redis_server.start()
        self.redis = redis.Redis.from_url(self.redis_server.url)
        # fmt: off
        common = ["--data-dir", str(self.data_dir), "--secret", SECRET,
                  "--redis", self.redis_server.url, "--lease-timeout", str(arguments.lease_timeout),
                  "--log-level", "warning"]
        gateway_options = ["--logic", "false", "--host", HOST,
                           "--tcp-port", "0", "--ws-port", "off"]
        # fmt: on

        logic = ServerProcess("logic", [*TETHER, "logic", *common], self.workdir / "logic.log")
        self.servers["logic"] = logic
        logic.wait_ready()
        for name in ("gw1", "gw2"):
            command = [*TETHER, "serve", *common, *gateway_options, "--gateway-id", name]
            gateway = ServerProcess(name, command, self.workdir / f"{name}.log")
            self.servers[name] = gateway
            gateway.wait_ready()

        for name in ("changers", "watchers", "chat"):
            self.loads[name] = LoadProcess(name, arguments.deadline)

    def stop(self) -> None:
        """Stop every process this run started, each by its PID: clients, gateways, logic, Redis."""
        for load in self.loads.values():
            load.stop()
        for name in ("gw2", "gw1", "logic"):
            server = self.servers.get(name)
            if server is not None:
                server.stop()
        if self.redis is not None:
            self.redis.close()
        if self.redis_server is not None:
            self.redis_server.stop()

    # Measuring.

    def cpu_snapshot(self) -> dict[str, float]:
        pids = {name: server.popen.pid for name, server in self.servers.items()}
        pids.update({f"load:{name}": load.pid for name, load in self.loads.items()})
        if self.redis_server is not None and self.redis_server.process is not None:
            pids["redis"] = self.redis_server.process.pid
        snapshot = {name: read_cpu_seconds(pid) for name, pid in pids.items()}
        # Everything on the machine, this script and processes it did not start included.
        snapshot["machine"] = read_machine_busy_seconds()
        return snapshot

    def measure(self, run: Callable[[], Any], *, monitor: bool = False) -> Phase:
        """Run one phase and return what it cost, optionally with MONITOR running."""
        assert self.redis is not None and self.redis_server is not None
        watcher = CommandMonitor(self.redis_server.port) if monitor else None
        with watcher or contextlib.nullcontext():
            counts_before = command_counts(self.redis)
            cpu_before = self.cpu_snapshot()
            started = time.monotonic()
            result = run()
            seconds = time.monotonic() - started
            cpu_after = self.cpu_snapshot()
            counts = command_counts(self.redis)
        counts.subtract(counts_before)
        cpu = {
            name: round((cpu_after[name] - cpu_before[name]) / seconds * 100, 1)
            for name in cpu_before
            if not math.isnan(cpu_after[name])
        }
        client_commands = None if watcher is None else watcher.counts
        return Phase(result, +counts, seconds, cpu, client_commands)

    def attribute(self, phase: Phase) -> dict[str, float]:
        """Return a phase's calls per command type minus the baseline's for the same length."""
        baseline = self.baseline
        assert baseline is not None
        return attribute_commands(phase.counts, phase.seconds, baseline.counts, baseline.seconds)

    # Phases.

    def measure_baseline(self) -> None:
        """Measure phase 1, without clients, whose commands every later phase subtracts."""
        time.sleep(SETTLE_SECONDS)  # past the first lease renewal and reaper pass
        self.baseline = baseline = self.measure(
            lambda: time.sleep(self.arguments.idle_seconds), monitor=True
        )
        seconds = baseline.seconds
        assert baseline.client_commands is not None
        self.results["baseline"] = {
            "seconds": round(seconds, 2),
            "commands_per_second": {
                command: round(calls / seconds, 2) for command, calls in baseline.counts.items()
            },
            "client_commands_per_second": {
                command: round(calls / seconds, 2)
                for command, calls in baseline.client_commands.items()
            },
            "cpu_percent": baseline.cpu_percent,
        }

    def open_clients(self) -> None:
        """Connect changers, then watchers (whose snapshots show the changers online), then chat."""
        gw1, gw2 = self.servers["gw1"], self.servers["gw2"]
        step = self.step
        self.loads["changers"].call("open", step, url=gw1.url, users=self.changers, timeout=step)
        self.loads["watchers"].call("open", step, url=gw2.url, users=self.watchers, timeout=step)
        senders, recipients = [a for a, _ in self.pairs], [b for _, b in self.pairs]
        self.loads["chat"].call("open", step, url=gw1.url, users=senders, timeout=step)
        self.loads["chat"].call("open", step, url=gw2.url, users=recipients, timeout=step)
        time.sleep(SETTLE_SECONDS)
        self.loads["watchers"].call("take_receipts", step, quiet=0.2, timeout=step)

    def measure_presence(self, name: str, *, with_chat: bool) -> None:
        """Measure phase 2 or 3: status changes at a fixed rate, alone or while chat runs."""
        arguments, loads, step = self.arguments, self.loads, self.step
        change_seconds = arguments.changes / arguments.change_rate
        chat_count = int(arguments.chat_rate * change_seconds)

        def run() -> dict[str, Any]:
            loads["changers"].start(
                "set_status",
                users=self.changers,
                count=arguments.changes,
                rate=arguments.change_rate,
            )
            if with_chat:
                loads["chat"].start(
                    "chat",
                    pairs=self.pairs,
                    count=chat_count,
                    rate=arguments.chat_rate,
                    ack_timeout=10.0,
                )
            changes = loads["changers"].result(change_seconds + step)
            chat = loads["chat"].result(change_seconds + step) if with_chat else None
            receipts = loads["watchers"].call(
                "take_receipts",
                step + MAX_DRAIN_SECONDS,
                quiet=QUIET_SECONDS,
                timeout=MAX_DRAIN_SECONDS,
            )
            return {"changes": changes, "chat": chat, "receipts": receipts}

        phase = self.measure(run)
        changes, receipts = phase.result["changes"], phase.result["receipts"]
        sends = changes["sends"]
        attributed = self.attribute(phase)
        result: dict[str, Any] = {
            "latency": match_latencies(sends, receipts["receipts"], self.watchers_of),
            "change_errors": changes["errors"],
            "change_seconds": round(changes["seconds"], 2),
            "watcher_disconnects": receipts["disconnects"],
            "phase_seconds": round(phase.seconds, 2),
            "redis_commands_attributed": attributed,
            "cpu_percent": phase.cpu_percent,
        }
        if with_chat:
            chat = phase.result["chat"]
            delivered = loads["chat"].call(
                "take_deliveries", step, expected=chat["acked"], timeout=5.0
            )
            result["chat"] = {
                "sent": chat["sent"],
                "acked": chat["acked"],
                "failures": chat["failures"],
                "rate_per_second": round(chat["sent"] / chat["seconds"], 1),
                "ack_latency": summarize_ms(chat["ack_seconds"]),
                "delivery_latency": summarize_ms(delivered["delivery_seconds"]),
            }
        else:
            # Only this phase has no other traffic, so only here do the commands divide by the
            # transitions.
            result["redis_commands_per_transition"] = round(
                sum(attributed.values()) / len(sends), 2
            )
            result["evalsha_per_transition"] = round(attributed.get("evalsha", 0.0) / len(sends), 3)
        self.results[name] = result

    def measure_heartbeats(self) -> None:
        """Measure phase 4: raw connections that only send heartbeats, with MONITOR running."""
        arguments, loads, step = self.arguments, self.loads, self.step
        gateways = [self.servers["gw1"].url, self.servers["gw2"].url]
        users = [f"h{i:05d}" for i in range(arguments.heartbeat_connections)]
        loads["chat"].call("open_raw", step, urls=gateways, users=users, timeout=step)
        time.sleep(SETTLE_SECONDS)

        phase = self.measure(
            lambda: loads["chat"].call(
                "heartbeat",
                arguments.idle_seconds + step,
                interval=arguments.heartbeat_interval,
                duration=arguments.idle_seconds,
            ),
            monitor=True,
        )

        sent = phase.result["sent"]
        attributed = self.attribute(phase)
        assert phase.client_commands is not None
        # Only heartbeats flow in this phase, so a command that no timer sends came from one.
        other = {c: n for c, n in phase.client_commands.items() if c not in PERIODIC_COMMANDS}
        self.results["heartbeats"] = {
            "connections": len(users),
            "sent": sent,
            "acked": phase.result["acked"],
            "phase_seconds": round(phase.seconds, 2),
            "redis_commands": dict(phase.counts),
            "redis_commands_attributed": attributed,
            "redis_commands_per_heartbeat_after_baseline": round(
                sum(attributed.values()) / sent, 5
            ),
            "client_commands": dict(phase.client_commands),
            "client_commands_not_periodic": other,
            "redis_commands_per_heartbeat": sum(other.values()) / sent,
            "cpu_percent": phase.cpu_percent,
        }

    def measure_gateway_kill(self) -> None:
        """Measure phase 5: SIGKILL gw1, then wait until each watcher saw its changers offline."""
        arguments, loads, step = self.arguments, self.loads, self.step
        loads["watchers"].call("take_receipts", step, quiet=0.2, timeout=step)
        expected = sum(len(watching) for watching in self.watchers_of.values())
        wait = arguments.lease_timeout + 1.0 + KILL_WAIT_MARGIN
        killed_at = time.time()
        self.servers["gw1"].kill()
        offline = loads["watchers"].call(
            "wait_offline", wait + step, expected=expected, timeout=wait
        )
        self.results["gateway_kill"] = {
            "lease_timeout_s": arguments.lease_timeout,
            "complete": offline["complete"],
            **kill_summary(killed_at, offline["receipts"], self.watchers_of),
        }

    def run(self) -> None:
        self.start()
        self.measure_baseline()
        self.open_clients()
        self.measure_presence("presence", with_chat=False)
        self.measure_presence("presence+chat", with_chat=True)
        self.measure_heartbeats()
        self.measure_gateway_kill()


# --- report ----------------------------------------------------------------------------------


def machine_info(redis_version: str) -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        ).stdout.strip()
        dirty = (
            subprocess.run(
                ["git", "status", "--porcelain", "src"],
                capture_output=True,
                text=True,
                check=False,
                timeout=10,
            ).stdout.strip()
            != ""
        )
    except OSError:
        commit, dirty = "", False
    return {
        "cpus": os.cpu_count(),
        "load_average_1_min_at_end": os.getloadavg()[0],
        "python": platform.python_version(),
        "redis": redis_version,
        "platform": platform.platform(),
        "git_commit": commit,
        "src_has_uncommitted_changes": dirty,
    }


def print_table(results: dict[str, Any]) -> None:
    def row(label: str, value: object) -> None:
        print(f"  {label:<50} {value}")

    def triple(summary: dict[str, Any]) -> str:
        return f"{summary['p50_ms']} / {summary['p99_ms']} / {summary['max_ms']}"

    settings = results["settings"]
    print(
        f"cluster presence: {settings['changers']} changers on gw1, {settings['watchers']} "
        f"watchers on gw2, {settings['contacts']} contacts each, "
        f"{settings['change_rate']} changes/s, lease timeout {settings['lease_timeout']} s"
    )
    for name in ("presence", "presence+chat"):
        result = results[name]
        latency = result["latency"]
        print(f"{name}:")
        expected, received = latency["expected_notifications"], latency["count"]
        row(
            "changes / notifications expected / matched",
            f"{latency['changes']} / {expected} / {received} (unmatched {latency['unmatched']})",
        )
        row("change -> contact notified p50 / p99 / max (ms)", triple(latency))
        row("  first watcher of each change (ms)", triple(latency["first_watcher"]))
        row("  last watcher of each change (ms)", triple(latency["last_watcher"]))
        if "redis_commands_per_transition" in result:
            row(
                "Redis commands per transition (of them EVALSHA)",
                f"{result['redis_commands_per_transition']} ({result['evalsha_per_transition']})",
            )
        if "chat" in result:
            chat = result["chat"]
            row(
                "chat messages sent / acked (per second)",
                f"{chat['sent']} / {chat['acked']} ({chat['rate_per_second']})",
            )
            row("chat send -> ack p50 / p99 / max (ms)", triple(chat["ack_latency"]))
            row("chat send -> delivered p50 / p99 / max (ms)", triple(chat["delivery_latency"]))
        row("CPU % of one core per process", result["cpu_percent"])
    beats = results["heartbeats"]
    print("heartbeats:")
    row(
        "connections / heartbeats sent / acked",
        f"{beats['connections']} / {beats['sent']} / {beats['acked']}",
    )
    row("client commands other than timers (MONITOR)", beats["client_commands_not_periodic"])
    row("Redis commands per heartbeat (MONITOR)", beats["redis_commands_per_heartbeat"])
    row(
        "commands per heartbeat, commandstats - baseline",
        beats["redis_commands_per_heartbeat_after_baseline"],
    )
    kill = results["gateway_kill"]
    print("gateway kill:")
    row(
        "users with all watchers notified / incomplete",
        f"{kill['users_all_watchers_notified']} / {kill['users_incomplete']}",
    )
    row(
        "SIGKILL -> all watchers see offline p50 / max (s)",
        f"{kill['user_p50_s']} / {kill['user_max_s']}",
    )


# Options: name, type, default, help. Counts must be at least 1 and times and rates positive.
OPTIONS: list[tuple[str, type, float, str]] = [
    ("--changers", int, 200, "users on gw1 that change status"),
    ("--watchers", int, 200, "users on gw2 that watch the changers"),
    ("--contacts", int, 50, "changers among each watcher's contacts"),
    ("--changes", int, 200, "status changes in each of the two presence phases"),
    ("--change-rate", float, 20.0, "status changes per second"),
    ("--chat-pairs", int, 50, "pairs of users, one on each gateway, that exchange messages"),
    ("--chat-rate", float, 50.0, "direct messages per second during presence+chat"),
    (
        "--heartbeat-connections",
        int,
        500,
        "raw connections of the heartbeat phase, half per gateway",
    ),
    ("--heartbeat-interval", float, 0.5, "seconds between heartbeats of one raw connection"),
    ("--idle-seconds", float, 10.0, "seconds of the baseline phase and of the heartbeat phase"),
    ("--lease-timeout", float, 5.0, "gateway lease timeout in seconds (tether's default is 5)"),
    ("--step-timeout", float, 60.0, "seconds one step (connecting, draining, ...) may take"),
    (
        "--deadline",
        float,
        600.0,
        "seconds after which each load process exits; must exceed the run",
    ),
]


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for option, kind, default, text in OPTIONS:
        parser.add_argument(option, type=kind, default=kind(default), help=text)
    parser.add_argument("--seed", type=int, default=1, help="seed of the random contact graph")
    parser.add_argument("--output", type=Path, default=RESULTS_PATH, help="JSON results file")
    arguments = parser.parse_args()

    for option, kind, _, _ in OPTIONS:
        value = getattr(arguments, option.removeprefix("--").replace("-", "_"))
        if kind is int and value < 1:
            parser.error(f"{option} must be at least 1, got {value}")
        if kind is float and not (math.isfinite(value) and value > 0):
            parser.error(f"{option} must be a positive number, got {value}")
    if arguments.contacts > arguments.changers:
        parser.error(f"--contacts ({arguments.contacts}) must not exceed --changers")
    return arguments


def main() -> int:
    arguments = parse_arguments()
    workdir = Path(tempfile.mkdtemp(prefix="tether-cluster-bench-"))
    benchmark = Benchmark(arguments, workdir)
    started = time.monotonic()
    try:
        benchmark.run()
    except BaseException:
        print(f"benchmark failed; process logs kept in {workdir}", file=sys.stderr)
        raise
    finally:
        benchmark.stop()
    assert benchmark.redis_server is not None
    results: dict[str, Any] = {
        "machine": machine_info(benchmark.redis_server.version()),
        "settings": {
            key: str(value) if isinstance(value, Path) else value
            for key, value in vars(arguments).items()
        },
        "command": " ".join([".venv/bin/python", "bench/cluster_presence.py", *sys.argv[1:]]),
        "wall_seconds": round(time.monotonic() - started, 1),
        **benchmark.results,
    }
    shutil.rmtree(workdir, ignore_errors=True)
    print_table(results)
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {arguments.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
