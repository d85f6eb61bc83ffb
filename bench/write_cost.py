"""Measure the CPU of one small write() per connection on loopback, without tether's code.

    .venv/bin/python bench/write_cost.py --connections 10000 --rounds 20

A group message to N members that each need their own push costs at least one write() per
member. This script opens N loopback TCP connections from a child process, which reads them
with uvloop and does nothing else. It then writes one `--bytes` frame to every connection per
round, `--rounds` times with a pause between, so it is a fan-out with no Python work around
the writes. It reports this process's user and system CPU per write (getrusage), once through
uvloop's `transport.write` (what the gateway calls) and once through `os.write` on the socket.

On loopback the kernel runs the receiving socket's TCP input, and the wake-up of the reading
process, within the sender's write(), so the system time includes work that a remote
receiver's machine would do.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import time

import uvloop

_READER = """
import asyncio, sys, uvloop

class Reader(asyncio.Protocol):
    def data_received(self, data):
        pass

async def main():
    loop = asyncio.get_running_loop()
    port, count = int(sys.argv[1]), int(sys.argv[2])
    transports = [(await loop.create_connection(Reader, "127.0.0.1", port))[0]
                  for _ in range(count)]
    print(len(transports), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes stdin

uvloop.run(main())
"""


_ACCEPTED: list[asyncio.Transport] = []  # the writer's ends of the connections


class Accepted(asyncio.Protocol):
    """The writer's end of one connection: kept, never read from."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        _ACCEPTED.append(transport)  # type: ignore[arg-type]


def cpu_seconds() -> tuple[float, float]:
    """Return this process's user and system CPU seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


async def measure(connections: int, rounds: int, size: int, pause: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Accepted, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, str(port), str(connections)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert reader.stdout is not None
        await loop.run_in_executor(None, reader.stdout.readline)
        while len(_ACCEPTED) < connections:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # let the handshakes' ACKs settle
        frame = bytes([size - 1]) + b"x" * (size - 1)  # a varint length and its payload
        transports = _ACCEPTED
        descriptors = [t.get_extra_info("socket").fileno() for t in transports]
        for name in ("transport.write", "os.write"):
            user, system = cpu_seconds()
            wall = 0.0
            for _ in range(rounds):
                started = time.perf_counter()
                if name == "transport.write":
                    for transport in transports:
                        transport.write(frame)
                else:
                    for descriptor in descriptors:
                        os.write(descriptor, frame)
                wall += time.perf_counter() - started
                await asyncio.sleep(pause)
            user_after, system_after = cpu_seconds()
            writes = connections * rounds
            print(
                f"{name}: {(user_after - user) / writes * 1e6:.2f} µs user + "
                f"{(system_after - system) / writes * 1e6:.2f} µs system per write; "
                f"one round of {connections} writes took {wall / rounds * 1e3:.1f} ms"
            )
    finally:
        assert reader.stdin is not None
        reader.stdin.close()
        reader.wait(30)
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000, help="loopback connections")
    parser.add_argument("--rounds", type=int, default=20, help="writes per connection")
    parser.add_argument("--bytes", type=int, default=110, help="bytes per write (2 to 128)")
    parser.add_argument("--pause", type=float, default=0.3, help="seconds between rounds")
    arguments = parser.parse_args()
    if not 2 <= arguments.bytes <= 128:
        parser.error("--bytes must be 2 to 128")
    uvloop.run(measure(arguments.connections, arguments.rounds, arguments.bytes, arguments.pause))


if __name__ == "__main__":
    main()
