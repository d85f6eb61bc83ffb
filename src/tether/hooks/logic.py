"""A logic worker that asks a backend over HTTP instead of running the reference logic.

It consumes the same logic stream as `tether.logic.LogicService`, so gateways need no change
and keep knowing no business rules:

- a connect request becomes a call to the `connect` hook, whose answer allows the user with
  a contact list, or rejects the connection with a disconnect code;
- a Send, from a client or from the server API's publish, becomes a call to the `message`
  hook, whose answer accepts it with the ids the backend gave it, or rejects it with an error
  code. With `"deliver": true` tether delivers the accepted message to the recipient's devices
  and to the sender's other devices, as the reference logic does after storing one.

There is no store here: Sync gets NOT_FOUND, delivery acks are dropped, and admin requests
and group queries (contacts and groups) get BAD_REQUEST, because history, contacts and groups
live in the backend.
Requests run concurrently, at most `max_in_flight` at once; the stream waits beyond that.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from typing import Any

from tether.auth import validate_user_id
from tether.bus import channels
from tether.bus import envelope_pb2 as env
from tether.bus.base import Bus
from tether.hooks.client import HookClient, HookError
from tether.hooks.config import HookConfig
from tether.protocol import tether_pb2 as pb
from tether.protocol.codes import RECONNECT_RANGE_START, Code
from tether.protocol.errors import BusError

__all__ = ["MAX_HOOK_CONTACTS", "HookLogic"]

logger = logging.getLogger("tether.hooks")

MAX_HOOK_CONTACTS = 10_000
"""Maximum number of contacts a connect hook may return."""
_MAX_UINT64 = 2**64 - 1
_REQUEST_ERROR_CODES = frozenset(code for code in Code if code < RECONNECT_RANGE_START)
_DISCONNECT_CODES = frozenset(code for code in Code if code >= RECONNECT_RANGE_START)
_NO_STORE_MESSAGE = "contacts and groups live in the backend: this server's logic is HTTP hooks"


class _InvalidResponse(ValueError):
    """A hook responded 200 with a JSON object of the wrong shape."""


class HookLogic:
    """Serve the logic stream by calling the backend's connect and message hooks."""

    def __init__(self, config: HookConfig, bus: Bus) -> None:
        self.config = config
        self.client = HookClient(config)
        self._bus = bus
        self._slots = asyncio.Semaphore(config.max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        # Failures are logged at most once per second, with a count of those left out, so a
        # backend that rejects every call cannot flood the log.
        self._last_failure_log = 0.0
        self._unlogged_failures = 0

    async def start(self) -> None:
        """Open the HTTP session and start consuming the logic stream."""
        await self.client.start()
        self._bus.consume(channels.LOGIC_STREAM, self._on_batch)
        logger.info("logic hooks started: calling %s", self.config.url)

    async def close(self) -> None:
        """Cancel the calls in flight (their gateways time out) and close the HTTP session."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.close()

    async def _on_batch(self, payloads: list[bytes]) -> None:
        for payload in payloads:
            await self._slots.acquire()  # backpressure: the stream waits for a free slot
            task = asyncio.get_running_loop().create_task(self._handle(payload))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, payload: bytes) -> None:
        try:
            request = env.Envelope.FromString(payload)
            kind = request.WhichOneof("kind")
            if kind == "connect_request":
                reply = env.Envelope(connect_result=await self._connect(request.connect_request))
            elif kind == "send_request":
                reply = env.Envelope(send_result=await self._message(request.send_request))
            elif kind == "sync_request":
                reply = env.Envelope(
                    sync_reply=env.SyncReply(
                        error_code=Code.NOT_FOUND,
                        error_message="no history: this server's logic is HTTP hooks",
                    )
                )
            elif kind == "admin_request":
                reply = env.Envelope(
                    admin_result=env.AdminResult(
                        error_code=Code.BAD_REQUEST, error_message=_NO_STORE_MESSAGE
                    )
                )
            elif kind == "group_query":
                reply = env.Envelope(
                    group_query_result=env.GroupQueryResult(
                        error_code=Code.BAD_REQUEST, error_message=_NO_STORE_MESSAGE
                    )
                )
            else:
                return  # delivery acks: the backend keeps no read markers through tether
            if request.reply_to:
                reply.request_id = request.request_id
                self._publish(request.reply_to, reply)
        except Exception:
            logger.exception("hook request failed")
        finally:
            self._slots.release()

    async def _connect(self, connect: env.ConnectRequest) -> env.ConnectResult:
        request = {
            "user_id": connect.user_id,
            "device_id": connect.device_id,
            "platform": pb.Platform.Name(connect.platform).removeprefix("PLATFORM_").lower(),
        }
        try:
            answer = await self.client.call("connect", request)
            return _connect_result(answer)
        except HookError as error:
            self._log_failure(f"connect hook for {connect.user_id} failed: {error}")
            return env.ConnectResult(error_code=Code.BACKEND_UNAVAILABLE, error_message=str(error))
        except _InvalidResponse as error:
            logger.error("connect hook response for %s is invalid: %s", connect.user_id, error)
            return env.ConnectResult(
                error_code=Code.BACKEND_UNAVAILABLE, error_message=f"invalid connect hook: {error}"
            )

    async def _message(self, send_request: env.SendRequest) -> env.SendResult:
        send = send_request.send
        request = {
            "sender": send_request.sender,
            "sender_device": send_request.sender_device,
            "recipient": send.recipient,
            "client_message_id": send.client_message_id,
            "body_base64": base64.b64encode(send.body).decode(),
            "from_api": send_request.from_api,
        }
        try:
            answer = await self.client.call("message", request)
            result, message = _send_result(answer, send_request)
        except HookError as error:
            self._log_failure(
                f"message hook for {send.client_message_id} from {send_request.sender} "
                f"failed: {error}"
            )
            return env.SendResult(error_code=Code.UNAVAILABLE, error_message=str(error))
        except _InvalidResponse as error:
            logger.error(
                "message hook response for %s from %s is invalid: %s",
                send.client_message_id,
                send_request.sender,
                error,
            )
            return env.SendResult(
                error_code=Code.INTERNAL, error_message=f"invalid message hook: {error}"
            )
        if message is not None:
            self._deliver(message)
        return result

    def _log_failure(self, text: str) -> None:
        now = time.monotonic()
        if now - self._last_failure_log < 1.0:
            self._unlogged_failures += 1
            return
        if self._unlogged_failures:
            text += f" ({self._unlogged_failures} more hook failures in the last second)"
        logger.warning("%s", text)
        self._last_failure_log = now
        self._unlogged_failures = 0

    def _deliver(self, message: pb.Message) -> None:
        """Publish an accepted message to the recipient's and the sender's devices."""
        frame = pb.Frame(deliver=pb.Deliver(messages=[message])).SerializeToString()
        created = message.timestamp_ms
        to_recipient = env.UserDelivery(frame=frame, created_ms=created)
        self._publish(
            channels.user_channel(message.recipient), env.Envelope(user_delivery=to_recipient)
        )
        to_sender = env.UserDelivery(
            frame=frame, skip_device=message.sender_device, created_ms=created
        )
        self._publish(channels.user_channel(message.sender), env.Envelope(user_delivery=to_sender))

    def _publish(self, channel: str, envelope: env.Envelope) -> None:
        try:
            self._bus.publish(channel, envelope.SerializeToString())
        except BusError as error:
            logger.warning("could not publish to %s: %s", channel, error)


def _connect_result(answer: dict[str, Any]) -> env.ConnectResult:
    """Translate a connect hook's response; raise _InvalidResponse for a wrong shape."""
    allow = answer.get("allow")
    if allow is True:
        contacts = answer.get("contacts", [])
        if not isinstance(contacts, list) or len(contacts) > MAX_HOOK_CONTACTS:
            raise _InvalidResponse(f"contacts must be an array of at most {MAX_HOOK_CONTACTS}")
        for contact in contacts:
            try:
                validate_user_id(contact if isinstance(contact, str) else "")
            except ValueError as error:
                raise _InvalidResponse(f"contact {contact!r}: {error}") from error
        return env.ConnectResult(contacts=contacts, unread=pb.Unread())
    if allow is False:
        code = answer.get("code", Code.FORBIDDEN)
        if code not in _DISCONNECT_CODES or isinstance(code, bool):
            raise _InvalidResponse(f"code {code!r} is not a disconnect code (4000-4999)")
        reason = answer.get("reason", "rejected by the backend")
        if not isinstance(reason, str):
            raise _InvalidResponse("reason must be a string")
        return env.ConnectResult(error_code=code, error_message=reason[:200])
    raise _InvalidResponse("allow must be true or false")


def _send_result(
    answer: dict[str, Any], send_request: env.SendRequest
) -> tuple[env.SendResult, pb.Message | None]:
    """Translate a message hook's response into the ack and the message to deliver, if any."""
    send = send_request.send
    accept = answer.get("accept")
    if accept is False:
        code = answer.get("code", Code.BAD_REQUEST)
        if code not in _REQUEST_ERROR_CODES or isinstance(code, bool):
            raise _InvalidResponse(f"code {code!r} is not a request error code (1-6)")
        text = answer.get("message", "rejected by the backend")
        if not isinstance(text, str):
            raise _InvalidResponse("message must be a string")
        return env.SendResult(error_code=code, error_message=text[:200]), None
    if accept is not True:
        raise _InvalidResponse("accept must be true or false")

    message_id = _unsigned(answer, "message_id")
    sequence = _unsigned(answer, "sequence")
    timestamp_ms = _unsigned(answer, "timestamp_ms") or int(time.time() * 1000)
    conversation_id = answer.get("conversation_id", "")
    if not isinstance(conversation_id, str) or len(conversation_id) > 200:
        raise _InvalidResponse("conversation_id must be a string of at most 200 characters")
    ack = pb.SendAck(
        client_message_id=send.client_message_id,
        message_id=message_id,
        conversation_id=conversation_id,
        sequence=sequence,
        timestamp_ms=timestamp_ms,
    )
    deliver = answer.get("deliver", False)
    if not isinstance(deliver, bool):
        raise _InvalidResponse("deliver must be true or false")
    message = None
    if deliver:
        message = pb.Message(
            message_id=message_id,
            conversation_id=conversation_id,
            sequence=sequence,
            sender=send_request.sender,
            sender_device=send_request.sender_device,
            recipient=send.recipient,
            body=send.body,
            timestamp_ms=timestamp_ms,
            client_message_id=send.client_message_id,
        )
    return env.SendResult(ack=ack), message


def _unsigned(answer: dict[str, Any], name: str) -> int:
    value = answer.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_UINT64:
        raise _InvalidResponse(f"{name} must be an integer from 0 to 2**64-1")
    return value
