"""Measure the gateway's Python CPU per group delivery, without sockets.

    .venv/bin/python bench/group_fanout.py --members 3333 --messages 100

Builds a gateway whose TCP connections have transports that write to nothing, makes them all
local members of one group, and hands it group messages as they come off the bus. Each message
is then flushed, as the event loop would between two bus messages. Reports the process CPU
time per delivery (one message to one member) in two cases: pushed at once (a push rate the
members never reach), and held by pacing and merged, one Deliver frame per `--batch` messages.
The null transport's methods are C built-ins, like uvloop's, so the Python calls are those of
a real gateway. The system calls of real writes are left out on purpose, to isolate the part
that tether's code controls. `gc.freeze()` runs after setup, as the gateway's sweep does after
a burst of connections.
"""

from __future__ import annotations

import argparse
import collections
import gc
import time

import uvloop

from tether.auth import TokenVerifier
from tether.bus import envelope_pb2 as env
from tether.bus.memory import InProcessBus
from tether.gateway import Gateway, GatewayConfig
from tether.gateway.connection import TcpConnection
from tether.gateway.groups import GroupConfig
from tether.keys import KeyConfig, KeyStore
from tether.protocol import tether_pb2 as pb
from tether.protocol.states import ConnectionState


class NullTransport:
    """The two transport methods a fan-out calls, as C built-ins: writes are dropped."""

    __slots__ = ("get_write_buffer_size", "write")

    def __init__(self) -> None:
        self.write = collections.deque(maxlen=0).append
        self.get_write_buffer_size = int  # int() is 0


async def measure(members: int, messages: int, pushes_per_second: float, batch: int) -> float:
    """Return the CPU seconds per delivery of messages to members at a given push rate."""
    bus = InProcessBus()
    await bus.start()
    groups = GroupConfig(pushes_per_second=pushes_per_second, push_burst=1)
    config = GatewayConfig(tcp_port=None, ws_port=None, groups=groups)
    verifier = TokenVerifier(keys=KeyStore(KeyConfig(secrets=("x" * 32,))))
    gateway = Gateway(config, bus, verifier)
    await gateway.start()
    for index in range(members):
        connection = TcpConnection(gateway, f"c{index}")
        connection.transport = NullTransport()  # type: ignore[assignment]
        connection.user_id = f"user{index}"
        connection.device_id = "phone"
        connection.protocol.state = ConnectionState.OPEN
        gateway._add_member(connection, "big", members)
    message = pb.Message(
        message_id=1,
        conversation_id="g:big",
        sequence=1,
        sender="sender",
        sender_device="phone",
        recipient="g:big",
        body=b"x" * 40,
        timestamp_ms=1,
        client_message_id="m1",
    )
    delivery = env.GroupDelivery(
        deliver=pb.Deliver(messages=[message]).SerializeToString(),
        sender="sender",
        sender_device="phone",
    )
    gc.freeze()

    started = time.process_time()
    for number in range(messages):
        gateway._deliver_group("big", delivery)
        gateway._flush()
        if number % batch == batch - 1 and gateway._paced:
            gateway._push_waiting()  # the push tick
            gateway._flush()
    elapsed = time.process_time() - started
    gc.unfreeze()
    await gateway.close()
    await bus.close()
    return elapsed / (members * messages)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=3333, help="local members of the group")
    parser.add_argument("--messages", type=int, default=100, help="group messages delivered")
    parser.add_argument("--batch", type=int, default=5, help="messages per merged Deliver frame")
    arguments = parser.parse_args()
    at_once = await measure(arguments.members, arguments.messages, 1e9, arguments.batch)
    merged = await measure(arguments.members, arguments.messages, 1e-9, arguments.batch)
    print(f"pushed at once: {at_once * 1e6:.2f} µs per delivery")
    print(f"merged, {arguments.batch} per frame: {merged * 1e6:.2f} µs per delivery")


if __name__ == "__main__":
    uvloop.run(main())
