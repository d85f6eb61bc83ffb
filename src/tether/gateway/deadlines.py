"""Deadlines of many keys, found by one periodic sweep: a timing wheel, sans-I/O.

The gateway closes a connection that sent nothing for `offline_timeout`. Keeping connections
sorted by their last frame costs work on every frame. `DeadlineWheel` instead keeps each key
in a bucket for the tick of its deadline (`floor(deadline / resolution)`), and a frame only
stores its time on the connection. The sweep calls `due` for the keys of every tick that has
come, checks each key's real deadline and schedules the live ones again, so a connection that
heartbeats every few seconds moves between buckets about once per timeout.

Nothing here reads a clock: the caller passes times in seconds from one monotonic clock.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

__all__ = ["DeadlineWheel"]

KeyT = TypeVar("KeyT", bound=Hashable)

# Below every tick, so the first due() may return any tick.
_BEFORE_ALL_TICKS = -(1 << 63)


class DeadlineWheel(Generic[KeyT]):
    """Keys with deadlines, returned by `due` once their deadline's tick has come.

    A key is returned by the first `due(now)` whose now lies in or after the tick of its
    deadline, so at most `resolution` seconds before the deadline. The caller checks the
    real deadline and calls `schedule` again for a key that is still alive. A key scheduled
    into a tick that `due` has passed already goes into the next tick, so calling `due`
    once per `resolution` finds every deadline at the first call at or after it.

    Membership (`in`, `len`, iteration) covers every key scheduled and not discarded,
    including keys that `due` returned and that wait to be scheduled again.
    """

    __slots__ = ("_buckets", "_swept", "_where", "resolution")

    def __init__(self, resolution: float) -> None:
        """Create an empty wheel with ticks of resolution seconds."""
        if not (math.isfinite(resolution) and resolution > 0):
            raise ValueError(f"resolution must be a positive finite number, got {resolution!r}")
        self.resolution = resolution
        """Seconds per tick."""
        self._buckets: dict[int, dict[KeyT, None]] = {}
        # The bucket each key is in, or was in when due() returned it. Its keys are the
        # wheel's keys.
        self._where: dict[KeyT, dict[KeyT, None]] = {}
        self._swept = _BEFORE_ALL_TICKS  # the last tick due() has returned

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def __iter__(self) -> Iterator[KeyT]:
        return iter(self._where)

    def schedule(self, key: KeyT, deadline: float) -> None:
        """Schedule key for deadline, replacing any deadline it had."""
        tick = max(math.floor(deadline / self.resolution), self._swept + 1)
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = {}
        previous = self._where.get(key)
        if previous is not None:
            previous.pop(key, None)
        bucket[key] = None
        self._where[key] = bucket

    def discard(self, key: KeyT) -> None:
        """Remove key from the wheel. A key that the wheel does not contain is ignored."""
        bucket = self._where.pop(key, None)
        if bucket is not None:
            bucket.pop(key, None)

    def due(self, now: float) -> list[KeyT]:
        """Return the keys of every tick up to now's, earliest tick first.

        They stay in the wheel without a deadline until the caller schedules or discards
        each of them.
        """
        current = math.floor(now / self.resolution)
        if current <= self._swept:
            return []
        keys: list[KeyT] = []
        for tick in sorted(tick for tick in self._buckets if tick <= current):
            bucket = self._buckets.pop(tick)
            keys.extend(bucket)
            bucket.clear()  # the keys' _where entries still point at it
        self._swept = current
        return keys
