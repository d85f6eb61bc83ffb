"""Token signing keys: HS256 secrets, RS256 and ES256 public keys, JWKS files and rotation."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from conftest import SECRET, TIMEOUT, RawClient, test_gateway_config
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tether.auth import TokenVerifier, issue_token
from tether.keys import KeyConfig, KeyFileError, KeyStore, load_jwks_file, load_public_key_file
from tether.presence import PresenceConfig
from tether.protocol import tether_pb2 as pb
from tether.protocol.codes import Code
from tether.protocol.errors import AuthenticationError
from tether.server import EmbeddedServer, ServerConfig, load_or_create_secret

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


# Keys, made once per test run: RSA generation takes a noticeable fraction of a second.


@functools.cache
def rsa_key(name: str) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def ec_key(name: str) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def private_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def jwk_of(key: PrivateKey, kid: str, **members: object) -> dict[str, Any]:
    """Return the public JWK of key with kid and alg."""
    if isinstance(key, rsa.RSAPrivateKey):
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        jwk["alg"] = "RS256"
    else:
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        jwk["alg"] = "ES256"
    return {**jwk, "kid": kid, **members}


def oct_jwk(secret: bytes, kid: str) -> dict[str, Any]:
    k = base64.urlsafe_b64encode(secret).rstrip(b"=").decode()
    return {"kty": "oct", "kid": kid, "alg": "HS256", "k": k}


def write_jwks(path: Path, *keys: dict[str, Any]) -> None:
    """Replace path atomically with a JWKS of keys, as the documented rotation does."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"keys": list(keys)}))
    os.replace(temporary, path)


def sign(key: PrivateKey, kid: str | None = None, user: str = "alice", **claims: object) -> str:
    algorithm = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode({"sub": user, **claims}, key, algorithm=algorithm, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged_hs256(secret: bytes, header: dict[str, object], user: str = "alice") -> str:
    """Return an HS256 token made by hand, since PyJWT refuses a PEM key as an HMAC secret."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps({'sub': user}).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def unsigned(header: dict[str, object], user: str = "alice") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps({'sub': user}).encode())}."


def rejection(verifier: TokenVerifier, token: str) -> Code:
    with pytest.raises(AuthenticationError) as raised:
        verifier.verify(token)
    return raised.value.code


@pytest.fixture
def key_files(tmp_path: Path) -> dict[str, Path]:
    """PEM public keys of rsa-a and ec-a, and a JWKS with rsa-b, ec-b and an HS256 key."""
    files = {
        "rsa": tmp_path / "rsa-a.pem",
        "ec": tmp_path / "ec-a.pem",
        "jwks": tmp_path / "k.json",
    }
    files["rsa"].write_bytes(public_pem(rsa_key("a")))
    files["ec"].write_bytes(public_pem(ec_key("a")))
    write_jwks(
        files["jwks"],
        jwk_of(rsa_key("b"), "rsa-b"),
        jwk_of(ec_key("b"), "ec-b"),
        oct_jwk(b"o" * 32, "hs-b"),
    )
    return files


@pytest.fixture
def verifier(key_files: dict[str, Path]) -> TokenVerifier:
    config = KeyConfig(
        secrets=(SECRET,),
        public_key_files=(key_files["rsa"], key_files["ec"]),
        jwks_file=key_files["jwks"],
    )
    return TokenVerifier(keys=KeyStore(config), leeway=0)


# Algorithms and key selection, without sockets.


def test_rs256_and_es256_from_pem_accepted(verifier: TokenVerifier) -> None:
    assert verifier.verify(sign(rsa_key("a"), user="rita")) == "rita"
    assert verifier.verify(sign(ec_key("a"), user="emil")) == "emil"


def test_jwks_keys_accepted_by_kid(verifier: TokenVerifier) -> None:
    assert verifier.verify(sign(rsa_key("b"), "rsa-b")) == "alice"
    assert verifier.verify(sign(ec_key("b"), "ec-b")) == "alice"
    hs_token = jwt.encode({"sub": "alice"}, b"o" * 32, algorithm="HS256", headers={"kid": "hs-b"})
    assert verifier.verify(hs_token) == "alice"


def test_token_without_kid_tries_every_key(verifier: TokenVerifier) -> None:
    # rsa-b sits in the JWKS, after the PEM key rsa-a.
    assert verifier.verify(sign(rsa_key("b"))) == "alice"
    assert verifier.verify(issue_token(SECRET, "alice")) == "alice"
    assert verifier.verify(issue_token("o" * 32, "alice")) == "alice"


def test_issue_token_signs_rs256_with_kid(verifier: TokenVerifier) -> None:
    token = issue_token(rsa_key("b"), "alice", ttl=60, algorithm="RS256", kid="rsa-b")
    assert jwt.get_unverified_header(token)["kid"] == "rsa-b"
    user, expiry = verifier.verify_claims(token)
    assert user == "alice"
    assert expiry is not None and abs(expiry - (time.time() + 60)) < 2


def test_wrong_key_rejected(verifier: TokenVerifier) -> None:
    assert rejection(verifier, sign(rsa_key("stranger"))) == Code.UNAUTHORIZED
    assert rejection(verifier, sign(ec_key("stranger"))) == Code.UNAUTHORIZED
    # A stranger's key under a known kid.
    assert rejection(verifier, sign(rsa_key("stranger"), "rsa-b")) == Code.UNAUTHORIZED
    assert rejection(verifier, issue_token("x" * 40, "alice")) == Code.UNAUTHORIZED


def test_unknown_kid_rejected(verifier: TokenVerifier) -> None:
    # rsa-a is configured as a PEM file, but a token with a kid only matches JWKS keys.
    with pytest.raises(AuthenticationError, match="unknown key id 'nobody'") as raised:
        verifier.verify(sign(rsa_key("a"), "nobody"))
    assert raised.value.code == Code.UNAUTHORIZED


def test_kid_of_other_algorithm_rejected(verifier: TokenVerifier) -> None:
    with pytest.raises(AuthenticationError, match="not an ES256 key") as raised:
        verifier.verify(sign(ec_key("b"), "rsa-b"))
    assert raised.value.code == Code.UNAUTHORIZED


def test_hs256_with_public_key_as_secret_rejected(
    verifier: TokenVerifier, key_files: dict[str, Path]
) -> None:
    # The classic algorithm confusion: the attacker has the public key and uses its PEM text
    # as an HMAC secret. The verifier has HS256 keys, so HS256 itself is allowed.
    for pem in (key_files["rsa"].read_bytes(), key_files["ec"].read_bytes()):
        assert rejection(verifier, forged_hs256(pem, {"alg": "HS256"})) == Code.UNAUTHORIZED
        assert rejection(verifier, forged_hs256(pem.strip(), {"alg": "HS256"})) == Code.UNAUTHORIZED
    jwks_text = key_files["jwks"].read_bytes()
    header = {"alg": "HS256", "kid": "rsa-b"}
    assert rejection(verifier, forged_hs256(jwks_text, header)) == Code.UNAUTHORIZED
    rsa_b_pem = public_pem(rsa_key("b"))
    assert rejection(verifier, forged_hs256(rsa_b_pem, header)) == Code.UNAUTHORIZED


ALGORITHM_CASES = {
    "none": {"alg": "none"},
    "none-with-kid": {"alg": "none", "kid": "rsa-b"},
    "None": {"alg": "None"},
    "missing": {},
    "rs512": {"alg": "RS512"},
    "ps256": {"alg": "PS256"},
    "not-a-string": {"alg": ["RS256"]},
}


@pytest.mark.parametrize("header", ALGORITHM_CASES.values(), ids=ALGORITHM_CASES.keys())
def test_unaccepted_algorithm_rejected(verifier: TokenVerifier, header: dict[str, object]) -> None:
    assert rejection(verifier, unsigned({"typ": "JWT", **header})) == Code.UNAUTHORIZED


def test_rs512_signed_by_known_key_rejected(verifier: TokenVerifier) -> None:
    token = jwt.encode({"sub": "alice"}, rsa_key("b"), algorithm="RS512", headers={"kid": "rsa-b"})
    assert rejection(verifier, token) == Code.UNAUTHORIZED


def test_expired_rs256_is_token_expired(verifier: TokenVerifier) -> None:
    expired = sign(rsa_key("b"), "rsa-b", exp=int(time.time()) - 10)
    assert rejection(verifier, expired) == Code.TOKEN_EXPIRED
    expired_es = sign(ec_key("a"), exp=int(time.time()) - 10)
    assert rejection(verifier, expired_es) == Code.TOKEN_EXPIRED


def test_expired_with_wrong_key_is_unauthorized(verifier: TokenVerifier) -> None:
    # Only a valid signature makes the claims worth reading.
    forged = sign(rsa_key("stranger"), exp=int(time.time()) - 10)
    assert rejection(verifier, forged) == Code.UNAUTHORIZED


def test_claims_checked_after_signature(verifier: TokenVerifier) -> None:
    assert rejection(verifier, sign(rsa_key("b"), "rsa-b", user="alice:bob")) == Code.UNAUTHORIZED
    no_sub = jwt.encode({"name": "alice"}, rsa_key("b"), algorithm="RS256")
    assert rejection(verifier, no_sub) == Code.UNAUTHORIZED
    future = sign(ec_key("b"), "ec-b", nbf=int(time.time()) + 600)
    assert rejection(verifier, future) == Code.UNAUTHORIZED


def test_long_header_values_shortened_in_error(verifier: TokenVerifier) -> None:
    with pytest.raises(AuthenticationError) as raised:
        verifier.verify(unsigned({"alg": "x" * 10_000}))
    assert len(str(raised.value)) < 200
    with pytest.raises(AuthenticationError) as raised:
        verifier.verify(sign(rsa_key("b"), "k" * 10_000))
    assert len(str(raised.value)) < 200


# Loading key files.


def test_jwks_skips_keys_it_cannot_use(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(
        path,
        jwk_of(rsa_key("a"), "encryption", use="enc"),
        jwk_of(rsa_key("a"), "rs512", alg="RS512"),
        {"kty": "OKP", "crv": "Ed25519", "x": b64(b"x" * 32), "kid": "eddsa"},
        jwk_of(ec_key("a"), "ec-a"),
    )
    with caplog.at_level(logging.WARNING, logger="tether.auth"):
        keys = load_jwks_file(path)
    assert [(key.kid, key.algorithm) for key in keys] == [("ec-a", "ES256")]
    for kid in ("encryption", "rs512", "eddsa"):
        assert f"skipped key '{kid}'" in caplog.text


def test_jwks_alg_inferred_from_kty(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    rsa_jwk = jwk_of(rsa_key("a"), "r")
    ec_jwk = jwk_of(ec_key("a"), "e")
    hs_jwk = oct_jwk(b"s" * 32, "h")
    for jwk in (rsa_jwk, ec_jwk, hs_jwk):
        del jwk["alg"]
    write_jwks(path, rsa_jwk, ec_jwk, hs_jwk)
    assert [key.algorithm for key in load_jwks_file(path)] == ["RS256", "ES256", "HS256"]


def _small_rsa_pem() -> bytes:
    return public_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))


def _p384_pem() -> bytes:
    return public_pem(ec.generate_private_key(ec.SECP384R1()))


BAD_PEM_FILES: dict[str, tuple[Callable[[], bytes], str]] = {
    "garbage": (lambda: b"not a key\n", "not a PEM public key"),
    "empty": (lambda: b"", "not a PEM public key"),
    "private": (lambda: private_pem(rsa_key("a")), "private key"),
    "rsa-1024": (_small_rsa_pem, "1024 bits"),
    "p-384": (_p384_pem, "secp384r1"),
    "huge": (lambda: b"A" * 2_000_000, "larger than"),
}


@pytest.mark.parametrize("case", BAD_PEM_FILES.values(), ids=BAD_PEM_FILES.keys())
def test_bad_pem_file_rejected(tmp_path: Path, case: tuple[Callable[[], bytes], str]) -> None:
    make, reason = case
    path = tmp_path / "key.pem"
    path.write_bytes(make())
    with pytest.raises(KeyFileError, match=reason) as raised:
        load_public_key_file(path)
    assert raised.value.setting == "public_key_files"
    assert str(path) in str(raised.value)


def _jwks_text(*keys: dict[str, Any]) -> str:
    return json.dumps({"keys": list(keys)})


def _with_private_part() -> str:
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key("a"), as_dict=True)
    return _jwks_text({**jwk, "kid": "r", "alg": "RS256"})


BAD_JWKS_FILES: dict[str, tuple[Callable[[], str], str]] = {
    "not-json": (lambda: "{keys: [", "invalid JSON"),
    "not-object": (lambda: "[]", "keys"),
    "keys-not-list": (lambda: '{"keys": {}}', "keys"),
    "empty": (lambda: _jwks_text(), "no usable signing key"),
    "entry-not-object": (lambda: '{"keys": ["x"]}', r"keys\[0\] is not a JSON object"),
    "no-kid": (lambda: _jwks_text({**jwk_of(ec_key("a"), "x"), "kid": ""}), "has no kid"),
    "duplicate-kid": (
        lambda: _jwks_text(jwk_of(ec_key("a"), "same"), jwk_of(rsa_key("a"), "same")),
        "more than once",
    ),
    "duplicate-of-skipped-kid": (
        lambda: _jwks_text(jwk_of(rsa_key("a"), "same", alg="RS512"), jwk_of(ec_key("a"), "same")),
        "more than once",
    ),
    "kty-alg-mismatch": (
        lambda: _jwks_text({**jwk_of(ec_key("a"), "e"), "alg": "RS256"}),
        "does not match alg RS256",
    ),
    "oct-as-rs256": (
        lambda: _jwks_text({**oct_jwk(b"s" * 32, "h"), "alg": "RS256"}),
        "does not match",
    ),
    "private-part": (_with_private_part, "private key material"),
    "short-oct": (lambda: _jwks_text(oct_jwk(b"s" * 16, "h")), "16 bytes"),
    "missing-n": (
        lambda: _jwks_text({"kty": "RSA", "kid": "r", "alg": "RS256", "e": "AQAB"}),
        "invalid RSA key",
    ),
    "bad-ec-point": (
        lambda: _jwks_text({**jwk_of(ec_key("a"), "e"), "x": b64(b"\x01" * 32)}),
        "invalid EC key",
    ),
    "number-as-n": (
        lambda: _jwks_text({"kty": "RSA", "kid": "r", "alg": "RS256", "e": "AQAB", "n": 5}),
        "invalid RSA key",
    ),
    "missing-k": (lambda: _jwks_text({"kty": "oct", "kid": "h", "alg": "HS256"}), "'k'"),
    "p-384-as-es256": (
        lambda: _jwks_text(
            {
                **jwt.algorithms.ECAlgorithm.to_jwk(
                    ec.generate_private_key(ec.SECP384R1()).public_key(), as_dict=True
                ),
                "kid": "e",
                "alg": "ES256",
            }
        ),
        "P-256",
    ),
    "deep-nesting": (lambda: "[" * 100_000, "invalid JSON"),
}


@pytest.mark.parametrize("case", BAD_JWKS_FILES.values(), ids=BAD_JWKS_FILES.keys())
def test_bad_jwks_file_rejected(tmp_path: Path, case: tuple[Callable[[], str], str]) -> None:
    make, reason = case
    path = tmp_path / "jwks.json"
    path.write_text(make())
    with pytest.raises(KeyFileError, match=reason) as raised:
        load_jwks_file(path)
    assert raised.value.setting == "jwks_file"
    assert b64(b"s" * 16) not in str(raised.value), "an HS256 key in an error message"


def test_missing_file_fails_store(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"jwks_file .*cannot read"):
        KeyStore(KeyConfig(jwks_file=tmp_path / "absent.json"))
    with pytest.raises(KeyFileError, match=r"public_key_files .*cannot read"):
        KeyStore(KeyConfig(public_key_files=(tmp_path / "absent.pem",)))


def test_store_needs_a_key() -> None:
    with pytest.raises(ValueError, match="no token verification key"):
        KeyStore(KeyConfig())
    with pytest.raises(ValueError, match="empty secret"):
        KeyConfig(secrets=("",))
    with pytest.raises(ValueError, match="reload_interval"):
        KeyConfig(secrets=(SECRET,), reload_interval=-1)


# Reloading without a restart.


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_reload_waits_for_interval(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, jwk_of(rsa_key("a"), "a"))
    clock = FakeClock()
    verifier = TokenVerifier(
        keys=KeyStore(KeyConfig(jwks_file=path, reload_interval=30), clock=clock)
    )
    write_jwks(path, jwk_of(rsa_key("b"), "b"))
    clock.now += 29
    assert verifier.verify(sign(rsa_key("a"), "a")) == "alice"  # not checked yet
    clock.now += 1
    assert verifier.verify(sign(rsa_key("b"), "b")) == "alice"
    assert rejection(verifier, sign(rsa_key("a"), "a")) == Code.UNAUTHORIZED


def test_reload_now_ignores_interval(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, jwk_of(rsa_key("a"), "a"))
    store = KeyStore(KeyConfig(jwks_file=path, reload_interval=3600))
    verifier = TokenVerifier(keys=store)
    write_jwks(path, jwk_of(rsa_key("b"), "b"))
    assert rejection(verifier, sign(rsa_key("b"), "b")) == Code.UNAUTHORIZED
    store.reload()
    assert verifier.verify(sign(rsa_key("b"), "b")) == "alice"


def test_overlap_keeps_both_keys(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, jwk_of(ec_key("a"), "a"))
    verifier = TokenVerifier(keys=KeyStore(KeyConfig(jwks_file=path, reload_interval=0)))
    write_jwks(path, jwk_of(ec_key("a"), "a"), jwk_of(ec_key("b"), "b"))
    assert verifier.verify(sign(ec_key("a"), "a")) == "alice"
    assert verifier.verify(sign(ec_key("b"), "b")) == "alice"
    write_jwks(path, jwk_of(ec_key("b"), "b"))
    assert rejection(verifier, sign(ec_key("a"), "a")) == Code.UNAUTHORIZED
    assert verifier.verify(sign(ec_key("b"), "b")) == "alice"


def test_in_place_rewrite_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(public_pem(ec_key("a")))
    verifier = TokenVerifier(keys=KeyStore(KeyConfig(public_key_files=(path,), reload_interval=0)))
    assert verifier.verify(sign(ec_key("a"))) == "alice"
    path.write_bytes(public_pem(rsa_key("b")))  # same inode, other size
    assert verifier.verify(sign(rsa_key("b"))) == "alice"
    assert rejection(verifier, sign(ec_key("a"))) == Code.UNAUTHORIZED


def test_corrupt_reload_keeps_old_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, jwk_of(rsa_key("a"), "a"))
    verifier = TokenVerifier(keys=KeyStore(KeyConfig(jwks_file=path, reload_interval=0)))
    caplog.set_level(logging.INFO, logger="tether.auth")

    path.write_text('{"keys": [')  # a half-written file
    assert verifier.verify(sign(rsa_key("a"), "a")) == "alice"
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "jwks_file" in errors[0].getMessage()
    assert "keeping its 1 previous keys" in errors[0].getMessage()
    assert verifier.verify(sign(rsa_key("a"), "a")) == "alice"
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1, "an unchanged broken file is reported once"

    write_jwks(path, jwk_of(rsa_key("a"), "a"), jwk_of(ec_key("x"), "x", alg="RS256"))
    assert verifier.verify(sign(rsa_key("a"), "a")) == "alice"  # invalid key: all kept
    path.unlink()
    assert verifier.verify(sign(rsa_key("a"), "a")) == "alice"  # deleted: kept as well
    assert "cannot read" in caplog.text

    write_jwks(path, jwk_of(rsa_key("b"), "b"))
    assert verifier.verify(sign(rsa_key("b"), "b")) == "alice"
    assert rejection(verifier, sign(rsa_key("a"), "a")) == Code.UNAUTHORIZED
    assert f"reloaded jwks_file {path}: b (RS256)" in caplog.text


def test_secrets_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "jwks.json"
    secret = b"S" * 40
    write_jwks(path, oct_jwk(secret, "h"), jwk_of(rsa_key("a"), "enc", use="enc"))
    caplog.set_level(logging.DEBUG, logger="tether")
    store = KeyStore(KeyConfig(jwks_file=path, secrets=("short-secret",)))
    path.write_text(_jwks_text(oct_jwk(secret, "h"), oct_jwk(secret, "h")))
    store.reload()
    assert "short-secret" not in caplog.text
    assert "secret 1 is shorter than 32 bytes" in caplog.text
    assert b64(secret)[:20] not in caplog.text


# A running server.


KeyedServerFactory = Callable[..., Awaitable[EmbeddedServer]]


@pytest.fixture
async def start_keyed_server(tmp_path: Path) -> AsyncIterator[KeyedServerFactory]:
    """Return a function that starts an embedded server with the given keys."""
    servers: list[EmbeddedServer] = []

    async def start(keys: KeyConfig, secret: str = "") -> EmbeddedServer:
        config = ServerConfig(
            data_dir=tmp_path / f"server{len(servers)}",
            secret=secret,
            keys=keys,
            gateway=test_gateway_config(),
            presence=PresenceConfig(grace_period=0.3),
        )
        server = EmbeddedServer(config)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


async def connect_with(port: int | None, token: str, user: str = "alice") -> tuple[RawClient, int]:
    """Send a Connect with token; return the client and 0 if Connected, else the close code."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    raw = RawClient(reader, writer)
    raw.send_connect(user, device=f"d{time.monotonic_ns()}", token=token)
    frame = await raw.receive()
    while frame is not None and frame.WhichOneof("kind") not in ("connected", "disconnect"):
        frame = await raw.receive()
    assert frame is not None, "closed without Connected or Disconnect"
    if frame.HasField("connected"):
        return raw, 0
    raw.close()
    return raw, frame.disconnect.code


async def test_rotation_in_running_server(
    start_keyed_server: KeyedServerFactory, tmp_path: Path
) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, jwk_of(rsa_key("a"), "key-a"))
    server = await start_keyed_server(KeyConfig(jwks_file=path, reload_interval=0))
    first, code = await connect_with(server.tcp_port, sign(rsa_key("a"), "key-a"))
    assert code == 0

    write_jwks(path, jwk_of(rsa_key("a"), "key-a"), jwk_of(ec_key("b"), "key-b"))
    for key, kid in ((rsa_key("a"), "key-a"), (ec_key("b"), "key-b")):
        raw, code = await connect_with(server.tcp_port, sign(key, kid, user="bob"))
        assert code == 0, f"{kid} rejected while both keys are published"
        raw.close()

    write_jwks(path, jwk_of(ec_key("b"), "key-b"))
    second, code = await connect_with(server.tcp_port, sign(ec_key("b"), "key-b", user="bob"))
    assert code == 0
    _, code = await connect_with(server.tcp_port, sign(rsa_key("a"), "key-a", user="carol"))
    assert code == Code.UNAUTHORIZED
    _, code = await connect_with(server.tcp_port, sign(rsa_key("a"), user="carol"))
    assert code == Code.UNAUTHORIZED

    # A session opened with the old key stays open; only new tokens meet the new keys.
    first.send(pb.Frame(heartbeat=pb.Heartbeat(nonce=5)))
    assert (await first.receive_kind("heartbeat_ack")).heartbeat_ack.nonce == 5
    first.close()
    second.close()


async def test_corrupt_jwks_in_running_server(
    start_keyed_server: KeyedServerFactory, tmp_path: Path
) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, jwk_of(ec_key("a"), "key-a"))
    server = await start_keyed_server(KeyConfig(jwks_file=path, reload_interval=0))
    path.write_text("not json at all")
    raw, code = await connect_with(server.tcp_port, sign(ec_key("a"), "key-a"))
    assert code == 0
    raw.close()


async def test_key_files_replace_dev_secret(
    start_keyed_server: KeyedServerFactory, tmp_path: Path
) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(public_pem(ec_key("a")))
    server = await start_keyed_server(KeyConfig(public_key_files=(path,)))
    assert not (server.config.data_dir / "secret").exists()
    dev_token = issue_token(load_or_create_secret(server.config.data_dir), "alice")
    _, code = await connect_with(server.tcp_port, dev_token)
    assert code == Code.UNAUTHORIZED
    raw, code = await connect_with(server.tcp_port, sign(ec_key("a")))
    assert code == 0
    raw.close()


async def test_secret_and_key_files_together(
    start_keyed_server: KeyedServerFactory, tmp_path: Path
) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(public_pem(rsa_key("a")))
    server = await start_keyed_server(KeyConfig(public_key_files=(path,)), secret=SECRET)
    for token in (issue_token(SECRET, "alice"), sign(rsa_key("a"))):
        raw, code = await connect_with(server.tcp_port, token)
        assert code == 0
        raw.close()
    forged = forged_hs256(path.read_bytes(), {"alg": "HS256"})
    _, code = await connect_with(server.tcp_port, forged)
    assert code == Code.UNAUTHORIZED


# The command line.

TETHER = [sys.executable, "-m", "tether"]


def run_tether(
    *arguments: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TETHER, *arguments],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 4,
        check=False,
        env=env,
    )


def test_token_command_signs_with_private_key(tmp_path: Path) -> None:
    for key, algorithm in ((rsa_key("a"), "RS256"), (ec_key("a"), "ES256")):
        path = tmp_path / f"{algorithm}.pem"
        path.write_bytes(private_pem(key))
        result = run_tether(
            "token", "alice", "--private-key", str(path), "--kid", "k1", "--ttl", "60",
            "--data-dir", str(tmp_path / "data"),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        token = result.stdout.strip()
        assert jwt.get_unverified_header(token) == {"alg": algorithm, "kid": "k1", "typ": "JWT"}
        claims = jwt.decode(token, key.public_key(), algorithms=[algorithm])
        assert claims["sub"] == "alice"
        assert claims["exp"] - claims["iat"] == 60
    assert not (tmp_path / "data" / "secret").exists()


def test_token_command_rejects_public_key(tmp_path: Path) -> None:
    path = tmp_path / "public.pem"
    path.write_bytes(public_pem(rsa_key("a")))
    result = run_tether("token", "alice", "--private-key", str(path))
    assert result.returncode == 2
    assert f"private_key {path}" in result.stderr


def test_serve_rejects_bad_jwks_file(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text('{"keys": []}')
    result = run_tether("serve", "--data-dir", str(tmp_path), "--jwks-file", str(path))
    assert result.returncode == 2
    assert f"jwks_file {path}: contains no usable signing key" in result.stderr


def test_serve_rejects_bad_key_file_from_environment(tmp_path: Path) -> None:
    good = tmp_path / "good.pem"
    good.write_bytes(public_pem(ec_key("a")))
    env = {**os.environ, "TETHER_PUBLIC_KEY_FILES": f"{good},{tmp_path / 'absent.pem'}"}
    result = run_tether("serve", "--data-dir", str(tmp_path), env=env)
    assert result.returncode == 2
    assert f"public_key_files {tmp_path / 'absent.pem'}: cannot read" in result.stderr


async def test_serve_reloads_keys_on_sighup(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, jwk_of(rsa_key("a"), "key-a"))
    process = subprocess.Popen(
        [
            *TETHER, "serve", "--data-dir", str(tmp_path / "data"), "--tcp-port", "0",
            "--ws-port", "off", "--jwks-file", str(path), "--key-reload-interval", "3600",
            "--log-level", "warning",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = await asyncio.to_thread(process.stdout.readline)
        found = re.search(r"tcp=[\d.]+:(\d+)", line)
        assert found, f"unexpected first line from tether serve: {line!r}"
        port = int(found.group(1))
        raw, code = await connect_with(port, sign(rsa_key("a"), "key-a"))
        assert code == 0
        raw.close()

        write_jwks(path, jwk_of(ec_key("b"), "key-b"))
        _, code = await connect_with(port, sign(ec_key("b"), "key-b"))
        assert code == Code.UNAUTHORIZED, "reloaded before the interval or a signal"

        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + TIMEOUT
        while True:
            raw, code = await connect_with(port, sign(ec_key("b"), "key-b"))
            if code == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert code == 0, "key-b still rejected after SIGHUP"
        raw.close()
        _, code = await connect_with(port, sign(rsa_key("a"), "key-a"))
        assert code == Code.UNAUTHORIZED
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            # Wait in a thread so this loop can finish closing the test's sockets.
            assert await asyncio.to_thread(process.wait, TIMEOUT * 2) == 0
        finally:
            if process.poll() is None:
                process.kill()
