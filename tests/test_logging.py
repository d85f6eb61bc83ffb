"""Log formats: `tether serve --log-format json` writes one JSON object per line to stderr, with
the connection and user ids on records about a connection."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import TIMEOUT, RawClient
from ops_helpers import TETHER, TetherProcess

from tether.auth import issue_token
from tether.ops.logs import ConnectionLabel, JsonFormatter

SECRET = "logging-test-secret-of-at-least-32-bytes"


async def run_one_session(tmp_path: Path, *log_options: str) -> str:
    """Run `tether serve`, log alice in and out over TCP, stop it; return its stderr."""
    process = TetherProcess(
        [
            "serve",
            "--data-dir",
            str(tmp_path / "data"),
            "--secret",
            SECRET,
            "--tcp-port",
            "0",
            "--ws-port",
            "off",
            *log_options,
        ],
        tmp_path,
    )
    try:
        await process.wait_ready()
        reader, writer = await asyncio.open_connection("127.0.0.1", process.port("tcp"))
        raw = RawClient(reader, writer)
        raw.send_connect("alice", "phone", token=issue_token(SECRET, "alice"))
        await raw.receive_kind("presence_snapshot")
        raw.close()
        await asyncio.sleep(0.2)  # the server logs the close
        process.terminate()
        assert await asyncio.to_thread(process.wait) == 0
    finally:
        process.kill()
    return process.stderr()


async def test_json_lines_carry_connection_and_user_ids(tmp_path: Path) -> None:
    stderr = await run_one_session(tmp_path, "--log-format", "json", "--log-level", "info")

    records = [json.loads(line) for line in stderr.splitlines()]  # every line is JSON
    assert records
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys(), record
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
        assert record["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

    opened = [r for r in records if r["message"].startswith("opened conn=")]
    assert len(opened) == 1, records
    assert opened[0]["logger"] == "tether.gateway"
    assert opened[0]["user_id"] == "alice"
    assert opened[0]["device_id"] == "phone"
    connection_id = opened[0]["connection_id"]
    assert f"conn={connection_id} user=alice device=phone" in opened[0]["message"]

    closing = [r for r in records if r["message"].startswith("closing conn=")]
    assert [(r["connection_id"], r["user_id"]) for r in closing] == [(connection_id, "alice")]
    started = [r for r in records if r["message"].startswith("tether started")]
    assert len(started) == 1
    assert "connection_id" not in started[0]


async def test_text_is_the_default_format(tmp_path: Path) -> None:
    stderr = await run_one_session(tmp_path)

    lines = stderr.splitlines()
    assert lines
    for line in lines:
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ tether[.\w]*: ", line), line
    assert re.search(r"INFO tether\.gateway: opened conn=\S+ user=alice device=phone", stderr)


def test_bad_log_settings_are_named(tmp_path: Path) -> None:
    base = [*TETHER, "serve", "--data-dir", str(tmp_path)]
    result = subprocess.run(
        [*base, "--log-format", "xml"], capture_output=True, text=True, timeout=TIMEOUT * 2
    )
    assert result.returncode == 2
    assert "--log-format" in result.stderr
    assert "xml" in result.stderr

    result = subprocess.run(
        base, capture_output=True, text=True, timeout=TIMEOUT * 2,
        env={**os.environ, "TETHER_LOG_LEVEL": "loud"},
    )  # fmt: skip
    assert result.returncode == 2
    assert "TETHER_LOG_LEVEL" in result.stderr
    assert "loud" in result.stderr


def test_json_formatter_adds_exceptions_and_extra_ids() -> None:
    formatter = JsonFormatter()
    try:
        raise ValueError("broken")
    except ValueError:
        record = logging.LogRecord(
            "tether.test", logging.ERROR, __file__, 1, "failed for %s", ("x",), sys.exc_info()
        )
    record.user_id = "bob"
    output = json.loads(formatter.format(record))
    assert output["message"] == "failed for x"
    assert output["user_id"] == "bob"
    assert "ValueError: broken" in output["exception"]
    assert "\n" not in formatter.format(record)

    label = ConnectionLabel("c-1", "", "")
    record = logging.LogRecord("tether.test", logging.INFO, __file__, 1, "saw %s", (label,), None)
    output = json.loads(formatter.format(record))
    assert output["message"] == "saw conn=c-1 user=- device=-"
    assert output["connection_id"] == "c-1"
    assert "user_id" not in output
