"""JSON Web Tokens: the user id a client proves on connect.

A token is an HS256 JWT whose `sub` claim is the user id. `exp` is optional; when present it
is checked with `leeway` seconds of tolerance for clock skew between token issuer and gateway.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import jwt

from tether.protocol.codes import Code
from tether.protocol.errors import AuthenticationError

__all__ = ["MAX_USER_ID_BYTES", "TokenVerifier", "issue_token", "validate_user_id"]

MAX_USER_ID_BYTES = 64
_ALGORITHMS = ["HS256"]
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


def issue_token(secret: str, user_id: str, *, ttl: float | None = None) -> str:
    """Return a signed token for user_id, expiring after ttl seconds if ttl is given."""
    validate_user_id(user_id)
    now = int(time.time())
    claims: dict[str, object] = {"sub": user_id, "iat": now}
    if ttl is not None:
        claims["exp"] = now + int(ttl)
    return jwt.encode(claims, secret, algorithm="HS256")


@dataclass(frozen=True, kw_only=True, slots=True)
class TokenVerifier:
    """Checks tokens signed with a shared secret."""

    secret: str
    """HS256 signing secret, shared with the service that issues tokens."""
    leeway: float = 5.0
    """Seconds of clock skew tolerated when checking `exp` (default 5)."""

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
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=_ALGORITHMS,
                leeway=self.leeway,
                options={"require": ["sub"]},
            )
        except jwt.ExpiredSignatureError as error:
            raise AuthenticationError(Code.TOKEN_EXPIRED, "token has expired") from error
        except jwt.InvalidTokenError as error:
            raise AuthenticationError(Code.UNAUTHORIZED, f"invalid token: {error}") from error
        subject = claims["sub"]
        try:
            user_id = validate_user_id(subject if isinstance(subject, str) else "")
        except ValueError as error:
            raise AuthenticationError(Code.UNAUTHORIZED, f"invalid sub claim: {error}") from error
        expiry = claims.get("exp")
        if isinstance(expiry, int | float) and expiry > MAX_EXPIRY:
            raise AuthenticationError(Code.UNAUTHORIZED, f"exp claim {expiry} is out of range")
        return user_id, float(expiry) if isinstance(expiry, int | float) else None
