"""Online counts of large groups: each gateway's local numbers, added up for the cluster.

A gateway has only its own connections, so it reports, per group, how many of its local users
are online members. The count store keeps each gateway's numbers and their sum per
group. Reports carry the new local number of each group whose number changed since the last
report, not a difference: a report that is sent again after a failure cannot count a change
twice, and the store turns each number into a delta of the group's total.

Two implementations: `MemoryGroupCounts` for embedded tether (one gateway, one process), and
`RedisGroupCounts` (tether.presence.redis_group_counts) for a cluster, where a gateway's
numbers vanish from the totals when it stops reporting for longer than its lease.
"""

from __future__ import annotations

import abc
from collections import Counter

__all__ = ["GroupCountStore", "MemoryGroupCounts"]


class GroupCountStore(abc.ABC):
    """Per-gateway online members of groups, and their sum per group."""

    async def start(self) -> None:  # noqa: B027 (a default, not abstract)
        """Connect to the store, if it is remote."""

    async def close(self) -> None:  # noqa: B027 (a default, not abstract)
        """Withdraw this gateway's numbers if possible and disconnect."""

    @abc.abstractmethod
    async def report(self, counts: dict[str, int], *, fresh: bool) -> bool:
        """Record this gateway's online members of the groups in counts (0 removes a group).

        With fresh set, every number of this gateway that is not in counts is dropped first,
        so counts must then list all of them. Returns False if the store had lost this
        gateway's earlier numbers (its lease lapsed, or the store restarted empty) and applied
        nothing: the caller must report again with fresh set. Raises TetherError or OSError
        when the store cannot be reached.
        """

    @abc.abstractmethod
    async def totals(self, group_ids: list[str]) -> dict[str, int]:
        """Return the online members of each group across all live gateways (0 if unknown)."""


class MemoryGroupCounts(GroupCountStore):
    """Counts in the gateway's own memory, for a single process."""

    def __init__(self) -> None:
        self._totals: Counter[str] = Counter()

    async def report(self, counts: dict[str, int], *, fresh: bool) -> bool:
        if fresh:
            self._totals.clear()
        for group_id, count in counts.items():
            if count:
                self._totals[group_id] = count
            else:
                self._totals.pop(group_id, None)
        return True

    async def totals(self, group_ids: list[str]) -> dict[str, int]:
        return {group_id: self._totals.get(group_id, 0) for group_id in group_ids}
