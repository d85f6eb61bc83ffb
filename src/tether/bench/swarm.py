"""A swarm: many light TCP clients in one process, for storm tests and benchmarks.

    python -m tether.bench.swarm --urls tcp://127.0.0.1:7400,tcp://127.0.0.1:7410 \\
        --secret SECRET --users 2000 --duration 60

Each client logs in to the first address as `<prefix><n>` with device `swarm` (n counts from
`--first`, default 0, so several swarm processes can share one prefix) and heartbeats
at the interval the server gives. With `--spread`, client n starts at address n modulo the
number of addresses instead. When its connection ends, it reconnects to the next address
after the delay the server requested, or after the SDK's backoff with jitter when the server
gave none. A client without a session `--connect-timeout` seconds after it started to connect
gives up on that address and moves on the same way. The clients share one heartbeat timer, so
the swarm costs little per client.

Every `--report-interval` seconds the swarm prints one JSON line with its counts. When it stops
(after `--duration` seconds, or on SIGTERM or SIGINT) it prints a final line with
`"final": true` and the times at which each client's sessions opened.

Group messages: the clients check every message of a group conversation (`g:...`) they
receive, except the group's system messages (changes of its members). A body of the form
`<tag>:<n>` or `<tag>:<n>:<sent Unix ms>` counts as the n-th message (from 0) of the stream
`tag`, such as one sender's messages: a client counts a duplicate when n is not above the
last n it saw of that stream, and a gap when n skips numbers. With a send time, the delay
until the message arrived is recorded, and the final line gives its percentiles.
`group_frames` counts the Deliver frames that carried group messages, which is fewer than
`group_messages` when the gateways merge messages into batches. Clients do not fetch missed
messages, so measure with clients that stay connected.

With `--send-group GROUP`, the first `--senders` clients each send `--messages` messages to
the group, one every `--send-interval` seconds, starting `--send-after` seconds after the
swarm started. Their bodies have the form above, with the sender's user id as the tag.
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
from collections.abc import Iterable
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

_MAX_FRAME = 1 << 24  # a merged Deliver of group messages can be large
_MAX_LATENCIES = 1_000_000  # delays kept for the final percentiles
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
        self.streams: dict[str, int] = {}
        """Last n seen of each stream of group messages."""
        self.group_messages = 0

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
            elif kind == "deliver":
                self.swarm.on_messages(self, frame.deliver.messages)
            elif kind == "send_ack":
                self.swarm.acked += 1
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
    """Clients of users `<prefix><first>` to `<prefix><first + count - 1>` that move over the
    gateway addresses."""

    def __init__(
        self,
        urls: list[str],
        secret: str,
        count: int,
        *,
        prefix: str = "swarm",
        connect_rate: float = 500.0,
        connect_timeout: float = 10.0,
        spread: bool = False,
        first: int = 0,
    ) -> None:
        """Prepare count clients without connecting them.

        connect_timeout is the seconds one attempt may take, from the start of the TCP connect
        to Connected, before the client moves to the next address.
        """
        self.addresses = [_address(url) for url in urls]
        self.members = [
            _Member(self, f"{prefix}{n}", issue_token(secret, f"{prefix}{n}"))
            for n in range(first, first + count)
        ]
        if spread:
            for n, member in enumerate(self.members):
                member.url_index = n % len(self.addresses)
        self.connect_rate = connect_rate
        self.connect_timeout = connect_timeout
        self.open_count = 0
        self.sessions = 0
        self.failed_connects = 0
        self.codes: Counter[int] = Counter()
        self.final: Counter[int] = Counter()
        self.heartbeat_interval = 0.0
        self.group_messages = 0
        self.group_frames = 0
        self.duplicates = 0
        self.gaps = 0
        self.latencies_ms: list[int] = []
        self.sent = 0
        self.acked = 0
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
            "group_messages": self.group_messages,
            "group_frames": self.group_frames,
            "duplicates": self.duplicates,
            "gaps": self.gaps,
            "sent": self.sent,
            "acked": self.acked,
        }
        if final:
            report["final"] = True
            report["opened_at"] = {m.user: m.opened_at for m in self.members}
            report["group_messages_by_client"] = {m.user: m.group_messages for m in self.members}
            report["latency_ms"] = _percentiles(self.latencies_ms)
        return report

    # Callbacks of the members.

    def on_open(self, member: _Member, heartbeat_interval: float) -> None:
        self.open_count += 1
        self.sessions += 1
        self._open[member] = None
        if self._heartbeat is None and heartbeat_interval > 0:
            self.heartbeat_interval = heartbeat_interval
            self._heartbeat = self.loop.call_later(heartbeat_interval, self._beat)

    def on_messages(self, member: _Member, messages: Iterable[pb.Message]) -> None:
        """Check the order of group messages and record their delays."""
        now_ms = time.time() * 1000
        in_frame = 0
        for message in messages:
            if not message.conversation_id.startswith("g:") or message.HasField("group_event"):
                continue  # a direct message, or a change of the group's members
            in_frame += 1
            self.group_messages += 1
            member.group_messages += 1
            parts = message.body.split(b":")
            if len(parts) < 2 or not parts[1].isdigit():
                continue
            stream = parts[0].decode(errors="replace")
            number = int(parts[1])
            last = member.streams.get(stream, -1)
            if number <= last:
                self.duplicates += 1
                continue
            if number > last + 1:
                self.gaps += 1
            member.streams[stream] = number
            if len(parts) > 2 and parts[2].isdigit() and len(self.latencies_ms) < _MAX_LATENCIES:
                self.latencies_ms.append(int(now_ms - int(parts[2])))
        if in_frame:
            self.group_frames += 1

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

    async def send_to_group(
        self, group_id: str, senders: int, messages: int, interval: float
    ) -> None:
        """Let the first senders clients each send messages to a group, interval seconds apart."""

        async def send_all(member: _Member) -> None:
            for number in range(messages):
                body = f"{member.user}:{number}:{int(time.time() * 1000)}".encode()
                send = pb.Send(
                    client_message_id=f"{member.user}-{number}",
                    recipient=f"g:{group_id}",
                    body=body,
                )
                if member.transport is not None and member.open:
                    member.transport.write(prefix_frame(pb.Frame(send=send).SerializeToString()))
                    self.sent += 1
                await asyncio.sleep(interval)

        await asyncio.gather(*(send_all(member) for member in self.members[:senders]))

    def _beat(self) -> None:
        """Send one heartbeat on every open connection, then schedule the next round."""
        for member in self._open:
            if member.transport is not None:
                member.transport.write(_HEARTBEAT)
        self._heartbeat = self.loop.call_later(self.heartbeat_interval, self._beat)


def _percentiles(values: list[int]) -> dict[str, int]:
    """Return the median, 99th percentile and maximum of values; empty without values."""
    if not values:
        return {}
    ordered = sorted(values)
    last = len(ordered) - 1
    return {
        "count": len(ordered),
        "p50": ordered[last // 2],
        "p99": ordered[last * 99 // 100],
        "max": ordered[last],
    }


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
        spread=arguments.spread,
        first=arguments.first,
    )
    stop = asyncio.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        swarm.loop.add_signal_handler(number, stop.set)
    await swarm.start()
    deadline = swarm.loop.time() + arguments.duration
    sending = None
    if arguments.send_group:

        async def send_later() -> None:
            await asyncio.sleep(arguments.send_after)
            await swarm.send_to_group(
                arguments.send_group, arguments.senders, arguments.messages, arguments.send_interval
            )

        sending = swarm.loop.create_task(send_later())
    while not stop.is_set() and swarm.loop.time() < deadline:
        print(json.dumps(swarm.report()), flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), arguments.report_interval)
    if sending is not None:
        sending.cancel()
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
    parser.add_argument("--first", type=int, default=0, help="number of the first user")
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
    parser.add_argument(
        "--spread",
        action="store_true",
        help="start client n at address n modulo the number of addresses, not at the first",
    )
    parser.add_argument("--send-group", default="", help="group id the senders send to")
    parser.add_argument("--senders", type=int, default=1, help="clients that send to the group")
    parser.add_argument("--messages", type=int, default=100, help="messages per sender")
    parser.add_argument(
        "--send-interval", type=float, default=0.1, help="seconds between one sender's messages"
    )
    parser.add_argument(
        "--send-after", type=float, default=10.0, help="seconds after the start the senders begin"
    )
    arguments = parser.parse_args(argv)
    sys.exit(run(_run(arguments)))


if __name__ == "__main__":
    main()
