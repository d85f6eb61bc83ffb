"""The gateway core: client connections, local sessions, heartbeats and local fan-out.

Heartbeats end here: a heartbeat costs one read, one parse and one small write, and never a
bus message (`send_heartbeat_ack` is the path of the usual one). Only transitions (device
online, offline, status) leave the gateway, batched once per pass of the event loop. Timeouts
are found by one periodic sweep over a timing wheel of connections (`DeadlineWheel`), never by
a timer per connection.

Tables, all local to this process:

- `sessions`: user -> device -> open connection. A new connection of a device replaces the
  old one, which is closed with REPLACED. In a cluster the old one may be on another gateway.
  Presence records which connection owns each device, and a gateway whose connection lost
  that place receives a device claim on the user's channel (see `_claim_device`).
- `watchers` and `presence_cache`: presence interest, described in `tether.gateway.interest`.

`Gateway` inherits presence interest from `PresenceInterest` (`tether.gateway.interest`),
the handling of client requests from `ClientRequests` (`tether.gateway.client_requests`) and
group fan-out and online counts from `GroupInterest` (`tether.gateway.groups`).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import math
import os
import random
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from tether.auth import TokenVerifier
from tether.bus import channels
from tether.bus import envelope_pb2 as env
from tether.bus.base import Bus
from tether.bus.requests import RequestTracker
from tether.gateway.client_requests import (
    _REFRESH_ATTEMPTS,
    MAX_ID_BYTES,
    ClientRequests,
    _check_status,
    is_valid_id,
)
from tether.gateway.config import GatewayConfig
from tether.gateway.connection import NO_NAMES, Connection
from tether.gateway.counters import GatewayCounters
from tether.gateway.deadlines import DeadlineWheel
from tether.gateway.groups import GroupInterest
from tether.gateway.interest import PresenceInterest
from tether.gateway.limits import ConnectionRateLimiter, PerKeyCounter, TokenBucket
from tether.gateway.presence_link import BusPresenceLink, PresenceLink
from tether.presence.cluster import LocalDevice
from tether.protocol import tether_pb2 as pb
from tether.protocol.codes import RECONNECT_RANGE_START, Code
from tether.protocol.connection import PROTOCOL_VERSION
from tether.protocol.errors import AuthenticationError, BusError
from tether.protocol.states import ConnectionState

if TYPE_CHECKING:
    from tether.gateway.preamble import Preamble

__all__ = ["Gateway"]

logger = logging.getLogger("tether.gateway")

# New connections since the last gc.freeze() that trigger another one.
_GC_FREEZE_STEP = 1000
_Transition = env.Transition
# Enum members looked up once. On Python 3.11 each lookup on the class calls
# EnumType.__getattr__, which costs more than the rest of a state check on the heartbeat path.
_OPEN = ConnectionState.OPEN
_CLOSING = ConnectionState.CLOSING
_CLOSED = ConnectionState.CLOSED


class Gateway(PresenceInterest, ClientRequests, GroupInterest):
    """Connection handling shared by the TCP and WebSocket servers of one process."""

    def __init__(
        self,
        config: GatewayConfig,
        bus: Bus,
        verifier: TokenVerifier,
        presence: PresenceLink | None = None,
    ) -> None:
        """Create a gateway; presence defaults to the presence service on the bus."""
        self.config = config
        self.bus = bus
        self.verifier = verifier
        self.presence: PresenceLink = presence or BusPresenceLink(bus, self._send_request)
        self.id = config.gateway_id or f"gw-{os.urandom(4).hex()}"
        self.reply_channel = channels.gateway_channel(self.id)

        self.connections: dict[str, Connection] = {}
        self.sessions: dict[str, dict[str, Connection]] = {}
        self.watchers: dict[str, set[Connection]] = {}
        self.presence_cache: dict[str, pb.UserPresence] = {}
        self.requests: RequestTracker[env.Envelope] = RequestTracker()
        self.counters = GatewayCounters()  # read by the metrics endpoint

        # With the PROXY protocol on: sockets still in their PROXY header or the TLS handshake
        # after it, in accept order.
        self._handshakes: OrderedDict[Preamble, None] = OrderedDict()
        # Connections waiting for their Connect frame, in accept order.
        self._awaiting: OrderedDict[Connection, None] = OrderedDict()
        # Open connections, by the tick of the sweep that checks whether they fell silent.
        self._live: DeadlineWheel[Connection] = DeadlineWheel(config.sweep_interval)
        # Connections closing, in the order their flush deadline falls.
        self._closing: OrderedDict[Connection, None] = OrderedDict()

        self._dirty: list[Connection] = []
        self._transitions: list[env.Transition] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._next_connection = 0
        self._prefix = os.urandom(3).hex()
        self._started = False
        self._frozen_at = 0  # connection count at the last gc.freeze()
        self._claims: set[asyncio.Task[None]] = set()  # device claims waiting for the bus
        self._limit_hits: Counter[str] = Counter()  # closes by limit, logged once per sweep
        # Token expiry deadlines (Unix time plus leeway), soonest first.
        self._expiries: list[tuple[float, str, Connection]] = []
        limits = config.limits
        self._connect_limiter = ConnectionRateLimiter(
            limits.new_connections_per_second,
            limits.new_connection_burst,
            limits.retry_window,
            0.0,
        )
        self._per_address: PerKeyCounter[str] = PerKeyCounter(limits.max_connections_per_ip)
        self._init_groups()

    # Life cycle.

    async def start(self) -> None:
        """Subscribe to the reply channel and start the sweep."""
        self._loop = asyncio.get_running_loop()
        self.bus.subscribe(self.reply_channel, self._on_reply)
        self._sweeper = self._loop.call_later(self.config.sweep_interval, self._sweep)
        self._start_groups()
        self._started = True
        logger.info("gateway %s started", self.id)

    async def close(self, code: Code = Code.SHUTDOWN, reason: str = "server shutting down") -> None:
        """Close every connection with code and stop the sweep.

        Each client gets a random reconnect delay up to `reconnect_spread`, so a restart does
        not bring every client back in the same instant. Closing a gateway that never started
        (another part failed to start first) does nothing.
        """
        if not self._started:
            return
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._stop_groups()
        for preamble in list(self._handshakes):
            preamble.abort()
        spread_ms = int(self.config.reconnect_spread * 1000)
        for connection in list(self.connections.values()):
            delay_ms = random.randint(0, spread_ms) if spread_ms else 0
            self._close(connection, code, reason, abort=False, reconnect_delay_ms=delay_ms)
        # The sweep no longer runs, so enforce the close timeout here.
        deadline = self._now() + self.config.close_timeout
        while self.connections and self._now() < deadline:
            await asyncio.sleep(0.02)
        for connection in list(self.connections.values()):
            logger.info("aborting %s: close did not finish in time", connection.describe())
            connection.close_transport(abort=True)
        self._flush()
        self._flush_transitions()
        self.requests.fail_all()
        self.bus.unsubscribe(self.reply_channel, self._on_reply)
        logger.info("gateway %s stopped", self.id)

    def new_connection_id(self) -> str:
        """Return an id unique within this gateway run."""
        self._next_connection += 1
        return f"{self._prefix}-{self._next_connection}"

    # Transport callbacks.

    def connection_made(
        self,
        connection: Connection,
        peer: object,
        *,
        accepted_at: float | None = None,
        via: object = None,
    ) -> None:
        """Register a new transport connection, which has connect_timeout to log in.

        peer is the client's address: (host, port, ...) as asyncio reports it, or a bare host.
        When a proxy reported it, via is the proxy's address, for logs. If a TLS handshake or
        a PROXY header came first, the connect timeout runs from accepted_at, the loop time of
        the TCP accept. Otherwise it runs from now.

        Above the gateway's connection rate, or the limit of connections from one address,
        the client is closed at once with OVERLOADED and a jittered delay before it may retry.
        """
        now = self._now()
        # NOTE: a connection that went through a preamble joins _awaiting after others that
        # were accepted later, so the sweep may close it late, by at most its handshake time.
        connection.last_heard = now if accepted_at is None else accepted_at
        self.connections[connection.id] = connection
        accepted = self.counters.accepted
        accepted[connection.transport_name] = accepted.get(connection.transport_name, 0) + 1
        self._awaiting[connection] = None
        address = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        connection.peer = f"{address}:{peer[1]}" if isinstance(peer, tuple) else address
        if isinstance(via, tuple):
            connection.peer += f" via {via[0]}:{via[1]}"
        elif via is not None:
            connection.peer += f" via {via}"
        limits = self.config.limits
        connection.bucket = TokenBucket(limits.frames_per_second, limits.frame_burst, now)

        retry_after = self._connect_limiter.retry_after(now)
        if retry_after is not None:
            self._reject(connection, "too many new connections", retry_after)
            return
        if not self._per_address.acquire(address):
            self._reject(connection, f"too many connections from {address}", self._retry_delay())
            return
        connection.address = address
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("accepted %s from %s", connection.describe(), connection.peer)

    def _reject(self, connection: Connection, reason: str, retry_after: float) -> None:
        # Counted, not logged one by one: a storm would otherwise flood the log.
        self._limit_hits[reason.split(" from ")[0]] += 1
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("rejected %s from %s: %s", connection.describe(), connection.peer, reason)
        self._close(
            connection,
            Code.OVERLOADED,
            reason,
            abort=False,
            reconnect_delay_ms=math.ceil(retry_after * 1000),
        )

    def count_rejection(self, reason: str) -> None:
        """Count a connection turned away before it was registered, for the sweep's summary."""
        self._limit_hits[reason] += 1

    def track_handshake(self, preamble: Preamble) -> None:
        """Watch a socket in its PROXY header or TLS handshake, so the sweep can time it out."""
        self._handshakes[preamble] = None

    def end_handshake(self, preamble: Preamble) -> None:
        """Stop watching a preamble that finished, failed or was closed."""
        self._handshakes.pop(preamble, None)

    def _retry_delay(self) -> float:
        """Return a delay spread over the retry window, never zero."""
        return random.uniform(0.001, self.config.limits.retry_window)

    def heard(self, connection: Connection) -> None:
        """Record that bytes arrived on an open connection: any frame counts as liveness.

        Before the session opens, only the accept time counts, so a client that trickles a
        Connect frame byte by byte still hits the connect timeout.
        """
        if connection.protocol.state is _OPEN:
            connection.last_heard = self._loop.time()  # type: ignore[union-attr]

    def connection_lost(self, connection: Connection, exc: Exception | None) -> None:
        """Forget a connection whose transport is gone."""
        if connection.address:
            self._per_address.release(connection.address)
            connection.address = ""
        was_open = connection.protocol.state is ConnectionState.OPEN
        if connection.protocol.state is not ConnectionState.CLOSED:
            connection.protocol.move_to(ConnectionState.CLOSED)
        self._release(connection)
        self._closing.pop(connection, None)
        if self.connections.pop(connection.id, None) is not None:
            closed = self.counters.closed
            closed[connection.transport_name] = closed.get(connection.transport_name, 0) + 1
        connection.outbox.clear()
        if was_open:
            reason = f"transport lost: {exc}" if exc else "closed by client"
            logger.info("closed %s (%s)", connection.describe(), reason)

    def peer_finished(self, connection: Connection) -> None:
        """Close a connection whose client half-closed: it will send nothing more."""
        self._close(connection, None, "client closed its side", abort=False)

    def protocol_violation(self, connection: Connection) -> None:
        """Close a connection whose protocol core recorded a violation."""
        violation = connection.protocol.violation
        assert violation is not None
        logger.info("protocol violation by %s: %s", connection.describe(), violation)
        self._close(connection, violation.code, str(violation), abort=False)

    def slow_consumer(self, connection: Connection) -> None:
        """Close a connection whose outgoing queue overflowed."""
        logger.warning(
            "slow consumer %s: %d bytes queued",
            connection.describe(),
            connection.outbox_bytes + connection.push_queue_bytes,
        )
        # Drop what is not yet written. The Disconnect goes after the bytes the transport
        # already buffers, and the close timeout aborts a client that never reads them.
        connection.outbox.clear()
        connection.outbox_bytes = 0
        self._close(connection, Code.SLOW_CONSUMER, "outgoing queue overflowed", abort=False)

    def close_connection(self, connection: Connection, code: Code, reason: str) -> None:
        """Send Disconnect with code and close the connection."""
        self._close(connection, code, reason, abort=False)

    # Writes.

    def mark_dirty(self, connection: Connection) -> None:
        """Schedule connection's outbox for the next flush."""
        if not self._dirty:
            self._loop.call_soon(self._flush)  # type: ignore[union-attr]
        self._dirty.append(connection)

    def _flush(self) -> None:
        dirty = self._dirty
        self._dirty = []
        for connection in dirty:
            try:
                connection.flush()
            except Exception:
                # One broken transport must not keep the others' frames queued forever.
                logger.exception("flush failed for %s", connection.describe())
                connection.outbox.clear()
                connection.outbox_bytes = 0

    # Frames from clients.

    def handle_frames(self, connection: Connection, frames: list[pb.Frame]) -> None:
        """Act on each validated frame of one read, in order."""
        bucket = connection.bucket
        if bucket is not None and not bucket.take(self._loop.time(), len(frames)):  # type: ignore[union-attr]
            self._close_rate_limited(connection)
            return
        for frame in frames:
            kind = frame.WhichOneof("kind")
            if kind == "heartbeat":
                self._on_heartbeat(connection, frame.heartbeat)
            elif kind == "send":
                self._on_send(connection, frame.send)
            elif kind == "connect":
                self._on_connect(connection, frame.connect)
            elif kind == "set_status":
                self._on_set_status(connection, frame.set_status)
            elif kind == "deliver_ack":
                self._on_deliver_ack(connection, frame.deliver_ack)
            elif kind == "sync":
                self._on_sync(connection, frame.sync)
            elif kind == "refresh":
                self._on_refresh(connection, frame.refresh)
            elif kind == "group_request":
                self._on_group_request(connection, frame.group_request)
            elif kind == "unread":
                # The client asks for its unread list again, after a truncated one.
                self._refresh_session(connection, attempt=_REFRESH_ATTEMPTS)
            elif kind == "disconnect":
                logger.info(
                    "client %s disconnects: code %d %s",
                    connection.describe(),
                    frame.disconnect.code,
                    frame.disconnect.reason[:100],
                )
                self._close(connection, None, "", abort=False)
            state = connection.protocol.state
            if state is _CLOSING or state is _CLOSED:
                return

    def send_heartbeat_ack(self, connection: Connection, ack: bytes) -> None:
        """Send ack, the HeartbeatAck the protocol core built for a heartbeat it matched.

        Hot path: the steps of a heartbeat through `heard` and `handle_frames` in the same
        order (liveness, frame rate, counter, HeartbeatAck), without Protobuf objects, and
        the HeartbeatAck written at once (`Connection.send_now`).
        """
        now = self._loop.time()  # type: ignore[union-attr]
        connection.last_heard = now
        bucket = connection.bucket
        if bucket is not None and not bucket.take(now):
            self._close_rate_limited(connection)
            return
        self.counters.heartbeats += 1
        connection.send_now(ack)

    def _close_rate_limited(self, connection: Connection) -> None:
        """Close a connection whose frames emptied its token bucket."""
        self._limit_hits["frame rate exceeded"] += 1
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("rate limit exceeded by %s", connection.describe())
        delay_ms = math.ceil(self._retry_delay() * 1000)
        self._close(
            connection, Code.RATE_LIMITED, "too many frames per second", abort=False,
            reconnect_delay_ms=delay_ms,
        )  # fmt: skip

    def _on_heartbeat(self, connection: Connection, heartbeat: pb.Heartbeat) -> None:
        self.counters.heartbeats += 1
        ack = pb.Frame(
            heartbeat_ack=pb.HeartbeatAck(nonce=heartbeat.nonce, server_time_ms=_now_ms())
        )
        connection.send_frame(ack)

    def _on_connect(self, connection: Connection, connect: pb.Connect) -> None:
        self._awaiting.pop(connection, None)
        if connect.protocol_version != PROTOCOL_VERSION:
            self._close(
                connection,
                Code.UNSUPPORTED_VERSION,
                f"protocol_version {connect.protocol_version} is not supported; "
                f"use {PROTOCOL_VERSION}",
                abort=False,
            )
            return
        if not is_valid_id(connect.device_id) or len(connect.client_name.encode()) > MAX_ID_BYTES:
            self._close(
                connection,
                Code.PROTOCOL_ERROR,
                f"device_id must be 1 to {MAX_ID_BYTES} bytes without NUL characters and "
                f"client_name at most {MAX_ID_BYTES} bytes",
                abort=False,
            )
            return
        problem = _check_status(connect.status)
        if problem is not None:
            self._close(connection, Code.PROTOCOL_ERROR, problem, abort=False)
            return
        try:
            user_id, expires = self.verifier.verify_claims(connect.token)
        except AuthenticationError as error:
            logger.info(
                "rejected connect of %s from %s: %s", connection.describe(), connection.peer, error
            )
            self._close(connection, error.code, str(error), abort=False)
            return
        connection.token_expires = expires or 0.0

        connection.user_id = user_id
        connection.device_id = connect.device_id
        connection.platform = connect.platform
        connection.activity = connect.status.activity or pb.ACTIVITY_ACTIVE
        connection.mode = connect.status.mode
        request = env.Envelope(
            connect_request=env.ConnectRequest(
                user_id=user_id, device_id=connect.device_id, platform=connect.platform
            )
        )
        callback = functools.partial(self._on_connect_result, connection)
        if not self._request(channels.LOGIC_STREAM, request, callback, stream=True):
            self._close(
                connection, Code.BACKEND_UNAVAILABLE, "logic layer is overloaded", abort=False
            )

    def _on_connect_result(self, connection: Connection, reply: env.Envelope | None) -> None:
        if connection.protocol.state is not ConnectionState.AUTHENTICATING:
            return  # closed while the logic layer was thinking
        if reply is None:
            logger.warning(
                "logic layer did not respond in time to the connect of %s", connection.describe()
            )
            self._close(connection, Code.BACKEND_UNAVAILABLE, "logic layer timed out", abort=False)
            return
        result = reply.connect_result
        if result.error_code:
            logger.info("logic rejected %s: %s", connection.describe(), result.error_message)
            try:
                code = Code(result.error_code)
            except ValueError:
                code = Code.FORBIDDEN
            if code < RECONNECT_RANGE_START:
                code = Code.FORBIDDEN  # a request error code is no close code
            self._close(connection, code, result.error_message, abort=False)
            return
        self._open_session(connection, result.contacts, result.unread)
        if connection.state is ConnectionState.OPEN:  # not refused for too many devices
            self._enter_groups(connection, result.groups)

    def _open_session(
        self, connection: Connection, contacts: Iterable[str], unread: pb.Unread
    ) -> None:
        user_id = connection.user_id
        devices = self.sessions.get(user_id)
        limit = self.config.limits.max_devices_per_user
        if devices is not None and connection.device_id not in devices and len(devices) >= limit:
            self._close(
                connection,
                Code.TOO_MANY_DEVICES,
                f"{len(devices)} devices of this user are connected here; the limit is {limit}",
                abort=False,
            )
            return
        if devices is None:
            devices = self.sessions[user_id] = {}
            self.bus.subscribe(channels.user_channel(user_id), self._on_user_message)
        previous = devices.get(connection.device_id)
        devices[connection.device_id] = connection
        if previous is not None:
            # The session table already points at the new connection, so closing the old
            # one emits no OFFLINE transition.
            self._close(previous, Code.REPLACED, "replaced by a newer connection", abort=False)

        connection.protocol.move_to(ConnectionState.OPEN)
        connection.last_heard = self._now()
        self._live.schedule(connection, connection.last_heard + self.config.offline_timeout)
        self._track_expiry(connection)
        config = self.config
        connection.send_frame(
            pb.Frame(
                connected=pb.Connected(
                    session_id=connection.id,
                    user_id=user_id,
                    heartbeat_interval_ms=int(config.heartbeat_interval * 1000),
                    offline_timeout_ms=int(config.offline_timeout * 1000),
                    server_time_ms=_now_ms(),
                    max_frame_bytes=config.max_frame_bytes,
                    protocol_version=PROTOCOL_VERSION,
                    max_body_bytes=config.max_body_bytes,
                    token_expires_ms=int(connection.token_expires * 1000),
                )
            )
        )
        # Unread goes before any Deliver, so the client knows its position in each conversation.
        connection.send_frame(pb.Frame(unread=unread))
        logger.info(
            "opened %s over %s from %s",
            connection.describe(),
            connection.transport_name,
            connection.peer,
        )
        if previous is not None and previous.claimed:
            # This gateway has listened on the user's channel since the previous claim.
            self._claim(connection)
        else:
            self._claim_device(connection)
        connection.contacts = self._limit_watched(
            connection, frozenset(contacts) if contacts else NO_NAMES
        )
        self._watch(connection, connection.contacts)
        self._send_snapshot(connection)

    def _claim_device(self, connection: Connection) -> None:
        """Report the connection ONLINE once this gateway listens on the user's channel.

        Presence decides which connection owns a device: the one whose ONLINE it applied
        last. In a cluster, the script that applies an ONLINE over another gateway's owner
        publishes a DeviceClaim naming that owner on the user's channel, and its gateway
        closes it. That gateway listens there, because it reported its owner only after its
        own subscription was confirmed. So of two connections of one device, however close
        in time and however far apart the gateways' clocks are, exactly one stays open, and
        it is the one presence records.
        """
        task = self._loop.create_task(self._claim_when_listening(connection))  # type: ignore[union-attr]
        self._claims.add(task)
        task.add_done_callback(self._claims.discard)

    async def _claim_when_listening(self, connection: Connection) -> None:
        try:
            await self.bus.flush_subscriptions()
        except BusError as error:
            logger.warning("device claim of %s failed: %s", connection.describe(), error)
            return
        if connection.protocol.state is ConnectionState.OPEN:
            self._claim(connection)

    def _claim(self, connection: Connection) -> None:
        connection.claimed = True
        status = pb.SetStatus(activity=connection.activity, mode=connection.mode)
        self._add_transition(connection, _Transition.KIND_ONLINE, status)

    # Messages from the bus.

    def _on_reply(self, channel: str, payload: bytes) -> None:
        reply = env.Envelope.FromString(payload)
        deadline = self.requests.deadline_of(reply.request_id)
        if deadline is not None and self.requests.resolve(reply.request_id, reply):
            counters = self.counters
            counters.requests_replied += 1
            counters.request_latency.observe(self._now() - deadline + self.config.request_timeout)

    def _on_user_message(self, channel: str, payload: bytes) -> None:
        message = env.Envelope.FromString(payload)
        user_id = channels.user_of_channel(channel)
        devices = self.sessions.get(user_id)
        if not devices:
            return
        kind = message.WhichOneof("kind")
        if kind == "user_delivery":
            delivery = message.user_delivery
            frame = delivery.frame
            skip = delivery.skip_device
            counters = self.counters
            if delivery.created_ms:
                counters.delivery_latency.observe(max(0, _now_ms() - delivery.created_ms) / 1000)
            # A copy: a device closed as a slow consumer leaves the dict during the loop.
            for device_id, connection in list(devices.items()):
                if device_id != skip:
                    connection.send_payload(frame)
                    counters.deliveries += 1
        elif kind == "device_claim":
            claim = message.device_claim
            holder = devices.get(claim.device_id)
            if (
                holder is not None
                and holder.id == claim.replaced_connection_id
                and claim.replaced_gateway_id == self.id
            ):
                # Presence names the newer session already: closing this one emits no OFFLINE.
                del devices[claim.device_id]
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug(
                        "%s replaced by conn=%s on gateway %s",
                        holder.describe(),
                        claim.connection_id,
                        claim.gateway_id,
                    )
                self._close(holder, Code.REPLACED, "replaced by a newer connection", abort=False)
        elif kind == "contacts_update":
            update = message.contacts_update
            for connection in list(devices.values()):
                self._update_contacts(connection, update.added, update.removed)
        elif kind == "user_disconnect":
            self._disconnect_by_backend(devices, message.user_disconnect)
        elif kind == "groups_update":
            groups = message.groups_update
            for connection in list(devices.values()):
                self._update_groups(connection, groups.joined, groups.left)
        else:
            logger.warning("ignored message of kind %s on %s", kind, channel)

    def _disconnect_by_backend(
        self, devices: dict[str, Connection], request: env.UserDisconnect
    ) -> None:
        """Close the devices a backend named through the server HTTP API (all when none)."""
        try:
            code = Code(request.code)
        except ValueError:
            code = Code.FORBIDDEN  # the API checks codes; this guards against a newer sender
        if code < RECONNECT_RANGE_START:
            code = Code.FORBIDDEN
        reason = request.reason or "disconnected by the server"
        if request.device_id:
            holder = devices.get(request.device_id)
            targets = [holder] if holder is not None else []
        else:
            targets = list(devices.values())
        for connection in targets:
            self._close(connection, code, reason, abort=False)

    # Transitions.

    def _add_transition(self, connection: Connection, kind: int, status: pb.SetStatus) -> None:
        transitions = self.counters.transitions
        transitions[kind] = transitions.get(kind, 0) + 1
        heard_ms = _now_ms() - int((self._now() - connection.last_heard) * 1000)
        self._transitions.append(
            _Transition(
                kind=kind,  # type: ignore[arg-type]
                user_id=connection.user_id,
                device_id=connection.device_id,
                connection_id=connection.id,
                status=status,
                at_ms=heard_ms,
            )
        )
        if len(self._transitions) == 1:
            self._loop.call_soon(self._flush_transitions)  # type: ignore[union-attr]

    def _flush_transitions(self) -> None:
        if not self._transitions:
            return
        transitions = self._transitions
        self._transitions = []
        self.presence.report(self.id, transitions)

    def after_bus_outage(self) -> None:
        """Recover what pub/sub dropped while the bus was down.

        Deliveries and presence changes published during the outage reached no one here. Each
        open connection gets a fresh Unread list (its client fetches what it missed with Sync)
        and its contact list again, and every watched user's presence is read again.
        """
        connections = [c for devices in self.sessions.values() for c in devices.values()]
        logger.info("bus is back: refreshing %d sessions", len(connections))
        for connection in connections:
            self._refresh_session(connection, attempt=1)
        if self.watchers:
            self.presence.query(list(self.watchers), self._on_presence_refresh)

    def local_devices(self) -> list[LocalDevice]:
        """Return every open session of this gateway, for a presence resync."""
        return [
            LocalDevice(user_id, device_id, connection.id, connection.activity, connection.mode)
            for user_id, devices in self.sessions.items()
            for device_id, connection in devices.items()
            if connection.claimed  # the others report ONLINE themselves once they claim
        ]

    # Closing.

    def _close(
        self,
        connection: Connection,
        code: Code | None,
        reason: str,
        *,
        abort: bool,
        reconnect_delay_ms: int = 0,
    ) -> None:
        state = connection.protocol.state
        if connection.closing_deadline or state is ConnectionState.CLOSED:
            return  # closing already; the protocol core may have moved to CLOSING by itself
        # Mark the close first: nothing below may start it again, not even a full outbox.
        connection.closing_deadline = self._now() + self.config.close_timeout
        disconnects = self.counters.disconnects
        disconnects[code] = disconnects.get(code, 0) + 1
        if code is not None and not abort:
            frame = pb.Frame(
                disconnect=pb.Disconnect(
                    code=code, reason=reason[:200], reconnect_delay_ms=reconnect_delay_ms
                )
            )
            # Past the outbox limit on purpose: the Disconnect is the last frame, and the
            # close timeout bounds how long its bytes are held.
            connection.outbox.append(connection.protocol.encode(frame))
        if abort:
            connection.outbox.clear()
            connection.outbox_bytes = 0
        else:
            # What is queued goes out now, before the half-close: no write may follow it.
            connection.flush()
        connection.protocol.move_to(ConnectionState.CLOSING)
        if state is ConnectionState.OPEN or code is not None:
            logger.info(
                "closing %s: code %s (%s)",
                connection.describe(),
                int(code) if code is not None else "-",
                reason or "client request",
            )
        self._release(connection)
        self._closing[connection] = None
        connection.close_transport(abort=abort, code=int(code) if code is not None else 1000)

    def _release(self, connection: Connection) -> None:
        """Remove a connection from every table; emit OFFLINE if it owned its device."""
        self._awaiting.pop(connection, None)
        if connection not in self._live:
            return  # never opened, or released already
        self._live.discard(connection)
        user_id = connection.user_id
        devices = self.sessions.get(user_id)
        if devices is not None:
            if devices.get(connection.device_id) is connection:
                del devices[connection.device_id]
                if connection.claimed:
                    self._add_transition(connection, _Transition.KIND_OFFLINE, pb.SetStatus())
            if not devices:
                del self.sessions[user_id]
                self.bus.unsubscribe(channels.user_channel(user_id), self._on_user_message)
        self._unwatch(connection, connection.contacts)
        connection.contacts = NO_NAMES
        self._leave_groups(connection)

    # Sweep.

    def _sweep(self) -> None:
        now = self._now()
        config = self.config
        try:
            self._expire_handshakes(now - config.connect_timeout)
            self._expire(
                self._awaiting,
                now - config.connect_timeout,
                Code.CONNECT_TIMEOUT,
                "no Connect frame within the handshake time",
            )
            self._expire_silent(now)
            while self._closing:
                connection = next(iter(self._closing))
                if connection.closing_deadline > now:
                    break
                del self._closing[connection]
                logger.info("aborting %s: close did not finish in time", connection.describe())
                connection.close_transport(abort=True)
            self.counters.requests_timed_out += self.requests.expire(now)
            self._expire_tokens()
            self._freeze_after_growth()
            self._log_limit_hits()
        except Exception:
            logger.exception("gateway sweep failed")
        finally:
            self._sweeper = self._loop.call_later(config.sweep_interval, self._sweep)  # type: ignore[union-attr]

    def _log_limit_hits(self) -> None:
        """Log one line per sweep for the connections that limits turned away."""
        if self._limit_hits:
            summary = ", ".join(f"{count} {reason}" for reason, count in self._limit_hits.items())
            logger.warning("limits closed connections since the last sweep: %s", summary)
            self._limit_hits.clear()

    def _freeze_after_growth(self) -> None:
        """Move long-lived objects out of the collector's reach after a burst of connections.

        A full collection at 10,000 picows connections took about 100 ms in the measurement
        of docs/websocket-library.md; `gc.freeze()` takes existing objects out of later
        collections. Connections break their own cycles on close, so reference counting still
        frees them.
        """
        count = len(self.connections)
        if count - self._frozen_at >= _GC_FREEZE_STEP:
            gc.freeze()
            self._frozen_at = count
        elif count < self._frozen_at:
            self._frozen_at = count

    def _expire_handshakes(self, cutoff: float) -> None:
        """Close sockets whose PROXY header or TLS handshake is not done in time."""
        handshakes = self._handshakes
        while handshakes:
            preamble = next(iter(handshakes))
            if preamble.accepted_at > cutoff:
                break
            del handshakes[preamble]
            self._limit_hits["handshake timed out"] += 1
            preamble.expire()

    def _expire_silent(self, now: float) -> None:
        """Close open connections that sent no frame within the offline timeout."""
        live = self._live
        timeout = self.config.offline_timeout
        cutoff = now - timeout
        for connection in live.due(now):
            if connection not in live:
                continue  # closed while an earlier one in this sweep was closed
            if connection.last_heard > cutoff:
                live.schedule(connection, connection.last_heard + timeout)
                continue
            self._close(
                connection,
                Code.HEARTBEAT_TIMEOUT,
                "no frame within the offline timeout",
                abort=False,
            )
            live.discard(connection)

    def _expire(
        self, table: OrderedDict[Connection, None], cutoff: float, code: Code, reason: str
    ) -> None:
        while table:
            connection = next(iter(table))
            if connection.last_heard > cutoff:
                break
            self._close(connection, code, reason, abort=False)
            table.pop(connection, None)

    # Helpers.

    def _send_request(
        self,
        target: str,
        request: env.Envelope,
        callback: Callable[[env.Envelope | None], None],
    ) -> bool:
        return self._request(target, request, callback, stream=False)

    def _request(
        self,
        target: str,
        request: env.Envelope,
        callback: Callable[[env.Envelope | None], None],
        *,
        stream: bool,
    ) -> bool:
        """Send a request whose reply goes to callback; False if the bus did not take it."""
        deadline = self._now() + self.config.request_timeout
        request_id = self.requests.add(deadline, callback)
        request.request_id = request_id
        request.reply_to = self.reply_channel
        try:
            if stream:
                self.bus.append(target, request.SerializeToString())
            else:
                self.bus.publish(target, request.SerializeToString())
        except BusError as error:
            logger.warning("bus did not take a request to %s: %s", target, error)
            self.requests.discard(request_id)
            self.counters.requests_refused += 1
            return False
        return True

    def _now(self) -> float:
        return self._loop.time()  # type: ignore[union-attr]

    def stats(self) -> dict[str, int]:
        """Return counts of connections and interest, for logs, tests and metrics."""
        return {
            "connections": len(self.connections),
            "open": len(self._live),
            "users": len(self.sessions),
            "watched_users": len(self.watchers),
            "pending_requests": len(self.requests),
        }


def _now_ms() -> int:
    return int(time.time() * 1000)
