"""HTTP calls to a backend's hooks, with a timeout per attempt, retries and a circuit breaker.

A call is a POST of a JSON object to `<url>/<hook>`; the backend responds 200 with a JSON object.
Timeouts, connection errors, 429 and 5xx responses are retried after a jittered exponential
delay, up to `retries` more times, and each of them counts as a failure for the breaker. Other
4xx answers and bodies that are not a JSON object are not retried: the backend understood the
request and rejected it, so a second try would fail the same way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from typing import Any

import aiohttp

from tether.hooks.breaker import CircuitBreaker
from tether.hooks.config import HookConfig
from tether.protocol.errors import TetherError

__all__ = ["HookClient", "HookError"]

logger = logging.getLogger("tether.hooks")

# Largest hook response read, in bytes; a connect response lists at most a few thousand contacts.
MAX_RESPONSE_BYTES = 1024 * 1024


class HookError(TetherError):
    """A hook call failed; `retryable` tells whether the same call may succeed later."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class HookClient:
    """The HTTP client of one process's hook calls."""

    def __init__(self, config: HookConfig) -> None:
        self.config = config
        self.breaker = CircuitBreaker(config.failure_threshold, config.reset_timeout)
        self._base = config.url.rstrip("/") + "/"
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the HTTP session."""
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
        self._session = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            connector=aiohttp.TCPConnector(limit=self.config.max_in_flight),
        )

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, hook: str, request: dict[str, Any]) -> dict[str, Any]:
        """POST request to the hook and return its JSON object; raise HookError on failure."""
        config = self.config
        last_error = "no attempt made"
        for attempt in range(config.retries + 1):
            if attempt:
                delay = config.retry_delay * 2 ** (attempt - 1)
                await asyncio.sleep(random.uniform(delay / 2, delay))
            if not self.breaker.allow():
                raise HookError(
                    f"{hook} hook not called: circuit breaker open after repeated failures "
                    f"({last_error})",
                    retryable=True,
                )
            try:
                status, body = await self._post(hook, request)
            except (aiohttp.ClientError, TimeoutError) as error:
                last_error = f"{type(error).__name__}: {error}" if str(error) else repr(error)
                self.breaker.record_failure()
                logger.warning("%s hook attempt %d failed: %s", hook, attempt + 1, last_error)
                continue
            except BaseException:
                self.breaker.abandon()
                raise
            if status == 429 or status >= 500:
                last_error = f"HTTP status {status}"
                self.breaker.record_failure()
                logger.warning("%s hook attempt %d failed: %s", hook, attempt + 1, last_error)
                continue
            self.breaker.record_success()
            return _json_object(hook, status, body)
        raise HookError(f"{hook} hook failed after {config.retries + 1} attempts: {last_error}",
                        retryable=True)  # fmt: skip

    async def _post(self, hook: str, request: dict[str, Any]) -> tuple[int, bytes]:
        assert self._session is not None, "HookClient.start was not called"
        async with self._session.post(self._base + hook, json=request) as response:
            body = await response.content.read(MAX_RESPONSE_BYTES + 1)
            return response.status, body


def _json_object(hook: str, status: int, body: bytes) -> dict[str, Any]:
    """Return a 200 response's JSON object; raise a final HookError for anything else."""
    if status != 200:
        raise HookError(f"{hook} hook returned HTTP status {status}", retryable=False)
    if len(body) > MAX_RESPONSE_BYTES:
        raise HookError(f"{hook} hook response exceeds {MAX_RESPONSE_BYTES} bytes", retryable=False)
    try:
        answer = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HookError(f"{hook} hook response is not JSON: {error}", retryable=False) from error
    if not isinstance(answer, dict):
        raise HookError(f"{hook} hook response is not a JSON object", retryable=False)
    return answer
