"""Session affinity: keep a multi-turn conversation on the replica that holds its KV cache. Pure.

``affinity_key`` names the conversation a request belongs to: a session header when the client sends one,
else a hash of the conversation's leading messages (or of a raw prompt's leading characters).
``AffinityTable`` remembers which backend each conversation was pinned to, bounded in size and in idle time,
and says whether a request's pin was a hit, a miss or needs a re-pin.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from gatewayd.config import AffinitySettings

#: Session headers, lower-case, first present wins. Ours first: a client that sets it means it. Then the
#: ids coding agents already send, each one stable for a whole conversation:
#:   - ``x-session-id`` and ``x-session-affinity``: opencode sends its session id in both to every provider
#:     but its own (sst/opencode packages/opencode/src/session/llm/request.ts); to its "opencode*"
#:     providers it sends ``x-opencode-session`` instead.
#:   - ``x-claude-code-session-id``: Claude Code sends its session UUID on every request since 2.1.86
#:     (coder/aibridge pull request #241 reads it).
#:   - ``session-id`` and ``session_id``: the Codex CLI. codex-rs/codex-api/src/requests/headers.rs inserts
#:     ``session-id`` (``build_session_headers``); earlier releases inserted ``session_id``
#:     (``build_conversation_headers``). Proxies such as nginx drop underscored names unless told not to.
#: aider and Cline send no conversation header that we know of; they fall back to the message hash.
#: (The list itself is the config's default, ``AffinitySettings.session_headers``.)
DEFAULT_SESSION_HEADERS: tuple[str, ...] = AffinitySettings().session_headers
#: messages hashed at most; the key never reaches past the first user message (see ``affinity_key``)
DEFAULT_LEADING_MESSAGES = 2
#: a message prefix with less text than this is too common ("hi") and too cheap to be worth a pin
DEFAULT_MIN_PREFIX_CHARS = 32
#: characters of a raw prompt (/v1/completions, /api/generate) that name its conversation
DEFAULT_LEADING_PROMPT_CHARS = 512

_DIGEST_BYTES = 16


class Outcome(enum.Enum):
    """What became of a request's affinity, reported back in a response header."""

    HIT = "hit"  # the pinned backend is among the routable candidates: use it
    MISS = "miss"  # no pin (new conversation, or the pin expired): route normally, then pin
    REPIN = "repin"  # pinned to a backend that cannot take it now: route normally, then pin anew


def affinity_key(
    headers: Mapping[str, str],
    body: Mapping[str, Any],
    *,
    session_headers: Sequence[str] = DEFAULT_SESSION_HEADERS,
    leading_messages: int = DEFAULT_LEADING_MESSAGES,
    min_prefix_chars: int = DEFAULT_MIN_PREFIX_CHARS,
    leading_prompt_chars: int = DEFAULT_LEADING_PROMPT_CHARS,
) -> str | None:
    """The conversation ``body`` belongs to, or None when nothing identifies it well enough to pin.

    ``headers`` has lower-case names. The first of ``session_headers`` with a non-blank value wins. Failing
    that, a chat request (OpenAI ``messages`` or Ollama /api/chat ``messages``) is keyed by the role and
    content of its first ``leading_messages`` messages, cut after the first user message: that prefix is
    already complete in turn 1 and repeated unchanged in every later turn, so all turns get one key. A
    prefix with fewer than ``min_prefix_chars`` characters of text gives None. A raw-prompt request
    (/v1/completions ``prompt``, /api/generate ``prompt`` and ``system``) is keyed by the prompt's first
    ``leading_prompt_chars`` characters, and gives None when the prompt is shorter (the next turn's prompt
    would not start with the same characters).

    The model is part of every key: one session that uses two models holds two caches on two backends.
    Keys are short digests (blake2b), never the client's text, so they are safe to log and bounded in
    size. Their prefix says where they came from: ``s:`` a header, ``m:`` messages, ``p:`` a prompt."""
    model = body.get("model")
    model = model if isinstance(model, str) else ""
    for name in session_headers:
        value = headers.get(name, "").strip()
        if value:
            return "s:" + _digest([model, value])
    messages = body.get("messages")
    if isinstance(messages, list):
        return _messages_key(model, messages, leading_messages, min_prefix_chars)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        prompt = prompt[0]  # /v1/completions accepts a batch; its first prompt names the conversation
    if not isinstance(prompt, str) or leading_prompt_chars <= 0 or len(prompt) < leading_prompt_chars:
        return None
    system = body.get("system")
    system = system if isinstance(system, str) else ""
    return "p:" + _digest([model, system, prompt[:leading_prompt_chars]])


def _messages_key(model: str, messages: list[Any], leading: int, min_chars: int) -> str | None:
    prefix: list[list[Any]] = []
    chars = 0
    for message in messages[: max(leading, 0)]:
        if not isinstance(message, Mapping):
            return None
        role, content = message.get("role"), message.get("content")
        prefix.append([role, content])
        chars += _text_length(content)
        if role == "user":
            break
    if not prefix or chars < min_chars:
        return None
    return "m:" + _digest([model, prefix])


def _text_length(content: Any) -> int:
    """Characters of text in a message's content: a string, or OpenAI content parts."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        texts = (part.get("text") for part in content if isinstance(part, Mapping))
        return sum(len(text) for text in texts if isinstance(text, str))
    return 0


def _digest(value: Any) -> str:
    # sort_keys: equal JSON objects give equal keys whatever order their fields arrived in. ASCII escapes
    # keep lone surrogates (valid in JSON, not in UTF-8) from raising.
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(canonical.encode(), digest_size=_DIGEST_BYTES).hexdigest()


class AffinityTable:
    """Conversation key -> the backend holding its cache. Least recently used first out; an entry not used
    for ``ttl_seconds`` has expired (the backend has most likely evicted that cache by then).

    Holds at most ``max_entries`` keys. Only ``choose`` (on a hit) and ``pin`` count as use. ``now`` is a
    monotonic clock reading and must not go backwards between calls."""

    def __init__(self, *, max_entries: int, ttl_seconds: float) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        if not ttl_seconds > 0:
            raise ValueError(f"ttl_seconds must be positive, not {ttl_seconds}")
        self._max_entries = max_entries
        self._ttl = ttl_seconds
        #: key -> (backend, last used); ordered from least to most recently used
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def choose(self, key: str, candidates: Sequence[str], now: float) -> tuple[str | None, Outcome]:
        """The pinned backend when it is among ``candidates`` (the backends that may take the request now),
        else None and MISS (no live pin) or REPIN (the caller routes as usual and calls ``pin``)."""
        self._expire(now)
        entry = self._entries.get(key)
        if entry is None:
            return None, Outcome.MISS
        backend, _ = entry
        if backend not in candidates:
            return None, Outcome.REPIN
        self._entries[key] = (backend, now)
        self._entries.move_to_end(key)
        return backend, Outcome.HIT

    def pin(self, key: str, backend: str, now: float) -> None:
        """Remember that ``backend`` now holds the cache of ``key``'s conversation."""
        self._entries[key] = (backend, now)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        self._expire(now)

    def pinned(self, key: str, now: float) -> str | None:
        """The backend ``key`` is pinned to, without counting as use (for diagnostics)."""
        entry = self._entries.get(key)
        if entry is None or now - entry[1] >= self._ttl:
            return None
        return entry[0]

    def _expire(self, now: float) -> None:
        # least recently used first, so the expired entries are all at the front
        while self._entries:
            key, (_, used_at) = next(iter(self._entries.items()))
            if now - used_at < self._ttl:
                return
            del self._entries[key]
