"""Exceptions raised by tether.

    TetherError
    ├── ProtocolError          the peer broke the protocol (carries a Code)
    │   └── FrameTooLarge      a length prefix above the configured maximum
    ├── AuthenticationError    a token was rejected (carries a Code)
    ├── BusError               the bus failed to carry a message
    │   ├── BusOverloaded      a bounded bus queue is full
    │   └── BusUnavailable     the bus is not connected right now
    ├── RequestError           a request to the server failed (client side, carries a Code)
    ├── ConnectionClosed       the connection closed (client side, carries a Code)
    └── StoreError             the logic store's database failed (in tether.logic.store)
        └── StoreConflict      a transaction lost a deadlock to another writer; retryable

The sans-I/O decoders never raise these for bad input: they record the error as an event, so
the caller decides how to close. Everything else raises them.
"""

from __future__ import annotations

from tether.protocol.codes import Code

__all__ = [
    "AuthenticationError",
    "BusError",
    "BusOverloaded",
    "BusUnavailable",
    "ConnectionClosed",
    "FrameTooLarge",
    "ProtocolError",
    "RequestError",
    "TetherError",
]


class TetherError(Exception):
    """Root of every exception tether raises on purpose."""


class ProtocolError(TetherError):
    """The peer sent bytes or frames that break the protocol."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code


class FrameTooLarge(ProtocolError):
    """A frame's length prefix exceeds the allowed maximum."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(
            Code.FRAME_TOO_LARGE, f"frame of at least {length} bytes exceeds {limit} bytes"
        )
        self.length = length
        self.limit = limit


class AuthenticationError(TetherError):
    """A token could not be verified."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code


class BusError(TetherError):
    """The bus could not carry a message."""


class BusOverloaded(BusError):
    """A bounded queue of the bus is full; the message was not accepted."""


class BusUnavailable(BusError):
    """The bus is not connected right now; the message was not accepted. Retry later."""


class RequestError(TetherError):
    """The server rejected a request (Error frame)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message


class ConnectionClosed(TetherError):
    """The connection is closed; `code` gives the reason and whether to reconnect."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"connection closed: {reason} (code {code})")
        self.code = code
        self.reason = reason
