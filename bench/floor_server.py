"""The floor for `tether bench`: a bare uvloop protocol doing only the socket and framing work.

It accepts the same frames as tether (varint-delimited Protobuf over TCP). It answers a Connect
with Connected and an empty PresenceSnapshot, each Heartbeat with a HeartbeatAck carrying its
nonce, and pushes a Send straight to the recipient's connection as a Deliver, with a SendAck to
the sender. It keeps one dict of connections by user and nothing else: it reads the user id from
the token without checking the signature, and has no store, bus, presence, limits or timeouts.
Whatever tether spends above it is tether's own cost.

    python bench/floor_server.py      # prints "tether ready tcp=127.0.0.1:PORT", like tether serve

With --constant-ack it parses nothing after the Connect and writes one precomputed
HeartbeatAck for every read: what the event loop and the kernel cost per heartbeat, with no
Python work beyond one data_received and one write().
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import time

import uvloop

from tether.protocol import tether_pb2 as pb
from tether.protocol.framing import StreamDecoder, prefix_frame

_SNAPSHOT = prefix_frame(pb.Frame(presence_snapshot=pb.PresenceSnapshot()).SerializeToString())
_USERS: dict[str, FloorConnection] = {}
_HEARTBEAT_INTERVAL_MS = 4000
# With --constant-ack: the bytes written for every read after the Connect.
_CONSTANT_ACK = b""


def _token_subject(token: str) -> str:
    """Return the sub claim of a JWT, unverified: the floor does no authentication work."""
    payload = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"])


class FloorConnection(asyncio.Protocol):
    __slots__ = ("decoder", "transport", "user")

    def __init__(self) -> None:
        self.decoder = StreamDecoder(65_536)
        self.transport: asyncio.Transport | None = None
        self.user = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if _USERS.get(self.user) is self:
            del _USERS[self.user]

    def data_received(self, data: bytes) -> None:
        replies = []
        for payload in self.decoder.feed(data):
            frame = pb.Frame.FromString(payload)
            kind = frame.WhichOneof("kind")
            if kind == "heartbeat":
                ack = pb.HeartbeatAck(nonce=frame.heartbeat.nonce)
                replies.append(prefix_frame(pb.Frame(heartbeat_ack=ack).SerializeToString()))
            elif kind == "send":
                replies.append(self._push(frame.send))
            elif kind == "connect":
                self.user = _token_subject(frame.connect.token)
                _USERS[self.user] = self
                connected = pb.Connected(
                    user_id=self.user, heartbeat_interval_ms=_HEARTBEAT_INTERVAL_MS
                )
                replies.append(prefix_frame(pb.Frame(connected=connected).SerializeToString()))
                replies.append(_SNAPSHOT)
        if replies and self.transport is not None:
            self.transport.write(b"".join(replies))

    def _push(self, send: pb.Send) -> bytes:
        """Write a Send to its recipient's connection and return the SendAck for the sender."""
        recipient = _USERS.get(send.recipient)
        now_ms = int(time.time() * 1000)
        if recipient is not None and recipient.transport is not None:
            message = pb.Message(
                sender=self.user,
                recipient=send.recipient,
                body=send.body,
                client_message_id=send.client_message_id,
                timestamp_ms=now_ms,
            )
            deliver = pb.Frame(deliver=pb.Deliver(messages=[message]))
            recipient.transport.write(prefix_frame(deliver.SerializeToString()))
        ack = pb.SendAck(client_message_id=send.client_message_id, timestamp_ms=now_ms)
        return prefix_frame(pb.Frame(send_ack=ack).SerializeToString())


class ConstantAckConnection(FloorConnection):
    """A floor connection that writes _CONSTANT_ACK for every read after the Connect."""

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        if self.user and self.transport is not None:
            self.transport.write(_CONSTANT_ACK)
        else:
            super().data_received(data)


async def main(protocol: type[FloorConnection]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol, "127.0.0.1", 0)
    print(f"tether ready tcp=127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--heartbeat-interval", type=float, default=4.0, help="seconds, sent in Connected"
    )
    parser.add_argument(
        "--constant-ack",
        action="store_true",
        help="after the Connect, write one precomputed HeartbeatAck for every read",
    )
    options = parser.parse_args()
    _HEARTBEAT_INTERVAL_MS = int(options.heartbeat_interval * 1000)
    protocol = FloorConnection
    if options.constant_ack:
        ack = pb.HeartbeatAck(nonce=1, server_time_ms=int(time.time() * 1000))
        _CONSTANT_ACK = prefix_frame(pb.Frame(heartbeat_ack=ack).SerializeToString())
        protocol = ConstantAckConnection
    uvloop.run(main(protocol))
