"""The reference business logic: who may connect, contacts, groups, storing and routing messages.

It consumes the logic stream of the bus in batches. Each batch runs in one store transaction;
only after the commit does it publish deliveries and reply to the gateways, so an ack always
means the message is stored. DeliverAcks are the exception: their read markers are written
behind (tether.logic.read_markers), so a process killed without a clean stop may lose the
markers of about its last `read_marker_delay` seconds, and those devices get the messages again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tether.auth import validate_user_id
from tether.bus import channels
from tether.bus import envelope_pb2 as env
from tether.bus.base import Bus
from tether.logic.groups import GroupError, GroupLogic, group_info, send_result
from tether.logic.outbox import Outbox, reply, to_message
from tether.logic.read_markers import PendingReadMarkers
from tether.logic.store import (
    MAX_STORED_INTEGER,
    Store,
    StoreConflict,
    StoredMessage,
    StoreError,
    describe_database,
    group_of_conversation,
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
# Requests that never read read markers. A batch of only these leaves the waiting markers to
# their timer, which stores many at a time. Storing them with each batch of sends cost as much
# CPU as a transaction per DeliverAck (bench/store_cost.py).
_MARKERS_UNREAD_BY = frozenset({"send_request"})


@dataclass(frozen=True, kw_only=True, slots=True)
class LogicConfig:
    """Settings of the reference logic."""

    database: Path | str
    """SQLite database file, or a `postgresql://` URL (tether.db in the data folder by default)."""
    max_group_members: int = 100_000
    """Members one group may have (default 100,000)."""
    max_groups_per_user: int = 1000
    """Groups one user may belong to (default 1,000). A gateway subscribes to the channel of
    each group of each connected user, so this also bounds its subscriptions per user."""
    read_marker_delay: float = 0.03
    """Seconds a DeliverAck's read marker waits in memory before it is stored in a transaction
    of its own (default 0.03), unless a batch transaction stores it sooner. A process killed
    without a clean stop loses the markers of about this long (tether.logic.read_markers)."""
    max_pending_read_markers: int = 10_000
    """Maximum of read markers waiting in memory, one per user, device and conversation (default
    10,000). An ack for another one stores the waiting ones at once."""


class LogicService(GroupLogic):
    """Handle requests from gateways and the command line."""

    def __init__(self, config: LogicConfig, bus: Bus) -> None:
        self.config = config
        self._bus = bus
        self.store: Store | None = None
        self._read_markers: PendingReadMarkers | None = None

    async def start(self) -> None:
        """Open the store, migrating it if needed, and start consuming the logic stream.

        Raises StoreError when the database cannot be opened.
        """
        self.store = await open_store(self.config.database)
        self._read_markers = PendingReadMarkers(
            self.store,
            delay=self.config.read_marker_delay,
            max_pending=self.config.max_pending_read_markers,
        )
        self._bus.consume(channels.LOGIC_STREAM, self._on_batch)
        logger.info("logic started with database %s", describe_database(self.config.database))

    async def close(self) -> None:
        """Store the read markers that wait, then close the store."""
        if self._read_markers is not None:
            await self._read_markers.close()
            self._read_markers = None
        if self.store is not None:
            await self.store.close()
            self.store = None

    @property
    def pending_read_markers(self) -> int:
        """Read markers acknowledged but not stored yet."""
        return len(self._read_markers) if self._read_markers is not None else 0

    async def _on_batch(self, payloads: list[bytes]) -> None:
        store = self.store
        read_markers = self._read_markers
        assert store is not None and read_markers is not None
        requests: list[env.Envelope] = []
        reads_markers = False
        for payload in payloads:
            try:
                request = env.Envelope.FromString(payload)
            except Exception:
                logger.error("dropped an undecodable request of %d bytes", len(payload))
                continue
            kind = request.WhichOneof("kind")
            if kind == "deliver_ack":
                ack = request.deliver_ack
                await read_markers.add(
                    ack.user_id, ack.device_id, ack.ack.conversation_id, ack.ack.sequence
                )
                continue
            requests.append(request)
            if kind not in _MARKERS_UNREAD_BY:
                reads_markers = True
        if not requests:
            return

        outbox = await self._run_batch(store, requests, read_markers if reads_markers else None)
        for channel, message in outbox.messages:
            try:
                self._bus.publish(channel, message)
            except BusError as error:
                # The message is stored: the recipient's next Unread or Sync brings it.
                logger.warning("could not publish to %s: %s", channel, error)

    async def _run_batch(
        self,
        store: Store,
        requests: list[env.Envelope],
        read_markers: PendingReadMarkers | None,
    ) -> Outbox:
        """Handle a batch in one transaction; return what to publish once it committed.

        With read_markers, the markers that wait are stored first in the same transaction, so
        that the batch's Unread, Sync and group deletions see them. If that transaction fails,
        the batch runs again without them, and they wait for a transaction of their own.
        """
        for attempt in range(1, MAX_BATCH_ATTEMPTS + 1):
            outbox = Outbox()
            markers = read_markers if read_markers is not None and read_markers.ready else None
            written: dict[tuple[str, str, str], int] = {}
            try:
                async with store.transaction():
                    if markers is not None:
                        written = await markers.write()
                    for request in requests:
                        await self._handle(store, request, outbox)
                if markers is not None:
                    markers.stored(written)
                return outbox
            except StoreConflict as error:
                if attempt == MAX_BATCH_ATTEMPTS:
                    logger.error(
                        "logic batch of %d requests failed %d times: %s",
                        len(requests),
                        attempt,
                        error,
                    )
                    break
                logger.warning(
                    "logic batch of %d requests rolled back, running it again: %s",
                    len(requests),
                    error,
                )
            except StoreError as error:
                if markers is not None:
                    markers.failed(error)
                    if attempt < MAX_BATCH_ATTEMPTS:
                        continue
                logger.error("logic batch of %d requests failed: %s", len(requests), error)
                break
        return self._fail_all(requests)

    async def _handle(self, store: Store, request: env.Envelope, outbox: Outbox) -> None:
        kind = request.WhichOneof("kind")
        try:
            await self._dispatch(store, kind, request, outbox)
        except StoreError:
            raise  # fails the whole batch, which is rolled back and gets retryable errors
        except Exception:
            logger.exception("logic request of kind %s failed", kind)
            outbox.messages.extend(self._fail_all([request]).messages)

    async def _dispatch(
        self, store: Store, kind: str | None, request: env.Envelope, outbox: Outbox
    ) -> None:
        if kind == "connect_request":
            await self._connect(store, request, outbox)
        elif kind == "send_request":
            await self._send(store, request, outbox)
        elif kind == "sync_request":
            await self._sync(store, request, outbox)
        elif kind == "admin_request":
            await self._admin(store, request, outbox)
        elif kind == "group_command":
            await self._group_command(store, request, outbox)
        elif kind == "group_query":
            await self._group_query(store, request, outbox)
        else:
            logger.warning("ignored logic request of kind %s", kind)

    async def _connect(self, store: Store, request: env.Envelope, outbox: Outbox) -> None:
        connect = request.connect_request
        await store.ensure_user(connect.user_id)
        rows = await store.unread(connect.user_id, connect.device_id, MAX_UNREAD_LISTED + 1)
        groups = await store.user_groups(connect.user_id)
        # A user is behind only in conversations it takes part in, so each group listed in
        # Unread is one of the user's groups.
        incarnations = {record.conversation_id: record.incarnation for record in groups}
        unread = pb.Unread(
            conversations=[
                pb.ConversationState(
                    conversation_id=conversation,
                    last_sequence=last,
                    read_sequence=read,
                    incarnation=incarnations.get(conversation, 0),
                )
                for conversation, last, read in rows[:MAX_UNREAD_LISTED]
            ],
            truncated=len(rows) > MAX_UNREAD_LISTED,
        )
        result = env.ConnectResult(
            contacts=await store.contacts(connect.user_id),
            unread=unread,
            groups=[group_info(record) for record in groups],
        )
        reply(outbox, request, env.Envelope(connect_result=result))

    async def _sync(self, store: Store, request: env.Envelope, outbox: Outbox) -> None:
        sync = request.sync_request.sync
        if not await store.is_participant(request.sync_request.user_id, sync.conversation_id):
            failure = env.SyncReply(
                error_code=Code.NOT_FOUND,
                error_message=f"no conversation {sync.conversation_id!r} of this user",
            )
            reply(outbox, request, env.Envelope(sync_reply=failure))
            return
        limit = min(sync.limit or DEFAULT_SYNC_PAGE, MAX_SYNC_PAGE)
        after = min(sync.after_sequence, MAX_STORED_INTEGER)
        if sync.from_read_marker:
            user_id = request.sync_request.user_id
            device_id = request.sync_request.device_id
            after = await store.read_marker(user_id, device_id, sync.conversation_id)
        messages = await store.history(sync.conversation_id, after, limit + 1)
        page = _within_budget(messages[:limit], MAX_SYNC_PAGE_BYTES)
        group_id = group_of_conversation(sync.conversation_id)
        group = await store.group(group_id) if group_id is not None else None
        result = pb.SyncResult(
            request_id=sync.request_id,
            conversation_id=sync.conversation_id,
            messages=[to_message(stored) for stored in page],
            has_more=len(messages) > len(page),
            last_sequence=await store.last_sequence(sync.conversation_id),
            incarnation=group.incarnation if group is not None else 0,
        )
        reply(outbox, request, env.Envelope(sync_reply=env.SyncReply(result=result)))

    async def _send(self, store: Store, request: env.Envelope, outbox: Outbox) -> None:
        send_request = request.send_request
        send = send_request.send
        sender = send_request.sender
        if group_of_conversation(send.recipient) is not None:
            await self._send_group(store, request, outbox)
            return
        # A backend sending through the HTTP API vouches for the pair; clients need contacts.
        if not send_request.from_api and not await store.are_contacts(sender, send.recipient):
            result = env.SendResult(
                error_code=Code.NOT_A_CONTACT,
                error_message=f"{send.recipient!r} is not a contact of {sender!r}",
            )
            reply(outbox, request, env.Envelope(send_result=result))
            return

        stored = await store.store_direct(
            sender=sender,
            sender_device=send_request.sender_device,
            recipient=send.recipient,
            client_message_id=send.client_message_id,
            body=send.body,
        )
        if stored.new:
            frame = pb.Frame(deliver=pb.Deliver(messages=[to_message(stored)])).SerializeToString()
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
        reply(outbox, request, env.Envelope(send_result=send_result(send_request, stored)))

    async def _admin(self, store: Store, request: env.Envelope, outbox: Outbox) -> None:
        admin = request.admin_request
        operation = admin.operation
        if operation.startswith("groups."):
            try:
                group_result = await self.admin_command(store, operation, admin.args, outbox)
            except GroupError as error:
                result = env.AdminResult(error_code=error.code, error_message=error.message)
                reply(outbox, request, env.Envelope(admin_result=result))
                return
            result = env.AdminResult(group_result=group_result)
            reply(outbox, request, env.Envelope(admin_result=result))
            return
        if operation not in ("contacts.add", "contacts.remove") or len(admin.args) != 2:
            result = env.AdminResult(
                error_code=Code.BAD_REQUEST,
                error_message=f"unknown operation {operation!r} with {len(admin.args)} arguments",
            )
            reply(outbox, request, env.Envelope(admin_result=result))
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
            reply(outbox, request, env.Envelope(admin_result=result))
            return
        if changed:
            for user, other in ((user_a, user_b), (user_b, user_a)):
                if operation == "contacts.add":
                    update = env.ContactsUpdate(added=[other])
                else:
                    update = env.ContactsUpdate(removed=[other])
                outbox.add(channels.user_channel(user), env.Envelope(contacts_update=update))
            logger.info("%s %s %s", operation, user_a, user_b)
        reply(outbox, request, env.Envelope(admin_result=env.AdminResult()))

    def _fail_all(self, requests: list[env.Envelope]) -> Outbox:
        """Reply to every request of a failed batch with a retryable error."""
        outbox = Outbox()
        for request in requests:
            kind = request.WhichOneof("kind")
            message = "storage failed; retry"
            if kind == "connect_request":
                answer = env.Envelope(
                    connect_result=env.ConnectResult(
                        error_code=Code.BACKEND_UNAVAILABLE, error_message=message
                    )
                )
            elif kind == "send_request":
                answer = env.Envelope(
                    send_result=env.SendResult(error_code=Code.UNAVAILABLE, error_message=message)
                )
            elif kind == "admin_request":
                answer = env.Envelope(
                    admin_result=env.AdminResult(error_code=Code.INTERNAL, error_message=message)
                )
            elif kind == "sync_request":
                answer = env.Envelope(
                    sync_reply=env.SyncReply(error_code=Code.UNAVAILABLE, error_message=message)
                )
            elif kind == "group_command":
                answer = env.Envelope(
                    group_reply=env.GroupReply(error_code=Code.UNAVAILABLE, error_message=message)
                )
            elif kind == "group_query":
                answer = env.Envelope(
                    group_query_result=env.GroupQueryResult(
                        error_code=Code.UNAVAILABLE, error_message=message
                    )
                )
            else:
                continue
            reply(outbox, request, answer)
        return outbox


def _within_budget(messages: list[StoredMessage], budget: int) -> list[StoredMessage]:
    """Return the leading messages whose bodies fit in budget bytes, always at least one."""
    total = 0
    for index, message in enumerate(messages):
        total += len(message.body)
        if total > budget and index > 0:
            return messages[:index]
    return messages


def default_database(data_dir: Path) -> Path:
    """Return the database path inside a data directory."""
    return data_dir / "tether.db"
