"""What a Redis server of a benchmark handles in a window: commands and pub/sub messages.

Redis 7.0 counts calls per command (`INFO commandstats`) but not the pub/sub messages it sends
to subscribers. A `RedisTraffic` therefore subscribes to the pattern `*` on a connection of its
own, so it receives a copy of every PUBLISH with its channel. It multiplies each channel's
publishes by the receivers the channel had at the end of the window: its subscribers (`PUBSUB
NUMSUB`) plus the pattern subscriptions of other clients (`psub` in `CLIENT LIST`). Sharded
pub/sub (SPUBLISH, used on a Redis Cluster) does not reach pattern subscribers, so it is not
counted; the benchmark starts a standalone server.

The extra subscriber costs Redis one more message per publish, which the counts exclude.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import Any

import redis.asyncio as redis

__all__ = ["RedisTraffic", "net_per_unit"]


class RedisTraffic:
    """Commands and pub/sub messages of one Redis server, counted between start() and stop()."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: redis.Redis | None = None
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._published: Counter[str] = Counter()
        self._commands_before: dict[str, int] = {}
        self._started = 0.0

    async def open(self) -> None:
        """Connect and subscribe to every channel; call once before the first window."""
        self._client = redis.Redis.from_url(self.url)
        self._pubsub = self._client.pubsub()
        await self._pubsub.psubscribe("*")
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._pubsub is not None:
            await self._pubsub.aclose()
        if self._client is not None:
            await self._client.aclose()

    async def start(self) -> None:
        """Begin a window: reset the publish counts and read the command counts."""
        self._published = Counter()
        self._commands_before = await self._command_calls()
        self._started = time.monotonic()

    async def stop(self) -> dict[str, Any]:
        """End the window and return what Redis handled in it.

        Returns `seconds`, `commands` (calls per command, this object's own left out),
        `published` (publishes per channel), `receivers` (per channel) and `messages_out`
        (the messages Redis sent to subscribers, the sum of publishes times receivers).
        """
        seconds = time.monotonic() - self._started
        # A publish made just before the window closed may still be on its way here.
        await asyncio.sleep(0.05)
        published = dict(self._published)
        after = await self._command_calls()
        commands = {
            name: calls - self._commands_before.get(name, 0)
            for name, calls in after.items()
            if calls != self._commands_before.get(name, 0)
        }
        assert self._client is not None
        # Redis counts a command after running it, so the delta contains the INFO of start() but
        # not this one. CLIENT LIST and PUBSUB NUMSUB below run after it.
        commands["info"] = commands.get("info", 0) - 1
        commands = {name: calls for name, calls in commands.items() if calls}
        receivers: dict[str, int] = {}
        if published:
            numsub = await self._client.pubsub_numsub(*published)
            patterns = await self._pattern_subscriptions()
            receivers = {_text(channel): count + patterns for channel, count in numsub}
        return {
            "seconds": round(seconds, 3),
            "commands": commands,
            "published": published,
            "receivers": receivers,
            "messages_out": sum(n * receivers.get(c, 0) for c, n in published.items()),
        }

    async def _read(self) -> None:
        assert self._pubsub is not None
        async for message in self._pubsub.listen():
            if message["type"] == "pmessage":
                self._published[_text(message["channel"])] += 1

    async def _command_calls(self) -> dict[str, int]:
        assert self._client is not None
        info = await self._client.info("commandstats")
        return {
            name.removeprefix("cmdstat_"): int(stats["calls"])
            for name, stats in info.items()
            if isinstance(stats, dict)
        }

    async def _pattern_subscriptions(self) -> int:
        """Return the pattern subscriptions of every client but this object's own.

        NOTE: each is counted as a receiver of every channel. That holds for the `*` of this
        object and for the one pattern per process of @socket.io/redis-adapter, which matches
        every broadcast channel of its namespace, but it is not checked per pattern.
        """
        assert self._client is not None
        clients = await self._client.client_list()
        return sum(int(client.get("psub", 0)) for client in clients) - 1


def net_per_unit(window: dict[str, Any], baseline: dict[str, Any], units: int) -> dict[str, Any]:
    """Return the window's counts minus the baseline's for the same length of time, per unit.

    `baseline` is a quiet window of the same server, with timers and heartbeats only. Its
    counts are scaled to the length of `window` and subtracted. The rest is divided by `units`
    (the group messages, for example) and rounded to 3 places.
    """
    if units <= 0:
        raise ValueError(f"units must be positive, got {units}")
    scale = window["seconds"] / baseline["seconds"] if baseline["seconds"] > 0 else 0.0

    def net(now: dict[str, float], before: dict[str, float]) -> dict[str, float]:
        names = set(now) | set(before)
        values = {name: (now.get(name, 0) - before.get(name, 0) * scale) / units for name in names}
        return {
            name: round(value, 3) for name, value in sorted(values.items()) if abs(value) >= 0.0005
        }

    return {
        "commands": net(window["commands"], baseline["commands"]),
        "published": net(window["published"], baseline["published"]),
        "messages_out": round(
            (window["messages_out"] - baseline["messages_out"] * scale) / units, 3
        ),
    }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
