"""JSON Web Tokens: the user id a client proves on connect.

A token is a JWT signed with HS256, RS256 or ES256 by a key in the gateway's `KeyStore`
(tether.keys). Its `sub` claim is the user id. `exp` is optional; when present it is checked
with `leeway` seconds of tolerance for clock skew between token issuer and gateway.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import jwt

from tether.keys import ALGORITHMS, KeyStore, PrivateKey, VerificationKey
from tether.protocol.codes import Code
from tether.protocol.errors import AuthenticationError

__all__ = ["MAX_USER_ID_BYTES", "TokenVerifier", "issue_token", "validate_user_id"]

MAX_USER_ID_BYTES = 64
# Latest accepted `exp`: the end of year 9999, so expiry in milliseconds fits in an int64.
MAX_EXPIRY = 253_402_300_799
_USER_ID_PATTERN = re.compile(r"[A-Za-z0-9_\-.@+=]+")


def validate_user_id(user_id: str) -> str:
    """Return user_id if it is valid; else raise ValueError.

    A user id is 1 to 64 ASCII letters, digits and `_-.@+=`. The set excludes `:` because
    conversation ids join two user ids with it, and whitespace because ids appear in commands.
    """
    if not 0 < len(user_id) <= MAX_USER_ID_BYTES:
        raise ValueError(f"user id must be 1 to {MAX_USER_ID_BYTES} characters, got {len(user_id)}")
    if not _USER_ID_PATTERN.fullmatch(user_id):
        raise ValueError(
            f"user id {user_id!r} may contain only ASCII letters, digits and the characters _-.@+="
        )
    return user_id


def issue_token(
    key: str | PrivateKey,
    user_id: str,
    *,
    ttl: float | None = None,
    algorithm: str = "HS256",
    kid: str | None = None,
) -> str:
    """Return a token for user_id signed with key, expiring after ttl seconds if ttl is given.

    key is an HS256 secret, or a private key for RS256 or ES256 (see
    `tether.keys.load_private_key_file`). kid, if given, goes into the token's header.
    """
    validate_user_id(user_id)
    now = int(time.time())
    claims: dict[str, object] = {"sub": user_id, "iat": now}
    if ttl is not None:
        claims["exp"] = now + int(ttl)
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers)


def _shown(value: object) -> str:
    """Return a short repr of a header value for an error message; headers can be long."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True, kw_only=True, slots=True)
class TokenVerifier:
    """Token checker that uses the keys of a KeyStore."""

    keys: KeyStore
    """Verification keys; a token is valid if one key of its algorithm verifies it."""
    leeway: float = 5.0
    """Seconds of clock skew tolerated when checking `exp`, `nbf` and `iat` (default 5)."""

    def verify(self, token: str) -> str:
        """Return the user id of a valid token; raise AuthenticationError otherwise."""
        return self.verify_claims(token)[0]

    def verify_claims(self, token: str) -> tuple[str, float | None]:
        """Return the user id and expiry (Unix seconds, None if none) of a valid token.

        Raise AuthenticationError with TOKEN_EXPIRED or UNAUTHORIZED otherwise.
        """
        if not token:
            raise AuthenticationError(Code.UNAUTHORIZED, "token is missing")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as error:
            raise AuthenticationError(Code.UNAUTHORIZED, f"invalid token: {error}") from error

        # The header selects among the keys of its algorithm but never sets a key's algorithm.
        # So "none" fails here, and an HS256 token meets HS256 secrets only, never a public key.
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise AuthenticationError(
                Code.UNAUTHORIZED,
                f"token algorithm {_shown(algorithm)} is not accepted; use "
                + ", ".join(ALGORITHMS),
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthenticationError(Code.UNAUTHORIZED, "token kid header is not a string")
        key_set = self.keys.current()
        candidates = key_set.find(algorithm, kid)
        if not candidates:
            if kid is None:
                reason = f"no {algorithm} key is configured"
            elif key_set.has_kid(kid):
                reason = f"key {_shown(kid)} is not an {algorithm} key"
            else:
                reason = f"unknown key id {_shown(kid)}"
            raise AuthenticationError(Code.UNAUTHORIZED, f"invalid token: {reason}")

        claims = self._decode(token, candidates)
        subject = claims["sub"]
        try:
            user_id = validate_user_id(subject if isinstance(subject, str) else "")
        except ValueError as error:
            raise AuthenticationError(Code.UNAUTHORIZED, f"invalid sub claim: {error}") from error
        expiry = claims.get("exp")
        if isinstance(expiry, int | float) and expiry > MAX_EXPIRY:
            raise AuthenticationError(Code.UNAUTHORIZED, f"exp claim {expiry} is out of range")
        return user_id, float(expiry) if isinstance(expiry, int | float) else None

    def _decode(self, token: str, candidates: list[VerificationKey]) -> dict[str, object]:
        """Return the claims of a token that one of the candidate keys verifies.

        PyJWT checks the signature before the claims, so a claim error means the signature
        was good and no other key needs a try.
        """
        for key in candidates:
            try:
                claims: dict[str, object] = jwt.decode(
                    token,
                    key.key,
                    algorithms=[key.algorithm],
                    leeway=self.leeway,
                    options={"require": ["sub"]},
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError as error:
                raise AuthenticationError(Code.TOKEN_EXPIRED, "token has expired") from error
            except jwt.InvalidTokenError as error:
                raise AuthenticationError(Code.UNAUTHORIZED, f"invalid token: {error}") from error
            return claims
        algorithm = candidates[0].algorithm
        raise AuthenticationError(
            Code.UNAUTHORIZED,
            f"invalid token: no configured {algorithm} key verifies its signature",
        )
