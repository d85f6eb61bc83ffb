"""Prometheus metrics on the HTTP port: exact counts after known traffic, bounded labels."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import websockets
from conftest import SECRET, TIMEOUT, RawClient, ServerFactory, add_contacts
from ops_helpers import close_slow_consumer, http_get, http_request
from prometheus_client.parser import text_string_to_metric_families

from tether.auth import issue_token
from tether.protocol import tether_pb2 as pb
from tether.server import EmbeddedServer

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
HEARTBEATS = 7
MESSAGES = 5


async def scrape(server: EmbeddedServer) -> Samples:
    """Return every sample of GET /metrics, keyed by name and labels."""
    assert server.http is not None
    assert server.http.port is not None
    status, text = await http_get(server.http.port, "/metrics")
    assert status == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """Return one sample's value; 0 for a labelled sample not exposed yet."""
    key = (name, frozenset(labels.items()))
    if key not in samples:
        assert labels, f"{name} is not exposed"
        return 0.0
    return samples[key]


def deltas(
    before: Samples, after: Samples, names: Mapping[str, dict[str, str]]
) -> dict[str, float]:
    """Return after minus before for each "name|anything" key with its labels."""
    return {
        name: value(after, name.split("|")[0], **labels)
        - value(before, name.split("|")[0], **labels)
        for name, labels in names.items()
    }


class WsRaw:
    """A WebSocket client that sends and receives tether frames one by one."""

    def __init__(self, connection: websockets.ClientConnection) -> None:
        self.connection = connection

    @classmethod
    async def open(cls, server: EmbeddedServer, user: str, device: str) -> WsRaw:
        url = f"ws://127.0.0.1:{server.ws_port}{server.config.gateway.ws_path}"
        protocols = [websockets.Subprotocol("tether.v1")]
        connection = await websockets.connect(url, subprotocols=protocols)
        connect = pb.Connect(protocol_version=1, token=issue_token(SECRET, user), device_id=device)
        await connection.send(pb.Frame(connect=connect).SerializeToString())
        return cls(connection)

    async def receive_kind(self, kind: str) -> pb.Frame:
        while True:
            data = await asyncio.wait_for(self.connection.recv(), TIMEOUT)
            assert isinstance(data, bytes)
            frame = pb.Frame.FromString(data)
            if frame.WhichOneof("kind") == kind:
                return frame


async def test_counters_follow_known_traffic(start_server: ServerFactory) -> None:
    server = await start_server(http_port=0)
    await add_contacts(server, "alice", "bob")
    before = await scrape(server)

    # Bob has a phone on TCP and a laptop on WebSocket; alice comes online on TCP after them.
    bob_phone = await RawClient.open(server)
    bob_phone.send_connect("bob", "phone")
    await bob_phone.receive_kind("presence_snapshot")
    bob_laptop = await WsRaw.open(server, "bob", "laptop")
    await bob_laptop.receive_kind("presence_snapshot")
    alice = await RawClient.open(server)
    alice.send_connect("alice", "phone")
    await alice.receive_kind("presence_snapshot")
    await bob_phone.receive_kind("presence_update")
    await bob_laptop.receive_kind("presence_update")

    for nonce in range(HEARTBEATS):
        alice.send(pb.Frame(heartbeat=pb.Heartbeat(nonce=nonce)))
    for _ in range(HEARTBEATS):
        await alice.receive_kind("heartbeat_ack")
    for number in range(MESSAGES):
        send = pb.Send(client_message_id=f"m{number}", recipient="bob", body=b"hi")
        alice.send(pb.Frame(send=send))
    for _ in range(MESSAGES):
        await alice.receive_kind("send_ack")
        await bob_phone.receive_kind("deliver")
        await bob_laptop.receive_kind("deliver")

    # A frame over the size limit closes its sender with FRAME_TOO_LARGE.
    oversized = await RawClient.open(server)
    oversized.send_raw(b"\xff\xff\xff\x7f")  # a varint length of about 268 MB
    assert await oversized.disconnect_code() is not None
    oversized.close()
    # A client that says goodbye is counted as CLIENT_CLOSED.
    leaving = await RawClient.open(server)
    leaving.send_connect("carol", "phone")
    await leaving.receive_kind("connected")
    leaving.send(pb.Frame(disconnect=pb.Disconnect(code=1000)))
    assert await leaving.disconnect_code() is None
    leaving.close()
    await asyncio.sleep(0.2)  # the gateway notices that both transports are gone

    after = await scrape(server)
    assert deltas(before, after, {
        "tether_connections_accepted_total|tcp": {"transport": "tcp"},
        "tether_connections_accepted_total|ws": {"transport": "ws"},
        "tether_heartbeats_total": {},
        "tether_client_messages_total": {},
        "tether_deliveries_total": {},
        "tether_presence_transitions_total|online": {"kind": "online"},
        "tether_presence_transitions_total|offline": {"kind": "offline"},
        "tether_presence_events_received_total": {},
        "tether_presence_updates_sent_total": {},
        "tether_disconnects_total|FRAME_TOO_LARGE": {"code": "FRAME_TOO_LARGE"},
        "tether_disconnects_total|CLIENT_CLOSED": {"code": "CLIENT_CLOSED"},
        # Each message reaches the gateway twice: on bob's channel and, for alice's other
        # devices (she has none), on hers. Latency is observed once per arrival.
        "tether_delivery_latency_seconds_count": {},
        "tether_presence_propagation_seconds_count": {},
    }) == {
        "tether_connections_accepted_total|tcp": 4,
        "tether_connections_accepted_total|ws": 1,
        "tether_heartbeats_total": HEARTBEATS,
        "tether_client_messages_total": MESSAGES,
        "tether_deliveries_total": 2 * MESSAGES,
        "tether_presence_transitions_total|online": 4,  # bob twice, alice, carol
        "tether_presence_transitions_total|offline": 1,  # carol
        "tether_presence_events_received_total": 1,  # alice online: bob watches her
        "tether_presence_updates_sent_total": 2,  # to bob's two devices
        "tether_disconnects_total|FRAME_TOO_LARGE": 1,
        "tether_disconnects_total|CLIENT_CLOSED": 1,
        "tether_delivery_latency_seconds_count": 2 * MESSAGES,
        "tether_presence_propagation_seconds_count": 1,
    }  # fmt: skip

    # Gauges: what is open now.
    assert value(after, "tether_connections", transport="tcp") == 2
    assert value(after, "tether_connections", transport="ws") == 1
    assert value(after, "tether_sessions") == 3
    assert value(after, "tether_users") == 2
    assert value(after, "tether_ready") == 1
    assert value(after, "tether_bus_connected") == 1
    # Requests: 4 connects and 5 sends answered by logic, plus snapshot queries to presence.
    replies = value(after, "tether_bus_requests_total", outcome="reply")
    assert replies >= 4 + MESSAGES
    assert value(after, "tether_bus_request_seconds_count") == replies
    assert value(after, "tether_bus_requests_total", outcome="timeout") == 0
    assert value(after, "process_cpu_seconds_total") > 0

    bob_phone.close()
    alice.close()
    await bob_laptop.connection.close()


async def test_labels_never_carry_ids(start_server: ServerFactory) -> None:
    server = await start_server(http_port=0)
    await add_contacts(server, "user-alice", "user-bob")
    clients = []
    for user in ("user-alice", "user-bob"):
        raw = await RawClient.open(server)
        raw.send_connect(user, "device-x")
        await raw.receive_kind("presence_snapshot")
        clients.append(raw)
    samples = await scrape(server)
    label_values = {item for _, labels in samples for item in labels}
    assert label_values  # the test looks at something
    for _, label in label_values:
        assert "user-" not in label, label
        assert "device-x" not in label, label
        assert server.gateway is not None
        assert not any(c in label for c in server.gateway.connections)
    for raw in clients:
        raw.close()


async def test_slow_consumer_counted_by_code(start_server: ServerFactory) -> None:
    server = await start_server(http_port=0, max_outgoing_bytes=64 * 1024)
    await close_slow_consumer(server)
    samples = await scrape(server)
    assert value(samples, "tether_disconnects_total", code="SLOW_CONSUMER") == 1


async def test_api_requests_counted_by_route(start_server: ServerFactory) -> None:
    key = "metrics-test-api-key-0123456789"
    server = await start_server(http_port=0, api_keys=(key,))
    assert server.http is not None and server.http.port is not None
    port = server.http.port
    before = await scrape(server)
    headers = {"X-API-Key": key}
    status, _, _ = await http_request(
        port, "POST", "/api/v1/presence", headers=headers, body={"user_ids": ["alice"]}
    )
    assert status == 200
    status, _, _ = await http_request(port, "POST", "/api/v1/presence", body={"user_ids": []})
    assert status == 401  # no key
    status, _, _ = await http_request(port, "POST", "/api/v1/no-such-route", headers=headers)
    assert status == 404
    after = await scrape(server)

    counted = deltas(
        before,
        after,
        {
            "tether_api_requests_total|ok": {"route": "presence", "status": "200"},
            "tether_api_requests_total|unauthorized": {"route": "presence", "status": "401"},
            "tether_api_requests_total|unmatched": {"route": "unmatched", "status": "404"},
            "tether_api_request_seconds_count": {},
        },
    )
    assert counted == {
        "tether_api_requests_total|ok": 1,
        "tether_api_requests_total|unauthorized": 1,
        "tether_api_requests_total|unmatched": 1,
        "tether_api_request_seconds_count": 3,
    }
    assert value(after, "tether_api_request_seconds_sum") > 0


async def test_api_metrics_absent_without_keys(start_server: ServerFactory) -> None:
    server = await start_server(http_port=0)
    samples = await scrape(server)
    assert not any(name.startswith("tether_api_") for name, _ in samples)
