"""Connect and message hooks over HTTP: a logic layer that asks your backend instead of a store.

- `tether.hooks.config`: the settings.
- `tether.hooks.breaker`: the circuit breaker, without I/O.
- `tether.hooks.client`: the HTTP client with timeouts, retries and the breaker.
- `tether.hooks.logic`: the logic worker that turns logic-stream requests into hook calls.

Only the settings and the breaker are imported here, so a process without hooks never imports
aiohttp through this package. docs/hooks.md describes the request and response bodies a
backend implements.
"""

from tether.hooks.breaker import BreakerState, CircuitBreaker
from tether.hooks.config import HookConfig

__all__ = ["BreakerState", "CircuitBreaker", "HookConfig"]
