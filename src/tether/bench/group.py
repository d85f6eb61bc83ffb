"""The group scenario: messages to one large group whose members are spread over the gateways.

`--members` users and one sender form the group `big`. The members connect over the gateways in
turn, or over the first `--member-gateways` of them only. `--member-processes` load processes
hold them (more when one would pass 15,000 clients), at the nice value `--member-nice`. The
sender connects to the first gateway from a process of its own. After a quiet baseline
window the sender sends `--messages` messages at `--rate` per second; each body carries the
message's number and its send time, and the members record when each message arrived.

Measured per message: the time until the last member had it (from the send time to the latest
arrival over all members); per delivery: the delay from send to arrival. An arrival is when the
member's client parsed the message, which includes the time its load process spent on other
members' frames first. tether's members over TCP also record when the kernel queued the bytes
to their socket (`clients.TetherSocketClient`): on loopback, when the gateway wrote them.

CPU is the user plus system time of every server process over the window from the first send
to the last delivery, minus what the same processes spent in the baseline window for the same
length of time (heartbeats and timers), so deliveries per CPU-second count the fan-out alone.
In cluster mode the Redis server's commands and pub/sub messages are counted over both windows
too (`tether.bench.redis_traffic`).

tether's members send no DeliverAck unless `--deliver-acks` is given: with it, every member
acknowledges every message as the SDK does, and the logic layer stores each member's read
marker. The Socket.IO peers keep a room per group and emit to it; their clients never
acknowledge.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

from tether.bench import procfs
from tether.bench.redis_traffic import RedisTraffic, net_per_unit
from tether.bench.runner import STEP_TIMEOUT, LoadGroup, LoadProcess, Run, open_all, split
from tether.bench.servers import SECRET
from tether.bench.stats import summarize_ms
from tether.bus import channels

__all__ = ["GROUP_ID", "group", "net_cpu"]

GROUP_ID = "big"
_SETTLE_SECONDS = 5.0  # for subscriptions and online counts (sent every 2 s) to settle


async def group(run: Run) -> dict[str, Any]:
    """Send messages to a group of --members members; measure time to last member and CPU."""
    arguments, target = run.arguments, run.target
    members = [f"m{n}" for n in range(arguments.members)]
    sender = "sender"
    await target.start({}, groups={GROUP_ID: [sender, *members]})
    urls = target.urls
    member_urls = urls[: arguments.member_gateways or len(urls)]
    receiving_count = max(arguments.member_processes, LoadGroup.count_for(len(members)))
    loads = LoadGroup(receiving_count + 1, run)
    await loads.start()
    *receiving, sending = loads.processes
    for process in receiving:
        os.setpriority(os.PRIO_PROCESS, process.pid, arguments.member_nice)
    chunks = split(members, receiving_count)
    traffic = RedisTraffic(target.redis.url) if target.redis is not None else None
    try:
        run.phase(f"opening {len(members)} members over {len(member_urls)} gateways")
        members_per_gateway = await _open_members(run, receiving, chunks, member_urls)
        await open_all(run, sending, urls[0], [sender])
        if traffic is not None:
            await traffic.open()
        await asyncio.sleep(_SETTLE_SECONDS)

        run.phase(f"baseline: {arguments.baseline} s without messages")
        meter = procfs.CpuMeter(target.server_pids())
        if traffic is not None:
            await traffic.start()
        meter.start()
        await asyncio.sleep(arguments.baseline)
        baseline_cpu = meter.stop()
        baseline_redis = await traffic.stop() if traffic is not None else None

        run.phase(f"{arguments.messages} messages at {arguments.rate:g}/s")
        sending_seconds = arguments.messages / arguments.rate
        if traffic is not None:
            await traffic.start()
        meter.start()
        send = sending.call(
            "send_group",
            sending_seconds + arguments.drain + STEP_TIMEOUT,
            user=sender,
            group_id=GROUP_ID,
            count=arguments.messages,
            rate=arguments.rate,
            drain=arguments.drain,
        )
        receipts = [
            process.call(
                "group_receipts",
                sending_seconds + arguments.drain + STEP_TIMEOUT,
                expected=len(chunk) * arguments.messages,
                timeout=sending_seconds + arguments.drain,
            )
            for process, chunk in zip(receiving, chunks, strict=True)
        ]
        sent, *received = await asyncio.gather(send, *receipts)
        cpu = meter.stop()
        window_redis = await traffic.stop() if traffic is not None else None
    finally:
        if traffic is not None:
            await traffic.close()
        await loads.stop()

    results: dict[str, Any] = {
        "members": len(members),
        "gateways": len(urls),
        "gateways_with_members": sum(1 for count in members_per_gateway if count),
        "members_per_gateway": members_per_gateway + [0] * (len(urls) - len(member_urls)),
        "messages": arguments.messages,
        "offered_rate": arguments.rate,
        "deliver_acks": arguments.deliver_acks,
        "sent": sent["sent"],
        "acked": sent["acked"],
        "ack_latency": summarize_ms(sent["ack_seconds"]),
    }
    results.update(_deliveries(received, len(members), sent["sent"]))
    results.update(_cpu(cpu, baseline_cpu, target, results["deliveries"]))
    if window_redis is not None and baseline_redis is not None and sent["sent"]:
        results["redis"] = _redis(window_redis, baseline_redis, sent["sent"])
    return results


async def _open_members(
    run: Run, processes: Sequence[LoadProcess], chunks: Sequence[list[str]], urls: list[str]
) -> list[int]:
    """Open each process's members over the gateways in turn; return the members per gateway."""
    members_per_gateway = [0] * len(urls)
    calls = []
    for process, chunk in zip(processes, chunks, strict=True):
        for index, part in enumerate(split(chunk, len(urls))):
            members_per_gateway[index] += len(part)
            calls.append(
                process.call(
                    "open",
                    STEP_TIMEOUT * 5,
                    url=urls[index],
                    protocol=run.target.protocol,
                    users=part,
                    secret=SECRET,
                    timeout=STEP_TIMEOUT,
                    deliver_acks=run.arguments.deliver_acks,
                    socket_times=True,
                )
            )
    replies = await asyncio.gather(*calls)
    opened = sum(reply["opened"] for reply in replies)
    expected = sum(members_per_gateway)
    if opened != expected:
        failures = [reply["failures"] for reply in replies if reply["failures"]]
        raise RuntimeError(f"{expected - opened} of {expected} members failed to open: {failures}")
    return members_per_gateway


def _deliveries(received: list[dict[str, Any]], members: int, sent: int) -> dict[str, Any]:
    """Merge the load processes' receipts: deliveries, time to last member, delays.

    The figures named `socket` count until the kernel queued the bytes to the member's socket.
    Only clients that read that time (tether over TCP) give them, and they cover the messages
    for which every member had it.
    """
    counts: dict[str, int] = {}
    latest: dict[str, float] = {}
    stamped: dict[str, int] = {}
    first_in_socket: dict[str, float] = {}
    last_in_socket: dict[str, float] = {}
    for reply in received:
        for number, (count, delay, with_time, first, last) in reply["messages"].items():
            counts[number] = counts.get(number, 0) + count
            latest[number] = max(latest.get(number, 0.0), delay)
            if with_time:
                stamped[number] = stamped.get(number, 0) + with_time
                first_in_socket[number] = min(first_in_socket.get(number, first), first)
                last_in_socket[number] = max(last_in_socket.get(number, last), last)
    complete = [number for number, count in counts.items() if count >= members]
    timed = [number for number in complete if stamped.get(number, 0) >= members]
    delays = [delay for reply in received for delay in reply["delays"]]
    deliveries = sum(reply["deliveries"] for reply in received)
    frames = sum(reply["frames"] for reply in received)
    figures: dict[str, Any] = {
        "deliveries": deliveries,
        "expected_deliveries": members * sent,
        # Above 1 when pushes merged several messages into one frame (tether's pacing).
        "deliveries_per_frame": round(deliveries / frames, 3) if frames else None,
        "complete_messages": len(complete),
        "excess_deliveries": sum(max(0, count - members) for count in counts.values()),
        # Over the messages that reached every member: when the last of them had it.
        "last_member_latency": summarize_ms((latest[number] for number in complete), cdf=True),
        # Over a sample of every delivery (at most 50,000 per load process).
        "delivery_latency": summarize_ms(delays, cdf=True),
    }
    if timed:
        figures["last_member_socket_latency"] = summarize_ms(
            (last_in_socket[number] for number in timed), cdf=True
        )
        # From the first member's socket to the last one's: the fan-out itself.
        figures["fanout_spread"] = summarize_ms(
            (last_in_socket[number] - first_in_socket[number] for number in timed), cdf=True
        )
        socket_delays = [delay for reply in received for delay in reply["socket_delays"]]
        figures["delivery_socket_latency"] = summarize_ms(socket_delays, cdf=True)
    return figures


def net_cpu(cpu: dict[str, float], baseline: dict[str, float]) -> dict[str, float]:
    """Return each process's CPU seconds in `cpu` minus its baseline rate over the same time.

    Both dicts are `procfs.CpuMeter.stop()` results; "wall" gives each window's length and
    "machine" is left out.
    """
    scale = cpu["wall"] / baseline["wall"] if baseline.get("wall") else 0.0
    return {
        name: round(seconds - baseline.get(name, 0.0) * scale, 3)
        for name, seconds in cpu.items()
        if name not in ("wall", "machine")
    }


def _cpu(
    cpu: dict[str, float], baseline: dict[str, float], target: Any, deliveries: int
) -> dict[str, Any]:
    """Return the CPU figures of the sending window, gross and net of the baseline."""
    net = net_cpu(cpu, baseline)
    gateways = [gateway.name for gateway in target.gateways]
    server_net = sum(net.values())
    server_gross = sum(seconds for name, seconds in cpu.items() if name not in ("wall", "machine"))
    gateway_net = sum(net.get(name, 0.0) for name in gateways)
    figures: dict[str, Any] = {
        "cpu_seconds": cpu,
        "baseline_cpu_seconds": baseline,
        "net_cpu_seconds": net,
        "deliveries_per_server_cpu_second_gross": round(deliveries / server_gross)
        if server_gross > 0
        else None,
        # NOTE: None when the baseline's share is as large as the window's, which happens when
        # a run is too small for the CPU clock's 10 ms ticks.
        "deliveries_per_server_cpu_second": round(deliveries / server_net)
        if server_net > 0 and deliveries
        else None,
        "server_cpu_us_per_delivery": round(server_net / deliveries * 1e6, 3)
        if server_net > 0 and deliveries
        else None,
        "gateway_cpu_us_per_delivery": round(gateway_net / deliveries * 1e6, 3)
        if gateway_net > 0 and deliveries
        else None,
    }
    return figures


def _redis(window: dict[str, Any], baseline: dict[str, Any], messages: int) -> dict[str, Any]:
    """Return Redis's work per group message, and the raw counts of both windows."""
    per_message = net_per_unit(window, baseline, messages)
    figures: dict[str, Any] = {
        "commands_per_group_message": per_message["commands"],
        "publishes_per_group_message": per_message["published"],
        # Every pub/sub message Redis sent to a subscriber, on any channel.
        "pubsub_messages_out_per_group_message": per_message["messages_out"],
    }
    channel = channels.group_channel(GROUP_ID)
    if channel in window["published"]:
        # tether: the group's own channel, published once per message and received by each
        # gateway with online members.
        receivers = window["receivers"].get(channel, 0)
        figures["group_channel_receivers"] = receivers
        figures["group_channel_messages_per_group_message"] = round(
            window["published"][channel] * receivers / messages, 3
        )
    return {**figures, "window": window, "baseline": baseline}
