"""Cluster presence: device sessions in Redis, written by the gateways that own them.

Each gateway process runs one `RedisPresence`. It reports the gateway's transitions with the
atomic scripts of scripts.lua, in order, one pipelined round trip per batch and phase (see
`_apply`); each script publishes the user-level change on the user's presence channel when
there is one. Heartbeats never reach Redis.

Every device entry names its gateway, the gateway's epoch and the connection, so the late
cleanup of a stale session cannot remove a newer one. A gateway holds a lease (a score in the
`{leases}` sorted set) that it renews every `lease_timeout / 3`; when a lease lapses,
whichever gateway's reaper claims it first removes that gateway's devices and publishes the
changes. A gateway that restarts takes a new epoch and reaps its old ones at once, so old
sessions never come back.

The device entries also decide which connection owns each device: an ONLINE that replaces
another gateway's connection publishes a DeviceClaim on the user's channel, and that gateway
closes the replaced connection (see `Gateway._claim_device`).

The same code runs on a standalone server and on a Redis Cluster: each script touches one
hash slot (a user's keys and channels share the hash tag `{<user>}`), and what spans slots
(a gateway's device index, the grace set) is written with plain commands in an order that
leaves extra index entries after a crash, never missing ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis.asyncio as redis
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from tether.bus import channels
from tether.bus import envelope_pb2 as env
from tether.bus.redis import cancel_and_wait
from tether.protocol import tether_pb2 as pb
from tether.protocol.errors import BusError

__all__ = ["ClusterPresenceConfig", "LocalDevice", "RedisPresence", "load_scripts"]

logger = logging.getLogger("tether.presence.cluster")

_KINDS = {
    env.Transition.KIND_ONLINE: "online",
    env.Transition.KIND_OFFLINE: "offline",
    env.Transition.KIND_STATUS: "status",
}
# redis-py raises RedisClusterException, which is no RedisError, when its slot map is stale.
_REDIS_ERRORS = (RedisError, RedisClusterException)
# Gateway epochs claimed and users checked per maintenance pass, and index entries per SSCAN.
_CLAIM_BATCH = 100
_GRACE_BATCH = 1000
_SCAN_BATCH = 1000


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterPresenceConfig:
    """Settings of cluster presence."""

    url: str
    """Redis URL, for example redis://127.0.0.1:6379/0; with `cluster`, any node's URL."""
    cluster: bool = False
    """Whether the server is a Redis Cluster (default false). Changes are then published with
    SPUBLISH (sharded pub/sub) instead of PUBLISH."""
    key_prefix: str = "tether:"
    """Prefix of every key (default "tether:"). It must not contain braces, which would change
    the keys' hash tags."""
    lease_timeout: float = 5.0
    """Seconds a gateway's devices survive it without a renewal (default 5)."""
    reap_interval: float = 1.0
    """Seconds between checks for lapsed leases and due offline changes (default 1)."""
    grace_period: float = 5.0
    """Seconds between a user's last device leaving and OFFLINE being announced (default 5)."""
    max_pending: int = 100_000
    """Transitions held while Redis is unreachable; a full resync follows a reconnect."""

    def __post_init__(self) -> None:
        if "{" in self.key_prefix or "}" in self.key_prefix:
            raise ValueError(f"key_prefix must not contain braces, got {self.key_prefix!r}")


@dataclass(frozen=True, slots=True)
class LocalDevice:
    """A device connected to this gateway, as reported again after a resync."""

    user_id: str
    device_id: str
    connection_id: str
    activity: int
    mode: int


def load_scripts() -> dict[str, str]:
    """Return every script of scripts.lua by name, each with the shared functions prepended."""
    text = resources.files("tether.presence").joinpath("scripts.lua").read_text()
    sections: dict[str, list[str]] = {}
    name = ""
    for line in text.splitlines():
        if line.startswith("--- "):
            name = line[4:].strip()
            sections[name] = []
        elif name:
            sections[name].append(line)
    common = "\n".join(sections.pop("common"))
    return {script: common + "\n" + "\n".join(body) for script, body in sections.items()}


def user_key(prefix: str, user_id: str) -> str:
    """Return the key of a user's presence hash; the {user} hash tag keeps it in one slot."""
    return f"{prefix}p:{{{user_id}}}"


class RedisPresence:
    """One gateway's side of cluster presence."""

    def __init__(
        self,
        config: ClusterPresenceConfig,
        gateway_id: str,
        local_devices: Callable[[], Iterable[LocalDevice]],
    ) -> None:
        self.config = config
        self.gateway_id = gateway_id
        self.epoch = 0
        self._local_devices = local_devices
        self._redis: Any = None
        self._scripts: dict[str, Any] = {}
        self._pending: list[env.Transition] = []
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._resync_needed = False
        prefix = config.key_prefix
        self._leases_key = prefix + "{leases}"
        self._reaping_key = prefix + "{leases}:reaping"
        self._grace_key = prefix + "grace"
        self._publish_command = "SPUBLISH" if config.cluster else "PUBLISH"
        self._lease_ms = int(config.lease_timeout * 1000)

    async def start(self) -> None:
        """Connect, take a new epoch, reap this gateway's old epochs and start the loops."""
        client_class = redis.RedisCluster if self.config.cluster else redis.Redis
        self._redis = client_class.from_url(self.config.url, socket_timeout=5.0)
        try:
            # Script objects reload themselves after a Redis restart empties the script cache.
            for name, source in load_scripts().items():
                self._scripts[name] = self._redis.register_script(source)
            await self._register([])
        except _REDIS_ERRORS as error:
            await self._redis.aclose()
            raise BusError(f"cluster presence cannot reach {self.config.url}: {error}") from error
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._write_loop(), name="presence-writer"),
            loop.create_task(self._maintenance_loop(), name="presence-maintenance"),
        ]
        logger.info("cluster presence started: gateway %s epoch %d", self.gateway_id, self.epoch)

    async def close(self) -> None:
        """Stop the loops; the lease lapses by itself unless released first."""
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks.clear()
        if self._redis is not None:
            await self._redis.aclose()

    async def release(self) -> None:
        """Apply the queued transitions, then give up the lease.

        A gateway that shuts down has reported each closed session OFFLINE, and those go
        through the grace period, so users who reconnect elsewhere in time show no change.
        Only devices left after that are reaped, and at once.
        """
        member = f"{self.gateway_id}\t{self.epoch}"
        try:
            pending, self._pending = self._pending, []
            if pending:
                await self._apply(pending)
            await self._redis.zadd(self._leases_key, {member: _now_ms()}, xx=True)
            await self._reap()
        except _REDIS_ERRORS as error:
            logger.warning("could not release the lease of %s: %s", member, error)

    def report(self, transitions: list[env.Transition]) -> None:
        """Queue transitions for the writer, which applies them in order."""
        if len(self._pending) + len(transitions) > self.config.max_pending:
            # Everything will be reported again by the resync after the outage.
            self._pending.clear()
            self._resync_needed = True
            logger.warning(
                "presence backlog over %d transitions; resync queued", self.config.max_pending
            )
            return
        self._pending.extend(transitions)
        self._wakeup.set()

    async def query(self, user_ids: list[str]) -> list[pb.UserPresence]:
        """Return the visible presence of users in one pipelined round trip (per primary)."""
        pipeline = self._redis.pipeline(transaction=False)
        for user_id in user_ids:
            pipeline.hmget(self._user_key(user_id), "status", "seen", "ver")
        rows = await pipeline.execute()
        result = []
        for user_id, (status, seen, version) in zip(user_ids, rows, strict=True):
            result.append(
                pb.UserPresence(
                    user_id=user_id,
                    status=int(status) if status else pb.STATUS_OFFLINE,  # type: ignore[arg-type]
                    last_seen_ms=int(seen or 0),
                    version=int(version or 0),
                )
            )
        return result

    def request_resync(self) -> None:
        """Report every local device again under a new epoch (after Redis lost our state)."""
        self._resync_needed = True
        self._wakeup.set()

    # Internals.

    def _user_key(self, user_id: str) -> str:
        return user_key(self.config.key_prefix, user_id)

    def _members_key(self, gateway_id: str, epoch: int | str) -> str:
        return f"{self.config.key_prefix}g:{{{gateway_id}}}:{epoch}"

    async def _register(self, devices: list[LocalDevice]) -> None:
        """Take a new epoch, report devices under it, then reap this gateway's older epochs.

        Reporting first means the reap finds every still-connected device owned by the new
        epoch and leaves it alone, so a resync after a Redis hiccup shows contacts no flap.
        """
        prefix = self.config.key_prefix
        previous = self.epoch
        old = [
            member
            for member in await self._redis.zrange(self._leases_key, 0, -1)
            if member.decode().startswith(self.gateway_id + "\t")
        ]
        epoch_key = f"{prefix}epoch:{{{self.gateway_id}}}"
        self.epoch = int(await self._redis.incr(epoch_key))
        if self.epoch <= previous:
            # Redis lost the counter (a restart without persistence): never reuse an epoch,
            # or the reap of the previous one below would remove the devices reported now.
            self.epoch = previous + 1
            await self._redis.set(epoch_key, self.epoch)
        await self._renew(register=True)
        if devices:
            now = _now_ms()
            await self._apply(
                [
                    env.Transition(
                        kind=env.Transition.KIND_ONLINE,
                        user_id=device.user_id,
                        device_id=device.device_id,
                        connection_id=device.connection_id,
                        status=pb.SetStatus(activity=device.activity, mode=device.mode),  # type: ignore[arg-type]
                        at_ms=now,
                    )
                    for device in devices
                ],
                restore=True,
            )
        if old:
            await self._redis.zadd(self._leases_key, {member: _now_ms() for member in old}, xx=True)
            await self._reap()
        if previous:
            # Its lease may have lapsed and been reaped by another gateway while this one
            # stalled, and the index refilled by writes this gateway made before noticing.
            await self._reap_epoch(self.gateway_id, str(previous), _now_ms() - self._lease_ms)

    async def _renew(self, *, register: bool = False) -> bool:
        member = f"{self.gateway_id}\t{self.epoch}"
        expiry = _now_ms() + self._lease_ms
        held = await self._scripts["renew"](
            keys=[self._leases_key], args=[member, expiry, "1" if register else "0"]
        )
        return bool(held)

    async def _reap(self) -> int:
        """Claim lapsed leases and remove their gateways' devices; return how many."""
        claimed = await self._scripts["claim_leases"](
            keys=[self._leases_key, self._reaping_key],
            args=[_now_ms(), _CLAIM_BATCH, self._lease_ms],
        )
        removed = 0
        for entry in claimed:
            gateway_id, epoch, renewed_at = entry.decode().rsplit("\t", 2)
            removed += await self._reap_epoch(gateway_id, epoch, int(renewed_at))
            await self._redis.zrem(self._reaping_key, entry)
        if removed:
            logger.info("reaped %d devices of lapsed gateways", removed)
        return removed

    async def _reap_epoch(self, gateway_id: str, epoch: str, renewed_at: int) -> int:
        """Remove every device a gateway epoch still owns, then drop its index."""
        members = self._members_key(gateway_id, epoch)
        owner = f"{gateway_id}\t{epoch}\t"
        removed = 0
        cursor = 0
        while True:
            cursor, entries = await self._redis.sscan(members, cursor, count=_SCAN_BATCH)
            if entries:
                now = _now_ms()
                calls: list[tuple[Any, ...]] = []
                for entry in entries:
                    user_id, device_id, _ = entry.decode().split("\t", 2)
                    call = (
                        self._user_key(user_id),
                        device_id, owner, renewed_at, now, user_id,
                        channels.presence_channel(user_id), self._publish_command,
                    )  # fmt: skip
                    calls.append(call)
                removed += sum(await self._run_script("reap_device", calls))
            if cursor == 0:
                break
        await self._redis.delete(members)
        return removed

    async def _run_script(self, name: str, calls: list[tuple[Any, ...]]) -> list[Any]:
        """Run a script once per call (its one key, then its arguments) in one pipeline.

        If Redis forgot the script (a restart empties the script cache), it is loaded and
        every call runs again. The scripts are idempotent for a repeated call, so a partial
        first run is safe.
        """
        script = self._scripts[name]
        for attempt in (1, 2):
            pipeline = self._redis.pipeline(transaction=False)
            for key, *arguments in calls:
                pipeline.evalsha(script.sha, 1, key, *arguments)
            try:
                return list(await pipeline.execute())
            except NoScriptError:
                if attempt == 2:
                    raise
                await self._redis.script_load(script.script)
        raise AssertionError("unreachable")

    async def _write_loop(self) -> None:
        backoff = 0.1
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            try:
                if self._resync_needed:
                    await self._resync()
                if self._pending:
                    batch = self._pending
                    self._pending = []
                    await self._apply(batch)
                backoff = 0.1
            except _REDIS_ERRORS as error:
                logger.warning(
                    "cluster presence write failed, resync in %.1f s: %s", backoff, error
                )
                self._pending.clear()
                self._resync_needed = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                self._wakeup.set()

    async def _apply(self, batch: list[env.Transition], *, restore: bool = False) -> None:
        """Apply transitions in order, in up to three pipelined round trips.

        With restore, the batch is the sessions a resync reports ONLINE again. Each one takes
        its device only if no other gateway's connection owns it (see scripts.lua).

        1. Index: add each ONLINE device to this epoch's device set, and each OFFLINE user to
           the grace set with a late check time. Done first, so that a crash before step 2
           leaves only extra entries, which the reaper and the grace checks skip.
        2. The transition scripts, one per transition, on each user's primary.
        3. Cleanup: remove each OFFLINE device from the device set, and move the grace check
           of each user whose OFFLINE is now pending to the time it is due.
        """
        now = _now_ms()
        grace_ms = int(self.config.grace_period * 1000)
        members = self._members_key(self.gateway_id, self.epoch)

        index = self._redis.pipeline(transaction=False)
        for transition in batch:
            if transition.kind == env.Transition.KIND_ONLINE:
                index.sadd(members, _member(transition))
            elif transition.kind == env.Transition.KIND_OFFLINE:
                late = now + grace_ms + self._lease_ms
                index.zadd(self._grace_key, {transition.user_id: late})
        if len(index):
            await index.execute()

        calls: list[tuple[Any, ...]] = []
        for transition in batch:
            status = transition.status
            kind = _KINDS[transition.kind]
            if restore and kind == "online":
                kind = "restore"
            call = (
                self._user_key(transition.user_id),
                kind, transition.user_id, transition.device_id,
                self.gateway_id, self.epoch, transition.connection_id,
                status.activity, status.mode, transition.at_ms or now, now, grace_ms,
                channels.presence_channel(transition.user_id), self._publish_command,
                channels.user_channel(transition.user_id),
            )  # fmt: skip
            calls.append(call)
        results = await self._run_script("transition", calls)

        cleanup = self._redis.pipeline(transaction=False)
        for transition, result in zip(batch, results, strict=True):
            if transition.kind == env.Transition.KIND_OFFLINE:
                cleanup.srem(members, _member(transition))
            if int(result) > 1:  # the time the user's OFFLINE is due
                cleanup.zadd(self._grace_key, {transition.user_id: int(result)})
        if len(cleanup):
            await cleanup.execute()

    async def _resync(self) -> None:
        """Start a new epoch and report every local device online again."""
        self._resync_needed = False
        self._pending.clear()
        devices = list(self._local_devices())
        await self._register(devices)
        logger.info("resynced %d devices under epoch %d", len(devices), self.epoch)

    async def _finish_grace(self) -> None:
        """Publish the OFFLINE of users whose grace period ended, checking due users only."""
        now = _now_ms()
        # A half millisecond, so that no check time (whole milliseconds) equals a claim.
        claim = now + self._lease_ms + 0.5
        users = await self._scripts["claim_grace"](
            keys=[self._grace_key], args=[now, _GRACE_BATCH, repr(claim)]
        )
        if not users:
            return
        calls: list[tuple[Any, ...]] = []
        for raw in users:
            user_id = raw.decode()
            call = (
                self._user_key(user_id),
                now, user_id, channels.presence_channel(user_id), self._publish_command,
            )  # fmt: skip
            calls.append(call)
        results = await self._run_script("finish_grace", calls)
        arguments: list[Any] = [repr(claim)]
        for raw, result in zip(users, results, strict=True):
            arguments += [raw, int(result)]
        await self._scripts["grace_done"](keys=[self._grace_key], args=arguments)

    async def _maintenance_loop(self) -> None:
        # Every pass renews the lease, so renewals come at least every lease_timeout / 3.
        interval = min(self.config.reap_interval, self.config.lease_timeout / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                if not await self._renew():
                    logger.warning(
                        "lease of %s epoch %d lapsed; resyncing", self.gateway_id, self.epoch
                    )
                    self.request_resync()
                await self._reap()
                await self._finish_grace()
            except _REDIS_ERRORS as error:
                logger.warning("cluster presence maintenance failed: %s", error)
                self.request_resync()


def _member(transition: env.Transition) -> str:
    """Return a device's entry in its gateway epoch's device set."""
    return f"{transition.user_id}\t{transition.device_id}\t{transition.connection_id}"


def _now_ms() -> int:
    return int(time.time() * 1000)
