"""Measure the CPU cost per frame of the `tether.v1.json` subprotocol against binary frames.

    .venv/bin/python bench/json_frames.py

Times the gateway's own per-frame work for each form, in one process without sockets: decoding
a client frame (`ServerProtocol.receive_message` and `JsonServerProtocol.receive_message`) and
encoding a server frame (`encode`, and `frame_bytes` for a delivery that arrives serialized from
the bus). Prints microseconds per frame, the median of `--repeat` runs. docs/protocol.md,
section 1.3, quotes the figures with the machine they were measured on.
"""

from __future__ import annotations

import argparse
import statistics
import timeit
from collections.abc import Callable

from tether.protocol import tether_pb2 as pb
from tether.protocol.connection import ServerProtocol
from tether.protocol.json_frames import JsonServerProtocol, frame_to_json
from tether.protocol.states import ConnectionState

MAX_FRAME = 65_536


def _open(protocol: ServerProtocol) -> ServerProtocol:
    protocol.move_to(ConnectionState.AUTHENTICATING)
    protocol.move_to(ConnectionState.OPEN)
    return protocol


def _cases() -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    """Return name -> (binary work, JSON work) for one frame each."""
    binary = _open(ServerProtocol(max_frame_bytes=MAX_FRAME, stream=False))
    json_protocol = _open(JsonServerProtocol(max_frame_bytes=MAX_FRAME))

    heartbeat = pb.Frame(heartbeat=pb.Heartbeat(nonce=123456))
    send = pb.Frame(
        send=pb.Send(client_message_id="3f9a1c0b7d2e4f60", recipient="bob", body=b"x" * 100)
    )
    ack = pb.Frame(heartbeat_ack=pb.HeartbeatAck(nonce=123456, server_time_ms=1767225600000))
    message = pb.Message(
        message_id=81234,
        conversation_id="d:alice:bob",
        sequence=412,
        sender="alice",
        sender_device="laptop",
        recipient="bob",
        body=b"x" * 100,
        timestamp_ms=1767225600123,
        client_message_id="3f9a1c0b7d2e4f60",
    )
    deliver = pb.Frame(deliver=pb.Deliver(messages=[message]))
    deliver_bytes = deliver.SerializeToString()

    def fresh(payload: bytes) -> bytes:
        return bytes(bytearray(payload))  # a new object each time: no cache hit

    heartbeat_bytes, heartbeat_json = heartbeat.SerializeToString(), frame_to_json(heartbeat)
    send_bytes, send_json = send.SerializeToString(), frame_to_json(send)
    return {
        "decode Heartbeat": (
            lambda: binary.receive_message(heartbeat_bytes),
            lambda: json_protocol.receive_message(heartbeat_json),
        ),
        "decode Send, 100-byte body": (
            lambda: binary.receive_message(send_bytes),
            lambda: json_protocol.receive_message(send_json),
        ),
        "encode HeartbeatAck": (lambda: binary.encode(ack), lambda: json_protocol.encode(ack)),
        "Deliver from the bus, 100-byte body": (
            lambda: binary.frame_bytes(fresh(deliver_bytes)),
            lambda: json_protocol.frame_bytes(fresh(deliver_bytes)),
        ),
        "same Deliver to a second device": (
            lambda: binary.frame_bytes(deliver_bytes),
            lambda: json_protocol.frame_bytes(deliver_bytes),
        ),
    }


def _microseconds(work: Callable[[], object], number: int, repeat: int) -> float:
    runs = timeit.repeat(work, number=number, repeat=repeat)
    return statistics.median(runs) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20_000, help="frames per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the median is reported")
    arguments = parser.parse_args()
    print(f"{'frame':<38} {'binary µs':>10} {'JSON µs':>10} {'ratio':>7}")
    for name, (binary, json_work) in _cases().items():
        binary_us = _microseconds(binary, arguments.number, arguments.repeat)
        json_us = _microseconds(json_work, arguments.number, arguments.repeat)
        print(f"{name:<38} {binary_us:>10.2f} {json_us:>10.2f} {json_us / binary_us:>6.1f}x")

    # Hostile input costs only its sender, but the gateway still spends this on it once.
    for name, data in {
        "hostile: 60 KiB of nested objects": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
        "hostile: 10,000-digit number": b'{"heartbeat": {"nonce": ' + b"9" * 10_000 + b"}}",
    }.items():

        def reject(data: bytes = data) -> object:
            return _open(JsonServerProtocol(max_frame_bytes=MAX_FRAME)).receive_message(data)

        print(f"{name:<38} {'':>10} {_microseconds(reject, 200, arguments.repeat):>10.2f}")


if __name__ == "__main__":
    main()
