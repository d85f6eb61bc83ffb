"""The PostgreSQL backend of the logic store, through asyncpg, for logic workers in a cluster.

Every logic worker opens a small connection pool to the same database. Writers in different
processes stay correct because of how the shared queries lock rows (see
tether.logic.sql_store). A deadlock between two workers' transactions raises StoreConflict,
and the logic service runs its batch again.

The URL is libpq's: `postgresql://USER:PASSWORD@HOST:PORT/DATABASE?PARAMETER=VALUE`.
asyncpg passes query parameters it does not know to the server as settings, so
`?search_path=SCHEMA` keeps tether's tables in a schema of their own.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from tether.logic import migrations
from tether.logic.sql_store import SqlStore
from tether.logic.store import StoreConflict, StoreError
from tether.urls import redact_url

__all__ = ["PostgresStore"]

logger = logging.getLogger("tether.logic.postgres")

if TYPE_CHECKING:
    _Connection: TypeAlias = PoolConnectionProxy[asyncpg.Record]
else:  # the class is generic only in asyncpg-stubs, not at run time
    _Connection = PoolConnectionProxy
_Result = TypeVar("_Result")

# A logic worker runs one batch transaction at a time; the spare connections serve calls
# outside a batch (such as `tether contacts`) without waiting for it.
_POOL_SIZE = 4
_TIMEOUT = 10.0  # seconds for connecting, for taking a pooled connection and for one statement
# Key of the advisory lock held while migrating: "tether" in ASCII, then 1.
_MIGRATION_LOCK = 0x7465746865720001

# Everything asyncpg raises when a statement or the connection fails.
_DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
    TimeoutError,
)


class PostgresStore(SqlStore[_Connection]):
    """The store in a PostgreSQL database, shared by every logic worker of a cluster."""

    _ROW_LOCK = " FOR UPDATE"

    def __init__(self, url: str, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        super().__init__(redact_url(url))
        self._pool = pool

    @classmethod
    async def open(cls, url: str) -> PostgresStore:
        """Connect to the database at url and apply the migrations it lacks."""
        description = redact_url(url)
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=_POOL_SIZE,
                timeout=_TIMEOUT,
                command_timeout=_TIMEOUT,
            )
        except (*_DRIVER_ERRORS, ValueError) as error:
            raise StoreError(f"cannot open database {description}: {error}") from error
        store = cls(url, pool)
        try:
            await store._check_encoding()
            await store._migrate(migrations.POSTGRES)
        except StoreError as error:
            await store.close()
            raise StoreError(f"cannot open database {description}: {error}") from error
        logger.debug("opened %s", description)
        return store

    async def _check_encoding(self) -> None:
        """Raise StoreError unless the database keeps text in UTF-8.

        In another encoding, an id with a character the encoding lacks fails its statement,
        and with it the whole batch: one client's emoji would cost other users' requests.
        """
        encoding = await _translated(self._pool.fetchval("SHOW server_encoding"))
        if encoding != "UTF8":
            raise StoreError(
                f"its encoding is {encoding}, but tether needs UTF8 "
                "(CREATE DATABASE ... ENCODING 'UTF8' TEMPLATE template0)"
            )

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), _TIMEOUT)
        except TimeoutError:
            logger.warning("closing %s timed out; dropping its connections", self.description)
            self._pool.terminate()

    @asynccontextmanager
    async def _begin(self) -> AsyncIterator[_Connection]:
        connection = await _translated(self._pool.acquire(timeout=_TIMEOUT))
        try:
            transaction = connection.transaction()
            await _translated(transaction.start())
            try:
                yield connection
            except BaseException:
                # A failed rollback closes the connection in asyncpg; the error that got
                # here is the one raised.
                try:
                    await transaction.rollback()
                except _DRIVER_ERRORS as error:
                    logger.warning("rollback on %s failed: %s", self.description, error)
                raise
            await _translated(transaction.commit())
        finally:
            await self._pool.release(connection)

    async def _lock_schema(self, connection: _Connection) -> None:
        await self._run(connection, "SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))

    async def _run(self, connection: _Connection, sql: str, parameters: Sequence[object]) -> int:
        status = await _translated(connection.execute(_numbered(sql), *parameters))
        # The status is the command tag, such as "INSERT 0 1" or "DELETE 2": the count is last.
        count = status.rpartition(" ")[2]
        return int(count) if count.isdigit() else 0

    async def _query(
        self, connection: _Connection, sql: str, parameters: Sequence[object]
    ) -> list[tuple[Any, ...]]:
        records = await _translated(connection.fetch(_numbered(sql), *parameters))
        return [tuple(record) for record in records]

    async def _run_script(self, connection: _Connection, script: str) -> None:
        # Without parameters asyncpg sends the simple query protocol, which runs several
        # statements in one round trip.
        await _translated(connection.execute(script))


async def _translated(call: Awaitable[_Result]) -> _Result:
    """Await a driver call; raise its failure as StoreError (StoreConflict for deadlocks)."""
    try:
        return await call
    except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as error:
        raise StoreConflict(f"transaction conflict: {error}") from error
    except _DRIVER_ERRORS as error:
        raise StoreError(f"{type(error).__name__}: {error}") from error


@functools.lru_cache(maxsize=256)
def _numbered(sql: str) -> str:
    """Turn the `?` placeholders of the shared queries into PostgreSQL's `$1`, `$2`, ..."""
    counter = iter(range(1, sql.count("?") + 1))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)
