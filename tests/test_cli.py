"""The `tether` command as a user runs it: separate processes, real sockets."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import jwt
import pytest
from conftest import TIMEOUT

TETHER = [sys.executable, "-m", "tether"]


def run_tether(
    *arguments: str, data_dir: Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a tether command with the data folder given; return its output and exit status."""
    return subprocess.run(
        [*TETHER, *arguments, "--data-dir", str(data_dir)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 4,
        check=False,
    )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, int, int]]:
    """Run `tether serve` on free ports; yield (data dir, TCP port, WebSocket port)."""
    data_dir = tmp_path / "data"
    process = subprocess.Popen(
        [
            *TETHER,
            "serve",
            "--data-dir",
            str(data_dir),
            "--tcp-port",
            "0",
            "--ws-port",
            "0",
            "--grace-period",
            "0.3",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"tcp=[\d.]+:(\d+) ws=[\d.]+:(\d+)/ws", line)
        assert found, f"unexpected first line from tether serve: {line!r}"
        yield data_dir, int(found.group(1)), int(found.group(2))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=TIMEOUT) == 0
        finally:
            if process.poll() is None:
                process.kill()


def test_token_names_user(tmp_path: Path) -> None:
    result = run_tether("token", "alice", "--ttl", "60", data_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    secret = (tmp_path / "secret").read_text().strip()
    claims = jwt.decode(result.stdout.strip(), secret, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["exp"] - claims["iat"] == 60


def test_token_rejects_bad_user(tmp_path: Path) -> None:
    result = run_tether("token", "has space", data_dir=tmp_path)
    assert result.returncode == 2
    assert "user id" in result.stderr


def test_contacts_offline_edit(tmp_path: Path) -> None:
    added = run_tether("contacts", "add", "alice", "bob", data_dir=tmp_path)
    assert added.returncode == 0, added.stderr
    assert "no server running" in added.stdout
    assert (tmp_path / "tether.db").exists()
    listed = run_tether("contacts", "list", "bob", data_dir=tmp_path)
    assert listed.stdout.split() == ["alice"]
    removed = run_tether("contacts", "remove", "alice", "bob", data_dir=tmp_path)
    assert removed.returncode == 0, removed.stderr
    assert run_tether("contacts", "list", "bob", data_dir=tmp_path).stdout == ""


def test_contacts_in_named_database(tmp_path: Path, any_database: str) -> None:
    database = ("--database", any_database)
    data_dir = tmp_path / "data"
    added = run_tether("contacts", "add", "alice", "bob", *database, data_dir=data_dir)
    assert added.returncode == 0, added.stderr
    assert not (data_dir / "tether.db").exists()  # the default database was not used
    listed = run_tether("contacts", "list", "bob", *database, data_dir=data_dir)
    assert listed.stdout.split() == ["alice"]
    removed = run_tether("contacts", "remove", "alice", "bob", *database, data_dir=data_dir)
    assert removed.returncode == 0, removed.stderr
    assert run_tether("contacts", "list", "bob", *database, data_dir=data_dir).stdout == ""


def test_groups_offline_edit(tmp_path: Path) -> None:
    created = run_tether("groups", "create", "team", "alice", "bob", data_dir=tmp_path)
    assert created.returncode == 0, created.stderr
    assert "no server running" in created.stdout
    added = run_tether("groups", "add", "team", "carol", data_dir=tmp_path)
    assert added.returncode == 0, added.stderr
    listed = run_tether("groups", "list", "bob", data_dir=tmp_path)
    assert listed.stdout.splitlines() == ["team\towner=alice\tmembers=3"]
    members = run_tether("groups", "members", "team", data_dir=tmp_path)
    assert members.stdout.split() == ["alice", "bob", "carol"]

    removed = run_tether("groups", "remove", "team", "bob", data_dir=tmp_path)
    assert removed.returncode == 0, removed.stderr
    members = run_tether("groups", "members", "team", data_dir=tmp_path)
    assert members.stdout.split() == ["alice", "carol"]
    owner = run_tether("groups", "remove", "team", "alice", data_dir=tmp_path)
    assert owner.returncode == 1
    assert "owner cannot leave" in owner.stderr
    taken = run_tether("groups", "create", "team", "bob", data_dir=tmp_path)
    assert taken.returncode == 1
    assert "exists already" in taken.stderr
    usage = run_tether("groups", "list", "a", "b", data_dir=tmp_path)
    assert usage.returncode == 2
    usage = run_tether("groups", "owner", "team", data_dir=tmp_path)
    assert usage.returncode == 2
    missing = run_tether("groups", "members", "nothing", data_dir=tmp_path)
    assert missing.returncode == 1

    handed = run_tether("groups", "owner", "team", "carol", data_dir=tmp_path)
    assert handed.returncode == 0, handed.stderr
    listed = run_tether("groups", "list", "alice", data_dir=tmp_path)
    assert listed.stdout.splitlines() == ["team\towner=carol\tmembers=2"]
    stranger = run_tether("groups", "owner", "team", "bob", data_dir=tmp_path)
    assert stranger.returncode == 1
    assert "not a member" in stranger.stderr
    deleted = run_tether("groups", "delete", "team", data_dir=tmp_path)
    assert deleted.returncode == 0, deleted.stderr
    assert run_tether("groups", "list", "carol", data_dir=tmp_path).stdout == ""
    missing = run_tether("groups", "members", "team", data_dir=tmp_path)
    assert missing.returncode == 1


def test_groups_through_running_server(served: tuple[Path, int, int]) -> None:
    data_dir, _, _ = served
    members = [f"user{index}" for index in range(1200)]  # more than one request holds
    created = run_tether("groups", "create", "big", "alice", *members, data_dir=data_dir)
    assert created.returncode == 0, created.stderr
    assert "live" in created.stdout
    listed = run_tether("groups", "list", "user1199", data_dir=data_dir)
    assert listed.stdout.splitlines() == ["big\towner=alice\tmembers=1201"]
    removed = run_tether("groups", "remove", "big", *members[:700], data_dir=data_dir)
    assert removed.returncode == 0, removed.stderr
    listed = run_tether("groups", "list", "alice", data_dir=data_dir)
    assert listed.stdout.splitlines() == ["big\towner=alice\tmembers=501"]
    bad = run_tether("groups", "add", "big", "bad:user", data_dir=data_dir)
    assert bad.returncode == 1
    assert "code 1" in bad.stderr


def test_second_server_on_data_folder_refused(served: tuple[Path, int, int]) -> None:
    """A second `tether serve` on a running server's data folder exits; the first keeps it."""
    data_dir, _, _ = served
    second = subprocess.run(
        [*TETHER, "serve", "--data-dir", str(data_dir), "--tcp-port", "0", "--ws-port", "0"],
        capture_output=True, text=True, timeout=TIMEOUT * 4, check=False,
    )  # fmt: skip
    assert second.returncode == 1, second.stderr
    assert f"cannot start: another tether server runs on the data folder {data_dir}" in (
        second.stderr
    )
    assert second.stdout == ""  # no ready line
    added = run_tether("contacts", "add", "alice", "bob", data_dir=data_dir)
    assert "(live)" in added.stdout, added.stderr  # the first server still serves the socket


def test_database_password_masked_in_help_and_config(tmp_path: Path) -> None:
    environment = {**os.environ, "TETHER_DATABASE": "postgresql://chat:hunter2@db.example/chat"}
    for command in ("serve", "logic", "contacts", "cluster"):
        result = subprocess.run(
            [*TETHER, command, "--help"], env=environment, capture_output=True, text=True,
            timeout=TIMEOUT * 4, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "hunter2" not in result.stdout, command
    shown = subprocess.run(
        [*TETHER, "config", "show", "serve"], env=environment, capture_output=True, text=True,
        timeout=TIMEOUT * 4, check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "hunter2" not in shown.stdout
    assert "chat:***@db.example" in shown.stdout


def test_serve_on_postgres_masks_password(tmp_path: Path, postgres_url: str) -> None:
    url, password = with_password(postgres_url)
    process = subprocess.Popen(
        [*TETHER, "serve", "--data-dir", str(tmp_path), "--database", url, "--tcp-port", "0",
         "--ws-port", "off", "--log-level", "info"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("tether ready"), process.stderr.read()  # type: ignore[union-attr]
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=TIMEOUT)
    assert process.returncode == 0, stderr
    assert "logic started with database postgresql://" in stderr
    assert ":***@" in stderr
    assert password not in stderr
    assert not (tmp_path / "tether.db").exists()


def test_serve_unreachable_database_exits(tmp_path: Path) -> None:
    # Port 1 of 127.0.0.1 has no server: the connection is refused at once.
    result = subprocess.run(
        [*TETHER, "serve", "--data-dir", str(tmp_path), "--tcp-port", "0", "--ws-port", "off",
         "--database", "postgresql://chat:hunter2@127.0.0.1:1/chat"],
        capture_output=True, text=True, timeout=TIMEOUT * 4, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "cannot start: cannot open database postgresql://chat:***@127.0.0.1:1/chat" in (
        result.stderr
    )
    assert "hunter2" not in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""  # no ready line


def with_password(url: str) -> tuple[str, str]:
    """Return url with a password in it, and that password.

    A URL without one gets a made-up password, which trust authentication ignores.
    """
    parts = urlsplit(url)
    if parts.password:
        return url, parts.password
    password = "not-a-real-password"
    netloc = f"{parts.username}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc)), password


def test_walkthrough_two_clients(served: tuple[Path, int, int]) -> None:
    data_dir, tcp_port, ws_port = served
    added = run_tether("contacts", "add", "alice", "bob", data_dir=data_dir)
    assert "(live)" in added.stdout, added.stderr

    env = {**os.environ, "TETHER_DATA_DIR": str(data_dir)}
    bob = subprocess.Popen(
        [*TETHER, "client", "bob", "--url", f"ws://127.0.0.1:{ws_port}/ws"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert bob.stdin is not None and bob.stdout is not None
    bob_lines = [json.loads(bob.stdout.readline()) for _ in range(2)]
    assert bob_lines[0]["event"] == "connected"
    assert bob_lines[1] == {
        "event": "snapshot",
        "contacts": {"alice": {"status": "offline", "last_seen_ms": 0}},
    }

    alice = subprocess.Popen(
        [*TETHER, "client", "alice", "--url", f"tcp://127.0.0.1:{tcp_port}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert alice.stdin is not None and alice.stdout is not None
    online = json.loads(bob.stdout.readline())
    assert (online["event"], online["user"], online["status"]) == ("presence", "alice", "online")

    alice.stdin.write("send bob hello from alice\n")
    alice.stdin.flush()
    message = json.loads(bob.stdout.readline())
    assert message["event"] == "message"
    assert message["text"] == "hello from alice"
    assert message["sequence"] == 1

    alice.stdin.write("quit\n")
    alice.stdin.flush()
    assert alice.wait(timeout=TIMEOUT) == 0
    alice_lines = [json.loads(line) for line in alice.stdout.read().splitlines()]
    assert any(line["event"] == "ack" and line["sequence"] == 1 for line in alice_lines)
    offline = json.loads(bob.stdout.readline())
    assert (offline["event"], offline["user"], offline["status"]) == (
        "presence",
        "alice",
        "offline",
    )

    bob.stdin.close()  # end of input quits
    assert bob.wait(timeout=TIMEOUT) == 0


def test_serve_rejects_bad_setting(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_tether(
        "serve", "--offline-timeout", "1", "--heartbeat-interval", "4", data_dir=tmp_path
    )
    assert result.returncode == 2
    assert "offline_timeout" in result.stderr
    assert time.monotonic() - started < TIMEOUT * 4


def test_help_defaults_in_option_syntax(tmp_path: Path) -> None:
    result = run_tether("serve", "--help", data_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # argparse wraps lines anywhere
    assert "[env TETHER_LOGIC, default true]" in text
    assert "[env TETHER_WS_ALLOWED_ORIGINS, default *]" in text
    assert "[env TETHER_TLS_CERT, default none]" in text
    for python_repr in ("default True", "default False", "default None", "default ("):
        assert python_repr not in text


def test_ready_line_marks_off_listeners(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [*TETHER, "serve", "--data-dir", str(tmp_path), "--tcp-port", "0", "--ws-port", "off"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=TIMEOUT)
    assert re.match(r"tether ready tcp=127\.0\.0\.1:\d+ ws=off gateway=\S+$", line), line
    assert process.returncode == 0


def test_serve_reads_environment(tmp_path: Path) -> None:
    env = {**os.environ, "TETHER_OFFLINE_TIMEOUT": "not-a-number"}
    result = subprocess.run(
        [*TETHER, "serve", "--data-dir", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 4,
        check=False,
    )
    assert result.returncode == 2
    assert "TETHER_OFFLINE_TIMEOUT" in result.stderr


def _free_port_pair() -> int:
    """Return a port p of 127.0.0.1 such that p and p + 1 are both free right now.

    The ports come from below Linux's default ephemeral range (32768 and up), where the
    outgoing connections of other tests cannot take p + 1 between the check and the use.
    """
    import random
    import socket

    for _ in range(200):
        port = random.randrange(20_000, 32_000)
        with socket.socket() as first, socket.socket() as second:
            try:
                first.bind(("127.0.0.1", port))
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no two consecutive free ports found")


def test_cluster_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    result = run_tether("cluster", "--config", str(missing), data_dir=tmp_path)
    assert result.returncode == 2
    assert f"invalid setting config: {missing} is not a readable file" in result.stderr
    assert "redis  " not in result.stdout  # failed before starting anything


@pytest.mark.parametrize("redis_cluster", [False, True], ids=["standalone", "cluster"])
def test_cluster_command_runs_and_stops(tmp_path: Path, redis_cluster: bool) -> None:
    tcp_base, ws_base = _free_port_pair(), _free_port_pair()
    config = tmp_path / "tether.toml"
    config.write_text('[serve]\nws_path = "/chat"\n')  # read by every gateway
    process = subprocess.Popen(
        [
            *TETHER,
            "cluster",
            "--config",
            str(config),
            "--data-dir",
            str(tmp_path / "data"),
            "--gateways",
            "2",
            "--logic-workers",
            "1",
            "--tcp-port",
            str(tcp_base),
            "--ws-port",
            str(ws_base),
            "--log-level",
            "warning",
            "--redis-cluster",
            str(redis_cluster).lower(),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = []
        while not lines or not lines[-1].startswith("cluster ready"):
            line = process.stdout.readline()
            assert line, f"tether cluster exited early: {process.stderr.read()}"  # type: ignore[union-attr]
            lines.append(line)
        output = "".join(lines)
        assert f"tcp=127.0.0.1:{tcp_base} " in output
        assert f"tcp=127.0.0.1:{tcp_base + 1} " in output
        assert f"ws=127.0.0.1:{ws_base}/chat " in output
        assert f"ws=127.0.0.1:{ws_base + 1}/chat " in output
        assert "redis  redis://127.0.0.1:" in output
        assert ("Redis Cluster of 3 primaries" in output) == redis_cluster
        pids = [int(pid) for pid in re.findall(r" pid (\d+) ", output)]
        assert len(pids) == 3

        added = run_tether("contacts", "add", "alice", "bob", data_dir=tmp_path / "data")
        assert "(live)" in added.stdout, added.stderr
        env = {**os.environ, "TETHER_DATA_DIR": str(tmp_path / "data")}
        bob = subprocess.Popen(
            [*TETHER, "client", "bob", "--url", f"ws://127.0.0.1:{ws_base + 1}/chat"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env,
        )  # fmt: skip
        assert bob.stdout is not None and bob.stdin is not None
        assert json.loads(bob.stdout.readline())["event"] == "connected"
        assert json.loads(bob.stdout.readline())["event"] == "snapshot"
        alice = run_tether(
            "client", "alice", "--url", f"tcp://127.0.0.1:{tcp_base}",
            data_dir=tmp_path / "data", stdin="send bob across the cluster\nquit\n",
        )  # fmt: skip
        assert '"event": "ack"' in alice.stdout, alice.stdout + alice.stderr
        events = [json.loads(bob.stdout.readline()) for _ in range(2)]
        message = next(event for event in events if event["event"] == "message")
        assert message["text"] == "across the cluster"
        bob.stdin.close()
        assert bob.wait(timeout=TIMEOUT) == 0
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=TIMEOUT * 6) == 0
    for pid in pids:  # every child stopped with the cluster
        assert (
            not Path(f"/proc/{pid}").exists()
            or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        )
