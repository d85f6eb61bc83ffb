"""The runner's side of the load processes, and the live progress line.

A `LoadProcess` is one `python -m tether.bench.load` child: the runner writes JSON commands to
its stdin and reads replies and progress lines from its stdout. A `LoadGroup` is several of them,
so that no process has more than `MAX_CLIENTS_PER_PROCESS` connections; the machine allows
20,000 open files per process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.bench.servers import SECRET, Target

__all__ = [
    "MAX_CLIENTS_PER_PROCESS",
    "STEP_TIMEOUT",
    "LoadGroup",
    "LoadProcess",
    "Progress",
    "Run",
    "open_all",
    "split",
]

MAX_CLIENTS_PER_PROCESS = 15_000
"""Clients per load process, below the 20,000 open files a process may hold here."""
STEP_TIMEOUT = 120.0
"""Seconds one step (opening clients, draining messages) may take."""


def split(items: Sequence[Any], parts: int) -> list[list[Any]]:
    """Split items into `parts` lists of nearly equal length, keeping their order."""
    if parts < 1:
        raise ValueError(f"parts must be at least 1, got {parts}")
    size, extra = divmod(len(items), parts)
    chunks, start = [], 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        chunks.append(list(items[start:end]))
        start = end
    return chunks


class Progress:
    """One status line on stderr: rewritten in place on a terminal, else printed every 5 s."""

    def __init__(self) -> None:
        self.label = ""
        self.loads: list[LoadProcess] = []
        self._task: asyncio.Task[None] | None = None
        self._tty = sys.stderr.isatty()
        self._last_print = 0.0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def phase(self, label: str) -> None:
        """Show a new phase at once."""
        self.label = label
        self._show(force=True)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._tty:
            sys.stderr.write("\n")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self._show(force=False)

    def _show(self, *, force: bool) -> None:
        totals: dict[str, int] = {}
        for load in self.loads:
            for key, value in load.progress.items():
                totals[key] = totals.get(key, 0) + int(value)
        counts = " ".join(f"{key} {value}" for key, value in totals.items())
        line = f"{self.label}  {counts}".rstrip()
        now = time.monotonic()
        if self._tty:
            sys.stderr.write("\r\x1b[K" + line)
            sys.stderr.flush()
        elif force or now - self._last_print >= 5.0:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
            self._last_print = now


class LoadProcess:
    """One load process and the pipe pair that carries its commands and replies."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.progress: dict[str, int] = {}
        self._process: asyncio.subprocess.Process | None = None
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    async def start(self, deadline: float, source_addresses: int = 1) -> None:
        """Start the process; its own SIGALRM ends it `deadline` seconds later."""
        with open(self.log_path, "w") as log:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tether.bench.load", "--deadline", str(int(deadline)),
                "--source-addresses", str(source_addresses),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                limit=1 << 28, start_new_session=True,
            )  # fmt: skip
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def call(self, command: str, timeout: float, /, **arguments: Any) -> dict[str, Any]:
        """Run one command in the process and return its reply; raise if it failed."""
        process = self._process
        assert process is not None and process.stdin is not None
        self._next_id += 1
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[self._next_id] = reply
        line = json.dumps({"id": self._next_id, "command": command, **arguments})
        process.stdin.write(line.encode() + b"\n")
        await process.stdin.drain()
        try:
            result = await asyncio.wait_for(reply, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"load process {self.name}: {command} did not finish in {timeout} s; "
                f"see {self.log_path}"
            ) from None
        if "error" in result:
            raise RuntimeError(f"load process {self.name}: {result['error']}")
        return result

    async def stop(self) -> None:
        """Ask the process to stop, then SIGTERM and SIGKILL it by its PID if it stays."""
        process = self._process
        if process is None:
            return
        if process.returncode is None and process.stdin is not None:
            with contextlib.suppress(OSError, RuntimeError):
                process.stdin.write(b'{"id": 0, "command": "stop"}\n')
                process.stdin.close()
        for signal_step in ("wait", "terminate", "kill"):
            if signal_step == "terminate" and process.returncode is None:
                process.terminate()
            elif signal_step == "kill" and process.returncode is None:
                process.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 10.0)
                break
        if self._reader is not None:
            self._reader.cancel()

    async def _read(self) -> None:
        process = self._process
        assert process is not None and process.stdout is not None
        while True:
            line = await process.stdout.readline()
            if not line:
                break
            message = json.loads(line)
            if "progress" in message:
                self.progress = message["progress"]
                continue
            reply = self._replies.pop(message.pop("reply"), None)
            if reply is not None and not reply.done():
                reply.set_result(message)
        for reply in self._replies.values():
            if not reply.done():
                reply.set_result({"error": f"exited with status {await process.wait()}"})


class LoadGroup:
    """Several load processes of one run, started together."""

    def __init__(self, count: int, run: Run) -> None:
        self.processes = [
            LoadProcess(f"load{index + 1}", run.workdir / f"load{index + 1}.log")
            for index in range(count)
        ]
        self.run = run
        self.progress = run.progress

    @staticmethod
    def count_for(clients: int) -> int:
        """Return how many load processes `clients` connections need."""
        return max(1, math.ceil(clients / MAX_CLIENTS_PER_PROCESS))

    async def start(self) -> None:
        """Start every process with the run's --deadline and --source-addresses."""
        arguments = self.run.arguments
        sources = getattr(arguments, "source_addresses", 1)
        await asyncio.gather(
            *(process.start(arguments.deadline, sources) for process in self.processes)
        )
        self.progress.loads = self.processes

    def pids(self) -> dict[str, int]:
        return {process.name: process.pid for process in self.processes}

    async def counters(self) -> dict[str, int]:
        """Return the counters summed over every process."""
        replies = await asyncio.gather(*(p.call("counters", 30.0) for p in self.processes))
        totals: dict[str, int] = {}
        for reply in replies:
            for key, value in {**reply["counters"], "open": reply["open"]}.items():
                totals[key] = totals.get(key, 0) + int(value)
        return totals

    async def stop(self) -> None:
        self.progress.loads = []
        await asyncio.gather(*(process.stop() for process in self.processes))


@dataclass
class Run:
    """One run of a scenario on one target."""

    target: Target
    workdir: Path
    arguments: argparse.Namespace
    progress: Progress

    def phase(self, text: str) -> None:
        self.progress.phase(f"{self.target.name}: {text}")


async def open_all(run: Run, process: LoadProcess, url: str, users: Sequence[str]) -> None:
    """Open one client per user in `process`; raise unless every session opened."""
    reply = await process.call(
        "open",
        STEP_TIMEOUT * 2,
        url=url,
        protocol=run.target.protocol,
        users=list(users),
        secret=SECRET,
        timeout=STEP_TIMEOUT,
    )
    if reply["opened"] != len(users):
        raise RuntimeError(
            f"{len(users) - reply['opened']} of {len(users)} clients failed to open: "
            f"{reply['failures']}"
        )
