"""Groups in embedded tether over real sockets: membership, group messages, catch-up.

Pacing, slow readers and online counts have their own tests in test_group_fanout.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from conftest import (
    BOTH_BACKENDS,
    QUIET,
    TIMEOUT,
    ClientFactory,
    RawClient,
    drain,
    next_of,
)

from tether.bus.channels import group_channel, user_channel
from tether.client import Client, RequestError
from tether.client import events as ev
from tether.logic import LogicConfig, open_store
from tether.logic.groups import MAX_GROUP_CHANGE, GroupError, GroupLogic
from tether.logic.outbox import Outbox
from tether.protocol import tether_pb2 as pb
from tether.protocol.codes import Code
from tether.server import EmbeddedServer

TRANSPORTS = ["tcp", "ws"]


async def messages_until(client: Client, count: int, timeout: float = TIMEOUT) -> list[ev.Message]:
    """Return the next count messages the client hands to the application."""
    received: list[ev.Message] = []
    while len(received) < count:
        event = await next_of(client, ev.Message, timeout)
        assert isinstance(event, ev.Message)
        received.append(event)
    return received


async def no_messages(client: Client) -> None:
    assert not [event for event in await drain(client) if isinstance(event, ev.Message)]


async def logged_in(server: EmbeddedServer, user: str, device: str = "raw") -> RawClient:
    raw = await RawClient.open(server)
    raw.send_connect(user, device)
    await raw.receive_kind("connected")
    return raw


def group_request(
    action: int, group_id: str = "team", users: tuple[str, ...] = (), request_id: str = "g1"
) -> pb.Frame:
    return pb.Frame(
        group_request=pb.GroupRequest(
            request_id=request_id,
            action=action,  # type: ignore[arg-type]
            group_id=group_id,
            user_ids=list(users),
        )
    )


@BOTH_BACKENDS
async def test_create_and_list(server: EmbeddedServer, connect: ClientFactory) -> None:
    alice = await connect(server, "alice")
    bob = await connect(server, "bob")

    group = await alice.create_group("team", ["bob", "carol"])
    assert (group.group_id, group.conversation_id) == ("team", "g:team")
    assert (group.owner, group.member_count) == ("alice", 3)
    changed = await next_of(bob, ev.GroupsChanged)
    assert isinstance(changed, ev.GroupsChanged)
    assert [g.group_id for g in changed.joined] == ["team"]
    assert changed.left == []

    await alice.create_group("other")
    assert [g.group_id for g in await alice.list_groups()] == ["other", "team"]
    assert [(g.group_id, g.member_count) for g in await bob.list_groups()] == [("team", 3)]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_message_reaches_members_once(
    server: EmbeddedServer, connect: ClientFactory, transport: str
) -> None:
    phone = await connect(server, "alice", device="phone", transport=transport)
    laptop = await connect(server, "alice", device="laptop", transport=transport)
    bob = await connect(server, "bob", transport=transport)
    carol = await connect(server, "carol", transport=transport)
    dave = await connect(server, "dave", transport=transport)  # not a member
    await phone.create_group("team", ["bob", "carol"])

    ack = await phone.send_to_group("team", "hello team")
    # Sequence number 1 is the group's creation, a system message every member gets.
    assert (ack.conversation_id, ack.sequence) == ("g:team", 2)
    for member in (laptop, bob, carol):
        created = await next_of(member, ev.GroupEvent)
        assert isinstance(created, ev.GroupEvent)
        assert (created.group_id, created.sequence, created.kind) == ("team", 1, "created")
        assert (created.actor, created.user_ids) == ("alice", ["bob", "carol"])
        message = await next_of(member, ev.Message)
        assert isinstance(message, ev.Message)
        assert (message.message_id, message.sequence) == (ack.message_id, 2)
        assert (message.sender, message.sender_device) == ("alice", "phone")
        assert message.conversation_id == message.recipient == "g:team"
        assert message.body == b"hello team"
    for client in (phone, laptop, bob, carol, dave):
        await no_messages(client)


async def test_sending_device_gets_only_ack(server: EmbeddedServer, connect: ClientFactory) -> None:
    alice = await connect(server, "alice")
    await alice.create_group("team", ["bob"])
    raw = await logged_in(server, "bob", "raw")
    other = await logged_in(server, "bob", "other")

    send = pb.Send(client_message_id="m1", recipient="g:team", body=b"mine")
    raw.send(pb.Frame(send=send))
    deliver = (await other.receive_kind("deliver")).deliver
    kinds = []
    with contextlib.suppress(TimeoutError):
        while True:
            frame = await raw.receive(timeout=QUIET)
            assert frame is not None
            kinds.append(frame.WhichOneof("kind"))
            if kinds[-1] == "send_ack":
                ack = frame.send_ack
    assert "send_ack" in kinds
    assert "deliver" not in kinds
    assert [m.message_id for m in deliver.messages] == [ack.message_id]
    raw.close()
    other.close()


async def test_resend_stored_once(server: EmbeddedServer, connect: ClientFactory) -> None:
    alice = await connect(server, "alice")
    bob = await connect(server, "bob")
    await alice.create_group("team", ["bob"])

    first = await alice.send_to_group("team", "once", client_message_id="m-1")
    again = await alice.send_to_group("team", "changed", client_message_id="m-1")
    assert (again.message_id, again.sequence) == (first.message_id, first.sequence)
    [message] = await messages_until(bob, 1)
    assert message.body == b"once"
    await no_messages(bob)


async def test_non_member_send_rejected(server: EmbeddedServer, connect: ClientFactory) -> None:
    alice = await connect(server, "alice")
    dave = await connect(server, "dave")
    await alice.create_group("team")

    for group_id in ("team", "missing"):
        with pytest.raises(RequestError) as failure:
            await dave.send_to_group(group_id, "let me in")
        assert failure.value.code == Code.NOT_FOUND
    with pytest.raises(RequestError) as failure:
        await dave.add_group_members("team", ["dave"])
    assert failure.value.code == Code.NOT_FOUND


async def test_owner_rules(server: EmbeddedServer, connect: ClientFactory) -> None:
    alice = await connect(server, "alice")
    bob = await connect(server, "bob")
    await alice.create_group("team", ["bob", "carol"])

    expected = [
        (bob.add_group_members("team", ["dave"]), Code.NOT_ALLOWED),
        (bob.remove_group_members("team", ["carol"]), Code.NOT_ALLOWED),
        (alice.leave_group("team"), Code.NOT_ALLOWED),
        (bob.create_group("team"), Code.ALREADY_EXISTS),
    ]
    for call, code in expected:
        with pytest.raises(RequestError) as failure:
            await call
        assert failure.value.code == code

    # A create resent by the owner only adds the members it lists.
    group = await alice.create_group("team", ["dave"])
    assert group.member_count == 4
    assert await alice.remove_group_members("team", ["dave", "erin"]) == ["dave"]


async def test_left_member_gets_nothing(server: EmbeddedServer, connect: ClientFactory) -> None:
    alice = await connect(server, "alice")
    bob = await connect(server, "bob")
    await alice.create_group("team", ["bob"])
    await next_of(bob, ev.GroupsChanged)
    await alice.send_to_group("team", "before")
    await messages_until(bob, 1)

    await bob.leave_group("team")
    changed = await next_of(bob, ev.GroupsChanged)
    assert isinstance(changed, ev.GroupsChanged)
    assert changed.left == ["team"]
    await alice.send_to_group("team", "after")
    await no_messages(bob)
    with pytest.raises(RequestError) as failure:
        await bob.send_to_group("team", "still here?")
    assert failure.value.code == Code.NOT_FOUND

    raw = await logged_in(server, "bob")
    raw.send(pb.Frame(sync=pb.Sync(request_id="s1", conversation_id="g:team")))
    error = (await raw.receive_kind("error")).error
    assert (error.code, error.ref) == (Code.NOT_FOUND, "s1")
    raw.close()


async def test_added_member_receives_live(server: EmbeddedServer, connect: ClientFactory) -> None:
    alice = await connect(server, "alice")
    bob = await connect(server, "bob")
    await alice.create_group("team")
    await alice.send_to_group("team", "history")

    assert await alice.add_group_members("team", ["bob", "bob"]) == ["bob"]
    changed = await next_of(bob, ev.GroupsChanged)
    assert isinstance(changed, ev.GroupsChanged)
    assert [(g.group_id, g.owner, g.member_count) for g in changed.joined] == [("team", "alice", 2)]
    await alice.send_to_group("team", "live")
    # The first live message shows a gap, so the SDK fetches the history before it.
    received = await messages_until(bob, 2)
    assert [m.body for m in received] == [b"history", b"live"]


@BOTH_BACKENDS
async def test_offline_member_catches_up(server: EmbeddedServer, connect: ClientFactory) -> None:
    alice = await connect(server, "alice")
    await alice.create_group("team", ["bob"])
    acks = [await alice.send_to_group("team", f"m{index}") for index in range(150)]
    assert [ack.sequence for ack in acks] == list(range(2, 152))  # 1 is the creation

    bob = await connect(server, "bob")
    created = await next_of(bob, ev.GroupEvent)
    assert isinstance(created, ev.GroupEvent)
    assert (created.sequence, created.kind) == (1, "created")
    received = await messages_until(bob, 150)
    assert [m.sequence for m in received] == list(range(2, 152))
    assert [m.body for m in received] == [f"m{index}".encode() for index in range(150)]
    await no_messages(bob)


async def test_unread_and_sync_range(server: EmbeddedServer, connect: ClientFactory) -> None:
    alice = await connect(server, "alice")
    await alice.create_group("team", ["bob"])
    for index in range(5):
        await alice.send_to_group("team", f"m{index}")

    raw = await RawClient.open(server)
    raw.send_connect("bob", "raw")
    unread = (await raw.receive_kind("unread")).unread
    states = [(c.conversation_id, c.last_sequence, c.read_sequence) for c in unread.conversations]
    assert states == [("g:team", 6, 0)]  # the creation and 5 messages
    sync = pb.Sync(request_id="s1", conversation_id="g:team", after_sequence=2, limit=2)
    raw.send(pb.Frame(sync=sync))
    result = (await raw.receive_kind("sync_result")).sync_result
    assert [m.sequence for m in result.messages] == [3, 4]
    assert [m.body for m in result.messages] == [b"m1", b"m2"]
    assert (result.has_more, result.last_sequence) == (True, 6)
    sync = pb.Sync(request_id="s2", conversation_id="g:team", after_sequence=0, limit=1)
    raw.send(pb.Frame(sync=sync))
    [created] = (await raw.receive_kind("sync_result")).sync_result.messages
    assert created.group_event.kind == pb.GROUP_EVENT_CREATED
    assert (created.group_event.actor, list(created.group_event.user_ids)) == ("alice", ["bob"])
    assert (created.body, created.client_message_id) == (b"", "")
    raw.close()


async def next_group_event(client: Client) -> ev.GroupEvent:
    event = await next_of(client, ev.GroupEvent)
    assert isinstance(event, ev.GroupEvent)
    return event


async def test_members_told_of_changes(server: EmbeddedServer, connect: ClientFactory) -> None:
    alice = await connect(server, "alice")
    bob = await connect(server, "bob")
    carol = await connect(server, "carol")
    await alice.create_group("team", ["bob"])
    created = await next_group_event(bob)
    assert (created.kind, created.actor, created.user_ids) == ("created", "alice", ["bob"])

    await alice.add_group_members("team", ["carol", "dave"])
    added = await next_group_event(bob)
    assert (added.kind, added.actor, added.user_ids) == (
        "members_added",
        "alice",
        ["carol", "dave"],
    )
    await carol.leave_group("team")
    left = await next_group_event(bob)
    assert (left.kind, left.actor, left.user_ids) == ("members_removed", "carol", ["carol"])
    await alice.remove_group_members("team", ["dave"])
    removed = await next_group_event(bob)
    assert (removed.kind, removed.actor, removed.user_ids) == ("members_removed", "alice", ["dave"])
    assert [e.sequence for e in (created, added, left, removed)] == [1, 2, 3, 4]
    # The owner's own devices get the events of its changes too.
    own = [await next_group_event(alice) for _ in range(4)]
    assert own == [created, added, left, removed]


async def test_events_caught_up_in_order(server: EmbeddedServer, connect: ClientFactory) -> None:
    alice = await connect(server, "alice")
    await alice.create_group("team", ["bob"])
    await alice.send_to_group("team", "hi")
    await alice.add_group_members("team", ["carol"])
    await alice.send_to_group("team", "bye")

    bob = await connect(server, "bob")
    seen: list[tuple[int, str]] = []
    while len(seen) < 4:
        event = await bob.next_event(TIMEOUT)
        if isinstance(event, ev.GroupEvent):
            seen.append((event.sequence, event.kind))
        elif isinstance(event, ev.Message):
            seen.append((event.sequence, event.body.decode()))
    assert seen == [(1, "created"), (2, "hi"), (3, "members_added"), (4, "bye")]


async def test_owner_hands_over_group(server: EmbeddedServer, connect: ClientFactory) -> None:
    alice = await connect(server, "alice")
    bob = await connect(server, "bob")
    await alice.create_group("team", ["bob", "carol"])
    await next_group_event(bob)

    for call, code in [
        (bob.set_group_owner("team", "bob"), Code.NOT_ALLOWED),
        (alice.set_group_owner("team", "dave"), Code.BAD_REQUEST),  # not a member
    ]:
        with pytest.raises(RequestError) as failure:
            await call
        assert failure.value.code == code

    group = await alice.set_group_owner("team", "bob")
    assert (group.owner, group.member_count) == ("bob", 3)
    changed = await next_group_event(bob)
    assert (changed.kind, changed.actor, changed.user_ids) == ("owner_changed", "alice", ["bob"])
    # A resent request changes nothing; the old owner has no rights left and may leave.
    assert (await alice.set_group_owner("team", "bob")).owner == "bob"
    with pytest.raises(RequestError) as failure:
        await alice.set_group_owner("team", "carol")
    assert failure.value.code == Code.NOT_ALLOWED
    await alice.leave_group("team")
    assert await bob.add_group_members("team", ["dave"]) == ["dave"]
    assert [(g.owner, g.member_count) for g in await bob.list_groups()] == [("bob", 3)]


@BOTH_BACKENDS
async def test_deleted_group_leaves_members(server: EmbeddedServer, connect: ClientFactory) -> None:
    gateway = server.gateway
    assert gateway is not None
    alice = await connect(server, "alice")
    bob = await connect(server, "bob")
    await alice.create_group("team", ["bob", "carol"])
    await alice.send_to_group("team", "soon gone")
    await messages_until(bob, 1)

    with pytest.raises(RequestError) as failure:
        await bob.delete_group("team")
    assert failure.value.code == Code.NOT_ALLOWED
    await alice.delete_group("team")
    for member in (alice, bob):
        changed = await next_of(member, ev.GroupsChanged)
        assert isinstance(changed, ev.GroupsChanged)
        if changed.joined:  # the creation
            changed = await next_of(member, ev.GroupsChanged)
            assert isinstance(changed, ev.GroupsChanged)
        assert (changed.left, changed.deleted) == (["team"], ["team"])
    assert "team" not in gateway.group_connections
    with pytest.raises(RequestError) as failure:
        await bob.send_to_group("team", "anyone?")
    assert failure.value.code == Code.NOT_FOUND
    assert await bob.list_groups() == []

    # The id is free again, and the new group's history starts afresh.
    carol = await connect(server, "carol")
    await carol.create_group("team")
    assert (await carol.send_to_group("team", "mine now")).sequence == 2


async def test_bad_group_requests(server: EmbeddedServer) -> None:
    raw = await logged_in(server, "alice")
    cases = [
        (group_request(pb.GROUP_ACTION_CREATE, "bad:id"), Code.BAD_REQUEST),
        (group_request(pb.GROUP_ACTION_CREATE, "x" * 63), Code.BAD_REQUEST),
        (group_request(pb.GROUP_ACTION_CREATE, "team", ("no spaces",)), Code.BAD_REQUEST),
        (group_request(pb.GROUP_ACTION_CREATE, "team", ("u",) * (MAX_GROUP_CHANGE + 1)),
         Code.BAD_REQUEST),
        (group_request(pb.GROUP_ACTION_UNSPECIFIED, "team"), Code.BAD_REQUEST),
        (group_request(pb.GROUP_ACTION_ADD, "nothing", ("bob",)), Code.NOT_FOUND),
        (group_request(pb.GROUP_ACTION_DELETE, "nothing"), Code.NOT_FOUND),
        (group_request(pb.GROUP_ACTION_SET_OWNER, "nothing", ("bob",)), Code.NOT_FOUND),
    ]  # fmt: skip
    for index, (frame, code) in enumerate(cases):
        frame.group_request.request_id = f"r{index}"
        raw.send(frame)
        error = (await raw.receive_kind("error")).error
        assert (error.code, error.ref) == (code, f"r{index}"), error

    raw.send(group_request(pb.GROUP_ACTION_LIST, "", request_id=""))
    error = (await raw.receive_kind("error")).error
    assert error.code == Code.BAD_REQUEST
    raw.send(group_request(pb.GROUP_ACTION_LIST, "", request_id="ok"))
    result = (await raw.receive_kind("group_result")).group_result
    assert (result.request_id, list(result.groups)) == ("ok", [])
    raw.close()


async def test_channel_subscribed_while_member_online(
    server: EmbeddedServer, connect: ClientFactory
) -> None:
    bus = server.bus
    gateway = server.gateway
    assert gateway is not None
    channel = "tether.group.team"
    owner = await connect(server, "alice")
    await owner.create_group("team", ["bob"])
    await asyncio.sleep(QUIET)
    assert bus.subscriber_count(channel) == 1  # type: ignore[attr-defined]

    bob = await connect(server, "bob")
    await owner.close()
    await asyncio.sleep(QUIET)
    assert bus.subscriber_count(channel) == 1  # type: ignore[attr-defined]
    assert {c.user_id for c in gateway.group_connections["team"]} == {"bob"}

    await bob.leave_group("team")  # the last local member leaves
    await asyncio.sleep(QUIET)
    assert bus.subscriber_count(channel) == 0  # type: ignore[attr-defined]
    assert "team" not in gateway.group_connections

    await bob.close()
    again = await connect(server, "alice", device="laptop")
    await asyncio.sleep(QUIET)
    assert bus.subscriber_count(channel) == 1  # type: ignore[attr-defined]
    await again.close()
    await asyncio.sleep(QUIET)
    assert bus.subscriber_count(channel) == 0  # type: ignore[attr-defined]
    assert gateway.group_connections == {}


async def test_limits_of_groups(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "tether.db")
    rules = GroupLogic()
    rules.config = LogicConfig(database="", max_group_members=3, max_groups_per_user=2)
    create = pb.GroupRequest(action=pb.GROUP_ACTION_CREATE, group_id="a", user_ids=["b", "c"])
    try:
        await rules._apply_group_request(store, "owner", create, Outbox())
        too_many = pb.GroupRequest(action=pb.GROUP_ACTION_ADD, group_id="a", user_ids=["d"])
        with pytest.raises(GroupError) as failure:
            await rules._apply_group_request(store, "owner", too_many, Outbox())
        assert failure.value.code == Code.LIMIT_REACHED

        second = pb.GroupRequest(action=pb.GROUP_ACTION_CREATE, group_id="b", user_ids=["c"])
        await rules._apply_group_request(store, "owner", second, Outbox())
        third = pb.GroupRequest(action=pb.GROUP_ACTION_CREATE, group_id="c", user_ids=["c"])
        with pytest.raises(GroupError) as failure:
            await rules._apply_group_request(store, "other", third, Outbox())
        assert failure.value.code == Code.LIMIT_REACHED
        assert "'c'" in failure.value.message
        assert await store.group("c") is None
    finally:
        await store.close()


async def test_changes_published_after_commit(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "tether.db")
    rules = GroupLogic()
    rules.config = LogicConfig(database="")
    outbox = Outbox()
    create = pb.GroupRequest(action=pb.GROUP_ACTION_CREATE, group_id="t", user_ids=["b"])
    try:
        result = await rules._apply_group_request(store, "a", create, outbox)
    finally:
        await store.close()
    assert list(result.changed) == ["a", "b"]
    # b joins, the creation event and the member count go to the group, then a joins.
    channels = [channel for channel, _ in outbox.messages]
    assert channels == [
        user_channel("b"),
        group_channel("t"),
        group_channel("t"),
        user_channel("a"),
    ]
