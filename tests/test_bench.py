"""`tether bench`: its statistics, its Socket.IO client framing, its plots and tiny runs of real
scenarios.

The smoke runs start real servers and load processes on free ports of 127.0.0.1 and check that
the results file is complete and sane. They assert counts, never speed: a benchmark is not a
timed test. The Socket.IO peers need npm and a setup step, so they are not run here.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import subprocess
import sys
import time
from array import array
from pathlib import Path
from typing import Any

import pytest

from tether.bench import load as load_module
from tether.bench.cli import _check
from tether.bench.clients import SocketIoClient, TetherSocketClient
from tether.bench.faults import watch_graph
from tether.bench.group import _deliveries, net_cpu
from tether.bench.plots import plot_file
from tether.bench.procfs import peer_addresses
from tether.bench.profile import summarize
from tether.bench.redis_traffic import net_per_unit
from tether.bench.report import markdown_table
from tether.bench.runner import split
from tether.bench.servers import SECRET
from tether.bench.stats import (
    CDF_FRACTIONS,
    compare_runs,
    kill_summary,
    match_latencies,
    percentile,
    ratio,
    summarize_ms,
)
from tether.protocol import tether_pb2 as pb
from tether.protocol.framing import StreamDecoder, prefix_frame

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


def test_summarize_ms_cdf_points() -> None:
    summary = summarize_ms([n / 1000 for n in range(1, 201)], cdf=True)
    points = summary["cdf_ms"]
    assert len(points) == len(CDF_FRACTIONS)
    assert points[0] == [0.0, 1.0]
    assert points[50] == [0.5, 100.0]
    assert points[-1] == [1.0, 200.0]
    assert [ms for _, ms in points] == sorted(ms for _, ms in points)
    assert summarize_ms([], cdf=True)["cdf_ms"] == []


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


def test_group_deliveries_merge_processes() -> None:
    # Per message: [deliveries, latest delay, deliveries with a socket time, earliest and
    # latest delay until the socket had it]. The second process knew no socket time of
    # message 1, so message 1 has no socket figures.
    received = [
        {"deliveries": 5, "frames": 5,
         "messages": {"0": [2, 0.004, 2, 0.001, 0.003], "1": [2, 0.010, 2, 0.002, 0.009],
                      "2": [1, 0.002, 1, 0.001, 0.001]},
         "delays": [0.001, 0.004, 0.003, 0.010, 0.002],
         "socket_delays": [0.001, 0.003, 0.002, 0.009, 0.001]},
        {"deliveries": 4, "frames": 2,
         "messages": {"0": [2, 0.006, 2, 0.002, 0.005], "1": [2, 0.003, 0, None, None]},
         "delays": [0.002, 0.006, 0.003, 0.001],
         "socket_delays": [0.002, 0.005]},
    ]  # fmt: skip
    merged = _deliveries(received, members=4, sent=3)
    assert merged["deliveries"] == 9
    assert merged["expected_deliveries"] == 12
    assert merged["deliveries_per_frame"] == 1.286  # 9 deliveries in 7 frames
    # Message 2 reached one member of four, so only messages 0 and 1 count for the last member.
    assert merged["complete_messages"] == 2
    assert merged["excess_deliveries"] == 0
    assert merged["last_member_latency"]["count"] == 2
    assert merged["last_member_latency"]["p50_ms"] == 6.0
    assert merged["last_member_latency"]["max_ms"] == 10.0
    assert merged["delivery_latency"]["count"] == 9
    # Only message 0 has a socket time for all four members: the last at 5 ms, the first
    # at 1 ms, so the fan-out spread over 4 ms.
    assert merged["last_member_socket_latency"]["count"] == 1
    assert merged["last_member_socket_latency"]["max_ms"] == 5.0
    assert merged["fanout_spread"]["max_ms"] == 4.0
    assert merged["delivery_socket_latency"]["count"] == 7


def test_group_deliveries_without_socket_times() -> None:
    received = [{"deliveries": 2, "frames": 2, "messages": {"0": [2, 0.004, 0, None, None]},
                 "delays": [0.001, 0.004], "socket_delays": []}]  # fmt: skip
    merged = _deliveries(received, members=2, sent=1)
    assert merged["last_member_latency"]["max_ms"] == 4.0
    assert "last_member_socket_latency" not in merged
    assert "fanout_spread" not in merged


def test_net_cpu_subtracts_baseline_rate() -> None:
    cpu = {"gw1": 1.0, "redis": 0.1, "machine": 3.0, "wall": 10.0}
    baseline = {"gw1": 0.2, "redis": 0.05, "machine": 1.0, "wall": 5.0}
    assert net_cpu(cpu, baseline) == {"gw1": 0.6, "redis": 0.0}


def test_net_per_unit_of_redis_windows() -> None:
    window = {
        "seconds": 10.0,
        "commands": {"publish": 42, "ping": 10},
        "published": {"tether.group.big": 20, "tether.reply.gw1": 20, "other": 2},
        "messages_out": 82,
    }
    baseline = {
        "seconds": 5.0,
        "commands": {"ping": 5},
        "published": {"other": 1},
        "messages_out": 1,
    }
    per_message = net_per_unit(window, baseline, 20)
    assert per_message["commands"] == {"publish": 2.1}
    assert per_message["published"] == {"tether.group.big": 1.0, "tether.reply.gw1": 1.0}
    assert per_message["messages_out"] == 4.0
    with pytest.raises(ValueError, match="positive"):
        net_per_unit(window, baseline, 0)


def test_peer_addresses_read_kernel_table(tmp_path: Path) -> None:
    table = tmp_path / "tcp"
    table.write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue\n"
        # Port 0x1F90 (8080) listening, then two established from 127.0.0.2 and one from
        # 127.0.0.3, one established on another port and one in TIME_WAIT (06).
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000\n"
        "   1: 0100007F:1F90 0200007F:9C40 01 00000000:00000000\n"
        "   2: 0100007F:1F90 0200007F:9C41 01 00000000:00000000\n"
        "   3: 0100007F:1F90 0300007F:9C40 01 00000000:00000000\n"
        "   4: 0100007F:0050 0400007F:9C40 01 00000000:00000000\n"
        "   5: 0100007F:1F90 0500007F:9C40 06 00000000:00000000\n"
    )
    assert peer_addresses([8080], path=str(table)) == {"127.0.0.2": 2, "127.0.0.3": 1}


def test_profile_summary_self_and_inclusive(tmp_path: Path) -> None:
    stacks = tmp_path / "stacks.txt"
    stacks.write_text(
        "main (a.py:1);loop (a.py:5);commit (db.py:9) 6\n"
        "main (a.py:1);loop (a.py:5);write (net.py:3) 3\n"
        "main (a.py:1);loop (a.py:5) 1\n"
        "not a stack line\n"
    )
    summary = summarize(stacks, top=2)
    assert summary["samples"] == 10
    assert summary["self"] == [["commit (db.py:9)", 60.0], ["write (net.py:3)", 30.0]]
    assert summary["inclusive"][0][1] == 100.0
    assert len(summary["inclusive"]) == 2
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert summarize(empty) == {"samples": 0, "self": [], "inclusive": []}


def test_loopback_sources_range() -> None:
    assert load_module.loopback_sources(3) == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    with pytest.raises(ValueError, match="1 to 254"):
        load_module.loopback_sources(0)
    with pytest.raises(ValueError, match="1 to 254"):
        load_module.loopback_sources(255)


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


def test_member_gateways_checked() -> None:
    from tether.cli.main import _build_parser

    def problem(*options: str) -> str:
        return _check(_build_parser().parse_args(["bench", "group", *options]))

    assert "--member-gateways" in problem("--member-gateways", "2")
    assert "--member-gateways" in problem("--mode", "cluster", "--member-gateways", "4")
    assert problem("--mode", "cluster", "--member-gateways", "3") == ""
    assert problem() == ""


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

    client.send_group("big", "0:123.5", 8)
    assert transport.sent[-1] == '428["gm", {"group": "big", "body": "0:123.5"}]'
    client.on_message(b'42["gm",{"group":"big","from":"bob","body":"3:1.0"}]')
    assert load.group_arrivals[3][0] == 1
    assert len(load.group_delays) == 1
    assert load.group_frames == 1


# --- the tether client that reads the kernel's receive time ----------------------------------


async def test_socket_client_records_when_bytes_reached_the_socket() -> None:
    load = load_module.Load()
    loop = load.loop
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    client_sock = socket.socket()
    client_sock.setblocking(False)
    await loop.sock_connect(client_sock, listener.getsockname())
    server_sock, _ = await loop.sock_accept(listener)
    listener.close()
    client = TetherSocketClient(load, "m1", client_sock, deliver_acks=True)
    try:
        client.hello(SECRET)
        decoder = StreamDecoder(1 << 20)
        (connect,) = decoder.feed(await loop.sock_recv(server_sock, 65536))
        assert pb.Frame.FromString(connect).connect.device_id == "b"

        def send_group_message(number: int) -> None:
            body = f"{number}:{time.time()!r}".encode()
            message = pb.Message(conversation_id="g:big", sequence=number, body=body)
            frame = pb.Frame(deliver=pb.Deliver(messages=[message]))
            server_sock.sendall(prefix_frame(frame.SerializeToString()))

        # Linux turns receive timestamps on a moment after the first socket asks for them,
        # so messages go out until one arrives with its socket time.
        for number in range(100):
            send_group_message(number)
            while len(load.group_delays) <= number:
                await asyncio.sleep(0.01)
            if load.group_socket_delays:
                break
        assert load.group_socket_delays, "no receive timestamp in 100 messages"
        load.group_delays, load.group_socket_delays = array("d"), array("d")
        acks = number + 1

        # The frame is written while the client's loop is blocked, which reads it 50 ms later:
        # its socket time is when it was written, its parse time 50 ms after.
        send_group_message(1000)
        time.sleep(0.05)
        while not load.group_delays:
            await asyncio.sleep(0.01)
        (parsed,) = load.group_delays
        (in_socket,) = load.group_socket_delays
        assert 0 <= in_socket < 0.05 <= parsed
        count, _latest, stamped, first, last = load.group_arrivals[1000]
        assert (count, stamped) == (1, 1)
        assert first == last == in_socket

        # The client acknowledges every Deliver through its own writes.
        frames: list[pb.Frame] = []
        while len(frames) <= acks:
            data = await asyncio.wait_for(loop.sock_recv(server_sock, 65536), 5)
            frames.extend(pb.Frame.FromString(payload) for payload in decoder.feed(data))
        assert frames[-1].deliver_ack.sequence == 1000

        # The server closes: the client stops watching its socket and fails its session.
        server_sock.close()
        while client.sock is not None:
            await asyncio.sleep(0.01)
        assert isinstance(client.ready.exception(), ConnectionError)
    finally:
        client.close()
        server_sock.close()


# --- plots -----------------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    """Return (width, height) from a PNG file's IHDR chunk, after checking its signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG file"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _results_file(tmp_path: Path, scenario: str, runs: dict[str, list[dict[str, Any]]]) -> Path:
    path = tmp_path / f"{scenario}-small.json"
    path.write_text(json.dumps({"scenario": scenario, "command": f"tether bench {scenario}",
                                "runs": runs}))  # fmt: skip
    return path


def test_plot_group_latency_and_cpu(tmp_path: Path) -> None:
    def run(scale: float) -> dict[str, Any]:
        return {
            "last_member_latency": summarize_ms([scale * n / 1000 for n in range(1, 21)], cdf=True),
            "delivery_latency": summarize_ms([scale * n / 10000 for n in range(1, 201)], cdf=True),
            "server_cpu_us_per_delivery": 3.0 * scale,
            "gateway_cpu_us_per_delivery": 2.0 * scale,
        }

    path = _results_file(tmp_path, "group", {"tether": [run(1.0), run(1.2)],
                                             "node-socketio": [run(2.0)]})  # fmt: skip
    written = plot_file(path, tmp_path / "plots")
    assert [p.name for p in written] == ["group-small-latency.png", "group-small-cpu.png"]
    for png in written:
        width, height = _png_size(png)
        assert width > 600
        assert height > 300


def test_plot_idle_memory_and_cpu(tmp_path: Path) -> None:
    runs = {
        "tether": [{"rss_series": [[0, 50_000_000], [100, 50_400_000], [200, 50_700_000]],
                    "server_cpu_us_per_heartbeat": 21.5}],
        "floor": [{"rss_series": [[0, 20_000_000], [200, 20_300_000]],
                   "server_cpu_us_per_heartbeat": 15.0}],
    }  # fmt: skip
    written = plot_file(_results_file(tmp_path, "idle", runs), tmp_path)
    assert [p.name for p in written] == ["idle-small-memory.png", "idle-small-cpu.png"]
    for png in written:
        assert _png_size(png)[0] > 0


def test_plot_nothing_for_crash(tmp_path: Path) -> None:
    runs = {"tether": [{"users_all_watchers_notified": 3, "user_max_s": 5.1}]}
    assert plot_file(_results_file(tmp_path, "crash", runs), tmp_path) == []


def test_plot_command_rejects_non_results_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    result = subprocess.run(
        [sys.executable, "-m", "tether", "bench", "plot", str(bad)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"cannot plot {bad}" in result.stderr


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
    for scenario in ("setup", "idle", "direct", "storm", "crash", "presence", "group", "plot"):
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
    assert run["client_addresses"] == {"127.0.0.1": 50}
    assert run["rss_series"][-1][0] == 50
    # The runner drew the plots beside the results file.
    for suffix in ("memory", "cpu"):
        assert _png_size(tmp_path / f"results-{suffix}.png")[0] > 0


def test_idle_smoke_from_several_source_addresses(tmp_path: Path) -> None:
    data = _bench(tmp_path, "idle", "--connections", "12", "--duration", "1",
                  "--source-addresses", "3")  # fmt: skip
    (run,) = data["runs"]["tether"]
    assert run["connections"] == 12
    # Counted by the kernel on the server's port: each source address took a third.
    assert run["client_addresses"] == {"127.0.0.1": 4, "127.0.0.2": 4, "127.0.0.3": 4}


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


def test_group_smoke_cluster(tmp_path: Path) -> None:
    data = _bench(tmp_path, "group", "--mode", "cluster", "--gateways", "3",
                  "--member-gateways", "2", "--members", "300", "--messages", "10",
                  "--rate", "10", "--baseline", "1", "--drain", "10")  # fmt: skip
    (run,) = data["runs"]["tether"]
    assert run["sent"] == 10
    assert run["acked"] == 10
    assert run["members_per_gateway"] == [150, 150, 0]
    assert run["gateways_with_members"] == 2
    assert run["deliveries"] == run["expected_deliveries"] == 3000
    assert run["complete_messages"] == 10
    assert run["excess_deliveries"] == 0
    last = run["last_member_latency"]
    assert last["count"] == 10
    assert 0 < last["p50_ms"] <= last["p99_ms"] <= last["max_ms"]
    assert run["delivery_latency"]["count"] == 3000
    assert run["delivery_latency"]["max_ms"] <= last["max_ms"]
    # Each member's socket had a message before its client parsed it.
    in_socket = run["last_member_socket_latency"]
    assert in_socket["count"] == 10
    assert 0 < in_socket["max_ms"] <= last["max_ms"]
    assert run["fanout_spread"]["count"] == 10
    assert run["delivery_socket_latency"]["count"] == 3000
    assert run["deliveries_per_server_cpu_second_gross"] > 0
    redis = run["redis"]
    # One publish per message on the group's channel, received by each gateway with members
    # and by no other.
    assert redis["publishes_per_group_message"]["tether.group.big"] == 1.0
    assert redis["group_channel_receivers"] == 2
    assert redis["group_channel_messages_per_group_message"] == 2.0
    assert (tmp_path / "results-latency.png").read_bytes()[:8] == PNG_SIGNATURE


def test_group_smoke_embedded(tmp_path: Path) -> None:
    # Pacing at 2 pushes per second, a burst of 1: the first message goes at once, the others
    # wait for a push tick and share frames.
    data = _bench(tmp_path, "group", "--members", "100", "--messages", "5", "--rate", "10",
                  "--baseline", "1", "--drain", "10", "--deliver-acks", "--member-nice", "5",
                  "--pushes-per-second", "2", "--push-burst", "1")  # fmt: skip
    (run,) = data["runs"]["tether"]
    assert run["deliver_acks"] is True
    assert run["deliveries"] == 500
    assert run["deliveries_per_frame"] > 1
    assert run["complete_messages"] == 5
    assert run["gateways_with_members"] == 1
    assert "redis" not in run
