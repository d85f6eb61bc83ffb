"""Group routes of the server HTTP API: publish to a group, online counts, membership.

Routes, each a POST under `/api/v1` like the others of `tether.ops.api`:

- `groups/publish`: store a message in a group through the reference logic, with the group's
  next sequence number, as a member's Send would be stored, and deliver it to the online
  members. So it is in the group's history and members that were offline catch up on it.
- `groups/online`: how many members of each of up to `MAX_QUERIED_GROUPS` groups are online.
- `groups/create`, `groups/add`, `groups/remove`: membership with the owner's rights, as
  `tether groups` changes it. Connected members see the change at once.
- `groups/members`: a group and one page of its members, in id order.

Every request goes to the logic layer on the logic stream, as `contacts/add` does, so it works
the same embedded and in a cluster. Online counts also read the presence the gateways keep
(`tether.presence.reader`). docs/http-api.md describes each route with examples.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tether.bus import envelope_pb2 as env
from tether.logic.groups import (
    MAX_GROUP_CHANGE,
    MAX_MEMBERS_PAGE,
    MAX_QUERIED_GROUPS,
    SYSTEM_SENDER,
)
from tether.logic.store import group_conversation_id
from tether.ops.api_errors import ApiErrorCode, ApiFailure, RouteCodes, logic_failure
from tether.ops.api_input import PUBLISH_FIELDS, RequestBody, read_json_object
from tether.protocol import tether_pb2 as pb
from tether.protocol.codes import Code
from tether.protocol.errors import BusError

if TYPE_CHECKING:
    from tether.presence.reader import PresenceReader
    from tether.server import TetherServer

__all__ = ["GroupRoutes"]

_Route = Callable[[web.Request], Coroutine[Any, Any, web.Response]]

_PUBLISH_CODES: RouteCodes = {
    Code.NOT_FOUND: (ApiErrorCode.GROUP_NOT_FOUND, "group_id"),
    Code.NOT_ALLOWED: (ApiErrorCode.NOT_A_MEMBER, "sender"),
    Code.ALREADY_EXISTS: (ApiErrorCode.MESSAGE_ID_CONFLICT, "client_message_id"),
}
_MEMBERSHIP_CODES: RouteCodes = {
    Code.NOT_FOUND: (ApiErrorCode.GROUP_NOT_FOUND, "group_id"),
    Code.ALREADY_EXISTS: (ApiErrorCode.GROUP_EXISTS, "group_id"),
    Code.NOT_ALLOWED: (ApiErrorCode.OWNER_NOT_REMOVABLE, "user_ids"),
    Code.LIMIT_REACHED: (ApiErrorCode.LIMIT_REACHED, None),
}
# GroupQuery.list_members_up_to that lists the members of every group: the uint32 maximum.
_ANY_SIZE = 2**32 - 1


class GroupRoutes:
    """Group routes of `BackendApi`, which inherits this mixin."""

    if TYPE_CHECKING:
        # Provided by BackendApi.
        _server: TetherServer
        reader: PresenceReader | None

        def _check_serving(self) -> None: ...

        async def _request_logic(self, request: env.Envelope) -> env.Envelope: ...

        async def _publish_message(
            self, body: RequestBody, sender: str, recipient: str, route_codes: RouteCodes
        ) -> web.Response: ...

    def _group_routes(self) -> dict[str, _Route]:
        return {
            "groups/publish": self._publish_to_group,
            "groups/online": self._group_online,
            "groups/create": self._create_group,
            "groups/add": self._add_group_members,
            "groups/remove": self._remove_group_members,
            "groups/members": self._group_members,
        }

    async def _publish_to_group(self, request: web.Request) -> web.Response:
        body = await read_json_object(request, PUBLISH_FIELDS | {"group_id"})
        group_id = body.group_id("group_id")
        sender = body.user_id("sender", default=SYSTEM_SENDER)
        return await self._publish_message(
            body, sender, group_conversation_id(group_id), _PUBLISH_CODES
        )

    async def _group_online(self, request: web.Request) -> web.Response:
        body = await read_json_object(request, frozenset({"group_ids"}))
        group_ids = body.group_ids("group_ids", max_items=MAX_QUERIED_GROUPS)
        self._check_serving()

        # Gateways count the online members of groups above their threshold, and nothing
        # else. The members of smaller groups are read and their presence looked up here.
        listed_up_to = min(self._server.config.gateway.groups.count_threshold, MAX_MEMBERS_PAGE)
        found = await self._query_groups(
            env.GroupQuery(group_ids=group_ids, list_members_up_to=listed_up_to)
        )
        large = [
            group_id for group_id, facts in found.items() if facts.group.member_count > listed_up_to
        ]
        members = sorted(
            {
                member
                for facts in found.values()
                if facts.group.member_count <= listed_up_to
                for member in facts.members
            }
        )
        assert self.reader is not None
        try:
            totals = await self.reader.group_totals(large)
            presence = await self.reader.presence(members) if members else []
        except BusError as error:
            raise ApiFailure(ApiErrorCode.UNAVAILABLE, str(error)) from error
        online_users = {user.user_id for user in presence if user.status != pb.STATUS_OFFLINE}

        counts = []
        for group_id, facts in found.items():
            if group_id in totals:
                online = totals[group_id]
            else:
                online = sum(1 for member in facts.members if member in online_users)
            counts.append(
                {
                    "group_id": group_id,
                    "member_count": facts.group.member_count,
                    "online": online,
                }
            )
        missing = [group_id for group_id in group_ids if group_id not in found]
        return web.json_response({"groups": counts, "not_found": missing})

    async def _create_group(self, request: web.Request) -> web.Response:
        body = await read_json_object(request, frozenset({"group_id", "owner", "members"}))
        group_id = body.group_id("group_id")
        owner = body.user_id("owner")
        members: list[str] = []
        if body.has("members"):
            members = body.user_ids("members", max_items=MAX_GROUP_CHANGE, min_items=0)
        result = await self._change_group("groups.create", [group_id, owner, *members])
        # The owner is a member from the start and cannot be removed, so the owner is among
        # the users added only when this request created the group.
        return web.json_response(
            {
                "group": _group_json(result.groups[0]),
                "created": owner in result.changed,
                "added": list(result.changed),
            }
        )

    async def _add_group_members(self, request: web.Request) -> web.Response:
        group_id, user_ids = await _read_member_change(request)
        result = await self._change_group("groups.add", [group_id, *user_ids])
        return web.json_response(
            {"group": _group_json(result.groups[0]), "added": list(result.changed)}
        )

    async def _remove_group_members(self, request: web.Request) -> web.Response:
        group_id, user_ids = await _read_member_change(request)
        result = await self._change_group("groups.remove", [group_id, *user_ids])
        return web.json_response(
            {"group": _group_json(result.groups[0]), "removed": list(result.changed)}
        )

    async def _group_members(self, request: web.Request) -> web.Response:
        body = await read_json_object(request, frozenset({"group_id", "after", "limit"}))
        group_id = body.group_id("group_id")
        after = body.user_id("after") if body.has("after") else ""
        limit = body.integer("limit", MAX_MEMBERS_PAGE, minimum=1, maximum=MAX_MEMBERS_PAGE)
        self._check_serving()

        query = env.GroupQuery(
            group_ids=[group_id],
            list_members_up_to=_ANY_SIZE,
            members_after=after,
            members_limit=limit,
        )
        facts = (await self._query_groups(query)).get(group_id)
        if facts is None:
            raise ApiFailure(ApiErrorCode.GROUP_NOT_FOUND, f"no group {group_id!r}", "group_id")
        return web.json_response(
            {
                "group": _group_json(facts.group),
                "members": list(facts.members),
                "has_more": facts.more_members,
            }
        )

    async def _change_group(self, operation: str, args: list[str]) -> pb.GroupResult:
        """Apply a membership change in the logic layer; return the group and users changed."""
        self._check_serving()
        reply = await self._request_logic(
            env.Envelope(admin_request=env.AdminRequest(operation=operation, args=args))
        )
        result = reply.admin_result
        if result.error_code:
            raise logic_failure(result.error_code, result.error_message, _MEMBERSHIP_CODES)
        if not result.group_result.groups:
            raise ApiFailure(ApiErrorCode.INTERNAL, f"logic layer sent no group for {operation}")
        return result.group_result

    async def _query_groups(self, query: env.GroupQuery) -> dict[str, env.GroupMembers]:
        """Return the groups of query that exist, by id, in request order."""
        reply = await self._request_logic(env.Envelope(group_query=query))
        result = reply.group_query_result
        if result.error_code:
            raise logic_failure(result.error_code, result.error_message)
        return {facts.group.group_id: facts for facts in result.groups}


async def _read_member_change(request: web.Request) -> tuple[str, list[str]]:
    """Read the body of an add or remove: a group id and 1 to MAX_GROUP_CHANGE user ids."""
    body = await read_json_object(request, frozenset({"group_id", "user_ids"}))
    return body.group_id("group_id"), body.user_ids("user_ids", max_items=MAX_GROUP_CHANGE)


def _group_json(group: pb.Group) -> dict[str, object]:
    return {
        "group_id": group.group_id,
        "conversation_id": group.conversation_id,
        "owner": group.owner,
        "member_count": group.member_count,
    }
