"""CPU of the logic store's work per direct message on SQLite, without sockets or servers.

    .venv/bin/python bench/store_cost.py [--messages 4000]

Runs the store calls that the logic layer makes for a direct message, on a fresh SQLite file in
a temporary folder. The send is the contact check and `store_direct` in one transaction. The
DeliverAck is the participant check and `mark_read` in a second one. It prints the process CPU
per message for the send alone, for the send and the acknowledgement, for the send with the
acknowledgement's read marker written behind (tether.logic.read_markers) in the next send's
transaction and 30 markers per transaction of their own, and for sends stored ten per
transaction, then the wall time of each kind of SQL statement per message.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tether.logic import open_store, sqlite_store
from tether.logic.read_markers import PendingReadMarkers
from tether.logic.store import Store

_PAIRS = 100
# Acks whose markers the logic layer's timer (30 ms) stores together at 1,000 messages per second.
_MARKERS_PER_WRITE = 30


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _send(store: Store, index: int, tag: str) -> tuple[str, int]:
    """Run the send of message `index` in its own transaction; return (conversation, sequence)."""
    pair = index % _PAIRS
    async with store.transaction():
        if not await store.are_contacts(f"s{pair}", f"r{pair}"):
            raise RuntimeError("the pairs were not stored as contacts")
        message = await store.store_direct(
            sender=f"s{pair}",
            sender_device="b",
            recipient=f"r{pair}",
            client_message_id=f"{tag}{index}",
            body=b"1767000000.123456",
        )
    return message.conversation_id, message.sequence


async def _acknowledge(store: Store, index: int, conversation: str, sequence: int) -> None:
    recipient = f"r{index % _PAIRS}"
    async with store.transaction():
        if await store.is_participant(recipient, conversation):
            await store.mark_read(recipient, "b", conversation, sequence)


async def _measure(messages: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="tether-store-cost-"))
    store = await open_store(folder / "store.sqlite3")
    try:
        async with store.transaction():
            for pair in range(_PAIRS):
                await store.add_contacts(f"s{pair}", f"r{pair}")

        started = _cpu_seconds()
        for index in range(messages):
            await _send(store, index, "send")
        print(f"send, one transaction each: {_per_message(started, messages)} µs CPU per message")

        started = _cpu_seconds()
        for index in range(messages):
            conversation, sequence = await _send(store, index, "acked")
            await _acknowledge(store, index, conversation, sequence)
        print(f"send and DeliverAck: {_per_message(started, messages)} µs CPU per message")

        # The markers' delay is longer than the run: only the calls below store them.
        markers = PendingReadMarkers(store, delay=3600, max_pending=10_000)
        started = _cpu_seconds()
        for index in range(messages):
            async with store.transaction():
                written = await markers.write()
                conversation, sequence = await _send(store, index, "next")
            markers.stored(written)
            await markers.add(f"r{index % _PAIRS}", "b", conversation, sequence)
        await markers.flush()
        print(
            "send and DeliverAck, marker in the next send's transaction: "
            f"{_per_message(started, messages)} µs CPU per message"
        )

        started = _cpu_seconds()
        for index in range(messages):
            conversation, sequence = await _send(store, index, "behind")
            await markers.add(f"r{index % _PAIRS}", "b", conversation, sequence)
            if index % _MARKERS_PER_WRITE == _MARKERS_PER_WRITE - 1:
                await markers.flush()
        await markers.close()
        print(
            f"send and DeliverAck, markers {_MARKERS_PER_WRITE} per transaction: "
            f"{_per_message(started, messages)} µs CPU per message"
        )

        started = _cpu_seconds()
        for first in range(0, messages, 10):
            async with store.transaction():
                for index in range(first, min(first + 10, messages)):
                    await _send(store, index, "batch")  # joins the open transaction
        print(f"send, ten per transaction: {_per_message(started, messages)} µs CPU per message")

        timings = await _statement_timings(store, messages)
        print("wall time per message by statement (send and DeliverAck):")
        for statement, seconds in sorted(timings.items(), key=lambda item: -item[1]):
            print(f"  {seconds / messages * 1e6:6.1f} µs  {statement}")
    finally:
        await store.close()


async def _statement_timings(store: Store, messages: int) -> dict[str, float]:
    """Run sends and acknowledgements again, timing each SQL statement by its first words."""
    timings: dict[str, float] = defaultdict(float)
    original = sqlite_store.SqliteStore._statement

    def timed(self: Any, sql: str, parameters: Sequence[object]) -> Any:
        started = time.perf_counter()
        try:
            return original(self, sql, parameters)
        finally:
            timings[" ".join(sql.split()[:3])] += time.perf_counter() - started

    sqlite_store.SqliteStore._statement = timed  # type: ignore[method-assign]
    try:
        for index in range(messages):
            conversation, sequence = await _send(store, index, "timed")
            await _acknowledge(store, index, conversation, sequence)
    finally:
        sqlite_store.SqliteStore._statement = original  # type: ignore[method-assign]
    return timings


def _per_message(started: float, messages: int) -> str:
    return f"{(_cpu_seconds() - started) / messages * 1e6:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--messages", type=int, default=4000, help="messages in each of the six measurements"
    )
    arguments = parser.parse_args()
    asyncio.run(_measure(arguments.messages))


if __name__ == "__main__":
    main()
