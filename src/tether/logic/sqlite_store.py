"""The SQLite backend of the logic store: one database file, the embedded default.

Calls run synchronously on the event loop's thread, because a local SQLite statement usually
takes microseconds. WAL mode lets `tether contacts` write while a server runs. A writer waits
up to 5 s for another process's write lock, and the event loop waits with it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

from tether.logic import migrations
from tether.logic.sql_store import SqlStore
from tether.logic.store import StoreError

__all__ = ["MIN_SQLITE_VERSION", "SqliteStore"]

# The shared queries use RETURNING, which SQLite has since 3.35 (upserts since 3.24).
MIN_SQLITE_VERSION = (3, 35, 0)
_BUSY_TIMEOUT = 5.0  # seconds a writer waits for another process's write lock


class SqliteStore(SqlStore[sqlite3.Connection]):
    """The store in one SQLite file. One connection, shared by the tasks of one event loop."""

    def __init__(self, path: Path, db: sqlite3.Connection) -> None:
        super().__init__(str(path))
        self.path = path
        self._db = db
        # The connection has one transaction at a time; tasks take turns for it.
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        """Open or create the database file and apply the migrations it lacks."""
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
            needed = ".".join(map(str, MIN_SQLITE_VERSION))
            raise StoreError(f"SQLite {needed} or newer is needed, found {sqlite3.sqlite_version}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, isolation_level=None, timeout=_BUSY_TIMEOUT)
        except (OSError, sqlite3.Error) as error:
            raise StoreError(f"cannot open database {path}: {error}") from error
        store = cls(path, db)
        try:
            store._pragma("PRAGMA journal_mode=WAL")
            store._pragma("PRAGMA synchronous=NORMAL")
            await store._migrate(migrations.SQLITE)
        except StoreError as error:
            db.close()
            raise StoreError(f"cannot open database {path}: {error}") from error
        return store

    async def close(self) -> None:
        self._db.close()

    def _pragma(self, sql: str) -> None:
        try:
            self._db.execute(sql)
        except sqlite3.Error as error:
            raise StoreError(f"{error} in: {sql}") from error

    @asynccontextmanager
    async def _begin(self) -> AsyncIterator[sqlite3.Connection]:
        async with self._lock:
            self._statement("BEGIN IMMEDIATE", ())
            try:
                yield self._db
                self._statement("COMMIT", ())
            except BaseException:
                if self._db.in_transaction:
                    # A failed rollback leaves nothing to do; the error that got here is raised.
                    with suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise

    async def _run(
        self, connection: sqlite3.Connection, sql: str, parameters: Sequence[object]
    ) -> int:
        return self._statement(sql, parameters).rowcount

    async def _query(
        self, connection: sqlite3.Connection, sql: str, parameters: Sequence[object]
    ) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self._statement(sql, parameters).fetchall()
        return rows

    async def _run_script(self, connection: sqlite3.Connection, script: str) -> None:
        for statement in migrations.statements(script):
            self._statement(statement, ())

    def _statement(self, sql: str, parameters: Sequence[object]) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, parameters)
        except sqlite3.Error as error:
            raise StoreError(f"{error} in: {sql.split()[0]} ...") from error
