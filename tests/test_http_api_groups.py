"""The group routes of the server HTTP API on an embedded server.

Each test starts a real server with its HTTP port on a free port, manages groups and publishes
through `tether.api_client.ApiClient` or raw requests, and watches real SDK clients receive
the results. The cluster variants are in test_http_api_cluster.py.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from conftest import TIMEOUT, ClientFactory, ServerFactory, drain, next_of
from test_http_api import KEY, api_server, base_url, error_of, post

from tether.api_client import ApiClient, ApiError
from tether.client import Client
from tether.client import events as ev
from tether.gateway.groups import GroupConfig
from tether.logic import LogicService
from tether.logic.groups import MAX_GROUP_CHANGE, MAX_MEMBERS_PAGE, MAX_QUERIED_GROUPS
from tether.ops.api import SYSTEM_SENDER
from tether.server import EmbeddedServer

GROUP_ROUTES = [
    "groups/publish",
    "groups/online",
    "groups/create",
    "groups/add",
    "groups/remove",
    "groups/members",
]


def api_of(server: EmbeddedServer) -> ApiClient:
    return ApiClient(base_url(server), KEY, timeout=TIMEOUT)


async def messages_of(client: Client) -> list[ev.Message]:
    return [event for event in await drain(client) if isinstance(event, ev.Message)]


async def next_message(client: Client) -> ev.Message:
    message = await next_of(client, ev.Message)
    assert isinstance(message, ev.Message)
    return message


async def next_groups_changed(client: Client) -> ev.GroupsChanged:
    changed = await next_of(client, ev.GroupsChanged)
    assert isinstance(changed, ev.GroupsChanged)
    return changed


async def online_until(
    api: ApiClient, group_id: str, expected: int, timeout: float = TIMEOUT
) -> None:
    """Poll a group's online count until it is expected; presence and counts follow
    connects and closes asynchronously."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        counts = await api.group_online([group_id])
        if counts[group_id].online == expected:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{group_id} has {counts[group_id]}, not {expected} online")
        await asyncio.sleep(0.05)


# Keys.


async def test_group_routes_need_key(start_server: ServerFactory) -> None:
    server = await api_server(start_server)
    for route in GROUP_ROUTES:
        for headers in ({}, {"Authorization": "Bearer not-a-configured-key-at-all"}):
            status, answer = await post(server, route, {"group_id": "team"}, headers=headers)
            assert status == 401, (route, headers)
            assert error_of(answer) == ("unauthorized", None)


async def test_group_routes_off_without_keys(start_server: ServerFactory) -> None:
    server = await start_server(http_port=0)
    for route in GROUP_ROUTES:
        status, answer = await post(server, route, {"group_id": "team"})
        assert status == 404, route
        assert error_of(answer) == ("api_disabled", None)


# Publish.


async def test_group_publish_reaches_members_and_history(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await api_server(start_server)
    phone = await connect(server, "alice", device="phone")
    laptop = await connect(server, "alice", device="laptop")
    bob = await connect(server, "bob")
    dave = await connect(server, "dave")  # not a member
    async with api_of(server) as api:
        await api.create_group("team", "alice", ["bob", "carol"])
        result = await api.publish_to_group("team", "maintenance tonight", client_message_id="n1")
        # Sequence number 1 is the group's creation event.
        assert (result.conversation_id, result.sequence) == ("g:team", 2)
        assert result.client_message_id == "n1"
        for member in (phone, laptop, bob):
            message = await next_message(member)
            assert message.message_id == result.message_id
            assert (message.conversation_id, message.recipient) == ("g:team", "g:team")
            assert (message.sender, message.sender_device) == (SYSTEM_SENDER, "api")
            assert message.sequence == 2
            assert message.body == b"maintenance tonight"

        # A retry with the same id stores and delivers nothing new.
        again = await api.publish_to_group("team", "maintenance tonight", client_message_id="n1")
        assert again == result
        binary = await api.publish_to_group("team", b"\x00\xff")
        assert binary.sequence == 3
        assert binary.client_message_id.startswith("api-")
        assert (await next_message(bob)).body == b"\x00\xff"
    assert await messages_of(dave) == []
    assert [m.sequence for m in await messages_of(phone)] == [3]

    # carol was offline: the messages are in the group's history, with its sequence numbers.
    carol = await connect(server, "carol")
    caught_up = [await next_message(carol), await next_message(carol)]
    assert [(m.sequence, m.body) for m in caught_up] == [
        (2, b"maintenance tonight"),
        (3, b"\x00\xff"),
    ]
    # A client's message follows in the same sequence.
    ack = await bob.send_to_group("team", "thanks")
    assert ack.sequence == 4


async def test_group_publish_as_member(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await api_server(start_server)
    phone = await connect(server, "alice", device="phone")
    bob = await connect(server, "bob")
    async with api_of(server) as api:
        await api.create_group("team", "alice", ["bob"])
        result = await api.publish_to_group("team", "from alice's backend", sender="alice")
    for client in (phone, bob):
        message = await next_message(client)
        assert (message.sender, message.sender_device) == ("alice", "api")
        assert message.message_id == result.message_id


async def test_group_publish_rejections(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await api_server(start_server)
    bob = await connect(server, "bob")
    async with api_of(server) as api:
        await api.create_group("team", "alice", ["bob"])
        with pytest.raises(ApiError) as raised:
            await api.publish_to_group("team", "hello", sender="mallory")
        assert (raised.value.status, raised.value.code) == (403, "not_a_member")
        assert raised.value.field == "sender"
        assert "mallory" in raised.value.message

        with pytest.raises(ApiError) as raised:
            await api.publish_to_group("nope", "hello")
        assert (raised.value.status, raised.value.code) == (404, "group_not_found")
        assert raised.value.field == "group_id"

        # A member removed by the backend is a non-member from then on.
        await api.remove_group_members("team", ["bob"])
        await next_groups_changed(bob)
        with pytest.raises(ApiError) as raised:
            await api.publish_to_group("team", "still here?", sender="bob")
        assert raised.value.code == "not_a_member"
        await api.publish_to_group("team", "bob is gone")
    assert await messages_of(bob) == []


async def test_reused_message_id_conflicts(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await api_server(start_server)
    bob = await connect(server, "bob")
    async with api_of(server) as api:
        await api.create_group("team", "alice", ["bob"])
        first = await api.publish("bob", "direct", client_message_id="same-id")
        await next_message(bob)
        for call in (
            lambda: api.publish_to_group("team", "group", client_message_id="same-id"),
            lambda: api.publish("carol", "to another user", client_message_id="same-id"),
        ):
            with pytest.raises(ApiError) as raised:
                await call()
            assert (raised.value.status, raised.value.code) == (409, "message_id_conflict")
            assert raised.value.field == "client_message_id"
            assert "'bob'" in raised.value.message
        # The same recipient is a retry, not a conflict.
        assert await api.publish("bob", "direct", client_message_id="same-id") == first
    assert await messages_of(bob) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"body": "no group"}, "group_id"),
        ({"group_id": "", "body": "x"}, "group_id"),
        ({"group_id": "g" * 63, "body": "x"}, "group_id"),
        ({"group_id": "has:colon", "body": "x"}, "group_id"),
        ({"group_id": ["team"], "body": "x"}, "group_id"),
        ({"group_id": "team"}, "body"),
        ({"group_id": "team", "body": "x", "body_base64": "eA=="}, "body"),
        ({"group_id": "team", "body_base64": "%%%"}, "body_base64"),
        ({"group_id": "team", "body": "x", "sender": "bad sender"}, "sender"),
        ({"group_id": "team", "body": "x", "client_message_id": ""}, "client_message_id"),
        ({"group_id": "team", "body": "x", "user_id": "alice"}, "user_id"),
    ],
)
async def test_group_publish_rejects_bad_fields(
    start_server: ServerFactory, body: dict[str, object], field: str
) -> None:
    server = await api_server(start_server)
    status, answer = await post(server, "groups/publish", body)
    assert status == 400
    assert error_of(answer) == ("bad_request", field)


async def test_group_publish_body_limit(start_server: ServerFactory) -> None:
    server = await api_server(start_server)
    limit = server.config.gateway.max_body_bytes
    body = {"group_id": "team", "body": "x" * (limit + 1)}
    status, answer = await post(server, "groups/publish", body)
    assert status == 413
    assert error_of(answer) == ("body_too_large", "body")


# Membership.


async def test_create_add_remove_reach_live_sessions(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await api_server(start_server)
    alice = await connect(server, "alice")
    bob = await connect(server, "bob")
    dave = await connect(server, "dave")
    async with api_of(server) as api:
        created = await api.create_group("team", "alice", ["bob", "carol", "bob"])
        assert created.created
        assert created.changed == ["alice", "bob", "carol"]
        assert (created.group.group_id, created.group.conversation_id) == ("team", "g:team")
        assert (created.group.owner, created.group.member_count) == ("alice", 3)
        for member in (alice, bob):
            joined = await next_groups_changed(member)
            assert [(g.group_id, g.member_count) for g in joined.joined] == [("team", 3)]

        # The owner's group again: a retry, which adds the members it lacks.
        again = await api.create_group("team", "alice", ["carol", "erin"])
        assert (again.created, again.changed, again.group.member_count) == (False, ["erin"], 4)

        added = await api.add_group_members("team", ["dave", "bob"])
        assert (added.changed, added.group.member_count) == (["dave"], 5)
        assert [g.group_id for g in (await next_groups_changed(dave)).joined] == ["team"]
        ack = await alice.send_to_group("team", "welcome dave")
        assert (await next_message(dave)).message_id == ack.message_id
        await next_message(bob)

        removed = await api.remove_group_members("team", ["dave", "frank"])
        assert (removed.changed, removed.group.member_count) == (["dave"], 4)
        assert (await next_groups_changed(dave)).left == ["team"]
        await alice.send_to_group("team", "after dave left")
        assert (await next_message(bob)).body == b"after dave left"
        assert await messages_of(dave) == []
        # The client sees the same membership as the API.
        assert [(g.group_id, g.member_count) for g in await bob.list_groups()] == [("team", 4)]
        assert await dave.list_groups() == []


async def test_membership_errors(start_server: ServerFactory) -> None:
    server = await api_server(start_server)
    async with api_of(server) as api:
        await api.create_group("team", "alice", ["bob"])
        cases = [
            (lambda: api.create_group("team", "bob"), 409, "group_exists", "group_id"),
            (lambda: api.remove_group_members("team", ["bob", "alice"]), 409,
             "owner_not_removable", "user_ids"),
            (lambda: api.add_group_members("nope", ["bob"]), 404, "group_not_found", "group_id"),
            (lambda: api.remove_group_members("nope", ["bob"]), 404, "group_not_found",
             "group_id"),
            (lambda: api.group_members("nope"), 404, "group_not_found", "group_id"),
        ]  # fmt: skip
        for call, status, code, field in cases:
            with pytest.raises(ApiError) as raised:
                await call()
            assert (raised.value.status, raised.value.code, raised.value.field) == (
                status,
                code,
                field,
            )
        # Nothing changed: bob is still a member, since the owner's removal failed as a whole.
        page = await api.group_members("team")
        assert page.members == ["alice", "bob"]
        assert page.group.owner == "alice"


async def test_membership_limits(start_server: ServerFactory) -> None:
    server = await api_server(start_server)
    assert isinstance(server.logic, LogicService)
    server.logic.config = dataclasses.replace(
        server.logic.config, max_group_members=3, max_groups_per_user=2
    )
    async with api_of(server) as api:
        await api.create_group("team", "alice", ["bob"])
        with pytest.raises(ApiError) as raised:
            await api.add_group_members("team", ["carol", "dave"])
        assert (raised.value.status, raised.value.code) == (409, "limit_reached")
        with pytest.raises(ApiError) as raised:
            await api.create_group("crowd", "erin", ["f", "g", "h"])
        assert raised.value.code == "limit_reached"

        await api.create_group("second", "bob")
        with pytest.raises(ApiError) as raised:
            await api.create_group("third", "bob")
        assert raised.value.code == "limit_reached"
        assert "2 groups" in raised.value.message
        assert (await api.group_members("team")).members == ["alice", "bob"]
        assert await api.group_online(["crowd", "third"]) == {}


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("groups/create", {"owner": "alice"}, "group_id"),
        ("groups/create", {"group_id": "team"}, "owner"),
        ("groups/create", {"group_id": "team", "owner": "alice", "members": "bob"}, "members"),
        ("groups/create", {"group_id": "team", "owner": "alice", "members": ["b c"]},
         "members[0]"),
        ("groups/create", {"group_id": "te am", "owner": "alice"}, "group_id"),
        ("groups/add", {"group_id": "team"}, "user_ids"),
        ("groups/add", {"group_id": "team", "user_ids": []}, "user_ids"),
        ("groups/add", {"group_id": "team", "user_ids": ["u"] * (MAX_GROUP_CHANGE + 1)},
         "user_ids"),
        ("groups/remove", {"user_ids": ["bob"]}, "group_id"),
        ("groups/remove", {"group_id": "team", "user_ids": ["bob", 7]}, "user_ids[1]"),
        ("groups/members", {"group_id": "team", "limit": 0}, "limit"),
        ("groups/members", {"group_id": "team", "limit": MAX_MEMBERS_PAGE + 1}, "limit"),
        ("groups/members", {"group_id": "team", "limit": "10"}, "limit"),
        ("groups/members", {"group_id": "team", "after": ""}, "after"),
        ("groups/members", {"group_id": "team", "cursor": "bob"}, "cursor"),
        ("groups/online", {}, "group_ids"),
        ("groups/online", {"group_ids": []}, "group_ids"),
        ("groups/online", {"group_ids": "team"}, "group_ids"),
        ("groups/online", {"group_ids": ["team", "a b"]}, "group_ids[1]"),
        ("groups/online", {"group_ids": [f"g{n}" for n in range(MAX_QUERIED_GROUPS + 1)]},
         "group_ids"),
    ],
)  # fmt: skip
async def test_group_routes_reject_bad_fields(
    start_server: ServerFactory, route: str, body: dict[str, object], field: str
) -> None:
    server = await api_server(start_server)
    status, answer = await post(server, route, body)
    assert status == 400, answer
    assert error_of(answer) == ("bad_request", field)


async def test_members_listed_in_pages(start_server: ServerFactory) -> None:
    server = await api_server(start_server)
    users = [f"user{index:03}" for index in range(25)]
    async with api_of(server) as api:
        await api.create_group("team", "owner", users)
        listed: list[str] = []
        after: str | None = None
        pages = 0
        while True:
            page = await api.group_members("team", after=after, limit=10)
            pages += 1
            listed += page.members
            assert page.group.member_count == 26
            if not page.has_more:
                break
            after = page.members[-1]
        assert pages == 3
        assert listed == sorted([*users, "owner"])
        whole = await api.group_members("team")
        assert whole.members == listed
        assert not whole.has_more


# Online counts.


async def test_online_count_of_small_groups(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await api_server(start_server, grace_period=0.1)
    await connect(server, "alice")
    bob = await connect(server, "bob")
    laptop = await connect(server, "bob", device="laptop")  # one user, counted once
    await connect(server, "carol", status="invisible")
    async with api_of(server) as api:
        await api.create_group("team", "alice", ["bob", "carol", "dave"])
        await api.create_group("pair", "erin", ["alice"])
        counts = await api.group_online(["team", "nope", "pair", "team"])
        assert list(counts) == ["team", "pair"]
        assert (counts["team"].member_count, counts["team"].online) == (4, 2)
        assert (counts["pair"].member_count, counts["pair"].online) == (2, 1)

        status, answer = await post(server, "groups/online", {"group_ids": ["nope", "team"]})
        assert status == 200
        assert answer["not_found"] == ["nope"]

        await bob.close()
        await online_until(api, "team", 2)  # bob's laptop is still connected
        await laptop.close()
        await online_until(api, "team", 1)


async def test_online_count_of_large_groups(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    interval = 0.2
    server = await api_server(
        start_server, groups=GroupConfig(count_threshold=2, count_interval=interval)
    )
    members = [f"m{index}" for index in range(5)]
    async with api_of(server) as api:
        await api.create_group("big", "owner", members)
        await api.create_group("small", "owner", ["m0"])
        connected = [await connect(server, member) for member in members[:3]]
        await connect(server, "m3", status="invisible")
        # Counted by the gateway: it shows within about one count interval.
        await online_until(api, "big", 3)
        counts = await api.group_online(["big", "small"])
        assert (counts["big"].member_count, counts["big"].online) == (6, 3)
        assert (counts["small"].member_count, counts["small"].online) == (2, 1)

        await connected[0].close()
        await online_until(api, "big", 2)
