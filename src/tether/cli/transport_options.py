"""Command-line options for TLS, WebSocket Origins and proxies, and the config they fill in."""

from __future__ import annotations

import argparse
from pathlib import Path

from tether.cli.settings import add_option, boolean_value
from tether.gateway.security import TransportSecurityConfig

__all__ = [
    "add_client_tls_options",
    "add_transport_security_options",
    "transport_security_config",
]


def _optional_path(text: str) -> Path | None:
    return Path(text) if text else None


def _list(text: str) -> tuple[str, ...]:
    """Parse a comma-separated list; empty items are dropped."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def add_transport_security_options(parser: argparse.ArgumentParser) -> None:
    """Add the options of `TransportSecurityConfig` to the serve command."""
    add_option(
        parser,
        "--tls-cert",
        convert=_optional_path,
        default=None,
        help="PEM certificate chain; with --tls-key, TCP and WebSocket listeners use TLS "
        "(tls:// and wss://)",
    )
    add_option(
        parser,
        "--tls-key",
        convert=_optional_path,
        default=None,
        help="PEM file with the unencrypted private key of --tls-cert",
    )
    add_option(
        parser,
        "--ws-allowed-origins",
        convert=_list,
        default=("*",),
        help="comma-separated origins (scheme://host[:port]) whose pages may open a "
        "WebSocket; '*' allows all; requests without an Origin header are always allowed",
    )
    add_option(
        parser,
        "--proxy-protocol",
        convert=boolean_value,
        default=False,
        help="require a PROXY protocol v1 or v2 header on every TCP and WebSocket connection "
        "and use the client address it carries (true or false)",
    )
    add_option(
        parser,
        "--trusted-proxies",
        convert=_list,
        default=(),
        help="comma-separated CIDR networks of the proxies in front of the gateway: only they "
        "may send PROXY headers, and WebSocket X-Forwarded-For is honoured from them",
    )


def transport_security_config(arguments: argparse.Namespace) -> TransportSecurityConfig:
    """Return the config that the options of `add_transport_security_options` set."""
    return TransportSecurityConfig(
        tls_cert=arguments.tls_cert,
        tls_key=arguments.tls_key,
        ws_allowed_origins=arguments.ws_allowed_origins,
        proxy_protocol=arguments.proxy_protocol,
        trusted_proxies=arguments.trusted_proxies,
    )


def add_client_tls_options(parser: argparse.ArgumentParser) -> None:
    """Add the option that sets which certificates a client trusts."""
    add_option(
        parser,
        "--ca-file",
        convert=_optional_path,
        default=None,
        help="PEM file of the certificates to trust for tls:// and wss:// URLs, such as a "
        "self-signed server certificate (empty: the system's trusted certificates)",
    )
