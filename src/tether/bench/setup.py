"""`tether bench setup`: install the Socket.IO peers under the results folder.

    tether bench setup [--results-dir bench/results]

- peers/python: a virtual environment with python-socketio, aiohttp, uvloop and redis from PyPI,
  for bench/peers/socketio_server.py;
- peers/node: node_modules with socket.io, @socket.io/redis-adapter and redis from npm, for
  bench/peers/socketio_server.js (Node.js and npm must be on PATH).

Nothing goes into tether's own environment. The installed versions are written to
peers/versions.json, which every results file copies.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["NODE_PACKAGES", "PYTHON_PACKAGES", "peer_versions", "setup_peers"]

PYTHON_PACKAGES = ("python-socketio", "python-engineio", "aiohttp", "uvloop", "redis")
NODE_PACKAGES = ("socket.io", "@socket.io/redis-adapter", "redis")


def setup_peers(results_dir: Path) -> int:
    """Install both peers; return 0, or 1 with a message on stderr when a step failed."""
    peers = results_dir / "peers"
    peers.mkdir(parents=True, exist_ok=True)
    python_dir = peers / "python"
    node_dir = peers / "node"
    try:
        if not (python_dir / "bin" / "python").exists():
            _step([sys.executable, "-m", "venv", str(python_dir)])
        _step([str(python_dir / "bin" / "pip"), "install", "--quiet", *PYTHON_PACKAGES])
        npm = shutil.which("npm")
        if npm is None:
            print("tether bench setup: npm not found on PATH; install Node.js", file=sys.stderr)
            return 1
        node_dir.mkdir(exist_ok=True)
        if not (node_dir / "package.json").exists():
            (node_dir / "package.json").write_text(
                '{"name": "tether-bench-peers", "private": true}\n'
            )
        _step(
            [npm, "install", "--prefix", str(node_dir), "--no-audit", "--no-fund", *NODE_PACKAGES]
        )
    except subprocess.CalledProcessError as error:
        print(
            f"tether bench setup: {' '.join(error.cmd)} failed ({error.returncode})",
            file=sys.stderr,
        )
        return 1
    versions = peer_versions(results_dir)
    (peers / "versions.json").write_text(json.dumps(versions, indent=2) + "\n")
    print(json.dumps(versions, indent=2))
    return 0


def peer_versions(results_dir: Path) -> dict[str, Any]:
    """Return the installed versions of the peers' packages, Node.js and Python."""
    peers = results_dir / "peers"
    versions: dict[str, Any] = {}
    python = peers / "python" / "bin" / "python"
    if python.exists():
        script = (
            "import importlib.metadata as m, json, platform; "
            f"print(json.dumps({{n: m.version(n) for n in {list(PYTHON_PACKAGES)!r}}} "
            "| {'python': platform.python_version()}))"
        )
        output = subprocess.run(
            [str(python), "-c", script], capture_output=True, text=True, check=False, timeout=60
        )
        if output.returncode == 0:
            versions["python-socketio"] = json.loads(output.stdout)
    modules = peers / "node" / "node_modules"
    if modules.is_dir():
        node: dict[str, str] = {}
        for name in NODE_PACKAGES:
            package = modules / name / "package.json"
            if package.exists():
                node[name] = json.loads(package.read_text())["version"]
        node_binary = shutil.which("node")
        if node_binary is not None:
            node["node"] = subprocess.run(
                [node_binary, "--version"], capture_output=True, text=True, check=False, timeout=30
            ).stdout.strip()
        versions["node-socketio"] = node
    return versions


def _step(command: list[str]) -> None:
    print("+ " + " ".join(command), file=sys.stderr, flush=True)
    subprocess.run(command, check=True, timeout=900)
