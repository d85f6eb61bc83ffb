"""python-socketio peer for `tether bench`: the same job as tether, the way its docs suggest.

    bench/results/peers/python/bin/python bench/peers/socketio_server.py --port 0 \\
        --contacts contacts.json --ping-interval 4 [--groups groups.json] \\
        [--redis redis://127.0.0.1:PORT/0]

An `AsyncServer` on aiohttp and uvloop, WebSocket transport only, pinging every
`--ping-interval` seconds (Engine.IO's heartbeat). With `--redis`, an `AsyncRedisManager`
joins several such processes. Each socket names its user in the CONNECT auth object
(`{"user": "..."}`; no token is checked) and joins a room named after the user. Presence follows
the rooms pattern: on connect, on a "status" event and on disconnect, the server emits
"presence" to the rooms of the user's contacts, read from the `--contacts` JSON file
(user -> list of contacts). A "dm" event `{"to", "body"}` is emitted to the recipient's room
and acknowledged to the sender; nothing is stored.

Installed by `tether bench setup`; prints "peer ready ws=127.0.0.1:PORT" once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import Any

import socketio
import uvloop
from aiohttp import web


def build_server(
    contacts: dict[str, list[str]],
    groups: dict[str, list[str]],
    ping_interval: float,
    redis_url: str,
) -> Any:
    manager = socketio.AsyncRedisManager(redis_url) if redis_url else None
    server = socketio.AsyncServer(
        async_mode="aiohttp",
        client_manager=manager,
        ping_interval=ping_interval,
        ping_timeout=20,
        transports=["websocket"],
        logger=False,
        engineio_logger=False,
    )
    users: dict[str, str] = {}
    groups_of: dict[str, list[str]] = {}
    for group, members in groups.items():
        for member in members:
            groups_of.setdefault(member, []).append(group)

    @server.event
    async def connect(sid: str, environ: dict[str, Any], auth: dict[str, Any] | None) -> bool:
        user = str((auth or {}).get("user", ""))
        if not user:
            return False
        users[sid] = user
        await server.enter_room(sid, user)
        for group in groups_of.get(user, ()):
            await server.enter_room(sid, f"g:{group}")
        if contacts.get(user):
            await server.emit("presence", {"user": user, "status": "online"}, to=contacts[user])
        return True

    @server.event
    async def dm(sid: str, data: dict[str, Any]) -> bool:
        await server.emit("dm", {"from": users[sid], "body": data["body"]}, to=data["to"])
        return True

    @server.event
    async def gm(sid: str, data: dict[str, Any]) -> bool:
        message = {"group": data["group"], "from": users[sid], "body": data["body"]}
        await server.emit("gm", message, room=f"g:{data['group']}", skip_sid=sid)
        return True

    @server.event
    async def status(sid: str, value: str) -> None:
        user = users[sid]
        if contacts.get(user):
            await server.emit("presence", {"user": user, "status": value}, to=contacts[user])

    @server.event
    async def disconnect(sid: str, *reason: Any) -> None:
        user = users.pop(sid, "")
        if contacts.get(user):
            await server.emit("presence", {"user": user, "status": "offline"}, to=contacts[user])

    return server


async def main(arguments: argparse.Namespace) -> None:
    with open(arguments.contacts) as file:
        contacts = json.load(file)
    groups = {}
    if arguments.groups:
        with open(arguments.groups) as file:
            groups = json.load(file)
    server = build_server(contacts, groups, arguments.ping_interval, arguments.redis)
    app = web.Application()
    server.attach(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", arguments.port, backlog=4096)
    await site.start()
    port = runner.addresses[0][1]
    print(f"peer ready ws=127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    parser.add_argument("--contacts", required=True, help="JSON file: user -> list of contacts")
    parser.add_argument("--groups", default="", help="JSON file: group -> list of members")
    parser.add_argument("--ping-interval", type=float, default=4.0, help="seconds between pings")
    parser.add_argument("--redis", default="", help="Redis URL; empty runs one process alone")
    uvloop.run(main(parser.parse_args()))
