"""The admin dashboard: a live page of gateways, load and presence on the HTTP port.

Routes, when the process has at least one admin key (`--admin-keys`, `--admin-keys-file`):

- `GET /admin/`: the page (HTML, JavaScript and CSS from `tether/ops/static`, no external
  resources). Its login form takes an admin key, which the page keeps in the tab's
  sessionStorage and sends as `Authorization: Bearer KEY` with every request, never in a URL.
- `GET /admin/api/overview`: the gateways with their load, the cluster's totals and rates.
- `POST /admin/api/sessions` with `{"user_id": "alice"}`: the user's presence and devices,
  the same body as the server API's `sessions` route returns.

The page needs no key; every `/admin/api/` route does, as `Authorization: Bearer KEY` or
`X-Admin-Key: KEY`, and rejects a missing or wrong key with 401 `unauthorized`. Errors have
the server API's JSON body and codes (`tether.ops.api_errors`). Admin keys are separate from
API keys: the dashboard only reads, while an API key can publish messages and disconnect
users. Without an admin key every `/admin` path answers 404 `not_found` saying how to turn
the dashboard on.

Embedded, the overview shows this process's own gateway. In a cluster every gateway writes
its load to Redis every few seconds (`tether.ops.load_board`), so the dashboard of any
process, a logic worker's too, lists every live gateway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from tether.ops.api_errors import ApiErrorCode, ApiFailure, respond_with_api_errors
from tether.ops.api_input import read_json_object
from tether.ops.api_keys import ApiKeys, presented_key
from tether.ops.gateway_load import COUNTERS, GatewayLoad
from tether.ops.load_board import RedisLoadBoard
from tether.ops.presence_view import presence_reader, sessions_json
from tether.presence.reader import PresenceReader
from tether.protocol.errors import BusError

if TYPE_CHECKING:
    from tether.server import TetherServer

__all__ = ["ADMIN_PREFIX", "AdminDashboard", "overview_json"]

logger = logging.getLogger("tether.http.admin")

ADMIN_PREFIX = "/admin"
ADMIN_API_PREFIX = ADMIN_PREFIX + "/api/"
KEY_HEADER = "X-Admin-Key"
OVERVIEW_MAX_AGE = 0.5
"""Seconds an overview is reused, so any number of open dashboards costs at most two Redis
reads per second. Requests that arrive while an overview is read wait for that read and share
its result or its failure, so a Redis that stops replying costs each of them one timeout."""
REJECTION_LOG_INTERVAL = 60.0
"""Seconds between two warnings about rejected admin keys; the ones in between are counted."""

_STATIC = Path(__file__).resolve().parent / "static"
_HEADERS = {
    # The page loads its own files only. form-action 'none': if the script does not run,
    # the login form cannot submit the key anywhere, not even into this page's URL.
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def overview_json(
    loads: list[GatewayLoad],
    *,
    mode: str,
    served_by_gateway: str | None,
    truncated: bool,
    now_ms: int,
) -> dict[str, object]:
    """Return the overview of the gateways: each one's load, their sums and summed rates.

    `users` sums each gateway's users, so a user connected to two gateways counts twice.
    """
    totals = {
        "gateways": len(loads),
        "connections": sum(load.connections for load in loads),
        "sessions": sum(load.sessions for load in loads),
        "users": sum(load.users for load in loads),
        "pending_requests": sum(load.pending_requests for load in loads),
    }
    return {
        "mode": mode,
        "served_by_gateway": served_by_gateway,
        "time_ms": now_ms,
        "totals": totals,
        "rates": {name: sum(load.rates[name] for load in loads) for name in COUNTERS},
        "counters": {name: sum(load.totals[name] for load in loads) for name in COUNTERS},
        "gateways": [load.to_json() for load in loads],
        "truncated": truncated,
    }


class _RejectionLog:
    """Warns about rejected admin keys at most once per interval, counting the rest."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next_warning = 0.0
        self._suppressed = 0

    def rejected(self, remote: str | None) -> None:
        now = time.monotonic()
        if now < self._next_warning:
            self._suppressed += 1
            return
        suppressed, self._suppressed = self._suppressed, 0
        self._next_warning = now + self._interval
        logger.warning(
            "admin key rejected from %s (%d more rejections since the last warning)",
            remote,
            suppressed,
        )


class AdminDashboard:
    """Routes and middleware of the admin dashboard of one process."""

    def __init__(self, server: TetherServer, keys: ApiKeys) -> None:
        """Prepare the dashboard of server; it is off when keys is empty."""
        self._server = server
        self.keys = keys
        self.reader: PresenceReader | None = None
        self.board: RedisLoadBoard | None = None
        if keys.enabled:
            self.reader = presence_reader(server)
            if server.config.redis_url:
                self.board = RedisLoadBoard(
                    server.config.redis_url, cluster=server.config.redis_cluster
                )
        self._rejections = _RejectionLog(REJECTION_LOG_INTERVAL)
        self._overview: tuple[float, dict[str, object]] | None = None
        self._overview_read: asyncio.Task[dict[str, object]] | None = None

    def install(self, app: web.Application) -> None:
        """Add the middleware and the routes to app, which must not have started yet."""
        app.middlewares.append(self._middleware)
        if not self.keys.enabled:
            app.router.add_route("*", ADMIN_PREFIX, self._off)
            app.router.add_route("*", ADMIN_PREFIX + "/{tail:.*}", self._off)
            return
        app.router.add_get(ADMIN_PREFIX, self._to_page)
        app.router.add_get(ADMIN_PREFIX + "/", self._page)
        app.router.add_static(ADMIN_PREFIX + "/static/", _STATIC)
        app.router.add_get(ADMIN_API_PREFIX + "overview", self._overview_route)
        app.router.add_post(ADMIN_API_PREFIX + "sessions", self._sessions)

    async def start(self) -> None:
        """Log whether the dashboard is on, and open its readers."""
        if not self.keys.enabled:
            logger.info("admin dashboard off: no admin key set (--admin-keys or --admin-keys-file)")
            return
        assert self.reader is not None
        await self.reader.start()
        if self.board is not None:
            await self.board.start()
        count = len(self.keys)
        logger.info(
            "admin dashboard on at %s/ with %d admin key%s",
            ADMIN_PREFIX,
            count,
            "" if count == 1 else "s",
        )

    async def close(self) -> None:
        """Stop a read of the overview in progress and close the readers."""
        read = self._overview_read
        if read is not None:
            read.cancel()
            await asyncio.wait({read})  # its outcome no longer matters, only that it ended
        if self.reader is not None:
            await self.reader.close()
        if self.board is not None:
            await self.board.close()

    # Middleware: /admin paths only.

    @web.middleware
    async def _middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        path = request.path
        if path != ADMIN_PREFIX and not path.startswith(ADMIN_PREFIX + "/"):
            return await handler(request)
        if self.keys.enabled and path.startswith(ADMIN_API_PREFIX):
            response = await respond_with_api_errors(
                request, self._authenticated(handler), "admin dashboard", logger
            )
        else:
            response = await respond_with_api_errors(request, handler, "admin dashboard", logger)
        response.headers.update(_HEADERS)
        return response

    def _authenticated(self, handler: _Handler) -> _Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            presented = presented_key(request.headers, KEY_HEADER)
            if not presented:
                raise ApiFailure(
                    ApiErrorCode.UNAUTHORIZED,
                    f"missing admin key: send 'Authorization: Bearer KEY' or '{KEY_HEADER}: KEY'",
                )
            if not self.keys.check(presented):
                self._rejections.rejected(request.remote)
                raise ApiFailure(ApiErrorCode.UNAUTHORIZED, "the admin key is not valid")
            return await handler(request)

        return checked

    # Routes.

    async def _off(self, request: web.Request) -> web.Response:
        raise ApiFailure(
            ApiErrorCode.NOT_FOUND,
            "the admin dashboard is off: start tether with --admin-keys or --admin-keys-file",
        )

    async def _to_page(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(ADMIN_PREFIX + "/")

    async def _page(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(_STATIC / "admin.html")

    async def _overview_route(self, request: web.Request) -> web.Response:
        return web.json_response(await self.overview())

    async def overview(self) -> dict[str, object]:
        """Return the overview, reading it again when the last one is older than the max age.

        Raises ApiFailure `unavailable` when Redis cannot be read.
        """
        now = time.monotonic()
        if self._overview is not None and now - self._overview[0] < OVERVIEW_MAX_AGE:
            return self._overview[1]
        if self._overview_read is None:
            self._overview_read = asyncio.get_running_loop().create_task(
                self._keep_overview(now), name="admin-overview"
            )
        # Shielded: a client that hangs up cancels its own wait, not the read others share.
        return await asyncio.shield(self._overview_read)

    async def _keep_overview(self, started: float) -> dict[str, object]:
        try:
            overview = await self._read_overview()
        finally:
            self._overview_read = None
        self._overview = (started, overview)
        return overview

    async def _read_overview(self) -> dict[str, object]:
        server = self._server
        truncated = False
        if self.board is not None:
            try:
                loads, truncated = await self.board.read()
            except BusError as error:
                raise ApiFailure(ApiErrorCode.UNAVAILABLE, str(error)) from error
        elif server.load_reporter is not None:
            loads = [server.load_reporter.latest]
        else:
            loads = []
        return overview_json(
            loads,
            mode="cluster" if server.config.redis_url else "embedded",
            served_by_gateway=server.gateway.id if server.gateway is not None else None,
            truncated=truncated,
            now_ms=int(time.time() * 1000),
        )

    async def _sessions(self, request: web.Request) -> web.Response:
        body = await read_json_object(request, frozenset({"user_id"}))
        user_id = body.user_id("user_id")
        assert self.reader is not None
        try:
            sessions = await self.reader.sessions(user_id)
        except BusError as error:
            raise ApiFailure(ApiErrorCode.UNAVAILABLE, str(error)) from error
        return web.json_response(sessions_json(sessions))
