"""Measure the gateway's memory per idle connection and CPU per heartbeat.

    .venv/bin/python bench/heartbeat.py --connections 5000 --rounds 20

Starts `tether serve` as a child process on free ports, opens the connections from this
process (raw TCP, one Connect each), then sends one heartbeat per connection per round and
waits for every reply. Reports the server's RSS growth per connection and its CPU time
(user + system, from /proc) per heartbeat round trip. A first sketch of what `tether bench`
will measure; figures from it belong in docs/benchmarks.md with the command and machine.
It runs tether and the floor (bench/floor_server.py, a bare uvloop protocol) alternately,
`--repeat` times each, and reports the medians and the tether/floor ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

from tether.auth import issue_token
from tether.protocol import tether_pb2 as pb
from tether.protocol.framing import StreamDecoder, prefix_frame

SECRET = "benchmark-secret-of-at-least-32-bytes"


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class Connection(asyncio.Protocol):
    def __init__(self, answers: asyncio.Queue[int]) -> None:
        self.decoder = StreamDecoder(1 << 20)
        self.answers = answers
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        for payload in self.decoder.feed(data):
            kind = pb.Frame.FromString(payload).WhichOneof("kind")
            if kind in ("heartbeat_ack", "presence_snapshot"):
                self.answers.put_nowait(1)


def start_server(kind: str) -> subprocess.Popen[str]:
    """Start tether or the floor server as a child process on a free port."""
    if kind == "floor":
        command = [sys.executable, str(Path(__file__).with_name("floor_server.py"))]
    else:
        command = [
            sys.executable, "-m", "tether", "serve", "--data-dir",
            tempfile.mkdtemp(prefix="tether-bench-"), "--tcp-port", "0", "--ws-port", "off",
            "--secret", SECRET, "--log-level", "warning",
            # Every load connection comes from 127.0.0.1 in one burst: lift the per-address
            # and connection-rate limits, which exist for the open internet.
            "--max-connections-per-ip", "1000000", "--new-connections-per-second", "1000000",
        ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


async def measure(kind: str, arguments: argparse.Namespace) -> dict[str, float | str]:
    server = start_server(kind)
    try:
        assert server.stdout is not None
        port = int(re.search(r"tcp=[\d.]+:(\d+)", server.stdout.readline()).group(1))  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        answers: asyncio.Queue[int] = asyncio.Queue()
        base_rss = rss_bytes(server.pid)
        connections = []
        for index in range(arguments.connections):
            _, protocol = await loop.create_connection(
                lambda: Connection(answers), "127.0.0.1", port
            )
            connect = pb.Connect(
                protocol_version=1, token=issue_token(SECRET, f"u{index}"), device_id="d"
            )
            protocol.transport.write(prefix_frame(pb.Frame(connect=connect).SerializeToString()))
            connections.append(protocol)
        for _ in range(arguments.connections):  # one snapshot per connection once open
            await asyncio.wait_for(answers.get(), 60)
        await asyncio.sleep(1.0)
        rss_per_connection = (rss_bytes(server.pid) - base_rss) / arguments.connections

        heartbeat = prefix_frame(pb.Frame(heartbeat=pb.Heartbeat(nonce=1)).SerializeToString())
        cpu_before = cpu_seconds(server.pid)
        started = time.perf_counter()
        for _ in range(arguments.rounds):
            for protocol in connections:
                protocol.transport.write(heartbeat)
            for _ in range(arguments.connections):
                await asyncio.wait_for(answers.get(), 60)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(server.pid) - cpu_before
        total = arguments.rounds * arguments.connections
        return {
            "server": kind,
            "connections": arguments.connections,
            "heartbeats": total,
            "rss_bytes_per_connection": round(rss_per_connection),
            "server_cpu_us_per_heartbeat": round(cpu / total * 1e6, 2),
            "heartbeats_per_second": round(total / elapsed),
        }
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


async def main(arguments: argparse.Namespace) -> dict[str, object]:
    """Measure tether and the floor alternately; report medians and the tether/floor ratios."""
    runs: dict[str, list[dict[str, float | str]]] = {"tether": [], "floor": []}
    for _ in range(arguments.repeat):
        for kind in ("tether", "floor"):
            runs[kind].append(await measure(kind, arguments))
    medians = {
        kind: {
            key: statistics.median(float(run[key]) for run in results)
            for key in ("rss_bytes_per_connection", "server_cpu_us_per_heartbeat")
        }
        for kind, results in runs.items()
    }
    ratios = {
        key: round(medians["tether"][key] / medians["floor"][key], 2) for key in medians["tether"]
    }
    return {"runs": runs, "medians": medians, "tether_over_floor": ratios}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each server, alternating")
    print(json.dumps(uvloop.run(main(parser.parse_args())), indent=2))
