"""TLS and proxy settings of `tether serve` and `tether client`, run as separate processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TIMEOUT
from tls_support import make_certificate

TETHER = [sys.executable, "-m", "tether"]


def run_serve(*arguments: str, data_dir: Path, env: dict[str, str] | None = None) -> str:
    """Run `tether serve` that must fail at start; return its stderr."""
    result = subprocess.run(
        [
            *TETHER,
            "serve",
            "--data-dir",
            str(data_dir),
            "--tcp-port",
            "0",
            "--ws-port",
            "0",
            *arguments,
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 4,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 2, result.stderr
    return result.stderr


def test_missing_certificate_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.crt"
    stderr = run_serve(
        "--tls-cert", str(missing), "--tls-key", str(tmp_path / "k"), data_dir=tmp_path
    )
    assert "tls_cert" in stderr
    assert str(missing) in stderr


def test_key_of_other_certificate(tmp_path: Path) -> None:
    cert, _ = make_certificate(tmp_path, "one")
    _, other_key = make_certificate(tmp_path, "two")
    stderr = run_serve("--tls-cert", str(cert), "--tls-key", str(other_key), data_dir=tmp_path)
    assert "tls_key" in stderr


def test_certificate_without_key_from_environment(tmp_path: Path) -> None:
    cert, _ = make_certificate(tmp_path)
    stderr = run_serve(data_dir=tmp_path, env={"TETHER_TLS_CERT": str(cert)})
    assert "tls_key is missing" in stderr


def test_invalid_origin_setting(tmp_path: Path) -> None:
    stderr = run_serve("--ws-allowed-origins", "https://a.example/path", data_dir=tmp_path)
    assert "ws_allowed_origins" in stderr


def test_invalid_trusted_proxies(tmp_path: Path) -> None:
    stderr = run_serve("--trusted-proxies", "10.0.0.0/8,nonsense", data_dir=tmp_path)
    assert "trusted_proxies" in stderr


@pytest.fixture
def served_tls(tmp_path: Path) -> Iterator[tuple[Path, Path, int, int]]:
    """Run `tether serve` with TLS; yield (data dir, certificate, TCP port, WebSocket port)."""
    cert, key = make_certificate(tmp_path)
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
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TETHER_TLS_CERT": str(cert), "TETHER_TLS_KEY": str(key)},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"tcp=[\d.]+:(\d+) ws=[\d.]+:(\d+)/ws tls=true ", line)
        assert found, f"unexpected first line from tether serve: {line!r}"
        yield data_dir, cert, int(found.group(1)), int(found.group(2))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=TIMEOUT) == 0
        finally:
            if process.poll() is None:
                process.kill()


def run_client(data_dir: Path, user: str, *arguments: str) -> list[dict[str, object]]:
    """Run `tether client` until it connects and quits; return its JSON lines."""
    result = subprocess.run(
        [*TETHER, "client", user, "--data-dir", str(data_dir), *arguments],
        input="quit\n",
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 4,
        check=False,
    )
    lines: list[dict[str, object]] = [json.loads(line) for line in result.stdout.splitlines()]
    return lines


def test_cli_client_over_tls_and_wss(served_tls: tuple[Path, Path, int, int]) -> None:
    data_dir, cert, tcp_port, ws_port = served_tls
    over_tls = run_client(
        data_dir, "alice", "--url", f"tls://127.0.0.1:{tcp_port}", "--ca-file", str(cert)
    )
    assert over_tls[0]["event"] == "connected"
    assert over_tls[0]["user"] == "alice"
    over_wss = run_client(
        data_dir, "bob", "--url", f"wss://127.0.0.1:{ws_port}/ws", "--ca-file", str(cert)
    )
    assert over_wss[0]["event"] == "connected"
    assert over_wss[0]["user"] == "bob"


def test_cli_client_ca_file_needs_tls_url(tmp_path: Path) -> None:
    cert, _ = make_certificate(tmp_path)
    lines = run_client(tmp_path, "alice", "--url", "tcp://127.0.0.1:9", "--ca-file", str(cert))
    assert lines[0]["event"] == "error"
    assert "tls:// or wss://" in str(lines[0]["message"])
