"""Helpers for the URLs tether connects to (Redis, PostgreSQL)."""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["redact_url"]

# Query parameters that carry a secret in the URLs of redis-py and asyncpg.
_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})


def redact_url(url: str) -> str:
    """Return url with its password replaced by ***, for logs and help text.

    Both places a URL can carry a password are masked: the user info (`user:secret@host`)
    and the query parameters `password` and `sslpassword`. Other parts stay as written.
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user_info, _, host = netloc.rpartition("@")
        user = user_info.partition(":")[0]
        netloc = f"{user}:***@{host}"

    parameters = []
    for parameter in parts.query.split("&") if parts.query else []:
        name, separator, _ = parameter.partition("=")
        if separator and name.lower() in _SECRET_PARAMETERS:
            parameter = f"{name}=***"
        parameters.append(parameter)
    return parts._replace(netloc=netloc, query="&".join(parameters)).geturl()
