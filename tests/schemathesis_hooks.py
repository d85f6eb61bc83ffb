"""Schemathesis hooks for tests/test_http_api_schema.py, loaded through SCHEMATHESIS_HOOKS.

Two rules of the server API compare fields, which JSON Schema cannot state: a message's
sender must differ from its recipient, and a user cannot be their own contact. The API
rejects such bodies with 400 `bad_request`, which is right, so generated requests that break
these rules are left out instead of being reported as valid data the API rejected.
"""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.hook
def filter_body(context: Any, body: Any) -> bool:
    """Drop bodies that name one user in two fields that must differ."""
    if not isinstance(body, dict):
        return True
    user_id = body.get("user_id")
    if user_id is None:
        return True
    return body.get("sender", object()) != user_id and body.get("contact_id", object()) != user_id
