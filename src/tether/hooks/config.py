"""Settings of the connect and message hooks; importing them does not import aiohttp."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HookConfig"]


@dataclass(frozen=True, kw_only=True, slots=True)
class HookConfig:
    """Settings of the connect and message hooks."""

    url: str
    """Base URL of the backend; hooks are POSTed to `<url>/connect` and `<url>/message`."""
    api_key: str = ""
    """Sent as `Authorization: Bearer KEY` when set, so the backend can tell tether's calls apart
    (default empty: no header)."""
    timeout: float = 2.0
    """Seconds one attempt may take, connecting included (default 2)."""
    retries: int = 1
    """Attempts after the first when one times out, fails to connect or gets 429 or 5xx
    (default 1)."""
    retry_delay: float = 0.1
    """Seconds before the first retry, doubled for each later one, with jitter (default 0.1)."""
    failure_threshold: int = 5
    """Failed attempts in a row that open the circuit breaker (default 5)."""
    reset_timeout: float = 5.0
    """Seconds the breaker stays open before one trial call (default 5)."""
    max_in_flight: int = 256
    """Hook calls at once; further requests wait on the logic stream (default 256)."""
