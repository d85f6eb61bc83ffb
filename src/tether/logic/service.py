"""The reference business logic: who may connect, who are contacts, storing and routing messages.

It consumes the logic stream of the bus in batches. Each batch runs in one store transaction;
only after the commit does it publish deliveries and reply to the gateways, so an ack always
means the message is stored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from tether.auth import validate_user_id
from tether.bus import channels
from tether.bus import envelope_pb2 as env
from tether.bus.base import Bus
from tether.logic.store import (
    MAX_STORED_INTEGER,
    Store,
    StoreConflict,
    StoredMessage,
    StoreError,
    describe_database,
    open_store,
)
from tether.protocol import tether_pb2 as pb
from tether.protocol.codes import Code
from tether.protocol.errors import BusError

__all__ = ["LogicConfig", "LogicService"]

logger = logging.getLogger("tether.logic")

# Conversations listed in Unread on connect; a device further behind syncs the rest later.
MAX_UNREAD_LISTED = 1000
DEFAULT_SYNC_PAGE = 100
MAX_SYNC_PAGE = 500
# Bytes of message bodies in one SyncResult. It is well below the gateway's default outgoing
# limit (1 MiB), so a page of large messages cannot close its reader as a slow consumer.
MAX_SYNC_PAGE_BYTES = 256 * 1024
# Runs of a batch whose transaction lost a deadlock to another worker, the first included.
MAX_BATCH_ATTEMPTS = 3


@dataclass(frozen=True, kw_only=True, slots=True)
class LogicConfig:
    """Settings of the reference logic."""

    database: Path | str
    """SQLite database file, or a `postgresql://` URL (tether.db in the data folder by default)."""


@dataclass(slots=True)
class _Outbox:
    """Messages a batch publishes once its transaction has committed."""

    messages: list[tuple[str, bytes]] = field(default_factory=list)

    def add(self, channel: str, envelope: env.Envelope) -> None:
        self.messages.append((channel, envelope.SerializeToString()))


class LogicService:
    """Handle requests from gateways and the command line."""

    def __init__(self, config: LogicConfig, bus: Bus) -> None:
        self.config = config
        self._bus = bus
        self.store: Store | None = None

    async def start(self) -> None:
        """Open the store, migrating it if needed, and start consuming the logic stream.

        Raises StoreError when the database cannot be opened.
        """
        self.store = await open_store(self.config.database)
        self._bus.consume(channels.LOGIC_STREAM, self._on_batch)
        logger.info("logic started with database %s", describe_database(self.config.database))

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()
            self.store = None

    async def _on_batch(self, payloads: list[bytes]) -> None:
        store = self.store
        assert store is not None
        outbox = await self._run_batch(store, payloads)
        for channel, message in outbox.messages:
            try:
                self._bus.publish(channel, message)
            except BusError as error:
                # The message is stored: the recipient's next Unread or Sync brings it.
                logger.warning("could not publish to %s: %s", channel, error)

    async def _run_batch(self, store: Store, payloads: list[bytes]) -> _Outbox:
        """Handle a batch in one transaction; return what to publish once it committed."""
        for attempt in range(1, MAX_BATCH_ATTEMPTS + 1):
            outbox = _Outbox()
            try:
                async with store.transaction():
                    for payload in payloads:
                        await self._handle(store, payload, outbox)
                return outbox
            except StoreConflict as error:
                if attempt == MAX_BATCH_ATTEMPTS:
                    logger.error(
                        "logic batch of %d requests failed %d times: %s",
                        len(payloads),
                        attempt,
                        error,
                    )
                    break
                logger.warning(
                    "logic batch of %d requests rolled back, running it again: %s",
                    len(payloads),
                    error,
                )
            except StoreError as error:
                logger.error("logic batch of %d requests failed: %s", len(payloads), error)
                break
        return self._fail_all(payloads)

    async def _handle(self, store: Store, payload: bytes, outbox: _Outbox) -> None:
        try:
            request = env.Envelope.FromString(payload)
        except Exception:
            logger.error("dropped an undecodable request of %d bytes", len(payload))
            return
        kind = request.WhichOneof("kind")
        try:
            await self._dispatch(store, kind, request, outbox)
        except StoreError:
            raise  # fails the whole batch, which is rolled back and gets retryable errors
        except Exception:
            logger.exception("logic request of kind %s failed", kind)
            outbox.messages.extend(self._fail_all([payload]).messages)

    async def _dispatch(
        self, store: Store, kind: str | None, request: env.Envelope, outbox: _Outbox
    ) -> None:
        if kind == "connect_request":
            await self._connect(store, request, outbox)
        elif kind == "send_request":
            await self._send(store, request, outbox)
        elif kind == "sync_request":
            await self._sync(store, request, outbox)
        elif kind == "deliver_ack":
            ack = request.deliver_ack
            if await store.is_participant(ack.user_id, ack.ack.conversation_id):
                await store.mark_read(
                    ack.user_id, ack.device_id, ack.ack.conversation_id, ack.ack.sequence
                )
            else:
                logger.info("ignored delivery ack of %s for a conversation not theirs", ack.user_id)
        elif kind == "admin_request":
            await self._admin(store, request, outbox)
        else:
            logger.warning("ignored logic request of kind %s", kind)

    async def _connect(self, store: Store, request: env.Envelope, outbox: _Outbox) -> None:
        connect = request.connect_request
        await store.ensure_user(connect.user_id)
        rows = await store.unread(connect.user_id, connect.device_id, MAX_UNREAD_LISTED + 1)
        unread = pb.Unread(
            conversations=[
                pb.ConversationState(
                    conversation_id=conversation, last_sequence=last, read_sequence=read
                )
                for conversation, last, read in rows[:MAX_UNREAD_LISTED]
            ],
            truncated=len(rows) > MAX_UNREAD_LISTED,
        )
        result = env.ConnectResult(contacts=await store.contacts(connect.user_id), unread=unread)
        _reply(outbox, request, env.Envelope(connect_result=result))

    async def _sync(self, store: Store, request: env.Envelope, outbox: _Outbox) -> None:
        sync = request.sync_request.sync
        if not await store.is_participant(request.sync_request.user_id, sync.conversation_id):
            reply = env.SyncReply(
                error_code=Code.NOT_FOUND,
                error_message=f"no conversation {sync.conversation_id!r} of this user",
            )
            _reply(outbox, request, env.Envelope(sync_reply=reply))
            return
        limit = min(sync.limit or DEFAULT_SYNC_PAGE, MAX_SYNC_PAGE)
        after = min(sync.after_sequence, MAX_STORED_INTEGER)
        if sync.from_read_marker:
            user_id = request.sync_request.user_id
            device_id = request.sync_request.device_id
            after = await store.read_marker(user_id, device_id, sync.conversation_id)
        messages = await store.history(sync.conversation_id, after, limit + 1)
        page = _within_budget(messages[:limit], MAX_SYNC_PAGE_BYTES)
        result = pb.SyncResult(
            request_id=sync.request_id,
            conversation_id=sync.conversation_id,
            messages=[_to_message(stored) for stored in page],
            has_more=len(messages) > len(page),
            last_sequence=await store.last_sequence(sync.conversation_id),
        )
        _reply(outbox, request, env.Envelope(sync_reply=env.SyncReply(result=result)))

    async def _send(self, store: Store, request: env.Envelope, outbox: _Outbox) -> None:
        send_request = request.send_request
        send = send_request.send
        sender = send_request.sender
        # A backend sending through the HTTP API vouches for the pair; clients need contacts.
        if not send_request.from_api and not await store.are_contacts(sender, send.recipient):
            result = env.SendResult(
                error_code=Code.NOT_A_CONTACT,
                error_message=f"{send.recipient!r} is not a contact of {sender!r}",
            )
            _reply(outbox, request, env.Envelope(send_result=result))
            return

        stored = await store.store_direct(
            sender=sender,
            sender_device=send_request.sender_device,
            recipient=send.recipient,
            client_message_id=send.client_message_id,
            body=send.body,
        )
        if stored.new:
            frame = pb.Frame(deliver=pb.Deliver(messages=[_to_message(stored)])).SerializeToString()
            created = stored.created_ms
            to_recipient = env.Envelope(
                user_delivery=env.UserDelivery(frame=frame, created_ms=created)
            )
            outbox.add(channels.user_channel(stored.recipient), to_recipient)
            # The sender's other devices get the message too; the sending device has the ack.
            to_sender = env.Envelope(
                user_delivery=env.UserDelivery(
                    frame=frame, skip_device=stored.sender_device, created_ms=created
                )
            )
            outbox.add(channels.user_channel(sender), to_sender)
        ack = pb.SendAck(
            client_message_id=stored.client_message_id,
            message_id=stored.message_id,
            conversation_id=stored.conversation_id,
            sequence=stored.sequence,
            timestamp_ms=stored.created_ms,
        )
        _reply(outbox, request, env.Envelope(send_result=env.SendResult(ack=ack)))

    async def _admin(self, store: Store, request: env.Envelope, outbox: _Outbox) -> None:
        admin = request.admin_request
        operation = admin.operation
        if operation not in ("contacts.add", "contacts.remove") or len(admin.args) != 2:
            result = env.AdminResult(
                error_code=Code.BAD_REQUEST,
                error_message=f"unknown operation {operation!r} with {len(admin.args)} arguments",
            )
            _reply(outbox, request, env.Envelope(admin_result=result))
            return
        user_a, user_b = admin.args
        try:
            validate_user_id(user_a)
            validate_user_id(user_b)
            if operation == "contacts.add":
                changed = await store.add_contacts(user_a, user_b)
            else:
                changed = await store.remove_contacts(user_a, user_b)
        except ValueError as error:
            result = env.AdminResult(error_code=Code.BAD_REQUEST, error_message=str(error))
            _reply(outbox, request, env.Envelope(admin_result=result))
            return
        if changed:
            for user, other in ((user_a, user_b), (user_b, user_a)):
                if operation == "contacts.add":
                    update = env.ContactsUpdate(added=[other])
                else:
                    update = env.ContactsUpdate(removed=[other])
                outbox.add(channels.user_channel(user), env.Envelope(contacts_update=update))
            logger.info("%s %s %s", operation, user_a, user_b)
        _reply(outbox, request, env.Envelope(admin_result=env.AdminResult()))

    def _fail_all(self, payloads: list[bytes]) -> _Outbox:
        """Reply to every request of a failed batch with a retryable error."""
        outbox = _Outbox()
        for payload in payloads:
            try:
                request = env.Envelope.FromString(payload)
            except Exception:
                continue
            kind = request.WhichOneof("kind")
            message = "storage failed; retry"
            if kind == "connect_request":
                reply = env.Envelope(
                    connect_result=env.ConnectResult(
                        error_code=Code.BACKEND_UNAVAILABLE, error_message=message
                    )
                )
            elif kind == "send_request":
                reply = env.Envelope(
                    send_result=env.SendResult(error_code=Code.UNAVAILABLE, error_message=message)
                )
            elif kind == "admin_request":
                reply = env.Envelope(
                    admin_result=env.AdminResult(error_code=Code.INTERNAL, error_message=message)
                )
            elif kind == "sync_request":
                reply = env.Envelope(
                    sync_reply=env.SyncReply(error_code=Code.UNAVAILABLE, error_message=message)
                )
            else:
                continue
            _reply(outbox, request, reply)
        return outbox


def _within_budget(messages: list[StoredMessage], budget: int) -> list[StoredMessage]:
    """Return the leading messages whose bodies fit in budget bytes, always at least one."""
    total = 0
    for index, message in enumerate(messages):
        total += len(message.body)
        if total > budget and index > 0:
            return messages[:index]
    return messages


def _reply(outbox: _Outbox, request: env.Envelope, reply: env.Envelope) -> None:
    if request.reply_to:
        reply.request_id = request.request_id
        outbox.add(request.reply_to, reply)


def _to_message(stored: StoredMessage) -> pb.Message:
    return pb.Message(
        message_id=stored.message_id,
        conversation_id=stored.conversation_id,
        sequence=stored.sequence,
        sender=stored.sender,
        sender_device=stored.sender_device,
        recipient=stored.recipient,
        body=stored.body,
        timestamp_ms=stored.created_ms,
        client_message_id=stored.client_message_id,
    )


def default_database(data_dir: Path) -> Path:
    """Return the database path inside a data directory."""
    return data_dir / "tether.db"
