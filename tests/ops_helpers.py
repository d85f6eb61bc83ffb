"""Helpers for the operations tests: tether processes and requests to their HTTP port."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from conftest import TIMEOUT, RawClient, add_contacts

from tether.protocol import tether_pb2 as pb
from tether.server import EmbeddedServer

TETHER = [sys.executable, "-m", "tether"]
T = TypeVar("T")


async def http_get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """Return the status and body of GET path on 127.0.0.1:port."""
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"http://127.0.0.1:{port}{path}", headers=headers) as response,
    ):
        return response.status, await response.text()


async def http_request(
    port: int,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: object = None,
) -> tuple[int, Any, dict[str, str]]:
    """Send a request to 127.0.0.1:port, with body as JSON if given, and follow no redirect.

    Returns the status, the decoded JSON (or the text of another type) and the headers.
    """
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.request(
            method,
            f"http://127.0.0.1:{port}{path}",
            headers=headers,
            json=body,
            allow_redirects=False,
        ) as response,
    ):
        text = await response.text()
        decoded = json.loads(text) if response.content_type == "application/json" else text
        return response.status, decoded, dict(response.headers)


async def poll_until(
    read: Callable[[], Awaitable[T]],
    condition: Callable[[T], bool],
    what: str,
    timeout: float = TIMEOUT,
) -> T:
    """Call read every 0.1 s until condition holds for its value; return that value.

    what names the value in the AssertionError raised after timeout seconds.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await read()
        if condition(value):
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} never met the condition in {timeout} s; last {value}")
        await asyncio.sleep(0.1)


async def wait_for_status(
    port: int, path: str, status: int, timeout: float = TIMEOUT
) -> tuple[int, str]:
    """Poll GET path until its status is the expected one; return the last status and body."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: tuple[int, str] = (0, "no answer")
    while loop.time() < deadline:
        try:
            last = await http_get(port, path)
        except aiohttp.ClientError as error:
            last = (0, str(error))
        if last[0] == status:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"GET {path} never answered {status} in {timeout} s; last {last}")


async def close_slow_consumer(server: EmbeddedServer) -> None:
    """Flood a user whose client never reads until the gateway closes it as a slow consumer.

    server should have a small max_outgoing_bytes (64 KiB in the tests). The users are
    "flooder" and "slow"; both connections are closed on return.
    """
    await add_contacts(server, "flooder", "slow")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.tcp_port))
    slow = RawClient(*await asyncio.open_connection(sock=sock))  # never reads
    slow.send_connect("slow", "phone")
    flooder = await RawClient.open(server)
    flooder.send_connect("flooder", "phone")
    await flooder.receive_kind("presence_snapshot")

    gateway = server.gateway
    assert gateway is not None
    # Bounded: 600 messages of 8 KB are about 5 MB, far more than the buffers hold.
    for number in range(600):
        send = pb.Send(client_message_id=f"m{number}", recipient="slow", body=bytes(8000))
        flooder.send(pb.Frame(send=send))
        await flooder.receive_kind("send_ack")
        if "slow" not in gateway.sessions:
            break
    slow.close()
    flooder.close()
    assert "slow" not in gateway.sessions, "the slow reader was never closed"


class TetherProcess:
    """A `tether` command started by a test, stopped by its PID; stderr goes to a file."""

    def __init__(self, arguments: list[str], directory: Path, name: str = "tether") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.stderr_path = directory / f"{name}.stderr"
        self._stderr = self.stderr_path.open("w")
        self.popen = subprocess.Popen(
            [*TETHER, *arguments], stdout=subprocess.PIPE, stderr=self._stderr, text=True
        )
        self.ready_line = ""

    async def wait_ready(self, timeout: float = TIMEOUT * 3) -> str:
        """Wait for the "tether ready" line on stdout and return it."""
        assert self.popen.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.popen.stdout.readline), timeout)
        if not line.startswith("tether ready"):
            self.kill()
            raise RuntimeError(f"tether did not start: {line!r} {self.stderr()}")
        self.ready_line = line
        return line

    def port(self, name: str) -> int:
        """Return the port the ready line gives for name (tcp, ws or http)."""
        found = re.search(rf"\b{name}=[\d.]+:(\d+)", self.ready_line)
        assert found is not None, f"no {name} port in {self.ready_line!r}"
        return int(found.group(1))

    def stderr(self) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text()

    def terminate(self) -> None:
        """Send SIGTERM, as Kubernetes does to stop a pod."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = TIMEOUT * 2) -> int:
        try:
            return self.popen.wait(timeout)
        finally:
            self._stderr.close()

    def stop(self) -> None:
        self.terminate()
        try:
            self.popen.wait(TIMEOUT * 2)
        except subprocess.TimeoutExpired:
            self.kill()
        self._stderr.close()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        self._stderr.close()
