"""Keys of the HTTP port: reading them from settings and checking a presented key.

Two sets of keys use these rules: the API keys of the server HTTP API (`--api-keys`,
`--api-keys-file`) and the admin keys of the admin dashboard (`--admin-keys`,
`--admin-keys-file`). Each comes as a comma-separated list and as a file of one key per line
(`#` starts a comment). Every key must be at least `MIN_KEY_LENGTH` characters, so a typo such
as an empty entry cannot become a key that is easy to guess. With no key at all, the feature
the keys guard is off.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["MIN_KEY_LENGTH", "ApiKeys", "load_api_keys", "parse_api_keys", "presented_key"]

MIN_KEY_LENGTH = 16
"""Shortest key accepted, in characters; `secrets.token_urlsafe(24)` makes 32."""


def parse_api_keys(text: str, kind: str = "API") -> tuple[str, ...]:
    """Split a comma-separated list of keys; raise ValueError for a key that is too short.

    kind ("API" or "admin") starts the error message. The error names the key's position,
    never the key.
    """
    keys = tuple(part.strip() for part in text.split(",") if part.strip())
    for position, key in enumerate(keys, start=1):
        _check_key(key, f"{kind} key {position}")
    return keys


def load_api_keys(keys: Iterable[str], file: Path | None, kind: str = "API") -> tuple[str, ...]:
    """Return keys plus the keys in file (if given), without duplicates.

    Raises ValueError when the file cannot be read or contains a key that is too short.
    """
    collected = list(keys)
    if file is not None:
        try:
            lines = file.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"cannot read the {kind} key file {file}: {error}") from error
        for number, line in enumerate(lines, start=1):
            key = line.split("#", 1)[0].strip()
            if key:
                _check_key(key, f"{kind} key in {file} line {number}")
                collected.append(key)
    return tuple(dict.fromkeys(collected))


def _check_key(key: str, where: str) -> None:
    if len(key) < MIN_KEY_LENGTH:
        raise ValueError(
            f"{where} is {len(key)} characters long; a key needs at least {MIN_KEY_LENGTH}"
        )
    if not key.isascii() or not key.isprintable() or " " in key:
        raise ValueError(f"{where} must be printable ASCII without spaces")


def presented_key(headers: Mapping[str, str], header: str) -> str | None:
    """Return the key a request sends as `header: KEY` or `Authorization: Bearer KEY`.

    Returns None when it sends neither, or an empty string for an empty key.
    """
    presented = headers.get(header)
    if presented is None:
        scheme, _, credentials = headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            presented = credentials.strip()
    return presented


class ApiKeys:
    """The accepted keys, compared in constant time."""

    __slots__ = ("_digests",)

    def __init__(self, keys: Iterable[str]) -> None:
        # Comparing SHA-256 digests makes every comparison the same length, so the time taken
        # reveals neither the content nor the length of a key.
        self._digests = tuple(hashlib.sha256(key.encode()).digest() for key in keys)

    @property
    def enabled(self) -> bool:
        """Whether any key is configured; without one the API is off."""
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def check(self, presented: str) -> bool:
        """Tell whether presented is one of the keys.

        Every key is compared, even after a match, so the time does not reveal which key
        matched.
        """
        digest = hashlib.sha256(presented.encode(errors="surrogateescape")).digest()
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(digest, known)
        return matched
