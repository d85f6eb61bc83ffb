"""The in-process bus used by embedded tether: one event loop, no network.

Published messages go through one FIFO queue drained by a single callback scheduled on the
loop, so handlers never run inside `publish` and messages keep their global order. Streams are
bounded queues, each drained by one consumer task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from tether.bus.base import Bus, BusCounters, MessageHandler, StreamHandler
from tether.protocol.errors import BusError, BusOverloaded

__all__ = ["InProcessBus"]

logger = logging.getLogger("tether.bus.memory")


class InProcessBus(Bus):
    """Bus for a single process.

    `max_pending` bounds the messages published but not yet handed to subscribers;
    `max_stream_entries` bounds each stream's queue. Both raise BusOverloaded when full.
    """

    def __init__(self, *, max_pending: int = 1_000_000, max_stream_entries: int = 100_000) -> None:
        self._subscribers: dict[str, list[MessageHandler]] = {}
        self._pending: deque[tuple[str, bytes]] = deque()
        self._max_pending = max_pending
        self._max_stream_entries = max_stream_entries
        self._streams: dict[str, asyncio.Queue[bytes]] = {}
        self._consumers: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_scheduled = False
        self._closed = False
        self.counters = BusCounters()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def close(self) -> None:
        self._closed = True
        for task in self._consumers:
            task.cancel()
        for task in self._consumers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._consumers.clear()
        self._subscribers.clear()
        self._pending.clear()

    def subscribe(self, channel: str, handler: MessageHandler) -> None:
        handlers = self._subscribers.setdefault(channel, [])
        if handler not in handlers:
            handlers.append(handler)

    def unsubscribe(self, channel: str, handler: MessageHandler) -> None:
        handlers = self._subscribers.get(channel)
        if handlers is None or handler not in handlers:
            return
        handlers.remove(handler)
        if not handlers:
            del self._subscribers[channel]

    def subscriber_count(self, channel: str) -> int:
        """Return how many handlers receive channel's messages (for tests and metrics)."""
        return len(self._subscribers.get(channel, ()))

    def publish(self, channel: str, payload: bytes) -> None:
        self._check_open()
        if channel not in self._subscribers:
            return  # pub/sub: with no subscriber, the message is dropped
        if len(self._pending) >= self._max_pending:
            raise BusOverloaded(f"{len(self._pending)} messages waiting for delivery")
        self._pending.append((channel, payload))
        self.counters.published += 1
        if not self._drain_scheduled:
            self._drain_scheduled = True
            assert self._loop is not None, "InProcessBus.start() was not called"
            self._loop.call_soon(self._drain)

    def append(self, stream: str, payload: bytes) -> None:
        self._check_open()
        try:
            self._stream(stream).put_nowait(payload)
            self.counters.appended += 1
        except asyncio.QueueFull:
            raise BusOverloaded(
                f"stream {stream} is full ({self._max_stream_entries} entries); retry later"
            ) from None

    def consume(self, stream: str, handler: StreamHandler) -> None:
        self._check_open()
        task = asyncio.get_running_loop().create_task(
            self._consume(self._stream(stream), handler), name=f"bus-consumer-{stream}"
        )
        self._consumers.append(task)

    def _stream(self, name: str) -> asyncio.Queue[bytes]:
        queue = self._streams.get(name)
        if queue is None:
            queue = self._streams[name] = asyncio.Queue(self._max_stream_entries)
        return queue

    async def _consume(self, queue: asyncio.Queue[bytes], handler: StreamHandler) -> None:
        while True:
            batch = [await queue.get()]
            while not queue.empty() and len(batch) < 512:
                batch.append(queue.get_nowait())
            try:
                await handler(batch)
            except Exception:
                # NOTE: the in-process stream keeps no copy, so a batch whose handler failed is
                # lost; the handler is expected to reply to every request itself, errors included.
                logger.exception("stream handler failed on a batch of %d entries", len(batch))

    def _drain(self) -> None:
        self._drain_scheduled = False
        pending = self._pending
        # Only the messages present now: those published by handlers wait for the next pass,
        # so one busy channel cannot starve the event loop.
        for _ in range(len(pending)):
            channel, payload = pending.popleft()
            handlers = self._subscribers.get(channel)
            if not handlers:
                continue
            for handler in tuple(handlers):
                try:
                    handler(channel, payload)
                except Exception:
                    logger.exception("subscriber of %s failed", channel)
        if pending and not self._drain_scheduled and not self._closed:
            self._drain_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._drain)

    def _check_open(self) -> None:
        if self._closed:
            raise BusError("bus is closed")
