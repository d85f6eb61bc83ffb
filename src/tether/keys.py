"""Keys that verify token signatures, loaded from settings and files, reloaded on change.

Three sources, in any combination:

- HS256 secrets given as text (`KeyConfig.secrets`).
- PEM public key files (`KeyConfig.public_key_files`). An RSA key of at least 2048 bits
  verifies RS256, an EC key on curve P-256 verifies ES256.
- One JWKS file (`KeyConfig.jwks_file`, RFC 7517): a JSON object whose `keys` array contains
  JWKs with `kid` and `kty`. An RSA JWK verifies RS256, an EC JWK on P-256 ES256 and an `oct`
  JWK HS256. If a JWK has `alg`, it must be the algorithm its `kty` implies.

Each key verifies exactly one algorithm, fixed when the key is loaded. A token's `alg` header
only selects among keys of that algorithm, so a public key is never used as an HMAC secret.

Rotation: `KeyStore.current()` checks the files' identity (device, inode, size, mtime) at most
once per `reload_interval` seconds and reloads a file that changed. `KeyStore.reload()` re-reads
every file at once; `tether serve` calls it on SIGHUP. A file that fails to load keeps the keys
it had before, and the store logs an error, so a bad edit never leaves the gateway without keys.
Only a file that fails at start raises, as `KeyFileError`.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

__all__ = [
    "ALGORITHMS",
    "KeyConfig",
    "KeyFileError",
    "KeySet",
    "KeyStore",
    "PrivateKey",
    "PublicKey",
    "VerificationKey",
    "load_jwks_file",
    "load_private_key_file",
    "load_public_key_file",
]

logger = logging.getLogger("tether.auth")

ALGORITHMS = ("HS256", "RS256", "ES256")
"""Token algorithms tether verifies. `none` and every other algorithm are rejected."""

PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
PrivateKey: TypeAlias = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

MIN_RSA_BITS = 2048
"""Smallest RSA modulus accepted, in bits (NIST SP 800-131A)."""
MIN_HMAC_BYTES = 32
"""Smallest HS256 key accepted from a JWKS file: the hash output size (RFC 7518, 3.2)."""
MAX_KEY_FILE_BYTES = 1_048_576
"""Largest key or JWKS file read (1 MiB); a larger one is a configuration error."""

# The kty each algorithm's key must have (RFC 7518, section 6.1).
_KEY_TYPES = {"HS256": "oct", "RS256": "RSA", "ES256": "EC"}
_ALGORITHM_OF_KEY_TYPE = {kty: algorithm for algorithm, kty in _KEY_TYPES.items()}
# JWK members that hold private RSA or EC material (RFC 7518, 6.2.2 and 6.3.2).
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth")


class KeyFileError(ValueError):
    """A key file or JWKS file that is missing, unreadable or contains no usable key."""

    def __init__(self, setting: str, path: Path, reason: str) -> None:
        super().__init__(f"{setting} {path}: {reason}")
        self.setting = setting
        """Name of the `KeyConfig` field that names the file."""
        self.path = path


@dataclass(frozen=True, kw_only=True, slots=True)
class KeyConfig:
    """Sources of token verification keys, and how often key files are checked."""

    secrets: tuple[str, ...] = ()
    """HS256 secrets (default none). They change only with a restart."""
    public_key_files: tuple[Path, ...] = ()
    """PEM public key files: RSA for RS256, EC P-256 for ES256 (default none)."""
    jwks_file: Path | None = None
    """JWKS file (RFC 7517) with keys identified by `kid` (default none)."""
    reload_interval: float = 10.0
    """Seconds between checks of the key files for changes, made during token verification;
    0 checks on every verification (default 10)."""

    def __post_init__(self) -> None:
        if self.reload_interval < 0:
            raise ValueError(f"reload_interval must not be negative, got {self.reload_interval}")
        if any(not secret for secret in self.secrets):
            raise ValueError("secrets must not contain an empty secret")

    @property
    def has_files(self) -> bool:
        """Whether any public key file or a JWKS file is configured."""
        return bool(self.public_key_files) or self.jwks_file is not None


@dataclass(frozen=True, kw_only=True, slots=True)
class VerificationKey:
    """One key and the single algorithm it verifies."""

    algorithm: str
    """HS256, RS256 or ES256."""
    key: bytes | PublicKey
    """The HMAC secret for HS256, else the public key."""
    kid: str | None = None
    """Key id from the JWKS file; None for secrets and PEM files."""
    source: str = ""
    """Origin of the key, for log messages: a file path or `secret N`."""


@dataclass(frozen=True, slots=True)
class KeySet:
    """The keys in force at one moment."""

    keys: tuple[VerificationKey, ...] = ()

    def find(self, algorithm: str, kid: str | None) -> list[VerificationKey]:
        """Return the keys that may verify a token with this `alg` and `kid` header.

        A token with a kid selects the key with that kid, if its algorithm matches. A token
        without one may be verified by the keys of its algorithm that have no kid (secrets and
        PEM files), and by a JWKS key only when the JWKS has exactly one of that algorithm. So
        the sender of a kid-less token cannot make the gateway try every key of a large JWKS.
        """
        if kid is not None:
            return [key for key in self.keys if key.kid == kid and key.algorithm == algorithm]
        matching = [key for key in self.keys if key.algorithm == algorithm]
        identified = [key for key in matching if key.kid is not None]
        if len(identified) <= 1:
            return matching
        return [key for key in matching if key.kid is None]

    def has_kid(self, kid: str) -> bool:
        """Return whether any key has this key id."""
        return any(key.kid == kid for key in self.keys)


def _read_key_file(setting: str, path: Path) -> bytes:
    """Return the bytes of a key file; raise KeyFileError if it cannot be read whole.

    Only regular files are read: opening a named pipe would block the event loop until a
    writer came. A file that changes while it is read fails. One read of a file may take
    several read calls, and an in-place rewrite between them yields the start of the old
    version and the end of the new one, which can be a valid file with keys from both.
    """
    try:
        # NOTE: a pipe put in place between this check and the open still blocks.
        if not stat.S_ISREG(path.stat().st_mode):
            raise KeyFileError(setting, path, "not a regular file")
        with path.open("rb") as file:
            before = os.fstat(file.fileno())
            data = file.read(MAX_KEY_FILE_BYTES + 1)
            after = os.fstat(file.fileno())
    except OSError as error:
        raise KeyFileError(setting, path, f"cannot read: {error.strerror or error}") from error
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(setting, path, f"larger than {MAX_KEY_FILE_BYTES} bytes")
    # NOTE: two writes within one tick of the file system's clock that keep the size escape
    # this check, as they escape the reload check (docs/authentication.md).
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        raise KeyFileError(setting, path, "changed while it was read; it is read again later")
    return data


def _algorithm_of_public_key(key: object) -> tuple[str | None, str]:
    """Return the algorithm a public key verifies, or None and the reason it cannot."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            return None, f"RSA key has {key.key_size} bits; at least {MIN_RSA_BITS} are required"
        return "RS256", ""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            return None, f"EC key is on curve {key.curve.name}; ES256 needs P-256 (secp256r1)"
        return "ES256", ""
    return None, f"{type(key).__name__} is not supported; use an RSA or EC P-256 key"


def load_public_key_file(path: Path, setting: str = "public_key_files") -> VerificationKey:
    """Load a PEM public key file; raise KeyFileError naming setting if it is not usable."""
    data = _read_key_file(setting, path)
    if b"PRIVATE KEY" in data:
        raise KeyFileError(setting, path, "contains a private key; give the public key instead")
    try:
        key = load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as error:
        raise KeyFileError(setting, path, f"not a PEM public key: {error}") from error
    algorithm, reason = _algorithm_of_public_key(key)
    if algorithm is None:
        raise KeyFileError(setting, path, reason)
    assert isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    return VerificationKey(algorithm=algorithm, key=key, source=str(path))


def _jwk_algorithm(entry: dict[str, Any]) -> tuple[str | None, str]:
    """Return the algorithm a JWK verifies, or None and why it is skipped."""
    if entry.get("use", "sig") != "sig":
        return None, f"use is {entry['use']!r}, not 'sig'"
    kty = entry.get("kty")
    algorithm = entry.get("alg")
    if algorithm is None:
        algorithm = _ALGORITHM_OF_KEY_TYPE.get(kty) if isinstance(kty, str) else None
        if algorithm is None:
            return None, f"kty {kty!r} is not RSA, EC or oct"
    if algorithm not in ALGORITHMS:
        return None, f"alg {algorithm!r} is not one of {', '.join(ALGORITHMS)}"
    return algorithm, ""


def _load_jwk(entry: dict[str, Any], algorithm: str) -> bytes | PublicKey:
    """Build the key of one JWK; raise ValueError with the reason it is invalid."""
    kty = entry.get("kty")
    expected = _KEY_TYPES[algorithm]
    if kty != expected:
        raise ValueError(f"kty {kty!r} does not match alg {algorithm}, which needs {expected!r}")
    if kty != "oct" and any(member in entry for member in _PRIVATE_MEMBERS):
        raise ValueError("contains private key material; publish only the public key")
    try:
        key = jwt.PyJWK(entry, algorithm).key
    except KeyError as error:
        raise ValueError(f"member {error} is missing") from error
    except (jwt.PyJWTError, TypeError, ValueError) as error:
        raise ValueError(f"invalid {kty} key: {error}") from error
    if algorithm == "HS256":
        assert isinstance(key, bytes)
        if len(key) < MIN_HMAC_BYTES:
            message = f"HS256 key has {len(key)} bytes; at least {MIN_HMAC_BYTES} are required"
            raise ValueError(message)
        return key
    checked, reason = _algorithm_of_public_key(key)
    if checked is None:
        raise ValueError(reason)
    assert isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    return key


def load_jwks_file(path: Path, setting: str = "jwks_file") -> tuple[VerificationKey, ...]:
    """Load the keys of a JWKS file; raise KeyFileError naming setting if it is not usable.

    Keys for encryption (`use` other than `sig`) and keys of algorithms tether does not verify
    are skipped with a warning. A file with no usable key, a duplicate `kid` or an invalid key
    of a supported algorithm is rejected whole.
    """
    data = _read_key_file(setting, path)
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as error:
        raise KeyFileError(setting, path, f"invalid JSON: {error}") from error
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeyFileError(setting, path, 'expected a JSON object with a "keys" array')

    keys: list[VerificationKey] = []
    seen: set[str] = set()
    for index, entry in enumerate(document["keys"]):
        if not isinstance(entry, dict):
            raise KeyFileError(setting, path, f"keys[{index}] is not a JSON object")
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid:
            raise KeyFileError(setting, path, f"keys[{index}] has no kid")
        if kid in seen:
            raise KeyFileError(setting, path, f"kid {kid!r} appears more than once")
        seen.add(kid)
        algorithm, reason = _jwk_algorithm(entry)
        if algorithm is None:
            logger.warning("%s %s: skipped key %r: %s", setting, path, kid, reason)
            continue
        try:
            key = _load_jwk(entry, algorithm)
        except ValueError as error:
            raise KeyFileError(setting, path, f"key {kid!r}: {error}") from error
        keys.append(VerificationKey(algorithm=algorithm, key=key, kid=kid, source=str(path)))
    if not keys:
        raise KeyFileError(setting, path, "contains no usable signing key")
    return tuple(keys)


def load_private_key_file(path: Path) -> tuple[PrivateKey, str]:
    """Load a PEM private key for signing test tokens; return it with its algorithm.

    Raise KeyFileError if the file is not an unencrypted RSA (2048 bits or more) or EC P-256
    private key.
    """
    data = _read_key_file("private_key", path)
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise KeyFileError(
            "private_key", path, f"not an unencrypted PEM private key: {error}"
        ) from error
    algorithm, reason = _algorithm_of_public_key(key.public_key())
    if algorithm is None:
        raise KeyFileError("private_key", path, reason)
    assert isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey)
    return key, algorithm


FileIdentity: TypeAlias = tuple[int, int, int, int] | None
"""(device, inode, size, mtime in ns) of a file, or None if it could not be read."""


def _identity(path: Path) -> FileIdentity:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns


@dataclass(slots=True)
class _FileSource:
    """One key file, the keys it last loaded and the identity they were loaded from."""

    setting: str
    path: Path
    load: Callable[[Path, str], Sequence[VerificationKey]]
    keys: tuple[VerificationKey, ...] = ()
    identity: FileIdentity = None


def _load_public_key_as_list(path: Path, setting: str) -> Sequence[VerificationKey]:
    return (load_public_key_file(path, setting),)


def _describe(keys: Sequence[VerificationKey]) -> str:
    """Return a list of keys for a log message: kid or source, and algorithm; never a secret."""
    return ", ".join(f"{key.kid or key.source} ({key.algorithm})" for key in keys)


class KeyStore:
    """The verification keys of one gateway, with the files they came from.

    Not thread-safe: call it from the event loop thread only. It reads key files
    synchronously; they are small (at most 1 MiB) and read only when they change.
    """

    def __init__(self, config: KeyConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        """Load every configured key; raise KeyFileError if a file is not usable.

        clock returns seconds and decides when files are checked again (default monotonic).
        """
        self.config = config
        self._clock = clock
        self._secrets = tuple(
            VerificationKey(algorithm="HS256", key=secret.encode(), source=f"secret {number}")
            for number, secret in enumerate(config.secrets, 1)
        )
        for key, secret in zip(self._secrets, config.secrets, strict=True):
            if len(secret.encode()) < MIN_HMAC_BYTES:
                logger.warning(
                    "%s is shorter than %d bytes, the minimum RFC 7518 sets for HS256",
                    key.source,
                    MIN_HMAC_BYTES,
                )
        self._files = [
            _FileSource("public_key_files", path, _load_public_key_as_list)
            for path in config.public_key_files
        ]
        if config.jwks_file is not None:
            self._files.append(_FileSource("jwks_file", config.jwks_file, load_jwks_file))
        for source in self._files:
            source.identity = _identity(source.path)
            source.keys = tuple(source.load(source.path, source.setting))
        self._keys = self._combine()
        if not self._keys.keys:
            raise ValueError("no token verification key: configure a secret or a key file")
        logger.info("token verification keys: %s", _describe(self._keys.keys))
        self._next_check = clock() + config.reload_interval

    def current(self) -> KeySet:
        """Return the keys in force, first reloading changed files if a check is due."""
        if self._files:
            now = self._clock()
            if now >= self._next_check:
                self._next_check = now + self.config.reload_interval
                self._refresh(force=False)
        return self._keys

    def reload(self) -> None:
        """Re-read every key file now, changed or not (what `tether serve` does on SIGHUP)."""
        logger.info("reloading token verification keys")
        self._next_check = self._clock() + self.config.reload_interval
        self._refresh(force=True)

    def _refresh(self, *, force: bool) -> None:
        changed = False
        for source in self._files:
            identity = _identity(source.path)
            if identity == source.identity and not force:
                continue
            # Remember the identity even if loading fails, so a broken file logs one error
            # per change rather than one per check.
            source.identity = identity
            try:
                keys = tuple(source.load(source.path, source.setting))
            except KeyFileError as error:
                logger.error(
                    "cannot reload %s; keeping its %d previous keys", error, len(source.keys)
                )
                continue
            source.keys = keys
            changed = True
            logger.info("reloaded %s %s: %s", source.setting, source.path, _describe(keys))
        if changed:
            self._keys = self._combine()

    def _combine(self) -> KeySet:
        keys = list(self._secrets)
        for source in self._files:
            keys.extend(source.keys)
        return KeySet(tuple(keys))
