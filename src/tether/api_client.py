"""Python client of tether's server HTTP API, for backends written in Python.

    async with ApiClient("http://127.0.0.1:7402", api_key) as api:
        result = await api.publish("alice", "Your order has shipped")
        online = await api.presence(["alice", "bob"])
        await api.disconnect("alice", device_id="phone", code=Code.FORBIDDEN)
        await api.create_group("team", "alice", ["bob"])
        await api.publish_to_group("team", "Maintenance tonight")

Each method makes one request and raises `ApiError` with the API's error code when the server
rejects it, or when the server cannot be reached (code `unavailable`, status 0). Nothing is
retried here: a failed publish may be retried with the same `client_message_id`, which cannot
store the message twice. docs/http-api.md describes the routes.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp

from tether.protocol.codes import Code
from tether.protocol.errors import TetherError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "ApiClient",
    "ApiError",
    "DeviceInfo",
    "GroupChange",
    "GroupInfo",
    "GroupMembersPage",
    "GroupOnlineInfo",
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


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """A group as the server stores it."""

    group_id: str
    conversation_id: str
    """`g:` and the group id, the conversation of its messages."""
    owner: str
    member_count: int


@dataclass(frozen=True, slots=True)
class GroupChange:
    """A group after a membership change, and the users the change added or removed."""

    group: GroupInfo
    changed: list[str]
    """Users that create or add made members, or that remove removed. Users that already
    were members, or were not, are left out."""
    created: bool = False
    """Whether a create made the group, rather than finding the owner's group."""


@dataclass(frozen=True, slots=True)
class GroupOnlineInfo:
    """How many members of a group are online."""

    group_id: str
    member_count: int
    online: int


@dataclass(frozen=True, slots=True)
class GroupMembersPage:
    """A group and one page of its members."""

    group: GroupInfo
    members: list[str]
    """Member ids in byte order."""
    has_more: bool
    """Whether more members follow; pass the last member as `after` for the next page."""


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
        request = _message("user_id", user_id, body, sender, client_message_id)
        return _record(PublishResult, await self._call("publish", request))

    async def publish_to_group(
        self,
        group_id: str,
        body: str | bytes,
        *,
        sender: str | None = None,
        client_message_id: str | None = None,
    ) -> PublishResult:
        """Store a message in a group's history and deliver it to the online members.

        sender defaults to the server's `system` user, which needs no membership; another
        sender must be a member. client_message_id makes a retry safe, as for publish.
        """
        request = _message("group_id", group_id, body, sender, client_message_id)
        return _record(PublishResult, await self._call("groups/publish", request))

    async def presence(self, user_ids: list[str]) -> dict[str, PresenceInfo]:
        """Return the presence of each user, by user id; at most 1000 ids per call."""
        answer = await self._call("presence", {"user_ids": user_ids})
        return {user["user_id"]: _record(PresenceInfo, user) for user in answer["users"]}

    async def sessions(self, user_id: str) -> UserSessionsInfo:
        """Return a user's presence and the devices connected on every gateway."""
        answer = await self._call("sessions", {"user_id": user_id})
        devices = [_record(DeviceInfo, device) for device in answer["devices"]]
        return UserSessionsInfo(presence=_record(PresenceInfo, answer), devices=devices)

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

    async def group_online(self, group_ids: list[str]) -> dict[str, GroupOnlineInfo]:
        """Return the online members of each group, by group id; at most 100 ids per call.

        Groups that do not exist are left out.
        """
        answer = await self._call("groups/online", {"group_ids": group_ids})
        return {group["group_id"]: _record(GroupOnlineInfo, group) for group in answer["groups"]}

    async def create_group(
        self, group_id: str, owner: str, members: list[str] | None = None
    ) -> GroupChange:
        """Create a group of owner and members; for the owner's existing group, add members."""
        request = {"group_id": group_id, "owner": owner, "members": members or []}
        answer = await self._call("groups/create", request)
        group = _record(GroupInfo, answer["group"])
        return GroupChange(group, answer["added"], created=answer["created"])

    async def add_group_members(self, group_id: str, user_ids: list[str]) -> GroupChange:
        """Add up to 1000 users to a group."""
        answer = await self._call("groups/add", {"group_id": group_id, "user_ids": user_ids})
        return GroupChange(_record(GroupInfo, answer["group"]), answer["added"])

    async def remove_group_members(self, group_id: str, user_ids: list[str]) -> GroupChange:
        """Remove up to 1000 users, but not the owner, from a group."""
        answer = await self._call("groups/remove", {"group_id": group_id, "user_ids": user_ids})
        return GroupChange(_record(GroupInfo, answer["group"]), answer["removed"])

    async def group_members(
        self, group_id: str, *, after: str | None = None, limit: int | None = None
    ) -> GroupMembersPage:
        """Return a group and up to limit (at most 1000) members whose ids sort after after."""
        request: dict[str, Any] = {"group_id": group_id}
        if after is not None:
            request["after"] = after
        if limit is not None:
            request["limit"] = limit
        answer = await self._call("groups/members", request)
        group = _record(GroupInfo, answer["group"])
        return GroupMembersPage(group, answer["members"], answer["has_more"])

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


def _message(
    target_field: str,
    target: str,
    body: str | bytes,
    sender: str | None,
    client_message_id: str | None,
) -> dict[str, Any]:
    """Return the body of a publish to a user or a group; text is sent as UTF-8."""
    request: dict[str, Any] = {target_field: target}
    if isinstance(body, str):
        request["body"] = body
    else:
        request["body_base64"] = base64.b64encode(body).decode()
    if sender is not None:
        request["sender"] = sender
    if client_message_id is not None:
        request["client_message_id"] = client_message_id
    return request


_Record = TypeVar("_Record", bound="DataclassInstance")


def _record(kind: type[_Record], answer: dict[str, Any]) -> _Record:
    """Return a kind made of the answer's values of its fields; other keys are ignored."""
    return kind(**{field.name: answer[field.name] for field in dataclasses.fields(kind)})
