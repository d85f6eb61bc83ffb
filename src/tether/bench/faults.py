"""Scenarios that kill a gateway: storm (its clients come back) and crash (they do not).

Both run a cluster of at least two gateways and SIGKILL the first one. Watchers on the last
gateway have some of the killed gateway's users as contacts and record every presence
notification with its arrival time.

- storm: a swarm process (`tether.bench.swarm`) keeps N connections open on the first gateway and
  moves each to the next gateway when its connection drops, after the delay the server
  requests. Measured: time until every client is back, the surviving gateways' peak CPU (sampled
  every 0.2 s), the sessions they opened per second, and the OFFLINE notifications watchers saw
  for users that were only moving (flaps).
- crash: plain clients on the first gateway that do not reconnect. Measured: time from the
  SIGKILL until every watcher of a user has seen that user go offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
from collections import Counter
from typing import Any

from tether.bench import procfs
from tether.bench.runner import STEP_TIMEOUT, LoadGroup, Run, open_all
from tether.bench.servers import SECRET
from tether.bench.stats import kill_summary

__all__ = ["crash", "storm", "watch_graph"]

_SAMPLE_SECONDS = 0.2


def watch_graph(
    watchers: list[str], watched: list[str], contacts: int, seed: int = 1
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Give each watcher `contacts` random users of `watched` as contacts.

    Returns (contacts of every user, both ways; watchers of each watched user).
    """
    chooser = random.Random(seed)
    graph: dict[str, list[str]] = {}
    watchers_of: dict[str, list[str]] = {user: [] for user in watched}
    for watcher in watchers:
        chosen = chooser.sample(watched, contacts)
        graph[watcher] = chosen
        for user in chosen:
            graph.setdefault(user, []).append(watcher)
            watchers_of[user].append(watcher)
    return graph, watchers_of


class _Swarm:
    """A `tether.bench.swarm` child process and its report lines."""

    def __init__(self) -> None:
        self.process: asyncio.subprocess.Process | None = None
        self.last: dict[str, Any] = {}

    async def start(self, urls: list[str], users: int, deadline: float) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tether.bench.swarm", "--urls", ",".join(urls),
            "--secret", SECRET, "--users", str(users), "--duration", str(int(deadline)),
            "--connect-rate", "2000", "--report-interval", "0.1",
            stdout=asyncio.subprocess.PIPE, limit=1 << 28, start_new_session=True,
        )  # fmt: skip

    async def until(self, predicate: Any, timeout: float, what: str) -> dict[str, Any]:
        """Read report lines until predicate(report) holds; raise after timeout seconds."""
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while not predicate(self.last):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"swarm: not {what} after {timeout} s: {self.last}")
            line = await asyncio.wait_for(self.process.stdout.readline(), remaining)
            if not line:
                raise RuntimeError(f"swarm exited before {what}: {self.last}")
            self.last = json.loads(line)
        return self.last

    async def finish(self) -> dict[str, Any]:
        """Stop the swarm with SIGTERM and return its final report."""
        assert self.process is not None
        self.process.terminate()
        return await self.until(lambda report: report.get("final"), STEP_TIMEOUT, "finished")

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def _sample_cpu(pids: dict[str, int], samples: list[float]) -> None:
    """Append the CPU of `pids` together, in percent of one core, every _SAMPLE_SECONDS."""
    before = sum(procfs.cpu_seconds(pid) for pid in pids.values())
    started = time.monotonic()
    while True:
        await asyncio.sleep(_SAMPLE_SECONDS)
        now = sum(procfs.cpu_seconds(pid) for pid in pids.values())
        elapsed = time.monotonic() - started
        samples.append(round((now - before) / elapsed * 100, 1))
        before, started = now, time.monotonic()


async def storm(run: Run) -> dict[str, Any]:
    """Kill the gateway of N swarm clients; measure their return and the flaps."""
    arguments, target = run.arguments, run.target
    if target.protocol != "tether" or arguments.transport != "tcp":
        raise ValueError("the storm scenario runs tether over TCP only (its swarm speaks TCP)")
    swarm_users = [f"swarm{n}" for n in range(arguments.connections)]
    watchers = [f"w{n}" for n in range(arguments.watchers)]
    graph, watchers_of = watch_graph(watchers, swarm_users, arguments.contacts)
    await target.start(graph)
    urls = target.urls
    loads = LoadGroup(1, run)
    await loads.start()
    swarm = _Swarm()
    sampler: asyncio.Task[None] | None = None
    try:
        watcher_load = loads.processes[0]
        run.phase(f"opening {len(watchers)} watchers and {len(swarm_users)} swarm clients")
        await open_all(run, watcher_load, urls[-1], watchers)
        await swarm.start(urls, len(swarm_users), arguments.deadline)
        await swarm.until(lambda r: r.get("open") == len(swarm_users), STEP_TIMEOUT, "all open")
        await asyncio.sleep(2.0)
        await watcher_load.call("receipts", STEP_TIMEOUT, quiet=0.5, timeout=STEP_TIMEOUT)

        survivors = {g.name: g.pid for g in target.gateways[1:]}
        samples: list[float] = []
        cpu = procfs.CpuMeter(target.server_pids())
        cpu.start()
        sampler = asyncio.get_running_loop().create_task(_sample_cpu(survivors, samples))
        run.phase(f"SIGKILL {target.gateways[0].name}")
        killed_at = time.time()
        target.kill_gateway(0)
        back = await swarm.until(
            lambda r: r.get("open") == len(swarm_users) and r["time"] > killed_at + 0.3,
            STEP_TIMEOUT,
            "all back",
        )
        all_back_s = back["time"] - killed_at
        recovery_cpu = cpu.stop()
        # Watch past the lease, the reaper pass and the grace period for OFFLINE flaps.
        run.phase("watching for flaps")
        wait = arguments.lease_timeout + 5.0 + 3.0 - (time.time() - killed_at)
        await asyncio.sleep(max(0.0, wait))
        receipts = (
            await watcher_load.call("receipts", STEP_TIMEOUT, quiet=0.5, timeout=STEP_TIMEOUT)
        )["receipts"]
        report = await swarm.finish()
    finally:
        if sampler is not None:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        await swarm.kill()
        await loads.stop()

    returns = sorted(times[-1] for times in report["opened_at"].values() if times)
    per_second = Counter(int(moment - killed_at) for moment in returns if moment > killed_at)
    flaps = [r for r in receipts if r[3] == "offline" and r[2] in watchers_of]
    last_seen: dict[tuple[str, str], tuple[float, str]] = {}
    for received_at, watcher, user, status in receipts:
        last_seen[(watcher, user)] = (received_at, status)
    wrong = sum(1 for _, status in last_seen.values() if status != "online")
    presence_right_s = None
    if wrong == 0:
        last_change = max((at for at, _ in last_seen.values()), default=killed_at)
        presence_right_s = round(max(all_back_s, last_change - killed_at), 3)
    return {
        "connections": len(swarm_users),
        "watchers": len(watchers),
        "watched_pairs": sum(len(w) for w in watchers_of.values()),
        "all_back_s": round(all_back_s, 3),
        "presence_right_s": presence_right_s,
        "watchers_wrong_at_end": wrong,
        "offline_flaps_seen": len(flaps),
        "notifications_seen": len(receipts),
        "sessions_per_second_after_kill": {str(k): v for k, v in sorted(per_second.items())},
        "survivor_cpu_percent_peak": max(samples, default=None),
        "survivor_cpu_samples": samples,
        "cpu_seconds_until_back": recovery_cpu,
        "swarm_failed_connects": report.get("failed_connects"),
        "swarm_disconnect_codes": report.get("codes"),
    }


async def crash(run: Run) -> dict[str, Any]:
    """Kill a gateway whose clients do not return; measure when contacts see them offline."""
    arguments, target = run.arguments, run.target
    users = [f"k{n}" for n in range(arguments.users)]
    watchers = [f"w{n}" for n in range(arguments.watchers)]
    graph, watchers_of = watch_graph(watchers, users, arguments.contacts)
    await target.start(graph)
    urls = target.urls
    loads = LoadGroup(2, run)
    await loads.start()
    victims, watching = loads.processes
    try:
        run.phase(f"opening {len(watchers)} watchers and {len(users)} users")
        await open_all(run, watching, urls[-1], watchers)
        await open_all(run, victims, urls[0], users)
        await asyncio.sleep(2.0)
        await watching.call("receipts", STEP_TIMEOUT, quiet=0.5, timeout=STEP_TIMEOUT)

        run.phase(f"SIGKILL {target.gateways[0].name}")
        expected = sum(len(w) for w in watchers_of.values())
        killed_at = time.time()
        target.kill_gateway(0)
        wait = arguments.lease_timeout + 20.0
        receipts = (
            await watching.call(
                "receipts", wait + STEP_TIMEOUT, quiet=0.5, timeout=wait, offline=expected
            )
        )["receipts"]
    finally:
        await loads.stop()
    summary = kill_summary(killed_at, receipts, watchers_of)
    return {"users": len(users), "watchers": len(watchers), "expected": expected, **summary}
