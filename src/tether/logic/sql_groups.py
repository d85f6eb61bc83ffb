"""The store's group queries, in the SQL that SQLite (>= 3.35) and PostgreSQL share.

A group is a row of `chat_groups` (owner, member count) plus its members, who are the
participants of the group's conversation in `conversation_members`. So the checks that a
user may read, acknowledge or sync a conversation cover groups too, and `Unread` lists a
group like any other conversation.

Concurrent writers on PostgreSQL stay correct because each change of the member list and
its count happens in one transaction, and because the logic reads the group with
`group(lock=True)` before it checks a request: the row lock makes a send, a change and a
deletion of one group wait for each other, so no check is stale by the time its change is
written (a message stored into a group deleted meanwhile, a group handed to a member removed
meanwhile). The count is updated with `member_count = member_count
+ n` under the row lock of the group. A member inserted twice by racing workers is stored once
(`ON CONFLICT DO NOTHING`) and counted once, because only the insert that stored it returns
it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from tether.logic.store import GROUP_PREFIX, GroupRecord, group_conversation_id

__all__ = ["SqlGroups"]

# Users per statement. Each user takes two parameters, and SQLite before 3.32 allows at most
# 999 parameters in one statement.
_CHUNK = 400
# Bounds of the group conversation ids: "g:" and the next string after every id that starts
# with it (";" follows ":" in ASCII), so a range scan of an index finds them.
_GROUP_RANGE = (GROUP_PREFIX, GROUP_PREFIX[:-1] + chr(ord(GROUP_PREFIX[-1]) + 1))
_GROUP_COLUMNS = "g.id, g.owner, g.member_count, g.created_ms, g.incarnation"


class SqlGroups:
    """Group queries of `SqlStore`, which inherits this mixin."""

    _ROW_LOCK = ""  # what `group(lock=True)` appends to its SELECT: PostgreSQL's FOR UPDATE

    if TYPE_CHECKING:
        # Provided by SqlStore.
        def transaction(self) -> AbstractAsyncContextManager[None]: ...

        async def _execute(self, sql: str, *parameters: object) -> int: ...

        async def _fetch(self, sql: str, *parameters: object) -> list[tuple[Any, ...]]: ...

    async def create_group(self, group_id: str, owner: str) -> bool:
        async with self.transaction():
            created = await self._fetch(
                "INSERT INTO chat_groups (id, owner, member_count, created_ms) VALUES (?, ?, 0, ?) "
                "ON CONFLICT DO NOTHING RETURNING id",
                group_id,
                owner,
                _now_ms(),
            )
            if not created:
                return False
            await self.add_group_members(group_id, [owner])
        return True

    async def group(self, group_id: str, *, lock: bool = False) -> GroupRecord | None:
        suffix = self._ROW_LOCK if lock else ""
        rows = await self._fetch(
            f"SELECT {_GROUP_COLUMNS} FROM chat_groups g WHERE g.id = ?{suffix}", group_id
        )
        return _group(rows[0]) if rows else None

    async def add_group_members(self, group_id: str, user_ids: list[str]) -> list[str]:
        conversation = group_conversation_id(group_id)
        # Sorted, so that two transactions adding the same users lock their rows in one order.
        wanted = sorted(set(user_ids))
        added: set[str] = set()
        async with self.transaction():
            now = _now_ms()
            for chunk in _chunks(wanted):
                await self._execute(
                    "INSERT INTO users VALUES " + _rows(len(chunk)) + " ON CONFLICT DO NOTHING",
                    *_pairs(chunk, now),
                )
                rows = await self._fetch(
                    "INSERT INTO conversation_members VALUES "
                    + _rows(len(chunk))
                    + " ON CONFLICT DO NOTHING RETURNING user_id",
                    *_pairs(chunk, conversation),
                )
                added.update(str(row[0]) for row in rows)
            if added:
                await self._execute(
                    "UPDATE chat_groups SET member_count = member_count + ? WHERE id = ?",
                    len(added),
                    group_id,
                )
        return [user for user in dict.fromkeys(user_ids) if user in added]

    async def remove_group_members(self, group_id: str, user_ids: list[str]) -> list[str]:
        conversation = group_conversation_id(group_id)
        removed: set[str] = set()
        async with self.transaction():
            for chunk in _chunks(sorted(set(user_ids))):
                placeholders = ", ".join("?" * len(chunk))
                rows = await self._fetch(
                    "DELETE FROM conversation_members WHERE conversation_id = ? "
                    f"AND user_id IN ({placeholders}) RETURNING user_id",
                    conversation,
                    *chunk,
                )
                removed.update(str(row[0]) for row in rows)
            if removed:
                await self._execute(
                    "UPDATE chat_groups SET member_count = member_count - ? WHERE id = ?",
                    len(removed),
                    group_id,
                )
        return [user for user in dict.fromkeys(user_ids) if user in removed]

    async def delete_group(self, group_id: str) -> bool:
        conversation = group_conversation_id(group_id)
        async with self.transaction():
            deleted = await self._fetch(
                "DELETE FROM chat_groups WHERE id = ? RETURNING id", group_id
            )
            if not deleted:
                return False
            # NOTE: read_markers has no index by conversation, so its delete scans the table,
            # and a long history makes one long transaction. Deletes are expected to be rare.
            for table in ("conversation_members", "messages", "read_markers"):
                await self._execute(f"DELETE FROM {table} WHERE conversation_id = ?", conversation)
            await self._execute("DELETE FROM conversations WHERE id = ?", conversation)
        return True

    async def set_group_owner(self, group_id: str, owner: str) -> None:
        await self._execute("UPDATE chat_groups SET owner = ? WHERE id = ?", owner, group_id)

    async def set_group_incarnation(self, group_id: str, incarnation: int) -> None:
        await self._execute(
            "UPDATE chat_groups SET incarnation = ? WHERE id = ?", incarnation, group_id
        )

    async def group_members(
        self, group_id: str, *, after: str = "", limit: int | None = None
    ) -> list[str]:
        # A range scan of the index on (conversation_id, user_id), so a page costs its size.
        sql = (
            "SELECT user_id FROM conversation_members WHERE conversation_id = ? AND user_id > ? "
            "ORDER BY user_id"
        )
        parameters: list[object] = [group_conversation_id(group_id), after]
        if limit is not None:
            sql += " LIMIT ?"
            parameters.append(limit)
        rows = await self._fetch(sql, *parameters)
        return [str(row[0]) for row in rows]

    async def user_groups(self, user_id: str) -> list[GroupRecord]:
        # substr(..., 3) drops the "g:" prefix; the join then looks groups up by primary key.
        rows = await self._fetch(
            f"SELECT {_GROUP_COLUMNS} FROM conversation_members m "
            "JOIN chat_groups g ON g.id = substr(m.conversation_id, 3) "
            "WHERE m.user_id = ? AND m.conversation_id >= ? AND m.conversation_id < ? "
            "ORDER BY g.id",
            user_id,
            *_GROUP_RANGE,
        )
        return [_group(row) for row in rows]

    async def group_counts(self, user_ids: list[str]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for chunk in _chunks(sorted(set(user_ids))):
            placeholders = ", ".join("?" * len(chunk))
            rows = await self._fetch(
                "SELECT user_id, COUNT(*) FROM conversation_members "
                f"WHERE user_id IN ({placeholders}) AND conversation_id >= ? "
                "AND conversation_id < ? GROUP BY user_id",
                *chunk,
                *_GROUP_RANGE,
            )
            counts.update((str(row[0]), int(row[1])) for row in rows)
        return counts


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _rows(count: int) -> str:
    """Return the VALUES list of count rows of two parameters each."""
    return ", ".join(["(?, ?)"] * count)


def _pairs(users: list[str], second: object) -> list[object]:
    """Return the parameters of rows (user, second), flattened."""
    parameters: list[object] = []
    for user in users:
        parameters += (user, second)
    return parameters


def _group(row: tuple[Any, ...]) -> GroupRecord:
    return GroupRecord(
        group_id=str(row[0]),
        owner=str(row[1]),
        member_count=int(row[2]),
        created_ms=int(row[3]),
        incarnation=int(row[4]),
    )


def _now_ms() -> int:
    return int(time.time() * 1000)
