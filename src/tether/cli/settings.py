"""Command-line options that can also come from `TETHER_*` environment variables and a TOML file.

Precedence, highest first: a flag on the command line, then the environment variable, then the
configuration file named by `--config` (or `TETHER_CONFIG`), then the built-in default. Each
option's help names its variable and default.

`add_option` declares an option; `resolve` fills in the parsed arguments from those sources
after argparse has read the command line, and reports where each value came from. A value from
any source goes through the option's own conversion, so the file and the environment are
checked exactly like flags, and every error names the setting it is about.

File keys are the option names with underscores (`tcp_port` for `--tcp-port`). Keys at the top
of the file apply to every command that reads it; a table named after a command (`[serve]`,
`[logic]`) holds keys for that command only and overrides the top. A key the command does not
know is an error, with the closest known keys as suggestions.
"""

from __future__ import annotations

import argparse
import difflib
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.urls import redact_url

__all__ = [
    "CONFIG_VARIABLE",
    "SECTIONS",
    "OptionSpec",
    "Setting",
    "SettingError",
    "add_config_option",
    "add_option",
    "boolean_value",
    "default_data_dir",
    "mask_secrets",
    "port_value",
    "resolve",
]

CONFIG_VARIABLE = "TETHER_CONFIG"
# Name of the parser default that carries a subcommand's option specs into the namespace.
_SPECS = "_tether_option_specs"
# Name of the parser default that contains the file table of a subcommand taking --config.
_SECTION = "_tether_config_section"
# Commands whose tables a configuration file may have.
SECTIONS = ("serve", "logic")
_CONFIG_DEST = "config"
_MASK = "***"


class SettingError(ValueError):
    """A setting from a flag, the environment or the configuration file is invalid."""


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """One option: its flag, environment variable, file key, conversion and default."""

    flag: str
    dest: str
    variable: str
    convert: Callable[[str], Any]
    default: Any
    secret: bool
    redact: Callable[[str], str] | None = None
    """Return a value as it may be shown, for example a URL with its password masked."""

    @property
    def key(self) -> str:
        """Name of the setting in the configuration file."""
        return self.dest

    def default_value(self) -> Any:
        """Return the default, converted when given as text (as argparse would do)."""
        return self.convert(self.default) if isinstance(self.default, str) else self.default


@dataclass(frozen=True, slots=True)
class Setting:
    """The value an option ended up with and where it came from."""

    spec: OptionSpec
    value: Any
    source: str
    """"flag", "env TETHER_...", "file PATH" or "default"."""


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


def _variable(flag: str) -> str:
    return "TETHER_" + flag.removeprefix("--").replace("-", "_").upper()


def _specs(parser: argparse.ArgumentParser) -> list[OptionSpec]:
    specs: list[OptionSpec] | None = parser.get_default(_SPECS)
    if specs is None:
        specs = []
        parser.set_defaults(**{_SPECS: specs})
    return specs


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
    """Add --flag; without it, `resolve` takes $TETHER_FLAG, the file's key, then default.

    A secret option's value is never shown. For other options, redact (if given) returns the
    value as help text and error messages show it, for example a URL with its password masked.
    """
    spec = OptionSpec(
        flag=flag,
        dest=flag.removeprefix("--").replace("-", "_"),
        variable=_variable(flag),
        convert=convert,
        default=default,
        secret=secret,
        redact=redact,
    )
    _specs(parser).append(spec)
    shown = _help_default(default)
    if secret and default:
        shown = "(set)"
    elif redact is not None and default:
        shown = redact(str(default))
    # SUPPRESS leaves the attribute unset when the flag is absent, so resolve can tell which
    # values came from the command line.
    parser.add_argument(
        flag,
        type=convert,
        default=argparse.SUPPRESS,
        help=f"{help} [env {spec.variable}, default {shown}]",
    )


def _help_default(value: Any) -> str:
    """Return a default as the text the option itself reads, so help never shows Python reprs."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None or value == "" or value == () or value == []:
        return "none"
    if isinstance(value, tuple | list):
        return ",".join(str(item) for item in value)
    return str(value)


def add_config_option(parser: argparse.ArgumentParser, section: str) -> None:
    """Add --config FILE (or TETHER_CONFIG): a TOML file of settings for this command.

    section names the file's table for this command, one of SECTIONS.
    """
    assert section in SECTIONS, section
    parser.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="TOML file of settings, keys named like the options with underscores; flags and "
        f"TETHER_* variables override it [env {CONFIG_VARIABLE}]",
    )
    parser.set_defaults(**{_SECTION: section})


def resolve(arguments: argparse.Namespace) -> dict[str, Setting]:
    """Fill every option of the parsed command from flag, environment, file or default.

    Returns the settings by option name. Raises SettingError naming the setting when a value
    does not convert, the file cannot be read, or the file has a key the command lacks.
    """
    specs: list[OptionSpec] = vars(arguments).pop(_SPECS, None) or []
    section: str | None = vars(arguments).pop(_SECTION, None)
    config_path = _config_path(arguments, section is not None)
    from_file: dict[str, Any] = {}
    if config_path is not None and section is not None:
        from_file = _select(config_path, _read_config_file(config_path), section, specs)

    settings: dict[str, Setting] = {}
    for spec in specs:
        setting = _resolve_one(spec, arguments, config_path, from_file)
        setattr(arguments, spec.dest, setting.value)
        settings[spec.dest] = setting
    return settings


def _config_path(arguments: argparse.Namespace, has_config: bool) -> Path | None:
    """Return the file from --config, else from TETHER_CONFIG if the command takes one."""
    if not has_config:
        return None
    path: Path | None = vars(arguments).get(_CONFIG_DEST)
    if path is None:
        raw = os.environ.get(CONFIG_VARIABLE) or None
        path = Path(raw) if raw is not None else None
    setattr(arguments, _CONFIG_DEST, path)
    return path


def _resolve_one(
    spec: OptionSpec, arguments: argparse.Namespace, path: Path | None, from_file: dict[str, Any]
) -> Setting:
    if spec.dest in vars(arguments):
        return Setting(spec, getattr(arguments, spec.dest), "flag")
    raw = os.environ.get(spec.variable) or None  # set but empty counts as unset
    if raw is not None:
        shown = repr(mask_secrets(spec, raw))
        value = _convert(spec, raw, f"invalid {spec.variable}={shown}")
        return Setting(spec, value, f"env {spec.variable}")
    if spec.key in from_file:
        text = _toml_text(spec, from_file[spec.key], path)
        value = _convert(spec, text, f"{path}: invalid value for {spec.key}")
        return Setting(spec, value, f"file {path}")
    return Setting(spec, spec.default_value(), "default")


def _convert(spec: OptionSpec, text: str, context: str) -> Any:
    try:
        return spec.convert(text)
    except (ValueError, argparse.ArgumentTypeError) as error:
        raise SettingError(f"{context}: {error}") from error


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as error:
        raise SettingError(f"cannot read the configuration file {path}: {error}") from error
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:  # TOML files are UTF-8
        raise SettingError(f"{path} is not valid TOML: {error}") from error


def _select(
    path: Path, document: dict[str, Any], section: str, specs: list[OptionSpec]
) -> dict[str, Any]:
    """Return the file's settings for section: the top-level keys, then its table's keys."""
    # A command's table is a TOML table; `logic = false` at the top is the serve setting.
    tables = {key for key, value in document.items() if key in SECTIONS and isinstance(value, dict)}
    top = {key: value for key, value in document.items() if key not in tables}
    _check_keys(path, top, specs, f"tether {section}")
    table = document[section] if section in tables else {}
    _check_keys(path, table, specs, f"tether {section}", f"[{section}] ")
    return {**top, **table}


def _check_keys(
    path: Path, settings: dict[str, Any], specs: list[OptionSpec], command: str, where: str = ""
) -> None:
    known = sorted(spec.key for spec in specs)
    for key in settings:
        if key in known:
            continue
        close = difflib.get_close_matches(key.replace("-", "_"), known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise SettingError(f"{path}: {where}{key!r} is not a setting of {command}{hint}")


def _toml_text(spec: OptionSpec, value: Any, path: Path | None) -> str:
    """Return a TOML value as the text the option's conversion reads."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ",".join(value)
    kind = "a table" if isinstance(value, dict) else f"a {type(value).__name__}"
    raise SettingError(f"{path}: invalid value for {spec.key}: expected a value, got {kind}")


def mask_secrets(spec: OptionSpec, value: Any) -> Any:
    """Return value with secrets hidden: secret options entirely, URL passwords in any string."""
    if spec.secret:
        return _MASK if value else value
    if isinstance(value, str) and spec.redact is not None:
        return spec.redact(value)
    if isinstance(value, str) and "://" in value:
        try:
            return redact_url(value)
        except ValueError:  # not a URL after all: show none of it rather than a password
            return _MASK
    return value
