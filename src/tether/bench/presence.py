"""The presence scenario: users changing status, connecting and leaving, under background chat.

Changers and joiners connect to the first gateway and watchers to the last. Each watcher has
`--contacts` random users among the changers and joiners as contacts. Three phases follow, each
while chat pairs (one user on each gateway) exchange direct messages at `--chat-rate` per second:

1. status: the changers toggle between away and online, round-robin, at `--change-rate` per
   second;
2. join: the joiners, offline until now, connect at `--join-rate` per second;
3. leave: the joiners close their connections at the same rate. tether notifies contacts only
   after its grace period (`--grace-period`), which hides quick reconnects; the Socket.IO peers
   have no such period and emit "offline" at once.

Latency runs from `time.time()` just before the client writes its status change, opens its
connection or closes it, to `time.time()` when the watcher's client has parsed the
notification. Each notification is matched to the last event of that user with that status
sent before it. Changers, joiners, watchers and chat run in three load processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

from tether.bench import procfs
from tether.bench.faults import watch_graph
from tether.bench.runner import STEP_TIMEOUT, LoadGroup, LoadProcess, Run, open_all
from tether.bench.servers import SECRET
from tether.bench.stats import match_latencies, summarize_ms

__all__ = ["presence"]

_DRAIN_SECONDS = 15.0


async def presence(run: Run) -> dict[str, Any]:
    """Measure status change, connect and leave -> contact notified, under background chat."""
    arguments, target = run.arguments, run.target
    changers = [f"c{n}" for n in range(arguments.changers)]
    joiners = [f"j{n}" for n in range(arguments.joiners)]
    watchers = [f"w{n}" for n in range(arguments.watchers)]
    pairs = [[f"m{n}a", f"m{n}b"] for n in range(arguments.chat_pairs)]
    graph, watchers_of = watch_graph(watchers, changers + joiners, arguments.contacts)
    for sender, recipient in pairs:
        graph[sender] = [recipient]
        graph[recipient] = [sender]
    await target.start(graph)
    urls = target.urls
    loads = LoadGroup(3, run)
    await loads.start()
    changing, watching, chatting = loads.processes
    results: dict[str, Any] = {
        "changers": len(changers),
        "joiners": len(joiners),
        "watchers": len(watchers),
        "contacts_per_watcher": arguments.contacts,
    }
    try:
        run.phase(f"opening {len(changers)} changers, {len(watchers)} watchers, chat")
        await open_all(run, watching, urls[-1], watchers)
        await open_all(run, changing, urls[0], changers)
        await open_all(run, chatting, urls[0], [a for a, _ in pairs])
        await open_all(run, chatting, urls[-1], [b for _, b in pairs])
        await asyncio.sleep(2.0)
        await watching.call("receipts", STEP_TIMEOUT, quiet=0.5, timeout=STEP_TIMEOUT)
        meter = procfs.CpuMeter(target.server_pids())
        meter.start()

        run.phase(f"{arguments.changes} status changes at {arguments.change_rate:g}/s")
        seconds = arguments.changes / arguments.change_rate
        status = changing.call(
            "status",
            seconds + STEP_TIMEOUT,
            users=changers,
            count=arguments.changes,
            rate=arguments.change_rate,
        )
        changes, chat = await _with_chat(run, chatting, pairs, status, seconds)
        sends = [tuple(send) for send in changes["sends"]]
        results["status"] = await _notified(watching, sends, watchers_of, offline=0, chat=chat)

        run.phase(f"{len(joiners)} joins at {arguments.join_rate:g}/s")
        seconds = len(joiners) / arguments.join_rate
        join = changing.call(
            "open",
            seconds + STEP_TIMEOUT * 2,
            url=urls[0],
            protocol=target.protocol,
            users=joiners,
            secret=SECRET,
            timeout=STEP_TIMEOUT,
            rate=arguments.join_rate,
        )
        joined, chat = await _with_chat(run, chatting, pairs, join, seconds)
        sends = [(at, user, "online") for user, at in joined["started_at"].items()]
        results["join"] = await _notified(watching, sends, watchers_of, offline=0, chat=chat)

        run.phase(f"{len(joiners)} leaves at {arguments.join_rate:g}/s")
        leave = changing.call(
            "close", seconds + STEP_TIMEOUT, users=joiners, rate=arguments.join_rate
        )
        left, chat = await _with_chat(run, chatting, pairs, leave, seconds)
        sends = [(at, user, "offline") for user, at in left["closed_at"].items()]
        expected = sum(len(watchers_of[user]) for user in joiners)
        results["leave"] = await _notified(
            watching, sends, watchers_of, offline=expected, chat=chat
        )
        results["cpu_seconds"] = meter.stop()
    finally:
        await loads.stop()
    return results


async def _with_chat(
    run: Run,
    chatting: LoadProcess,
    pairs: list[list[str]],
    action: Awaitable[dict[str, Any]],
    seconds: float,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run `action` while the chat pairs send `--chat-rate` messages per second for `seconds`."""
    chat = chatting.call(
        "send",
        seconds + STEP_TIMEOUT,
        pairs=pairs,
        rate=run.arguments.chat_rate,
        duration=max(seconds, 1.0),
    )
    result, chat_result = await asyncio.gather(action, chat)
    return result, chat_result


async def _notified(
    watching: LoadProcess,
    sends: list[Any],
    watchers_of: dict[str, list[str]],
    *,
    offline: int,
    chat: dict[str, Any],
) -> dict[str, Any]:
    """Collect the watchers' notifications and match them to the events in `sends`."""
    timeout = _DRAIN_SECONDS + (30.0 if offline else 0.0)
    receipts = (
        await watching.call(
            "receipts", timeout + STEP_TIMEOUT, quiet=1.0, timeout=timeout, offline=offline
        )
    )["receipts"]
    return {
        "latency": match_latencies(sends, [tuple(r) for r in receipts], watchers_of),
        "chat": {
            "sent": chat["sent"],
            "delivered": chat["delivered"],
            "delivery_latency": summarize_ms(chat["delivery_seconds"]),
        },
    }
