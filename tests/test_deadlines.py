"""Tests of the gateway's timing wheel, with time passed in as plain numbers."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.gateway.deadlines import DeadlineWheel

# A start time far from 0, like a monotonic clock's, so that float rounding is realistic.
START = 10_000.0
TICK = 0.25


def test_due_once_its_tick_comes() -> None:
    wheel: DeadlineWheel[str] = DeadlineWheel(TICK)
    wheel.schedule("a", START + 1.1)

    assert wheel.due(START + 0.99) == []
    assert wheel.due(START + 1.0) == ["a"]  # 1.1 lies in the tick that starts at 1.0
    assert wheel.due(START + 1.5) == []


def test_due_earliest_tick_first() -> None:
    wheel: DeadlineWheel[str] = DeadlineWheel(TICK)
    wheel.schedule("late", START + 2.0)
    wheel.schedule("early", START + 1.0)
    wheel.schedule("middle", START + 1.5)

    assert wheel.due(START + 3.0) == ["early", "middle", "late"]


def test_schedule_replaces_deadline() -> None:
    wheel: DeadlineWheel[str] = DeadlineWheel(TICK)
    wheel.schedule("a", START + 1.0)
    wheel.schedule("a", START + 5.0)

    assert wheel.due(START + 4.0) == []
    assert wheel.due(START + 5.0) == ["a"]
    assert len(wheel) == 1


def test_discard_removes_key() -> None:
    wheel: DeadlineWheel[str] = DeadlineWheel(TICK)
    wheel.schedule("a", START + 1.0)
    wheel.schedule("b", START + 1.0)
    wheel.discard("a")
    wheel.discard("never scheduled")

    assert "a" not in wheel
    assert list(wheel) == ["b"]
    assert wheel.due(START + 2.0) == ["b"]


def test_due_keys_stay_members_until_scheduled_or_discarded() -> None:
    wheel: DeadlineWheel[str] = DeadlineWheel(TICK)
    wheel.schedule("a", START + 1.0)
    wheel.schedule("b", START + 1.0)

    assert wheel.due(START + 1.0) == ["a", "b"]
    assert "a" in wheel
    assert len(wheel) == 2
    wheel.discard("a")
    wheel.schedule("b", START + 3.0)
    assert list(wheel) == ["b"]
    assert wheel.due(START + 3.0) == ["b"]


def test_passed_tick_goes_to_next() -> None:
    wheel: DeadlineWheel[str] = DeadlineWheel(TICK)
    assert wheel.due(START + 1.0) == []
    # Its deadline lies in the tick just swept, so the next due() returns it.
    wheel.schedule("a", START + 1.1)

    assert wheel.due(START + 1.1) == []  # still the same tick
    assert wheel.due(START + 1.25) == ["a"]


def test_same_tick_due_once() -> None:
    wheel: DeadlineWheel[str] = DeadlineWheel(TICK)
    wheel.schedule("a", START + 1.0)

    assert wheel.due(START + 1.0) == ["a"]
    assert wheel.due(START + 1.0) == []
    assert wheel.due(START + 0.5) == []  # a clock that went back returns nothing new


@pytest.mark.parametrize("resolution", [0.0, -1.0, math.inf, math.nan])
def test_invalid_resolution_rejected(resolution: float) -> None:
    with pytest.raises(ValueError, match="resolution"):
        DeadlineWheel(resolution)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(min_value=0.0, max_value=20.0), min_size=1, max_size=30),
    st.floats(min_value=0.0, max_value=TICK),
)
def test_sweep_finds_each_deadline_at_first_sweep_after(offsets: list[float], phase: float) -> None:
    # A sweep every TICK seconds, as the gateway runs it, checks each deadline and schedules
    # the keys whose deadline has not come back in: each key is found at the first sweep at
    # or after its deadline.
    deadlines = {key: START + offset for key, offset in enumerate(offsets)}
    wheel: DeadlineWheel[int] = DeadlineWheel(TICK)
    for key, deadline in deadlines.items():
        wheel.schedule(key, deadline)
    found: dict[int, float] = {}

    first_sweep = now = START + phase
    while len(found) < len(deadlines):
        for key in wheel.due(now):
            if deadlines[key] <= now:
                found[key] = now
                wheel.discard(key)
            else:
                wheel.schedule(key, deadlines[key])
        now += TICK
        assert now < START + 30.0, f"not found: {set(deadlines) - set(found)}"

    for key, deadline in deadlines.items():
        assert deadline <= found[key] < max(deadline, first_sweep) + TICK
