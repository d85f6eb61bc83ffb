"""The server HTTP API: what a backend in any language can ask of tether without its bus.

Routes, all under `/api/v1` on the HTTP port, each a POST of a JSON object (like the server
APIs of Centrifugo and Pusher, so user ids never need escaping in a path):

- `publish`: store a direct message to a user through the reference logic, as a client's
  Send would be stored, and deliver it to the user's devices.
- `presence`: the visible presence of up to `MAX_PRESENCE_USERS` users in one call.
- `sessions`: a user's presence and connected devices, on every gateway.
- `disconnect`: close one device or every device of a user, with a disconnect code.
- `contacts/add`, `contacts/remove`: change mutual contacts, as `tether contacts` does.
- `groups/...`: publish to a group, online counts, and group membership (`tether.ops.api_groups`).
- `GET /api/v1/openapi.json`: the OpenAPI 3 document of these routes, served without a key.

Every route except the document needs an API key, as `Authorization: Bearer KEY` or
`X-API-Key: KEY`. Without any key configured the API is off and every route returns 404
`api_disabled`. docs/http-api.md describes each route with examples.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING

from aiohttp import web

from tether.bus import channels
from tether.bus import envelope_pb2 as env
from tether.logic.groups import SYSTEM_SENDER
from tether.ops.api_errors import (
    ApiErrorCode,
    ApiFailure,
    RouteCodes,
    logic_failure,
    respond_with_api_errors,
)
from tether.ops.api_groups import GroupRoutes
from tether.ops.api_input import (
    MAX_ID_CHARACTERS,
    PUBLISH_FIELDS,
    RequestBody,
    read_json_object,
)
from tether.ops.api_keys import ApiKeys, presented_key
from tether.ops.presence_view import presence_json, presence_reader, sessions_json
from tether.presence.reader import PresenceReader
from tether.protocol import tether_pb2 as pb
from tether.protocol.codes import RECONNECT_RANGE_START, Code
from tether.protocol.errors import BusError
from tether.stats import Histogram

if TYPE_CHECKING:
    from tether.server import TetherServer

__all__ = [
    "API_PREFIX",
    "DISCONNECT_CODES",
    "MAX_PRESENCE_USERS",
    "SYSTEM_SENDER",
    "BackendApi",
]

logger = logging.getLogger("tether.http.api")

API_PREFIX = "/api/v1"
OPENAPI_PATH = API_PREFIX + "/openapi.json"
MAX_PRESENCE_USERS = 1000
"""Maximum number of user ids in one presence query, all read in one Redis round trip."""
API_DEVICE = "api"
"""Sender device of published messages: the sender's devices other than this one get a copy."""
MAX_REASON_CHARACTERS = 200
"""Maximum length of a disconnect reason, in characters, as the gateway cuts reasons to it."""
DISCONNECT_CODES = frozenset(code for code in Code if code >= RECONNECT_RANGE_START)
"""Codes a backend may close connections with: every disconnect code of the protocol."""
DEFAULT_DISCONNECT_CODE = Code.FORBIDDEN

_PUBLISH_CODES: RouteCodes = {
    Code.ALREADY_EXISTS: (ApiErrorCode.MESSAGE_ID_CONFLICT, "client_message_id"),
}

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def load_openapi_document() -> dict[str, object]:
    """Return the OpenAPI document shipped in this package."""
    text = resources.files("tether.ops").joinpath("openapi.json").read_text()
    document: dict[str, object] = json.loads(text)
    return document


class BackendApi(GroupRoutes):
    """Routes and middleware of the server HTTP API of one process."""

    def __init__(self, server: TetherServer, keys: ApiKeys) -> None:
        """Prepare the API of server; it is off when keys is empty."""
        self._server = server
        self.keys = keys
        self.reader: PresenceReader | None = presence_reader(server) if keys.enabled else None
        self._document = json.dumps(load_openapi_document()).encode()
        self.requests: Counter[tuple[str, int]] = Counter()
        """Responses sent, by route (its path under the prefix, or "unmatched") and status."""
        self.latency = Histogram()
        """Seconds from a request's arrival to its response, every route together."""

    def install(self, app: web.Application) -> None:
        """Add the middleware and the routes to app, which must not have started yet."""
        app.middlewares.append(self._middleware)
        routes = {
            "publish": self._publish,
            "presence": self._presence,
            "sessions": self._sessions,
            "disconnect": self._disconnect,
            "contacts/add": self._add_contact,
            "contacts/remove": self._remove_contact,
            **self._group_routes(),
        }
        for path, handler in routes.items():
            app.router.add_post(f"{API_PREFIX}/{path}", handler)
        app.router.add_get(OPENAPI_PATH, self._openapi)

    async def start(self) -> None:
        """Log whether the API is on, and open the presence reader."""
        if self.reader is None:
            logger.info("server API off: no API key set (--api-keys or --api-keys-file)")
            return
        await self.reader.start()
        count = len(self.keys)
        logger.info(
            "server API on at %s with %d API key%s", API_PREFIX, count, "" if count == 1 else "s"
        )

    async def close(self) -> None:
        """Close the presence reader."""
        if self.reader is not None:
            await self.reader.close()

    # Middleware: the API's paths only; health probes and metrics pass through untouched.

    @web.middleware
    async def _middleware(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        path = request.path
        if path != API_PREFIX and not path.startswith(API_PREFIX + "/"):
            return await handler(request)

        async def checked(request: web.Request) -> web.StreamResponse:
            if not self.keys.enabled:
                raise ApiFailure(
                    ApiErrorCode.API_DISABLED,
                    "the server API is off: start tether with --api-keys or --api-keys-file",
                )
            if path != OPENAPI_PATH:
                self._authenticate(request)
            return await handler(request)

        started = time.perf_counter()
        response = await respond_with_api_errors(request, checked, "API", logger)
        self.latency.observe(time.perf_counter() - started)
        # Routes come from the fixed table, so the label takes few values whatever the path.
        resource = request.match_info.route.resource
        route = "unmatched"
        if resource is not None:
            route = resource.canonical.removeprefix(API_PREFIX + "/")
        self.requests[route, response.status] += 1
        return response

    def _authenticate(self, request: web.Request) -> None:
        """Raise ApiFailure unless the request carries a configured API key."""
        presented = presented_key(request.headers, "X-API-Key")
        if not presented:
            raise ApiFailure(
                ApiErrorCode.UNAUTHORIZED,
                "missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
            )
        if not self.keys.check(presented):
            logger.warning("server API key rejected from %s", request.remote)
            raise ApiFailure(ApiErrorCode.UNAUTHORIZED, "the API key is not valid")

    def _check_serving(self) -> None:
        reason = self._server.not_ready_reason()
        if reason is not None:
            raise ApiFailure(ApiErrorCode.UNAVAILABLE, f"server not ready: {reason}")

    # Routes.

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._document, content_type="application/json")

    async def _publish(self, request: web.Request) -> web.Response:
        body = await read_json_object(request, PUBLISH_FIELDS | {"user_id"})
        recipient = body.user_id("user_id")
        sender = body.user_id("sender", default=SYSTEM_SENDER)
        if sender == recipient:
            raise ApiFailure(ApiErrorCode.BAD_REQUEST, "sender must differ from user_id", "sender")
        return await self._publish_message(body, sender, recipient, _PUBLISH_CODES)

    async def _publish_message(
        self, body: RequestBody, sender: str, recipient: str, route_codes: RouteCodes
    ) -> web.Response:
        """Store a message to recipient (a user id or a group's conversation id) and deliver it.

        Reads the message fields of body; the caller has read and checked the others.
        """
        payload = _message_body(body)
        limit = self._server.config.gateway.max_body_bytes
        if len(payload) > limit:
            raise ApiFailure(
                ApiErrorCode.BODY_TOO_LARGE,
                f"message body of {len(payload)} bytes exceeds {limit}",
                "body" if body.has("body") else "body_base64",
            )
        client_message_id = body.text(
            "client_message_id",
            max_characters=MAX_ID_CHARACTERS,
            default=f"api-{uuid.uuid4().hex}",
        )
        self._check_serving()

        send = pb.Send(client_message_id=client_message_id, recipient=recipient, body=payload)
        request_envelope = env.Envelope(
            send_request=env.SendRequest(
                sender=sender, sender_device=API_DEVICE, send=send, from_api=True
            )
        )
        reply = await self._request_logic(request_envelope)
        result = reply.send_result
        if result.error_code:
            raise logic_failure(result.error_code, result.error_message, route_codes)
        ack = result.ack
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("published message %d from %s to %s", ack.message_id, sender, recipient)
        return web.json_response(
            {
                "message_id": ack.message_id,
                "conversation_id": ack.conversation_id,
                "sequence": ack.sequence,
                "timestamp_ms": ack.timestamp_ms,
                "client_message_id": ack.client_message_id,
            }
        )

    async def _presence(self, request: web.Request) -> web.Response:
        body = await read_json_object(request, frozenset({"user_ids"}))
        user_ids = body.user_ids("user_ids", max_items=MAX_PRESENCE_USERS)
        self._check_serving()
        assert self.reader is not None
        try:
            users = await self.reader.presence(user_ids)
        except BusError as error:
            raise ApiFailure(ApiErrorCode.UNAVAILABLE, str(error)) from error
        return web.json_response({"users": [presence_json(user) for user in users]})

    async def _sessions(self, request: web.Request) -> web.Response:
        body = await read_json_object(request, frozenset({"user_id"}))
        user_id = body.user_id("user_id")
        self._check_serving()
        assert self.reader is not None
        try:
            sessions = await self.reader.sessions(user_id)
        except BusError as error:
            raise ApiFailure(ApiErrorCode.UNAVAILABLE, str(error)) from error
        return web.json_response(sessions_json(sessions))

    async def _disconnect(self, request: web.Request) -> web.Response:
        fields = frozenset({"user_id", "device_id", "code", "reason"})
        body = await read_json_object(request, fields)
        user_id = body.user_id("user_id")
        device_id = ""
        if body.has("device_id"):
            device_id = body.text("device_id", max_characters=MAX_ID_CHARACTERS)
        code = body.integer("code", DEFAULT_DISCONNECT_CODE)
        if code not in DISCONNECT_CODES:
            raise ApiFailure(
                ApiErrorCode.BAD_REQUEST,
                f"code {code} is not a disconnect code; use one of 4000-4007 or 4500-4507 "
                "(docs/protocol.md)",
                "code",
            )
        reason = body.optional_text("reason", max_characters=MAX_REASON_CHARACTERS)
        self._check_serving()

        # Published on the user's channel, so it reaches exactly the gateways holding the
        # user, as deliveries and device claims do. No registry of connected users is read.
        message = env.Envelope(
            user_disconnect=env.UserDisconnect(device_id=device_id, code=code, reason=reason)
        )
        try:
            self._server.bus.publish(channels.user_channel(user_id), message.SerializeToString())
        except BusError as error:
            raise ApiFailure(ApiErrorCode.UNAVAILABLE, f"bus did not take it: {error}") from error
        logger.info(
            "server API disconnects user %s %s with code %d",
            user_id,
            f"device {device_id}" if device_id else "on every device",
            code,
        )
        return web.Response(status=202)

    async def _add_contact(self, request: web.Request) -> web.Response:
        return await self._change_contacts(request, "contacts.add")

    async def _remove_contact(self, request: web.Request) -> web.Response:
        return await self._change_contacts(request, "contacts.remove")

    async def _change_contacts(self, request: web.Request, operation: str) -> web.Response:
        body = await read_json_object(request, frozenset({"user_id", "contact_id"}))
        user_id = body.user_id("user_id")
        contact_id = body.user_id("contact_id")
        if user_id == contact_id:
            raise ApiFailure(
                ApiErrorCode.BAD_REQUEST, "a user cannot be their own contact", "contact_id"
            )
        self._check_serving()
        reply = await self._request_logic(
            env.Envelope(
                admin_request=env.AdminRequest(operation=operation, args=[user_id, contact_id])
            )
        )
        result = reply.admin_result
        if result.error_code:
            raise logic_failure(result.error_code, result.error_message)
        return web.Response(status=204)

    async def _request_logic(self, request: env.Envelope) -> env.Envelope:
        """Send request to the logic layer; raise ApiFailure `unavailable` without a reply."""
        try:
            reply = await self._server.request_logic(request)
        except BusError as error:
            raise ApiFailure(ApiErrorCode.UNAVAILABLE, f"bus did not take it: {error}") from error
        if reply is None:
            timeout = self._server.config.gateway.request_timeout
            raise ApiFailure(
                ApiErrorCode.UNAVAILABLE, f"logic layer did not reply within {timeout:g} s"
            )
        return reply


def _message_body(body: RequestBody) -> bytes:
    """Return the message bytes from exactly one of `body` (UTF-8 text) and `body_base64`."""
    if body.has("body") == body.has("body_base64"):
        raise ApiFailure(
            ApiErrorCode.BAD_REQUEST, "give exactly one of body and body_base64", "body"
        )
    if body.has("body"):
        return body.string("body").encode()
    return body.base64("body_base64")
