"""Error codes of the server HTTP API, and the exception that carries one to the response.

Every error response has the same JSON body, with `field` only when one input is at fault:

    {"error": {"code": "bad_request", "message": "user_ids[2]: ...", "field": "user_ids[2]"}}

docs/http-api.md prints this table; tests/test_http_api.py keeps the two in step.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

__all__ = [
    "ApiErrorCode",
    "ApiErrorInfo",
    "ApiFailure",
    "error_body",
    "error_table",
    "respond_with_api_errors",
]


class ApiErrorCode(enum.StrEnum):
    """Every error code the server HTTP API returns."""

    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    API_DISABLED = "api_disabled"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
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
            ApiErrorCode.API_DISABLED,
            404,
            False,
            "The server runs without API keys, so the API is off.",
        ),
        ApiErrorInfo(ApiErrorCode.NOT_FOUND, 404, False, "No API route has this path."),
        ApiErrorInfo(
            ApiErrorCode.METHOD_NOT_ALLOWED, 405, False, "The route exists for another method."
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
            "The request body is not `application/json`.",
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
