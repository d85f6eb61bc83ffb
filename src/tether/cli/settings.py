"""Command-line options whose defaults come from `TETHER_*` environment variables.

Precedence: a flag on the command line, then the environment variable, then the built-in
default. Each option's help names its variable and unit.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["add_option", "boolean_value", "default_data_dir", "port_value"]


def default_data_dir() -> Path:
    """Return $XDG_DATA_HOME/tether, or ~/.local/share/tether."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tether"


def port_value(text: str) -> int | None:
    """Parse a port number; "off" disables the listener."""
    if text.lower() == "off":
        return None
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0 to 65535 or 'off', got {text}")
    return port


def boolean_value(text: str) -> bool:
    """Parse true/false, yes/no, on/off or 1/0, in any case."""
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_option(
    parser: argparse.ArgumentParser,
    flag: str,
    *,
    convert: Callable[[str], Any],
    default: Any,
    help: str,
    secret: bool = False,
    redact: Callable[[str], str] | None = None,
) -> None:
    """Add --flag, defaulting to $TETHER_FLAG (upper case, dashes as underscores) or default.

    A secret option's value is never shown. For other options, redact (if given) returns the
    value as help text and error messages show it, for example a URL with its password masked.
    """
    variable = "TETHER_" + flag.removeprefix("--").replace("-", "_").upper()
    raw = os.environ.get(variable) or None  # set but empty counts as unset
    if raw is not None:
        try:
            default = convert(raw)
        except (ValueError, argparse.ArgumentTypeError) as error:
            shown_raw = raw
            if secret:
                shown_raw = "***"
            elif redact is not None:
                shown_raw = redact(raw)
            parser.error(f"invalid {variable}={shown_raw!r}: {error}")
    shown = default
    if secret and default:
        shown = "(set)"
    elif redact is not None and default:
        shown = redact(str(default))
    parser.add_argument(
        flag,
        type=convert,
        default=default,
        help=f"{help} [env {variable}, default {shown}]",
    )
