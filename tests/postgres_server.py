"""The PostgreSQL server the tests use, and the throwaway database they create in it.

The server is, in order:

1. the one that TETHER_TEST_POSTGRES_URL names (its role must be allowed to create databases);
2. the one on 127.0.0.1:5432 as user postgres, which this project's machines run with trust
   authentication;
3. a throwaway server that `initdb` and `pg_ctl` from PATH start in a temporary folder, on a
   free port of 127.0.0.1. initdb refuses to run as root, so as root it runs as the
   `postgres` account through `runuser`.

In that server each test run creates a database with a unique name and drops it at the end.
Each test gets a schema of its own in that database (`?search_path=` in the URL). When no
server can be had, the tests that need one are skipped with ENABLE_HINT.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tether.local_redis import free_port
from tether.urls import redact_url

__all__ = ["ENABLE_HINT", "URL_ENV", "PostgresUnavailable", "TestDatabase"]

URL_ENV = "TETHER_TEST_POSTGRES_URL"
LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ENABLE_HINT = (
    f"set {URL_ENV}=postgresql://USER:PASSWORD@HOST:PORT/DATABASE to a server whose role may "
    "create databases, run PostgreSQL on 127.0.0.1:5432 with trust authentication for user "
    "postgres, or put initdb and pg_ctl on PATH"
)
_CONNECT_TIMEOUT = 5.0  # seconds
_START_TIMEOUT = 60  # seconds for initdb and for the throwaway server to accept connections

_Result = TypeVar("_Result")


class PostgresUnavailable(Exception):
    """No PostgreSQL server can be used or started."""


def _run_in_thread(call: Callable[[], Coroutine[Any, Any, _Result]]) -> _Result:
    """Run a coroutine to completion on a loop of its own in a helper thread.

    The session fixtures run between tests, next to the loop pytest-asyncio manages for the
    main thread; a separate thread keeps the two loops apart.
    """
    results: list[_Result] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            results.append(asyncio.run(call()))
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=target, name="postgres-admin")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]


async def _execute(url: str, *statements: str) -> None:
    connection = await asyncpg.connect(url, timeout=_CONNECT_TIMEOUT)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def _connection_error(url: str) -> str | None:
    """Return why a server cannot be used, or None when a query on it succeeds."""
    try:
        _run_in_thread(lambda: _execute(url, "SELECT 1"))
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def _with_database(url: str, database: str, **parameters: str) -> str:
    """Return url pointing at another database, with extra query parameters."""
    parts = urlsplit(url)
    query = "&".join(
        [*filter(None, parts.query.split("&")), *(f"{k}={v}" for k, v in parameters.items())]
    )
    return urlunsplit(parts._replace(path=f"/{database}", query=query))


class ThrowawayServer:
    """A PostgreSQL server of the tests' own, from initdb and pg_ctl on PATH."""

    def __init__(self) -> None:
        initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise PostgresUnavailable("initdb and pg_ctl are not on PATH")
        self.pg_ctl = pg_ctl
        self.prefix: list[str] = []
        self.directory = Path(tempfile.mkdtemp(prefix="tether-postgres-"))
        if os.geteuid() == 0:
            self._run_as_postgres_account()
        self.port = free_port()
        self.data = self.directory / "data"
        self._call([initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory}"
        log = str(self.directory / "server.log")
        self._call([pg_ctl, "-D", str(self.data), "-o", options, "-l", log, "-w", "start"])
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run_as_postgres_account(self) -> None:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(self.directory)
            raise PostgresUnavailable(
                "initdb refuses to run as root and there is no postgres account to run it as"
            ) from None
        runuser = shutil.which("runuser")
        if runuser is None:
            shutil.rmtree(self.directory)
            raise PostgresUnavailable("initdb refuses to run as root and runuser is missing")
        os.chown(self.directory, account.pw_uid, account.pw_gid)
        self.prefix = [runuser, "-u", "postgres", "--"]

    def _call(self, command: list[str]) -> None:
        try:
            subprocess.run(
                [*self.prefix, *command],
                check=True,
                capture_output=True,
                timeout=_START_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.SubprocessError) as error:
            output = getattr(error, "stderr", b"") or b""
            self.stop()
            raise PostgresUnavailable(
                f"{Path(command[0]).name} failed: {error} {output.decode(errors='replace')}"
            ) from error

    def stop(self) -> None:
        """Stop the server (pg_ctl stop reads its PID from the data folder) and delete it."""
        if (self.directory / "data" / "postmaster.pid").exists():
            subprocess.run(
                [*self.prefix, self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"],
                capture_output=True,
                timeout=_START_TIMEOUT,
                check=False,
            )
        shutil.rmtree(self.directory, ignore_errors=True)


class TestDatabase:
    """A database created for one test run, with a fresh schema for each test."""

    __test__ = False  # not a test class, despite the name

    def __init__(self) -> None:
        self.server: ThrowawayServer | None = None
        configured = os.environ.get(URL_ENV)
        if configured:
            error = _connection_error(configured)
            if error is not None:
                raise PostgresUnavailable(f"{URL_ENV}={redact_url(configured)} failed: {error}")
            admin_url = configured
        elif _connection_error(LOCAL_URL) is None:
            admin_url = LOCAL_URL
        else:
            self.server = ThrowawayServer()
            admin_url = self.server.url
        self.admin_url = admin_url
        self.name = f"tether_test_{os.getpid()}_{secrets.token_hex(4)}"
        try:
            _run_in_thread(lambda: _execute(admin_url, f'CREATE DATABASE "{self.name}"'))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            self.close()
            raise PostgresUnavailable(f"cannot create a test database: {error}") from error
        self.url = _with_database(admin_url, self.name)
        self._schemas = 0

    def new_schema(self) -> str:
        """Create an empty schema and return the database URL whose search_path selects it."""
        self._schemas += 1
        schema = f"test_{self._schemas}"
        _run_in_thread(lambda: _execute(self.url, f"CREATE SCHEMA {schema}"))
        return _with_database(self.admin_url, self.name, search_path=schema)

    def close(self) -> None:
        """Drop the database (closing its leftover connections) and stop a throwaway server."""
        try:
            drop = f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'
            _run_in_thread(lambda: _execute(self.admin_url, drop))
        finally:
            if self.server is not None:
                self.server.stop()
