"""Per-key limits: allowed models, a token budget, requests at once, requests and tokens per minute. Pure.

One ``Limiter`` serves the whole process (the gateway factory owns it), so a reload keeps every window;
after a restart the caller rebuilds each key's windows and budget from the usage record with ``restore``.
The caller passes the clock: ``now`` is seconds (wall-clock time, comparable with the usage record's); a
clock that steps back is tolerated (nothing expires early, nothing is lost).

Per key, the limiter holds:

- the times of the requests admitted in the last minute, kept only while the key has an ``rpm`` and never
  more than ``rpm`` of them (the oldest beyond that cannot change a decision);
- the tokens reported in the last minute, merged into one entry per ``TOKEN_BUCKET_SECONDS`` (at most 61
  entries whatever the traffic; an entry expires a minute after the latest tokens merged into it);
- the tokens used in all, for the budget;
- the requests in flight and the tokens estimated for them at admission. Those count against ``tpm`` and the
  budget until ``finish`` replaces them with the tokens the backend reported, so a burst of concurrent
  requests cannot overrun either limit before the first of them ends.

Windows are sliding: a request or token counts while ``now - time < WINDOW_SECONDS``.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from gatewayd.errors import BudgetExceeded, ModelNotAllowed, RateLimited

#: the rate windows' length: "per minute"
WINDOW_SECONDS = 60.0
#: tokens reported within one such slot share a window entry, which bounds the window's length
TOKEN_BUCKET_SECONDS = 1.0
#: the Retry-After for a refusal that lasts until a request in flight ends (its end cannot be known)
IN_FLIGHT_RETRY_AFTER_SECONDS = 1.0
#: the usual ratio for English text and code with current tokenizers
CHARS_PER_TOKEN = 4

_LATEST = ":latest"


def estimate_tokens(text_chars: int) -> int:
    """Tokens in ``text_chars`` characters of text, about ``CHARS_PER_TOKEN`` to a token; at least 1."""
    return max(1, -(-text_chars // CHARS_PER_TOKEN))


def format_duration(seconds: float) -> str:
    """A duration as OpenAI writes it in ``x-ratelimit-reset-*`` (Go's style, to the millisecond):
    "0s", "20ms", "1.5s", "59.596s", "1m0s", "1m30.5s". Negative durations are "0s"."""
    millis = round(max(seconds, 0.0) * 1000)
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    minutes, rest = divmod(millis, 60_000)
    text = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{minutes}m{text}" if minutes else text


def _base_model(name: str) -> str:
    return name.removesuffix(_LATEST)


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """What one key may do; None = no limit. ``name`` (the key's human name) is used in messages when set,
    else ``key_id``."""

    key_id: str
    #: allowed models; a name matches exactly, and "name" and "name:latest" are the same model
    models: tuple[str, ...] | None = None
    #: requests per minute, tokens per minute, requests at once, tokens in all
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    budget_tokens: int | None = None
    name: str | None = None

    def allows(self, model: str) -> bool:
        """Whether the key may use ``model`` (also for filtering model lists)."""
        if self.models is None:
            return True
        wanted = _base_model(model)
        return any(_base_model(allowed) == wanted for allowed in self.models)

    @property
    def label(self) -> str:
        return f"key '{self.name or self.key_id}'"


@dataclass(slots=True)
class Grant:
    """An admitted request. Pass it to ``Limiter.finish`` exactly when the request ends, whatever the
    outcome (a ``finally``): until then it holds a concurrency slot and its estimated tokens. ``headers``
    (``x-ratelimit-*``, lower-case names) belong on the response."""

    key_id: str
    serial: int
    admitted_at: float
    estimated_tokens: int
    headers: dict[str, str] = field(default_factory=dict)


class _KeyState:
    """One key's windows, budget use and requests in flight."""

    __slots__ = ("budget_used", "in_flight", "requests", "reserved", "tokens", "tokens_in_window")

    def __init__(self) -> None:
        #: admission times, oldest first (only while the key has an rpm)
        self.requests: deque[float] = deque()
        #: (latest time, tokens) per token bucket, oldest first; tokens_in_window is their sum
        self.tokens: deque[tuple[float, int]] = deque()
        self.tokens_in_window = 0
        self.budget_used = 0
        #: grant serial -> tokens estimated at admission; reserved is their sum
        self.in_flight: dict[int, int] = {}
        self.reserved = 0

    def expire(self, now: float) -> None:
        requests, tokens = self.requests, self.tokens
        while requests and now - requests[0] >= WINDOW_SECONDS:
            requests.popleft()
        while tokens and now - tokens[0][0] >= WINDOW_SECONDS:
            self.tokens_in_window -= tokens.popleft()[1]

    def add_request(self, now: float) -> None:
        # a clock that stepped back must not unsort the window
        self.requests.append(max(now, self.requests[-1]) if self.requests else now)

    def add_tokens(self, now: float, amount: int) -> None:
        tokens = self.tokens
        if tokens:
            last_time, last_amount = tokens[-1]
            if math.floor(now / TOKEN_BUCKET_SECONDS) <= math.floor(last_time / TOKEN_BUCKET_SECONDS):
                tokens[-1] = (max(now, last_time), last_amount + amount)
                self.tokens_in_window += amount
                return
        tokens.append((now, amount))
        self.tokens_in_window += amount

    def tokens_free_in(self, excess: int, now: float) -> float:
        """Seconds until ``excess`` tokens have left the window; at least ``IN_FLIGHT_RETRY_AFTER_SECONDS``
        when expiry alone cannot free them (the rest is held by requests in flight)."""
        freed = 0
        for at, amount in self.tokens:
            freed += amount
            if freed >= excess:
                return max(at + WINDOW_SECONDS - now, 0.0)
        emptied = self.tokens[-1][0] + WINDOW_SECONDS - now if self.tokens else 0.0
        return max(emptied, IN_FLIGHT_RETRY_AFTER_SECONDS)


def _retry_text(seconds: float) -> str:
    return f"retry in {max(1, math.ceil(seconds))} s"


class Limiter:
    """Every key's limits, for the whole process. Not thread-safe: call it from the event loop only.

    Memory: one small record per key seen (dropped by ``forget``), each bounded as the module says, plus
    one entry per request in flight."""

    def __init__(self) -> None:
        self._keys: dict[str, _KeyState] = {}
        self._serials = itertools.count(1)

    def admit(self, policy: KeyPolicy, model: str, now: float, *, estimated_tokens: int = 0) -> Grant:
        """Admit one request for ``model`` with ``estimated_tokens`` (its prompt, estimated) or refuse it.

        The checks, in order: the model is allowed (else ``ModelNotAllowed``); the budget has room for the
        estimate, counting the tokens in flight, and is not spent (else ``BudgetExceeded``); a concurrency
        slot is free; fewer than ``rpm`` requests in the last minute; the tokens of the last minute plus
        those in flight plus the estimate (at least 1) stay within ``tpm`` (else ``RateLimited``, with
        ``retry_after`` set when waiting can help). Every refusal is free: it counts nowhere.

        On success the request counts in the rpm window at once and holds a concurrency slot and its
        estimate until ``finish``."""
        if not policy.allows(model):
            allowed = ", ".join(policy.models or ()) or "none"
            raise ModelNotAllowed(f"{policy.label} may not use model '{model}' (it may use: {allowed})")
        state = self._keys.get(policy.key_id)
        if state is None:
            state = self._keys[policy.key_id] = _KeyState()
        state.expire(now)
        estimated_tokens = max(estimated_tokens, 0)
        needed = max(estimated_tokens, 1)
        budget = policy.budget_tokens
        if budget is not None and state.budget_used + state.reserved + needed > budget:
            message = self._budget_message(policy, state, estimated_tokens)
            raise BudgetExceeded(message, headers=_headers(policy, state, now))
        limit = policy.max_concurrency
        if limit is not None and len(state.in_flight) >= limit:
            raise RateLimited(
                f"{policy.label} already has {len(state.in_flight)} requests in flight, its limit; "
                + _retry_text(IN_FLIGHT_RETRY_AFTER_SECONDS),
                limit="concurrency",
                retry_after=IN_FLIGHT_RETRY_AFTER_SECONDS,
                headers=_refusal_headers(policy, state, now, IN_FLIGHT_RETRY_AFTER_SECONDS),
            )
        if policy.rpm is not None:
            self._check_rpm(policy, policy.rpm, state, now)
        if policy.tpm is not None:
            self._check_tpm(policy, policy.tpm, state, now, needed)
        serial = next(self._serials)
        state.in_flight[serial] = estimated_tokens
        state.reserved += estimated_tokens
        if policy.rpm is not None:
            state.add_request(now)
        return Grant(policy.key_id, serial, now, estimated_tokens, _headers(policy, state, now))

    def finish(self, grant: Grant, tokens: int, now: float) -> None:
        """The request of ``grant`` ended having used ``tokens`` (as reported, or estimated when the backend
        reported none): free its slot, drop its estimate, count ``tokens`` in the tpm window and the budget.
        Idempotent: a grant already finished, or of a key forgotten since, changes nothing."""
        state = self._keys.get(grant.key_id)
        if state is None:
            return
        estimated = state.in_flight.pop(grant.serial, None)
        if estimated is None:
            return
        state.reserved -= estimated
        tokens = max(tokens, 0)
        state.budget_used += tokens
        state.expire(now)
        state.add_tokens(now, tokens)

    def headers(self, policy: KeyPolicy, now: float) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers for the key's current state, for the limits it has (requests
        for ``rpm``, tokens for ``tpm``; none otherwise)."""
        state = self._keys.get(policy.key_id)
        if state is None:
            return _headers(policy, _KeyState(), now)
        state.expire(now)
        return _headers(policy, state, now)

    def restore(self, key_id: str, events: Iterable[tuple[float, int]], budget_used: int) -> None:
        """After a restart: the key's recent requests as (time, tokens), from the usage record, and the
        tokens it used in all. Replaces the key's windows and budget use (the record is the truth); keeps
        its requests in flight. Events older than a minute are dropped on the next use."""
        state = self._keys.get(key_id)
        if state is None:
            state = self._keys[key_id] = _KeyState()
        state.requests.clear()
        state.tokens.clear()
        state.tokens_in_window = 0
        for at, tokens in sorted(events):
            state.add_request(at)
            state.add_tokens(at, max(tokens, 0))
        state.budget_used = max(budget_used, 0)

    def forget(self, key_id: str) -> None:
        """Drop everything about a revoked key. Its grants still in flight finish as no-ops."""
        self._keys.pop(key_id, None)

    def in_flight(self, key_id: str) -> int:
        """Requests of the key admitted and not finished yet."""
        state = self._keys.get(key_id)
        return 0 if state is None else len(state.in_flight)

    def budget_used(self, key_id: str) -> int:
        """Tokens the key has used in all (reported by finished requests, or restored)."""
        state = self._keys.get(key_id)
        return 0 if state is None else state.budget_used

    @staticmethod
    def _budget_message(policy: KeyPolicy, state: _KeyState, estimated: int) -> str:
        message = (
            f"{policy.label} has used {state.budget_used} of its budget of {policy.budget_tokens} tokens"
        )
        if state.reserved:
            message += f", and requests in flight hold about {state.reserved} more"
        if estimated and state.budget_used + state.reserved < (policy.budget_tokens or 0):
            message += f"; this request needs about {estimated}"
        return message

    @staticmethod
    def _check_rpm(policy: KeyPolicy, rpm: int, state: _KeyState, now: float) -> None:
        requests = state.requests
        while len(requests) > max(rpm, 0):  # the rpm lowered, or restored: only the newest rpm matter
            requests.popleft()
        if len(requests) < rpm:
            return
        retry_after = max(requests[0] + WINDOW_SECONDS - now, 0.0) if requests else None
        retry = f"; {_retry_text(retry_after)}" if retry_after is not None else ""
        raise RateLimited(
            f"{policy.label} is over its limit of {rpm} requests per minute{retry}",
            limit="requests",
            retry_after=retry_after,
            headers=_refusal_headers(policy, state, now, retry_after),
        )

    @staticmethod
    def _check_tpm(policy: KeyPolicy, tpm: int, state: _KeyState, now: float, needed: int) -> None:
        committed = state.tokens_in_window + state.reserved
        if committed + needed <= tpm:
            return
        if needed > tpm:
            raise RateLimited(
                f"the request needs about {needed} tokens, more than {policy.label} may use in a minute "
                f"({tpm}); send a shorter one",
                limit="tokens",
                headers=_headers(policy, state, now),
            )
        retry_after = state.tokens_free_in(committed + needed - tpm, now)
        held = " or held by requests in flight" if state.reserved else ""
        raise RateLimited(
            f"{policy.label} is over its limit of {tpm} tokens per minute ({committed} used in the last "
            f"minute{held}, about {needed} requested); {_retry_text(retry_after)}",
            limit="tokens",
            retry_after=retry_after,
            headers=_refusal_headers(policy, state, now, retry_after),
        )


def _headers(policy: KeyPolicy, state: _KeyState, now: float) -> dict[str, str]:
    """``state`` already expired to ``now``. Reset = the time until the window is back to its full
    allowance, as OpenAI defines it."""
    headers: dict[str, str] = {}
    if policy.rpm is not None:
        requests = state.requests
        headers["x-ratelimit-limit-requests"] = str(policy.rpm)
        headers["x-ratelimit-remaining-requests"] = str(max(policy.rpm - len(requests), 0))
        reset = requests[-1] + WINDOW_SECONDS - now if requests else 0.0
        headers["x-ratelimit-reset-requests"] = format_duration(reset)
    if policy.tpm is not None:
        tokens = state.tokens
        headers["x-ratelimit-limit-tokens"] = str(policy.tpm)
        remaining = policy.tpm - state.tokens_in_window - state.reserved
        headers["x-ratelimit-remaining-tokens"] = str(max(remaining, 0))
        reset = tokens[-1][0] + WINDOW_SECONDS - now if tokens else 0.0
        headers["x-ratelimit-reset-tokens"] = format_duration(reset)
    return headers


def _refusal_headers(
    policy: KeyPolicy, state: _KeyState, now: float, retry_after: float | None
) -> dict[str, str]:
    """``_headers`` plus ``retry-after-ms``, which the OpenAI SDKs read before Retry-After (whole seconds)."""
    headers = _headers(policy, state, now)
    if retry_after is not None:
        headers["retry-after-ms"] = str(math.ceil(retry_after * 1000))
    return headers
