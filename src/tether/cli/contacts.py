"""`tether contacts`: change contacts through a running server, or in the database directly."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tether.auth import validate_user_id
from tether.logic import StoreError, default_database, open_store
from tether.server import send_admin_request

__all__ = ["contacts"]


async def contacts(arguments: argparse.Namespace) -> int:
    """Run `tether contacts add|remove A B` or `tether contacts list A`."""
    action = arguments.action
    users = arguments.users
    expected = 1 if action == "list" else 2
    if len(users) != expected:
        print(
            f"tether contacts {action}: expected {expected} user ids, got {len(users)}",
            file=sys.stderr,
        )
        return 2
    try:
        for user in users:
            validate_user_id(user)
    except ValueError as error:
        print(f"tether contacts: {error}", file=sys.stderr)
        return 2

    if action == "list":
        return await _list(arguments, users[0])

    try:
        result = await send_admin_request(arguments.data_dir, f"contacts.{action}", users)
    except (OSError, TimeoutError, ConnectionError) as error:
        print(f"tether contacts: the running server did not respond: {error}", file=sys.stderr)
        return 1
    if result is not None:
        if result.error_code:
            print(
                f"tether contacts: {result.error_message} (code {result.error_code})",
                file=sys.stderr,
            )
            return 1
        print(f"{action}: {users[0]} <-> {users[1]} (live)")
        return 0

    # No server is running on this data folder: edit the database directly.
    try:
        store = await open_store(_database(arguments))
        try:
            if action == "add":
                await store.add_contacts(users[0], users[1])
            else:
                await store.remove_contacts(users[0], users[1])
        finally:
            await store.close()
    except (StoreError, ValueError) as error:
        print(f"tether contacts: {error}", file=sys.stderr)
        return 1
    print(f"{action}: {users[0]} <-> {users[1]} (stored; no server running)")
    return 0


async def _list(arguments: argparse.Namespace, user: str) -> int:
    try:
        store = await open_store(_database(arguments))
        try:
            for contact in await store.contacts(user):
                print(contact)
        finally:
            await store.close()
    except StoreError as error:
        print(f"tether contacts: {error}", file=sys.stderr)
        return 1
    return 0


def _database(arguments: argparse.Namespace) -> str | Path:
    database: str = arguments.database
    return database or default_database(arguments.data_dir)
