"""A load process of `tether bench`: many light clients, driven by JSON commands on stdin.

    python -m tether.bench.load --deadline 600 [--source-addresses 4]

The runner starts several of these, so client CPU is never charged to a server and no process
passes its open-file limit. With `--source-addresses N` the clients bind their sockets to the
loopback addresses 127.0.0.1 to 127.0.0.N in turn (all of 127.0.0.0/8 is loopback on Linux).
Connections to one server address and port can then use N times the 28,232 ephemeral ports of
the default `net.ipv4.ip_local_port_range`, because the kernel picks the source port per
source address (`IP_BIND_ADDRESS_NO_PORT` defers that choice to connect()).

Each process reads one JSON command per line on stdin, such as
`{"id": 3, "command": "open", "url": "tcp://127.0.0.1:7400", "users": ["u0", "u1"], ...}`,
and replies to it with one line `{"reply": 3, ...}` on stdout. Between replies it prints a line
`{"progress": {...}}` every half second. Commands run one at a time, in order.

Clients speak one of two protocols:

- tether: Connect, heartbeats at the interval the server sends in Connected, Send, DeliverAck
  (sent for every Deliver, as the SDK does by default) and SetStatus, over TCP or WebSocket;
- socketio: Socket.IO 5 over Engine.IO 4 on a WebSocket, the wire format of python-socketio 5
  and Socket.IO 4 on Node. Packets are text messages: "0{...}" opens, "40" connects to the
  main namespace, "42[event, data]" is an event, "42<id>[...]" one that requests an
  acknowledgement, answered by "43<id>[...]", and the server's ping "2" is answered by "3".

The clients share one heartbeat timer, which spreads each interval's heartbeats over 20 ticks.
Message bodies carry their send time (`time.time()`), so a recipient in any process of the
machine measures send-to-delivery latency against the same clock. A group message's body is
`<n>:<send time>`, n counting the sender's messages from 0, so the delay of each delivery is
recorded per message. Tether clients over TCP opened with `socket_times` record a second delay
per delivery: until the kernel queued the bytes to the member's socket
(`clients.TetherSocketClient`), which leaves out the time this process took to get to them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import socket
import sys
import time
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import picows

from tether.bench.clients import (
    MAX_FRAME,
    BenchClient,
    SocketIoClient,
    TetherClient,
    TetherSocketClient,
    TetherTcpClient,
    TetherWsClient,
    WsListener,
)
from tether.cli.main import run

__all__ = ["Load", "main"]

_PROGRESS_INTERVAL = 0.5
_TICKS_PER_INTERVAL = 20
_SEND_TICK = 0.005  # seconds between the paced sender's wake-ups
_MAX_SOURCE_ADDRESSES = 254  # 127.0.0.1 to 127.0.0.254
# Socket option 24 of linux/in.h: bind() keeps the address and leaves the port to connect(),
# which can then reuse a port for another destination. Some Python builds lack the name.
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
_MAX_GROUP_DELAYS = 50_000  # delivery delays of group messages returned, evenly sampled


def loopback_sources(count: int) -> list[str]:
    """Return the source addresses 127.0.0.1 to 127.0.0.<count>."""
    if not 1 <= count <= _MAX_SOURCE_ADDRESSES:
        raise ValueError(f"source addresses must be 1 to {_MAX_SOURCE_ADDRESSES}, got {count}")
    return [f"127.0.0.{n}" for n in range(1, count + 1)]


def bound_socket(source: str) -> socket.socket:
    """Return a non-blocking TCP socket bound to `source`, its port left to connect()."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if sys.platform == "linux":
            sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _unbound_socket() -> socket.socket:
    """Return a non-blocking TCP socket whose address connect() will choose."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    return sock


# --- the process -----------------------------------------------------------------------------


class Load:
    """All clients of one load process, their counters and the measurements they take."""

    def __init__(self, source_addresses: int = 1) -> None:
        self.loop = asyncio.get_running_loop()
        # One source address needs no bind: the kernel picks 127.0.0.1 and a port.
        self.sources = loopback_sources(source_addresses) if source_addresses > 1 else []
        self._next_source = 0
        self.clients: dict[str, BenchClient] = {}
        self.counters: Counter[str] = Counter()
        self.heartbeat_interval = 0.0
        self._beating: list[TetherClient] = []
        self._beat_cursor = 0
        self._beat_handle: asyncio.TimerHandle | None = None
        self._next_beat = 0.0
        self.pending: dict[str, float] = {}
        """Send time of every message not yet acknowledged, by message id."""
        self.ack_seconds: list[float] = []
        self.delivery_seconds: list[float] = []
        self.receipts: list[tuple[float, str, str, str]] = []
        """(time, watcher, watched user, status) of every presence notification."""
        self.group_arrivals: dict[int, list[float]] = {}
        """Group message number -> [deliveries in this process, latest delay, deliveries with
        a socket time, earliest and latest delay until the socket had it], delays in seconds."""
        self.group_delays = array("d")
        """Delay of every group message delivered, in seconds, in arrival order."""
        self.group_socket_delays = array("d")
        """Delay until the socket had it, of every group message with a socket time."""
        self.group_frames = 0
        """Frames (tether's Deliver, Socket.IO's events) that carried group messages."""
        self._next_message_id = 0

    # Callbacks of the clients.

    def on_connected(self, client: TetherClient, heartbeat_interval: float) -> None:
        self._beating.append(client)
        if self._beat_handle is None and heartbeat_interval > 0:
            self.heartbeat_interval = heartbeat_interval
            self._next_beat = self.loop.time() + heartbeat_interval / _TICKS_PER_INTERVAL
            self._beat_handle = self.loop.call_at(self._next_beat, self._beat)

    def on_delivered(self, now: float, body: str) -> None:
        try:
            sent_at = float(body)
        except ValueError:
            self.counters["bad_bodies"] += 1
            return
        self.delivery_seconds.append(now - sent_at)

    def on_group_delivered(self, now: float, body: str, received: float | None = None) -> None:
        """Record a group message parsed at `now` whose bytes reached the socket at `received`."""
        number, _, sent = body.partition(":")
        try:
            sent_at = float(sent)
            key = int(number)
        except ValueError:
            self.counters["bad_bodies"] += 1
            return
        delay = now - sent_at
        self.group_delays.append(delay)
        arrival = self.group_arrivals.get(key)
        if arrival is None:
            arrival = self.group_arrivals[key] = [0.0, delay, 0.0, math.inf, -math.inf]
        arrival[0] += 1.0
        if delay > arrival[1]:
            arrival[1] = delay
        if received is not None:
            in_socket = received - sent_at
            self.group_socket_delays.append(in_socket)
            arrival[2] += 1.0
            arrival[3] = min(arrival[3], in_socket)
            arrival[4] = max(arrival[4], in_socket)

    def on_acked(self, message_id: str) -> None:
        sent_at = self.pending.pop(message_id, None)
        if sent_at is not None:
            self.ack_seconds.append(time.time() - sent_at)

    def on_failed(self, message_id: str) -> None:
        if self.pending.pop(message_id, None) is not None:
            self.counters["send_failures"] += 1

    def on_presence(self, watcher: str, user: str, status: str) -> None:
        self.receipts.append((time.time(), watcher, user, status))

    def _beat(self) -> None:
        """Send heartbeats to the next 1/20 of the tether clients (one tick)."""
        beating = self._beating
        if beating:
            share = math.ceil(len(beating) / _TICKS_PER_INTERVAL)
            start = self._beat_cursor % len(beating)
            for client in beating[start : start + share]:
                if client.open:
                    client.heartbeat()
            self._beat_cursor = start + share
            if self._beat_cursor >= len(beating):
                # Drop closed clients; keep those still waiting for their snapshot.
                self._beat_cursor = 0
                self._beating = [c for c in beating if c.open or not c.ready.done()]
        # Ticks on a fixed schedule, so a late tick does not stretch the interval.
        self._next_beat += self.heartbeat_interval / _TICKS_PER_INTERVAL
        self._beat_handle = self.loop.call_at(max(self._next_beat, self.loop.time()), self._beat)

    def progress(self) -> dict[str, Any]:
        return {
            "open": sum(1 for client in self.clients.values() if client.open),
            "sent": self._next_message_id,
            "delivered": len(self.delivery_seconds),
            "heartbeats": self.counters["heartbeats"],
        }

    # Commands.

    async def open(
        self,
        url: str,
        protocol: str,
        users: list[str],
        secret: str = "",
        timeout: float = 60.0,
        concurrency: int = 100,
        rate: float = 0.0,
        deliver_acks: bool = True,
        socket_times: bool = False,
    ) -> dict[str, Any]:
        """Connect one client per user to `url` and wait until each session is usable.

        With a `rate` (connections per second) the connects start on a fixed schedule, and
        the reply has the time each one started in `started_at`. Without `deliver_acks`,
        tether clients acknowledge no Deliver frame. With `socket_times`, tether clients over
        TCP also record when each group message reached their socket.
        """
        limit = asyncio.Semaphore(concurrency)
        failures: Counter[str] = Counter()
        started_at: dict[str, float] = {}
        started = self.loop.time()

        async def open_one(index: int, user: str) -> None:
            if rate > 0:
                await asyncio.sleep(max(0.0, started + index / rate - self.loop.time()))
            async with limit:
                started_at[user] = time.time()
                try:
                    client = await self._connect(
                        url, protocol, user, secret, deliver_acks, socket_times
                    )
                    self.clients[user] = client
                    await asyncio.wait_for(asyncio.shield(client.ready), timeout)
                except (OSError, TimeoutError, picows.WSError) as error:
                    failures[type(error).__name__] += 1

        await asyncio.gather(*(open_one(index, user) for index, user in enumerate(users)))
        return {
            "opened": len(users) - sum(failures.values()),
            "failures": dict(failures),
            "seconds": round(self.loop.time() - started, 3),
            "started_at": started_at if rate > 0 else {},
        }

    async def _connect(
        self,
        url: str,
        protocol: str,
        user: str,
        secret: str,
        deliver_acks: bool,
        socket_times: bool = False,
    ) -> BenchClient:
        parts = urlsplit(url)
        source = self._source()
        if protocol == "tether" and parts.scheme == "tcp" and socket_times:
            sock = bound_socket(source) if source else _unbound_socket()
            try:
                await self.loop.sock_connect(sock, (parts.hostname or "", parts.port or 0))
            except OSError:
                sock.close()
                raise
            stamped = TetherSocketClient(self, user, sock, deliver_acks=deliver_acks)
            stamped.hello(secret)
            return stamped
        if protocol == "tether" and parts.scheme == "tcp":
            tcp = TetherTcpClient(self, user, deliver_acks=deliver_acks)
            host, port = parts.hostname or "", parts.port or 0
            if source:
                sock = bound_socket(source)
                try:
                    await self.loop.sock_connect(sock, (host, port))
                except OSError:
                    sock.close()
                    raise
                await self.loop.create_connection(lambda: tcp, sock=sock)
            else:
                await self.loop.create_connection(lambda: tcp, host, port)
            tcp.hello(secret)
            return tcp
        # picows connects a socket that socket_factory returns unconnected.
        factory = (lambda _url: bound_socket(source)) if source else None
        if protocol == "tether" and parts.scheme == "ws":
            ws = TetherWsClient(self, user, deliver_acks=deliver_acks)
            await picows.ws_connect(
                lambda: WsListener(ws),
                url,
                extra_headers={"Sec-WebSocket-Protocol": "tether.v1"},
                max_frame_size=MAX_FRAME,
                socket_factory=factory,
            )
            ws.hello(secret)
            return ws
        if protocol == "socketio" and parts.scheme == "ws":
            socketio = SocketIoClient(self, user)
            address = f"ws://{parts.netloc}/socket.io/?EIO=4&transport=websocket"
            await picows.ws_connect(lambda: WsListener(socketio), address, socket_factory=factory)
            return socketio
        raise ValueError(f"cannot open {protocol} clients on {url!r}")

    def _source(self) -> str:
        """Return the next source address in turn, or "" to let the kernel pick 127.0.0.1."""
        if not self.sources:
            return ""
        source = self.sources[self._next_source % len(self.sources)]
        self._next_source += 1
        return source

    async def counters_now(self) -> dict[str, Any]:
        """Return the counters and the number of open clients."""
        return {"counters": dict(self.counters), **self.progress()}

    async def send(
        self, pairs: list[list[str]], rate: float, duration: float, drain: float = 10.0
    ) -> dict[str, Any]:
        """Send direct messages at `rate` per second for `duration`, round-robin over pairs.

        Waits up to `drain` seconds for the last deliveries and acknowledgements, then returns
        the counts and every latency in seconds.
        """
        self.ack_seconds, self.delivery_seconds, self.pending = [], [], {}
        count = int(rate * duration)
        started = self.loop.time()
        sent = 0
        while sent < count:
            due = min(count, int((self.loop.time() - started) * rate) + 1)
            for index in range(sent, due):
                sender, recipient = pairs[index % len(pairs)]
                client = self.clients.get(sender)
                if client is None or not client.open:
                    self.counters["send_skipped"] += 1
                    continue
                self._next_message_id += 1
                message_id = str(self._next_message_id)
                now = time.time()
                self.pending[message_id] = now
                client.send_message(recipient, repr(now), self._next_message_id)
            sent = due
            await asyncio.sleep(_SEND_TICK)
        seconds = self.loop.time() - started
        deadline = self.loop.time() + drain
        while (self.pending or len(self.delivery_seconds) < count) and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        return {
            "sent": count,
            "acked": len(self.ack_seconds),
            "delivered": len(self.delivery_seconds),
            "send_seconds": round(seconds, 3),
            "ack_seconds": self.ack_seconds,
            "delivery_seconds": self.delivery_seconds,
        }

    async def send_group(
        self, user: str, group_id: str, count: int, rate: float, drain: float = 10.0
    ) -> dict[str, Any]:
        """Let `user` send `count` messages to a group, `rate` per second, bodies `<n>:<time>`.

        Waits up to `drain` seconds for the last acknowledgements, then returns the counts,
        the send time of each message and every acknowledgement latency in seconds.
        """
        client = self.clients.get(user)
        if client is None or not client.open:
            raise RuntimeError(f"no open client of {user!r} in this process")
        self.ack_seconds, self.pending = [], {}
        sent_at: list[float] = []
        started = self.loop.time()
        for number in range(count):
            await asyncio.sleep(max(0.0, started + number / rate - self.loop.time()))
            if not client.open:
                break
            self._next_message_id += 1
            now = time.time()
            self.pending[str(self._next_message_id)] = now
            sent_at.append(now)
            client.send_group(group_id, f"{number}:{now!r}", self._next_message_id)
        seconds = self.loop.time() - started
        deadline = self.loop.time() + drain
        while self.pending and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        return {
            "sent": len(sent_at),
            "acked": len(self.ack_seconds),
            "send_seconds": round(seconds, 3),
            "sent_at": sent_at,
            "ack_seconds": self.ack_seconds,
        }

    async def group_receipts(self, expected: int, timeout: float) -> dict[str, Any]:
        """Wait until `expected` group messages were delivered in this process, or `timeout`.

        Returns and clears, per message number, [deliveries, latest delay, deliveries with a
        socket time, earliest and latest delay until the socket had it (None without one)],
        in seconds. Also the frames that carried them, at most _MAX_GROUP_DELAYS delivery
        delays sampled evenly over arrival, and as many delays until the socket had it.
        """
        deadline = self.loop.time() + timeout
        while len(self.group_delays) < expected and self.loop.time() < deadline:
            await asyncio.sleep(0.01)
        delays, self.group_delays = self.group_delays, array("d")
        in_socket, self.group_socket_delays = self.group_socket_delays, array("d")
        arrivals, self.group_arrivals = self.group_arrivals, {}
        frames, self.group_frames = self.group_frames, 0
        messages: dict[str, list[float | None]] = {}
        for n, (count, latest, stamped, first, last) in arrivals.items():
            span: list[float | None] = [first, last] if stamped else [None, None]
            messages[str(n)] = [int(count), latest, int(stamped), *span]
        return {
            "deliveries": len(delays),
            "frames": frames,
            "messages": messages,
            "delays": _sample(delays),
            "socket_delays": _sample(in_socket),
        }

    async def status(self, users: list[str], count: int, rate: float) -> dict[str, Any]:
        """Toggle users between away and online, round-robin, `rate` changes per second."""
        current = dict.fromkeys(users, "online")
        sends: list[tuple[float, str, str]] = []
        started = self.loop.time()
        for index in range(count):
            await asyncio.sleep(max(0.0, started + index / rate - self.loop.time()))
            user = users[index % len(users)]
            client = self.clients.get(user)
            if client is None or not client.open:
                continue
            status = current[user] = "away" if current[user] == "online" else "online"
            sends.append((time.time(), user, status))
            client.set_status(status)
        return {"sends": sends, "seconds": round(self.loop.time() - started, 3)}

    async def receipts_now(
        self, quiet: float = 0.5, timeout: float = 10.0, offline: int = 0
    ) -> dict[str, Any]:
        """Wait for `offline` OFFLINE notifications and then `quiet` seconds without any.

        Stops waiting after `timeout` seconds. Returns and clears the notifications received.
        """
        deadline = self.loop.time() + timeout

        def offline_count() -> int:
            return sum(1 for receipt in self.receipts if receipt[3] == "offline")

        while offline_count() < offline and self.loop.time() < deadline:
            await asyncio.sleep(0.01)
        seen = -1
        while seen != len(self.receipts) and self.loop.time() < deadline:
            seen = len(self.receipts)
            await asyncio.sleep(quiet)
        receipts, self.receipts = self.receipts, []
        return {"receipts": receipts}

    async def close_users(self, users: list[str], rate: float = 0.0) -> dict[str, Any]:
        """Close the connections of `users`, `rate` per second if given, else all at once.

        Returns the time each close started in `closed_at`.
        """
        closed_at: dict[str, float] = {}
        started = self.loop.time()
        for index, user in enumerate(users):
            if rate > 0:
                await asyncio.sleep(max(0.0, started + index / rate - self.loop.time()))
            client = self.clients.pop(user, None)
            if client is not None:
                closed_at[user] = time.time()
                client.close()
        return {"closed": len(closed_at), "closed_at": closed_at}

    async def close_all(self) -> None:
        if self._beat_handle is not None:
            self._beat_handle.cancel()
        for client in self.clients.values():
            with contextlib.suppress(Exception):
                client.close()
        await asyncio.sleep(0.1)


def _sample(values: array[float]) -> list[float]:
    """Return at most _MAX_GROUP_DELAYS of values, evenly spaced."""
    step = max(1, math.ceil(len(values) / _MAX_GROUP_DELAYS))
    return values[::step].tolist()


def _write(line: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(line, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def _serve_commands(source_addresses: int) -> int:
    load = Load(source_addresses)
    reader = asyncio.StreamReader(limit=1 << 26)
    await load.loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer
    )
    commands: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
        "open": load.open,
        "counters": load.counters_now,
        "send": load.send,
        "send_group": load.send_group,
        "group_receipts": load.group_receipts,
        "status": load.status,
        "receipts": load.receipts_now,
        "close": load.close_users,
    }

    async def report_progress() -> None:
        while True:
            await asyncio.sleep(_PROGRESS_INTERVAL)
            _write({"progress": load.progress()})

    reporter = load.loop.create_task(report_progress())
    stop = asyncio.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        load.loop.add_signal_handler(number, stop.set)
    try:
        while not stop.is_set():
            line = await reader.readline()
            if not line:
                break
            request = json.loads(line)
            identifier, name = request.pop("id"), request.pop("command")
            if name == "stop":
                break
            try:
                reply = await commands[name](**request)
            except Exception as error:
                reply = {"error": f"{name} failed: {type(error).__name__}: {error}"}
            _write({"reply": identifier, **reply})
    finally:
        reporter.cancel()
        await load.close_all()
    return 0


def main(argv: list[str] | None = None) -> None:
    """Run a load process until stdin closes, a "stop" command or the deadline."""
    parser = argparse.ArgumentParser(prog="python -m tether.bench.load", description=__doc__)
    parser.add_argument(
        "--deadline", type=float, default=900.0, help="seconds after which the process exits"
    )
    parser.add_argument(
        "--source-addresses",
        type=int,
        default=1,
        help=f"bind clients to 127.0.0.1 to 127.0.0.N in turn (1 to {_MAX_SOURCE_ADDRESSES}); "
        "1 leaves the choice to the kernel",
    )
    arguments = parser.parse_args(argv)
    if not 1 <= arguments.source_addresses <= _MAX_SOURCE_ADDRESSES:
        parser.error(f"--source-addresses must be 1 to {_MAX_SOURCE_ADDRESSES}")
    signal.alarm(max(1, int(arguments.deadline)))  # the default SIGALRM action ends the process
    sys.exit(run(_serve_commands(arguments.source_addresses)))


if __name__ == "__main__":
    main()
