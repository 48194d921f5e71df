"""Small helpers the dialects' codecs and translators share: shape checks, ids, timestamps, stop lists."""

from __future__ import annotations

import json
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from gatewayd.errors import BackendReported, BadGateway, BadRequest
from gatewayd.gateway.core.chat import TokenLogprob
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


def decode_logprobs(entries: object) -> tuple[TokenLogprob, ...] | None:
    """Token logprobs in the shape OpenAI's chat (``choices[].logprobs.content``) and Ollama
    (``logprobs``) share: ``[{"token", "logprob", "bytes", "top_logprobs": [...]}]``; None when absent.
    Entries of another shape are skipped, never guessed."""
    if not isinstance(entries, list):
        return None
    return tuple(
        TokenLogprob(
            entry["token"],
            float(entry["logprob"]),
            _bytes(entry.get("bytes")),
            decode_logprobs(entry.get("top_logprobs")) or (),
        )
        for entry in entries
        if isinstance(entry, dict)
        and isinstance(entry.get("token"), str)
        and isinstance(entry.get("logprob"), int | float)
    )


def encode_logprobs(logprobs: tuple[TokenLogprob, ...], *, top: bool = True) -> list[Payload]:
    """``decode_logprobs``'s shape for ``logprobs`` (alternatives without their own ``top_logprobs``)."""
    out: list[Payload] = []
    for item in logprobs:
        entry: Payload = {
            "token": item.token,
            "logprob": item.logprob,
            "bytes": list(item.bytes) if item.bytes is not None else None,
        }
        if top:
            entry["top_logprobs"] = encode_logprobs(item.top, top=False)
        out.append(entry)
    return out


def _bytes(value: object) -> tuple[int, ...] | None:
    if isinstance(value, list) and all(type(b) is int for b in value):
        return tuple(value)
    return None
