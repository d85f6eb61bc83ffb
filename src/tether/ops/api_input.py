"""Reading and checking the JSON bodies of server HTTP API requests.

Each check raises `ApiFailure` with code `bad_request` and the JSON path of the field at fault,
so a backend learns which value to fix. The rules match the OpenAPI document
(`tether/ops/openapi.json`); a request the document allows must pass them.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tether.auth import validate_user_id
from tether.logic.store import validate_group_id
from tether.ops.api_errors import ApiErrorCode, ApiFailure
from tether.ops.json_input import JsonInputError, decode_json

__all__ = ["MAX_ID_CHARACTERS", "PUBLISH_FIELDS", "RequestBody", "read_json_object"]

MAX_ID_CHARACTERS = 64
"""Maximum length of a device id or client_message_id, in characters."""
PUBLISH_FIELDS = frozenset({"sender", "body", "body_base64", "client_message_id"})
"""Fields of a publish body besides the recipient, the same for users and groups."""


async def read_json_object(request: web.Request, fields: frozenset[str]) -> RequestBody:
    """Read the request's body as a JSON object whose keys are all among fields.

    Raises ApiFailure: 415 unless the body is `application/json` without a Content-Encoding,
    413 when it exceeds the port's limit, 400 when it is not a JSON object or has an unknown
    or repeated key.
    """
    if request.content_type != "application/json":
        raise ApiFailure(
            ApiErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"send the body as application/json, not {request.content_type or 'nothing'}",
        )
    encoding = request.headers.get("Content-Encoding", "identity")
    if encoding.strip().lower() != "identity":
        # The HTTP port does not inflate bodies (tether.ops.http), so this one is unreadable.
        raise ApiFailure(
            ApiErrorCode.UNSUPPORTED_MEDIA_TYPE,
            f"send the body without Content-Encoding, not {encoding}",
        )
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as error:
        raise ApiFailure(
            ApiErrorCode.BODY_TOO_LARGE,
            f"request body exceeds {request.client_max_size} bytes",
        ) from error
    try:
        data = decode_json(raw)
    except JsonInputError as error:
        # A key given twice is that field's fault; any other failure is the whole body's.
        raise ApiFailure(ApiErrorCode.BAD_REQUEST, f"body {error}", error.key) from error
    if not isinstance(data, dict):
        raise ApiFailure(
            ApiErrorCode.BAD_REQUEST, f"body must be a JSON object, not {_json_type(data)}"
        )
    for key, value in data.items():
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            raise ApiFailure(
                ApiErrorCode.BAD_REQUEST, f"unknown field {key!r}; expected {allowed}", key
            )
        if value is None:
            raise ApiFailure(
                ApiErrorCode.BAD_REQUEST, f"{key} is null; leave an optional field out", key
            )
    return RequestBody(data)


class RequestBody:
    """Typed access to the fields of a request body, each checked as it is read."""

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def has(self, name: str) -> bool:
        """Tell whether the body has the field (`read_json_object` rejected null values)."""
        return self._data.get(name) is not None

    def user_id(self, name: str, default: str | None = None) -> str:
        """Return a user id field; it is required unless a default is given."""
        value = self._data.get(name)
        if value is None and default is not None:
            return default
        return _check_id(validate_user_id, self._string(name, value), name)

    def group_id(self, name: str) -> str:
        """Return a required group id field."""
        return _check_id(validate_group_id, self._string(name, self._data.get(name)), name)

    def string(self, name: str) -> str:
        """Return a required string field, which may be empty."""
        return self._string(name, self._data.get(name))

    def text(self, name: str, *, max_characters: int, default: str | None = None) -> str:
        """Return a string field of 1 to max_characters characters without NUL."""
        value = self._data.get(name)
        if value is None and default is not None:
            return default
        text = self._string(name, value)
        if not 0 < len(text) <= max_characters or "\x00" in text:
            raise ApiFailure(
                ApiErrorCode.BAD_REQUEST,
                f"{name} must be 1 to {max_characters} characters without NUL",
                name,
            )
        return text

    def optional_text(self, name: str, *, max_characters: int) -> str:
        """Return a string field of at most max_characters characters, or "" when absent."""
        value = self._data.get(name)
        if value is None:
            return ""
        text = self._string(name, value)
        if len(text) > max_characters:
            raise ApiFailure(
                ApiErrorCode.BAD_REQUEST,
                f"{name} must be at most {max_characters} characters",
                name,
            )
        return text

    def integer(
        self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        """Return an integer field, or default when absent; minimum and maximum are inclusive."""
        value = self._data.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ApiFailure(
                ApiErrorCode.BAD_REQUEST,
                f"{name} must be an integer, not {_json_type(value)}",
                name,
            )
        if minimum is not None and value < minimum:
            raise ApiFailure(
                ApiErrorCode.BAD_REQUEST, f"{name} must be at least {minimum}, got {value}", name
            )
        if maximum is not None and value > maximum:
            raise ApiFailure(
                ApiErrorCode.BAD_REQUEST, f"{name} must be at most {maximum}, got {value}", name
            )
        return value

    def base64(self, name: str) -> bytes:
        """Return the bytes of a standard base64 string field (RFC 4648, section 4)."""
        text = self._string(name, self._data.get(name))
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as error:
            raise ApiFailure(
                ApiErrorCode.BAD_REQUEST, f"{name} is not valid base64: {error}", name
            ) from error

    def user_ids(self, name: str, *, max_items: int, min_items: int = 1) -> list[str]:
        """Return an array of min_items to max_items user ids, duplicates removed."""
        return self._ids(name, "user ids", validate_user_id, min_items, max_items)

    def group_ids(self, name: str, *, max_items: int) -> list[str]:
        """Return an array of 1 to max_items group ids, duplicates removed."""
        return self._ids(name, "group ids", validate_group_id, 1, max_items)

    def _ids(
        self,
        name: str,
        kind: str,
        validate: Callable[[str], str],
        min_items: int,
        max_items: int,
    ) -> list[str]:
        value = self._data.get(name)
        if not isinstance(value, list):
            raise ApiFailure(
                ApiErrorCode.BAD_REQUEST,
                f"{name} must be an array of {kind}, not {_json_type(value)}",
                name,
            )
        if not min_items <= len(value) <= max_items:
            raise ApiFailure(
                ApiErrorCode.BAD_REQUEST,
                f"{name} must have {min_items} to {max_items} entries, got {len(value)}",
                name,
            )
        checked = []
        for index, item in enumerate(value):
            where = f"{name}[{index}]"
            checked.append(_check_id(validate, self._string(where, item), where))
        return list(dict.fromkeys(checked))

    @staticmethod
    def _string(name: str, value: object) -> str:
        if value is None:
            raise ApiFailure(ApiErrorCode.BAD_REQUEST, f"{name} is missing", name)
        if not isinstance(value, str):
            raise ApiFailure(
                ApiErrorCode.BAD_REQUEST, f"{name} must be a string, not {_json_type(value)}", name
            )
        try:
            value.encode()
        except UnicodeEncodeError as error:  # JSON allows lone surrogates such as "\ud800"
            raise ApiFailure(
                ApiErrorCode.BAD_REQUEST, f"{name} is not valid Unicode text: {error}", name
            ) from error
        return value


def _check_id(validate: Callable[[str], str], value: str, where: str) -> str:
    """Return value if validate accepts it; else raise bad_request naming the field."""
    try:
        return validate(value)
    except ValueError as error:
        raise ApiFailure(ApiErrorCode.BAD_REQUEST, f"{where}: {error}", where) from error


def _json_type(value: object) -> str:
    """Return the JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
