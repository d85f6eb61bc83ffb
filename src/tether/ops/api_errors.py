"""Error codes of the server HTTP API, the exception that carries one to the response, and
the translation of the logic layer's error codes.

Every error response has the same JSON body, with `field` only when one input is at fault:

    {"error": {"code": "bad_request", "message": "user_ids[2]: ...", "field": "user_ids[2]"}}

docs/http-api.md prints this table; tests/test_http_api.py keeps the two in step.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web

from tether.protocol.codes import Code

__all__ = [
    "ApiErrorCode",
    "ApiErrorInfo",
    "ApiFailure",
    "RouteCodes",
    "error_body",
    "error_table",
    "logic_failure",
    "respond_with_api_errors",
]


class ApiErrorCode(enum.StrEnum):
    """Every error code the server HTTP API returns."""

    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    NOT_A_MEMBER = "not_a_member"
    API_DISABLED = "api_disabled"
    NOT_FOUND = "not_found"
    GROUP_NOT_FOUND = "group_not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    GROUP_EXISTS = "group_exists"
    OWNER_NOT_REMOVABLE = "owner_not_removable"
    LIMIT_REACHED = "limit_reached"
    MESSAGE_ID_CONFLICT = "message_id_conflict"
    BODY_TOO_LARGE = "body_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


@dataclass(frozen=True, slots=True)
class ApiErrorInfo:
    """HTTP status of an error code, whether retrying can help, and what it means."""

    code: ApiErrorCode
    status: int
    retry: bool
    meaning: str


_TABLE: dict[ApiErrorCode, ApiErrorInfo] = {
    info.code: info
    for info in (
        ApiErrorInfo(
            ApiErrorCode.BAD_REQUEST,
            400,
            False,
            "The body is not a JSON object of the documented shape, or a field is missing or "
            "invalid; `field` names it.",
        ),
        ApiErrorInfo(
            ApiErrorCode.UNAUTHORIZED,
            401,
            False,
            "The request has no API key, or the key is not one of the configured keys.",
        ),
        ApiErrorInfo(
            ApiErrorCode.NOT_A_MEMBER,
            403,
            False,
            "The sender of a group publish is not a member of the group.",
        ),
        ApiErrorInfo(
            ApiErrorCode.API_DISABLED,
            404,
            False,
            "The server runs without API keys, so the API is off.",
        ),
        ApiErrorInfo(ApiErrorCode.NOT_FOUND, 404, False, "No API route has this path."),
        ApiErrorInfo(ApiErrorCode.GROUP_NOT_FOUND, 404, False, "No group has this id."),
        ApiErrorInfo(
            ApiErrorCode.METHOD_NOT_ALLOWED, 405, False, "The route exists for another method."
        ),
        ApiErrorInfo(
            ApiErrorCode.GROUP_EXISTS,
            409,
            False,
            "A group with this id exists and has another owner.",
        ),
        ApiErrorInfo(
            ApiErrorCode.OWNER_NOT_REMOVABLE,
            409,
            False,
            "The request would remove a group's owner, who stays a member while the group exists.",
        ),
        ApiErrorInfo(
            ApiErrorCode.LIMIT_REACHED,
            409,
            False,
            "The group would have more members than the server allows, or a user would belong "
            "to more groups than allowed.",
        ),
        ApiErrorInfo(
            ApiErrorCode.MESSAGE_ID_CONFLICT,
            409,
            False,
            "The sender used this `client_message_id` already, for a message to another user or "
            "group. The id is unique per sender across direct and group messages.",
        ),
        ApiErrorInfo(
            ApiErrorCode.BODY_TOO_LARGE,
            413,
            False,
            "The request body, or the message body in it, is larger than the server allows.",
        ),
        ApiErrorInfo(
            ApiErrorCode.UNSUPPORTED_MEDIA_TYPE,
            415,
            False,
            "The request body is not `application/json`, or it has a `Content-Encoding`.",
        ),
        ApiErrorInfo(
            ApiErrorCode.UNAVAILABLE,
            503,
            True,
            "The logic layer, the bus or Redis did not answer in time, or the server is "
            "starting or draining; retry with backoff. A publish retried with the same "
            "`client_message_id` cannot store the message twice.",
        ),
        ApiErrorInfo(
            ApiErrorCode.INTERNAL, 500, True, "The server failed; its log has the traceback."
        ),
    )
}


def error_table() -> list[ApiErrorInfo]:
    """Return every error code's entry in the order of the enum."""
    return [_TABLE[code] for code in ApiErrorCode]


def error_body(code: ApiErrorCode, message: str, field: str | None = None) -> dict[str, object]:
    """Return the JSON body of an error response."""
    error: dict[str, object] = {"code": code.value, "message": message}
    if field is not None:
        error["field"] = field
    return {"error": error}


class ApiFailure(Exception):
    """A request failed with an API error code; the middleware turns it into the response."""

    def __init__(self, code: ApiErrorCode, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    @property
    def status(self) -> int:
        """HTTP status of the response."""
        return _TABLE[self.code].status

    def response(self) -> web.Response:
        """Return the JSON error response."""
        headers = {"WWW-Authenticate": "Bearer"} if self.code is ApiErrorCode.UNAUTHORIZED else None
        return web.json_response(
            error_body(self.code, self.message, self.field), status=self.status, headers=headers
        )


async def respond_with_api_errors(
    request: web.Request,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    routes: str,
    logger: logging.Logger,
) -> web.StreamResponse:
    """Return handler's response, or the JSON error response for what it raised.

    ApiFailure becomes its own response; aiohttp's unknown route and wrong method become
    `not_found` and `method_not_allowed` (with an Allow header). Other HTTP exceptions, such
    as a redirect, pass through to aiohttp. Any other exception is logged with its traceback
    on logger and becomes `internal`. routes names the set of routes in messages ("API",
    "admin dashboard").
    """
    path = request.path
    try:
        return await handler(request)
    except ApiFailure as failure:
        return failure.response()
    except web.HTTPNotFound:
        return ApiFailure(ApiErrorCode.NOT_FOUND, f"no {routes} route {path}").response()
    except web.HTTPMethodNotAllowed as error:
        allowed = ", ".join(sorted(error.allowed_methods))
        response = ApiFailure(
            ApiErrorCode.METHOD_NOT_ALLOWED,
            f"{request.method} is not allowed on {path}; use {allowed}",
        ).response()
        response.headers["Allow"] = allowed
        return response
    except web.HTTPException:
        raise
    except Exception:
        logger.exception("%s request %s %s failed", routes, request.method, path)
        return ApiFailure(ApiErrorCode.INTERNAL, "the server failed; see its log").response()


RouteCodes = Mapping[int, tuple[ApiErrorCode, str | None]]
"""A route's own meaning of logic error codes: the API code and the request field at fault."""


def logic_failure(code: int, message: str, route_codes: RouteCodes | None = None) -> ApiFailure:
    """Translate an error code from the logic layer into an API failure.

    route_codes comes first: a code such as NOT_FOUND names a group on the group routes.
    """
    if route_codes is not None and code in route_codes:
        api_code, field = route_codes[code]
        return ApiFailure(api_code, message, field)
    if code in (Code.UNAVAILABLE, Code.INTERNAL, Code.BACKEND_UNAVAILABLE):
        return ApiFailure(ApiErrorCode.UNAVAILABLE, f"logic layer: {message}")
    if code == Code.BODY_TOO_LARGE:
        return ApiFailure(ApiErrorCode.BODY_TOO_LARGE, message, "body")
    if code in (Code.BAD_REQUEST, Code.NOT_A_CONTACT, Code.NOT_FOUND):
        return ApiFailure(ApiErrorCode.BAD_REQUEST, message)
    return ApiFailure(ApiErrorCode.INTERNAL, f"logic layer failed with code {code}: {message}")
