"""The configuration file and `tether config show`, through the command line.

Precedence, highest first: flag, TETHER_* variable, file (a command's table over the top
level), default. Every error names the setting it is about.
"""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

from conftest import TIMEOUT
from ops_helpers import TETHER, TetherProcess, http_get


def tether(
    *arguments: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run tether with no TETHER_* variable from the test's own environment except env."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("TETHER_")}
    return subprocess.run(
        [*TETHER, *arguments], capture_output=True, text=True, timeout=TIMEOUT * 2,
        env={**clean, **(env or {})}, cwd=cwd,
    )  # fmt: skip


def shown(output: str) -> dict[str, tuple[object, str]]:
    """Parse `config show` output into {key: (value, source)}."""
    values = tomllib.loads(output)
    sources = {
        line.split(" = ", 1)[0]: line.rsplit("  # ", 1)[1]
        for line in output.splitlines()
        if " = " in line and not line.startswith("#")
    }
    return {key: (values[key], sources[key]) for key in values}


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_flags_override_environment_override_file(tmp_path: Path) -> None:
    config = write(tmp_path / "tether.toml", "tcp_port = 1111\nws_port = 2222\nhttp_port = 3333\n")
    result = tether(
        "config", "show", "--config", str(config), "--http-port", "6666",
        env={"TETHER_WS_PORT": "4444", "TETHER_HTTP_PORT": "5555"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    settings = shown(result.stdout)
    assert settings["tcp_port"] == (1111, f"file {config}")
    assert settings["ws_port"] == (4444, "env TETHER_WS_PORT")
    assert settings["http_port"] == (6666, "flag")
    assert settings["heartbeat_interval"] == (4.0, "default")


def test_command_table_overrides_top_level(tmp_path: Path) -> None:
    config = write(
        tmp_path / "tether.toml",
        'redis = "redis://127.0.0.1:1/0"\nhttp_port = 7402\n'
        "[serve]\ntcp_port = 9000\n[logic]\nhttp_port = 7403\n",
    )
    serve = shown(tether("config", "show", "serve", "--config", str(config)).stdout)
    logic = shown(tether("config", "show", "logic", "--config", str(config)).stdout)
    assert serve["http_port"][0] == 7402
    assert serve["tcp_port"][0] == 9000
    assert logic["http_port"][0] == 7403
    assert "tcp_port" not in logic
    assert logic["redis"] == ("redis://127.0.0.1:1/0", f"file {config}")


def test_config_variable_names_the_file(tmp_path: Path) -> None:
    config = write(tmp_path / "tether.toml", "max_devices_per_user = 3\n")
    result = tether("config", "show", env={"TETHER_CONFIG": str(config)})
    assert result.returncode == 0, result.stderr
    assert shown(result.stdout)["max_devices_per_user"] == (3, f"file {config}")


def test_show_masks_secrets(tmp_path: Path) -> None:
    config = write(
        tmp_path / "tether.toml",
        'secret = "file-secret-value"\nredis = "redis://app:hunter2@127.0.0.1:6379/0"\n',
    )
    result = tether("config", "show", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "file-secret-value" not in result.stdout
    assert "hunter2" not in result.stdout
    settings = shown(result.stdout)
    assert settings["secret"][0] == "***"
    assert settings["redis"][0] == "redis://app:***@127.0.0.1:6379/0"

    result = tether("config", "show", env={"TETHER_SECRET": "env-secret-value"})
    assert "env-secret-value" not in result.stdout
    assert shown(result.stdout)["secret"] == ("***", "env TETHER_SECRET")


def test_show_output_reads_back_as_a_file(tmp_path: Path) -> None:
    first = tether("config", "show", "--ws-port", "off", "--public-key-files", "/a.pem,/b.pem")
    assert first.returncode == 0, first.stderr
    config = write(tmp_path / "copy.toml", first.stdout)
    again = tether("config", "show", "--config", str(config))
    assert again.returncode == 0, again.stderr
    assert {k: v for k, (v, _) in shown(again.stdout).items()} == {
        k: v for k, (v, _) in shown(first.stdout).items()
    }


def test_errors_name_the_setting(tmp_path: Path) -> None:
    cases = {
        "tcp-port = 1\n": "'tcp-port' is not a setting of tether serve; did you mean tcp_port",
        "[serve]\nheartbeat = 2\n": "[serve] 'heartbeat' is not a setting of tether serve",
        "[servers]\ntcp_port = 1\n": "'servers' is not a setting of tether serve",
        'tcp_port = "x"\n': "invalid value for tcp_port",
        "tcp_port = 70000\n": "invalid value for tcp_port: port must be 0 to 65535",
        "logic = 3\n": "invalid value for logic: expected true or false",
        "ws_path = {a = 1}\n": "invalid value for ws_path: expected a value, got a table",
        "tcp_port = \n": "is not valid TOML",
    }
    for text, message in cases.items():
        config = write(tmp_path / "bad.toml", text)
        result = tether("serve", "--config", str(config), "--data-dir", str(tmp_path))
        assert result.returncode == 2, text
        assert message in result.stderr, (text, result.stderr)

    config = write(tmp_path / "gateway.toml", "tcp_port = 7400\n")
    result = tether("logic", "--config", str(config))
    assert result.returncode == 2
    assert "'tcp_port' is not a setting of tether logic" in result.stderr

    result = tether("serve", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2
    assert "cannot read the configuration file" in result.stderr

    result = tether("config", "show", env={"TETHER_MAX_FRAME_BYTES": "many"})
    assert result.returncode == 2
    assert "invalid TETHER_MAX_FRAME_BYTES='many'" in result.stderr


def test_checks_across_settings_run_at_start(tmp_path: Path) -> None:
    config = write(tmp_path / "tether.toml", "heartbeat_interval = 30\noffline_timeout = 20\n")
    result = tether("config", "show", "--config", str(config))
    assert result.returncode == 2
    assert "offline_timeout" in result.stderr
    assert "heartbeat_interval" in result.stderr

    result = tether("serve", "--config", str(config), "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "invalid setting: offline_timeout" in result.stderr


async def test_serve_runs_from_the_file(tmp_path: Path) -> None:
    config = write(
        tmp_path / "tether.toml",
        f'data_dir = "{tmp_path / "data"}"\nsecret = "config-test-secret-of-at-least-32-bytes"\n'
        'log_level = "warning"\n[serve]\ntcp_port = 0\nws_port = "off"\nhttp_port = 0\n',
    )
    process = TetherProcess(["serve", "--config", str(config)], tmp_path)
    try:
        line = await process.wait_ready()
        assert " ws=off " in line  # WebSocket off, as set in the file
        status, _ = await http_get(process.port("http"), "/healthz/ready")
        assert status == 200
    finally:
        process.stop()
    assert process.popen.returncode == 0
