"""`tether config show`: print the settings `tether serve` or `tether logic` would run with.

The output is TOML in the configuration file's own format, one setting per line, each with a
comment saying where its value came from (flag, environment variable, file or default).
Secrets are masked: the `secret` option entirely, and the password of any URL.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tether.cli.settings import OptionSpec, Setting, mask_secrets, port_value

__all__ = ["show_config", "toml_value"]


def show_config(arguments: argparse.Namespace, settings: dict[str, Setting]) -> int:
    """Check and print the effective settings of `arguments.target`; return the exit status."""
    from tether.cli.serve import logic_config, serve_config

    target = arguments.target
    build = serve_config if target == "serve" else logic_config
    try:
        build(arguments)  # the same checks the command runs at start
    except ValueError as error:
        print(f"tether config show: invalid setting: {error}", file=sys.stderr)
        return 2

    lines = [
        f"# Effective settings of `tether {target}`. Flags override TETHER_* variables, which",
        "# override the configuration file, which overrides the defaults. Secrets are masked.",
    ]
    if arguments.config is not None:
        lines.append(f"# Configuration file: {arguments.config}")
    for name, setting in settings.items():
        shown = mask_secrets(setting.spec, setting.value)
        lines.append(f"{name} = {toml_value(setting.spec, shown)}  # {setting.source}")
    print("\n".join(lines))
    return 0


def toml_value(spec: OptionSpec, value: Any) -> str:
    """Return value as TOML that the option reads back to the same value."""
    if value is None:
        # A disabled port reads back from "off"; any other unset value from "".
        return '"off"' if spec.convert is port_value else '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(json.dumps(str(item)) for item in value) + "]"
    if isinstance(value, str | Path):
        # JSON string escapes are valid in TOML basic strings.
        return json.dumps(str(value), ensure_ascii=False)
    raise TypeError(f"no TOML form for {spec.dest} = {value!r}")
