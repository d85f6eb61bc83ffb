"""The scenarios of `tether bench`, each one run of one target.

Every scenario function receives a `Run`: the target (started by the function with the contacts
it needs), a fresh work folder and the parsed options, and returns one JSON-ready dict of
results. `SCENARIOS` maps the subcommand names to them; `COMPARED` lists, per scenario, the
figures that the runner compares between targets.

CPU figures are the user plus system time of the server's processes (/proc/PID/stat) over the
measured window, so they include the server's timers and housekeeping in that window.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from tether.bench import procfs
from tether.bench.faults import crash, storm
from tether.bench.group import group
from tether.bench.presence import presence
from tether.bench.runner import LoadGroup, Run, split
from tether.bench.servers import SECRET
from tether.bench.stats import summarize_ms

__all__ = ["COMPARED", "SCENARIOS", "Run"]

_STEP_TIMEOUT = 120.0  # seconds any one step (opening clients, draining) may take
_SETTLE_SECONDS = 2.0


# --- idle ------------------------------------------------------------------------------------


async def idle(run: Run) -> dict[str, Any]:
    """Hold N heartbeating connections; measure memory per connection and CPU per heartbeat."""
    arguments, target = run.arguments, run.target
    users = [f"i{n}" for n in range(arguments.connections)]
    await target.start({})
    loads = LoadGroup(LoadGroup.count_for(len(users)), run)
    await loads.start()
    try:
        await asyncio.sleep(1.0)
        gateway_pids = [gateway.pid for gateway in target.gateways]
        rss_before = sum(procfs.rss_bytes(pid) for pid in gateway_pids)
        slab_before = procfs.socket_slab_bytes()
        sockstat_before = procfs.sockstat_tcp()

        run.phase(f"opening {len(users)} connections")
        rss_series: list[list[int]] = [[0, rss_before]]
        sampler = asyncio.get_running_loop().create_task(
            _sample_rss(loads, gateway_pids, rss_series)
        )
        try:
            opened = await _open_spread(run, loads, users, target.urls)
        finally:
            sampler.cancel()
        count = opened["opened"]
        if count == 0:
            raise RuntimeError(f"no connection opened: {opened['failures']}")
        # Let every client send a first heartbeat and the server's allocations settle.
        run.phase("settling")
        await asyncio.sleep(_SETTLE_SECONDS + arguments.heartbeat_interval)
        rss_after = sum(procfs.rss_bytes(pid) for pid in gateway_pids)
        rss_series.append([count, rss_after])
        slab_after = procfs.socket_slab_bytes()
        sockstat_after = procfs.sockstat_tcp()
        buffers = procfs.socket_buffer_bytes(target.ports)
        sources = procfs.peer_addresses(target.ports)

        run.phase(f"measuring {arguments.duration} s of heartbeats")
        counters_before = await loads.counters()
        meter = procfs.CpuMeter(target.server_pids())
        meter.start()
        await asyncio.sleep(arguments.duration)
        cpu = meter.stop()
        counters_after = await loads.counters()
    finally:
        await loads.stop()

    heartbeats = counters_after.get("heartbeats", 0) - counters_before.get("heartbeats", 0)
    server_cpu = sum(value for name, value in cpu.items() if name not in ("machine", "wall"))
    kernel: dict[str, Any] = {
        "sockstat_tcp_before": sockstat_before,
        "sockstat_tcp_after": sockstat_after,
    }
    if slab_before is not None and slab_after is not None:
        # Both ends of a loopback connection are sockets of this machine.
        kernel["socket_slab_bytes_per_socket"] = round((slab_after - slab_before) / (2 * count))
    if buffers is not None and buffers[0]:
        kernel["server_sockets_seen"] = buffers[0]
        kernel["socket_buffer_bytes_per_server_socket"] = round(buffers[1] / buffers[0])
    return {
        "connections": count,
        "connect_failures": opened["failures"],
        "open_seconds": opened["seconds"],
        "still_open": counters_after.get("open", 0),
        "disconnects": counters_after.get("disconnects", 0),
        "rss_bytes_per_connection": round((rss_after - rss_before) / count),
        # [connections open, RSS of the gateways in bytes] while opening, then after settling.
        "rss_series": rss_series,
        # Established connections to the gateways' ports by client address, from the kernel.
        "client_addresses": sources,
        "kernel": kernel,
        "heartbeats": heartbeats,
        "heartbeats_per_second": round(heartbeats / cpu["wall"], 1),
        "cpu_seconds": cpu,
        "server_cpu_us_per_heartbeat": round(server_cpu / heartbeats * 1e6, 2)
        if heartbeats
        else None,
        "server_cpu_percent": round(server_cpu / cpu["wall"] * 100, 2),
    }


async def _sample_rss(loads: LoadGroup, pids: Sequence[int], series: list[list[int]]) -> None:
    """Append [connections open, RSS of `pids`] every half second until cancelled.

    The open count comes from the load processes' progress lines, which are up to half a second
    old, so each point's count may lag its RSS a little.
    """
    while True:
        await asyncio.sleep(0.5)
        count = sum(int(process.progress.get("open", 0)) for process in loads.processes)
        series.append([count, sum(procfs.rss_bytes(pid) for pid in pids)])


async def _open_spread(
    run: Run, loads: LoadGroup, users: Sequence[str], urls: Sequence[str]
) -> dict[str, Any]:
    """Open `users` over the load processes, and in each over the gateways in turn."""
    results = []
    for process, chunk in zip(loads.processes, split(users, len(loads.processes)), strict=True):
        for url, part in zip(urls, split(chunk, len(urls)), strict=True):
            results.append(
                process.call(
                    "open",
                    _STEP_TIMEOUT * 5,
                    url=url,
                    protocol=run.target.protocol,
                    users=part,
                    secret=SECRET,
                    timeout=_STEP_TIMEOUT,
                )
            )
    replies = await asyncio.gather(*results)
    failures: dict[str, int] = {}
    for reply in replies:
        for name, number in reply["failures"].items():
            failures[name] = failures.get(name, 0) + number
    return {
        "opened": sum(reply["opened"] for reply in replies),
        "failures": failures,
        "seconds": max(reply["seconds"] for reply in replies),
    }


# --- direct ----------------------------------------------------------------------------------


async def direct(run: Run) -> dict[str, Any]:
    """Send direct messages between pairs at a fixed offered rate; latency and CPU per message.

    Senders connect to the first gateway and recipients to the last, so in cluster mode every
    message crosses from one gateway to another.
    """
    arguments, target = run.arguments, run.target
    pairs = [(f"s{n}", f"r{n}") for n in range(arguments.pairs)]
    contacts: dict[str, list[str]] = {}
    for sender, recipient in pairs:
        contacts[sender] = [recipient]
        contacts[recipient] = [sender]
    await target.start(contacts)
    loads = LoadGroup(LoadGroup.count_for(2 * len(pairs)), run)
    await loads.start()
    urls = target.urls
    try:
        run.phase(f"opening {len(pairs)} pairs")
        chunks = split(pairs, len(loads.processes))
        opens = []
        for process, chunk in zip(loads.processes, chunks, strict=True):
            for url, users in ((urls[0], [s for s, _ in chunk]), (urls[-1], [r for _, r in chunk])):
                opens.append(
                    process.call(
                        "open",
                        _STEP_TIMEOUT * 2,
                        url=url,
                        protocol=target.protocol,
                        users=users,
                        secret=SECRET,
                        timeout=_STEP_TIMEOUT,
                    )
                )
        opened = await asyncio.gather(*opens)
        if sum(reply["opened"] for reply in opened) != 2 * len(pairs):
            raise RuntimeError(f"not every client opened: {[r['failures'] for r in opened]}")

        rate = arguments.rate / len(loads.processes)

        async def send_all(duration: float) -> list[dict[str, Any]]:
            return await asyncio.gather(
                *(
                    process.call(
                        "send",
                        duration + _STEP_TIMEOUT,
                        pairs=chunk,
                        rate=rate,
                        duration=duration,
                        drain=arguments.drain,
                    )
                    for process, chunk in zip(loads.processes, chunks, strict=True)
                )
            )

        run.phase("warming up for 1 s")
        await send_all(1.0)
        run.phase(f"sending {arguments.rate:g}/s for {arguments.duration} s")
        meter = procfs.CpuMeter(target.server_pids())
        meter.start()
        replies = await send_all(arguments.duration)
        cpu = meter.stop()
    finally:
        await loads.stop()

    sent = sum(reply["sent"] for reply in replies)
    delivered = sum(reply["delivered"] for reply in replies)
    server_cpu = sum(value for name, value in cpu.items() if name not in ("machine", "wall"))
    gateway_cpu = sum(cpu.get(gateway.name, 0.0) for gateway in target.gateways)
    send_seconds = max(reply["send_seconds"] for reply in replies)
    return {
        "pairs": len(pairs),
        "offered_rate": arguments.rate,
        "sent": sent,
        "acked": sum(reply["acked"] for reply in replies),
        "delivered": delivered,
        "achieved_rate": round(sent / send_seconds, 1),
        "delivery_latency": summarize_ms(
            (s for reply in replies for s in reply["delivery_seconds"]), cdf=True
        ),
        "ack_latency": summarize_ms(s for reply in replies for s in reply["ack_seconds"]),
        "cpu_seconds": cpu,
        "server_cpu_us_per_message": round(server_cpu / delivered * 1e6, 2) if delivered else None,
        "gateway_cpu_us_per_message": round(gateway_cpu / delivered * 1e6, 2)
        if delivered
        else None,
        "messages_per_server_cpu_second": round(delivered / server_cpu) if server_cpu else None,
    }


# --- registry --------------------------------------------------------------------------------

Scenario = Callable[[Run], Awaitable[dict[str, Any]]]

SCENARIOS: Mapping[str, Scenario] = {
    "idle": idle,
    "direct": direct,
    "storm": storm,
    "crash": crash,
    "presence": presence,
    "group": group,
}

COMPARED: Mapping[str, Sequence[str]] = {
    "idle": (
        "rss_bytes_per_connection",
        "kernel.socket_slab_bytes_per_socket",
        "kernel.socket_buffer_bytes_per_server_socket",
        "server_cpu_us_per_heartbeat",
    ),
    "direct": (
        "delivery_latency.p50_ms",
        "delivery_latency.p99_ms",
        "delivery_latency.max_ms",
        "server_cpu_us_per_message",
        "gateway_cpu_us_per_message",
    ),
    "storm": ("all_back_s", "presence_right_s", "survivor_cpu_percent_peak", "offline_flaps_seen"),
    "crash": (
        "users_all_watchers_notified",
        "users_incomplete",
        "user_p50_s",
        "user_max_s",
        "notification_first_s",
    ),
    "presence": (
        "status.latency.p50_ms",
        "status.latency.p99_ms",
        "status.latency.max_ms",
        "join.latency.p50_ms",
        "join.latency.p99_ms",
        "leave.latency.p50_ms",
        "leave.latency.p99_ms",
    ),
    "group": (
        "last_member_latency.p50_ms",
        "last_member_latency.p99_ms",
        "last_member_socket_latency.p50_ms",
        "last_member_socket_latency.p99_ms",
        "delivery_latency.p50_ms",
        "delivery_latency.p99_ms",
        "deliveries_per_server_cpu_second",
        "gateway_cpu_us_per_delivery",
        "redis.pubsub_messages_out_per_group_message",
    ),
}
