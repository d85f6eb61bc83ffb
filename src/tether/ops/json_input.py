"""Decoding JSON that tether did not write: request bodies, and load reports read from Redis.

`json.loads` fails in more ways than `JSONDecodeError`. Arrays or objects nested deeper than
the interpreter's recursion limit raise RecursionError, and an integer of more than 4,300
digits raises a plain ValueError (Python's limit on converting long digit strings). Both fit
in a request body of a few kilobytes. `decode_json` turns every failure into
`JsonInputError`. It also rejects an object that names a key twice. RFC 8259, section 4,
leaves the meaning of such an object open: a proxy that reads the first value and tether,
which would read the last one, could disagree about a request.

This module does not import aiohttp, so gateways without an HTTP port can use it.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["JsonInputError", "decode_json"]


class JsonInputError(ValueError):
    """JSON text that cannot be decoded; key names the key given twice, if that is the fault.

    The message is a predicate to put after the text's name, as in "body is not valid JSON".
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def decode_json(raw: bytes | str) -> object:
    """Return the value that raw encodes (UTF-8 if bytes); raise JsonInputError otherwise."""
    try:
        return json.loads(raw, object_pairs_hook=_object_with_unique_keys)
    except JsonInputError:
        raise
    except RecursionError:
        raise JsonInputError("nests arrays or objects too deeply") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise JsonInputError(f"is not valid JSON: {error}") from error
    except ValueError as error:  # only the digit limit of int() raises a plain ValueError
        raise JsonInputError("has a number with too many digits") from error


def _object_with_unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    decoded = dict(pairs)
    if len(decoded) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JsonInputError(f"names the key {key!r} twice in one object", key)
            seen.add(key)
    return decoded
