"""Python client of tether's server HTTP API, for backends written in Python.

    async with ApiClient("http://127.0.0.1:7402", api_key) as api:
        result = await api.publish("alice", "Your order has shipped")
        online = await api.presence(["alice", "bob"])
        await api.disconnect("alice", device_id="phone", code=Code.FORBIDDEN)

Each method makes one request and raises `ApiError` with the API's error code when the server
rejects it, or when the server cannot be reached (code `unavailable`, status 0). Nothing is
retried here: a failed publish may be retried with the same `client_message_id`, which cannot
store the message twice. docs/http-api.md describes the routes.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp

from tether.protocol.codes import Code
from tether.protocol.errors import TetherError

__all__ = [
    "ApiClient",
    "ApiError",
    "DeviceInfo",
    "PresenceInfo",
    "PublishResult",
    "UserSessionsInfo",
]


class ApiError(TetherError):
    """The server HTTP API rejected a request, or could not be reached."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        """HTTP status; 0 when no response arrived."""
        self.code = code
        """Error code from docs/http-api.md, such as "bad_request" or "unavailable"."""
        self.message = message
        self.field = field
        """JSON path of the request field at fault, if one is."""

    @property
    def retryable(self) -> bool:
        """Whether the same request may succeed later."""
        return self.code in ("unavailable", "internal")


@dataclass(frozen=True, slots=True)
class PublishResult:
    """The stored message's ids, as the server returns them."""

    message_id: int
    conversation_id: str
    sequence: int
    timestamp_ms: int
    client_message_id: str


@dataclass(frozen=True, slots=True)
class PresenceInfo:
    """A user's presence as contacts see it."""

    user_id: str
    status: str
    """"online", "away", "busy" or "offline"."""
    last_seen_ms: int
    version: int


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A connected device and its gateway connection."""

    device_id: str
    gateway_id: str
    connection_id: str
    activity: str
    """"active" or "idle"."""


@dataclass(frozen=True, slots=True)
class UserSessionsInfo:
    """A user's presence and connected devices."""

    presence: PresenceInfo
    devices: list[DeviceInfo]


class ApiClient:
    """Calls to the server HTTP API of one tether process, over one aiohttp session."""

    def __init__(self, url: str, api_key: str, *, timeout: float = 10.0) -> None:
        """Prepare a client of the HTTP port at url, such as http://127.0.0.1:7402.

        timeout is the total time of one request, in seconds.
        """
        self._base = url.rstrip("/") + "/api/v1/"
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def publish(
        self,
        user_id: str,
        body: str | bytes,
        *,
        sender: str | None = None,
        client_message_id: str | None = None,
    ) -> PublishResult:
        """Store a direct message to user_id and deliver it; text bodies are sent as UTF-8.

        sender defaults to the server's `system` user. Give client_message_id to make a
        retry safe: the server stores one message per sender and id.
        """
        request: dict[str, Any] = {"user_id": user_id}
        if isinstance(body, str):
            request["body"] = body
        else:
            request["body_base64"] = base64.b64encode(body).decode()
        if sender is not None:
            request["sender"] = sender
        if client_message_id is not None:
            request["client_message_id"] = client_message_id
        answer = await self._call("publish", request)
        return PublishResult(
            message_id=answer["message_id"],
            conversation_id=answer["conversation_id"],
            sequence=answer["sequence"],
            timestamp_ms=answer["timestamp_ms"],
            client_message_id=answer["client_message_id"],
        )

    async def presence(self, user_ids: list[str]) -> dict[str, PresenceInfo]:
        """Return the presence of each user, by user id; at most 1000 ids per call."""
        answer = await self._call("presence", {"user_ids": user_ids})
        return {user["user_id"]: _presence(user) for user in answer["users"]}

    async def sessions(self, user_id: str) -> UserSessionsInfo:
        """Return a user's presence and the devices connected on every gateway."""
        answer = await self._call("sessions", {"user_id": user_id})
        devices = [
            DeviceInfo(
                device_id=device["device_id"],
                gateway_id=device["gateway_id"],
                connection_id=device["connection_id"],
                activity=device["activity"],
            )
            for device in answer["devices"]
        ]
        return UserSessionsInfo(presence=_presence(answer), devices=devices)

    async def disconnect(
        self,
        user_id: str,
        *,
        device_id: str | None = None,
        code: int = Code.FORBIDDEN,
        reason: str = "",
    ) -> None:
        """Close one device of user_id, or all of them when device_id is None, with code."""
        request: dict[str, Any] = {"user_id": user_id, "code": int(code)}
        if device_id is not None:
            request["device_id"] = device_id
        if reason:
            request["reason"] = reason
        await self._call("disconnect", request)

    async def add_contact(self, user_id: str, contact_id: str) -> None:
        """Make the two users mutual contacts."""
        await self._call("contacts/add", {"user_id": user_id, "contact_id": contact_id})

    async def remove_contact(self, user_id: str, contact_id: str) -> None:
        """Remove the two users from each other's contacts."""
        await self._call("contacts/remove", {"user_id": user_id, "contact_id": contact_id})

    async def _call(self, route: str, request: dict[str, Any]) -> dict[str, Any]:
        """POST request to route; return the decoded JSON response ({} for an empty one)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        try:
            async with self._session.post(self._base + route, json=request) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            raise ApiError(0, "unavailable", f"no response from {self._base}: {error!r}") from error
        try:
            answer = json.loads(text) if text else {}
        except json.JSONDecodeError as error:
            raise ApiError(status, "internal", f"answer is not JSON: {text[:200]!r}") from error
        if status >= 400:
            error_object = answer.get("error", {}) if isinstance(answer, dict) else {}
            raise ApiError(
                status,
                str(error_object.get("code", "internal")),
                str(error_object.get("message", text[:200])),
                error_object.get("field"),
            )
        if not isinstance(answer, dict):
            raise ApiError(status, "internal", f"answer is not a JSON object: {text[:200]!r}")
        return answer


def _presence(user: dict[str, Any]) -> PresenceInfo:
    return PresenceInfo(
        user_id=user["user_id"],
        status=user["status"],
        last_seen_ms=user["last_seen_ms"],
        version=user["version"],
    )
