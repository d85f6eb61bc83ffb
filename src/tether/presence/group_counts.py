"""Online counts of large groups: each gateway's local online members, counted once per user.

A gateway has only its own connections. For each large group it reports which of its local
users came online and which went offline since its last report, and the count store keeps,
per group, how many gateways have each user online. A group's total is the number of users
with at least one: a user with devices on two gateways is one online member, not two.

Reports carry user-level transitions only (the first local session of a member, the last one
closing), batched per gateway and count interval, and are idempotent: a user reported online
twice by the same gateway is counted once. The same exchange returns the totals of the groups
the gateway requests, so a gateway makes one store call per interval.

Two implementations: `MemoryGroupCounts` for embedded tether (one gateway, one process), and
`RedisGroupCounts` (tether.presence.redis_group_counts) for a cluster, where what a gateway
reported vanishes from the totals when it stops reporting for longer than its lease.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

__all__ = ["GroupCountStore", "MemberChanges", "MemoryGroupCounts"]


@dataclass(frozen=True, slots=True)
class MemberChanges:
    """Members of one group that came online and went offline on the reporting gateway."""

    online: frozenset[str] = frozenset()
    offline: frozenset[str] = frozenset()


class GroupCountStore(abc.ABC):
    """Per-gateway online members of groups, and the number of distinct ones per group."""

    async def start(self) -> None:  # noqa: B027 (a default, not abstract)
        """Connect to the store, if it is remote."""

    async def close(self) -> None:  # noqa: B027 (a default, not abstract)
        """Withdraw this gateway's members if possible and disconnect."""

    @abc.abstractmethod
    async def exchange(
        self, changes: dict[str, MemberChanges], *, fresh: bool, read: list[str]
    ) -> dict[str, int] | None:
        """Record this gateway's changes, then return the online members of each group in read.

        With fresh set, everything this gateway reported before is dropped first, so changes
        must then list all its online members as online. Returns None if the store had lost
        this gateway's earlier reports (its lease lapsed, or the store restarted empty) and
        applied nothing: the caller must report again with fresh set. Raises TetherError or
        OSError when the store cannot be reached. The caller cannot tell then whether the
        changes were applied, so it reports again with fresh set too.
        """

    @abc.abstractmethod
    async def totals(self, group_ids: list[str]) -> dict[str, int]:
        """Return the online members of each group across all live gateways (0 if unknown)."""


class MemoryGroupCounts(GroupCountStore):
    """Counts in the gateway's own memory, for a single process."""

    def __init__(self) -> None:
        self._online: dict[str, set[str]] = {}

    async def exchange(
        self, changes: dict[str, MemberChanges], *, fresh: bool, read: list[str]
    ) -> dict[str, int] | None:
        if fresh:
            self._online.clear()
        for group_id, change in changes.items():
            online = self._online.setdefault(group_id, set())
            online |= change.online
            online -= change.offline
            if not online:
                del self._online[group_id]
        return await self.totals(read)

    async def totals(self, group_ids: list[str]) -> dict[str, int]:
        return {group_id: len(self._online.get(group_id, ())) for group_id in group_ids}
