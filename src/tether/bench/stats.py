"""Statistics of benchmark runs: percentiles, latency summaries, medians and ratios.

Pure functions of lists and dicts, so the runner's arithmetic is tested without servers.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "CDF_FRACTIONS",
    "compare_runs",
    "kill_summary",
    "lookup",
    "match_latencies",
    "median_of",
    "percentile",
    "ratio",
    "summarize_ms",
]


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Return the nearest-rank percentile of an ascending list (fraction 0.5 is the median)."""
    if not sorted_values:
        raise ValueError("percentile of an empty list")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be between 0 and 1, got {fraction}")
    index = max(0, math.ceil(fraction * len(sorted_values)) - 1)
    return sorted_values[index]


CDF_FRACTIONS = (*(n / 100 for n in range(100)), 0.995, 0.999, 1.0)
"""Fractions at which `summarize_ms(..., cdf=True)` records the distribution: enough points
to draw it, tail included, without keeping every value."""


def summarize_ms(seconds: Iterable[float], *, cdf: bool = False) -> dict[str, Any]:
    """Return count, p50, p99 and max of durations given in seconds, in milliseconds.

    With `cdf`, also `cdf_ms`: [fraction, nearest-rank percentile in ms] at CDF_FRACTIONS,
    fraction 0 being the minimum, for plotting the distribution.
    """
    ordered = sorted(seconds)
    if not ordered:
        empty: dict[str, Any] = {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
        if cdf:
            empty["cdf_ms"] = []
        return empty
    summary: dict[str, Any] = {
        "count": len(ordered),
        "p50_ms": round(percentile(ordered, 0.50) * 1e3, 3),
        "p99_ms": round(percentile(ordered, 0.99) * 1e3, 3),
        "max_ms": round(ordered[-1] * 1e3, 3),
    }
    if cdf:
        summary["cdf_ms"] = [
            [fraction, round(percentile(ordered, fraction) * 1e3, 3)] for fraction in CDF_FRACTIONS
        ]
    return summary


def lookup(result: Mapping[str, Any], key: str) -> float | None:
    """Return the number at a dotted key ("latency.p99_ms") of a nested result, or None."""
    value: Any = result
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def median_of(results: Sequence[Mapping[str, Any]], key: str) -> float | None:
    """Return the median of one dotted key over several runs, skipping runs without it."""
    values = [value for value in (lookup(result, key) for result in results) if value is not None]
    return statistics.median(values) if values else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """Return numerator / denominator rounded to 3 places, or None when either is missing or 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return round(numerator / denominator, 3)


def compare_runs(
    runs: Mapping[str, Sequence[Mapping[str, Any]]], keys: Sequence[str], reference: str = "tether"
) -> dict[str, Any]:
    """Return the median of each key per target and each target's ratio reference / target.

    `runs` maps a target name ("tether", "floor", ...) to its runs. A ratio below 1 means
    the reference spent less than that target for a cost figure (bytes, CPU, latency).
    """
    medians = {
        target: {key: median_of(results, key) for key in keys} for target, results in runs.items()
    }
    ratios = {
        f"{reference}/{target}": {
            key: ratio(medians[reference][key], medians[target][key]) for key in keys
        }
        for target in runs
        if target != reference and reference in medians
    }
    return {"medians": medians, "ratios": ratios}


def match_latencies(
    sends: list[tuple[float, str, str]],
    receipts: list[tuple[float, str, str, str]],
    watchers_of: dict[str, list[str]],
) -> dict[str, Any]:
    """Match each notification to its change and summarize the latencies."""
    by_user: dict[str, list[tuple[float, str]]] = {}
    for sent_at, user, status in sends:
        by_user.setdefault(user, []).append((sent_at, status))
    for changes in by_user.values():
        changes.sort()
    expected = sum(len(watchers_of[user]) for _, user, _ in sends)

    latencies: list[float] = []
    # Per change: its first and its last notification, so the path and the fan-out separate.
    per_change: dict[tuple[str, float], list[float]] = {}
    unmatched = 0
    for received_at, _watcher, user, status in receipts:
        changes = by_user.get(user, [])
        position = bisect.bisect_right(changes, (received_at, "~"))
        while position > 0 and changes[position - 1][1] != status:
            position -= 1
        if position == 0:
            unmatched += 1
            continue
        sent_at = changes[position - 1][0]
        latencies.append(received_at - sent_at)
        per_change.setdefault((user, sent_at), []).append(received_at - sent_at)
    summary = summarize_ms(latencies, cdf=True)
    summary.update(changes=len(sends), expected_notifications=expected, unmatched=unmatched)
    summary["first_watcher"] = summarize_ms([min(times) for times in per_change.values()])
    summary["last_watcher"] = summarize_ms([max(times) for times in per_change.values()])
    return summary


def kill_summary(
    killed_at: float,
    receipts: list[tuple[float, str, str, str]],
    watchers_of: dict[str, list[str]],
) -> dict[str, Any]:
    """Return, over the killed gateway's users, how long until all their watchers saw OFFLINE."""
    seen: dict[str, dict[str, float]] = {}
    for received_at, watcher, user, status in receipts:
        if status == "offline" and user in watchers_of:
            seen.setdefault(user, {}).setdefault(watcher, received_at - killed_at)
    per_user = []
    incomplete = 0
    for user, watchers in watchers_of.items():
        if not watchers:
            continue
        times = seen.get(user, {})
        if len(times) < len(watchers):
            incomplete += 1
            continue
        per_user.append(max(times.values()))
    per_notification = [t for times in seen.values() for t in times.values()]
    users = summarize_ms(per_user)
    return {
        "users_all_watchers_notified": users["count"],
        "users_incomplete": incomplete,
        "user_p50_s": None if not per_user else round(users["p50_ms"] / 1e3, 3),
        "user_max_s": None if not per_user else round(users["max_ms"] / 1e3, 3),
        "notification_first_s": None if not per_notification else round(min(per_notification), 3),
        "notifications": len(per_notification),
    }
