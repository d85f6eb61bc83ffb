"""Error and disconnect codes of the tether protocol, and what a client should do on each.

Codes below 4000 travel in `Error` frames: one request failed and the connection stays open.
Codes 4000-4999 travel in `Disconnect` frames (and as the WebSocket close code): the server
closes the connection. WebSocket reserves 4000-4999 for applications (RFC 6455, section 7.4.2),
so the same number works on both transports.

- 4000-4499: the client should reconnect, after at least the `reconnect_delay_ms` the frame
  carries, with jittered exponential backoff.
- 4500-4999: final. Reconnecting with the same token or input fails the same way, so the client
  must not reconnect automatically.

docs/protocol.md prints this table; tests/test_docs_protocol.py keeps the two in step.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "RECONNECT_RANGE_END",
    "RECONNECT_RANGE_START",
    "Code",
    "CodeInfo",
    "describe",
    "is_final",
    "table",
]

RECONNECT_RANGE_START = 4000
RECONNECT_RANGE_END = 4499


class Code(enum.IntEnum):
    """Every error and disconnect code tether sends."""

    # Request errors (Error frame); the connection stays open.
    BAD_REQUEST = 1
    NOT_A_CONTACT = 2
    UNAVAILABLE = 3
    BODY_TOO_LARGE = 4
    INTERNAL = 5
    NOT_FOUND = 6
    NOT_ALLOWED = 7
    ALREADY_EXISTS = 8
    LIMIT_REACHED = 9

    # Disconnects after which the client should reconnect.
    SHUTDOWN = 4000
    HEARTBEAT_TIMEOUT = 4001
    SLOW_CONSUMER = 4002
    SERVER_ERROR = 4003
    OVERLOADED = 4004
    CONNECT_TIMEOUT = 4005
    BACKEND_UNAVAILABLE = 4006
    RATE_LIMITED = 4007

    # Final disconnects.
    PROTOCOL_ERROR = 4500
    FRAME_TOO_LARGE = 4501
    UNAUTHORIZED = 4502
    TOKEN_EXPIRED = 4503
    REPLACED = 4504
    UNSUPPORTED_VERSION = 4505
    FORBIDDEN = 4506
    TOO_MANY_DEVICES = 4507


@dataclass(frozen=True, slots=True)
class CodeInfo:
    """The meaning of a code and whether retrying can help."""

    code: Code
    retry: bool
    meaning: str


_TABLE: dict[Code, CodeInfo] = {
    info.code: info
    for info in (
        CodeInfo(Code.BAD_REQUEST, False, "A field of the request is missing or invalid."),
        CodeInfo(Code.NOT_A_CONTACT, False, "The recipient is not one of the sender's contacts."),
        CodeInfo(
            Code.UNAVAILABLE,
            True,
            "The logic layer did not answer in time or is overloaded; resend with the same "
            "client_message_id, which cannot create a duplicate.",
        ),
        CodeInfo(Code.BODY_TOO_LARGE, False, "The message body is larger than the server allows."),
        CodeInfo(Code.INTERNAL, True, "The server failed while handling the request."),
        CodeInfo(Code.NOT_FOUND, False, "The named user or object does not exist."),
        CodeInfo(
            Code.NOT_ALLOWED,
            False,
            "The user may not make this change, for example to a group it does not own.",
        ),
        CodeInfo(Code.ALREADY_EXISTS, False, "An object with this id exists already."),
        CodeInfo(
            Code.LIMIT_REACHED,
            False,
            "A group or a user has reached the most members or groups the server allows.",
        ),
        CodeInfo(Code.SHUTDOWN, True, "The server is shutting down or draining."),
        CodeInfo(
            Code.HEARTBEAT_TIMEOUT,
            True,
            "No frame arrived within the offline timeout.",
        ),
        CodeInfo(
            Code.SLOW_CONSUMER,
            True,
            "The client read too slowly and its outgoing queue overflowed.",
        ),
        CodeInfo(Code.SERVER_ERROR, True, "The server failed while handling the connection."),
        CodeInfo(Code.OVERLOADED, True, "The server accepts no more connections right now."),
        CodeInfo(
            Code.CONNECT_TIMEOUT,
            True,
            "The Connect frame did not arrive within the handshake time.",
        ),
        CodeInfo(
            Code.BACKEND_UNAVAILABLE,
            True,
            "The logic layer did not answer the connect request in time.",
        ),
        CodeInfo(
            Code.RATE_LIMITED,
            True,
            "The client sent frames faster than the server allows; wait reconnect_delay_ms.",
        ),
        CodeInfo(
            Code.PROTOCOL_ERROR,
            False,
            "A frame could not be decoded or was not allowed in the connection's state.",
        ),
        CodeInfo(Code.FRAME_TOO_LARGE, False, "A frame was longer than max_frame_bytes."),
        CodeInfo(Code.UNAUTHORIZED, False, "The token is missing, malformed or badly signed."),
        CodeInfo(Code.TOKEN_EXPIRED, False, "The token has expired; get a new one first."),
        CodeInfo(
            Code.REPLACED,
            False,
            "A newer connection of the same user and device replaced this one.",
        ),
        CodeInfo(
            Code.UNSUPPORTED_VERSION,
            False,
            "The client's protocol_version is not supported.",
        ),
        CodeInfo(Code.FORBIDDEN, False, "The logic layer rejected this user or device."),
        CodeInfo(
            Code.TOO_MANY_DEVICES,
            False,
            "The user has the most devices a gateway allows connected; close one first.",
        ),
    )
}


def describe(code: int) -> CodeInfo:
    """Return the table entry of a code; raise ValueError for a code not in the table."""
    return _TABLE[Code(code)]


def is_final(code: int) -> bool:
    """Tell whether a client must not retry after this code.

    A code missing from the table (from a newer server) is judged by its range, so a client
    keeps reconnecting after an unknown 4000-4499 code. Unknown request errors count as final.
    """
    try:
        return not describe(code).retry
    except ValueError:
        return not RECONNECT_RANGE_START <= code <= RECONNECT_RANGE_END


def table() -> list[CodeInfo]:
    """Return every code's entry in numeric order."""
    return [_TABLE[code] for code in sorted(_TABLE)]
