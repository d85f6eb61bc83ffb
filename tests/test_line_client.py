"""`tether client`: its JSON output, and runs of the command against a live server.

The server runs in the test's process on free ports. The command runs as an asyncio
subprocess, so reading its output does not block the server's event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import SECRET, TIMEOUT, ClientFactory, ServerFactory, add_contacts, next_of
from tls_support import make_certificate

from tether.auth import issue_token
from tether.cli.line_client import MAX_LINE_BYTES, event_to_json
from tether.client import Client
from tether.client import events as ev
from tether.gateway.security import TransportSecurityConfig
from tether.protocol.json_frames import JsonServerProtocol
from tether.server import EmbeddedServer

TETHER = [sys.executable, "-m", "tether"]


def test_group_events_formatted() -> None:
    group = ev.Group("team", "g:team", "alice", 3)
    changed = event_to_json(ev.GroupsChanged(joined=[group], left=["old"], deleted=["old"]))
    assert changed == {
        "event": "groups",
        "joined": [{"group": "team", "owner": "alice", "members": 3}],
        "left": ["old"],
        "deleted": ["old"],
    }
    added = event_to_json(ev.GroupEvent("team", "g:team", 4, "members_added", "alice", ["bob"], 1))
    assert added == {
        "event": "group_event",
        "group": "team",
        "kind": "members_added",
        "by": "alice",
        "users": ["bob"],
        "sequence": 4,
    }
    online = event_to_json(ev.GroupOnline("team", online=2, member_count=150))
    assert online == {"event": "group_online", "group": "team", "online": 2, "members": 150}


def test_unknown_event_still_printed() -> None:
    class Newer:
        pass

    assert event_to_json(Newer()) == {"event": "Newer"}  # type: ignore[arg-type]


class LineClient:
    """One `tether client` subprocess: write commands, read its JSON lines."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, user: str, *arguments: str, data_dir: Path) -> LineClient:
        process = await asyncio.create_subprocess_exec(
            *TETHER, "client", user, "--data-dir", str(data_dir), *arguments,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        return cls(process)

    def write(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")

    async def line(self) -> dict[str, Any]:
        """Return the next JSON line; fail if the command ends first."""
        assert self.process.stdout is not None
        raw = await asyncio.wait_for(self.process.stdout.readline(), 4 * TIMEOUT)
        assert raw, f"tether client ended: {await self.stderr()}"
        line: dict[str, Any] = json.loads(raw)
        return line

    async def next(self, event: str) -> dict[str, Any]:
        """Return the next line of an event kind, skipping others."""
        while True:
            line = await self.line()
            if line["event"] == event:
                return line

    async def finish(self) -> tuple[int, list[dict[str, Any]]]:
        """Close stdin, wait for the exit; return the exit code and the lines not read yet."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        stdout, _stderr = await asyncio.wait_for(self.process.communicate(), 4 * TIMEOUT)
        return self.process.returncode or 0, [json.loads(raw) for raw in stdout.splitlines()]

    async def stderr(self) -> str:
        assert self.process.stderr is not None
        return (await self.process.stderr.read()).decode(errors="replace")


def ws_url(server: EmbeddedServer, scheme: str = "ws") -> str:
    return f"{scheme}://127.0.0.1:{server.ws_port}{server.config.gateway.ws_path}"


Contacts = tuple[EmbeddedServer, Client, LineClient]


@pytest.fixture
async def contacts(
    start_server: ServerFactory, connect: ClientFactory, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[Contacts]]]:
    """Return a function that starts a server with contacts alice (SDK) and bob (command).

    Its arguments go to `tether client bob`, which connects over ws:// with device id "cli".
    """
    started: list[LineClient] = []

    async def start(*arguments: str) -> Contacts:
        server = await start_server()
        await add_contacts(server, "alice", "bob")
        alice = await connect(server, "alice")
        bob = await LineClient.start(
            "bob", "--url", ws_url(server), "--token", issue_token(SECRET, "bob"), *arguments,
            data_dir=tmp_path,
        )  # fmt: skip
        started.append(bob)
        return server, alice, bob

    yield start
    for bob in started:
        if bob.process.returncode is None:
            bob.process.kill()  # only after a failed test: the tests end it with quit
            await bob.process.wait()


async def test_json_subprotocol_against_a_live_server(
    contacts: Callable[..., Awaitable[Contacts]],
) -> None:
    server, alice, bob = await contacts("--json", "true")
    connected = await bob.line()
    assert connected["event"] == "connected", connected
    assert connected["user"] == "bob"
    # The gateway speaks tether.v1.json with this connection.
    assert server.gateway is not None
    assert isinstance(server.gateway.sessions["bob"]["cli"].protocol, JsonServerProtocol)
    snapshot = await bob.next("snapshot")
    assert snapshot["contacts"]["alice"]["status"] == "online"

    bob.write("send alice hello over JSON ✓")
    ack = await bob.next("ack")
    assert (ack["to"], ack["conversation"], ack["sequence"]) == ("alice", "d:alice:bob", 1)
    message = await next_of(alice, ev.Message)
    assert isinstance(message, ev.Message)
    assert message.body.decode() == "hello over JSON ✓"

    await alice.send("bob", b"and back")
    received = await bob.next("message")
    assert (received["from"], received["text"], received["sequence"]) == ("alice", "and back", 2)

    await alice.set_status("busy")
    presence = await bob.next("presence")
    assert (presence["user"], presence["status"]) == ("alice", "busy")
    bob.write("quit")
    code, _rest = await bob.finish()
    assert code == 0


async def test_empty_send_is_refused(contacts: Callable[..., Awaitable[Contacts]]) -> None:
    _server, alice, bob = await contacts()
    assert (await bob.line())["event"] == "connected"
    for command in ("send alice", "send alice    ", "send"):
        bob.write(command)
        error = await bob.next("error")
        assert error["message"] == (
            "send needs a user and a text that is not empty: send USER TEXT"
        ), command
    bob.write("send alice not empty")
    assert (await bob.next("ack"))["sequence"] == 1  # the first message stored
    message = await next_of(alice, ev.Message)
    assert isinstance(message, ev.Message)
    assert message.body == b"not empty"
    code, _rest = await bob.finish()
    assert code == 0


@pytest.mark.parametrize("stdin", ["file", "pipe"])
async def test_commands_from_file_or_pipe(
    stdin: str, start_server: ServerFactory, connect: ClientFactory, tmp_path: Path
) -> None:
    """Commands from a file or a pipe run in order; a line over the limit is only skipped."""
    server = await start_server()
    await add_contacts(server, "alice", "bob")
    alice = await connect(server, "alice")
    too_long = "send alice " + "x" * MAX_LINE_BYTES  # over the limit by the command's length
    # The last line has no newline: the end of the input ends it.
    commands = f"{too_long}\nsend alice after the long line\nstatus busy"
    path = tmp_path / "commands.txt"
    path.write_text(commands)

    arguments = [
        *TETHER, "client", "bob", "--url", ws_url(server), "--data-dir", str(tmp_path),
        "--token", issue_token(SECRET, "bob"),
    ]  # fmt: skip
    with path.open("rb") as file:
        process = await asyncio.create_subprocess_exec(
            *arguments,
            stdin=file if stdin == "file" else asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        piped = commands.encode() if stdin == "pipe" else None
        stdout, stderr = await asyncio.wait_for(process.communicate(piped), 4 * TIMEOUT)

    assert process.returncode == 0, stderr.decode(errors="replace")
    lines = [json.loads(raw) for raw in stdout.splitlines()]
    assert lines[0]["event"] == "connected", lines
    errors = [line for line in lines if line["event"] == "error"]
    assert errors == [
        {"event": "error", "message": f"line longer than {MAX_LINE_BYTES} bytes skipped"}
    ]
    acks = [line for line in lines if line["event"] == "ack"]
    assert [(ack["to"], ack["sequence"]) for ack in acks] == [("alice", 1)]
    assert {"event": "status", "status": "busy"} in lines
    message = await next_of(alice, ev.Message)
    assert isinstance(message, ev.Message)
    assert message.body == b"after the long line"


async def test_empty_stdin_device_ends_cleanly(start_server: ServerFactory, tmp_path: Path) -> None:
    """`tether client alice < /dev/null` connects, then ends as at the end of any input."""
    server = await start_server()
    with open(os.devnull, "rb") as devnull:
        process = await asyncio.create_subprocess_exec(
            *TETHER, "client", "alice", "--url", f"tcp://127.0.0.1:{server.tcp_port}",
            "--data-dir", str(tmp_path), "--token", issue_token(SECRET, "alice"),
            stdin=devnull, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(process.communicate(), 4 * TIMEOUT)
    assert process.returncode == 0, stderr.decode(errors="replace")
    assert json.loads(stdout.splitlines()[0])["event"] == "connected"


async def run_once(tmp_path: Path, *arguments: str) -> tuple[int, list[dict[str, Any]]]:
    """Run `tether client alice` with arguments and no input; return exit code and lines."""
    client = await LineClient.start("alice", *arguments, data_dir=tmp_path)
    return await client.finish()


async def test_unusable_urls_fail_at_once(tmp_path: Path) -> None:
    for url, expected in [
        ("http://127.0.0.1:9/ws", "scheme must be tcp, tls, ws or wss"),
        ("tcp://127.0.0.1", "expected tcp://host:port"),
        ("ws:///ws", "expected ws://host:port/path"),
        ("tcp://127.0.0.1:99999", "Port out of range"),
    ]:
        code, lines = await run_once(tmp_path, "--url", url)
        assert code == 2, url
        assert lines[0]["event"] == "error"
        assert expected in lines[0]["message"], lines
    code, lines = await run_once(tmp_path, "--url", "tcp://127.0.0.1:9", "--json", "true")
    assert code == 2
    assert "JSON frames need a ws:// or wss:// URL" in lines[0]["message"]


async def test_untrusted_certificate_fails_at_once(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    """A self-signed certificate without --ca-file ends the command; it does not retry."""
    cert, key = make_certificate(tmp_path)
    server = await start_server(
        transport_security=TransportSecurityConfig(tls_cert=cert, tls_key=key)
    )
    token = issue_token(SECRET, "alice")
    for url in (f"tls://127.0.0.1:{server.tcp_port}", ws_url(server, "wss")):
        code, lines = await run_once(tmp_path, "--url", url, "--token", token)
        assert code == 1, lines
        # Code 1015 ends the first connect; a retry would end in "no session within 10 s".
        message = lines[0]["message"]
        assert message.startswith("connect failed: connection closed: "), message
        assert f"the certificate of {url} failed verification" in message
        assert "(CERTIFICATE_VERIFY_FAILED): self-signed certificate" in message
        assert message.endswith("(code 1015)"), message
    # With the certificate as the trusted authority, the same URL works.
    code, lines = await run_once(
        tmp_path, "--url", ws_url(server, "wss"), "--ca-file", str(cert), "--json", "true",
        "--token", token,
    )  # fmt: skip
    assert code == 0, lines
    assert lines[0]["event"] == "connected"


def test_invalid_user_reports_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [*TETHER, "client", "bad user!", "--data-dir", str(tmp_path)],
        input="", capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "may contain only" in result.stdout
