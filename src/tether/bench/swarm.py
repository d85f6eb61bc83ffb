"""A swarm: many light TCP clients in one process, for storm tests and benchmarks.

    python -m tether.bench.swarm --urls tcp://127.0.0.1:7400,tcp://127.0.0.1:7410 \\
        --secret SECRET --users 2000 --duration 60

Each client logs in to the first address as `<prefix><n>` with device `swarm` and heartbeats
at the interval the server gives. When its connection ends, it reconnects to the next address
after the delay the server requested, or after the SDK's backoff with jitter when the server
gave none. A client without a session `--connect-timeout` seconds after it started to connect
gives up on that address and moves on the same way. The clients share one heartbeat timer, so
the swarm costs little per client.

Every `--report-interval` seconds the swarm prints one JSON line with its counts. When it stops
(after `--duration` seconds, or on SIGTERM or SIGINT) it prints a final line with
`"final": true` and the times at which each client's sessions opened.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections import Counter
from typing import cast
from urllib.parse import urlsplit

from tether.auth import issue_token
from tether.cli.main import run
from tether.client.client import reconnect_delay, stays_on_address
from tether.protocol import tether_pb2 as pb
from tether.protocol.codes import is_final
from tether.protocol.connection import PROTOCOL_VERSION
from tether.protocol.framing import StreamDecoder, prefix_frame

__all__ = ["Swarm", "main"]

_MAX_FRAME = 1 << 20
_HEARTBEAT = prefix_frame(pb.Frame(heartbeat=pb.Heartbeat(nonce=1)).SerializeToString())


class _Member(asyncio.Protocol):
    """One client of the swarm: a TCP connection and its reconnect state."""

    def __init__(self, swarm: Swarm, user: str, token: str) -> None:
        self.swarm = swarm
        self.user = user
        self.token = token
        self.transport: asyncio.Transport | None = None
        self.decoder = StreamDecoder(_MAX_FRAME)
        self.open = False
        self.attempt = 0
        self.url_index = 0
        self.server_delay = 0.0
        self.last_code = 0
        """Code of the last Disconnect frame of the current connection, 0 if none."""
        self.stopped = False
        """Whether the server closed this client with a final code, so it does not return."""
        self.opened_at: list[float] = []
        """Unix times at which a session opened (Connected arrived)."""
        self.deadline: asyncio.TimerHandle | None = None
        """Timer that aborts the connection if no session opens within the connect timeout."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.decoder = StreamDecoder(_MAX_FRAME)
        self.server_delay = 0.0
        self.last_code = 0
        connect = pb.Connect(protocol_version=PROTOCOL_VERSION, token=self.token, device_id="swarm")
        self.transport.write(prefix_frame(pb.Frame(connect=connect).SerializeToString()))

    def data_received(self, data: bytes) -> None:
        for payload in self.decoder.feed(data):
            frame = pb.Frame.FromString(payload)
            kind = frame.WhichOneof("kind")
            if kind == "connected":
                if self.deadline is not None:
                    self.deadline.cancel()
                    self.deadline = None
                self.open = True
                self.attempt = 0
                self.opened_at.append(time.time())
                self.swarm.on_open(self, frame.connected.heartbeat_interval_ms / 1000)
            elif kind == "disconnect":
                self.server_delay = frame.disconnect.reconnect_delay_ms / 1000
                self.last_code = frame.disconnect.code
                self.swarm.codes[frame.disconnect.code] += 1
                if is_final(frame.disconnect.code):
                    self.stopped = True
                    self.swarm.final[frame.disconnect.code] += 1
        if self.decoder.error is not None and self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        if self.open:
            self.open = False
            self.swarm.on_close(self)
        self.swarm.schedule_reconnect(self)


class Swarm:
    """Clients of users `prefix0` to `prefix<count - 1>` that move over the gateway addresses."""

    def __init__(
        self,
        urls: list[str],
        secret: str,
        count: int,
        *,
        prefix: str = "swarm",
        connect_rate: float = 500.0,
        connect_timeout: float = 10.0,
    ) -> None:
        """Prepare count clients without connecting them.

        connect_timeout is the seconds one attempt may take, from the start of the TCP connect
        to Connected, before the client moves to the next address.
        """
        self.addresses = [_address(url) for url in urls]
        self.members = [
            _Member(self, f"{prefix}{n}", issue_token(secret, f"{prefix}{n}")) for n in range(count)
        ]
        self.connect_rate = connect_rate
        self.connect_timeout = connect_timeout
        self.open_count = 0
        self.sessions = 0
        self.failed_connects = 0
        self.codes: Counter[int] = Counter()
        self.final: Counter[int] = Counter()
        self.heartbeat_interval = 0.0
        self.stopping = False
        self.loop = asyncio.get_running_loop()
        self._open: dict[_Member, None] = {}
        self._heartbeat: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        """Open every client to the first address, at most connect_rate per second."""
        for index, member in enumerate(self.members):
            self.loop.create_task(self._connect(member))
            if index % 50 == 49:
                await asyncio.sleep(50 / self.connect_rate)

    def stop(self) -> None:
        """Close every connection and stop reconnecting."""
        self.stopping = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for member in self.members:
            if member.transport is not None:
                member.transport.close()

    def report(self, *, final: bool = False) -> dict[str, object]:
        """Return the swarm's counts, with every session's open times when final."""
        report: dict[str, object] = {
            "time": time.time(),
            "open": self.open_count,
            "clients": len(self.members),
            "sessions": self.sessions,
            "failed_connects": self.failed_connects,
            "codes": dict(self.codes),
            "final_codes": dict(self.final),
        }
        if final:
            report["final"] = True
            report["opened_at"] = {m.user: m.opened_at for m in self.members}
        return report

    # Callbacks of the members.

    def on_open(self, member: _Member, heartbeat_interval: float) -> None:
        self.open_count += 1
        self.sessions += 1
        self._open[member] = None
        if self._heartbeat is None and heartbeat_interval > 0:
            self.heartbeat_interval = heartbeat_interval
            self._heartbeat = self.loop.call_later(heartbeat_interval, self._beat)

    def on_close(self, member: _Member) -> None:
        self.open_count -= 1
        self._open.pop(member, None)

    def schedule_reconnect(self, member: _Member) -> None:
        if self.stopping or member.stopped:
            return
        if not stays_on_address(member.last_code):
            member.url_index = (member.url_index + 1) % len(self.addresses)
        delay, member.attempt = reconnect_delay(member.server_delay, member.attempt)
        self.loop.call_later(delay, lambda: self.loop.create_task(self._connect(member)))

    async def _connect(self, member: _Member) -> None:
        if self.stopping:
            return
        host, port = self.addresses[member.url_index]
        started = self.loop.time()
        try:
            transport, _ = await asyncio.wait_for(
                self.loop.create_connection(lambda: member, host, port), self.connect_timeout
            )
        except (OSError, TimeoutError):
            self.failed_connects += 1
            member.last_code = 0  # refused or silent: move on to the next address
            self.schedule_reconnect(member)
            return
        # A gateway that accepts and never replies must not hold the client, so each
        # connecting client gets one timer, cancelled when Connected arrives.
        if member.transport is transport and not member.open:
            remaining = max(0.0, started + self.connect_timeout - self.loop.time())
            member.deadline = self.loop.call_later(remaining, transport.abort)

    def _beat(self) -> None:
        """Send one heartbeat on every open connection, then schedule the next round."""
        for member in self._open:
            if member.transport is not None:
                member.transport.write(_HEARTBEAT)
        self._heartbeat = self.loop.call_later(self.heartbeat_interval, self._beat)


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "tcp" or not parts.hostname or parts.port is None:
        raise ValueError(f"invalid swarm address {url!r}: expected tcp://host:port")
    return parts.hostname, parts.port


async def _run(arguments: argparse.Namespace) -> int:
    swarm = Swarm(
        arguments.urls.split(","),
        arguments.secret,
        arguments.users,
        prefix=arguments.prefix,
        connect_rate=arguments.connect_rate,
        connect_timeout=arguments.connect_timeout,
    )
    stop = asyncio.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        swarm.loop.add_signal_handler(number, stop.set)
    await swarm.start()
    deadline = swarm.loop.time() + arguments.duration
    while not stop.is_set() and swarm.loop.time() < deadline:
        print(json.dumps(swarm.report()), flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), arguments.report_interval)
    swarm.stop()
    print(json.dumps(swarm.report(final=True)), flush=True)
    return 0


def main(argv: list[str] | None = None) -> None:
    """Parse options and run a swarm until its duration ends or a stop signal arrives."""
    parser = argparse.ArgumentParser(prog="python -m tether.bench.swarm", description=__doc__)
    parser.add_argument("--urls", required=True, help="comma-separated tcp://host:port list")
    parser.add_argument("--secret", required=True, help="HS256 secret that signs the tokens")
    parser.add_argument("--users", type=int, default=1000, help="clients, one user each")
    parser.add_argument("--prefix", default="swarm", help="user ids are prefix + number")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds before it stops")
    parser.add_argument(
        "--connect-rate", type=float, default=500.0, help="first connects per second"
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        help="seconds from the TCP connect to Connected before a client tries the next address",
    )
    parser.add_argument(
        "--report-interval", type=float, default=0.25, help="seconds between report lines"
    )
    arguments = parser.parse_args(argv)
    sys.exit(run(_run(arguments)))


if __name__ == "__main__":
    main()
