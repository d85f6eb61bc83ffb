"""The floor for bench/heartbeat.py: a bare uvloop protocol doing only the socket and framing work.

It accepts the same frames as tether (varint-delimited Protobuf). It replies to a Connect with an
empty PresenceSnapshot and each Heartbeat with a HeartbeatAck carrying its nonce, and keeps no
sessions, presence, limits or timeouts. Whatever tether spends above it is tether's own cost.

    python bench/floor_server.py      # prints "tether ready tcp=127.0.0.1:PORT", like tether serve
"""

from __future__ import annotations

import asyncio
import signal

import uvloop

from tether.protocol import tether_pb2 as pb
from tether.protocol.framing import StreamDecoder, prefix_frame

_SNAPSHOT = prefix_frame(pb.Frame(presence_snapshot=pb.PresenceSnapshot()).SerializeToString())


class FloorConnection(asyncio.Protocol):
    __slots__ = ("decoder", "transport")

    def __init__(self) -> None:
        self.decoder = StreamDecoder(65_536)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        replies = []
        for payload in self.decoder.feed(data):
            frame = pb.Frame.FromString(payload)
            kind = frame.WhichOneof("kind")
            if kind == "heartbeat":
                ack = pb.HeartbeatAck(nonce=frame.heartbeat.nonce)
                replies.append(prefix_frame(pb.Frame(heartbeat_ack=ack).SerializeToString()))
            elif kind == "connect":
                replies.append(_SNAPSHOT)
        if replies and self.transport is not None:
            self.transport.write(b"".join(replies))


async def main() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FloorConnection, "127.0.0.1", 0)
    print(f"tether ready tcp=127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    uvloop.run(main())
