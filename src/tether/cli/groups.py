"""`tether groups`: create and delete groups, change their members and owner, list them.

Changes go through a running server, or to the database directly when none runs. Lists are
read from the database. The commands act with the owner's rights and follow the rules of
tether.logic.groups. Through a running server, connected members see a change at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tether.logic import LogicConfig, Store, StoreError, default_database, open_store
from tether.logic.groups import GroupError, GroupLogic
from tether.logic.outbox import Outbox
from tether.server import send_admin_request

__all__ = ["groups"]

# Users per admin request: 500 ids of up to 64 bytes fit the control socket's frame size.
_USERS_PER_REQUEST = 500
# Each action's usage, and the number of names it takes: exactly that many, or at least that
# many for the actions marked with a trailing "...".
_USAGE = {
    "create": ("GROUP OWNER [MEMBER...]", 2),
    "add": ("GROUP USER...", 2),
    "remove": ("GROUP USER...", 2),
    "owner": ("GROUP USER", 2),
    "delete": ("GROUP", 1),
    "list": ("USER", 1),
    "members": ("GROUP", 1),
}


async def groups(arguments: argparse.Namespace) -> int:
    """Run one `tether groups` action; return the exit status."""
    action: str = arguments.action
    names: list[str] = arguments.names
    usage, count = _USAGE[action]
    takes_more = "..." in usage
    if len(names) < count or (not takes_more and len(names) != count):
        print(f"usage: tether groups {action} {usage}", file=sys.stderr)
        return 2
    if action in ("list", "members"):
        return await _read(arguments, action, names[0])
    return await _change(arguments, action, names)


async def _change(arguments: argparse.Namespace, action: str, names: list[str]) -> int:
    group_id, *users = names
    fixed = 1 if action == "create" else 0  # the owner goes with the first request
    requests = [
        (f"groups.{action}", [group_id, *users[: fixed + _USERS_PER_REQUEST]]),
        *(
            (f"groups.{'add' if action == 'create' else action}", [group_id, *chunk])
            for chunk in _chunks(users[fixed + _USERS_PER_REQUEST :])
        ),
    ]
    try:
        live = None
        for operation, args in requests:
            result = await send_admin_request(arguments.data_dir, operation, args)
            if result is None:
                break  # no server runs on this data folder
            live = True
            if result.error_code:
                print(
                    f"tether groups: {result.error_message} (code {result.error_code})",
                    file=sys.stderr,
                )
                return 1
    except (OSError, TimeoutError, ConnectionError) as error:
        print(f"tether groups: the running server did not respond: {error}", file=sys.stderr)
        return 1
    if live:
        print(f"{action}: {group_id} ({_changed(action, users)}live)")
        return 0

    # No server is running on this data folder: apply the same rules to the database.
    try:
        store = await open_store(_database(arguments))
        try:
            await _apply_offline(store, requests)
        finally:
            await store.close()
    except GroupError as error:
        print(f"tether groups: {error.message} (code {int(error.code)})", file=sys.stderr)
        return 1
    except StoreError as error:
        print(f"tether groups: {error}", file=sys.stderr)
        return 1
    print(f"{action}: {group_id} ({_changed(action, users)}stored; no server running)")
    return 0


def _changed(action: str, users: list[str]) -> str:
    """Return what an action names besides the group, for its summary line."""
    if action == "delete":
        return ""
    if action == "owner":
        return f"new owner {users[0]}, "
    return f"{len(users)} users, "


class _OfflineGroups(GroupLogic):
    """The group rules of the logic layer, applied without a bus to publish on."""

    def __init__(self, config: LogicConfig) -> None:
        self.config = config


async def _apply_offline(store: Store, requests: list[tuple[str, list[str]]]) -> None:
    rules = _OfflineGroups(LogicConfig(database=""))
    async with store.transaction():
        for operation, args in requests:
            await rules.admin_command(store, operation, args, Outbox())


async def _read(arguments: argparse.Namespace, action: str, name: str) -> int:
    try:
        store = await open_store(_database(arguments))
        try:
            if action == "list":
                for record in await store.user_groups(name):
                    print(f"{record.group_id}\towner={record.owner}\tmembers={record.member_count}")
            else:
                if await store.group(name) is None:
                    print(f"tether groups: no group {name!r}", file=sys.stderr)
                    return 1
                for member in await store.group_members(name):
                    print(member)
        finally:
            await store.close()
    except StoreError as error:
        print(f"tether groups: {error}", file=sys.stderr)
        return 1
    return 0


def _chunks(users: Sequence[str]) -> list[list[str]]:
    return [
        list(users[start : start + _USERS_PER_REQUEST])
        for start in range(0, len(users), _USERS_PER_REQUEST)
    ]


def _database(arguments: argparse.Namespace) -> str | Path:
    database: str = arguments.database
    return database or default_database(arguments.data_dir)
