"""Count the server's CPU instructions per heartbeat with valgrind's callgrind.

    .venv/bin/python bench/heartbeat_callgrind.py --target tether --transport tcp \
        --output bench/results/callgrind-tether-tcp.out
    callgrind_annotate --inclusive=yes bench/results/callgrind-tether-tcp.out.1 | head -60

Starts `tether serve`, or bench/floor_server.py over TCP (`--target floor`, and `--target
loop` for the floor with `--constant-ack`), under `valgrind --tool=callgrind` with
instrumentation off. It opens `--connections` connections from this process and logs each
in. Then it turns instrumentation on with `callgrind_control --instr=on`, sends `--heartbeats`
heartbeats one at a time, round robin over the connections, each waiting for its
HeartbeatAck, and writes the profile with `callgrind_control --dump` to the `--output` path
plus `.1`. One heartbeat at a time is how heartbeats reach a gateway at a realistic rate:
every heartbeat wakes the event loop by itself, as in `tether bench idle` (5,000 connections
every 4 s is 1,250 heartbeats per second).

Instruction counts do not depend on what else runs on the machine, unlike CPU time, so this
compares two versions of the heartbeat path on a shared machine. They count user space only:
the kernel's share of `recv` and `send` is not in them. The figure reported is the total of
the measured window divided by the heartbeats, so the sweep and other timers that fired in
that window are included, as they are in `tether bench idle`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import picows
import uvloop

from tether.auth import issue_token
from tether.protocol import tether_pb2 as pb
from tether.protocol.framing import StreamDecoder, prefix_frame

SECRET = "benchmark-secret-of-at-least-32-bytes"
_READY = re.compile(r"tcp=[\d.]+:(\d+)(?: ws=(?:[\d.]+:(\d+)|off))?")


class Client:
    """One logged-in connection that resolves `answered` when a HeartbeatAck arrives."""

    def __init__(self) -> None:
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.answered: asyncio.Future[None] | None = None

    def on_payload(self, payload: bytes) -> None:
        kind = pb.Frame.FromString(payload).WhichOneof("kind")
        if kind == "presence_snapshot" and not self.ready.done():
            self.ready.set_result(None)
        elif kind == "heartbeat_ack" and self.answered is not None:
            self.answered.set_result(None)
            self.answered = None

    def send(self, payload: bytes) -> None:
        raise NotImplementedError


class TcpClient(Client, asyncio.Protocol):
    def __init__(self) -> None:
        super().__init__()
        self.decoder = StreamDecoder(1 << 20)
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for payload in self.decoder.feed(data):
            self.on_payload(payload)

    def send(self, payload: bytes) -> None:
        self.transport.write(prefix_frame(payload))


class WsClient(Client):
    def __init__(self) -> None:
        super().__init__()
        self.transport: Any = None

    def send(self, payload: bytes) -> None:
        self.transport.send(picows.WSMsgType.BINARY, payload)


class WsListener(picows.WSListener):
    def __init__(self, client: WsClient) -> None:
        super().__init__()
        self.client = client

    def on_ws_connected(self, transport: Any) -> None:
        self.client.transport = transport

    def on_ws_frame(self, transport: Any, frame: Any) -> None:
        if frame.msg_type == picows.WSMsgType.BINARY:
            self.client.on_payload(frame.get_payload_as_bytes())


def start_server(arguments: argparse.Namespace, profile: Path) -> subprocess.Popen[str]:
    """Start the server under callgrind, with instrumentation off until the heartbeats."""
    valgrind = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={profile}",
        "--dump-instr=no", "--collect-jumps=no",
    ]  # fmt: skip
    if arguments.target in ("floor", "loop"):
        server = [sys.executable, str(Path(__file__).with_name("floor_server.py"))]
        if arguments.target == "loop":
            server.append("--constant-ack")
    else:
        server = [
            sys.executable, "-m", "tether", "serve", "--data-dir",
            tempfile.mkdtemp(prefix="tether-callgrind-"), "--host", "127.0.0.1",
            "--tcp-port", "0", "--ws-port", "0" if arguments.transport == "ws" else "off",
            "--secret", SECRET, "--log-level", "warning",
            "--max-connections-per-ip", "1000000", "--new-connections-per-second", "1000000",
        ]  # fmt: skip
    return subprocess.Popen(valgrind + server, stdout=subprocess.PIPE, text=True)


def callgrind_control(option: str, pid: int) -> None:
    subprocess.run(["callgrind_control", option, str(pid)], check=True, capture_output=True)


async def open_clients(arguments: argparse.Namespace, tcp_port: int, ws_port: int) -> list[Client]:
    loop = asyncio.get_running_loop()
    clients: list[Client] = []
    for index in range(arguments.connections):
        client: Client
        if arguments.transport == "ws":
            client = WsClient()
            url = f"ws://127.0.0.1:{ws_port}/ws"
            await picows.ws_connect(
                lambda c=client: WsListener(c),
                url,
                extra_headers={"Sec-WebSocket-Protocol": "tether.v1"},
            )
        else:
            _, client = await loop.create_connection(TcpClient, "127.0.0.1", tcp_port)
        connect = pb.Connect(
            protocol_version=1, token=issue_token(SECRET, f"u{index}"), device_id="d"
        )
        client.send(pb.Frame(connect=connect).SerializeToString())
        await asyncio.wait_for(client.ready, 120)
        clients.append(client)
    return clients


async def measure(arguments: argparse.Namespace) -> dict[str, object]:
    profile = Path(arguments.output)
    profile.parent.mkdir(parents=True, exist_ok=True)
    dump = profile.with_name(profile.name + ".1")  # callgrind numbers each requested dump
    dump.unlink(missing_ok=True)
    server = start_server(arguments, profile)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        match = _READY.search(line)
        if match is None:
            raise RuntimeError(f"unexpected first line from the server: {line!r}")
        clients = await open_clients(arguments, int(match.group(1)), int(match.group(2) or 0))
        await asyncio.sleep(1.0)
        callgrind_control("--instr=on", server.pid)
        callgrind_control("--zero", server.pid)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        for number in range(arguments.heartbeats):
            client = clients[number % len(clients)]
            client.answered = loop.create_future()
            client.send(pb.Frame(heartbeat=pb.Heartbeat(nonce=number + 1)).SerializeToString())
            await asyncio.wait_for(client.answered, 60)
        elapsed = time.perf_counter() - started
        callgrind_control("--dump", server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    instructions = _total_instructions(dump)
    return {
        "target": arguments.target,
        "transport": arguments.transport,
        "connections": arguments.connections,
        "heartbeats": arguments.heartbeats,
        "profile": str(dump),
        "instructions": instructions,
        "instructions_per_heartbeat": round(instructions / arguments.heartbeats),
        "seconds_under_valgrind": round(elapsed, 1),
    }


def _total_instructions(profile: Path) -> int:
    for line in profile.read_text().splitlines():
        if line.startswith("totals:") or line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals line in {profile}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--target",
        choices=("tether", "floor", "loop"),
        default="tether",
        help="loop: the floor with --constant-ack, which parses nothing after the Connect",
    )
    parser.add_argument("--transport", choices=("tcp", "ws"), default="tcp")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--heartbeats", type=int, default=5000)
    parser.add_argument("--output", default="bench/results/callgrind.out")
    arguments = parser.parse_args()
    if arguments.target != "tether" and arguments.transport == "ws":
        parser.error("the floor server speaks TCP only")
    print(json.dumps(uvloop.run(measure(arguments)), indent=2))
