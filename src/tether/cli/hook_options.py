"""Command-line options of the connect and message hooks, and the `HookConfig` they fill in."""

from __future__ import annotations

import argparse
from urllib.parse import urlsplit

from tether.cli.settings import add_option
from tether.hooks.config import HookConfig

__all__ = ["add_hook_options", "hook_config"]


def _hook_url(text: str) -> str:
    if not text:
        return ""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"expected an http:// or https:// URL, got {text!r}")
    return text


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _retries(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 10:
        raise argparse.ArgumentTypeError(f"must be 0 to 10, got {text}")
    return value


def add_hook_options(parser: argparse.ArgumentParser) -> None:
    """Add the hook options to `tether serve` or `tether logic`."""
    add_option(
        parser,
        "--hooks-url",
        convert=_hook_url,
        default="",
        help="base URL of your backend's connect and message hooks (POST URL/connect and "
        "URL/message); set, it replaces the reference logic (docs/hooks.md)",
    )
    add_option(
        parser,
        "--hooks-key",
        convert=str,
        default="",
        secret=True,
        help="sent to the hooks as 'Authorization: Bearer KEY'; empty sends no header",
    )
    add_option(
        parser,
        "--hooks-timeout",
        convert=_positive,
        default=2.0,
        help="seconds one hook attempt may take; keep (retries + 1) times it below the "
        "gateways' --request-timeout",
    )
    add_option(
        parser,
        "--hooks-retries",
        convert=_retries,
        default=1,
        help="attempts after the first when a hook times out or gets a 429 or 5xx response",
    )


def hook_config(arguments: argparse.Namespace) -> HookConfig | None:
    """Return the hook settings, or None when --hooks-url is empty."""
    if not arguments.hooks_url:
        return None
    return HookConfig(
        url=arguments.hooks_url,
        api_key=arguments.hooks_key,
        timeout=arguments.hooks_timeout,
        retries=arguments.hooks_retries,
    )
