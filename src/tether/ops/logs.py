"""Log output of tether processes: a text format for people and a JSON format for collectors.

tether logs through named loggers (`tether.gateway`, `tether.bus.redis`, ...). A record about
one client connection passes a `ConnectionLabel` among its arguments (what
`Connection.describe()` returns). In text it reads `conn=... user=... device=...`; the JSON
format also puts those ids in fields of their own, so a collector can filter by user without
parsing messages. Code that logs without a label can pass the same fields with
`extra={"connection_id": ..., "user_id": ...}`.

JSON output is one object per line:

    {"time": "2026-05-01T12:00:00.123Z", "level": "INFO", "logger": "tether.gateway",
     "message": "opened conn=1a2b3c-4 user=alice device=phone over tcp from 127.0.0.1:50000",
     "connection_id": "1a2b3c-4", "user_id": "alice", "device_id": "phone"}
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "ConnectionLabel",
    "JsonFormatter",
    "configure_logging",
]

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Record attributes that `extra=` may set and the JSON output copies.
_ID_FIELDS = ("connection_id", "user_id", "device_id")


class ConnectionLabel:
    """The ids of one connection, as a log argument: `%s` prints them, JSON gets fields."""

    __slots__ = ("connection_id", "device_id", "user_id")

    def __init__(self, connection_id: str, user_id: str, device_id: str) -> None:
        self.connection_id = connection_id
        self.user_id = user_id
        """Empty until the connection has logged in."""
        self.device_id = device_id
        """Empty until the connection has logged in."""

    def __str__(self) -> str:
        user, device = self.user_id or "-", self.device_id or "-"
        return f"conn={self.connection_id} user={user} device={device}"

    def __repr__(self) -> str:
        return f"ConnectionLabel({self})"


class JsonFormatter(logging.Formatter):
    """Formats each record as one line of JSON: time, level, logger, message and ids."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a JSON object on one line."""
        seconds = int(record.created)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        fields: dict[str, Any] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        label = _connection_label(record)
        if label is not None:
            fields["connection_id"] = label.connection_id
            if label.user_id:
                fields["user_id"] = label.user_id
            if label.device_id:
                fields["device_id"] = label.device_id
        for name in _ID_FIELDS:
            extra = record.__dict__.get(name)
            if extra is not None:
                fields[name] = str(extra)
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            fields["stack"] = self.formatStack(record.stack_info)
        return json.dumps(fields, ensure_ascii=False)


def _connection_label(record: logging.LogRecord) -> ConnectionLabel | None:
    """Return the first ConnectionLabel among the record's arguments, if any."""
    arguments = record.args
    if isinstance(arguments, tuple):
        for argument in arguments:
            if isinstance(argument, ConnectionLabel):
                return argument
    return None


def configure_logging(level: str, log_format: str = "text") -> None:
    """Send every record at level or above to stderr, as text or as JSON lines."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    # Like basicConfig: a process whose root logger already has handlers keeps them.
    logging.basicConfig(level=level.upper(), handlers=[handler])
