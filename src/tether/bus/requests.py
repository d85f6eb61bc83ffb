"""Request and reply over pub/sub: correlation ids and deadlines without a timer per request.

A process sends a request with `reply_to` set to its own reply channel and a fresh
`request_id`; the answer comes back on that channel with the same id. `RequestTracker` keeps
the callbacks of outstanding requests. Deadlines are checked by `expire`, which the owner calls
from its periodic sweep, so a thousand requests in flight cost a thousand dict entries and no
timers.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from tether.bus import channels
from tether.bus import envelope_pb2 as env
from tether.bus.base import Bus

__all__ = ["AsyncRequester", "RequestTracker"]

Reply = TypeVar("Reply")


class RequestTracker(Generic[Reply]):
    """Callbacks of outstanding requests, each called once with the reply or None on timeout."""

    __slots__ = ("_ids", "_pending")

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        # Insertion order is deadline order because every request of one tracker shares a
        # timeout, so `expire` stops at the first entry still in time.
        self._pending: OrderedDict[int, tuple[float, Callable[[Reply | None], None]]] = (
            OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, deadline: float, callback: Callable[[Reply | None], None]) -> int:
        """Register a callback and return the request id to send."""
        request_id = next(self._ids)
        self._pending[request_id] = (deadline, callback)
        return request_id

    def resolve(self, request_id: int, reply: Reply) -> bool:
        """Call the request's callback with reply; False if the id is unknown or expired."""
        entry = self._pending.pop(request_id, None)
        if entry is None:
            return False
        entry[1](reply)
        return True

    def deadline_of(self, request_id: int) -> float | None:
        """Return the deadline of an outstanding request, or None if the id is unknown."""
        entry = self._pending.get(request_id)
        return entry[0] if entry is not None else None

    def discard(self, request_id: int) -> None:
        """Forget a request without calling its callback (the request was never sent)."""
        self._pending.pop(request_id, None)

    def expire(self, now: float) -> int:
        """Call back with None every request whose deadline has passed; return how many."""
        expired = 0
        pending = self._pending
        while pending:
            request_id, (deadline, callback) = next(iter(pending.items()))
            if deadline > now:
                break
            del pending[request_id]
            callback(None)
            expired += 1
        return expired

    def fail_all(self) -> None:
        """Call back with None every outstanding request (used at shutdown)."""
        pending = list(self._pending.values())
        self._pending.clear()
        for _, callback in pending:
            callback(None)


class AsyncRequester:
    """Awaitable request and reply over a bus, for rare calls such as admin commands.

    It subscribes to its own reply channel; each request waits on a future with a timeout.
    Hot paths use RequestTracker instead, which needs no future or timer per request.
    """

    def __init__(self, bus: Bus, name: str) -> None:
        self._bus = bus
        self.reply_channel = channels.gateway_channel(name)
        self._tracker: RequestTracker[env.Envelope] = RequestTracker()
        self._waiting: dict[int, asyncio.Future[env.Envelope | None]] = {}

    def start(self) -> None:
        self._bus.subscribe(self.reply_channel, self._on_reply)

    def close(self) -> None:
        self._bus.unsubscribe(self.reply_channel, self._on_reply)
        self._tracker.fail_all()

    async def request(
        self, stream: str, request: env.Envelope, timeout: float
    ) -> env.Envelope | None:
        """Append request to stream and return the reply, or None after timeout seconds."""
        future: asyncio.Future[env.Envelope | None] = asyncio.get_running_loop().create_future()

        def settle(reply: env.Envelope | None) -> None:
            if not future.done():
                future.set_result(reply)

        request_id = self._tracker.add(float("inf"), settle)
        request.request_id = request_id
        request.reply_to = self.reply_channel
        try:
            self._bus.append(stream, request.SerializeToString())
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return None
        finally:
            self._tracker.discard(request_id)

    def _on_reply(self, channel: str, payload: bytes) -> None:
        reply = env.Envelope.FromString(payload)
        self._tracker.resolve(reply.request_id, reply)
