"""Token expiry on long connections and refresh without reconnecting."""

from __future__ import annotations

import asyncio
import time

from conftest import SECRET, TIMEOUT, ClientFactory, RawClient, ServerFactory, drain, url_of

from tether.auth import issue_token
from tether.client import Client
from tether.client import events as ev
from tether.protocol import tether_pb2 as pb
from tether.protocol.codes import Code


async def test_connected_reports_expiry(start_server: ServerFactory) -> None:
    server = await start_server(token_leeway=0)
    raw = await RawClient.open(server)
    token = issue_token(SECRET, "alice", ttl=60)
    raw.send_connect("alice", token=token)
    connected = (await raw.receive_kind("connected")).connected
    assert abs(connected.token_expires_ms / 1000 - (time.time() + 60)) < 2
    raw.close()


async def test_expired_token_closes_connection(start_server: ServerFactory) -> None:
    server = await start_server(token_leeway=0)
    raw = await RawClient.open(server)
    raw.send_connect("alice", token=issue_token(SECRET, "alice", ttl=1))
    await raw.receive_kind("connected")
    started = time.monotonic()
    assert await raw.disconnect_code(timeout=TIMEOUT) == Code.TOKEN_EXPIRED
    assert time.monotonic() - started < 1.0 + 0.5  # expiry plus a sweep or two
    raw.close()


async def test_token_without_expiry_stays(server: object, connect: ClientFactory) -> None:
    alice = await connect(server, "alice")
    events = await drain(alice, quiet=1.0)
    assert not [e for e in events if isinstance(e, ev.Disconnected)]


async def test_refresh_extends_session(start_server: ServerFactory) -> None:
    server = await start_server(token_leeway=0)
    raw = await RawClient.open(server)
    raw.send_connect("alice", token=issue_token(SECRET, "alice", ttl=1))
    await raw.receive_kind("connected")
    raw.send(pb.Frame(refresh=pb.Refresh(token=issue_token(SECRET, "alice", ttl=60))))
    refreshed = (await raw.receive_kind("refreshed")).refreshed
    assert refreshed.token_expires_ms > (time.time() + 50) * 1000
    await asyncio.sleep(1.5)  # past the first token's expiry
    raw.send(pb.Frame(heartbeat=pb.Heartbeat(nonce=7)))
    assert (await raw.receive_kind("heartbeat_ack")).heartbeat_ack.nonce == 7
    raw.close()


async def test_refresh_for_other_user_rejected(start_server: ServerFactory) -> None:
    server = await start_server(token_leeway=0)
    raw = await RawClient.open(server)
    raw.send_connect("alice")
    await raw.receive_kind("connected")
    raw.send(pb.Frame(refresh=pb.Refresh(token=issue_token(SECRET, "mallory", ttl=60))))
    assert await raw.disconnect_code() == Code.UNAUTHORIZED
    raw.close()


async def test_invalid_refresh_rejected(start_server: ServerFactory) -> None:
    server = await start_server(token_leeway=0)
    raw = await RawClient.open(server)
    raw.send_connect("alice")
    await raw.receive_kind("connected")
    raw.send(pb.Frame(refresh=pb.Refresh(token="not-a-token")))
    assert await raw.disconnect_code() == Code.UNAUTHORIZED
    raw.close()


async def test_expired_refresh_rejected(start_server: ServerFactory) -> None:
    import jwt

    server = await start_server(token_leeway=0)
    raw = await RawClient.open(server)
    raw.send_connect("alice")
    await raw.receive_kind("connected")
    stale = jwt.encode({"sub": "alice", "exp": int(time.time()) - 10}, SECRET, algorithm="HS256")
    raw.send(pb.Frame(refresh=pb.Refresh(token=stale)))
    assert await raw.disconnect_code() == Code.TOKEN_EXPIRED
    raw.close()


async def test_sdk_refreshes_with_provider(start_server: ServerFactory) -> None:
    server = await start_server(token_leeway=0)
    issued: list[str] = []

    async def provider() -> str:
        token = issue_token(SECRET, "alice", ttl=2)
        issued.append(token)
        return token

    client = Client(
        url_of(server, "tcp"), issue_token(SECRET, "alice", ttl=2), "phone",
        token_provider=provider, connect_timeout=TIMEOUT,
    )  # fmt: skip
    await client.connect()
    try:
        events = await drain(client, quiet=4.0)  # two token lifetimes
        assert not [e for e in events if isinstance(e, ev.Disconnected)]
        assert len(issued) >= 2
    finally:
        await client.close()
