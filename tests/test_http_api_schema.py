"""Schemathesis against a live `tether serve`: the server API must keep its OpenAPI document.

Schemathesis reads the document from the running server, generates requests from it (the
document's examples, boundary values, then random valid and invalid bodies) and checks each
response: no 5xx, only documented status codes and content types, bodies that match the
response schemas, invalid input rejected, valid input accepted, and no route usable without
a key. The number of examples per route is small so the run stays within a few seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TIMEOUT
from ops_helpers import TetherProcess

KEY = "schemathesis-api-key-0123456789"
TESTS = Path(__file__).resolve().parent
# Examples per route and phase; raise it locally for a deeper search.
MAX_EXAMPLES = int(os.environ.get("TETHER_SCHEMATHESIS_EXAMPLES", "15"))


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[TetherProcess]:
    process = TetherProcess(
        ["serve", "--data-dir", str(tmp_path / "data"), "--secret", "s" * 32,
         "--tcp-port", "0", "--ws-port", "off", "--http-port", "0", "--api-keys", KEY,
         "--log-level", "warning"],
        tmp_path,
    )  # fmt: skip
    yield process
    process.stop()


async def test_server_api_keeps_its_openapi_document(
    live_server: TetherProcess, tmp_path: Path
) -> None:
    await live_server.wait_ready()
    origin = f"http://127.0.0.1:{live_server.port('http')}"
    command = [
        str(Path(sys.executable).with_name("st")), "run", f"{origin}/api/v1/openapi.json",
        "--url", origin,
        "--header", f"Authorization: Bearer {KEY}",
        "--checks", "all",
        "--max-examples", str(MAX_EXAMPLES),
        "--workers", "1",
        "--request-timeout", str(TIMEOUT),
        "--no-color",
    ]  # fmt: skip
    environment = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
    }
    # The working folder is the test's own: schemathesis writes a replay cache into it.
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=TIMEOUT * 24, env=environment, cwd=tmp_path
    )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    assert "12 selected / 12 total" in report
    assert "No issues found" in report
