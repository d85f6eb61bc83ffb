"""The server HTTP API of an embedded server: keys, every route, bad bodies and the Python SDK.

Each test starts a real server with its HTTP port on a free port and talks to it over HTTP,
through `tether.api_client.ApiClient` or raw aiohttp requests for input the SDK never sends.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import (
    TIMEOUT,
    ClientFactory,
    ServerFactory,
    add_contacts,
    drain,
    next_of,
    presence_of,
)
from ops_helpers import http_get
from test_config import shown, tether

from tether.api_client import ApiClient, ApiError
from tether.client import events as ev
from tether.ops.api import API_PREFIX, MAX_PRESENCE_USERS, SYSTEM_SENDER
from tether.ops.api_errors import ApiErrorCode, error_table
from tether.ops.http import MAX_REQUEST_BYTES
from tether.protocol.codes import Code
from tether.server import EmbeddedServer

KEY = "api-key-for-the-tests-0123456789"
OTHER_KEY = "second-api-key-for-the-tests-abc"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "http-api.md"


async def api_server(start_server: ServerFactory, **settings: Any) -> EmbeddedServer:
    return await start_server(http_port=0, api_keys=(KEY, OTHER_KEY), **settings)


def base_url(server: EmbeddedServer) -> str:
    assert server.http is not None and server.http.port is not None
    return f"http://127.0.0.1:{server.http.port}"


async def post(
    server: EmbeddedServer,
    route: str,
    body: object = None,
    *,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> tuple[int, Any]:
    """POST to an API route; return the status and the decoded JSON answer (None if empty)."""
    if headers is None:
        headers = {"Authorization": f"Bearer {KEY}"}
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(
            f"{base_url(server)}{API_PREFIX}/{route}",
            json=body if data is None else None,
            data=data,
            headers=headers,
        ) as response,
    ):
        text = await response.text()
        return response.status, json.loads(text) if text else None


def error_of(answer: Any) -> tuple[str, str | None]:
    return answer["error"]["code"], answer["error"].get("field")


# Keys.


async def test_api_off_without_keys(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="tether.http.api"):
        server = await start_server(http_port=0)
    assert "server API off" in caplog.text

    status, answer = await post(server, "presence", {"user_ids": ["alice"]})
    assert status == 404
    assert error_of(answer) == ("api_disabled", None)
    assert (await http_get(server.http.port, f"{API_PREFIX}/openapi.json"))[0] == 404  # type: ignore[union-attr]
    assert (await http_get(server.http.port, "/healthz/ready"))[0] == 200  # type: ignore[union-attr]


async def test_missing_or_wrong_key_rejected(start_server: ServerFactory) -> None:
    server = await api_server(start_server)
    body = {"user_ids": ["alice"]}
    for headers in (
        {},
        {"Authorization": "Bearer not-a-configured-key-at-all"},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": f"Bearer {KEY}x"},
        {"X-API-Key": KEY[:-1]},
    ):
        status, answer = await post(server, "presence", body, headers=headers)
        assert status == 401, headers
        assert error_of(answer) == ("unauthorized", None)

    for headers in (
        {"Authorization": f"Bearer {KEY}"},
        {"authorization": f"bearer {OTHER_KEY}"},
        {"X-API-Key": OTHER_KEY},
    ):
        status, _answer = await post(server, "presence", body, headers=headers)
        assert status == 200, headers
    # The key is checked before the route, so a caller without one learns nothing of routes.
    status, answer = await post(server, "no-such-route", {}, headers={})
    assert status == 401
    status, answer = await post(server, "no-such-route", {})
    assert (status, error_of(answer)) == (404, ("not_found", None))


async def test_openapi_document_served_without_key(start_server: ServerFactory) -> None:
    server = await api_server(start_server)
    status, text = await http_get(server.http.port, f"{API_PREFIX}/openapi.json")  # type: ignore[union-attr]
    assert status == 200
    document = json.loads(text)
    shipped = Path(__file__).resolve().parent.parent / "src/tether/ops/openapi.json"
    assert document == json.loads(shipped.read_text())

    routes = {
        resource.canonical
        for resource in server.http.app.router.resources()  # type: ignore[union-attr]
        if resource.canonical.startswith(API_PREFIX)
    }
    assert routes == set(document["paths"])


# Publish.


async def test_publish_reaches_user_and_is_stored(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await api_server(start_server)
    alice = await connect(server, "alice")
    async with ApiClient(base_url(server), KEY) as api:
        result = await api.publish("alice", "your order shipped", client_message_id="order-1")
        message = await next_of(alice, ev.Message)
        assert isinstance(message, ev.Message)
        assert message.body == b"your order shipped"
        assert message.sender == SYSTEM_SENDER
        assert message.sender_device == "api"
        assert message.message_id == result.message_id
        assert message.sequence == result.sequence == 1
        assert result.conversation_id == f"d:alice:{SYSTEM_SENDER}"
        assert result.client_message_id == "order-1"

        # A retry with the same id stores and delivers nothing new.
        again = await api.publish("alice", "your order shipped", client_message_id="order-1")
        assert again == result
        assert not [e for e in await drain(alice) if isinstance(e, ev.Message)]

        binary = await api.publish("alice", b"\x00\xff\x10")
        message = await next_of(alice, ev.Message)
        assert isinstance(message, ev.Message)
        assert message.body == b"\x00\xff\x10"
        assert binary.sequence == 2
        assert binary.client_message_id.startswith("api-")


async def test_publish_as_user_copies_sender_devices(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await api_server(start_server)
    alice = await connect(server, "alice")
    bob = await connect(server, "bob")  # not a contact of alice: the backend vouches
    async with ApiClient(base_url(server), KEY) as api:
        result = await api.publish("alice", "hello from bob", sender="bob")
    for client in (alice, bob):
        message = await next_of(client, ev.Message)
        assert isinstance(message, ev.Message)
        assert message.sender == "bob"
        assert message.message_id == result.message_id
    assert result.conversation_id == "d:alice:bob"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"body": "no user"}, "user_id"),
        ({"user_id": "", "body": "x"}, "user_id"),
        ({"user_id": "has space", "body": "x"}, "user_id"),
        ({"user_id": "a" * 65, "body": "x"}, "user_id"),
        ({"user_id": 7, "body": "x"}, "user_id"),
        ({"user_id": "alice"}, "body"),
        ({"user_id": "alice", "body": "x", "body_base64": "eA=="}, "body"),
        ({"user_id": "alice", "body_base64": "not base64!"}, "body_base64"),
        ({"user_id": "alice", "body": "x", "sender": "alice"}, "sender"),
        ({"user_id": "alice", "body": "x", "sender": None}, "sender"),
        ({"user_id": "alice", "body": "x", "client_message_id": ""}, "client_message_id"),
        ({"user_id": "alice", "body": "x", "client_message_id": "a\x00b"}, "client_message_id"),
        ({"user_id": "alice", "body": "x", "extra": 1}, "extra"),
    ],
)
async def test_publish_rejects_bad_fields(
    start_server: ServerFactory, body: dict[str, object], field: str
) -> None:
    server = await api_server(start_server)
    status, answer = await post(server, "publish", body)
    assert status == 400
    assert error_of(answer) == ("bad_request", field)


async def test_bad_bodies_get_documented_errors(start_server: ServerFactory) -> None:
    server = await api_server(start_server)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    cases: list[tuple[bytes, dict[str, str], int, str]] = [
        (b"{not json", headers, 400, "bad_request"),
        (b"[1, 2]", headers, 400, "bad_request"),
        (b'{"user_id": "\\ud800", "body": "x"}', headers, 400, "bad_request"),
        (b'{"user_id": "alice"}', {**headers, "Content-Type": "text/plain"}, 415,
         "unsupported_media_type"),
        (b" " * (MAX_REQUEST_BYTES + 1), headers, 413, "body_too_large"),
    ]  # fmt: skip
    for data, request_headers, expected_status, code in cases:
        status, answer = await post(server, "publish", data=data, headers=request_headers)
        assert (status, answer["error"]["code"]) == (expected_status, code), data[:40]

    limit = server.config.gateway.max_body_bytes
    status, answer = await post(server, "publish", {"user_id": "alice", "body": "x" * (limit + 1)})
    assert status == 413
    assert error_of(answer) == ("body_too_large", "body")

    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"{base_url(server)}{API_PREFIX}/publish", headers=headers) as response,
    ):
        assert response.status == 405
        assert response.headers["Allow"] == "POST"
        assert (await response.json())["error"]["code"] == "method_not_allowed"


# Presence and sessions.


async def test_presence_of_many_users(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await api_server(start_server)
    await connect(server, "alice")
    await connect(server, "carol", status="busy")
    async with ApiClient(base_url(server), KEY) as api:
        users = await api.presence(["alice", "bob", "carol", "alice"])
    assert list(users) == ["alice", "bob", "carol"]
    assert users["alice"].status == "online"
    assert users["alice"].last_seen_ms > 0
    assert users["bob"].status == "offline"
    assert users["bob"].last_seen_ms == 0
    assert users["carol"].status == "busy"


async def test_presence_query_limits(start_server: ServerFactory) -> None:
    server = await api_server(start_server)
    many = [f"user{index}" for index in range(MAX_PRESENCE_USERS)]
    status, answer = await post(server, "presence", {"user_ids": many})
    assert status == 200
    assert len(answer["users"]) == MAX_PRESENCE_USERS

    for body, field in (
        ({"user_ids": [*many, "one-more"]}, "user_ids"),
        ({"user_ids": []}, "user_ids"),
        ({"user_ids": "alice"}, "user_ids"),
        ({"user_ids": ["alice", "bad id"]}, "user_ids[1]"),
        ({}, "user_ids"),
    ):
        status, answer = await post(server, "presence", body)
        assert status == 400, body
        assert error_of(answer) == ("bad_request", field)


async def test_sessions_list_devices(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await api_server(start_server)
    await connect(server, "alice", device="phone")
    await connect(server, "alice", device="laptop", status="away")
    assert server.gateway is not None
    connections = server.gateway.sessions["alice"]
    async with ApiClient(base_url(server), KEY) as api:
        sessions = await api.sessions("alice")
        nobody = await api.sessions("nobody")
    assert sessions.presence.status == "online"
    assert [device.device_id for device in sessions.devices] == ["laptop", "phone"]
    laptop, phone = sessions.devices
    assert laptop.activity == "idle"
    assert phone.activity == "active"
    assert phone.gateway_id == server.gateway.id
    assert phone.connection_id == connections["phone"].id
    assert nobody.devices == []
    assert nobody.presence.status == "offline"


# Disconnect.


async def test_disconnect_one_device_then_user(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await api_server(start_server)
    phone = await connect(server, "alice", device="phone")
    laptop = await connect(server, "alice", device="laptop")
    async with ApiClient(base_url(server), KEY) as api:
        await api.disconnect("alice", device_id="phone", reason="lost phone")
        closed = await next_of(phone, ev.Disconnected)
        assert isinstance(closed, ev.Disconnected)
        assert closed.code == Code.FORBIDDEN
        assert closed.reason == "lost phone"
        assert not closed.reconnecting
        assert not [e for e in await drain(laptop) if isinstance(e, ev.Disconnected)]

        await api.disconnect("alice", code=Code.SHUTDOWN)
        closed = await next_of(laptop, ev.Disconnected)
        assert isinstance(closed, ev.Disconnected)
        assert closed.code == Code.SHUTDOWN
        assert (await api.sessions("alice")).devices == []
        # Nobody connected: accepted all the same, since another gateway may hold the user.
        await api.disconnect("nobody")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_id": "alice", "code": 1}, "code"),
        ({"user_id": "alice", "code": 4999}, "code"),
        ({"user_id": "alice", "code": "4506"}, "code"),
        ({"user_id": "alice", "code": True}, "code"),
        ({"user_id": "alice", "device_id": ""}, "device_id"),
        ({"user_id": "alice", "reason": "r" * 201}, "reason"),
        ({"device_id": "phone"}, "user_id"),
    ],
)
async def test_disconnect_rejects_bad_fields(
    start_server: ServerFactory, body: dict[str, object], field: str
) -> None:
    server = await api_server(start_server)
    status, answer = await post(server, "disconnect", body)
    assert status == 400
    assert error_of(answer) == ("bad_request", field)


# Contacts.


async def test_contacts_add_and_remove(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await api_server(start_server)
    alice = await connect(server, "alice")
    await connect(server, "bob")
    async with ApiClient(base_url(server), KEY) as api:
        await api.add_contact("alice", "bob")
        changed = await next_of(alice, ev.ContactsChanged)
        assert isinstance(changed, ev.ContactsChanged)
        assert changed.added == ["bob"]
        assert (await presence_of(alice, "bob")).status == "online"
        await api.add_contact("alice", "bob")  # already contacts: nothing changes, no error

        await api.remove_contact("bob", "alice")
        changed = await next_of(alice, ev.ContactsChanged)
        assert isinstance(changed, ev.ContactsChanged)
        assert changed.removed == ["bob"]

        with pytest.raises(ApiError) as raised:
            await api.add_contact("alice", "alice")
        assert (raised.value.status, raised.value.code) == (400, "bad_request")
        assert raised.value.field == "contact_id"


async def test_contacts_reach_send_rules(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await api_server(start_server)
    alice = await connect(server, "alice")
    async with ApiClient(base_url(server), KEY) as api:
        await api.add_contact("alice", "bob")
    ack = await alice.send("bob", "now allowed")
    assert ack.sequence == 1
    await add_contacts(server, "alice", "carol")  # the control socket still works beside the API


# SDK and errors.


async def test_sdk_reports_unreachable_server(start_server: ServerFactory) -> None:
    server = await api_server(start_server)
    url = base_url(server)
    await server.close()
    async with ApiClient(url, KEY, timeout=TIMEOUT) as api:
        with pytest.raises(ApiError) as raised:
            await api.presence(["alice"])
    assert raised.value.status == 0
    assert raised.value.code == "unavailable"
    assert raised.value.retryable


async def test_sdk_raises_api_error_for_wrong_key(start_server: ServerFactory) -> None:
    server = await api_server(start_server)
    async with ApiClient(base_url(server), "wrong-key-of-enough-length") as api:
        with pytest.raises(ApiError) as raised:
            await api.sessions("alice")
    assert (raised.value.status, raised.value.code) == (401, "unauthorized")
    assert not raised.value.retryable


def test_error_codes_documented() -> None:
    text = DOCS.read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| (\d{3}) \|", text, flags=re.MULTILINE))
    assert rows == {info.code.value: str(info.status) for info in error_table()}
    assert {code.value for code in ApiErrorCode} == set(rows)


# Settings.


def test_api_keys_masked_in_config_show(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# one key per line\nfile-key-0123456789abcdef\n")
    result = tether(
        "config", "show", "--api-keys-file", str(key_file),
        env={"TETHER_API_KEYS": "env-key-0123456789abcdef,env-key-two-0123456789"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "env-key" not in result.stdout
    settings = shown(result.stdout)
    assert settings["api_keys"] == ("***", "env TETHER_API_KEYS")
    assert settings["api_keys_file"] == (str(key_file), "flag")


def test_short_api_key_rejected(tmp_path: Path) -> None:
    result = tether("config", "show", "--api-keys", "short")
    assert result.returncode == 2
    assert "api-keys" in result.stderr or "api_keys" in result.stderr
    assert "at least 16" in result.stderr
    assert "short" not in result.stderr.replace("--api-keys", "")

    key_file = tmp_path / "keys"
    key_file.write_text("tiny\n")
    result = tether("config", "show", "--api-keys-file", str(key_file))
    assert result.returncode == 2
    assert f"{key_file} line 1" in result.stderr
