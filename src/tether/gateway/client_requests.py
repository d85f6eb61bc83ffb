"""Client requests on an open session: Send, Sync, Refresh, SetStatus and DeliverAck.

GroupRequest is handled in tether.gateway.groups.

Send and Sync become requests on the logic stream and their replies go back to the client as
frames. SetStatus becomes a status transition for presence, and DeliverAck goes to the logic
stream with no reply. Refresh replaces the token expiry that the sweep enforces. After a bus
outage, `ClientRequests` requests each session's unread list and contacts again.
"""

from __future__ import annotations

import functools
import heapq
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from tether.bus import channels
from tether.bus import envelope_pb2 as env
from tether.gateway.connection import Connection
from tether.protocol import tether_pb2 as pb
from tether.protocol.codes import Code
from tether.protocol.errors import AuthenticationError, BusError
from tether.protocol.states import ConnectionState

if TYPE_CHECKING:
    from tether.auth import TokenVerifier
    from tether.bus.base import Bus
    from tether.gateway.config import GatewayConfig
    from tether.gateway.counters import GatewayCounters
    from tether.gateway.deadlines import DeadlineWheel

__all__ = ["MAX_ID_BYTES", "ClientRequests", "is_valid_id"]

logger = logging.getLogger("tether.gateway")

MAX_ID_BYTES = 64
# Requests for a session's state after a bus outage, each request_timeout apart.
_REFRESH_ATTEMPTS = 5
_Transition = env.Transition
# Called once with the reply, or with None on timeout or at gateway shutdown.
_ReplyCallback = Callable[[env.Envelope | None], None]


class ClientRequests:
    """Client request handling of a `Gateway`, which inherits this mixin."""

    if TYPE_CHECKING:
        # Provided by Gateway and PresenceInterest.
        config: GatewayConfig
        bus: Bus
        verifier: TokenVerifier
        counters: GatewayCounters
        _live: DeadlineWheel[Connection]
        _expiries: list[tuple[float, str, Connection]]

        def _close(
            self, connection: Connection, code: Code | None, reason: str, *, abort: bool
        ) -> None: ...

        def _request(
            self, target: str, request: env.Envelope, callback: _ReplyCallback, *, stream: bool
        ) -> bool: ...

        def _add_transition(
            self, connection: Connection, kind: int, status: pb.SetStatus
        ) -> None: ...

        def _update_contacts(
            self, connection: Connection, added: Iterable[str], removed: Iterable[str]
        ) -> None: ...

        def _refresh_groups(self, connection: Connection, groups: Iterable[pb.Group]) -> None: ...

        def _mode_changed(self, connection: Connection) -> None: ...

    # Requests from clients.

    def _on_send(self, connection: Connection, send: pb.Send) -> None:
        self.counters.sends += 1
        problem = _check_send(send, self.config.max_body_bytes)
        if problem is not None:
            code, message = problem
            connection.send_frame(
                pb.Frame(error=pb.Error(code=code, message=message, ref=send.client_message_id))
            )
            return
        request = env.Envelope(
            send_request=env.SendRequest(
                sender=connection.user_id, sender_device=connection.device_id, send=send
            )
        )
        callback = functools.partial(self._on_send_result, connection, send.client_message_id)
        if not self._request(channels.LOGIC_STREAM, request, callback, stream=True):
            callback(None)

    def _on_send_result(
        self, connection: Connection, client_message_id: str, reply: env.Envelope | None
    ) -> None:
        if connection.protocol.state is not ConnectionState.OPEN:
            # The message may be stored: a resend with the same id returns the original ack.
            return
        result = reply.send_result if reply is not None else None
        error = _request_error(
            client_message_id, result, "logic layer did not accept the message in time; resend it"
        )
        if error is not None:
            connection.send_frame(pb.Frame(error=error))
        else:
            assert result is not None
            connection.send_frame(pb.Frame(send_ack=result.ack))

    def _on_refresh(self, connection: Connection, refresh: pb.Refresh) -> None:
        try:
            user_id, expires = self.verifier.verify_claims(refresh.token)
        except AuthenticationError as error:
            logger.info("rejected token refresh of %s: %s", connection.describe(), error)
            self._close(connection, error.code, f"refresh rejected: {error}", abort=False)
            return
        if user_id != connection.user_id:
            logger.warning("token refresh of %s names user %s", connection.describe(), user_id)
            self._close(
                connection, Code.UNAUTHORIZED, "refresh token names another user", abort=False
            )
            return
        connection.token_expires = expires or 0.0
        self._track_expiry(connection)
        expires_ms = int(connection.token_expires * 1000)
        connection.send_frame(pb.Frame(refreshed=pb.Refreshed(token_expires_ms=expires_ms)))

    def _track_expiry(self, connection: Connection) -> None:
        """Schedule the close of a connection whose token expires, checked by the sweep."""
        if not connection.token_expires:
            return
        deadline = connection.token_expires + self.verifier.leeway
        heapq.heappush(self._expiries, (deadline, connection.id, connection))
        # Entries of closed or refreshed connections stay until due; rebuild when they dominate.
        if len(self._expiries) > 2 * len(self._live) + 1024:
            self._expiries = [
                (live.token_expires + self.verifier.leeway, live.id, live)
                for live in self._live
                if live.token_expires
            ]
            heapq.heapify(self._expiries)

    def _expire_tokens(self) -> None:
        now = time.time()
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            deadline, _, connection = heapq.heappop(expiries)
            current = connection.token_expires + self.verifier.leeway
            if connection.protocol.state is ConnectionState.OPEN and current == deadline:
                self._close(
                    connection,
                    Code.TOKEN_EXPIRED,
                    "token expired; reconnect with a new one or send Refresh before expiry",
                    abort=False,
                )

    def _on_sync(self, connection: Connection, sync: pb.Sync) -> None:
        if (
            not 0 < len(sync.request_id.encode()) <= MAX_ID_BYTES
            or not sync.conversation_id
            or "\x00" in sync.conversation_id
        ):
            message = (
                f"request_id must be 1 to {MAX_ID_BYTES} bytes and conversation_id set, "
                "without NUL characters"
            )
            connection.send_frame(
                pb.Frame(
                    error=pb.Error(code=Code.BAD_REQUEST, message=message, ref=sync.request_id)
                )
            )
            return
        request = env.Envelope(
            sync_request=env.SyncRequest(
                user_id=connection.user_id, device_id=connection.device_id, sync=sync
            )
        )
        callback = functools.partial(self._on_sync_reply, connection, sync.request_id)
        if not self._request(channels.LOGIC_STREAM, request, callback, stream=True):
            callback(None)

    def _on_sync_reply(
        self, connection: Connection, request_id: str, reply: env.Envelope | None
    ) -> None:
        if connection.protocol.state is not ConnectionState.OPEN:
            return
        result = reply.sync_reply if reply is not None else None
        error = _request_error(request_id, result, "logic layer did not answer in time")
        if error is not None:
            connection.send_frame(pb.Frame(error=error))
        else:
            assert result is not None
            connection.send_frame(pb.Frame(sync_result=result.result))

    def _on_set_status(self, connection: Connection, status: pb.SetStatus) -> None:
        problem = _check_status(status)
        if problem is not None:
            connection.send_frame(pb.Frame(error=pb.Error(code=Code.BAD_REQUEST, message=problem)))
            return
        if status.activity:
            connection.activity = status.activity
        if status.mode:
            connection.mode = status.mode
            self._mode_changed(connection)
        if connection.claimed:  # otherwise the ONLINE reported at the claim has the new status
            self._add_transition(connection, _Transition.KIND_STATUS, status)

    def _on_deliver_ack(self, connection: Connection, ack: pb.DeliverAck) -> None:
        if "\x00" in ack.conversation_id:
            return  # no conversation id contains NUL, so the ack could not match one
        request = env.Envelope(
            deliver_ack=env.DeliverAckRequest(
                user_id=connection.user_id, device_id=connection.device_id, ack=ack
            )
        )
        try:
            self.bus.append(channels.LOGIC_STREAM, request.SerializeToString())
        except BusError as error:
            # Acks only advance a read marker; a later ack covers this one.
            logger.warning("dropped delivery ack of %s: %s", connection.describe(), error)

    # Session refresh after a bus outage.

    def _refresh_session(self, connection: Connection, *, attempt: int) -> None:
        request = env.Envelope(
            connect_request=env.ConnectRequest(
                user_id=connection.user_id,
                device_id=connection.device_id,
                platform=connection.platform,
            )
        )
        callback = functools.partial(self._on_session_refresh, connection, attempt)
        if not self._request(channels.LOGIC_STREAM, request, callback, stream=True):
            logger.warning("could not refresh %s after the outage", connection.describe())

    def _on_session_refresh(
        self, connection: Connection, attempt: int, reply: env.Envelope | None
    ) -> None:
        if connection.protocol.state is not ConnectionState.OPEN:
            return
        if reply is None:
            # Logic workers may come back after the gateway; ask again for a while.
            if attempt < _REFRESH_ATTEMPTS:
                self._refresh_session(connection, attempt=attempt + 1)
            else:
                logger.warning(
                    "logic layer never responded to the refresh of %s", connection.describe()
                )
            return
        result = reply.connect_result
        if result.error_code:
            return  # the next reconnect of the client settles it
        contacts = set(result.contacts)
        self._update_contacts(
            connection, contacts - connection.contacts, connection.contacts - contacts
        )
        self._refresh_groups(connection, result.groups)
        connection.send_frame(pb.Frame(unread=result.unread))


_ACTIVITIES = frozenset(pb.Activity.values())
_MODES = frozenset(pb.Mode.values())


def _request_error(
    ref: str, result: env.SendResult | env.SyncReply | None, unanswered: str
) -> pb.Error | None:
    """Return the Error for a request that logic rejected or left without a reply, else None."""
    if result is None:
        return pb.Error(code=Code.UNAVAILABLE, message=unanswered, ref=ref)
    if result.error_code:
        return pb.Error(code=result.error_code, message=result.error_message, ref=ref)
    return None


def _check_status(status: pb.SetStatus) -> str | None:
    """Return what is wrong with a SetStatus, or None if both fields are known values."""
    if status.activity not in _ACTIVITIES:
        return f"unknown activity {status.activity}"
    if status.mode not in _MODES:
        return f"unknown mode {status.mode}"
    return None


def is_valid_id(text: str) -> bool:
    """Tell whether a client-chosen id is 1 to MAX_ID_BYTES bytes with no NUL character.

    The logic store keeps these ids, and PostgreSQL cannot store NUL in text columns.
    """
    return 0 < len(text.encode()) <= MAX_ID_BYTES and "\x00" not in text


def _check_send(send: pb.Send, max_body_bytes: int) -> tuple[int, str] | None:
    """Return (code, message) describing what is wrong with a Send, or None if it is valid."""
    if not is_valid_id(send.client_message_id):
        message = f"client_message_id must be 1 to {MAX_ID_BYTES} bytes without NUL characters"
        return Code.BAD_REQUEST, message
    if not is_valid_id(send.recipient):
        message = f"recipient must be 1 to {MAX_ID_BYTES} bytes without NUL characters"
        return Code.BAD_REQUEST, message
    if len(send.body) > max_body_bytes:
        return Code.BODY_TOO_LARGE, f"body of {len(send.body)} bytes exceeds {max_body_bytes}"
    return None
