"""Ollama's model lifecycle requests: what ``ollama run`` and ``ollama stop`` send. Pure.

``POST /api/generate`` with no prompt (and no images) and ``POST /api/chat`` with no messages do not ask
for a generation: they load the model (``done_reason: "load"``), or, with ``keep_alive`` 0, unload it
(``done_reason: "unload"``). ``keep_alive`` is Ollama's duration: a number of seconds, or a Go duration
string ("5m", "1h30m", "300ms"); a negative one means "keep it loaded forever".
"""

from __future__ import annotations

import enum
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gatewayd.errors import BadRequest

_UNIT_SECONDS: Mapping[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


class Action(enum.StrEnum):
    LOAD = "load"  # make the model ready (start or wake its server) without generating
    UNLOAD = "unload"  # keep_alive 0: let its server sleep once its requests are done


@dataclass(frozen=True, slots=True)
class LifecycleRequest:
    """A load or unload request, and the keep_alive it carries (seconds; math.inf = forever; None = not
    given, the backend's own idle_ttl_seconds applies)."""

    action: Action
    keep_alive_seconds: float | None


def keep_alive_seconds(value: Any) -> float | None:
    """Ollama's ``keep_alive`` in seconds: None when absent (or null), math.inf when negative. Raises
    BadRequest for anything Ollama would refuse."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadRequest(
            "'keep_alive' must be a duration such as \"5m\" or a number of seconds", param="keep_alive"
        )
    if isinstance(value, int | float):
        return math.inf if value < 0 else float(value)
    if isinstance(value, str):
        seconds = _go_duration(value)
        if seconds is not None:
            return seconds
    raise BadRequest(
        f'invalid \'keep_alive\' {value!r}: a duration such as "5m" or "1h30m", or a number of seconds '
        "(negative = keep it loaded)",
        param="keep_alive",
    )


def _go_duration(text: str) -> float | None:
    """Go's time.ParseDuration in seconds (negative = math.inf); None when it is not one."""
    sign = 1.0
    rest = text
    if rest[:1] in ("+", "-"):
        sign = -1.0 if rest[0] == "-" else 1.0
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        return None
    total = 0.0
    position = 0
    for match in _PART.finditer(rest):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(rest):
        return None
    return math.inf if sign < 0 and total > 0 else total


def lifecycle_request(body: Mapping[str, Any], *, chat: bool) -> LifecycleRequest | None:
    """The load or unload an Ollama chat (``chat``) or generate ``body`` asks for, or None when it asks
    for a generation. Raises BadRequest for an invalid keep_alive."""
    if body.get("messages") if chat else (body.get("prompt") or body.get("images")):
        return None
    keep_alive = keep_alive_seconds(body.get("keep_alive"))
    action = Action.UNLOAD if keep_alive == 0 else Action.LOAD
    return LifecycleRequest(action, keep_alive)


def lifecycle_response(model: str, action: Action, *, chat: bool, now: float | None = None) -> dict[str, Any]:
    """Ollama's answer to a load or unload: a final object with ``done: true`` and ``done_reason``."""
    moment = time.time() if now is None else now
    created = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{int(moment % 1 * 1e6):06d}Z"
    if chat:
        return {
            "model": model,
            "created_at": created,
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": action.value,
        }
    return {"model": model, "created_at": created, "response": "", "done": True, "done_reason": action.value}
