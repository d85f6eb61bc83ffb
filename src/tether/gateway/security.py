"""Transport security of the gateway: TLS, WebSocket Origin checks, and trusted proxies.

- `TransportSecurityConfig`: the settings, each with its default.
- `TransportSecurity`: what the listeners use, built once at start. Building it loads the
  certificate and key, so a missing or bad file stops the start with an error that names the
  setting.

A proxy can report the client's address in two ways: a PROXY protocol header before the first
byte (TCP and WebSocket, `proxy_protocol`), or an X-Forwarded-For header in the WebSocket
upgrade request (honoured only from `trusted_proxies`). docs/transport-security.md describes
both and the defaults.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["MAX_FORWARDED_HOPS", "TransportSecurity", "TransportSecurityConfig"]

MAX_FORWARDED_HOPS = 32
"""X-Forwarded-For entries read from the right, at most; the walk stops there."""

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, kw_only=True, slots=True)
class TransportSecurityConfig:
    """Settings for TLS, WebSocket Origin checks and proxies that report client addresses."""

    tls_cert: Path | None = None
    """PEM file with the server certificate, then any intermediate certificates. Together with
    `tls_key` it turns on TLS for both listeners: TCP becomes TLS and WebSocket becomes wss
    (default none: plaintext)."""
    tls_key: Path | None = None
    """PEM file with the unencrypted private key of `tls_cert` (default none)."""
    ws_allowed_origins: tuple[str, ...] = ("*",)
    """Origins (`scheme://host[:port]`, compared exactly, case-insensitive) whose pages may
    open a WebSocket; `*` allows every origin. Upgrade requests without an Origin header are
    always allowed, because only browsers send one and other clients could forge it anyway
    (default `*`)."""
    proxy_protocol: bool = False
    """Expect a PROXY protocol header (version 1 or 2) at the start of every TCP and WebSocket
    connection, and count limits against the client address it reports. A connection without
    a valid header is closed (default false)."""
    trusted_proxies: tuple[str, ...] = ()
    """Networks in CIDR notation (a bare address is one host) of the proxies in front of the
    gateway. When set, only these peers may send a PROXY header, and WebSocket upgrades from
    them have their X-Forwarded-For header honoured (default none: X-Forwarded-For is
    ignored, and with `proxy_protocol` every peer may send a PROXY header)."""

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            missing = "tls_key" if self.tls_key is None else "tls_cert"
            raise ValueError(f"tls_cert and tls_key must be set together, but {missing} is missing")
        if not self.ws_allowed_origins:
            raise ValueError("ws_allowed_origins is empty. Use '*' to allow every origin")
        for origin in self.ws_allowed_origins:
            _check_origin(origin)
        for network in self.trusted_proxies:
            _parse_network(network)

    @property
    def tls_enabled(self) -> bool:
        """Whether the listeners speak TLS."""
        return self.tls_cert is not None


class TransportSecurity:
    """The transport security settings in the form the listeners check them."""

    __slots__ = ("_any_origin", "_origins", "_trusted", "config", "ssl_context")

    def __init__(self, config: TransportSecurityConfig, ssl_context: ssl.SSLContext | None) -> None:
        """Wrap config; use `from_config`, which also loads the certificate."""
        self.config = config
        self.ssl_context = ssl_context
        """Server context of the TLS listeners; None for plaintext."""
        self._any_origin = "*" in config.ws_allowed_origins
        self._origins = frozenset(origin.lower() for origin in config.ws_allowed_origins)
        self._trusted = tuple(_parse_network(text) for text in config.trusted_proxies)

    @classmethod
    def from_config(cls, config: TransportSecurityConfig) -> TransportSecurity:
        """Load the certificate and key if TLS is on; raise ValueError naming a bad setting."""
        context = None
        if config.tls_cert is not None and config.tls_key is not None:
            context = server_ssl_context(config.tls_cert, config.tls_key)
        return cls(config, context)

    @property
    def proxy_protocol(self) -> bool:
        """Whether every connection starts with a PROXY header."""
        return self.config.proxy_protocol

    @property
    def needs_preamble(self) -> bool:
        """Whether connections pass through TLS or a PROXY header before the tether protocol."""
        return self.ssl_context is not None or self.config.proxy_protocol

    def origin_allowed(self, origin: str | None) -> bool:
        """Tell whether a WebSocket upgrade with this Origin header value may proceed."""
        if origin is None or self._any_origin:
            return True
        # An origin is ASCII (RFC 6454, 6.2). Unicode case folding would match a look-alike:
        # "\u212a" (KELVIN SIGN) lowercases to "k".
        return origin.isascii() and origin.strip().lower() in self._origins

    def may_send_proxy_header(self, host: str) -> bool:
        """Tell whether a direct peer may report another client address in a PROXY header."""
        return not self._trusted or self.is_trusted_proxy(host)

    def is_trusted_proxy(self, host: str) -> bool:
        """Tell whether host, an IP address, is in `trusted_proxies`."""
        address = _parse_address(host)
        return address is not None and self._trusts(address)

    def forwarded_client(self, peer: str, values: Sequence[str]) -> str | None:
        """Return the client address from X-Forwarded-For values, or None to keep the peer's.

        The header counts only when peer is a trusted proxy. Read from the right, each trusted
        address is one more proxy, and the first untrusted address is the client. If every
        address is trusted, the leftmost one read is the client. An entry that is not an IP
        address ends the walk, and the last trusted address read stands for the client,
        because nothing after it can be believed.
        """
        if not values or not self.is_trusted_proxy(peer):
            return None
        entries = ",".join(values).split(",")
        client: str | None = None
        for entry in reversed(entries[-MAX_FORWARDED_HOPS:]):
            address = _parse_forwarded_entry(entry)
            if address is None:
                break
            client = str(address)
            if not self._trusts(address):
                break
        return client

    def _trusts(self, address: _Address) -> bool:
        return any(
            address.version == network.version and address in network for network in self._trusted
        )


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """Return a server context with cert and key, TLS 1.2 or newer; ValueError if unusable."""
    for name, path in (("tls_cert", cert), ("tls_key", key)):
        try:
            with path.open("rb") as file:
                head = file.read(65_536)
        except OSError as error:
            raise ValueError(f"{name}: cannot read {path}: {error.strerror or error}") from error
        if name == "tls_cert" and b"-----BEGIN CERTIFICATE-----" not in head:
            raise ValueError(f"tls_cert: {path} contains no PEM certificate")

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except (ssl.SSLError, _EncryptedKey) as error:
        raise ValueError(
            f"tls_key: cannot use {key} as the private key of the certificate in {cert}: {error}"
        ) from error
    return context


class _EncryptedKey(Exception):
    """The private key file is encrypted; the gateway has no passphrase to give."""


def _no_password() -> str:
    # Without a callback, OpenSSL would prompt for a passphrase on the terminal.
    raise _EncryptedKey("the key is encrypted, so give an unencrypted key")


# Ports that browsers leave out of an Origin header, by scheme (RFC 6454, 6.2).
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _check_origin(origin: str) -> None:
    """Raise ValueError unless origin is `*`, `null` or `scheme://host[:port]` as browsers send
    it: ASCII, and without the scheme's default port, which no browser would send."""
    if origin == "*" or origin.lower() == "null":
        return
    problem = ""
    try:
        parts = urlsplit(origin)
        port = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        problem = "it is not a URL"
    else:
        if not parts.scheme or not parts.hostname:
            problem = "it has no scheme or no host"
        elif parts.path or parts.query or parts.fragment or "@" in parts.netloc:
            problem = "it has a path, query, fragment or user name"
        elif not origin.isascii():
            problem = "it is not ASCII; write an international host name in its xn-- form"
        elif port is not None and port == _DEFAULT_PORTS.get(parts.scheme.lower()):
            problem = f"browsers leave out the default port {port}"
    if problem:
        raise ValueError(
            f"ws_allowed_origins: {origin!r} is not an origin ({problem}); "
            "write scheme://host[:port], such as https://chat.example.com"
        )


def _parse_network(text: str) -> _Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as error:
        raise ValueError(f"trusted_proxies: {text!r} is not a network: {error}") from error


def _parse_address(text: str) -> _Address | None:
    """Return an IP address, IPv4-mapped IPv6 as IPv4, or None if text is not one."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _parse_forwarded_entry(entry: str) -> _Address | None:
    """Return the address of one X-Forwarded-For entry: `ip`, `ipv4:port` or `[ipv6]:port`."""
    text = entry.strip()
    if text.startswith("["):
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    return _parse_address(text)
