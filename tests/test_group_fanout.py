"""Group fan-out in embedded tether: slow readers, merged pushes in hot groups, online counts."""

from __future__ import annotations

import asyncio
import itertools
import socket

from conftest import (
    QUIET,
    SECRET,
    TIMEOUT,
    ClientFactory,
    ServerFactory,
    SilentReader,
    drain,
    next_of,
)

from tether.auth import issue_token
from tether.bus import envelope_pb2 as env
from tether.client import Client
from tether.client import events as ev
from tether.gateway.groups import GroupConfig
from tether.protocol import tether_pb2 as pb
from tether.protocol.codes import Code
from tether.protocol.framing import StreamDecoder, prefix_frame
from tether.server import EmbeddedServer


async def wait_for(condition: object, timeout: float = TIMEOUT) -> None:
    assert callable(condition)
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_slow_reader_closed_and_catches_up(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    # The silent member sends no heartbeats, so its offline timeout must not close it first.
    # The outgoing limit stays above a Sync page (256 KiB of bodies) for the catch-up.
    server = await start_server(max_outgoing_bytes=300_000, offline_timeout=60.0)
    gateway = server.gateway
    assert gateway is not None
    alice = await connect(server, "alice")
    bob = await connect(server, "bob")
    await alice.create_group("team", ["bob", "slow"])
    slow = await SilentReader.open(server.tcp_port, issue_token(SECRET, "slow"))
    await wait_for(lambda: "slow" in gateway.sessions)

    body = b"x" * 30_000
    sent = 0
    # Send until the silent member is closed; the kernel's socket buffers take a few MB first.
    while "slow" in gateway.sessions:
        assert sent < 2000, "the silent member was never closed"
        # Five at a time: more 30 KB messages in one pass of the event loop would pass the
        # outgoing limit of every member before the first write.
        batch = range(sent, sent + 5)
        await asyncio.gather(*(alice.send_to_group("team", body + str(n).encode()) for n in batch))
        sent += len(batch)
    # The others carry on undisturbed: bob has every message, in order. Sequence number 1 is
    # the group's creation, a system message.
    received: list[ev.Message] = []
    while len(received) < sent:
        message = await next_of(bob, ev.Message)
        assert isinstance(message, ev.Message)
        received.append(message)
    assert [m.sequence for m in received] == list(range(2, sent + 2))

    frames = await slow.read_to_end()
    slow.close()
    disconnects = [f.disconnect.code for f in frames if f.WhichOneof("kind") == "disconnect"]
    assert disconnects == [Code.SLOW_CONSUMER]

    # Reconnected, the dropped member catches up by sequence number: each message once.
    again = Client(
        f"tcp://127.0.0.1:{server.tcp_port}",
        issue_token(SECRET, "slow"),
        "silent",
        connect_timeout=TIMEOUT,
        ack_timeout=TIMEOUT,
    )
    await again.connect()
    try:
        caught_up: list[ev.Message] = []
        while len(caught_up) < sent:
            message = await next_of(again, ev.Message)
            assert isinstance(message, ev.Message)
            caught_up.append(message)
        assert [m.sequence for m in caught_up] == list(range(2, sent + 2))
        assert not [e for e in await drain(again) if isinstance(e, ev.Message)]
    finally:
        await again.close()


async def _raw_member(server: EmbeddedServer, user: str) -> tuple[socket.socket, StreamDecoder]:
    """Open a session of user over a non-blocking socket; read until its presence snapshot."""
    sock = socket.socket()
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", server.tcp_port))
    connect = pb.Connect(protocol_version=1, token=issue_token(SECRET, user), device_id="r")
    await loop.sock_sendall(sock, prefix_frame(pb.Frame(connect=connect).SerializeToString()))
    decoder = StreamDecoder(1 << 24)
    while True:
        data = await asyncio.wait_for(loop.sock_recv(sock, 65536), TIMEOUT)
        assert data, "connection closed"
        kinds = [pb.Frame.FromString(p).WhichOneof("kind") for p in decoder.feed(data)]
        if "presence_snapshot" in kinds:
            return sock, decoder


async def _read_delivers(
    sock: socket.socket, decoder: StreamDecoder, count: int
) -> tuple[list[pb.Deliver], list[int]]:
    """Read until count group messages arrived; return the Deliver frames and sequences."""
    loop = asyncio.get_running_loop()
    delivers: list[pb.Deliver] = []
    sequences: list[int] = []
    while len(sequences) < count:
        data = await asyncio.wait_for(loop.sock_recv(sock, 65536), TIMEOUT)
        assert data, "connection closed"
        for payload in decoder.feed(data):
            frame = pb.Frame.FromString(payload)
            if frame.WhichOneof("kind") == "deliver":
                delivers.append(frame.deliver)
                sequences.extend(m.sequence for m in frame.deliver.messages)
    return delivers, sequences


async def test_hot_group_merged_into_batches(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    rate, burst, count = 5.0, 2, 40
    server = await start_server(groups=GroupConfig(pushes_per_second=rate, push_burst=burst))
    alice = await connect(server, "alice")
    await alice.create_group("hot", ["bob", "carol"])
    # Both members hold the same messages at each push tick, so the gateway encodes each
    # batch once for both. Each must still get every message once, in order.
    members = [await _raw_member(server, user) for user in ("bob", "carol")]

    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(*(alice.send_to_group("hot", f"m{n}") for n in range(count)))
    for sock, decoder in members:
        delivers, sequences = await _read_delivers(sock, decoder, count)
        elapsed = loop.time() - started
        sock.close()

        # Sequence number 1 is the group's creation, sent before the members connected.
        assert sorted(sequences) == sequences == list(range(2, count + 2))
        assert max(len(d.messages) for d in delivers) > 1
        # Pacing: the burst, then at most one frame per push tick.
        assert len(delivers) <= burst + rate * elapsed + 1, (len(delivers), elapsed)


async def test_group_push_written_at_once_behind_queued_frames(
    server: EmbeddedServer, connect: ClientFactory
) -> None:
    gateway = server.gateway
    assert gateway is not None
    alice = await connect(server, "alice")
    await alice.create_group("team", ["bob"])
    sock, decoder = await _raw_member(server, "bob")
    (bob,) = gateway.sessions["bob"].values()

    def group_message(sequence: int) -> env.GroupDelivery:
        message = pb.Message(conversation_id="g:team", sequence=sequence, sender="alice",
                             recipient="g:team", body=b"hi")  # fmt: skip
        deliver = pb.Deliver(messages=[message]).SerializeToString()
        return env.GroupDelivery(deliver=deliver, sender="alice", sender_device="elsewhere")

    # Nothing waits in bob's outbox: the push is written within the call, before the event
    # loop runs again, so its bytes are already in bob's socket.
    gateway._deliver_group("team", group_message(100))
    assert not bob.outbox
    frames = [pb.Frame.FromString(p) for p in decoder.feed(sock.recv(65536))]
    assert [f.deliver.messages[0].sequence for f in frames] == [100]

    # A frame queued earlier in the same pass stays ahead of the push.
    bob.send_frame(pb.Frame(heartbeat_ack=pb.HeartbeatAck(nonce=7)))
    gateway._deliver_group("team", group_message(101))
    frames = []
    while len(frames) < 2:
        data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 65536), TIMEOUT)
        assert data, "connection closed"
        frames.extend(pb.Frame.FromString(p) for p in decoder.feed(data))
    sock.close()
    assert [f.WhichOneof("kind") for f in frames] == ["heartbeat_ack", "deliver"]
    assert frames[0].heartbeat_ack.nonce == 7
    assert frames[1].deliver.messages[0].sequence == 101


async def test_online_counts_follow_members(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    interval = 0.2
    server = await start_server(groups=GroupConfig(count_threshold=2, count_interval=interval))
    alice = await connect(server, "alice")
    await alice.create_group("big", ["bob", "carol", "dave"])
    await alice.create_group("small", ["bob"])  # 2 members: no counts

    async def next_count(expected: int) -> ev.GroupOnline:
        while True:
            event = await next_of(alice, ev.GroupOnline)
            assert isinstance(event, ev.GroupOnline)
            assert event.group_id == "big"
            if event.online == expected:
                return event

    first = await next_count(1)
    assert first.member_count == 4
    bob = await connect(server, "bob")
    await connect(server, "bob", device="laptop")  # one user, counted once
    await next_count(2)
    carol = await connect(server, "carol")
    await next_count(3)
    await bob.close()
    await carol.close()
    await next_count(2)  # bob's laptop is still connected
    later = [e for e in await drain(alice, quiet=interval * 3) if isinstance(e, ev.GroupOnline)]
    assert [e.online for e in later] == []

    # A new member session gets the current count without waiting for a change.
    dave = await connect(server, "dave")
    event = await next_of(dave, ev.GroupOnline)
    assert isinstance(event, ev.GroupOnline)
    assert (event.group_id, event.online) == ("big", 3)


async def test_counts_at_most_once_per_interval(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    interval = 0.5
    server = await start_server(groups=GroupConfig(count_threshold=2, count_interval=interval))
    alice = await connect(server, "alice")
    members = [f"m{index}" for index in range(6)]
    await alice.create_group("big", members)
    await next_of(alice, ev.GroupOnline)

    loop = asyncio.get_running_loop()
    arrivals: list[tuple[float, int]] = []

    async def watch() -> None:
        while True:
            event = await alice.next_event()
            if isinstance(event, ev.GroupOnline):
                arrivals.append((loop.time(), event.online))

    watcher = asyncio.create_task(watch())
    try:
        for member in members:  # a change every third of an interval
            await connect(server, member)
            await asyncio.sleep(interval / 3)
        await asyncio.sleep(interval * 3)
    finally:
        watcher.cancel()
    assert len(arrivals) >= 2
    assert arrivals[-1][1] == 7
    assert len(arrivals) < len(members)
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(arrivals)]
    assert min(gaps) > interval / 2, gaps


async def test_invisible_member_not_counted(
    start_server: ServerFactory, connect: ClientFactory
) -> None:
    interval = 0.2
    server = await start_server(groups=GroupConfig(count_threshold=2, count_interval=interval))
    alice = await connect(server, "alice")
    await alice.create_group("big", ["bob", "carol", "dave"])
    first = await next_of(alice, ev.GroupOnline)
    assert isinstance(first, ev.GroupOnline)
    assert first.online == 1

    bob = await connect(server, "bob", status="invisible")
    later = [e for e in await drain(alice, quiet=interval * 3) if isinstance(e, ev.GroupOnline)]
    assert later == []
    await bob.set_status("online")
    event = await next_of(alice, ev.GroupOnline)
    assert isinstance(event, ev.GroupOnline)
    assert event.online == 2
    await bob.set_status("invisible")
    event = await next_of(alice, ev.GroupOnline)
    assert isinstance(event, ev.GroupOnline)
    assert event.online == 1


async def test_small_group_gets_no_counts(server: EmbeddedServer, connect: ClientFactory) -> None:
    alice = await connect(server, "alice")
    await alice.create_group("team", ["bob"])
    await connect(server, "bob")
    events = await drain(alice, quiet=QUIET * 3)
    assert not [e for e in events if isinstance(e, ev.GroupOnline)]
