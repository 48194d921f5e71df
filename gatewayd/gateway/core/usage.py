"""Token counts of one request, as the backend reported them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Usage:
    """Token counts of one request; None when the backend did not report them."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def token_count(value: object) -> int | None:
    """A token count as reported, or None when absent or not an integer."""
    return value if type(value) is int else None
