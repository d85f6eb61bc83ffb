"""Tests of the gateway's rate and count limits, with time passed in as plain numbers."""

from __future__ import annotations

import dataclasses
import math
import random
import re
from typing import Any

import pytest

from tether.gateway.limits import (
    ConnectionRateLimiter,
    LimitsConfig,
    PerKeyCounter,
    TokenBucket,
)

# A start time far from 0, like a monotonic clock's, so that float rounding is realistic.
START = 10_000.0


# TokenBucket


def test_bucket_starts_full() -> None:
    bucket = TokenBucket(rate=50, burst=100, now=START)

    assert bucket.available(START) == 100
    for _ in range(100):
        assert bucket.take(START)
    assert not bucket.take(START)


def test_bucket_refills_at_rate() -> None:
    bucket = TokenBucket(rate=50, burst=100, now=START)
    for _ in range(100):
        bucket.take(START)

    assert bucket.available(START + 0.5) == pytest.approx(25)
    for _ in range(25):
        assert bucket.take(START + 0.5)
    assert not bucket.take(START + 0.5)


def test_bucket_refill_capped_at_burst() -> None:
    bucket = TokenBucket(rate=50, burst=100, now=START)
    bucket.take(START)

    assert bucket.available(START + 3600) == 100
    for _ in range(100):
        assert bucket.take(START + 3600)
    assert not bucket.take(START + 3600)


def test_bucket_token_due_exactly_at_boundary() -> None:
    # 1000.02 - 1000.0 is 0.01999999999998181 in binary floating point, so the refill is
    # about 1e-12 tokens short of one.
    bucket = TokenBucket(rate=50, burst=1, now=1000.0)
    assert bucket.take(1000.0)

    assert not bucket.take(1000.0199)
    assert bucket.take(1000.02)
    assert not bucket.take(1000.02)


def test_bucket_boundary_over_many_steps() -> None:
    # A client that sends exactly at the rate is never rejected, however long it runs.
    bucket = TokenBucket(rate=50, burst=1, now=START)
    now = START
    for step in range(10_000):
        assert bucket.take(now), f"rejected at step {step}"
        now += 0.02


def test_bucket_just_below_boundary_rejected() -> None:
    bucket = TokenBucket(rate=50, burst=1, now=START)
    bucket.take(START)

    assert not bucket.take(START + 0.02 - 1e-6)


def test_bucket_rejected_take_keeps_tokens() -> None:
    bucket = TokenBucket(rate=1, burst=3, now=START)

    assert not bucket.take(START, cost=4)
    assert bucket.available(START) == 3
    assert bucket.take(START, cost=3)
    assert bucket.available(START) == 0


def test_bucket_cost_above_burst_never_taken() -> None:
    bucket = TokenBucket(rate=1000, burst=10, now=START)

    assert not bucket.take(START + 3600, cost=11)
    assert bucket.take(START + 3600, cost=10)


def test_bucket_fractional_cost() -> None:
    bucket = TokenBucket(rate=1, burst=1, now=START)

    assert bucket.take(START, cost=0.5)
    assert bucket.take(START, cost=0.5)
    assert not bucket.take(START, cost=0.5)


def test_bucket_tokens_never_negative() -> None:
    bucket = TokenBucket(rate=50, burst=2, now=START)
    now = START
    for _ in range(1_000):
        bucket.take(now)
        now += 0.001

        assert bucket.tokens >= 0.0
        assert bucket.available(now) >= 0.0
        assert bucket.tokens <= bucket.burst


def test_bucket_flood_then_steady_rate() -> None:
    # A flood costs only its own tokens, so once it stops the client gets the normal rate back.
    bucket = TokenBucket(rate=10, burst=5, now=START)
    accepted = sum(bucket.take(START + i * 1e-6) for i in range(1_000))

    assert accepted == 5
    assert bucket.take(START + 1.0)


def test_bucket_time_backwards_adds_nothing() -> None:
    bucket = TokenBucket(rate=50, burst=10, now=START)
    for _ in range(10):
        bucket.take(START)

    assert not bucket.take(START - 100)
    assert bucket.tokens == 0.0
    assert bucket.available(START - 200) == 0.0


def test_bucket_refill_after_clock_step_back() -> None:
    bucket = TokenBucket(rate=50, burst=10, now=START)
    for _ in range(10):
        bucket.take(START)
    bucket.take(START - 100)

    # The refill counts from the earlier time, so the bucket does not freeze for 100 s.
    assert bucket.take(START - 100 + 0.02)
    assert not bucket.take(START - 100 + 0.02)


def test_bucket_same_instant_adds_nothing() -> None:
    bucket = TokenBucket(rate=1_000_000, burst=1, now=START)
    assert bucket.take(START)

    for _ in range(100):
        assert not bucket.take(START)


def test_bucket_available_does_not_change_state() -> None:
    bucket = TokenBucket(rate=50, burst=10, now=START)
    bucket.take(START, cost=10)

    assert bucket.available(START + 0.1) == pytest.approx(5)
    assert bucket.tokens == 0.0
    assert bucket.updated_at == START


def test_bucket_has_slots() -> None:
    bucket = TokenBucket(rate=1, burst=1, now=START)

    assert not hasattr(bucket, "__dict__")


@pytest.mark.parametrize(
    ("rate", "burst", "field"),
    [
        (0, 1, "rate"),
        (-1, 1, "rate"),
        (math.nan, 1, "rate"),
        (math.inf, 1, "rate"),
        (1, 0, "burst"),
        (1, 0.5, "burst"),
        (1, math.nan, "burst"),
        (1, math.inf, "burst"),
    ],
)
def test_bucket_rejects_invalid_settings(rate: float, burst: float, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field} "):
        TokenBucket(rate=rate, burst=burst, now=START)


# ConnectionRateLimiter


def _limiter(seed: int = 1, **overrides: Any) -> ConnectionRateLimiter:
    settings: dict[str, Any] = {"rate": 100, "burst": 10, "retry_window": 10.0, "now": START}
    settings.update(overrides)
    return ConnectionRateLimiter(rng=random.Random(seed), **settings)


def test_limiter_accepts_burst_then_rejects() -> None:
    limiter = _limiter()

    for _ in range(10):
        assert limiter.retry_after(START) is None
    assert limiter.retry_after(START) is not None
    assert limiter.rejected == 1


def test_limiter_accepts_again_after_refill() -> None:
    limiter = _limiter()
    for _ in range(11):
        limiter.retry_after(START)

    assert limiter.retry_after(START + 0.01) is None
    assert limiter.retry_after(START + 0.01) is not None
    assert limiter.rejected == 2


def test_limiter_delays_within_window() -> None:
    limiter = _limiter(burst=1, retry_window=10.0)
    limiter.retry_after(START)

    for _ in range(1_000):
        delay = limiter.retry_after(START)
        assert delay is not None
        assert 0.0 < delay <= 10.0


def test_limiter_delays_spread_over_window() -> None:
    limiter = _limiter(burst=1, retry_window=10.0)
    limiter.retry_after(START)
    delays = [limiter.retry_after(START) for _ in range(1_000)]
    seconds = [delay for delay in delays if delay is not None]

    assert len(seconds) == 1_000
    assert len(set(seconds)) == 1_000
    # Every one-second slice of the window gets a share of the storm. Uniform is 100 each.
    per_slice = [0] * 10
    for delay in seconds:
        per_slice[min(int(delay), 9)] += 1
    assert min(per_slice) >= 50, per_slice
    assert max(per_slice) <= 150, per_slice


def test_limiter_delays_follow_seed() -> None:
    first = _limiter(seed=7, burst=1)
    second = _limiter(seed=7, burst=1)

    delays_first = [first.retry_after(START) for _ in range(20)]
    delays_second = [second.retry_after(START) for _ in range(20)]

    assert delays_first == delays_second


def test_limiter_without_rng_still_spreads() -> None:
    limiter = ConnectionRateLimiter(rate=1, burst=1, retry_window=5.0, now=START)
    limiter.retry_after(START)
    delays = {limiter.retry_after(START) for _ in range(100)}

    assert None not in delays
    assert len(delays) > 1


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"retry_window": 0}, "retry_window"),
        ({"retry_window": -1.0}, "retry_window"),
        ({"retry_window": math.nan}, "retry_window"),
        ({"rate": 0}, "rate"),
        ({"burst": 0}, "burst"),
    ],
)
def test_limiter_rejects_invalid_settings(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field} "):
        _limiter(**overrides)


# PerKeyCounter


def test_counter_rejects_above_limit() -> None:
    counter: PerKeyCounter[str] = PerKeyCounter(limit=3)

    for _ in range(3):
        assert counter.acquire("192.0.2.1")
    assert not counter.acquire("192.0.2.1")
    assert counter.count("192.0.2.1") == 3


def test_counter_keys_independent() -> None:
    counter: PerKeyCounter[str] = PerKeyCounter(limit=1)

    assert counter.acquire("192.0.2.1")
    assert counter.acquire("192.0.2.2")
    assert not counter.acquire("192.0.2.1")
    assert len(counter) == 2


def test_counter_release_allows_acquire() -> None:
    counter: PerKeyCounter[str] = PerKeyCounter(limit=2)
    counter.acquire("192.0.2.1")
    counter.acquire("192.0.2.1")

    counter.release("192.0.2.1")

    assert counter.count("192.0.2.1") == 1
    assert counter.acquire("192.0.2.1")
    assert not counter.acquire("192.0.2.1")


def test_counter_removes_entry_at_zero() -> None:
    counter: PerKeyCounter[str] = PerKeyCounter(limit=5)
    counter.acquire("192.0.2.1")
    counter.acquire("192.0.2.1")

    counter.release("192.0.2.1")
    assert len(counter) == 1
    counter.release("192.0.2.1")

    assert len(counter) == 0
    assert counter.count("192.0.2.1") == 0


def test_counter_memory_freed_after_many_keys() -> None:
    counter: PerKeyCounter[str] = PerKeyCounter(limit=1)
    keys = [f"10.0.{i // 256}.{i % 256}" for i in range(10_000)]
    for key in keys:
        counter.acquire(key)
    assert len(counter) == 10_000

    for key in keys:
        counter.release(key)

    assert len(counter) == 0


def test_counter_rejected_acquire_adds_no_entry() -> None:
    counter: PerKeyCounter[str] = PerKeyCounter(limit=1)
    counter.acquire("192.0.2.1")

    assert not counter.acquire("192.0.2.1")
    counter.release("192.0.2.1")

    assert len(counter) == 0


def test_counter_unmatched_release_raises() -> None:
    counter: PerKeyCounter[str] = PerKeyCounter(limit=1)

    with pytest.raises(KeyError, match=re.escape("192.0.2.1")):
        counter.release("192.0.2.1")
    assert len(counter) == 0


def test_counter_double_release_raises() -> None:
    counter: PerKeyCounter[str] = PerKeyCounter(limit=1)
    counter.acquire("192.0.2.1")
    counter.release("192.0.2.1")

    with pytest.raises(KeyError):
        counter.release("192.0.2.1")


@pytest.mark.parametrize("limit", [0, -1])
def test_counter_rejects_invalid_limit(limit: int) -> None:
    with pytest.raises(ValueError, match=r"^limit "):
        PerKeyCounter[str](limit=limit)


# LimitsConfig


def test_config_defaults() -> None:
    config = LimitsConfig()

    assert config.frames_per_second == 100.0
    assert config.frame_burst == 200
    assert config.new_connections_per_second == 1000.0
    assert config.new_connection_burst == 2000
    assert config.retry_window == 10.0
    assert config.max_connections_per_ip == 1000
    assert config.max_devices_per_user == 10
    assert config.max_watched_users == 5000


def test_config_is_frozen() -> None:
    config = LimitsConfig()

    with pytest.raises(dataclasses.FrozenInstanceError):
        config.frame_burst = 1  # type: ignore[misc]


def test_config_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        LimitsConfig(50.0)  # type: ignore[call-arg]


def test_config_accepts_minimum_values() -> None:
    config = LimitsConfig(
        frames_per_second=0.1,
        frame_burst=1,
        new_connections_per_second=0.1,
        new_connection_burst=1,
        retry_window=0.1,
        max_connections_per_ip=1,
        max_devices_per_user=1,
        max_watched_users=1,
    )

    assert config.frame_burst == 1


RATE_FIELDS = ["frames_per_second", "new_connections_per_second", "retry_window"]
COUNT_FIELDS = [
    "frame_burst",
    "new_connection_burst",
    "max_connections_per_ip",
    "max_devices_per_user",
    "max_watched_users",
]


@pytest.mark.parametrize("field", RATE_FIELDS)
@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf])
def test_config_rejects_invalid_rate(field: str, value: float) -> None:
    overrides: dict[str, Any] = {field: value}

    with pytest.raises(ValueError, match=f"^{field} "):
        LimitsConfig(**overrides)


@pytest.mark.parametrize("field", COUNT_FIELDS)
@pytest.mark.parametrize("value", [0, -5, 2.5, True, "10"])
def test_config_rejects_invalid_count(field: str, value: object) -> None:
    overrides: dict[str, Any] = {field: value}

    with pytest.raises(ValueError, match=f"^{field} "):
        LimitsConfig(**overrides)


def test_config_values_build_limiters() -> None:
    config = LimitsConfig()

    bucket = TokenBucket(config.frames_per_second, config.frame_burst, now=START)
    limiter = ConnectionRateLimiter(
        config.new_connections_per_second,
        config.new_connection_burst,
        config.retry_window,
        now=START,
        rng=random.Random(0),
    )
    counter: PerKeyCounter[str] = PerKeyCounter(config.max_connections_per_ip)

    assert bucket.available(START) == 200
    assert limiter.retry_after(START) is None
    assert counter.acquire("192.0.2.1")
