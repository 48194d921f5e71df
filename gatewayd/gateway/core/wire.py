"""Small helpers the dialects' codecs and translators share: shape checks, ids, timestamps, stop lists."""

from __future__ import annotations

import json
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from gatewayd.errors import BackendReported, BadGateway, BadRequest
from gatewayd.gateway.core.profile import Payload


def expect_dict(value: object, what: str) -> Payload:
    """``value`` if it is a JSON object, else ``BadGateway("backend returned an unexpected <what>")``."""
    if not isinstance(value, dict):
        raise BadGateway(f"backend returned an unexpected {what}")
    return value


def reported_error(payload: Payload) -> None:
    """Raise ``BackendReported`` if an upstream payload is an error report (``{"error": "..."}`` or
    ``{"error": {"message": "..."}}``)."""
    error = payload.get("error")
    if error is None:
        return
    message = error.get("message") if isinstance(error, dict) else error
    raise BackendReported(f"backend reported an error: {message}")


def new_id(prefix: str) -> str:
    """A fresh OpenAI-style object id: ``prefix`` then 24 random hex digits, e.g. ``chatcmpl-3f2a...``."""
    return prefix + secrets.token_hex(12)


def now_seconds() -> int:
    return int(time.time())


def rfc3339(seconds: float) -> str:
    """Ollama's ``created_at``: RFC 3339 in UTC, e.g. ``2024-05-01T12:00:00Z``."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def options_stop(value: object, param: str) -> list[str] | None:
    """A ``stop`` value (one string or a list of strings) as a list; None when absent."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise BadRequest(f"'{param}' must be a string or a list of strings", param=param)


def parse_arguments(arguments: str) -> dict[str, Any] | None:
    """A tool call's JSON arguments text as an object (an empty text: no arguments); None when the text
    is not a JSON object (for dialects that carry arguments as an object)."""
    try:
        parsed = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None
