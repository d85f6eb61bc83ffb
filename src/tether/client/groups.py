"""Group requests of the client SDK: create, change, hand over, delete and list groups.

Each call sends a GroupRequest and waits for its GroupResult, matched by request_id. A request
without a reply when the connection drops is sent again after the next Connected, like an
unacknowledged Send. That is safe because every request is idempotent: adding a member twice
or removing one twice changes nothing, creating a group that the same user created already
only adds the listed members, and handing a group to its owner changes nothing. A resent
delete finds the group gone when the first one was applied; that NOT_FOUND counts as done.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING

from tether.client import events as ev
from tether.client.transport import ClientTransport
from tether.protocol import tether_pb2 as pb
from tether.protocol.codes import Code
from tether.protocol.errors import RequestError

__all__ = ["GROUP_PREFIX", "ClientGroups"]

GROUP_PREFIX = "g:"
"""Prefix of a group's conversation id; `send("g:" + group_id, ...)` sends to the group."""


class ClientGroups:
    """Group requests of a `Client`, which inherits this mixin and calls `_init_groups`."""

    if TYPE_CHECKING:
        # Provided by Client.
        session: ev.SessionOpened | None
        ack_timeout: float
        _transport: ClientTransport | None

        async def send(
            self, recipient: str, body: bytes | str, *, client_message_id: str | None = None
        ) -> pb.SendAck: ...

    def _init_groups(self) -> None:
        self._group_requests: dict[str, tuple[pb.GroupRequest, asyncio.Future[pb.GroupResult]]]
        self._group_requests = {}
        self._group_resent: set[str] = set()  # request ids sent on more than one connection
        # Request ids start with "group-", so they never equal a Sync's or a Send's id.
        self._group_ids = itertools.count(1)
        self._group_prefix = f"group-{uuid.uuid4().hex[:8]}-"

    async def create_group(self, group_id: str, members: Iterable[str] = ()) -> ev.Group:
        """Create a group owned by this user, with members besides the owner; return it.

        Raises RequestError with ALREADY_EXISTS if another user owns a group of that id,
        LIMIT_REACHED past the server's group limits, and BAD_REQUEST for an invalid id.
        """
        result = await self._group_request(pb.GROUP_ACTION_CREATE, group_id, members)
        return ev.Group.from_proto(result.groups[0])

    async def add_group_members(self, group_id: str, users: Iterable[str]) -> list[str]:
        """Add users to a group this user owns; return those who were not members yet."""
        result = await self._group_request(pb.GROUP_ACTION_ADD, group_id, users)
        return list(result.changed)

    async def remove_group_members(self, group_id: str, users: Iterable[str]) -> list[str]:
        """Remove users from a group this user owns; return those who were members."""
        result = await self._group_request(pb.GROUP_ACTION_REMOVE, group_id, users)
        return list(result.changed)

    async def leave_group(self, group_id: str) -> None:
        """Leave a group. Its owner cannot leave (RequestError with NOT_ALLOWED)."""
        assert self.session is not None, "leave_group needs an open session"
        await self._group_request(pb.GROUP_ACTION_REMOVE, group_id, [self.session.user_id])

    async def delete_group(self, group_id: str) -> None:
        """Delete a group this user owns, with its history; every member leaves it."""
        await self._group_request(pb.GROUP_ACTION_DELETE, group_id, ())

    async def set_group_owner(self, group_id: str, user_id: str) -> ev.Group:
        """Hand a group this user owns to another member; return the group after the change.

        Raises RequestError with BAD_REQUEST if user_id is not a member.
        """
        result = await self._group_request(pb.GROUP_ACTION_SET_OWNER, group_id, [user_id])
        return ev.Group.from_proto(result.groups[0])

    async def list_groups(self) -> list[ev.Group]:
        """Return every group this user belongs to, in group id order."""
        result = await self._group_request(pb.GROUP_ACTION_LIST, "", ())
        return [ev.Group.from_proto(group) for group in result.groups]

    async def send_to_group(
        self, group_id: str, body: bytes | str, *, client_message_id: str | None = None
    ) -> pb.SendAck:
        """Send a message to a group of this user; the same rules as `send` apply."""
        return await self.send(GROUP_PREFIX + group_id, body, client_message_id=client_message_id)

    async def _group_request(
        self, action: pb.GroupAction, group_id: str, users: Iterable[str]
    ) -> pb.GroupResult:
        request_id = self._group_prefix + str(next(self._group_ids))
        request = pb.GroupRequest(
            request_id=request_id, action=action, group_id=group_id, user_ids=list(users)
        )
        future: asyncio.Future[pb.GroupResult] = asyncio.get_running_loop().create_future()
        self._group_requests[request_id] = (request, future)
        try:
            if self.session is not None and self._transport is not None:
                with contextlib.suppress(ConnectionError, OSError):
                    await self._transport.send(pb.Frame(group_request=request).SerializeToString())
            return await asyncio.wait_for(future, self.ack_timeout)
        finally:
            self._group_requests.pop(request_id, None)
            self._group_resent.discard(request_id)

    async def _resend_group_requests(self, transport: ClientTransport) -> None:
        """Send every request still without a reply on a new connection."""
        for request, _future in list(self._group_requests.values()):
            self._group_resent.add(request.request_id)
            await transport.send(pb.Frame(group_request=request).SerializeToString())

    def _on_group_result(self, result: pb.GroupResult) -> None:
        entry = self._group_requests.get(result.request_id)
        if entry is not None and not entry[1].done():
            entry[1].set_result(result)

    def _on_group_error(self, error: pb.Error) -> bool:
        """Fail the group request the error refers to; False if it is not one."""
        entry = self._group_requests.get(error.ref)
        if entry is None:
            return False
        request, future = entry
        if future.done():
            return True
        deleted_before = (
            request.action == pb.GROUP_ACTION_DELETE
            and error.code == Code.NOT_FOUND
            and request.request_id in self._group_resent
        )
        if deleted_before:
            future.set_result(pb.GroupResult(request_id=request.request_id))
        else:
            future.set_exception(RequestError(error.code, error.message))
        return True

    def _fail_group_requests(self, error: Exception) -> None:
        for _request, future in self._group_requests.values():
            if not future.done():
                future.set_exception(error)
