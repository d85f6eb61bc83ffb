"""Run the JavaScript client's own tests (clients/js, Node's test runner) from pytest.

They include tests against a real `tether serve`, which they start with this interpreter
(TETHER_PYTHON). Skipped, with the reason, when node or npm is missing or `npm ci` cannot
install the client's dependencies (no network and no npm cache, for example).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SCALE

CLIENT = Path(__file__).resolve().parents[1] / "clients" / "js"
NODE_MAJOR_MIN = 20


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"JavaScript client tests skipped: {name} is not on PATH")
    return path


@pytest.mark.timeout(600)
def test_javascript_client() -> None:
    node = _tool("node")
    npm = _tool("npm")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    major = int(re.match(r"v(\d+)", version.stdout).group(1))  # type: ignore[union-attr]
    if major < NODE_MAJOR_MIN:
        pytest.skip(
            f"JavaScript client tests skipped: node {version.stdout.strip()} is older than 20"
        )
    if not (CLIENT / "node_modules" / ".package-lock.json").exists() or _lock_newer():
        installed = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=CLIENT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if installed.returncode != 0:
            pytest.skip(
                f"JavaScript client tests skipped: npm ci failed: {installed.stderr[-500:]}"
            )
    environment = dict(
        os.environ, TETHER_PYTHON=sys.executable, TETHER_TEST_TIMEOUT_SCALE=str(SCALE)
    )
    result = subprocess.run(
        [node, "--test", "--test-reporter=spec"],
        cwd=CLIENT,
        capture_output=True,
        text=True,
        timeout=500,
        env=environment,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    summary = re.search(r"pass (\d+)", result.stdout)
    assert summary is not None and int(summary.group(1)) > 0, result.stdout[-2000:]


def _lock_newer() -> bool:
    """Tell whether package-lock.json changed after the last install."""
    installed = CLIENT / "node_modules" / ".package-lock.json"
    return (CLIENT / "package-lock.json").stat().st_mtime > installed.stat().st_mtime
