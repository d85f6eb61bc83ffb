"""The demo messenger: a page on the HTTP port with live presence and a chat.

`tether serve --demo true` serves it at `/demo/`. A visitor picks one of `DEMO_USERS`, gets a
token from `POST /demo/token`, and the page connects to the WebSocket gateway with the
JavaScript client of `clients/js` (served at `/demo/client/`, speaking `tether.v1.json`). On the
first token request the demo users are made contacts of each other and members of the group
`DEMO_GROUP`, whose online count the page shows.

Handing out tokens to anyone who asks is only acceptable for a development server, so
`TetherServer` refuses the demo unless it runs embedded with the development secret generated
in its data folder (no `--secret`, no key files, no Redis, no hooks). docs/demo.md says more.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from tether.auth import issue_token
from tether.bus import envelope_pb2 as env
from tether.ops.json_input import JsonInputError, decode_json

if TYPE_CHECKING:
    from tether.server import TetherServer

__all__ = ["DEMO_GROUP", "DEMO_USERS", "TOKEN_TTL", "install_demo"]

logger = logging.getLogger("tether.demo")

DEMO_USERS = ("alice", "bob", "carol", "dave")
"""The users a visitor can pick; each is a contact of every other one."""
DEMO_GROUP = "demo"
"""The group of all demo users, owned by the first of them (conversation id `g:demo`)."""
TOKEN_TTL = 3600.0
"""Seconds a demo token is valid. The page requests a new one before each connect."""

_HERE = Path(__file__).resolve().parent
# The client is a link to clients/js/src in a source tree, and a copy in an installed wheel.
_STATIC = _HERE / "static"
_CLIENT = (_HERE / "client").resolve()
_HEADERS = {
    # The page loads its own files only; it may open WebSockets to the gateway's port.
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_MAX_TOKEN_REQUEST_BYTES = 1024


class _Demo:
    """Handlers of the demo routes for one server."""

    def __init__(self, server: TetherServer) -> None:
        assert server.development_secret is not None, "TetherServer checks this on start"
        self.server = server
        self.secret = server.development_secret
        self.users_ready = False
        self.lock = asyncio.Lock()

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(_STATIC / "index.html")

    async def config(self, request: web.Request) -> web.Response:
        """Tell the page where the gateway listens and whom it may pick."""
        gateway = self.server.config.gateway
        return web.json_response(
            {
                "wsPort": self.server.ws_port,
                "wsPath": gateway.ws_path,
                "tls": gateway.transport_security.tls_enabled,
                "users": list(DEMO_USERS),
                "group": DEMO_GROUP,
                # Groups with more members than this get online counts (docs/groups.md).
                "groupCountThreshold": gateway.groups.count_threshold,
            }
        )

    async def token(self, request: web.Request) -> web.Response:
        """Return a token for one of DEMO_USERS: `{"user": "alice"}` → `{"token": ...}`."""
        if request.content_length is not None and request.content_length > _MAX_TOKEN_REQUEST_BYTES:
            return _error(413, "request body too large")
        # A chunked request states no length, so the length is checked again once read.
        raw = await request.read()
        if len(raw) > _MAX_TOKEN_REQUEST_BYTES:
            return _error(413, "request body too large")
        try:
            body = decode_json(raw)
        except JsonInputError:
            return _error(400, 'send a JSON object: {"user": "alice"}')
        user = body.get("user") if isinstance(body, dict) else None
        if user not in DEMO_USERS:
            return _error(400, f"user must be one of {', '.join(DEMO_USERS)}")
        if not await self._prepare_users():
            return _error(503, "the logic layer did not answer; try again")
        token = issue_token(self.secret, user, ttl=TOKEN_TTL)
        return web.json_response({"token": token, "expiresInS": TOKEN_TTL})

    async def _prepare_users(self) -> bool:
        """Make the demo users contacts of each other and members of DEMO_GROUP, once per run.

        Both are idempotent, so a server started again on the same data folder repeats them
        without harm: a create of an existing group by its owner only adds the members it lists.
        """
        async with self.lock:
            if self.users_ready:
                return True
            requests = [
                ("contacts.add", [user_a, user_b])
                for user_a, user_b in itertools.combinations(DEMO_USERS, 2)
            ]
            requests.append(("groups.create", [DEMO_GROUP, *DEMO_USERS]))  # the first owns it
            for operation, args in requests:
                request = env.AdminRequest(operation=operation, args=args)
                reply = await self.server.request_logic(env.Envelope(admin_request=request))
                if reply is None or reply.admin_result.error_code:
                    logger.warning("demo setup failed: %s %s", operation, " ".join(args))
                    return False
            self.users_ready = True
            logger.info(
                "demo users %s are contacts of each other and members of group %s",
                ", ".join(DEMO_USERS),
                DEMO_GROUP,
            )
            return True


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _demo_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    if request.path.startswith("/demo"):
        response.headers.update(_HEADERS)
    return response


def install_demo(app: web.Application, server: TetherServer) -> None:
    """Add the demo's routes to app, which must not have started yet."""
    demo = _Demo(server)

    async def to_index(request: web.Request) -> web.Response:
        raise web.HTTPFound("/demo/")

    app.middlewares.append(_demo_headers)
    app.router.add_get("/demo", to_index)
    app.router.add_get("/demo/", demo.index)
    app.router.add_get("/demo/config", demo.config)
    app.router.add_post("/demo/token", demo.token)
    app.router.add_static("/demo/static/", _STATIC)
    app.router.add_static("/demo/client/", _CLIENT)
