"""Connect and message hooks over HTTP, against a small aiohttp backend started by each test.

The server runs embedded with `hooks` set, so its logic is `tether.hooks.HookLogic`, and real
clients connect and send over TCP. The backend records every call and answers as each test
tells it to: allow, reject, fail with 500, stall past the timeout, or return a bad body.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import SECRET, TIMEOUT, next_of, test_gateway_config

from tether.api_client import ApiClient, ApiError
from tether.auth import issue_token
from tether.client import Client
from tether.client import events as ev
from tether.hooks import HookConfig
from tether.protocol.codes import Code
from tether.protocol.errors import ConnectionClosed, RequestError
from tether.server import ServerConfig, TetherServer

HOOK_KEY = "hook-key-for-the-tests"
API_KEY = "api-key-for-the-hook-tests-0123"

Answer = Callable[[dict[str, Any]], Awaitable[web.Response]]


def reply(body: object, status: int = 200) -> Answer:
    async def answer(request: dict[str, Any]) -> web.Response:
        return web.json_response(body, status=status)

    return answer


async def allow_everyone(request: dict[str, Any]) -> web.Response:
    contacts = {"alice": ["bob"], "bob": ["alice"]}.get(request["user_id"], [])
    return web.json_response({"allow": True, "contacts": contacts})


class Backend:
    """An HTTP backend with connect and message hooks whose answers a test sets."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.headers: list[str] = []
        self.answers: dict[str, Answer] = {
            "connect": allow_everyone,
            "message": reply({"accept": True}),
        }
        self.port = 0
        self._runner: web.AppRunner | None = None

    def calls_to(self, hook: str) -> list[dict[str, Any]]:
        return [request for name, request in self.calls if name == hook]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks/{hook}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        hook = request.match_info["hook"]
        body = await request.json()
        self.calls.append((hook, body))
        self.headers.append(request.headers.get("Authorization", ""))
        return await self.answers[hook](body)


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    running = Backend()
    await running.start()
    yield running
    await running.close()


ServerStarter = Callable[..., Awaitable[TetherServer]]


@pytest.fixture
async def start_hook_server(tmp_path: Path, backend: Backend) -> AsyncIterator[ServerStarter]:
    servers: list[TetherServer] = []

    async def start(**hooks: Any) -> TetherServer:
        settings: dict[str, Any] = {"timeout": 1.0, "retries": 0, "retry_delay": 0.01}
        settings.update(hooks)
        config = ServerConfig(
            data_dir=tmp_path / f"server{len(servers)}",
            secret=SECRET,
            gateway=test_gateway_config(),
            hooks=HookConfig(
                url=f"http://127.0.0.1:{backend.port}/hooks", api_key=HOOK_KEY, **settings
            ),
            http_port=0,
            api_keys=(API_KEY,),
        )
        server = TetherServer(config)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


async def connect(
    clients: list[Client], server: TetherServer, user: str, device: str = "phone"
) -> Client:
    client = Client(
        f"tcp://127.0.0.1:{server.tcp_port}",
        issue_token(SECRET, user),
        device,
        connect_timeout=TIMEOUT,
        ack_timeout=TIMEOUT,
        reconnect=False,  # so a retryable close code reaches the test as ConnectionClosed
    )
    clients.append(client)
    await client.connect()
    return client


async def test_connect_hook_allows_with_contacts(
    start_hook_server: ServerStarter, backend: Backend, clients: list[Client]
) -> None:
    server = await start_hook_server()
    await connect(clients, server, "bob")
    alice = await connect(clients, server, "alice", device="laptop")
    snapshot = await next_of(alice, ev.PresenceSnapshot)
    assert isinstance(snapshot, ev.PresenceSnapshot)
    assert snapshot.contacts["bob"].status == "online"

    request = backend.calls_to("connect")[-1]
    assert request == {"user_id": "alice", "device_id": "laptop", "platform": "other"}
    assert set(backend.headers) == {f"Bearer {HOOK_KEY}"}


async def test_connect_hook_rejects_with_code(
    start_hook_server: ServerStarter, backend: Backend, clients: list[Client]
) -> None:
    backend.answers["connect"] = reply({"allow": False, "code": 4506, "reason": "banned"})
    server = await start_hook_server()
    with pytest.raises(ConnectionClosed) as closed:
        await connect(clients, server, "mallory")
    assert closed.value.code == Code.FORBIDDEN
    assert closed.value.reason == "banned"


async def test_message_hook_receives_and_delivers(
    start_hook_server: ServerStarter, backend: Backend, clients: list[Client]
) -> None:
    backend.answers["message"] = reply(
        {"accept": True, "message_id": 77, "conversation_id": "c-ab", "sequence": 1,
         "deliver": True}
    )  # fmt: skip
    server = await start_hook_server()
    bob = await connect(clients, server, "bob")
    alice = await connect(clients, server, "alice")

    ack = await alice.send("bob", b"\x00hello", client_message_id="m-1")
    assert (ack.message_id, ack.conversation_id, ack.sequence) == (77, "c-ab", 1)
    assert ack.timestamp_ms > 0
    message = await next_of(bob, ev.Message)
    assert isinstance(message, ev.Message)
    assert (message.message_id, message.sender, message.body) == (77, "alice", b"\x00hello")

    request = backend.calls_to("message")[-1]
    assert request == {
        "sender": "alice",
        "sender_device": "phone",
        "recipient": "bob",
        "client_message_id": "m-1",
        "body_base64": base64.b64encode(b"\x00hello").decode(),
        "from_api": False,
    }


async def test_message_hook_rejection_reaches_client(
    start_hook_server: ServerStarter, backend: Backend, clients: list[Client]
) -> None:
    backend.answers["message"] = reply({"accept": False, "code": 2, "message": "not friends"})
    server = await start_hook_server()
    alice = await connect(clients, server, "alice")
    with pytest.raises(RequestError) as rejected:
        await alice.send("carol", "hi")
    assert (rejected.value.code, rejected.value.message) == (Code.NOT_A_CONTACT, "not friends")


async def test_server_api_publish_goes_to_hook(
    start_hook_server: ServerStarter, backend: Backend
) -> None:
    backend.answers["message"] = reply({"accept": True, "message_id": 5, "sequence": 9})
    server = await start_hook_server()
    assert server.http is not None
    async with ApiClient(f"http://127.0.0.1:{server.http.port}", API_KEY) as api:
        result = await api.publish("alice", "from the backend", client_message_id="p-1")
    assert (result.message_id, result.sequence) == (5, 9)
    request = backend.calls_to("message")[-1]
    assert request["from_api"] is True
    assert request["sender"] == "system"


async def test_server_api_groups_with_hooks(
    start_hook_server: ServerStarter, backend: Backend
) -> None:
    backend.answers["message"] = reply({"accept": True, "message_id": 6, "sequence": 2})
    server = await start_hook_server()
    assert server.http is not None
    async with ApiClient(f"http://127.0.0.1:{server.http.port}", API_KEY) as api:
        result = await api.publish_to_group("team", "to the group", client_message_id="g-1")
        assert (result.message_id, result.sequence) == (6, 2)
        request = backend.calls_to("message")[-1]
        assert (request["recipient"], request["from_api"]) == ("g:team", True)

        # Groups live in the backend: the logic answers at once instead of timing out.
        for call in (
            lambda: api.create_group("team", "alice"),
            lambda: api.group_members("team"),
            lambda: api.group_online(["team"]),
        ):
            with pytest.raises(ApiError) as raised:
                await call()
            assert (raised.value.status, raised.value.code) == (400, "bad_request")
            assert "HTTP hooks" in raised.value.message


async def test_stalled_hook_retried_then_unavailable(
    start_hook_server: ServerStarter, backend: Backend, clients: list[Client]
) -> None:
    async def stall(request: dict[str, Any]) -> web.Response:
        await asyncio.sleep(1.0)
        return web.json_response({"accept": True})

    backend.answers["message"] = stall
    server = await start_hook_server(timeout=0.2, retries=1)
    alice = await connect(clients, server, "alice")
    with pytest.raises(RequestError) as failed:
        await alice.send("bob", "hi")
    assert failed.value.code == Code.UNAVAILABLE
    assert "after 2 attempts" in failed.value.message
    assert len(backend.calls_to("message")) == 2


async def test_breaker_opens_then_recovers(
    start_hook_server: ServerStarter, backend: Backend, clients: list[Client]
) -> None:
    backend.answers["connect"] = reply({"error": "down"}, status=500)
    server = await start_hook_server(failure_threshold=3, reset_timeout=0.5)
    for attempt in range(5):
        with pytest.raises(ConnectionClosed) as closed:
            await connect(clients, server, "alice", device=f"d{attempt}")
        assert closed.value.code == Code.BACKEND_UNAVAILABLE
    # Three attempts reached the backend; then the open breaker failed the rest at once.
    assert len(backend.calls_to("connect")) == 3
    assert "circuit breaker open" in closed.value.reason

    backend.answers["connect"] = allow_everyone
    await asyncio.sleep(0.6)  # past reset_timeout: the next call is the trial
    await connect(clients, server, "alice", device="after")
    assert len(backend.calls_to("connect")) == 4


@pytest.mark.parametrize(
    "answer",
    [
        {"allow": "yes"},
        {"allow": True, "contacts": ["bad id"]},
        {"allow": True, "contacts": "bob"},
        {"allow": False, "code": 42},
        ["not", "an", "object"],
    ],
)
async def test_invalid_connect_answer_is_unavailable(
    start_hook_server: ServerStarter, backend: Backend, clients: list[Client], answer: object
) -> None:
    backend.answers["connect"] = reply(answer)
    server = await start_hook_server()
    with pytest.raises(ConnectionClosed) as closed:
        await connect(clients, server, "alice")
    assert closed.value.code == Code.BACKEND_UNAVAILABLE
    assert json.dumps(answer)  # the answer itself was valid JSON: only its shape was wrong
