"""Schemathesis hooks for tests/integration/test_api_fuzz.py (loaded through SCHEMATHESIS_HOOKS)."""

from __future__ import annotations

import json
from typing import Any

import schemathesis


@schemathesis.check
def openai_error_format(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx, documented or not, is an OpenAI-format error with a message a person can act on."""
    if not 400 <= response.status_code < 500:
        return None
    try:
        error = json.loads(response.content)["error"]
    except (ValueError, KeyError, TypeError) as exc:
        raise AssertionError(f"{response.status_code} without an OpenAI error body: {response.content[:200]!r}") \
            from exc
    if not (isinstance(error, dict) and isinstance(error.get("message"), str) and error["message"]
            and isinstance(error.get("type"), str) and "param" in error and "code" in error):
        raise AssertionError(f"{response.status_code} error body lacks message/type/param/code: {error!r}")
    return True
