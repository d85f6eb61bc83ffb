"""`tether bench`: its statistics, its Socket.IO client framing and tiny runs of real scenarios.

The smoke runs start real servers and load processes on free ports of 127.0.0.1 and check that
the results file is complete and sane. They assert counts, never speed: a benchmark is not a
timed test. The Socket.IO peers need npm and a setup step, so they are not run here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tether.bench import load as load_module
from tether.bench.cli import _check
from tether.bench.clients import SocketIoClient
from tether.bench.faults import watch_graph
from tether.bench.report import markdown_table
from tether.bench.runner import split
from tether.bench.stats import (
    compare_runs,
    kill_summary,
    match_latencies,
    percentile,
    ratio,
    summarize_ms,
)

ROOT = Path(__file__).resolve().parent.parent


# --- statistics ------------------------------------------------------------------------------


def test_percentile_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0


def test_percentile_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        percentile([], 0.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        percentile([1.0], 1.5)


def test_summarize_ms_units_and_empty() -> None:
    summary = summarize_ms([0.003, 0.001, 0.002])
    assert summary == {"count": 3, "p50_ms": 2.0, "p99_ms": 3.0, "max_ms": 3.0}
    assert summarize_ms([])["count"] == 0
    assert summarize_ms([])["p99_ms"] is None


def test_compare_runs_medians_and_ratios() -> None:
    runs: dict[str, list[dict[str, Any]]] = {
        "tether": [{"cpu": 10.0, "lat": {"p99_ms": 2.0}}, {"cpu": 30.0, "lat": {"p99_ms": 4.0}}],
        "peer": [{"cpu": 40.0, "lat": {"p99_ms": 1.0}}, {"cpu": 40.0}],
    }
    summary = compare_runs(runs, ["cpu", "lat.p99_ms"])
    assert summary["medians"]["tether"] == {"cpu": 20.0, "lat.p99_ms": 3.0}
    assert summary["medians"]["peer"] == {"cpu": 40.0, "lat.p99_ms": 1.0}
    assert summary["ratios"]["tether/peer"] == {"cpu": 0.5, "lat.p99_ms": 3.0}


def test_ratio_of_missing_values() -> None:
    assert ratio(None, 2.0) is None
    assert ratio(2.0, 0.0) is None
    assert ratio(1.0, 3.0) == 0.333


def test_match_latencies_pairs_each_notification_with_its_change() -> None:
    sends = [(10.0, "c1", "away"), (20.0, "c1", "online")]
    receipts = [
        (10.004, "w1", "c1", "away"),
        (10.008, "w2", "c1", "away"),
        (20.002, "w1", "c1", "online"),
        (5.0, "w1", "c1", "away"),  # before any change: unmatched
    ]
    summary = match_latencies(sends, receipts, {"c1": ["w1", "w2"]})
    assert summary["count"] == 3
    assert summary["unmatched"] == 1
    assert summary["expected_notifications"] == 4
    assert summary["max_ms"] == pytest.approx(8.0, abs=0.01)
    assert summary["first_watcher"]["count"] == 2


def test_kill_summary_waits_for_every_watcher() -> None:
    receipts = [
        (105.0, "w1", "k1", "offline"),
        (105.5, "w2", "k1", "offline"),
        (106.0, "w1", "k2", "offline"),
    ]
    summary = kill_summary(100.0, receipts, {"k1": ["w1", "w2"], "k2": ["w1", "w3"]})
    assert summary["users_all_watchers_notified"] == 1
    assert summary["users_incomplete"] == 1
    assert summary["user_max_s"] == 5.5
    assert summary["notification_first_s"] == 5.0


def test_split_keeps_every_item_in_order() -> None:
    chunks = split(list(range(10)), 3)
    assert chunks == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert split([], 2) == [[], []]
    with pytest.raises(ValueError, match="at least 1"):
        split([1], 0)


def test_watch_graph_is_mutual_and_sized() -> None:
    graph, watchers_of = watch_graph(["w1", "w2"], ["a", "b", "c"], 2)
    assert all(len(graph[w]) == 2 for w in ("w1", "w2"))
    for user, watchers in watchers_of.items():
        for watcher in watchers:
            assert user in graph[watcher]
            assert watcher in graph[user]


def test_markdown_table_rows_and_ratios() -> None:
    runs: dict[str, list[dict[str, Any]]] = {
        "tether": [{"rss": 3451.0}],
        "floor": [{"rss": 1464.0}],
    }
    results = {**compare_runs(runs, ["rss"]), "settings": {"repeat": 1}}
    lines = markdown_table(results).splitlines()
    assert lines[0] == "| figure | tether (median of 1) | floor (median of 1) | tether/floor |"
    assert lines[2] == "| rss | 3,451 | 1,464 | 2.36 |"
    assert len(lines) == 3


def test_floor_needs_embedded_tcp() -> None:
    from tether.cli.main import _build_parser

    parsed = _build_parser().parse_args(
        ["bench", "idle", "--targets", "floor", "--mode", "cluster"]
    )
    assert "floor" in _check(parsed)
    parsed = _build_parser().parse_args(["bench", "crash", "--mode", "embedded"])
    assert "--mode cluster" in _check(parsed)
    parsed = _build_parser().parse_args(["bench", "idle", "--targets", "tether,floor"])
    assert _check(parsed) == ""


# --- the Socket.IO client's framing ----------------------------------------------------------


class _Transport:
    """Stands in for a picows transport: records the text messages the client sends."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, kind: object, payload: bytes) -> None:
        self.sent.append(payload.decode())


async def test_socketio_client_engineio_framing() -> None:
    load = load_module.Load()
    client = SocketIoClient(load, "alice")
    transport = _Transport()
    client.transport = transport

    client.on_message(b'0{"sid":"x","pingInterval":4000,"pingTimeout":20000}')
    assert transport.sent == ['40{"user": "alice"}']
    client.on_message(b'40{"sid":"y"}')
    assert client.ready.done()
    assert client.open

    client.on_message(b"2")
    assert transport.sent[-1] == "3"
    assert load.counters["heartbeats"] == 1

    load.pending["7"] = 1.0
    client.send_message("bob", "123.5", 7)
    assert transport.sent[-1] == '427["dm", {"to": "bob", "body": "123.5"}]'
    client.on_message(b"437[true]")
    assert "7" not in load.pending
    assert len(load.ack_seconds) == 1

    client.on_message(b'42["dm",{"from":"bob","body":"1.0"}]')
    assert len(load.delivery_seconds) == 1
    client.on_message(b'42["presence",{"user":"bob","status":"away"}]')
    assert load.receipts[-1][1:] == ("alice", "bob", "away")
    client.set_status("online")
    assert transport.sent[-1] == '42["status", "online"]'


# --- smoke runs ------------------------------------------------------------------------------


def _bench(tmp_path: Path, *arguments: str) -> dict[str, Any]:
    output = tmp_path / "results.json"
    command = [sys.executable, "-m", "tether", "bench", *arguments,
               "--results-dir", str(tmp_path), "--output", str(output)]  # fmt: skip
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"results written to {output}" in result.stdout
    data: dict[str, Any] = json.loads(output.read_text())
    return data


def test_bench_help_lists_scenarios() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tether", "bench", "--help"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    for scenario in ("setup", "idle", "direct", "storm", "crash", "presence"):
        assert scenario in result.stdout


def test_idle_smoke(tmp_path: Path) -> None:
    data = _bench(tmp_path, "idle", "--connections", "50", "--duration", "2",
                  "--heartbeat-interval", "1")  # fmt: skip
    assert data["scenario"] == "idle"
    assert data["machine"]["cpus"] >= 1
    (run,) = data["runs"]["tether"]
    assert run["connections"] == 50
    assert run["still_open"] == 50
    assert run["disconnects"] == 0
    # 50 connections heartbeating every second for 2 s, give or take a tick at each end.
    assert 50 <= run["heartbeats"] <= 200
    assert run["rss_bytes_per_connection"] > 0
    assert run["server_cpu_percent"] >= 0
    assert set(data["medians"]["tether"]) >= {
        "rss_bytes_per_connection",
        "server_cpu_us_per_heartbeat",
    }


def test_direct_smoke(tmp_path: Path) -> None:
    data = _bench(tmp_path, "direct", "--pairs", "10", "--rate", "100", "--duration", "2")
    (run,) = data["runs"]["tether"]
    assert run["sent"] == 200
    assert run["acked"] == 200
    assert run["delivered"] == 200
    latency = run["delivery_latency"]
    assert latency["count"] == 200
    assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert run["ack_latency"]["p50_ms"] > 0
    assert run["server_cpu_us_per_message"] is None or run["server_cpu_us_per_message"] > 0
    assert data["medians"]["tether"]["delivery_latency.p99_ms"] == latency["p99_ms"]


def test_direct_smoke_against_floor(tmp_path: Path) -> None:
    data = _bench(tmp_path, "direct", "--pairs", "5", "--rate", "50", "--duration", "1",
                  "--targets", "tether,floor")  # fmt: skip
    (floor,) = data["runs"]["floor"]
    assert floor["delivered"] == floor["sent"] == 50
    assert "tether/floor" in data["ratios"]


def test_presence_smoke(tmp_path: Path) -> None:
    data = _bench(tmp_path, "presence", "--changers", "10", "--joiners", "5", "--watchers", "5",
                  "--contacts", "3", "--changes", "10", "--change-rate", "20",
                  "--join-rate", "20", "--chat-pairs", "2", "--chat-rate", "10",
                  "--grace-period", "0.5")  # fmt: skip
    (run,) = data["runs"]["tether"]
    for phase in ("status", "join", "leave"):
        latency = run[phase]["latency"]
        assert latency["count"] == latency["expected_notifications"], phase
        assert latency["unmatched"] == 0, phase
        assert latency["p50_ms"] > 0, phase
        assert run[phase]["chat"]["delivered"] == run[phase]["chat"]["sent"], phase
    # A leave reaches contacts only after the grace period.
    assert run["leave"]["latency"]["p50_ms"] >= 500


def test_crash_smoke(tmp_path: Path) -> None:
    data = _bench(tmp_path, "crash", "--users", "10", "--watchers", "5", "--contacts", "3",
                  "--lease-timeout", "1")  # fmt: skip
    (run,) = data["runs"]["tether"]
    assert run["users_incomplete"] == 0
    assert run["users_all_watchers_notified"] >= 1
    assert run["notifications"] == run["expected"]
    assert run["user_max_s"] > 0
