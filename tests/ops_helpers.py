"""Helpers for the operations tests: tether processes and requests to their HTTP port."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
from conftest import TIMEOUT

TETHER = [sys.executable, "-m", "tether"]


async def http_get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """Return the status and body of GET path on 127.0.0.1:port."""
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"http://127.0.0.1:{port}{path}", headers=headers) as response,
    ):
        return response.status, await response.text()


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
