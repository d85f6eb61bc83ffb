"""Groups in the reference logic: membership rules, group messages and their fan-out.

Rules:

- Any user may create a group; the creator is its owner and first member. Creating a group
  that the same owner created already adds the listed members, so a resent create is safe.
  Any other existing id gets ALREADY_EXISTS.
- Only the owner adds members or removes others. Any other member may remove itself, which
  is how it leaves. The owner cannot be removed. The command line acts with the owner's rights.
- Only the owner deletes the group (with its history) or hands it to another member. Handing
  a group to its current owner changes nothing, so a resent request is safe.
- A request changes at most MAX_GROUP_CHANGE users. A group has at most `max_group_members`
  members and a user belongs to at most `max_groups_per_user` groups (LIMIT_REACHED).
- Only members send to a group (NOT_FOUND otherwise, which does not reveal whether the group
  exists). A backend publishing through the server HTTP API learns more: NOT_FOUND when the
  group does not exist, NOT_ALLOWED when the named sender is not a member. The server's own
  sender `SYSTEM_SENDER` publishes to any group without being a member.

A stored group message is published once, on the group's channel; each gateway with online
members delivers it to them. Membership changes go to the channels of the users they
concern, and the new member count to the group's channel. Each change of members or owner
is also stored as a system message of the group's conversation (a `GroupEvent`) and
published like a message, so members see it in order with the messages, live or when they
catch up. A deletion is published once on the group's channel.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tether.auth import validate_user_id
from tether.bus import channels
from tether.bus import envelope_pb2 as env
from tether.logic.outbox import Outbox, reply, to_message
from tether.logic.store import (
    GroupRecord,
    Store,
    StoredMessage,
    group_conversation_id,
    group_of_conversation,
    validate_group_id,
)
from tether.protocol import tether_pb2 as pb
from tether.protocol.codes import Code

if TYPE_CHECKING:
    from tether.logic.service import LogicConfig

__all__ = [
    "MAX_GROUP_CHANGE",
    "MAX_MEMBERS_PAGE",
    "MAX_QUERIED_GROUPS",
    "SYSTEM_SENDER",
    "GroupError",
    "GroupLogic",
    "group_info",
    "send_ack",
    "send_result",
]

logger = logging.getLogger("tether.logic")

# Users one request may add or remove; more must be split over several requests.
MAX_GROUP_CHANGE = 1000
MAX_QUERIED_GROUPS = 100
"""Groups one GroupQuery may name."""
MAX_MEMBERS_PAGE = 1000
"""Members of one group that one GroupQuery lists at most."""
SYSTEM_SENDER = "system"
"""User id of messages the server HTTP API publishes without a sender. Keep it for the server."""


class GroupError(Exception):
    """A group request that breaks a rule; the code and message go back to the requester."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def group_info(record: GroupRecord) -> pb.Group:
    """Return the client protocol's form of a stored group."""
    return pb.Group(
        group_id=record.group_id,
        conversation_id=record.conversation_id,
        owner=record.owner,
        member_count=record.member_count,
        incarnation=record.incarnation,
    )


def send_ack(stored: StoredMessage) -> pb.SendAck:
    """Return the SendAck of a stored message."""
    return pb.SendAck(
        client_message_id=stored.client_message_id,
        message_id=stored.message_id,
        conversation_id=stored.conversation_id,
        sequence=stored.sequence,
        timestamp_ms=stored.created_ms,
    )


def send_result(send_request: env.SendRequest, stored: StoredMessage) -> env.SendResult:
    """Return the SendResult of a Send whose message the store returned.

    A resend gets the first message's ack. A server API publish whose client_message_id
    the sender used for a message to another recipient gets ALREADY_EXISTS instead: the
    backend reused an id, and an ack of the other message would hide that nothing was sent.
    """
    recipient = send_request.send.recipient
    if send_request.from_api and not stored.new and stored.recipient != recipient:
        return env.SendResult(
            error_code=Code.ALREADY_EXISTS,
            error_message=f"{stored.sender!r} used client_message_id "
            f"{stored.client_message_id!r} already, for a message to {stored.recipient!r}; "
            "choose a new id",
        )
    return env.SendResult(ack=send_ack(stored))


class GroupLogic:
    """Group requests and group messages of `LogicService`, which inherits this mixin."""

    if TYPE_CHECKING:
        config: LogicConfig

    # Requests.

    async def _group_command(self, store: Store, request: env.Envelope, outbox: Outbox) -> None:
        """Apply a user's GroupRequest that came through a gateway and queue the reply."""
        command = request.group_command
        group_request = command.request
        try:
            result = await self._apply_group_request(store, command.user_id, group_request, outbox)
        except GroupError as error:
            failure = env.GroupReply(error_code=error.code, error_message=error.message)
            reply(outbox, request, env.Envelope(group_reply=failure))
            return
        result.request_id = group_request.request_id
        reply(outbox, request, env.Envelope(group_reply=env.GroupReply(result=result)))

    async def admin_command(
        self, store: Store, operation: str, args: Sequence[str], outbox: Outbox
    ) -> pb.GroupResult:
        """Apply a `tether groups` command or a server API request with the owner's rights.

        Returns the group after the change and the users it added or removed. Raises
        GroupError.
        """
        if not args:
            raise GroupError(Code.BAD_REQUEST, f"{operation} needs a group id")
        group_id, *users = args
        if operation == "groups.create":
            if not users:
                raise GroupError(Code.BAD_REQUEST, "groups.create needs a group id and an owner")
            owner, *members = users
            _check_user_ids([owner])
            record, changed = await self._create(store, owner, group_id, members, outbox)
        elif operation == "groups.add":
            record, changed = await self._add(store, None, group_id, users, outbox)
        elif operation == "groups.remove":
            record, changed = await self._remove(store, None, group_id, users, outbox)
        elif operation == "groups.delete":
            record = await self._delete(store, None, group_id, outbox)
            changed = []
        elif operation == "groups.owner":
            record, changed = await self._set_owner(store, None, group_id, users, outbox)
        else:
            raise GroupError(Code.BAD_REQUEST, f"unknown operation {operation!r}")
        logger.info("%s %s: %d users", operation, group_id, len(users))
        return pb.GroupResult(groups=[group_info(record)], changed=changed)

    async def _apply_group_request(
        self, store: Store, actor: str, request: pb.GroupRequest, outbox: Outbox
    ) -> pb.GroupResult:
        action = request.action
        users = list(request.user_ids)
        if action == pb.GROUP_ACTION_LIST:
            records = await store.user_groups(actor)
            return pb.GroupResult(groups=[group_info(record) for record in records])
        if action == pb.GROUP_ACTION_CREATE:
            record, changed = await self._create(store, actor, request.group_id, users, outbox)
        elif action == pb.GROUP_ACTION_ADD:
            record, changed = await self._add(store, actor, request.group_id, users, outbox)
        elif action == pb.GROUP_ACTION_REMOVE:
            record, changed = await self._remove(store, actor, request.group_id, users, outbox)
        elif action == pb.GROUP_ACTION_DELETE:
            record = await self._delete(store, actor, request.group_id, outbox)
            changed = []
        elif action == pb.GROUP_ACTION_SET_OWNER:
            record, changed = await self._set_owner(store, actor, request.group_id, users, outbox)
        else:
            raise GroupError(Code.BAD_REQUEST, f"unknown group action {action}")
        return pb.GroupResult(groups=[group_info(record)], changed=changed)

    async def _create(
        self, store: Store, owner: str, group_id: str, users: list[str], outbox: Outbox
    ) -> tuple[GroupRecord, list[str]]:
        _check_group_id(group_id)
        _check_user_ids(users)
        record = await store.group(group_id)
        if record is None:
            wanted = {owner, *users}
            if len(wanted) > self.config.max_group_members:
                raise GroupError(
                    Code.LIMIT_REACHED,
                    f"a group has at most {self.config.max_group_members} members, "
                    f"{len(wanted)} were given",
                )
            await self._check_user_limits(store, group_id, sorted(wanted))
            if await store.create_group(group_id, owner):
                record, added = await self._add(
                    store, owner, group_id, users, outbox, event=pb.GROUP_EVENT_CREATED
                )
                outbox.add(channels.user_channel(owner), _joined(record))
                return record, [owner, *added]
            # Another logic worker created it a moment ago; judge it as an existing group.
            record = await _group(store, group_id)
        if record.owner != owner:
            raise GroupError(Code.ALREADY_EXISTS, f"group {group_id!r} exists already")
        return await self._add(store, owner, group_id, users, outbox)

    async def _add(
        self,
        store: Store,
        actor: str | None,
        group_id: str,
        users: list[str],
        outbox: Outbox,
        *,
        event: pb.GroupEventKind = pb.GROUP_EVENT_MEMBERS_ADDED,
    ) -> tuple[GroupRecord, list[str]]:
        """Add users; actor None is the command line, which has the owner's rights.

        The group event records the change: MEMBERS_ADDED, or CREATED for a new group, which
        is recorded even when it has no members besides its owner. The CREATED event's message
        id becomes the group's incarnation, so the GroupsUpdate of the new members carries it.
        """
        _check_group_id(group_id)
        _check_user_ids(users)
        record = await self._group_of(store, actor, group_id)
        if actor is not None and actor != record.owner:
            raise GroupError(Code.NOT_ALLOWED, f"only the owner adds members to {group_id!r}")
        conversation = record.conversation_id
        limit = self.config.max_group_members
        if record.member_count + len(set(users)) > limit:
            new = [
                user for user in set(users) if not await store.is_participant(user, conversation)
            ]
            if record.member_count + len(new) > limit:
                raise GroupError(
                    Code.LIMIT_REACHED,
                    f"group {group_id!r} has {record.member_count} members and may have at "
                    f"most {limit}; {len(new)} more were given",
                )
        await self._check_user_limits(store, group_id, users)

        added = await store.add_group_members(group_id, users)
        stored_event = None
        if added or event == pb.GROUP_EVENT_CREATED:
            stored_event = await _store_event(store, group_id, actor, event, added)
            if event == pb.GROUP_EVENT_CREATED:
                await store.set_group_incarnation(group_id, stored_event.message_id)
        record = await _group(store, group_id)
        if added:
            joined = _joined(record)
            for user in added:
                outbox.add(channels.user_channel(user), joined)
        if stored_event is not None:
            _publish(outbox, record, stored_event)
        if added:
            _announce_size(outbox, record)
        return record, added

    async def _remove(
        self, store: Store, actor: str | None, group_id: str, users: list[str], outbox: Outbox
    ) -> tuple[GroupRecord, list[str]]:
        """Remove users; actor None is the command line, which has the owner's rights."""
        _check_group_id(group_id)
        _check_user_ids(users)
        record = await self._group_of(store, actor, group_id)
        if record.owner in users:
            raise GroupError(Code.NOT_ALLOWED, f"the owner cannot leave group {group_id!r}")
        if actor is not None and actor != record.owner and set(users) != {actor}:
            raise GroupError(
                Code.NOT_ALLOWED, f"only the owner removes other members of {group_id!r}"
            )

        removed = await store.remove_group_members(group_id, users)
        record = await _group(store, group_id)
        if removed:
            left = env.Envelope(groups_update=env.GroupsUpdate(left=[group_id]))
            for user in removed:
                outbox.add(channels.user_channel(user), left)
            await _record_event(
                store, outbox, record, actor, pb.GROUP_EVENT_MEMBERS_REMOVED, removed
            )
            _announce_size(outbox, record)
        return record, removed

    async def _delete(
        self, store: Store, actor: str | None, group_id: str, outbox: Outbox
    ) -> GroupRecord:
        """Delete a group and return it as it was; actor None is the command line."""
        _check_group_id(group_id)
        record = await self._group_of(store, actor, group_id)
        if actor is not None and actor != record.owner:
            raise GroupError(Code.NOT_ALLOWED, f"only the owner deletes group {group_id!r}")

        await store.delete_group(group_id)
        # One publish: each gateway with online members sends them GroupsChanged.
        deleted = env.Envelope(group_deleted=env.GroupDeleted(incarnation=record.incarnation))
        outbox.add(channels.group_channel(group_id), deleted)
        return record

    async def _set_owner(
        self, store: Store, actor: str | None, group_id: str, users: list[str], outbox: Outbox
    ) -> tuple[GroupRecord, list[str]]:
        """Hand a group to the one member in users; actor None is the command line."""
        _check_group_id(group_id)
        _check_user_ids(users)
        if len(users) != 1:
            raise GroupError(
                Code.BAD_REQUEST, f"a new owner is one user id, {len(users)} were given"
            )
        owner = users[0]
        record = await self._group_of(store, actor, group_id)
        if owner == record.owner:
            return record, []  # a resent request, or nothing to change
        if actor is not None and actor != record.owner:
            raise GroupError(Code.NOT_ALLOWED, f"only the owner hands over group {group_id!r}")
        if not await store.is_participant(owner, record.conversation_id):
            raise GroupError(Code.BAD_REQUEST, f"{owner!r} is not a member of {group_id!r}")

        await store.set_group_owner(group_id, owner)
        await _record_event(store, outbox, record, actor, pb.GROUP_EVENT_OWNER_CHANGED, [owner])
        return await _group(store, group_id), [owner]

    async def _group_of(self, store: Store, actor: str | None, group_id: str) -> GroupRecord:
        """Return the group; raise NOT_FOUND if it is missing or actor is not a member."""
        record = await store.group(group_id, lock=True)
        if record is None and actor is None:
            raise GroupError(Code.NOT_FOUND, f"no group {group_id!r}")
        member = record is not None and (
            actor is None or await store.is_participant(actor, record.conversation_id)
        )
        if record is None or not member:
            raise GroupError(Code.NOT_FOUND, f"no group {group_id!r} with this user as a member")
        return record

    async def _check_user_limits(self, store: Store, group_id: str, users: list[str]) -> None:
        """Raise LIMIT_REACHED if one of the users would join more groups than allowed."""
        limit = self.config.max_groups_per_user
        conversation = group_conversation_id(group_id)
        counts = await store.group_counts(users)
        full = [
            user
            for user, count in sorted(counts.items())
            if count >= limit and not await store.is_participant(user, conversation)
        ]
        if full:
            raise GroupError(
                Code.LIMIT_REACHED,
                f"{len(full)} users, such as {full[0]!r}, belong to {limit} groups already",
            )

    async def _group_query(self, store: Store, request: env.Envelope, outbox: Outbox) -> None:
        """Reply to a server API GroupQuery with the groups that exist and their members."""
        query = request.group_query
        try:
            if len(query.group_ids) > MAX_QUERIED_GROUPS:
                raise GroupError(
                    Code.BAD_REQUEST,
                    f"a query names at most {MAX_QUERIED_GROUPS} groups, "
                    f"{len(query.group_ids)} were given",
                )
            for group_id in query.group_ids:
                _check_group_id(group_id)
        except GroupError as error:
            failure = env.GroupQueryResult(error_code=error.code, error_message=error.message)
            reply(outbox, request, env.Envelope(group_query_result=failure))
            return

        limit = min(query.members_limit or MAX_MEMBERS_PAGE, MAX_MEMBERS_PAGE)
        result = env.GroupQueryResult()
        for group_id in dict.fromkeys(query.group_ids):
            record = await store.group(group_id)
            if record is None:
                continue
            found = result.groups.add(group=group_info(record))
            if record.member_count <= query.list_members_up_to:
                # One more than the page, to tell whether another page follows.
                members = await store.group_members(
                    group_id, after=query.members_after, limit=limit + 1
                )
                found.members.extend(members[:limit])
                found.more_members = len(members) > limit
        reply(outbox, request, env.Envelope(group_query_result=result))

    # Messages.

    async def _send_group(self, store: Store, request: env.Envelope, outbox: Outbox) -> None:
        """Store a message to a group and publish it once on the group's channel."""
        send_request = request.send_request
        send = send_request.send
        sender = send_request.sender
        group_id = group_of_conversation(send.recipient)
        assert group_id is not None
        # Locked, so that a deletion by another worker waits for this message or comes first.
        record = await store.group(group_id, lock=True)
        if not await store.is_participant(sender, send.recipient):
            failure = await _non_member_failure(store, send_request, group_id)
            if failure is not None:
                reply(outbox, request, env.Envelope(send_result=failure))
                return
        assert record is not None, "a send to a missing group passed the membership checks"

        stored = await store.store_group(
            sender=sender,
            sender_device=send_request.sender_device,
            group_id=group_id,
            client_message_id=send.client_message_id,
            body=send.body,
        )
        if stored.new:
            _publish(outbox, record, stored)
        reply(outbox, request, env.Envelope(send_result=send_result(send_request, stored)))


async def _non_member_failure(
    store: Store, send_request: env.SendRequest, group_id: str
) -> env.SendResult | None:
    """Return why a sender that is not a member may not send to the group, or None if it may.

    A client learns only NOT_FOUND, which does not reveal whether the group exists. The
    server API's backend may know, and may publish as the server's own sender.
    """
    sender = send_request.sender
    if not send_request.from_api:
        return env.SendResult(
            error_code=Code.NOT_FOUND,
            error_message=f"no group {group_id!r} with {sender!r} as a member",
        )
    if await store.group(group_id) is None:
        return env.SendResult(error_code=Code.NOT_FOUND, error_message=f"no group {group_id!r}")
    if sender != SYSTEM_SENDER:
        return env.SendResult(
            error_code=Code.NOT_ALLOWED,
            error_message=f"{sender!r} is not a member of group {group_id!r}; add the user "
            f"first, or leave sender out to publish as {SYSTEM_SENDER!r}",
        )
    return None


def _check_group_id(group_id: str) -> None:
    try:
        validate_group_id(group_id)
    except ValueError as error:
        raise GroupError(Code.BAD_REQUEST, str(error)) from None


def _check_user_ids(users: list[str]) -> None:
    if len(users) > MAX_GROUP_CHANGE:
        raise GroupError(
            Code.BAD_REQUEST,
            f"a request changes at most {MAX_GROUP_CHANGE} users, {len(users)} were given",
        )
    try:
        for user in users:
            validate_user_id(user)
    except ValueError as error:
        raise GroupError(Code.BAD_REQUEST, str(error)) from None


async def _group(store: Store, group_id: str) -> GroupRecord:
    """Return a group that this transaction knows to exist."""
    record = await store.group(group_id)
    assert record is not None, f"group {group_id!r} vanished inside its transaction"
    return record


def _publish(outbox: Outbox, record: GroupRecord, stored: StoredMessage) -> None:
    """Publish a stored group message or event once, on the group's channel."""
    delivery = env.GroupDelivery(
        deliver=pb.Deliver(messages=[to_message(stored)]).SerializeToString(),
        sender=stored.sender,
        sender_device=stored.sender_device,  # empty for an event: every device gets it
        incarnation=record.incarnation,
    )
    outbox.add(channels.group_channel(record.group_id), env.Envelope(group_delivery=delivery))


async def _record_event(
    store: Store,
    outbox: Outbox,
    record: GroupRecord,
    actor: str | None,
    kind: pb.GroupEventKind,
    users: list[str],
) -> None:
    """Store a group event as a system message of the group and publish it."""
    _publish(outbox, record, await _store_event(store, record.group_id, actor, kind, users))


async def _store_event(
    store: Store, group_id: str, actor: str | None, kind: pb.GroupEventKind, users: list[str]
) -> StoredMessage:
    """Store a group event as a system message of the group and return it."""
    event = pb.GroupEvent(kind=kind, actor=actor or "", user_ids=users)
    return await store.store_group_event(
        group_id=group_id, actor=actor or "", event=event.SerializeToString()
    )


def _joined(record: GroupRecord) -> env.Envelope:
    return env.Envelope(groups_update=env.GroupsUpdate(joined=[group_info(record)]))


def _announce_size(outbox: Outbox, record: GroupRecord) -> None:
    size = env.GroupSize(member_count=record.member_count)
    outbox.add(channels.group_channel(record.group_id), env.Envelope(group_size=size))
