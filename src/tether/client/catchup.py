"""Message order and catch-up in the client SDK.

The live push is the fast path; sequence numbers are the truth. `Conversations` keeps, per
conversation, the highest sequence number the application has been given (`last`). A live
message one above it is handed over at once. A message at or below it is a duplicate and
dropped. A message further above it means messages were missed: it waits while a Sync fetches
the gap, oldest first, and is handed over after them. On connect, the server's Unread frame
lists the conversations this device is behind in, and they are fetched the same way.

Each message reaches the application once and in sequence order per conversation, across
reconnects of one `Client`. A new `Client` starts from the server's read markers, which the
DeliverAcks move.

A group deleted and created again under its id starts its conversation again at sequence 1.
Unread, SyncResult and the joined groups of GroupsChanged carry the group's incarnation, which
differs between the two, so a position taken in the old group is forgotten even when this
client was not told of the deletion (it had left the group, or was offline).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable

from tether.client import events as ev
from tether.client.transport import ClientTransport
from tether.protocol import tether_pb2 as pb
from tether.protocol.codes import Code
from tether.protocol.errors import RequestError

__all__ = ["Conversations"]

logger = logging.getLogger("tether.client")

SYNC_PAGE = 100
ACK_INTERVAL = 0.1  # seconds between batches of DeliverAcks
ACKS_PER_INTERVAL = 5  # DeliverAcks per batch: at most 50 per second
SYNC_INTERVAL = 0.025  # seconds between Sync requests: at most 40 per second
# Together with heartbeats this stays below the server's default 100 frames per second.


class Conversations:
    """Per-conversation order, deduplication and catch-up for one client."""

    def __init__(
        self,
        emit: Callable[[ev.Event], Awaitable[None]],
        *,
        device_id: str,
        auto_ack: bool,
        timeout: float,
    ) -> None:
        self._emit = emit
        self._device_id = device_id
        self._auto_ack = auto_ack
        self._timeout = timeout
        self.last: dict[str, int] = {}
        # Per group conversation, the incarnation of the group that `last` counts in.
        self._incarnations: dict[str, int] = {}
        self._waiting: dict[str, list[pb.Message]] = {}  # live messages held during a sync
        self._to_fetch: dict[str, None] = {}  # conversations to sync, in order
        self._resets: dict[str, int] = {}  # per conversation, how often its position was forgotten
        self._replies: dict[str, asyncio.Future[pb.SyncResult]] = {}
        self._request_ids = itertools.count(1)
        self._worker: asyncio.Task[None] | None = None
        self._transport: ClientTransport | None = None
        self._user_id = ""
        self._ready: list[pb.Message] = []  # held messages released by _release_waiting
        self._unacked: dict[str, None] = {}  # conversations with an ack to send
        self._acker: asyncio.Task[None] | None = None
        self._next_sync = 0.0  # loop time before which no Sync is sent
        self._more_unread = False  # the last Unread was truncated

    def connected(self, transport: ClientTransport, user_id: str) -> None:
        """Start a new connection: forget its predecessor's requests, keep the positions."""
        self.stop()
        self._transport = transport
        self._user_id = user_id

    def stop(self) -> None:
        """Cancel the catch-up of the connection that ended; it resumes after the next Unread."""
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
        if self._acker is not None:
            self._acker.cancel()
            self._acker = None
        self._unacked.clear()
        for future in self._replies.values():
            future.cancel()
        self._replies.clear()
        self._to_fetch.clear()
        self._waiting.clear()
        self._more_unread = False
        self._transport = None

    def on_unread(self, unread: pb.Unread) -> None:
        """Queue a fetch of every conversation the server lists this device as behind in."""
        for state in unread.conversations:
            conversation = state.conversation_id
            self._check_incarnation(conversation, state.incarnation)
            last = max(self.last.get(conversation, 0), state.read_sequence)
            self.last[conversation] = last
            if state.last_sequence > last:
                self._fetch(conversation)
        if unread.truncated:
            # Asked for again once the listed conversations are fetched and acknowledged.
            self._more_unread = True
            if self._worker is None or self._worker.done():
                self._worker = asyncio.get_running_loop().create_task(self._catch_up())

    async def on_live(self, message: pb.Message) -> None:
        """Hand a pushed message over, drop it as a duplicate, or hold it behind a gap."""
        conversation = message.conversation_id
        waiting = self._waiting.get(conversation)
        if waiting is not None:
            waiting.append(message)
            return
        last = self.last.get(conversation)
        if message.sequence == (last or 0) + 1:
            await self._deliver(message)
            await self._ack(conversation)
        elif last is None or message.sequence > last + 1:
            # A gap, or a conversation this client has no position in: fetch from the server's
            # read marker of this device first, so nothing stored before this message is lost.
            self._waiting[conversation] = [message]
            self._fetch(conversation)

    def on_joined(self, groups: list[ev.Group]) -> None:
        """Fetch the conversations of groups this user just joined.

        The gateway subscribes to a group only when it learns of the join, so what the group
        stored just before, such as the event recording the join itself, never comes live.
        A member added back to the same incarnation of a group keeps its position and resumes
        where it left.
        """
        for group in groups:
            conversation = group.conversation_id
            self._check_incarnation(conversation, group.incarnation)
            if conversation not in self.last:
                self._fetch(conversation)

    def on_deleted(self, conversations: list[str]) -> None:
        """Forget the positions in the conversations of deleted groups.

        A group created again under the same id starts its sequence numbers at 1, so a kept
        position would drop the new group's first messages as duplicates.
        """
        for conversation in conversations:
            self._forget(conversation)
            self._incarnations.pop(conversation, None)

    def on_send_ack(self, ack: pb.SendAck) -> None:
        """Count this device's own message as seen, so it opens no gap."""
        last = self.last.get(ack.conversation_id)
        # With no position, only sequence 1 is safe: a peer's message before it may be in flight.
        if ack.sequence == (last if last is not None else 0) + 1:
            self.last[ack.conversation_id] = ack.sequence

    def on_sync_result(self, result: pb.SyncResult) -> None:
        future = self._replies.pop(result.request_id, None)
        if future is not None and not future.done():
            future.set_result(result)

    def on_error(self, error: pb.Error) -> bool:
        """Fail the Sync the error refers to; False if it is not one of ours."""
        future = self._replies.pop(error.ref, None)
        if future is None:
            return False
        if not future.done():
            future.set_exception(RequestError(error.code, error.message))
        return True

    # Internals.

    def _check_incarnation(self, conversation: str, incarnation: int) -> bool:
        """Record a group's incarnation; forget the position if it counted in another one.

        Return True if the position was forgotten. 0 (a direct conversation, or a server
        that sends no incarnation) changes nothing, and a position whose incarnation was
        never learned is taken to belong to the first one learned.
        """
        if not incarnation:
            return False
        held = self._incarnations.get(conversation)
        self._incarnations[conversation] = incarnation
        if held is None or held == incarnation:
            return False
        logger.info("group of %s was created again; catching up from its start", conversation)
        self._forget(conversation)
        return True

    def _forget(self, conversation: str) -> None:
        """Drop the position and pending work of a conversation whose group is gone."""
        self.last.pop(conversation, None)
        self._waiting.pop(conversation, None)
        self._to_fetch.pop(conversation, None)
        self._unacked.pop(conversation, None)
        self._resets[conversation] = self._resets.get(conversation, 0) + 1

    def _fetch(self, conversation: str) -> None:
        self._to_fetch[conversation] = None
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._catch_up())

    async def _catch_up(self) -> None:
        try:
            while self._to_fetch:
                conversation = next(iter(self._to_fetch))
                resets = self._resets.get(conversation, 0)
                try:
                    await self._sync(conversation, resets)
                except RequestError as error:
                    if error.code != Code.NOT_FOUND or not conversation.startswith("g:"):
                        raise
                    if self._resets.get(conversation, 0) != resets:
                        continue  # the group was deleted meanwhile, and maybe created again
                    # Removed from the group, or it was deleted, before the fetch: there is
                    # nothing of it to catch up, and a reconnect would not change that.
                    logger.info("not catching up %s: %s", conversation, error.message)
                    self._waiting.pop(conversation, None)
                    self._to_fetch.pop(conversation, None)
                    continue
                if self._resets.get(conversation, 0) != resets:
                    continue  # deleted meanwhile: fetched again if the user is back in
                if not self._release_waiting(conversation):
                    # pop: the group may have been deleted during the Sync (on_deleted).
                    self._to_fetch.pop(conversation, None)
                await self._flush_released(conversation)
            if self._more_unread and self._transport is not None:
                self._more_unread = False
                while self._unacked:  # the next list starts after what the acks cover
                    await asyncio.sleep(ACK_INTERVAL)
                await asyncio.sleep(ACK_INTERVAL)  # time for the last acks to be stored
                await self._transport.send(pb.Frame(unread=pb.Unread()).SerializeToString())
        except (RequestError, TimeoutError, ConnectionError, OSError) as error:
            # The next connection lists what is still unread, so closing loses nothing.
            logger.warning("catch-up failed, reconnecting: %s", error)
            if self._transport is not None:
                self._transport.close()

    async def _sync(self, conversation: str, resets: int) -> None:
        """Fetch a conversation up to its end, or until its group is deleted (resets grew)."""
        transport = self._transport
        assert transport is not None
        while True:
            request_id = f"sync-{next(self._request_ids)}"
            future: asyncio.Future[pb.SyncResult] = asyncio.get_running_loop().create_future()
            self._replies[request_id] = future
            sync = pb.Sync(
                request_id=request_id,
                conversation_id=conversation,
                after_sequence=self.last.get(conversation, 0),
                limit=SYNC_PAGE,
                from_read_marker=conversation not in self.last,
            )
            await self._pace_sync()
            await transport.send(pb.Frame(sync=sync).SerializeToString())
            result = await asyncio.wait_for(future, self._timeout)
            if self._resets.get(conversation, 0) != resets:
                return  # the page is of a deleted group, maybe created again since
            if self._check_incarnation(conversation, result.incarnation):
                # The page is of a group created since the position was taken, and continues
                # from a position in another group. Fetch again, from the read marker.
                self._to_fetch[conversation] = None
                return
            if conversation not in self.last and result.messages:
                self.last[conversation] = result.messages[0].sequence - 1
            for message in result.messages:
                if message.sequence > self.last.get(conversation, 0):
                    await self._deliver(message)
            await self._ack(conversation)
            if not result.has_more:
                return

    async def _pace_sync(self) -> None:
        """Wait until SYNC_INTERVAL has passed since the previous Sync."""
        loop = asyncio.get_running_loop()
        wait = self._next_sync - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        self._next_sync = loop.time() + SYNC_INTERVAL

    def _release_waiting(self, conversation: str) -> bool:
        """Order held messages after a sync; True if a gap remains and another sync is due."""
        held = sorted(self._waiting.get(conversation, ()), key=lambda item: item.sequence)
        last = self.last.get(conversation, 0)
        ready: list[pb.Message] = []
        for message in held:
            if message.sequence <= last:
                continue
            if message.sequence != last + 1:
                self._waiting[conversation] = [m for m in held if m.sequence > last]
                self._ready = ready
                return True
            ready.append(message)
            last = message.sequence
        self._waiting.pop(conversation, None)
        self._ready = ready
        return False

    async def _flush_released(self, conversation: str) -> None:
        ready, self._ready = self._ready, []
        for message in ready:
            await self._deliver(message)
        if ready:
            await self._ack(conversation)

    async def _deliver(self, message: pb.Message) -> None:
        self.last[message.conversation_id] = message.sequence
        own = message.sender == self._user_id and message.sender_device == self._device_id
        if message.HasField("group_event"):
            await self._emit(ev.GroupEvent.from_proto(message))
        elif not own:  # the application already has its own sends from send()
            await self._emit(ev.Message.from_proto(message))

    async def _ack(self, conversation: str) -> None:
        """Schedule a DeliverAck; acks go out at most every ACK_INTERVAL per connection.

        Coalescing keeps a busy receiver far below the server's frames-per-second limit.
        """
        if not self._auto_ack or self._transport is None:
            return
        self._unacked[conversation] = None
        if self._acker is None or self._acker.done():
            self._acker = asyncio.get_running_loop().create_task(self._send_acks())

    async def _send_acks(self) -> None:
        while self._unacked:
            await asyncio.sleep(ACK_INTERVAL)
            transport = self._transport
            if transport is None:
                return
            # At most ACKS_PER_INTERVAL at a time, to stay well below the server's frame rate.
            batch = list(itertools.islice(self._unacked, ACKS_PER_INTERVAL))
            for conversation in batch:
                del self._unacked[conversation]
            try:
                for conversation in batch:
                    sequence = self.last.get(conversation)
                    if sequence is None:
                        continue  # its group was deleted while the batch went out
                    ack = pb.DeliverAck(conversation_id=conversation, sequence=sequence)
                    await transport.send(pb.Frame(deliver_ack=ack).SerializeToString())
            except (ConnectionError, OSError) as error:
                # The next connection's Unread lists whatever this ack would have covered.
                logger.debug("delivery ack not sent: %s", error)
                return
