"""The admin dashboard of an embedded server: admin keys, the page, the overview and user lookup.

Each test starts a real server with its HTTP port on a free port and talks to it over HTTP.
The browser test is test_dashboard_browser.py; the cluster tests are test_dashboard_cluster.py.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import ClientFactory, ServerFactory, add_contacts, next_of
from ops_helpers import close_slow_consumer, http_request, poll_until
from test_config import shown, tether

from tether.client import events as ev
from tether.ops.dashboard import OVERVIEW_MAX_AGE
from tether.ops.gateway_load import COUNTERS, GatewayLoad, LoadSampler
from tether.server import EmbeddedServer

ADMIN_KEY = "admin-key-for-the-tests-01234567"
OTHER_ADMIN_KEY = "second-admin-key-for-the-tests-ab"
API_KEY = "api-key-for-the-tests-0123456789"
BEARER = {"Authorization": f"Bearer {ADMIN_KEY}"}
LOAD_FIELDS = {
    "gateway_id", "sampled_at_ms", "started_at_ms", "interval_s", "connections", "sessions",
    "users", "watched_users", "pending_requests", "loop_lag_ms", "loop_lag_max_ms",
    "cpu_percent", "resident_bytes", "rates", "totals",
}  # fmt: skip


async def admin_server(start_server: ServerFactory, **settings: Any) -> EmbeddedServer:
    return await start_server(
        http_port=0, admin_keys=(ADMIN_KEY, OTHER_ADMIN_KEY), api_keys=(API_KEY,), **settings
    )


async def request(
    server: EmbeddedServer,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: object = None,
) -> tuple[int, Any, dict[str, str]]:
    """Send a request to the HTTP port; return the status, the JSON (or text) and headers."""
    assert server.http is not None and server.http.port is not None
    return await http_request(server.http.port, method, path, headers=headers, body=body)


async def overview(server: EmbeddedServer, headers: dict[str, str] = BEARER) -> Any:
    status, answer, _ = await request(server, "GET", "/admin/api/overview", headers=headers)
    assert status == 200, answer
    return answer


async def overview_until(server: EmbeddedServer, condition: Callable[[Any], bool]) -> Any:
    """Poll the overview until condition holds for it; return that overview."""
    return await poll_until(lambda: overview(server), condition, "the overview")


# Keys and the page.


async def test_dashboard_off_without_admin_key(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tether.http.admin")
    server = await start_server(http_port=0, api_keys=(API_KEY,))
    assert "admin dashboard off: no admin key set" in caplog.text
    for path in ("/admin", "/admin/", "/admin/api/overview", "/admin/static/admin.js"):
        status, answer, _ = await request(server, "GET", path, headers=BEARER)
        assert status == 404, path
        assert answer["error"]["code"] == "not_found"
        assert "--admin-keys" in answer["error"]["message"]
    status, _, _ = await request(server, "GET", "/healthz/live")
    assert status == 200


async def test_page_served_without_key(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tether.http.admin")
    server = await admin_server(start_server)
    assert "admin dashboard on at /admin/ with 2 admin keys" in caplog.text

    status, _, headers = await request(server, "GET", "/admin")
    assert status == 302
    assert headers["Location"] == "/admin/"
    status, page, headers = await request(server, "GET", "/admin/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert "form-action 'none'" in headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert '<script src="/admin/static/admin.js"' in page
    for asset in ("admin.js", "admin.css"):
        status, _, _ = await request(server, "GET", f"/admin/static/{asset}")
        assert status == 200, asset
    status, _, _ = await request(server, "GET", "/admin/static/missing.js")
    assert status == 404


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-admin-key-0123456789"},
        {"Authorization": f"Basic {ADMIN_KEY}"},
        {"X-Admin-Key": ""},
        {"Authorization": f"Bearer {API_KEY}"},  # an API key is no admin key
        {"X-API-Key": ADMIN_KEY},  # the API's header is not the dashboard's
    ],
    ids=["none", "wrong", "basic", "empty", "api-key", "api-header"],
)
async def test_api_rejects_missing_or_wrong_key(
    start_server: ServerFactory, headers: dict[str, str]
) -> None:
    server = await admin_server(start_server)
    for method, path, body in (
        ("GET", "/admin/api/overview", None),
        ("POST", "/admin/api/sessions", {"user_id": "alice"}),
    ):
        status, answer, response_headers = await request(
            server, method, path, headers=headers, body=body
        )
        assert status == 401, path
        assert answer["error"]["code"] == "unauthorized"
        assert response_headers["WWW-Authenticate"] == "Bearer"


async def test_rejected_keys_logged_once_per_interval(
    start_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await admin_server(start_server)
    caplog.set_level(logging.WARNING, logger="tether.http.admin")
    wrong = {"Authorization": "Bearer wrong-admin-key-0123456789"}
    for _ in range(5):
        status, _, _ = await request(server, "GET", "/admin/api/overview", headers=wrong)
        assert status == 401
    warnings = [record for record in caplog.records if "admin key rejected" in record.message]
    assert len(warnings) == 1
    assert "wrong-admin-key" not in caplog.text


async def test_every_admin_key_and_header_accepted(start_server: ServerFactory) -> None:
    server = await admin_server(start_server)
    for headers in (
        BEARER,
        {"Authorization": f"bearer {OTHER_ADMIN_KEY}"},
        {"X-Admin-Key": ADMIN_KEY},
    ):
        status, _, _ = await request(server, "GET", "/admin/api/overview", headers=headers)
        assert status == 200, headers


async def test_api_errors_like_server_api(start_server: ServerFactory) -> None:
    server = await admin_server(start_server)
    status, answer, headers = await request(server, "POST", "/admin/api/overview", headers=BEARER)
    assert status == 405
    assert answer["error"]["code"] == "method_not_allowed"
    assert headers["Allow"] == "GET, HEAD"
    status, answer, _ = await request(server, "GET", "/admin/api/nothing", headers=BEARER)
    assert status == 404
    assert answer["error"]["code"] == "not_found"


# The overview.


async def test_overview_shape_embedded(start_server: ServerFactory) -> None:
    server = await admin_server(start_server)
    assert server.gateway is not None
    answer = await overview(server)

    assert answer["mode"] == "embedded"
    assert answer["served_by_gateway"] == server.gateway.id
    assert answer["truncated"] is False
    assert answer["totals"] == {
        "gateways": 1, "connections": 0, "sessions": 0, "users": 0, "pending_requests": 0,
    }  # fmt: skip
    assert set(answer["rates"]) == set(COUNTERS)
    assert answer["counters"] == dict.fromkeys(COUNTERS, 0)
    [load] = answer["gateways"]
    assert set(load) == LOAD_FIELDS
    assert load["gateway_id"] == server.gateway.id
    assert load["resident_bytes"] > 0
    assert load["sampled_at_ms"] >= load["started_at_ms"]
    assert GatewayLoad.from_json(load).to_json() == load


async def test_overview_counts_traffic(start_server: ServerFactory, connect: ClientFactory) -> None:
    server = await admin_server(start_server, load_report_interval=0.2)
    await add_contacts(server, "alice", "bob")
    alice = await connect(server, "alice")
    await connect(server, "bob", device="phone")
    await connect(server, "bob", device="laptop", transport="ws")
    for number in range(3):
        await alice.send("bob", f"message {number}")

    answer = await overview_until(server, lambda answer: answer["counters"]["messages"] == 3)
    assert answer["totals"]["connections"] == 3
    assert answer["totals"]["sessions"] == 3
    assert answer["totals"]["users"] == 2
    assert answer["counters"]["connections_accepted"] == 3
    assert answer["counters"]["presence_transitions"] == 3  # one online per device
    assert answer["counters"]["deliveries"] == 6  # each message to bob's two devices
    assert answer["counters"]["heartbeats"] >= 0
    assert answer["gateways"][0]["totals"] == answer["counters"]

    await alice.close()
    answer = await overview_until(server, lambda answer: answer["totals"]["users"] == 1)
    assert answer["totals"]["connections"] == 2
    assert answer["counters"]["presence_transitions"] == 4


async def test_overview_counts_slow_consumer(start_server: ServerFactory) -> None:
    server = await admin_server(start_server, load_report_interval=0.2, max_outgoing_bytes=65536)
    await close_slow_consumer(server)
    answer = await overview_until(
        server, lambda answer: answer["counters"]["slow_consumer_disconnects"] == 1
    )
    assert answer["gateways"][0]["totals"]["slow_consumer_disconnects"] == 1


async def test_overview_reused_within_max_age(start_server: ServerFactory) -> None:
    server = await admin_server(start_server, load_report_interval=0.1)
    first = await overview(server)
    second = await overview(server)
    assert second["time_ms"] == first["time_ms"], "read again within the max age"
    await asyncio.sleep(OVERVIEW_MAX_AGE + 0.1)
    third = await overview(server)
    assert third["time_ms"] > first["time_ms"]
    assert third["gateways"][0]["sampled_at_ms"] > first["gateways"][0]["sampled_at_ms"]


# Rates from counter deltas, with a clock the test moves.


async def test_sampler_rates_from_counter_deltas(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await start_server()
    assert server.gateway is not None
    await add_contacts(server, "alice", "bob")
    clock = itertools.count(start=100.0, step=2.0)  # every sample is 2 s after the last
    sampler = LoadSampler(server.gateway, server.loop_lag, clock=lambda: next(clock))
    first = sampler.sample()
    assert first.interval_s == 0
    assert first.rates == dict.fromkeys(COUNTERS, 0.0)

    alice = await connect(server, "alice")
    bob = await connect(server, "bob")
    for number in range(4):
        await alice.send("bob", f"message {number}")
    for _ in range(4):
        await next_of(bob, ev.Message)
    second = sampler.sample()
    assert second.interval_s == 2.0
    assert second.rates["connections_accepted"] == 1.0  # 2 connections in 2 s
    assert second.rates["presence_transitions"] == 1.0
    assert second.rates["messages"] == 2.0
    assert second.rates["deliveries"] == 2.0
    assert second.connections == 2
    assert second.users == 2
    assert second.cpu_percent >= 0

    third = sampler.sample()
    assert third.rates["messages"] == 0.0
    assert third.totals["messages"] == 4


def test_gateway_load_from_json_checks_fields() -> None:
    minimal = GatewayLoad.from_json({"gateway_id": "gw1", "sampled_at_ms": 5})
    assert minimal.connections == 0
    assert minimal.rates == dict.fromkeys(COUNTERS, 0.0)
    newer = GatewayLoad.from_json(
        {"gateway_id": "gw1", "sampled_at_ms": 5, "rates": {"messages": 2.5, "future": 1}}
    )
    assert newer.rates["messages"] == 2.5
    assert "future" not in newer.rates
    for invalid in (
        [],
        {"sampled_at_ms": 5},
        {"gateway_id": "gw1"},
        {"gateway_id": "gw1", "sampled_at_ms": 5, "connections": "3"},
        {"gateway_id": "gw1", "sampled_at_ms": 5, "connections": 1.5},
        {"gateway_id": "gw1", "sampled_at_ms": 5, "connections": True},
        {"gateway_id": "gw1", "sampled_at_ms": 5, "rates": {"messages": float("nan")}},
    ):
        with pytest.raises(ValueError):
            GatewayLoad.from_json(invalid)


# User lookup.


async def test_user_lookup_shows_presence_and_devices(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    server = await admin_server(start_server)
    assert server.gateway is not None
    path = "/admin/api/sessions"
    body = {"user_id": "alice"}
    status, answer, _ = await request(server, "POST", path, headers=BEARER, body=body)
    assert status == 200
    assert answer == {
        "user_id": "alice", "status": "offline", "last_seen_ms": 0, "version": 0, "devices": [],
    }  # fmt: skip

    await connect(server, "alice", device="phone")
    await connect(server, "alice", device="laptop", status="away")
    status, answer, _ = await request(server, "POST", path, headers=BEARER, body=body)
    assert status == 200
    assert answer["status"] == "online"
    devices = {device["device_id"]: device for device in answer["devices"]}
    assert set(devices) == {"phone", "laptop"}
    assert devices["phone"]["gateway_id"] == server.gateway.id
    assert devices["phone"]["activity"] == "active"
    assert devices["laptop"]["activity"] == "idle"

    # The server API's sessions route returns the same body for the same user.
    api_status, api_answer, _ = await request(
        server,
        "POST",
        "/api/v1/sessions",
        headers={"Authorization": f"Bearer {API_KEY}"},
        body={"user_id": "alice"},
    )
    assert api_status == 200
    assert api_answer == answer


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_id": "al ice"}, "user_id"),
        ({"user_id": "x" * 65}, "user_id"),
        ({"user_id": 7}, "user_id"),
        ({}, "user_id"),
        ({"user_id": "alice", "extra": 1}, "extra"),
        (["alice"], None),
    ],
    ids=["space", "too-long", "number", "missing", "unknown-field", "array"],
)
async def test_user_lookup_rejects_bad_body(
    start_server: ServerFactory, body: object, field: str | None
) -> None:
    server = await admin_server(start_server)
    status, answer, _ = await request(
        server, "POST", "/admin/api/sessions", headers=BEARER, body=body
    )
    assert status == 400
    assert answer["error"]["code"] == "bad_request"
    assert answer["error"].get("field") == field


# Settings.


def test_config_show_masks_admin_keys(tmp_path: Path) -> None:
    result = tether("config", "show", "--admin-keys", ADMIN_KEY)
    assert result.returncode == 0, result.stderr
    assert ADMIN_KEY not in result.stdout
    assert shown(result.stdout)["admin_keys"] == ("***", "flag")

    result = tether("config", "show", "logic", "--redis", "redis://127.0.0.1:1/0",
                    env={"TETHER_ADMIN_KEYS": ADMIN_KEY})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert ADMIN_KEY not in result.stdout
    assert shown(result.stdout)["admin_keys"] == ("***", "env TETHER_ADMIN_KEYS")


def test_short_admin_key_rejected(tmp_path: Path) -> None:
    result = tether("config", "show", "--admin-keys", "short-key")
    assert result.returncode == 2
    assert "admin key 1 is 9 characters long; a key needs at least 16" in result.stderr
    assert "short-key" not in result.stderr

    key_file = tmp_path / "admin-keys"
    key_file.write_text(f"# operators\n{ADMIN_KEY}\ntiny\n")
    result = tether("serve", "--data-dir", str(tmp_path), "--tcp-port", "0", "--ws-port", "0",
                    "--http-port", "0", "--admin-keys-file", str(key_file))  # fmt: skip
    assert result.returncode == 2
    assert f"admin key in {key_file} line 3 is 4 characters long" in result.stderr
    assert "tiny" not in result.stderr.replace(str(key_file), "")
