"""The servers a benchmark measures: tether, the floor and the Socket.IO peers, as child processes.

Every target is a set of child processes on free ports of 127.0.0.1, started and stopped by their
PIDs. Each gateway process prints one ready line with its address, such as
`tether ready tcp=127.0.0.1:PORT ws=127.0.0.1:PORT/ws` (tether and the floor) or
`peer ready ws=127.0.0.1:PORT` (the peers). In cluster mode a private Redis server is started
too (`tether.local_redis`).

- tether: `tether serve`, embedded (one process with presence and the SQLite logic) or a cluster
  (gateways, one logic worker and Redis). The per-address and connection-rate limits are lifted,
  because every load connection comes from 127.0.0.1 in bursts.
- floor: bench/floor_server.py, a bare uvloop protocol with the same framing and Protobuf code that
  replies to Connect and Heartbeat and pushes a Send straight to the recipient's connection, with no
  store, bus, presence or limits. Embedded only.
- python-socketio and node-socketio: bench/peers/socketio_server.py and .js, installed by
  `tether bench setup`. In cluster mode each process uses the Redis manager or adapter. A
  group is a Socket.IO room that its members' sockets join.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import re
import select
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.local_redis import RedisServer
from tether.logic import default_database, open_store

if TYPE_CHECKING:
    # profile.py imports stop_child from here, so Profiler is imported where it is used.
    from tether.bench.profile import Profiler

__all__ = [
    "PEERS",
    "TARGETS",
    "Target",
    "TargetOptions",
    "find_bench_dir",
    "make_target",
    "stop_child",
]

SECRET = "tether-bench-secret-of-at-least-32-bytes"
PEERS = ("python-socketio", "node-socketio")
TARGETS = ("tether", "floor", *PEERS)
_START_TIMEOUT = 60.0
_READY = re.compile(r"(tcp|ws)=([\d.]+):(\d+)(\S*)")


def find_bench_dir() -> Path:
    """Return the repository's bench/ folder: ./bench, else the one beside the source tree."""
    for candidate in (Path.cwd() / "bench", Path(__file__).resolve().parents[3] / "bench"):
        if (candidate / "floor_server.py").is_file():
            return candidate
    raise FileNotFoundError(
        "bench/floor_server.py not found; run `tether bench` from the repository's root folder"
    )


@dataclass(frozen=True, kw_only=True)
class TargetOptions:
    """How to start a target."""

    mode: str = "embedded"
    """embedded: one server process; cluster: several gateways joined by Redis."""
    gateways: int = 2
    """Gateway processes in cluster mode."""
    transport: str = "tcp"
    """tcp or ws: tether's transport for the load clients (the peers always use WebSocket)."""
    heartbeat_interval: float = 4.0
    """Seconds between heartbeats (tether) or pings (Socket.IO pingInterval)."""
    lease_timeout: float = 5.0
    """tether cluster: seconds a killed gateway's users stay online."""
    grace_period: float = 5.0
    """tether: seconds a user's last device may be gone before contacts see offline."""
    connections_per_second: float = 1_000_000.0
    """tether: new connections a gateway accepts per second."""
    results_dir: Path = Path("bench/results")
    """Folder of the results, with the peers installed under peers/."""
    profile: bool = False
    """Record every Python server process with py-spy into the work folder (`profile.py`)."""
    pushes_per_second: float | None = None
    """tether: the gateways' `--pushes-per-second`; None keeps the server's default."""
    push_burst: int | None = None
    """tether: the gateways' `--push-burst`; None keeps the server's default."""
    extra: dict[str, str] = field(default_factory=dict)


class ServerProcess:
    """One child process of a target, with the address from its ready line."""

    def __init__(
        self, name: str, command: list[str], log_path: Path, env: Mapping[str, str]
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # a terminal's Ctrl-C reaches only the runner
            preexec_fn=_terminate_with_parent,
        )
        self.addresses: dict[str, str] = {}
        """Scheme ("tcp" or "ws") to URL, read from the ready line."""
        self.ports: list[int] = []

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_ready(self, timeout: float = _START_TIMEOUT) -> None:
        """Wait for the ready line and read the addresses from it."""
        stdout = self.popen.stdout
        assert stdout is not None
        readable, _, _ = select.select([stdout], [], [], timeout)
        line = stdout.readline() if readable else ""
        if " ready" not in line:
            raise RuntimeError(
                f"{self.name} not ready within {timeout} s (first line {line!r}); "
                f"see {self.log_path}"
            )
        for scheme, host, port, path in _READY.findall(line):
            if port != "0":
                self.addresses[scheme] = f"{scheme}://{host}:{port}{path}"
                self.ports.append(int(port))

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)

    def stop(self) -> None:
        """Send SIGTERM, then SIGKILL after 15 s, and close the pipes."""
        stop_child(self.popen, signal.SIGTERM, 15.0)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self._log.close()


def stop_child(popen: subprocess.Popen[Any], signal_number: int, timeout: float) -> None:
    """Send `signal_number` to a running child, SIGKILL it after `timeout` s, and reap it."""
    if popen.poll() is None:
        popen.send_signal(signal_number)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(10)


def _terminate_with_parent() -> None:
    """Ask Linux to send this child SIGTERM when the runner dies (PR_SET_PDEATHSIG)."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 is PR_SET_PDEATHSIG


class Target:
    """One server under test: its processes, the URLs its clients use and what to measure."""

    protocol = "tether"
    """Protocol of its clients: tether or socketio."""

    def __init__(self, name: str, workdir: Path, options: TargetOptions) -> None:
        self.name = name
        self.workdir = workdir
        self.options = options
        self.redis: RedisServer | None = None
        self.gateways: list[ServerProcess] = []
        self.others: list[ServerProcess] = []
        """Server processes that hold no client connections (tether's logic worker)."""
        self.profilers: dict[str, Profiler] = {}
        """py-spy recorders by server process name, with `options.profile`."""

    @property
    def urls(self) -> list[str]:
        """One client URL per gateway process."""
        scheme = "ws" if self.protocol == "socketio" else self.options.transport
        return [gateway.addresses[scheme] for gateway in self.gateways]

    @property
    def ports(self) -> list[int]:
        """Listening ports of every gateway, for `ss`."""
        return [port for gateway in self.gateways for port in gateway.ports]

    def server_pids(self) -> dict[str, int]:
        """Return the PID of every server-side process by name: gateways, logic worker, Redis."""
        pids = {process.name: process.pid for process in [*self.gateways, *self.others]}
        if self.redis is not None and self.redis.process is not None:
            pids["redis"] = self.redis.process.pid
        return pids

    async def start(
        self,
        contacts: Mapping[str, Sequence[str]],
        groups: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """Start every process, with `contacts` (mutual) and `groups` known to the server.

        `groups` maps a group id to its members, the first of them its owner.
        """
        raise NotImplementedError

    def kill_gateway(self, index: int) -> None:
        self.gateways[index].kill()

    def stop(self) -> None:
        """Stop the profilers, gateways, the other processes, then Redis, each by its PID."""
        for profiler in self.profilers.values():
            profiler.stop()
        for process in [*reversed(self.gateways), *self.others]:
            process.stop()
        if self.redis is not None:
            self.redis.stop()

    def _start_redis(self) -> str:
        self.redis = RedisServer(self.workdir / "redis")
        self.redis.start()
        return self.redis.url

    async def _spawn(
        self, name: str, command: list[str], env: Mapping[str, str] | None = None
    ) -> ServerProcess:
        process = ServerProcess(name, command, self.workdir / f"{name}.log", env or {})
        await asyncio.to_thread(process.wait_ready)
        if self.options.profile and Path(command[0]).name.startswith("python"):
            from tether.bench.profile import Profiler

            output = self.workdir / f"{name}.pyspy.txt"
            self.profilers[name] = Profiler(process.pid, output)
        return process


class TetherTarget(Target):
    async def start(
        self,
        contacts: Mapping[str, Sequence[str]],
        groups: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        options = self.options
        data_dir = self.workdir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        await _write_store(data_dir, contacts, groups or {})
        tether = [sys.executable, "-m", "tether"]
        common = ["--data-dir", str(data_dir), "--secret", SECRET, "--log-level", "warning"]
        gateway_options = [
            "--host", "127.0.0.1", "--tcp-port", "0",
            "--ws-port", "0" if options.transport == "ws" else "off",
            "--heartbeat-interval", str(options.heartbeat_interval),
            "--grace-period", str(options.grace_period),
            "--max-connections-per-ip", "10000000",
            "--new-connections-per-second", str(options.connections_per_second),
        ]  # fmt: skip
        if options.pushes_per_second is not None:
            gateway_options += ["--pushes-per-second", str(options.pushes_per_second)]
        if options.push_burst is not None:
            gateway_options += ["--push-burst", str(options.push_burst)]
        if options.mode == "embedded":
            command = [*tether, "serve", *common, *gateway_options]
            self.gateways.append(await self._spawn("tether", command))
            return
        url = await asyncio.to_thread(self._start_redis)
        cluster = [*common, "--redis", url, "--lease-timeout", str(options.lease_timeout)]
        self.others.append(await self._spawn("logic", [*tether, "logic", *cluster]))
        for index in range(options.gateways):
            name = f"gw{index + 1}"
            command = [*tether, "serve", *cluster, *gateway_options,
                       "--logic", "false", "--gateway-id", name]  # fmt: skip
            self.gateways.append(await self._spawn(name, command))


class FloorTarget(Target):
    async def start(
        self,
        contacts: Mapping[str, Sequence[str]],
        groups: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        if self.options.mode != "embedded" or self.options.transport != "tcp":
            raise ValueError("the floor runs only embedded, over TCP")
        if groups:
            raise ValueError("the floor has no groups")
        script = find_bench_dir() / "floor_server.py"
        command = [sys.executable, str(script), "--heartbeat-interval",
                   str(self.options.heartbeat_interval)]  # fmt: skip
        self.gateways.append(await self._spawn("floor", command))


class SocketIoTarget(Target):
    protocol = "socketio"

    def command(self, port_args: list[str]) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    async def start(
        self,
        contacts: Mapping[str, Sequence[str]],
        groups: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        contacts_file = self.workdir / "contacts.json"
        contacts_file.write_text(json.dumps({user: list(c) for user, c in contacts.items()}))
        arguments = ["--port", "0", "--contacts", str(contacts_file),
                     "--ping-interval", str(self.options.heartbeat_interval)]  # fmt: skip
        if groups:
            groups_file = self.workdir / "groups.json"
            groups_file.write_text(json.dumps({group: list(m) for group, m in groups.items()}))
            arguments += ["--groups", str(groups_file)]
        count = 1
        if self.options.mode == "cluster":
            url = await asyncio.to_thread(self._start_redis)
            arguments += ["--redis", url]
            count = self.options.gateways
        for index in range(count):
            command, env = self.command(arguments)
            self.gateways.append(await self._spawn(f"{self.name}{index + 1}", command, env))


class PythonSocketIoTarget(SocketIoTarget):
    def command(self, port_args: list[str]) -> tuple[list[str], dict[str, str]]:
        python = self.options.results_dir / "peers" / "python" / "bin" / "python"
        if not python.exists():
            raise FileNotFoundError(f"{python} not found; run `tether bench setup` first")
        script = find_bench_dir() / "peers" / "socketio_server.py"
        return [str(python), str(script), *port_args], {}


class NodeSocketIoTarget(SocketIoTarget):
    def command(self, port_args: list[str]) -> tuple[list[str], dict[str, str]]:
        modules = (self.options.results_dir / "peers" / "node" / "node_modules").resolve()
        if not modules.is_dir():
            raise FileNotFoundError(f"{modules} not found; run `tether bench setup` first")
        script = find_bench_dir() / "peers" / "socketio_server.js"
        return ["node", str(script), *port_args], {"NODE_PATH": str(modules)}


def make_target(name: str, workdir: Path, options: TargetOptions) -> Target:
    """Return the target called `name` (one of TARGETS), not yet started."""
    classes: dict[str, type[Target]] = {
        "tether": TetherTarget,
        "floor": FloorTarget,
        "python-socketio": PythonSocketIoTarget,
        "node-socketio": NodeSocketIoTarget,
    }
    if name not in classes:
        raise ValueError(f"unknown target {name!r}: expected one of {', '.join(TARGETS)}")
    workdir.mkdir(parents=True, exist_ok=True)
    return classes[name](name, workdir, options)


async def _write_store(
    data_dir: Path,
    contacts: Mapping[str, Sequence[str]],
    groups: Mapping[str, Sequence[str]],
) -> None:
    """Store mutual contacts and groups in the logic's SQLite file before the servers start."""
    store = await open_store(default_database(data_dir))
    try:
        async with store.transaction():
            for user, others in contacts.items():
                for other in others:
                    if user < other or user not in contacts.get(other, ()):
                        await store.add_contacts(user, other)
            for group_id, (owner, *members) in groups.items():
                await store.create_group(group_id, owner)
                await store.add_group_members(group_id, members)
    finally:
        await store.close()
