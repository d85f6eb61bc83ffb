"""The demo messenger's HTTP routes, and the settings that keep it out of production.

The page itself is tested in a real browser by test_browser.py.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from conftest import SECRET, TIMEOUT, test_gateway_config

from tether.cli.main import _build_parser, main
from tether.cli.serve import DEMO_HTTP_PORT, apply_demo_defaults, serve_config
from tether.cli.settings import resolve
from tether.demo import DEMO_GROUP, DEMO_USERS, TOKEN_TTL
from tether.keys import KeyConfig
from tether.logic import default_database, open_store
from tether.server import EmbeddedServer, ServerConfig, load_or_create_secret


def demo_config(data_dir: Path, **overrides: Any) -> ServerConfig:
    settings: dict[str, Any] = {
        "data_dir": data_dir,
        "gateway": test_gateway_config(),
        "http_port": 0,
        "demo": True,
    }
    settings.update(overrides)
    return ServerConfig(**settings)


@pytest.fixture
async def demo_server(tmp_path: Path) -> AsyncIterator[EmbeddedServer]:
    server = EmbeddedServer(demo_config(tmp_path))
    await server.start()
    yield server
    await server.close()


async def request(
    server: EmbeddedServer, method: str, path: str, body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    assert server.http is not None and server.http.port is not None
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    url = f"http://127.0.0.1:{server.http.port}{path}"
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.request(method, url, data=body, allow_redirects=False) as response,
    ):
        return response.status, dict(response.headers), await response.read()


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"secret": SECRET}, "development secret"),
        ({"keys": KeyConfig(secrets=(SECRET,))}, "development secret"),
        ({"redis_url": "redis://127.0.0.1:1/0", "run_logic": True}, "embedded"),
        ({"http_port": None}, "HTTP port"),
    ],
    ids=["secret", "key-secrets", "redis", "no-http-port"],
)
def test_demo_refused_outside_development(
    tmp_path: Path, overrides: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        EmbeddedServer(demo_config(tmp_path, **overrides))


def serve_arguments(*flags: str) -> argparse.Namespace:
    """Parse `tether serve` flags as the command does, defaults filled in."""
    arguments = _build_parser().parse_args(["serve", *flags])
    apply_demo_defaults(arguments, resolve(arguments))
    return arguments


def test_demo_default_http_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("TETHER_DEMO", "TETHER_HTTP_PORT", "TETHER_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    config = serve_config(serve_arguments("--demo", "true"))
    assert (config.demo, config.http_port) == (True, DEMO_HTTP_PORT)
    config = serve_config(serve_arguments("--demo", "true", "--http-port", "9000"))
    assert config.http_port == 9000
    config = serve_config(serve_arguments())
    assert (config.demo, config.http_port) == (False, None)


def test_demo_group_count_threshold_default(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("TETHER_DEMO", "TETHER_GROUP_COUNT_THRESHOLD", "TETHER_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    assert serve_config(serve_arguments()).gateway.groups.count_threshold == 100
    assert serve_config(serve_arguments("--demo", "true")).gateway.groups.count_threshold == 0
    explicit = serve_arguments("--demo", "true", "--group-count-threshold", "7")
    assert serve_config(explicit).gateway.groups.count_threshold == 7
    monkeypatch.setenv("TETHER_GROUP_COUNT_THRESHOLD", "5")
    assert serve_config(serve_arguments("--demo", "true")).gateway.groups.count_threshold == 5
    monkeypatch.delenv("TETHER_GROUP_COUNT_THRESHOLD")
    # The command itself applies it, and `tether config show` shows where the value came from.
    assert main(["config", "show", "serve", "--demo", "true"]) == 0
    assert "group_count_threshold = 0  # default with --demo true" in capsys.readouterr().out


async def test_demo_is_off_by_default(tmp_path: Path) -> None:
    server = EmbeddedServer(demo_config(tmp_path, demo=False))
    await server.start()
    try:
        status, _headers, _body = await request(server, "GET", "/demo/")
        assert status == 404
        status, _headers, _body = await request(server, "POST", "/demo/token", b'{"user":"bob"}')
        assert status == 404
    finally:
        await server.close()


async def test_page_client_and_config_are_served(demo_server: EmbeddedServer) -> None:
    status, headers, body = await request(demo_server, "GET", "/demo")
    assert status == 302
    assert headers["Location"] == "/demo/"
    status, headers, body = await request(demo_server, "GET", "/demo/")
    assert status == 200
    assert b'<script type="module" src="/demo/static/demo.js">' in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/demo/static/demo.js", "/demo/static/demo.css", "/demo/client/index.js"):
        status, headers, body = await request(demo_server, "GET", path)
        assert status == 200, path
    assert "javascript" in headers["Content-Type"]
    assert b"export { jsonCodec }" in body
    status, _headers, body = await request(demo_server, "GET", "/demo/client/../../secret")
    assert status in (403, 404)
    status, _headers, body = await request(demo_server, "GET", "/demo/config")
    assert status == 200
    config = json.loads(body)
    assert config["wsPort"] == demo_server.ws_port
    assert config["users"] == list(DEMO_USERS)
    assert config["group"] == DEMO_GROUP
    assert config["groupCountThreshold"] == demo_server.config.gateway.groups.count_threshold


async def test_tokens_only_for_demo_users(demo_server: EmbeddedServer) -> None:
    status, _headers, body = await request(demo_server, "POST", "/demo/token", b'{"user":"bob"}')
    assert status == 200
    answer = json.loads(body)
    secret = load_or_create_secret(demo_server.config.data_dir)
    claims = jwt.decode(answer["token"], secret, algorithms=["HS256"])
    assert claims["sub"] == "bob"
    assert claims["exp"] - claims["iat"] == TOKEN_TTL
    for bad in (b'{"user":"mallory"}', b"[]", b"{", b'{"user": ["bob"]}', b"x" * 2000):
        status, _headers, body = await request(demo_server, "POST", "/demo/token", bad)
        assert status in (400, 413), bad[:20]
        assert b"error" in body


async def test_chunked_deep_body_rejected(demo_server: EmbeddedServer) -> None:
    """A chunked body states no length: a deeply nested one gets 413, not a server error."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"[" * 1000

    assert demo_server.http is not None and demo_server.http.port is not None
    url = f"http://127.0.0.1:{demo_server.http.port}/demo/token"
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session,
        session.post(url, data=chunks()) as response,
    ):
        assert response.status == 413
        assert b"too large" in await response.read()


async def test_demo_users_become_contacts_and_group_members(demo_server: EmbeddedServer) -> None:
    status, _headers, _body = await request(demo_server, "POST", "/demo/token", b'{"user":"dave"}')
    assert status == 200
    store = await open_store(default_database(demo_server.config.data_dir))
    try:
        for user in DEMO_USERS:
            assert sorted(await store.contacts(user)) == sorted(set(DEMO_USERS) - {user})
            groups = await store.user_groups(user)
            assert [(group.group_id, group.owner) for group in groups] == [
                (DEMO_GROUP, DEMO_USERS[0])
            ]
        assert sorted(await store.group_members(DEMO_GROUP)) == sorted(DEMO_USERS)
    finally:
        await store.close()


async def test_demo_setup_repeats_on_the_same_data_folder(tmp_path: Path) -> None:
    """A second run on the same data folder creates the group again without an error."""
    for _run in range(2):
        server = EmbeddedServer(demo_config(tmp_path))
        await server.start()
        try:
            status, _headers, body = await request(server, "POST", "/demo/token", b'{"user":"bob"}')
            assert status == 200, body
        finally:
            await server.close()
    store = await open_store(default_database(tmp_path))
    try:
        [group] = await store.user_groups("bob")
        assert group.member_count == len(DEMO_USERS)
    finally:
        await store.close()
