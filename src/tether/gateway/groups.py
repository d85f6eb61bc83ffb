"""Group interest and fan-out on one gateway: local members, pacing of pushes, online counts.

Tables, kept on the gateway and local to this process:

- `group_connections`: group -> open local connections whose user is a member. The gateway
  subscribes to the group's channel while that set is not empty, so a group message
  published once reaches exactly the gateways with an online member, and each delivers it to
  its own members. No central registry of members or connections is consulted.
- `group_sizes`: member count of each of those groups, from the logic layer.
- `group_incarnations`: the incarnation of each of those groups that its local members are
  in. A group deleted and created again under its id has a newer one. Messages and deletions
  published on the channel name the incarnation of their group. So one of a newer incarnation
  shows that the local members' group was deleted, even when the deletion notice was lost
  because it was published after the logic read a connecting user's groups and before this
  gateway subscribed to them. Those members then leave the group with a deletion notice, and
  receive nothing of the new group, which they are not members of.

Pushes are paced per connection by a token bucket (`pushes_per_second`, `push_burst`). Above
the rate, a connection's group messages wait in a list and go out together, as one Deliver
frame with several messages, at the next push tick, or at once when they reach a quarter of
`max_outgoing_bytes`. One timer per gateway drives the ticks, and only while some connection
has messages waiting. What waits counts against the connection's `max_outgoing_bytes` with
its outbox and its transport's buffer, checked whenever frames are queued or written, so a
reader that falls behind is closed as a slow consumer and nothing is buffered without bound.

Groups with more members than `count_threshold` get online counts. Each count tick (one timer
per gateway) reports to the count store which local users of each such group came online or
went offline since the last report, and in the same call reads the cluster totals of the
groups with local members. It sends the changed totals to those members. So a member gets at
most one update per group and interval, and the store counts each user once however many
gateways it is connected to.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tether.bus import channels
from tether.bus import envelope_pb2 as env
from tether.gateway.connection import Connection
from tether.presence.group_counts import GroupCountStore, MemberChanges, MemoryGroupCounts
from tether.protocol import tether_pb2 as pb
from tether.protocol.codes import Code
from tether.protocol.errors import TetherError
from tether.protocol.framing import encode_varint, prefix_frame
from tether.protocol.states import ConnectionState

if TYPE_CHECKING:
    from tether.bus.base import Bus
    from tether.gateway.config import GatewayConfig

__all__ = ["GroupConfig", "GroupInterest"]

logger = logging.getLogger("tether.gateway")

_MAX_ID_BYTES = 64
# The tag of Frame.deliver (field 7, length-delimited), so a Deliver frame can be assembled
# around encoded messages without decoding them: a Deliver with several messages is the
# concatenation of Delivers with one message each.
_DELIVER_TAG = bytes(((pb.Frame.DESCRIPTOR.fields_by_name["deliver"].number << 3) | 2,))
_GROUP_CHANNEL_PREFIX = channels.group_channel("")
# A connection's waiting group messages are pushed at once when they reach this share of
# max_outgoing_bytes (a quarter), instead of at the next push tick.
_EARLY_PUSH_SHARE = 4
_ReplyCallback = Callable[[env.Envelope | None], None]


@dataclass(frozen=True, kw_only=True, slots=True)
class GroupConfig:
    """Gateway settings for groups. Times are in seconds."""

    count_threshold: int = 100
    """Groups with more members than this get online counts (default 100). Every gateway of a
    cluster must use the same value."""
    count_interval: float = 2.0
    """Seconds between online count reports, and the shortest time between two count updates
    a member receives for one group (default 2)."""
    pushes_per_second: float = 20.0
    """Deliver frames of group messages one connection receives per second at most, on
    average. Above it, messages are merged into one frame per push tick (default 20)."""
    push_burst: int = 20
    """Deliver frames of group messages one connection may receive at once after a quiet
    period (default 20)."""

    def __post_init__(self) -> None:
        if self.count_threshold < 0:
            raise ValueError(f"count_threshold must not be negative, got {self.count_threshold}")
        for name in ("count_interval", "pushes_per_second"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.push_burst < 1:
            raise ValueError(f"push_burst must be at least 1, got {self.push_burst}")


def _deliver_frame(messages: bytes) -> tuple[bytes, bytes]:
    """Return a Deliver frame around encoded messages, bare and with TCP's length prefix."""
    frame = _DELIVER_TAG + encode_varint(len(messages)) + messages
    return frame, prefix_frame(frame)


class GroupInterest:
    """Groups of a `Gateway`, which inherits this mixin and calls `_init_groups` first."""

    if TYPE_CHECKING:
        # Provided by Gateway.
        id: str
        bus: Bus
        config: GatewayConfig
        sessions: dict[str, dict[str, Connection]]
        _loop: asyncio.AbstractEventLoop | None

        def slow_consumer(self, connection: Connection) -> None: ...

        def _request(
            self, target: str, request: env.Envelope, callback: _ReplyCallback, *, stream: bool
        ) -> bool: ...

    def _init_groups(self) -> None:
        self.group_connections: dict[str, set[Connection]] = {}
        self.group_sizes: dict[str, int] = {}
        self.group_incarnations: dict[str, int] = {}
        self.group_counts: GroupCountStore = MemoryGroupCounts()
        """Where online counts are added up: in memory, or in Redis in cluster mode."""
        self._paced: list[Connection] = []  # connections with group messages waiting
        self._push_timer: asyncio.TimerHandle | None = None
        self._count_timer: asyncio.TimerHandle | None = None
        self._count_task: asyncio.Task[None] | None = None
        self._count_dirty: set[str] = set()  # groups whose local online members may differ
        self._reported: dict[str, frozenset[str]] = {}  # local online users per group, reported
        self._report_all = True  # the count store may lack some of this gateway's members
        self._totals_sent: dict[str, int] = {}  # online total last sent to members
        self._newcomers: dict[str, set[Connection]] = {}  # members that have no total yet

    def _start_groups(self) -> None:
        assert self._loop is not None
        self._count_timer = self._loop.call_later(
            self.config.groups.count_interval, self._count_tick
        )

    def _stop_groups(self) -> None:
        for timer in (self._count_timer, self._push_timer):
            if timer is not None:
                timer.cancel()
        self._count_timer = self._push_timer = None
        if self._count_task is not None:
            self._count_task.cancel()

    # Membership of local connections.

    def _enter_groups(self, connection: Connection, groups: Iterable[pb.Group]) -> None:
        """Make a newly opened session a local member of its user's groups."""
        for group in groups:
            self._add_member(connection, group)

    def _leave_groups(self, connection: Connection) -> None:
        """Remove a closing connection from every group; drop the messages it has waiting."""
        for group_id in tuple(connection.groups):  # a copy: each removal changes the set
            self._remove_member(connection, group_id)
        connection.push_queue = None
        connection.push_queue_bytes = 0

    def _update_groups(
        self,
        connection: Connection,
        joined: Iterable[pb.Group],
        left: Iterable[str],
        *,
        deleted: bool = False,
    ) -> None:
        """Apply membership changes of the connection's user and tell its client.

        With deleted set, the groups in left were deleted, and GroupsChanged lists them in
        its deleted field too.
        """
        added = [group for group in joined if self._add_member(connection, group)]
        removed = sorted(set(left) & connection.groups)
        if not added and not removed:
            return
        for group_id in removed:
            self._remove_member(connection, group_id)
        if removed and connection.push_queue is not None:
            # Messages held by pacing were sent before the change: they go first.
            self._push_batch(connection, self._loop.time())  # type: ignore[union-attr]
        changed = pb.GroupsChanged(joined=added, left=removed, deleted=removed if deleted else ())
        connection.send_frame(pb.Frame(groups_changed=changed))

    def _refresh_groups(self, connection: Connection, groups: Iterable[pb.Group]) -> None:
        """Apply the group list read again after a bus outage."""
        current = {group.group_id: group for group in groups}
        left = connection.groups - set(current)
        self._update_groups(connection, current.values(), left)

    def _add_member(self, connection: Connection, group: pb.Group) -> bool:
        """Make a connection a local member of a group; return False if nothing changed.

        Nothing changes for a member of the same incarnation, nor for a group of an older
        incarnation than the local members', which was deleted since. A newer incarnation
        means the local members' group was deleted: they leave it first.
        """
        group_id = group.group_id
        members = self.group_connections.get(group_id)
        if members is not None:
            current = self.group_incarnations[group_id]
            if group.incarnation < current:
                return False
            if group.incarnation == current:
                if connection in members:
                    return False
            else:
                self._leave_deleted(group_id)
                members = self.group_connections.get(group_id)
        if members is None:
            members = self.group_connections[group_id] = set()
            self.group_incarnations[group_id] = group.incarnation
            self.bus.subscribe(channels.group_channel(group_id), self._on_group_message)
        members.add(connection)
        groups = connection.groups
        if not isinstance(groups, set):
            groups = connection.groups = set()
        groups.add(group_id)
        self._set_group_size(group_id, group.member_count)
        if self._is_counted(group_id):
            self._count_dirty.add(group_id)
            self._newcomers.setdefault(group_id, set()).add(connection)
        return True

    def _remove_member(self, connection: Connection, group_id: str) -> None:
        groups = connection.groups
        if isinstance(groups, set):
            groups.discard(group_id)
        members = self.group_connections.get(group_id)
        if members is None:
            return
        members.discard(connection)
        newcomers = self._newcomers.get(group_id)
        if newcomers is not None:
            newcomers.discard(connection)
        if group_id in self._reported or self._is_counted(group_id):
            self._count_dirty.add(group_id)
        if not members:
            del self.group_connections[group_id]
            del self.group_incarnations[group_id]
            self.group_sizes.pop(group_id, None)
            self._totals_sent.pop(group_id, None)
            self._newcomers.pop(group_id, None)
            self.bus.unsubscribe(channels.group_channel(group_id), self._on_group_message)

    def _set_group_size(self, group_id: str, member_count: int) -> None:
        was_counted = self._is_counted(group_id)
        self.group_sizes[group_id] = member_count
        counted = self._is_counted(group_id)
        if counted == was_counted:
            return
        # The group crossed the threshold: report its members, or report zero and stop.
        self._count_dirty.add(group_id)
        self._totals_sent.pop(group_id, None)
        if counted:
            self._newcomers[group_id] = set(self.group_connections.get(group_id, ()))
        else:
            self._newcomers.pop(group_id, None)

    def _is_counted(self, group_id: str) -> bool:
        return self.group_sizes.get(group_id, 0) > self.config.groups.count_threshold

    # Messages on group channels.

    def _on_group_message(self, channel: str, payload: bytes) -> None:
        group_id = channel[len(_GROUP_CHANNEL_PREFIX) :]
        message = env.Envelope.FromString(payload)
        kind = message.WhichOneof("kind")
        if kind == "group_delivery":
            delivery = message.group_delivery
            if self._is_local_incarnation(group_id, delivery.incarnation):
                self._deliver_group(group_id, delivery)
        elif kind == "group_size":
            if group_id in self.group_connections:
                self._set_group_size(group_id, message.group_size.member_count)
        elif kind == "group_deleted":
            current = self.group_incarnations.get(group_id)
            # Of an older incarnation: its members left it when the newer one appeared.
            if current is not None and message.group_deleted.incarnation >= current:
                self._leave_deleted(group_id)
        else:
            logger.warning("ignored message of kind %s on %s", kind, channel)

    def _is_local_incarnation(self, group_id: str, incarnation: int) -> bool:
        """Tell whether a message on a group's channel is of the group the local members are in.

        A message of a newer incarnation shows that their group was deleted, so they leave it.
        One of an older incarnation was published before a deletion and is dropped.
        """
        current = self.group_incarnations.get(group_id)
        if current is None or incarnation < current:
            return False
        if incarnation > current:
            logger.info(
                "group %s was created again; its deletion never reached this gateway", group_id
            )
            self._leave_deleted(group_id)
            return False
        return True

    def _leave_deleted(self, group_id: str) -> None:
        """Take every local member out of a deleted group and tell it so."""
        # A copy, because the set shrinks as its connections leave the group.
        for connection in tuple(self.group_connections.get(group_id, ())):
            self._update_groups(connection, (), (group_id,), deleted=True)

    def _deliver_group(self, group_id: str, delivery: env.GroupDelivery) -> None:
        """Push one group message to every local member except the device that sent it.

        Hot path: it runs once per group message for each local member, so the frame is built
        once for each transport and the loop does no more than the pacing arithmetic.
        """
        members = self.group_connections.get(group_id)
        if not members:
            return
        deliver = delivery.deliver
        frame, framed = _deliver_frame(deliver)
        # The sending device has its SendAck: its session here, if any, gets no copy.
        devices = self.sessions.get(delivery.sender)
        sending = devices.get(delivery.sender_device) if devices else None
        groups = self.config.groups
        rate = groups.pushes_per_second
        burst = float(groups.push_burst)
        early = self.config.max_outgoing_bytes // _EARLY_PUSH_SHARE
        now = self._loop.time()  # type: ignore[union-attr]

        # A copy, because a slow consumer closed during the loop leaves the set.
        for connection in tuple(members):
            if connection is sending:
                continue
            queue = connection.push_queue
            if queue is None:
                tokens = connection.push_tokens + (now - connection.push_at) * rate
                if tokens > burst:
                    tokens = burst
                connection.push_at = now
                if tokens >= 1.0:
                    connection.push_tokens = tokens - 1.0
                    protocol = connection.protocol
                    # frame_bytes returns the frame itself on a binary WebSocket; on a
                    # tether.v1.json one it converts the same frame object once for every member.
                    connection.send_now(framed if protocol.stream else protocol.frame_bytes(frame))
                    continue
                connection.push_tokens = tokens
                queue = connection.push_queue = []
                self._hold(connection)
            queue.append(deliver)
            connection.push_queue_bytes += len(deliver)
            if connection.push_queue_bytes >= early:
                # Pacing limits frames, not bytes: a large batch goes out now. So what waits
                # stays below a quarter of the limit, and the slow-consumer check of send_now()
                # counts the rest when the batch is written or queued.
                self._push_batch(connection, now)

    def _hold(self, connection: Connection) -> None:
        """Register a connection whose group messages wait for the next push tick."""
        self._paced.append(connection)
        if self._push_timer is None:
            interval = 1.0 / self.config.groups.pushes_per_second
            self._push_timer = self._loop.call_later(interval, self._push_waiting)  # type: ignore[union-attr]

    def _push_waiting(self) -> None:
        """Send each connection's waiting group messages as one Deliver frame."""
        self._push_timer = None
        paced = self._paced
        self._paced = []
        now = self._loop.time()  # type: ignore[union-attr]
        # The members of a group mostly hold the same messages, each the same bytes object,
        # so each distinct batch is encoded once per tick.
        built: dict[tuple[bytes, ...], tuple[bytes, bytes]] = {}
        for connection in paced:
            if connection.push_queue is not None:  # else it closed, or its batch went out early
                self._push_batch(connection, now, built)

    def _push_batch(
        self,
        connection: Connection,
        now: float,
        built: dict[tuple[bytes, ...], tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Send a connection's waiting group messages as one Deliver frame.

        built maps batches already encoded in this push tick to their frames.
        """
        batch = connection.push_queue
        assert batch is not None
        connection.push_queue = None
        connection.push_queue_bytes = 0
        # The batch uses up the connection's push, so the next message within a tick waits.
        connection.push_tokens = 0.0
        connection.push_at = now
        key = tuple(batch)
        frames = built.get(key) if built is not None else None
        if frames is None:
            frames = _deliver_frame(b"".join(batch))
            if built is not None:
                built[key] = frames
        frame, framed = frames
        protocol = connection.protocol
        connection.send_now(framed if protocol.stream else protocol.frame_bytes(frame))

    # Requests from clients.

    def _on_group_request(self, connection: Connection, request: pb.GroupRequest) -> None:
        if not 0 < len(request.request_id.encode()) <= _MAX_ID_BYTES:
            message = f"request_id must be 1 to {_MAX_ID_BYTES} bytes"
            connection.send_frame(
                pb.Frame(
                    error=pb.Error(code=Code.BAD_REQUEST, message=message, ref=request.request_id)
                )
            )
            return
        envelope = env.Envelope(
            group_command=env.GroupCommand(user_id=connection.user_id, request=request)
        )
        callback = functools.partial(self._on_group_reply, connection, request.request_id)
        if not self._request(channels.LOGIC_STREAM, envelope, callback, stream=True):
            callback(None)

    def _on_group_reply(
        self, connection: Connection, request_id: str, reply: env.Envelope | None
    ) -> None:
        if connection.protocol.state is not ConnectionState.OPEN:
            return
        if reply is None:
            error = pb.Error(
                code=Code.UNAVAILABLE, message="logic layer did not answer in time", ref=request_id
            )
            connection.send_frame(pb.Frame(error=error))
            return
        result = reply.group_reply
        if result.error_code:
            error = pb.Error(code=result.error_code, message=result.error_message, ref=request_id)
            connection.send_frame(pb.Frame(error=error))
            return
        connection.send_frame(pb.Frame(group_result=result.result))

    # Online counts.

    def _count_tick(self) -> None:
        """Report the members that came online or went offline, then send changed totals."""
        assert self._loop is not None
        self._count_timer = self._loop.call_later(
            self.config.groups.count_interval, self._count_tick
        )
        if self._count_task is not None and not self._count_task.done():
            return  # the count store is slow; the next tick reports what piled up

        changes: dict[str, MemberChanges] = {}
        for group_id in self._count_dirty:
            online = self._local_online(group_id)
            reported = self._reported.get(group_id, frozenset())
            if online != reported:
                changes[group_id] = MemberChanges(online - reported, reported - online)
            if online:
                self._reported[group_id] = online
            else:
                self._reported.pop(group_id, None)
        self._count_dirty.clear()

        counted = [group_id for group_id in self.group_connections if self._is_counted(group_id)]
        if not (changes or self._reported or counted):
            return  # nothing to report and no one to tell
        self._count_task = self._loop.create_task(self._exchange_counts(changes, counted))

    def _local_online(self, group_id: str) -> frozenset[str]:
        """Return the local users of a counted group with a visible open session.

        NOTE: a connection counts unless its own mode is invisible. A device that connected
        without a mode while another device, on another gateway, made the user invisible is
        counted, because the gateway does not learn that other device's mode.
        """
        if not self._is_counted(group_id):
            return frozenset()
        return frozenset(
            connection.user_id
            for connection in self.group_connections.get(group_id, ())
            if connection.mode != pb.MODE_INVISIBLE
        )

    def _mode_changed(self, connection: Connection) -> None:
        """Count the connection's groups again after its mode changed (invisible is not online)."""
        for group_id in connection.groups:
            if self._is_counted(group_id):
                self._count_dirty.add(group_id)

    async def _exchange_counts(self, changes: dict[str, MemberChanges], read: list[str]) -> None:
        """Report changes to the count store and send the totals it returns.

        After a fresh start, a failed call or a lapsed lease, the store gets every local online
        member instead of the changes, because it may hold none or only some of them.
        """
        store = self.group_counts
        try:
            totals = None
            if not self._report_all:
                totals = await store.exchange(changes, fresh=False, read=read)
            if totals is None:
                everything = {
                    group_id: MemberChanges(online=users)
                    for group_id, users in self._reported.items()
                }
                totals = await store.exchange(everything, fresh=True, read=read)
        except (TetherError, OSError) as error:
            logger.warning("online counts not exchanged: %s", error)
            self._report_all = True
            return
        self._report_all = totals is None
        if totals is not None:
            self._send_totals(totals)

    def _send_totals(self, totals: dict[str, int]) -> None:
        for group_id, online in totals.items():
            members = self.group_connections.get(group_id)
            if not members or not self._is_counted(group_id):
                continue
            count = pb.GroupCount(
                group_id=group_id, online=online, member_count=self.group_sizes.get(group_id, 0)
            )
            frame = pb.Frame(group_counts=pb.GroupCounts(counts=[count])).SerializeToString()
            newcomers = self._newcomers.pop(group_id, set())
            if self._totals_sent.get(group_id) != online:
                self._totals_sent[group_id] = online
                receivers: Iterable[Connection] = tuple(members)
            else:
                receivers = newcomers
            for connection in receivers:
                connection.send_payload(frame)
