"""Transport security settings: validation, Origin matching, trusted proxies, TLS context."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from tls_support import make_certificate

from tether.gateway import GatewayConfig
from tether.gateway.security import (
    MAX_FORWARDED_HOPS,
    TransportSecurity,
    TransportSecurityConfig,
    server_ssl_context,
)


def security(**settings: object) -> TransportSecurity:
    return TransportSecurity.from_config(TransportSecurityConfig(**settings))  # type: ignore[arg-type]


def test_defaults_are_plaintext_and_open() -> None:
    config = GatewayConfig().transport_security
    assert config.tls_cert is None
    assert config.tls_key is None
    assert config.ws_allowed_origins == ("*",)
    assert config.proxy_protocol is False
    assert config.trusted_proxies == ()
    built = TransportSecurity.from_config(config)
    assert built.ssl_context is None
    assert not built.needs_preamble


def test_tls_needs_cert_and_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tls_key is missing"):
        TransportSecurityConfig(tls_cert=tmp_path / "a.crt")
    with pytest.raises(ValueError, match="tls_cert is missing"):
        TransportSecurityConfig(tls_key=tmp_path / "a.key")


def test_missing_cert_names_setting(tmp_path: Path) -> None:
    _, key = make_certificate(tmp_path)
    with pytest.raises(ValueError, match=r"^tls_cert: cannot read .*nothing\.crt"):
        security(tls_cert=tmp_path / "nothing.crt", tls_key=key)


def test_missing_key_names_setting(tmp_path: Path) -> None:
    cert, _ = make_certificate(tmp_path)
    with pytest.raises(ValueError, match=r"^tls_key: cannot read .*nothing\.key"):
        security(tls_cert=cert, tls_key=tmp_path / "nothing.key")


def test_cert_that_is_not_pem(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    cert.write_text("not a certificate\n")
    with pytest.raises(ValueError, match=r"^tls_cert: .* contains no PEM certificate"):
        security(tls_cert=cert, tls_key=key)


def test_key_of_other_certificate(tmp_path: Path) -> None:
    cert, _ = make_certificate(tmp_path, "one")
    _, other_key = make_certificate(tmp_path, "two")
    with pytest.raises(ValueError, match=r"^tls_key: cannot use"):
        security(tls_cert=cert, tls_key=other_key)


def test_encrypted_key_rejected_without_prompt(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    cert, key = make_certificate(tmp_path)
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    with pytest.raises(ValueError, match=r"^tls_key: .*encrypted"):
        security(tls_cert=cert, tls_key=key)


def test_context_requires_tls_1_2(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    context = server_ssl_context(cert, key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert security(tls_cert=cert, tls_key=key).needs_preamble


@pytest.mark.parametrize(
    "origin",
    [
        "https://chat.example.com/",
        "https://chat.example.com/app",
        "chat.example.com",
        "https://",
        "https://user@chat.example.com",
        "https://chat.example.com:port",
        "https://chat.example.com?x=1",
    ],
)
def test_invalid_origin_setting(origin: str) -> None:
    with pytest.raises(ValueError, match=r"^ws_allowed_origins: .* is not an origin"):
        TransportSecurityConfig(ws_allowed_origins=(origin,))


def test_empty_origin_list_rejected() -> None:
    with pytest.raises(ValueError, match="ws_allowed_origins is empty"):
        TransportSecurityConfig(ws_allowed_origins=())


def test_origin_matching() -> None:
    checks = security(ws_allowed_origins=("https://chat.example.com", "http://localhost:8080"))
    assert checks.origin_allowed("https://chat.example.com")
    assert checks.origin_allowed("HTTPS://Chat.Example.com")
    assert checks.origin_allowed("http://localhost:8080")
    assert checks.origin_allowed(None)  # not a browser
    assert not checks.origin_allowed("http://chat.example.com")  # other scheme
    assert not checks.origin_allowed("https://chat.example.com:8443")  # other port
    assert not checks.origin_allowed("https://evil.chat.example.com")
    assert not checks.origin_allowed("https://chat.example.com.evil.net")
    assert not checks.origin_allowed("http://localhost")
    assert not checks.origin_allowed("null")
    assert not checks.origin_allowed("")


def test_star_allows_every_origin() -> None:
    checks = security(ws_allowed_origins=("*",))
    assert checks.origin_allowed("https://anything.example")
    assert checks.origin_allowed("null")


def test_invalid_trusted_proxy_rejected() -> None:
    with pytest.raises(ValueError, match=r"^trusted_proxies: 'ten' is not a network"):
        TransportSecurityConfig(trusted_proxies=("ten",))


def test_trusted_proxy_membership() -> None:
    checks = security(trusted_proxies=("10.0.0.0/8", "2001:db8::/32", "192.0.2.7"))
    assert checks.is_trusted_proxy("10.1.2.3")
    assert checks.is_trusted_proxy("::ffff:10.1.2.3")  # IPv4-mapped, as dual-stack sockets show
    assert checks.is_trusted_proxy("2001:db8::5")
    assert checks.is_trusted_proxy("192.0.2.7")
    assert not checks.is_trusted_proxy("192.0.2.8")
    assert not checks.is_trusted_proxy("11.0.0.1")
    assert not checks.is_trusted_proxy("not an address")
    assert not checks.is_trusted_proxy("::a00:1")  # 10.0.0.1 as IPv4-compatible IPv6 is not it


def test_proxy_header_senders() -> None:
    anyone = security(proxy_protocol=True)
    assert anyone.may_send_proxy_header("198.51.100.1")
    limited = security(proxy_protocol=True, trusted_proxies=("10.0.0.0/8",))
    assert limited.may_send_proxy_header("10.0.0.9")
    assert not limited.may_send_proxy_header("198.51.100.1")


def test_forwarded_for_ignored_from_untrusted_peer() -> None:
    checks = security(trusted_proxies=("10.0.0.0/8",))
    assert checks.forwarded_client("198.51.100.1", ["203.0.113.5"]) is None
    assert security().forwarded_client("10.0.0.1", ["203.0.113.5"]) is None


@pytest.mark.parametrize(
    ("values", "client"),
    [
        (["203.0.113.5"], "203.0.113.5"),
        (["203.0.113.5, 10.0.0.2"], "203.0.113.5"),  # skips a second trusted proxy
        (["198.51.100.9, 203.0.113.5, 10.0.0.2"], "203.0.113.5"),  # spoofed left part ignored
        (["198.51.100.9", "203.0.113.5"], "203.0.113.5"),  # several header lines
        (["10.0.0.3, 10.0.0.2"], "10.0.0.3"),  # all trusted: the leftmost
        (["203.0.113.5:4711"], "203.0.113.5"),
        (["[2001:db8::9]:4711"], "2001:db8::9"),
        (["2001:db8::9"], "2001:db8::9"),
        (["unknown"], None),  # nothing usable: keep the peer
        (["203.0.113.5, garbage, 10.0.0.2"], "10.0.0.2"),  # the walk stops at garbage
        ([""], None),
        ([], None),
    ],
)
def test_forwarded_for_walk(values: list[str], client: str | None) -> None:
    checks = security(trusted_proxies=("10.0.0.0/8",))
    assert checks.forwarded_client("10.0.0.1", values) == client


def test_forwarded_for_walk_is_bounded() -> None:
    checks = security(trusted_proxies=("10.0.0.0/8",))
    hops = ["203.0.113.5"] + [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(1000)]
    client = checks.forwarded_client("10.0.0.1", [", ".join(hops)])
    # Only the last MAX_FORWARDED_HOPS entries are read, all trusted: the leftmost of them.
    assert client == hops[-MAX_FORWARDED_HOPS]
