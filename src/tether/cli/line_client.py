"""`tether client`: a client for trying tether by hand or from scripts.

It reads commands from stdin, one per line, and prints every event as one JSON object per
line on stdout:

    send USER TEXT                        -> {"event": "ack", ...} or {"event": "error", ...}
    status online|away|busy|invisible     -> {"event": "status", ...}
    quit                                  (or end of input) closes the connection

Input may come from a terminal, a pipe or a file (`tether client alice < commands.txt`). A line
longer than MAX_LINE_BYTES gets an error line and is skipped.

USER may be "g:" and a group id, for a group message. With `--json true` it speaks the
`tether.v1.json` subprotocol over ws:// or wss://, the frames a browser's developer tools
show. A URL it can never connect to, and a server certificate it does not trust, end it at
once with an error line instead of retrying.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import stat
import sys
from collections.abc import AsyncIterator
from typing import Any, BinaryIO

from tether.auth import issue_token
from tether.client import Client
from tether.client import events as ev
from tether.protocol.errors import ConnectionClosed, RequestError
from tether.server import load_or_create_secret

__all__ = ["MAX_LINE_BYTES", "event_to_json", "line_client"]

# A command line of at most 64 KiB, asyncio's default StreamReader limit, fits a message
# body of the default maximum (32 KiB) even where most characters take two UTF-8 bytes.
MAX_LINE_BYTES = 64 * 1024


def event_to_json(event: ev.Event) -> dict[str, Any]:
    """Return the JSON object printed for an event."""
    if isinstance(event, ev.SessionOpened):
        return {
            "event": "connected",
            "user": event.user_id,
            "session": event.session_id,
            "heartbeat_interval": event.heartbeat_interval,
        }
    if isinstance(event, ev.PresenceSnapshot):
        return {
            "event": "snapshot",
            "contacts": {user: _presence(p) for user, p in sorted(event.contacts.items())},
        }
    if isinstance(event, ev.PresenceChanged):
        return {"event": "presence", "user": event.presence.user_id, **_presence(event.presence)}
    if isinstance(event, ev.Message):
        return {
            "event": "message",
            "from": event.sender,
            "to": event.recipient,
            "device": event.sender_device,
            "text": event.body.decode("utf-8", errors="replace"),
            "conversation": event.conversation_id,
            "sequence": event.sequence,
            "message_id": event.message_id,
        }
    if isinstance(event, ev.ContactsChanged):
        return {"event": "contacts", "added": event.added, "removed": event.removed}
    if isinstance(event, ev.Disconnected):
        return {
            "event": "disconnected",
            "code": event.code,
            "reason": event.reason,
            "reconnecting": event.reconnecting,
        }
    if isinstance(event, ev.GroupsChanged):
        return {
            "event": "groups",
            "joined": [
                {"group": group.group_id, "owner": group.owner, "members": group.member_count}
                for group in event.joined
            ],
            "left": event.left,
            "deleted": event.deleted,
        }
    if isinstance(event, ev.GroupEvent):
        return {
            "event": "group_event",
            "group": event.group_id,
            "kind": event.kind,
            "by": event.actor,
            "users": event.user_ids,
            "sequence": event.sequence,
        }
    if isinstance(event, ev.GroupOnline):
        return {
            "event": "group_online",
            "group": event.group_id,
            "online": event.online,
            "members": event.member_count,
        }
    # An event kind this version does not format is still shown, so the printer never stops.
    return {"event": type(event).__name__}


def _presence(presence: ev.Presence) -> dict[str, Any]:
    return {"status": presence.status, "last_seen_ms": presence.last_seen_ms}


def _print(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


async def line_client(arguments: argparse.Namespace) -> int:
    """Connect as a user and run stdin commands until quit, end of input or a final close."""
    try:
        token = arguments.token or issue_token(
            arguments.secret or load_or_create_secret(arguments.data_dir), arguments.user
        )
    except ValueError as error:
        _print({"event": "error", "message": str(error)})
        return 2
    ssl_context = None
    if arguments.ca_file is not None:
        try:
            ssl_context = ssl.create_default_context(cafile=arguments.ca_file)
        except (OSError, ssl.SSLError) as error:
            _print({"event": "error", "message": f"cannot load --ca-file: {error}"})
            return 2
    try:
        client = Client(
            arguments.url,
            token,
            arguments.device,
            client_name="tether-cli",
            ssl_context=ssl_context,
            json_frames=arguments.json,
        )
    except ValueError as error:
        _print({"event": "error", "message": str(error)})
        return 2
    try:
        await client.connect()
    except (ConnectionClosed, TimeoutError) as error:
        _print({"event": "error", "message": f"connect failed: {error}"})
        return 1

    printer = asyncio.create_task(_print_events(client))
    sends: set[asyncio.Task[None]] = set()
    try:
        async for line_bytes in _stdin_lines():
            if line_bytes is None:
                message = f"line longer than {MAX_LINE_BYTES} bytes skipped"
                _print({"event": "error", "message": message})
                continue
            line = line_bytes.decode(errors="replace").strip()
            if not line:
                continue
            command, _, rest = line.partition(" ")
            if command == "quit":
                break
            if command == "send":
                recipient, _, text = rest.strip().partition(" ")
                if not recipient or not text.strip():
                    # An empty body is valid in the protocol, but here it is always a typo.
                    message = "send needs a user and a text that is not empty: send USER TEXT"
                    _print({"event": "error", "message": message})
                    continue
                task = asyncio.create_task(_send(client, recipient, text))
                sends.add(task)
                task.add_done_callback(sends.discard)
            elif command == "status":
                try:
                    await client.set_status(rest.strip())
                    _print({"event": "status", "status": rest.strip()})
                except ValueError as error:
                    _print({"event": "error", "message": str(error)})
            else:
                _print(
                    {
                        "event": "error",
                        "message": f"unknown command {command!r}; use send, status or quit",
                    }
                )
        if sends:
            await asyncio.wait(sends, timeout=client.ack_timeout)
    finally:
        await client.close()
        printer.cancel()
    return 0


async def _stdin_lines() -> AsyncIterator[bytes | None]:
    """Yield the lines of stdin until its end, and None for each line over MAX_LINE_BYTES."""
    if sys.stdin is None:
        return  # started with stdin closed: no commands
    mode = os.fstat(sys.stdin.fileno()).st_mode
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or sys.stdin.isatty():
        reader = asyncio.StreamReader(limit=MAX_LINE_BYTES)
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        async for line in _pipe_lines(reader):
            yield line
        return
    # A regular file or a device such as /dev/null: an event loop cannot watch one for input
    # (uvloop aborts the process on it), and a read from it returns at once, so a worker
    # thread reads it.
    while (line := await asyncio.to_thread(_read_line, sys.stdin.buffer)) != b"":
        yield line


async def _pipe_lines(reader: asyncio.StreamReader) -> AsyncIterator[bytes | None]:
    """Yield the lines of a pipe or terminal, and None for each line over MAX_LINE_BYTES."""
    skipping = False  # inside a line that is too long, whose start was dropped
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as error:  # the input ended
            if skipping:
                yield None
            elif error.partial:
                yield error.partial
            return
        except asyncio.LimitOverrunError as error:
            await reader.readexactly(error.consumed)  # buffered already: drop it
            skipping = True
            continue
        if skipping:
            skipping = False
            yield None
        else:
            yield line


def _read_line(stream: BinaryIO) -> bytes | None:
    """Return the next line of a file, b"" at its end, or None after skipping a long line."""
    line = stream.readline(MAX_LINE_BYTES + 1)
    if len(line) <= MAX_LINE_BYTES or line.endswith(b"\n"):
        return line
    while line and not line.endswith(b"\n"):
        line = stream.readline(MAX_LINE_BYTES)
    return None


async def _send(client: Client, recipient: str, text: str) -> None:
    try:
        ack = await client.send(recipient, text)
    except RequestError as error:
        _print({"event": "error", "to": recipient, "code": error.code, "message": error.message})
    except (TimeoutError, ConnectionClosed) as error:
        _print({"event": "error", "to": recipient, "message": f"not acknowledged: {error}"})
    else:
        _print(
            {
                "event": "ack",
                "to": recipient,
                "message_id": ack.message_id,
                "conversation": ack.conversation_id,
                "sequence": ack.sequence,
            }
        )


async def _print_events(client: Client) -> None:
    async for event in client.events():
        _print(event_to_json(event))
