"""Hostile input against the admin dashboard, the group routes of the server HTTP API and
`tether cluster --config`.

Tests that found a defect and could not be fixed simply are marked `xfail(strict=True)` with the
defect in the reason, so they fail once it is fixed and the mark can go.

Every server binds to 127.0.0.1, every burst of requests is bounded in count, and every wait
is a multiple of `TIMEOUT` or `QUIET`. Cluster tests run gateways and logic workers as
processes on a Redis server of the test's own (test_cluster.py).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import random
import signal
import subprocess
import time
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import test_dashboard_cluster
from conftest import QUIET, TIMEOUT, ClientFactory, ServerFactory, drain
from redis_server import RedisUnderTest, inspector
from test_cli import TETHER, _free_port_pair
from test_cluster import Cluster, on_both
from test_cluster import connect as cluster_connect
from test_config import tether
from test_dashboard import (
    ADMIN_KEY,
    API_KEY,
    BEARER,
    admin_server,
    request,
)
from test_dashboard_cluster import ADMIN, admin_request
from test_dashboard_cluster import ADMIN_KEY as CLUSTER_ADMIN_KEY
from test_dashboard_cluster import overview_until as cluster_overview_until
from test_hostile import MAX_BYSTANDER_LATENCY, Arena
from test_http_api import KEY, api_server, error_of, post
from test_http_api_cluster import API
from test_http_api_cluster import api_of as cluster_api_of
from test_http_api_groups import api_of, messages_of, next_message

from tether.api_client import ApiClient
from tether.client import Client
from tether.client import events as ev
from tether.logic.groups import MAX_GROUP_CHANGE, MAX_QUERIED_GROUPS
from tether.ops.dashboard import OVERVIEW_MAX_AGE
from tether.ops.gateway_load import MAX_MAGNITUDE
from tether.ops.http import MAX_REQUEST_BYTES
from tether.ops.load_board import DEFAULT_TIMEOUT, MAX_GATEWAYS

cluster = test_dashboard_cluster.cluster  # the fixture: processes on the test's Redis

GROUP_ROUTES = [
    "groups/publish",
    "groups/online",
    "groups/create",
    "groups/add",
    "groups/remove",
    "groups/members",
]
ADMIN_ROUTE = "/admin/api/sessions"
JSON_HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
CLUSTER_BEARER = {"Authorization": f"Bearer {CLUSTER_ADMIN_KEY}"}
# Bodies json.loads fails on with other errors than JSONDecodeError, all far below the port's
# 256 KiB limit: nesting past the recursion limit, and an integer past the 4,300 digit limit.
DEEP_NESTING = b'{"group_id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
LONG_INTEGER = b'{"group_id": "team", "limit": ' + b"7" * 5000 + b"}"
SCRIPT = "<img src=x onerror=window.__xss=1>"


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Assert that no tether logger logged an error, such as a request that failed with 500."""
    errors = [
        record.getMessage()
        for record in caplog.records
        if record.levelno >= logging.ERROR and record.name.startswith("tether")
    ]
    assert errors == []


# The admin dashboard: keys, paths and files.


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        (f"/admin/api/overview?key={ADMIN_KEY}", {}),
        (f"/admin/api/overview?X-Admin-Key={ADMIN_KEY}", {}),
        ("/admin/api/overview", {"Cookie": f"X-Admin-Key={ADMIN_KEY}"}),
        ("/admin/api/overview", {"Authorization": f"Bearer\t{ADMIN_KEY}"}),
        ("/admin/api/overview", {"Authorization": f"Token {ADMIN_KEY}"}),
        ("/admin/api/overview", {"Authorization": ADMIN_KEY}),
        ("/admin/api/overview", {"Authorization": f"Bearer {ADMIN_KEY[:-1]}"}),
        ("/admin/api/overview", {"Authorization": f"Bearer {ADMIN_KEY}x"}),
        ("/admin/api/overview", {"Authorization": f"Bearer {ADMIN_KEY.upper()}"}),
        # The dashboard's own header wins over Authorization: a wrong one is not overruled.
        ("/admin/api/overview",
         {"X-Admin-Key": "wrong-admin-key-0123456789", "Authorization": f"Bearer {ADMIN_KEY}"}),
        ("/admin/api/overview", {"X-API-Key": API_KEY}),
        ("/admin/api/overview", {"Authorization": f"Bearer {API_KEY}"}),
    ],
    ids=["query-key", "query-header", "cookie", "tab", "token-scheme", "no-scheme", "prefix",
         "suffix", "case", "conflicting-headers", "api-header", "api-key"],
)  # fmt: skip
async def test_admin_key_only_from_its_headers(
    start_server: ServerFactory, path: str, headers: dict[str, str]
) -> None:
    server = await admin_server(start_server)
    status, answer, response_headers = await request(server, "GET", path, headers=headers)
    assert status == 401
    assert answer["error"]["code"] == "unauthorized"
    assert response_headers["WWW-Authenticate"] == "Bearer"


async def test_admin_header_names_in_any_case(start_server: ServerFactory) -> None:
    server = await admin_server(start_server)
    for headers in (
        {"authorization": f"BEARER {ADMIN_KEY}"},
        {"x-admin-key": ADMIN_KEY},
        {"X-ADMIN-KEY": ADMIN_KEY},
    ):
        status, answer, _ = await request(server, "GET", "/admin/api/overview", headers=headers)
        assert status == 200, headers
        assert answer["mode"] == "embedded"
    # HEAD returns what GET would, so it needs the key too.
    assert server.http is not None
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session,
        session.head(f"http://127.0.0.1:{server.http.port}/admin/api/overview") as response,
    ):
        assert response.status == 401


@pytest.mark.parametrize(
    "path",
    [
        "/admin/api/overview/",
        "/admin/api//overview",
        "/admin//api/overview",
        "//admin/api/overview",
        "/%61dmin/api/overview",
        "/admin/%61pi/overview",
        "/admin/./api/overview",
        "/admin/static/../api/overview",
        "/admin/static/%2e%2e/api/overview",
        "/ADMIN/api/overview",
        "/admin/api/overview%00",
        "/admin/api/overview;key=x",
    ],
)
async def test_odd_paths_never_skip_the_key(start_server: ServerFactory, path: str) -> None:
    """A path that reaches an /admin/api route by any spelling needs the key."""
    server = await admin_server(start_server)
    for method in ("GET", "POST"):
        status, answer, _ = await request(server, method, path, body={"user_id": "alice"})
        assert status in (401, 404, 405), (method, status, answer)
        assert "gateways" not in str(answer)
        assert "devices" not in str(answer)


@pytest.mark.parametrize(
    "path",
    [
        "/admin/static/../dashboard.py",
        "/admin/static/%2e%2e/dashboard.py",
        "/admin/static/%2e%2e%2fdashboard.py",
        "/admin/static/..%2f..%2fops%2fdashboard.py",
        "/admin/static/..%5cdashboard.py",
        "/admin/static//etc/passwd",
        "/admin/static/%2fetc%2fpasswd",
        "/admin/static/admin.js%00.py",
        "/admin/static/",
        "/admin/static",
        "/admin/static/.",
    ],
)
async def test_static_files_stay_in_their_folder(start_server: ServerFactory, path: str) -> None:
    server = await admin_server(start_server)
    status, answer, _ = await request(server, "GET", path)
    assert status in (403, 404), (status, str(answer)[:200])
    for leaked in ("import ", "root:", "<a href", "Index of"):
        assert leaked not in str(answer)


# The admin dashboard in the browser: ids that look like markup are shown as text.


async def test_markup_in_ids_shown_as_text(
    browser: Any, start_server: ServerFactory, connect: ClientFactory
) -> None:
    """A gateway id, a device id and a looked-up user id that hold HTML appear as their text,
    and no element is made from them."""
    from test_dashboard_browser import WAIT_MS, expect_text, playwright_api

    server = await start_server(
        http_port=0, admin_keys=(ADMIN_KEY,), load_report_interval=0.2, gateway_id=SCRIPT
    )
    assert server.http is not None
    await connect(server, "alice", device=f"phone{SCRIPT}")
    context = await browser.new_context()
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(f"http://127.0.0.1:{server.http.port}/admin/")
    await page.get_by_label("Admin key").fill(ADMIN_KEY)
    await page.get_by_role("button", name="Sign in").click()
    await expect_text(page, "#served-by", SCRIPT)
    await expect_text(page, "#gateways tbody th", SCRIPT)

    await page.get_by_label("User id").fill("alice")
    await page.get_by_role("button", name="Look up").click()
    await playwright_api.expect(page.locator("#devices tbody td").first).to_have_text(
        f"phone{SCRIPT}", timeout=WAIT_MS
    )
    await expect_text(page, "#devices tbody td:nth-child(2)", SCRIPT)

    # A user id cannot contain markup: the server rejects it, and the page shows the error.
    await page.get_by_label("User id").fill(SCRIPT)
    await page.get_by_role("button", name="Look up").click()
    await playwright_api.expect(page.locator("#user-error")).to_contain_text(
        f"Could not look up {SCRIPT}", timeout=WAIT_MS
    )
    assert await page.locator("img").count() == 0
    assert await page.evaluate("window.__xss") is None
    assert errors == []
    await context.close()


# Bodies that json.loads fails on in unusual ways.


@pytest.mark.parametrize(
    ("data", "message", "field"),
    [
        (DEEP_NESTING, "body nests arrays or objects too deeply", None),
        (LONG_INTEGER, "body has a number with too many digits", None),
        (b'{"group_id": "team", "group_id": "other"}', "names the key 'group_id' twice",
         "group_id"),
        (b'{"group_ids": ["team"], "group_ids": ["a", "b"]}', "names the key 'group_ids' twice",
         "group_ids"),
    ],
    ids=["deep", "long-integer", "duplicate-key", "duplicate-array"],
)  # fmt: skip
async def test_undecodable_bodies_are_bad_requests(
    start_server: ServerFactory,
    caplog: pytest.LogCaptureFixture,
    data: bytes,
    message: str,
    field: str | None,
) -> None:
    """Every route answers 400 with the reason, not 500, and logs no error."""
    caplog.set_level(logging.WARNING)
    server = await api_server(start_server, admin_keys=(ADMIN_KEY,))
    for route in GROUP_ROUTES:
        status, answer = await post(server, route, data=data, headers=JSON_HEADERS)
        assert status == 400, (route, answer)
        assert error_of(answer) == ("bad_request", field), route
        assert message in answer["error"]["message"]
    assert server.http is not None and server.http.port is not None
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(
            f"http://127.0.0.1:{server.http.port}{ADMIN_ROUTE}",
            data=data,
            headers={**BEARER, "Content-Type": "application/json"},
        ) as response,
    ):
        assert response.status == 400
        assert message in (await response.json())["error"]["message"]
    no_errors_logged(caplog)


async def test_body_at_the_size_limit(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await api_server(start_server)
    bob = await connect(server, "bob")
    async with api_of(server) as api:
        await api.create_group("team", "alice", ["bob"])
    await drain(bob)

    def padded(size: int) -> bytes:
        body = json.dumps({"group_id": "team", "body": "at the limit"}).encode()
        return body + b" " * (size - len(body))  # JSON allows trailing whitespace

    status, answer = await post(
        server, "groups/publish", data=padded(MAX_REQUEST_BYTES), headers=JSON_HEADERS
    )
    assert status == 200, answer
    assert (await next_message(bob)).body == b"at the limit"
    status, answer = await post(
        server, "groups/publish", data=padded(MAX_REQUEST_BYTES + 1), headers=JSON_HEADERS
    )
    assert status == 413
    assert error_of(answer) == ("body_too_large", None)

    # The message limit counts UTF-8 bytes: 2 bytes per "é".
    limit = server.config.gateway.max_body_bytes
    status, answer = await post(server, "groups/publish", {"group_id": "team", "body": "x" * limit})
    assert status == 200, answer
    status, answer = await post(
        server, "groups/publish", {"group_id": "team", "body": "é" * (limit // 2 + 1)}
    )
    assert status == 413
    assert error_of(answer) == ("body_too_large", "body")
    assert [message.body for message in await messages_of(bob)] == [b"x" * limit]


# Group routes: odd values, each answered with the documented code and the field at fault.


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("groups/add", {"group_id": "team", "user_ids": ["ålice"]}, "user_ids[0]"),
        ("groups/add", {"group_id": "team", "user_ids": ["bob\u200b"]}, "user_ids[0]"),
        ("groups/add", {"group_id": "team", "user_ids": ["\uff42\uff4f\uff42"]}, "user_ids[0]"),
        ("groups/add", {"group_id": "team", "user_ids": ["bob", "u" * 65]}, "user_ids[1]"),
        ("groups/add", {"group_id": "team", "user_ids": [["bob"]]}, "user_ids[0]"),
        ("groups/add", {"group_id": "team", "user_ids": [None]}, "user_ids[0]"),
        ("groups/add", {"group_id": "team", "user_ids": {"bob": 1}}, "user_ids"),
        ("groups/add", {"group_id": "team", "user_ids": None}, "user_ids"),
        ("groups/add", {"group_id": "tëam", "user_ids": ["bob"]}, "group_id"),
        ("groups/add", {"group_id": 7, "user_ids": ["bob"]}, "group_id"),
        ("groups/remove", {"group_id": "team", "user_ids": [""]}, "user_ids[0]"),
        ("groups/remove", {"group_id": "team", "user_ids": ["bob"] * (MAX_GROUP_CHANGE + 1)},
         "user_ids"),
        ("groups/create", {"group_id": "g" * 63, "owner": "alice"}, "group_id"),
        ("groups/create", {"group_id": "team2", "owner": ""}, "owner"),
        ("groups/create", {"group_id": "team2", "owner": ["alice"]}, "owner"),
        ("groups/create", {"group_id": "team2", "owner": "alice", "members": [True]},
         "members[0]"),
        ("groups/members", {"group_id": "team", "limit": True}, "limit"),
        ("groups/members", {"group_id": "team", "limit": 10.5}, "limit"),
        ("groups/members", {"group_id": "team", "limit": -1}, "limit"),
        ("groups/members", {"group_id": "team", "after": "a b"}, "after"),
        ("groups/online", {"group_ids": ["team"] * (MAX_QUERIED_GROUPS + 1)}, "group_ids"),
        ("groups/online", {"group_ids": ["team", ""]}, "group_ids[1]"),
        ("groups/publish", {"group_id": "team", "body": "x", "sender": ""}, "sender"),
        ("groups/publish", {"group_id": "team", "body": "x", "sender": None}, "sender"),
        ("groups/publish", {"group_id": "team", "body": 5}, "body"),
        ("groups/publish", {"group_id": "team", "body": "x", "client_message_id": "a" * 65},
         "client_message_id"),
        ("groups/publish", {"group_id": "team", "body": "x", "client_message_id": "a\x00b"},
         "client_message_id"),
        ("groups/publish", {"group_id": "team", "body": "x", "client_message_id": 1},
         "client_message_id"),
        ("groups/publish", {"group_id": "team", "body": "\ud800"}, "body"),
    ],
)  # fmt: skip
async def test_group_routes_name_the_bad_field(
    start_server: ServerFactory, route: str, body: dict[str, object], field: str
) -> None:
    server = await api_server(start_server)
    async with api_of(server) as api:
        await api.create_group("team", "alice", ["bob"])
    status, answer = await post(server, route, body)
    assert status == 400, answer
    assert error_of(answer) == ("bad_request", field)
    assert field.split("[")[0] in answer["error"]["message"]
    async with api_of(server) as api:  # nothing changed
        assert (await api.group_members("team")).members == ["alice", "bob"]


async def test_group_routes_accept_limit_values(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await api_server(start_server)
    longest_user, longest_group = "u" * 64, "g" * 62
    status, answer = await post(
        server, "groups/create", {"group_id": longest_group, "owner": longest_user}
    )
    assert status == 200, answer
    assert answer["group"]["conversation_id"] == f"g:{longest_group}"

    # A list of the maximum length, all one user, adds that user once.
    status, answer = await post(
        server, "groups/add", {"group_id": longest_group, "user_ids": ["bob"] * MAX_GROUP_CHANGE}
    )
    assert status == 200, answer
    assert answer["added"] == ["bob"]
    assert answer["group"]["member_count"] == 2

    bob = await connect(server, "bob")
    client_message_id = "✉️" * 32  # 64 characters, 192 bytes of UTF-8
    status, answer = await post(
        server,
        "groups/publish",
        {"group_id": longest_group, "body": "hi", "client_message_id": client_message_id},
    )
    assert status == 200, answer
    assert answer["client_message_id"] == client_message_id
    assert (await next_message(bob)).body == b"hi"


async def test_system_sender_and_lookalikes(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    """Only the exact id `system` publishes without being a member."""
    server = await api_server(start_server)
    bob = await connect(server, "bob")
    async with api_of(server) as api:
        await api.create_group("team", "alice", ["bob"])
    await drain(bob)
    for sender in ("System", "SYSTEM", "system.", "system-bot"):
        body = {"group_id": "team", "body": "fake notice", "sender": sender}
        status, answer = await post(server, "groups/publish", body)
        assert status == 403, sender
        assert error_of(answer) == ("not_a_member", "sender")
        assert sender in answer["error"]["message"]
    body = {"group_id": "team", "body": "notice", "sender": "system"}
    status, answer = await post(server, "groups/publish", body)
    assert status == 200, answer
    [message] = await messages_of(bob)
    assert (message.sender, message.body) == ("system", b"notice")

    # A direct publish to the user `system` needs another sender.
    status, answer = await post(server, "publish", {"user_id": "system", "body": "x"})
    assert status == 400
    assert error_of(answer) == ("bad_request", "sender")


async def test_message_ids_are_per_sender(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    """Two members may use one client_message_id; a sender's retry returns the first one."""
    server = await api_server(start_server)
    carol = await connect(server, "carol")
    async with api_of(server) as api:
        await api.create_group("team", "alice", ["bob", "carol"])
        await drain(carol)
        from_alice = await api.publish_to_group("team", "a", sender="alice", client_message_id="m")
        from_bob = await api.publish_to_group("team", "b", sender="bob", client_message_id="m")
        assert from_alice.message_id != from_bob.message_id
        assert from_bob.sequence == from_alice.sequence + 1
        retried = await api.publish_to_group("team", "a", sender="alice", client_message_id="m")
        assert retried == from_alice
        # A retry with another body is still the first message: the id decides.
        changed = await api.publish_to_group("team", "other", sender="alice", client_message_id="m")
        assert changed == from_alice
    received = await messages_of(carol)
    assert [(message.sender, message.body) for message in received] == [
        ("alice", b"a"),
        ("bob", b"b"),
    ]


# Races: membership changes and publishes at once.


async def race_membership(api: ApiClient, bob: Client, rounds: int = 50) -> None:
    """Add and remove bob at once, rounds requests in all; the API's answers, the group's
    members, bob's GroupsChanged frames and the delivery of a later message must agree."""
    await drain(bob)
    operations = [random.choice(["add", "remove"]) for _ in range(rounds)]

    async def change(operation: str) -> bool:
        if operation == "add":
            return bool((await api.add_group_members("team", ["bob"])).changed)
        return bool((await api.remove_group_members("team", ["bob"])).changed)

    changed = await asyncio.gather(*(change(operation) for operation in operations))
    member = "bob" in (await api.group_members("team")).members

    events = [event for event in await drain(bob, QUIET * 2) if isinstance(event, ev.GroupsChanged)]
    seen_member = None
    for event in events:
        assert not (event.joined and event.left), event
        seen_member = bool(event.joined)
    assert len(events) == sum(changed), "one GroupsChanged per change the API reported"
    if events:
        assert seen_member == member
    assert [group.group_id for group in await bob.list_groups()] == (["team"] if member else [])

    await api.publish_to_group("team", "after the race")
    got = [event.body for event in await drain(bob) if isinstance(event, ev.Message)]
    assert got == ([b"after the race"] if member else [])


async def publish_racing_removal(api: ApiClient, bob: Client, rounds: int = 15) -> None:
    """While one request removes bob, others publish; what is published after the removal's
    answer never reaches bob while he is not a member.

    A member added again who gets a live message behind a gap fetches the gap with Sync, and
    the server lets members read the whole history. So the next round may show bob earlier
    rounds' messages, and only the current round's last message is checked.
    """
    for number in range(rounds):
        await api.add_group_members("team", ["bob"])
        removal = asyncio.create_task(api.remove_group_members("team", ["bob"]))
        sent = 0
        while not removal.done() and sent < 20:
            await api.publish_to_group("team", f"during {number}")
            sent += 1
        await removal
        await api.publish_to_group("team", f"after {number}")
        got = [event.body for event in await drain(bob) if isinstance(event, ev.Message)]
        assert f"after {number}".encode() not in got, f"round {number}"


async def test_membership_race_embedded(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await api_server(start_server)
    bob = await connect(server, "bob")
    async with api_of(server) as api:
        await api.create_group("team", "alice")
        await race_membership(api, bob)
        await publish_racing_removal(api, bob)


@on_both
async def test_membership_race_cluster(cluster: Cluster, clients: list[Client]) -> None:
    logic = cluster.logic("logic", "", *API)
    gateway = cluster.gateway("gw1")
    bob = await cluster_connect(clients, gateway, "bob")
    async with cluster_api_of(logic) as api:
        await api.create_group("team", "alice")
        await race_membership(api, bob)
        await publish_racing_removal(api, bob)


# Bad input costs only its sender.


async def test_bad_api_input_costs_only_sender(
    start_server: ServerFactory, connect: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Bystanders keep chatting while a backend sends 270 bad requests to the group routes."""
    caplog.set_level(logging.WARNING)
    arena = await Arena.open(start_server, connect, pairs=10, http_port=0, api_keys=(KEY,))
    server = arena.server
    async with api_of(server) as api:
        await api.create_group("team", "by0s", ["by0r"])
        await api.publish("nobody", "taken", client_message_id="taken")
    oversized = b'{"group_id": "team", "body": "' + b"x" * MAX_REQUEST_BYTES + b'"}'
    attacks: list[tuple[str, bytes, int, str]] = [
        ("groups/publish", DEEP_NESTING, 400, "bad_request"),
        ("groups/members", LONG_INTEGER, 400, "bad_request"),
        ("groups/publish", oversized, 413, "body_too_large"),
        ("groups/add", b'{"group_id": "nope", "user_ids": ["x"]}', 404, "group_not_found"),
        ("groups/remove", b'{"group_id": "team", "user_ids": ["by0s"]}', 409,
         "owner_not_removable"),
        ("groups/publish", b'{"group_id": "team", "body": "x", "sender": "intruder"}', 403,
         "not_a_member"),
        ("groups/online", json.dumps({"group_ids": ["g"] * 101}).encode(), 400, "bad_request"),
        ("groups/create", b'{"group_id": "team", "owner": "by1s"}', 409, "group_exists"),
        ("groups/publish", b'{"group_id": "team", "body": "x", "client_message_id": "taken"}',
         409, "message_id_conflict"),
    ]  # fmt: skip
    async with arena.chatting():
        for _ in range(30):
            results = await asyncio.gather(
                *(
                    post(server, route, data=data, headers=JSON_HEADERS)
                    for route, data, *_ in attacks
                )
            )
            for (route, _, status, code), (got_status, answer) in zip(
                attacks, results, strict=True
            ):
                assert (got_status, answer["error"]["code"]) == (status, code), route
    await arena.check()
    no_errors_logged(caplog)
    async with api_of(server) as api:
        assert (await api.group_members("team")).members == ["by0r", "by0s"]


def inflating_body(mebibytes: int) -> bytes:
    """Return a deflate stream (zlib format, cut before its end) of mebibytes MiB of zeros.

    After a full flush the compressor starts afresh, so every further MiB compresses to the
    same kilobyte, and making the stream costs a copy, not gigabytes of compression.
    """
    compressor = zlib.compressobj(9)
    zeros = bytes(2**20)
    first = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    again = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    return first + again * (mebibytes - 1)


async def test_compressed_bodies_never_inflated(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    """Bodies of 2 MB that would inflate to 2 GiB, sent with and without a key to any path,
    are rejected without being inflated, so bystanders keep chatting."""
    arena = await Arena.open(
        start_server, connect, pairs=10, http_port=0, api_keys=(KEY,), admin_keys=(ADMIN_KEY,)
    )
    server = arena.server
    assert server.http is not None
    bomb = inflating_body(2000)
    admin_json = {**BEARER, "Content-Type": "application/json"}
    cases = [
        ("/api/v1/groups/publish", {"Content-Type": "application/json"}, 401),
        ("/api/v1/groups/publish", JSON_HEADERS, 415),
        (ADMIN_ROUTE, admin_json, 415),
        ("/healthz/live", {}, 405),
        ("/nowhere", {}, 404),
    ]
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with arena.chatting(), aiohttp.ClientSession(timeout=timeout) as session:
        for path, headers, status in cases:
            async with session.post(
                f"http://127.0.0.1:{server.http.port}{path}",
                data=bomb,
                headers={**headers, "Content-Encoding": "deflate"},
            ) as response:
                assert response.status == status, path
                await response.read()
        # A well-formed gzip body gets the reason.
        small = gzip.compress(json.dumps({"group_id": "team", "body": "x"}).encode())
        async with session.post(
            f"http://127.0.0.1:{server.http.port}/api/v1/groups/publish",
            data=small,
            headers={**JSON_HEADERS, "Content-Encoding": "gzip"},
        ) as response:
            answer = await response.json()
        assert response.status == 415
        assert answer["error"]["code"] == "unsupported_media_type"
        assert "Content-Encoding" in answer["error"]["message"]
    await arena.check()
    assert server.loop_lag.stats.maximum < MAX_BYSTANDER_LATENCY


# The overview in a cluster: reports that no gateway of this version wrote.


async def write_reports(redis_server: RedisUnderTest, reports: dict[str, object]) -> None:
    """Put reports into Redis as gateways would, live for a long time; a bytes value is
    written as is, a hash value as a Redis hash."""
    client = inspector(redis_server)
    expiry_ms = int(time.time() * 1000) + 600_000
    try:
        for gateway_id, report in reports.items():
            key = f"tether:{{load}}:{gateway_id}"
            if isinstance(report, dict) and report.get("as_hash"):
                await client.hset(key, "field", "value")
            else:
                data = report if isinstance(report, bytes) else json.dumps(report).encode()
                await client.set(key, data, px=600_000)
            await client.zadd("tether:{load}", {gateway_id: expiry_ms})
    finally:
        await client.aclose()


def sample(gateway_id: str, **fields: object) -> dict[str, object]:
    return {"gateway_id": gateway_id, "sampled_at_ms": int(time.time() * 1000), **fields}


@on_both
async def test_bad_reports_left_out(cluster: Cluster, redis_server: RedisUnderTest) -> None:
    logic = cluster.logic("logic", "", *ADMIN)
    huge = MAX_MAGNITUDE * 2
    await write_reports(
        redis_server,
        {
            "gw-good": sample("gw-good", connections=3, rates={"messages": 2.5}),
            "gw-deep": b"[" * 100_000,
            "gw-digits": b'{"gateway_id": "gw-digits", "sampled_at_ms": ' + b"1" * 5000 + b"}",
            "gw-hash": {"as_hash": True},
            "gw-other": sample("gw-good", connections=1000),  # filed under another gateway
            "gw-rate-a": sample("gw-rate-a", rates={"messages": 1e308}),
            "gw-rate-b": sample("gw-rate-b", rates={"messages": 1e308}),
            "gw-connections": sample("gw-connections", connections=huge),
            "gw-future": sample("gw-future", sampled_at_ms=1e300),
            "gw-" + SCRIPT: sample("gw-" + SCRIPT),
        },
    )
    client = inspector(redis_server)
    try:
        await client.zadd("tether:{load}", {b"gw-\xff\xfe": int(time.time() * 1000) + 600_000})
    finally:
        await client.aclose()

    answer = await cluster_overview_until(logic, lambda answer: answer["totals"]["gateways"] == 2)
    assert [load["gateway_id"] for load in answer["gateways"]] == ["gw-" + SCRIPT, "gw-good"]
    assert answer["totals"]["connections"] == 3
    assert answer["rates"]["messages"] == 2.5
    assert not answer["truncated"]

    # The answer is strict JSON, which browsers parse: no Infinity and no NaN.
    assert logic.http_port
    status, text = await http_text(logic.http_port, "/admin/api/overview")
    assert status == 200
    json.loads(text, parse_constant=reject_constant)


def reject_constant(name: str) -> None:
    raise AssertionError(f"{name} in the JSON of the overview")


async def http_text(port: int, path: str) -> tuple[int, str]:
    """Return the status and raw text of GET path with the admin key."""
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"http://127.0.0.1:{port}{path}", headers=CLUSTER_BEARER) as response,
    ):
        return response.status, await response.text()


async def test_first_gateways_by_id_listed(cluster: Cluster, redis_server: RedisUnderTest) -> None:
    """With more gateways than the cap, the first ones by id are listed, whatever the order
    in which their reports expire."""
    logic = cluster.logic("logic", "", *ADMIN)
    count = MAX_GATEWAYS + 100
    now_ms = int(time.time() * 1000)
    client = inspector(redis_server)
    try:
        pipeline = client.pipeline(transaction=False)
        for number in range(count):
            gateway_id = f"gw{number:05}"
            pipeline.set(
                f"tether:{{load}}:{gateway_id}", json.dumps(sample(gateway_id)), px=600_000
            )
            # The higher the id, the sooner its report expires.
            pipeline.zadd("tether:{load}", {gateway_id: now_ms + 600_000 - number})
        await pipeline.execute()
    finally:
        await client.aclose()
    answer = await admin_request(logic, "GET", "/admin/api/overview")
    assert answer["truncated"] is True
    listed = [load["gateway_id"] for load in answer["gateways"]]
    assert listed == [f"gw{number:05}" for number in range(MAX_GATEWAYS)]


@pytest.mark.xfail(
    strict=True,
    reason="RedisLoadBoard scores each id with the writing gateway's wall clock plus the "
    "report TTL (3 report intervals, 6 s by default), and readers keep only ids scored after "
    "their own clock; so a live gateway whose clock lags the reader's by more than the TTL is "
    "left out of every dashboard although its report key still lives, and every other "
    "gateway's write trims its id until its next write",
)
async def test_gateway_with_lagging_clock_listed(
    cluster: Cluster, redis_server: RedisUnderTest
) -> None:
    logic = cluster.logic("logic", "", *ADMIN)
    ttl_ms = 6000
    lagging_now_ms = int(time.time() * 1000) - 10_000  # this gateway's clock is 10 s behind
    client = inspector(redis_server)
    try:
        # What a gateway with that clock writes every report interval (load_board.write).
        await client.set(
            "tether:{load}:gw-lagging",
            json.dumps(sample("gw-lagging", sampled_at_ms=lagging_now_ms)),
            px=ttl_ms,
        )
        await client.zadd("tether:{load}", {"gw-lagging": lagging_now_ms + ttl_ms})
        answer = await admin_request(logic, "GET", "/admin/api/overview")
    finally:
        await client.aclose()
    assert [load["gateway_id"] for load in answer["gateways"]] == ["gw-lagging"]


async def concurrent_overviews(port: int, count: int) -> list[tuple[int, float]]:
    """GET the overview count times at once; return each status and its seconds."""
    timeout = aiohttp.ClientTimeout(total=DEFAULT_TIMEOUT * 3 + TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def get() -> tuple[int, float]:
            started = time.monotonic()
            async with session.get(
                f"http://127.0.0.1:{port}/admin/api/overview", headers=CLUSTER_BEARER
            ) as response:
                await response.read()
                return response.status, time.monotonic() - started

        return await asyncio.gather(*(get() for _ in range(count)))


async def redis_reads(redis_server: RedisUnderTest) -> int:
    """Return how many index reads (ZRANGEBYSCORE) the Redis server has answered."""
    client = inspector(redis_server)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return int(stats.get("cmdstat_zrangebyscore", {}).get("calls", 0))


async def test_many_polls_share_reads(cluster: Cluster, redis_server: RedisUnderTest) -> None:
    logic = cluster.logic("logic", "", *ADMIN)
    cluster.gateway("gw1", load_report_interval="0.5")
    await cluster_overview_until(logic, lambda answer: answer["totals"]["gateways"] == 1)
    assert logic.http_port
    before = await redis_reads(redis_server)
    started = time.monotonic()
    results = await concurrent_overviews(logic.http_port, 200)
    elapsed = time.monotonic() - started
    assert {status for status, _ in results} == {200}
    reads = await redis_reads(redis_server) - before
    assert reads <= 2 + elapsed / OVERVIEW_MAX_AGE, f"{reads} reads in {elapsed:.2f} s"


async def test_stalled_redis_costs_one_timeout(
    cluster: Cluster, redis_server: RedisUnderTest
) -> None:
    """Polls that arrive while Redis does not answer share one read and fail together, instead
    of waiting for each other's timeouts in turn."""
    logic = cluster.logic("logic", "", *ADMIN)
    await cluster_overview_until(logic, lambda answer: answer["totals"]["gateways"] == 0)
    await asyncio.sleep(OVERVIEW_MAX_AGE)
    assert logic.http_port
    redis_server.pause()
    try:
        results = await concurrent_overviews(logic.http_port, 8)
    finally:
        redis_server.resume()
    assert {status for status, _ in results} == {503}
    slowest = max(seconds for _, seconds in results)
    assert slowest < DEFAULT_TIMEOUT * 2, f"the last poll waited {slowest:.1f} s"
    answer = await cluster_overview_until(logic, lambda answer: answer["mode"] == "cluster")
    assert answer["totals"]["gateways"] == 0


# `tether cluster --config FILE`.


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        (b"tcp_prot = 9000\n", "'tcp_prot' is not a setting of tether serve"),
        (b'gateway_id = "gw"\n', "'gateway_id' is not a setting of tether logic"),
        (b"[logic]\nshards = 3\n", "[logic] 'shards' is not a setting of tether logic"),
        (b'[serve]\nmax_frame_bytes = "lots"\n', "invalid value for max_frame_bytes"),
        (b"[serve]\nlimits = {frames = 3}\n", "'limits' is not a setting of tether serve"),
        (b"[cluster]\ngateways = 3\n", "'cluster' is not a setting of tether serve"),
        (b"tcp_port = \n", "is not valid TOML"),
        (b"\xff\xfe[serve]\n", "is not valid TOML"),
    ],
    ids=["unknown-key", "serve-key-for-all", "logic-table", "bad-value", "table-value",
         "cluster-table", "not-toml", "not-utf-8"],
)  # fmt: skip
def test_cluster_rejects_bad_config_early(tmp_path: Path, content: bytes, complaint: str) -> None:
    config = tmp_path / "tether.toml"
    config.write_bytes(content)
    result = tether("cluster", "--config", "tether.toml", "--data-dir", "data", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"invalid setting config: tether.toml{'' if 'TOML' in complaint else ':'}" in (
        result.stderr
    )
    assert complaint in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""  # nothing started: no Redis, no process
    assert not (tmp_path / "data" / "redis").exists()


def test_config_file_not_in_utf8(tmp_path: Path) -> None:
    """`tether serve --config` rejects a file that is not UTF-8 like any other bad TOML."""
    config = tmp_path / "tether.toml"
    config.write_bytes(b"tcp_port = 7400 # \xe9t\xe9\n")
    result = tether("config", "show", "--config", str(config))
    assert result.returncode == 2
    assert f"tether config: error: {config} is not valid TOML" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("kind", ["directory", "dangling-link"])
def test_cluster_config_that_is_no_file(tmp_path: Path, kind: str) -> None:
    config = tmp_path / "tether.toml"
    if kind == "directory":
        config.mkdir()
    else:
        config.symlink_to(tmp_path / "absent.toml")
    result = tether("cluster", "--config", str(config), "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 2
    assert f"invalid setting config: {config} is not a readable file" in result.stderr
    assert result.stdout == ""


def test_cluster_config_relative_path(tmp_path: Path) -> None:
    """A relative --config names a file in the working folder for every process, a relative
    --data-dir works for the private Redis too, and Ctrl-C right after the ready line stops
    the cluster cleanly."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "tether.toml").write_text('[serve]\nws_path = "/relative"\n')
    tcp_port, ws_port = _free_port_pair(), _free_port_pair()
    process = subprocess.Popen(
        [*TETHER, "cluster", "--config", "conf/tether.toml", "--data-dir", "data",
         "--gateways", "1", "--logic-workers", "1", "--tcp-port", str(tcp_port),
         "--ws-port", str(ws_port), "--log-level", "warning"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        lines: list[str] = []
        while not lines or not lines[-1].startswith("cluster ready"):
            line = process.stdout.readline()
            assert line, f"tether cluster exited early: {process.stderr.read()}"  # type: ignore[union-attr]
            lines.append(line)
        assert f"ws=127.0.0.1:{ws_port}/relative " in "".join(lines)
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=TIMEOUT * 6) == 0
