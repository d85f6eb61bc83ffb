"""The asyncio client SDK.

    async with Client("tcp://127.0.0.1:7400", token, device_id="laptop") as client:
        ack = await client.send("bob", b"hello")
        async for event in client.events():
            ...

The client sends heartbeats at the interval the server gives. It reconnects after the delay the
server names, or with exponential backoff and jitter when it names none, and moves to the next
of its gateway addresses unless the gateway asked it to come back (docs/protocol.md, section
7). Before a reconnect it keeps unacknowledged messages and resends them after, and the server
recognises them by client_message_id. It stops after a final disconnect code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from urllib.parse import urlsplit

from tether.client import events as ev
from tether.client.catchup import Conversations
from tether.client.groups import GROUP_PREFIX, ClientGroups
from tether.client.transport import TLS_SCHEMES, ClientTransport, check_url, open_transport
from tether.protocol import tether_pb2 as pb
from tether.protocol.codes import Code, is_final
from tether.protocol.connection import PROTOCOL_VERSION
from tether.protocol.errors import ConnectionClosed, RequestError

__all__ = ["Client", "backoff_delay", "reconnect_delay", "stays_on_address"]

logger = logging.getLogger("tether.client")

_ACTIVITIES = {"online": pb.ACTIVITY_ACTIVE, "away": pb.ACTIVITY_IDLE}
_MODES = {
    "online": pb.MODE_AVAILABLE,
    "away": pb.MODE_AVAILABLE,
    "busy": pb.MODE_BUSY,
    "invisible": pb.MODE_INVISIBLE,
}
# Close code reported when the application called close() (RFC 6455, 7.4.1: normal closure).
CLIENT_CLOSED = 1000
# Close code reported when the transport failed without a Disconnect frame.
TRANSPORT_LOST = 1006
# Close code reported when the server's TLS certificate failed verification (RFC 6455, 7.4.1).
TLS_FAILED = 1015
# Share of a token's lifetime after which the client refreshes it.
REFRESH_AT = 0.8
# Seconds a session must last before the reconnect backoff starts again from its first step.
STABLE_SESSION = 10.0


class Client(ClientGroups):
    """A connection to a tether gateway that survives network failures.

    Group requests (`create_group`, `add_group_members`, `list_groups`, `send_to_group`, ...)
    come from `ClientGroups` (tether.client.groups).
    """

    def __init__(
        self,
        url: str | Sequence[str],
        token: str,
        device_id: str,
        *,
        platform: int = pb.PLATFORM_OTHER,
        client_name: str = "tether-python",
        status: str = "online",
        reconnect: bool = True,
        connect_timeout: float = 10.0,
        ack_timeout: float = 10.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        max_events: int = 10_000,
        auto_ack: bool = True,
        token_provider: Callable[[], Awaitable[str]] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        json_frames: bool = False,
    ) -> None:
        """Prepare a client; `connect()` opens it.

        Times are in seconds. `max_events` bounds the events waiting for `events()`: when it
        is full the client stops reading from the socket. `auto_ack` sends a DeliverAck for
        every message as soon as it is queued. `token_provider`, if given, returns a fresh
        token: the client sends it in a Refresh frame at REFRESH_AT of the token's lifetime
        and connects with a fresh one after a reconnect. `ssl_context` verifies the server of a
        tls:// or wss:// URL; None uses the system's trusted certificates. `json_frames` speaks
        the `tether.v1.json` subprotocol (ws:// and wss:// URLs only), for debugging.

        Raises ValueError for a URL that can never work (unknown scheme, no host). A server
        certificate that fails verification ends `connect()` at once with ConnectionClosed
        (code TLS_FAILED); once a session has opened, it is retried like any failed connect.

        `url` is one gateway address or a list of them: each reconnect tries the next one in
        turn, so a client moves to another gateway when its gateway drains or dies. Shuffle
        the list first to spread clients over the gateways. `connect_timeout` bounds each
        attempt, so `connect()` gives every address its own `connect_timeout`.
        """
        self.urls = [url] if isinstance(url, str) else list(url)
        if not self.urls:
            raise ValueError("url must name at least one gateway")
        for address in self.urls:
            check_url(address, json_frames=json_frames)
            if ssl_context is not None and urlsplit(address).scheme not in TLS_SCHEMES:
                raise ValueError(f"ssl_context needs tls:// or wss:// URLs, got {address!r}")
        self.json_frames = json_frames
        self.url = self.urls[0]
        # Position of url in urls; an address may appear in the list more than once.
        self._url_index = 0
        self.ssl_context = ssl_context
        self.token = token
        self.token_provider = token_provider
        self.device_id = device_id
        self.platform = platform
        self.client_name = client_name
        self.reconnect = reconnect
        self.connect_timeout = connect_timeout
        self.ack_timeout = ack_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.auto_ack = auto_ack
        self.session: ev.SessionOpened | None = None
        self.presence: dict[str, ev.Presence] = {}
        self._status = _status_frame(status)
        self._events: asyncio.Queue[ev.Event] = asyncio.Queue(max_events)
        self._conversations = Conversations(
            self._emit, device_id=device_id, auto_ack=auto_ack, timeout=ack_timeout
        )
        self._pending: dict[str, tuple[pb.Send, asyncio.Future[pb.SendAck]]] = {}
        self._transport: ClientTransport | None = None
        self._runner: asyncio.Task[None] | None = None
        self._first_session: asyncio.Future[ev.SessionOpened] | None = None
        self._closing = False
        self._nonce = 0
        self._token_expires_ms = 0
        self._token_issued_ms = 0  # when the current token's expiry was learned
        self._last_reason = "none"
        self._init_groups()

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> ev.SessionOpened:
        """Open the connection and return once the server accepted it.

        Raises ConnectionClosed if the server rejected the connection with a final code (or
        any code when reconnect is off), and TimeoutError if no session opened in time: within
        `connect_timeout` for each address, plus the backoff between them.
        """
        if self._runner is not None:
            raise RuntimeError("connect() was called already")
        self._first_session = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self._run(), name=f"tether-client-{self.device_id}")
        # Each address gets the whole connect_timeout, so a gateway that accepts and never
        # replies uses up its own attempt, not the time of the addresses after it.
        backoff = sum(
            min(self.backoff_max, self.backoff_initial * 2**attempt)
            for attempt in range(len(self.urls) - 1)
        )
        timeout = self.connect_timeout * len(self.urls) + backoff
        try:
            return await asyncio.wait_for(asyncio.shield(self._first_session), timeout)
        except TimeoutError:
            await self.close()
            raise TimeoutError(
                f"no session within {timeout:g} s; last error: {self._last_reason}"
            ) from None
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Send Disconnect, close the connection and stop reconnecting."""
        self._closing = True
        transport = self._transport
        if transport is not None:
            with contextlib.suppress(Exception):
                await transport.send(
                    pb.Frame(
                        disconnect=pb.Disconnect(code=CLIENT_CLOSED, reason="client closed")
                    ).SerializeToString()
                )
            transport.close()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        self._fail_pending(ConnectionClosed(CLIENT_CLOSED, "client closed"))

    async def send(
        self, recipient: str, body: bytes | str, *, client_message_id: str | None = None
    ) -> pb.SendAck:
        """Send a message and return the server's ack once it is stored.

        recipient is a user id, or "g:" and a group id for a group message.

        Raises RequestError if the server rejected it, TimeoutError after ack_timeout, and
        ConnectionClosed if the client stopped. Before a reconnect, unacknowledged messages
        are resent with the same client_message_id, so they are stored once.
        """
        if isinstance(body, str):
            body = body.encode()
        message_id = client_message_id or uuid.uuid4().hex
        send = pb.Send(client_message_id=message_id, recipient=recipient, body=body)
        future: asyncio.Future[pb.SendAck] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = (send, future)
        try:
            if self.session is not None and self._transport is not None:
                with contextlib.suppress(ConnectionError, OSError):
                    await self._transport.send(pb.Frame(send=send).SerializeToString())
            return await asyncio.wait_for(future, self.ack_timeout)
        finally:
            self._pending.pop(message_id, None)

    async def set_status(self, status: str) -> None:
        """Set "online", "away", "busy" or "invisible"; kept across reconnects."""
        self._status = _status_frame(status)
        if self.session is not None and self._transport is not None:
            await self._transport.send(pb.Frame(set_status=self._status).SerializeToString())

    async def events(self) -> AsyncIterator[ev.Event]:
        """Yield events until the client stops for good."""
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, ev.Disconnected) and not event.reconnecting:
                return

    async def next_event(self, timeout: float | None = None) -> ev.Event:
        """Return the next event, waiting at most timeout seconds."""
        return await asyncio.wait_for(self._events.get(), timeout)

    # Connection loop.

    async def _run(self) -> None:
        attempt = 0
        while not self._closing:
            started = asyncio.get_running_loop().time()
            code, reason, server_delay, opened = await self._connect_once()
            if self._closing:
                # close() ended the connection: the transport it closed is not a lost one.
                code, reason = CLIENT_CLOSED, "client closed"
            lasted = asyncio.get_running_loop().time() - started
            if opened and lasted >= STABLE_SESSION:
                attempt = 0  # a session that was accepted and then kicked at once keeps backing off
            self._last_reason = reason
            retry_with_new_token = code == Code.TOKEN_EXPIRED and self.token_provider is not None
            if retry_with_new_token:
                self._token_expires_ms = 1  # long past: the next connect fetches a fresh token
            # A certificate that fails before any session opened is a setting to fix, not an
            # outage to wait out. Later it may be a gateway's certificate being replaced.
            first = self._first_session
            untrusted = code == TLS_FAILED and first is not None and not first.done()
            final = (
                self._closing
                or not self.reconnect
                or untrusted
                or (
                    code not in (TRANSPORT_LOST, TLS_FAILED)
                    and is_final(code)
                    and not retry_with_new_token
                )
            )
            await self._emit(ev.Disconnected(code, reason, reconnecting=not final))
            if final:
                error = ConnectionClosed(code, reason)
                if self._first_session is not None and not self._first_session.done():
                    self._first_session.set_exception(error)
                self._fail_pending(error)
                return
            delay, attempt = reconnect_delay(
                server_delay, attempt, self.backoff_initial, self.backoff_max
            )
            if not stays_on_address(code):
                self._url_index = (self._url_index + 1) % len(self.urls)
                self.url = self.urls[self._url_index]
            logger.info(
                "reconnecting %s to %s in %.2f s after code %d",
                self.device_id,
                self.url,
                delay,
                code,
            )
            await asyncio.sleep(delay)

    async def _connect_once(self) -> tuple[int, str, float, bool]:
        """Run one connection; return (code, reason, server delay in s, whether it opened)."""
        try:
            transport = await open_transport(
                self.url,
                timeout=self.connect_timeout,
                ssl_context=self.ssl_context,
                json_frames=self.json_frames,
            )
        except TimeoutError:
            reason = f"connecting to {self.url} timed out after {self.connect_timeout} s"
            return TRANSPORT_LOST, reason, 0.0, False
        except ssl.SSLCertVerificationError as error:
            reason = (
                f"the certificate of {self.url} failed verification ({error.reason}): "
                f"{error.verify_message}"
            )
            return TLS_FAILED, reason, 0.0, False
        except Exception as error:  # OSError, or one of picows's handshake errors
            reason = f"connecting to {self.url} failed: {type(error).__name__}: {error}"
            return TRANSPORT_LOST, reason, 0.0, False
        self._transport = transport
        heartbeat: asyncio.Task[None] | None = None
        refresher: asyncio.Task[None] | None = None
        opened = False
        code, reason, delay = TRANSPORT_LOST, "connection lost", 0.0
        try:
            if self.token_provider is not None and self._token_expired_soon():
                self.token = await self.token_provider()
            connect = pb.Connect(
                protocol_version=PROTOCOL_VERSION,
                token=self.token,
                device_id=self.device_id,
                platform=self.platform,  # type: ignore[arg-type]
                client_name=self.client_name,
                status=self._status,
            )
            await transport.send(pb.Frame(connect=connect).SerializeToString())
            while True:
                payload = await self._receive(transport)
                if payload is None:
                    break
                frame = pb.Frame.FromString(payload)
                kind = frame.WhichOneof("kind")
                if kind == "disconnect":
                    code = frame.disconnect.code
                    reason = frame.disconnect.reason
                    delay = frame.disconnect.reconnect_delay_ms / 1000
                    break
                if kind == "connected":
                    opened = True
                    heartbeat = asyncio.create_task(self._heartbeat(transport, frame.connected))
                    self._token_expires_ms = frame.connected.token_expires_ms
                    refresher = self._schedule_refresh(transport)
                    await self._on_connected(transport, frame.connected)
                elif kind == "refreshed":
                    self._token_expires_ms = frame.refreshed.token_expires_ms
                    refresher = self._schedule_refresh(transport)
                else:
                    await self._on_frame(transport, kind, frame)
        except (ConnectionError, OSError) as error:
            reason = f"connection lost: {error}"
        finally:
            self.session = None
            self._transport = None
            self._conversations.stop()
            for task in (heartbeat, refresher):
                if task is not None:
                    task.cancel()
            transport.close()
        return code, reason, delay, opened

    def _token_expired_soon(self) -> bool:
        """Tell whether the current token is past REFRESH_AT of its lifetime.

        False when it never expires or its expiry is not known yet (before the first connect).
        """
        if not self._token_expires_ms:
            return False
        lifetime = self._token_expires_ms - self._token_issued_ms
        return time.time() * 1000 >= self._token_issued_ms + lifetime * REFRESH_AT

    def _schedule_refresh(self, transport: ClientTransport) -> asyncio.Task[None] | None:
        """Start the task that sends Refresh before the token expires, if it can be refreshed."""
        self._token_issued_ms = int(time.time() * 1000)
        if self.token_provider is None or not self._token_expires_ms:
            return None
        lifetime = max(0.0, (self._token_expires_ms - self._token_issued_ms) / 1000)
        return asyncio.create_task(self._refresh(transport, lifetime * REFRESH_AT))

    async def _refresh(self, transport: ClientTransport, delay: float) -> None:
        await asyncio.sleep(delay)
        assert self.token_provider is not None
        try:
            self.token = await self.token_provider()
            await transport.send(pb.Frame(refresh=pb.Refresh(token=self.token)).SerializeToString())
        except Exception as error:  # a failing provider must not kill the connection loop
            logger.warning("token refresh failed: %s", error)

    async def _receive(self, transport: ClientTransport) -> bytes | None:
        """Return the next frame, or None if the server has been silent past its timeout."""
        timeout = self.session.offline_timeout if self.session is not None else self.connect_timeout
        try:
            return await asyncio.wait_for(transport.receive(), timeout)
        except TimeoutError:
            logger.warning("server silent for %.1f s; reconnecting", timeout)
            return None

    async def _on_connected(self, transport: ClientTransport, connected: pb.Connected) -> None:
        session = ev.SessionOpened(
            connected.session_id,
            connected.user_id,
            connected.heartbeat_interval_ms / 1000,
            connected.offline_timeout_ms / 1000,
        )
        self.session = session
        self._conversations.connected(transport, connected.user_id)
        for send, _future in list(self._pending.values()):
            await transport.send(pb.Frame(send=send).SerializeToString())
        await self._resend_group_requests(transport)
        if self._first_session is not None and not self._first_session.done():
            self._first_session.set_result(session)
        await self._emit(session)

    async def _on_frame(
        self, transport: ClientTransport, kind: str | None, frame: pb.Frame
    ) -> None:
        if kind == "send_ack":
            self._conversations.on_send_ack(frame.send_ack)
            entry = self._pending.get(frame.send_ack.client_message_id)
            if entry is not None and not entry[1].done():
                entry[1].set_result(frame.send_ack)
        elif kind == "error":
            error = frame.error
            entry = self._pending.get(error.ref)
            if entry is not None and not entry[1].done():
                entry[1].set_exception(RequestError(error.code, error.message))
            elif entry is None and not (
                self._conversations.on_error(error) or self._on_group_error(error)
            ):
                logger.warning("server error %d: %s", error.code, error.message)
        elif kind == "deliver":
            for message in frame.deliver.messages:
                await self._conversations.on_live(message)
        elif kind == "sync_result":
            self._conversations.on_sync_result(frame.sync_result)
        elif kind == "unread":
            self._conversations.on_unread(frame.unread)
        elif kind == "presence_update":
            presence = ev.Presence.from_proto(frame.presence_update.presence)
            known = self.presence.get(presence.user_id)
            if known is None or known.version <= presence.version:
                self.presence[presence.user_id] = presence
                await self._emit(ev.PresenceChanged(presence))
        elif kind == "presence_snapshot":
            contacts = {
                item.user_id: ev.Presence.from_proto(item)
                for item in frame.presence_snapshot.contacts
            }
            self.presence = dict(contacts)
            await self._emit(ev.PresenceSnapshot(contacts))
        elif kind == "contacts_changed":
            changed = frame.contacts_changed
            for user_id in changed.removed:
                self.presence.pop(user_id, None)
            await self._emit(ev.ContactsChanged(list(changed.added), list(changed.removed)))
        elif kind == "group_result":
            self._on_group_result(frame.group_result)
        elif kind == "groups_changed":
            groups = frame.groups_changed
            joined = [ev.Group.from_proto(group) for group in groups.joined]
            self._conversations.on_deleted([GROUP_PREFIX + group for group in groups.deleted])
            self._conversations.on_joined(joined)
            await self._emit(ev.GroupsChanged(joined, list(groups.left), list(groups.deleted)))
        elif kind == "group_counts":
            for count in frame.group_counts.counts:
                await self._emit(ev.GroupOnline(count.group_id, count.online, count.member_count))
        elif kind != "heartbeat_ack":
            logger.debug("ignored frame of kind %s", kind)

    async def _heartbeat(self, transport: ClientTransport, connected: pb.Connected) -> None:
        interval = connected.heartbeat_interval_ms / 1000
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                await asyncio.sleep(interval)
                self._nonce += 1
                await transport.send(
                    pb.Frame(heartbeat=pb.Heartbeat(nonce=self._nonce)).SerializeToString()
                )

    async def _emit(self, event: ev.Event) -> None:
        await self._events.put(event)

    def _fail_pending(self, error: Exception) -> None:
        for _send, future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._fail_group_requests(error)


def stays_on_address(code: int) -> bool:
    """Tell whether a client closed with code should come back to the same gateway.

    OVERLOADED and RATE_LIMITED come from a gateway that is alive and names when to return, so
    the client waits that long and returns to it. Any other end (a drain, a lost or refused
    connection) moves the client to the next address, which keeps it off a dead gateway.
    """
    return code in (Code.OVERLOADED, Code.RATE_LIMITED)


def reconnect_delay(
    server_delay: float, attempt: int, initial: float = 0.5, maximum: float = 30.0
) -> tuple[float, int]:
    """Return the delay before the next connection attempt and the next attempt number.

    A delay the server named is taken as it is and does not grow the backoff: the server
    spreads its clients over a window of its choosing. Without one, the delay is the backoff
    of this attempt, and the next attempt backs off further.
    """
    if server_delay > 0:
        return server_delay, attempt
    return backoff_delay(attempt, initial, maximum), attempt + 1


def backoff_delay(attempt: int, initial: float = 0.5, maximum: float = 30.0) -> float:
    """Return a reconnect delay drawn uniformly between initial / 2 and the exponential bound.

    The bound is initial * 2**attempt, capped at maximum; attempt counts from 0.
    """
    bound = min(maximum, initial * (2**attempt))
    return random.uniform(initial / 2, max(bound, initial / 2))


def _status_frame(status: str) -> pb.SetStatus:
    if status not in _MODES:
        raise ValueError(f"invalid status {status!r}: use online, away, busy or invisible")
    return pb.SetStatus(activity=_ACTIVITIES.get(status, 0), mode=_MODES[status])  # type: ignore[arg-type]
