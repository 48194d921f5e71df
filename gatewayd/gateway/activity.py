"""What the status page charts: per-second request counts and latency for the last few minutes, each
model's generation speed over them, and the last few requests.

One ``Activity`` lives as long as the gateway factory (the process), so a reload keeps its history. It is
fed once per finished inference request and read by ``GET /status/activity``. It holds no key, header or
body: only the time, path, model, backend, status and timings of each request.

Memory is bounded whatever the load: one slot per second of the window (a fixed latency histogram each,
allocated on the first request of that second, and the completion tokens and generation time of each model
that answered in that second) and ``recent_requests`` entries.

Generation speed is completion tokens per second of generating them, as the backend counted the tokens:
for a stream, the time from its first body byte to its last (``latency - ttft``: the tokens after the
first came in that time); for an answer sent in one piece, or a stream of a single token, the whole
latency. A model's figure over the window is its tokens divided by its generation time, summed over its
requests (so a long answer weighs more than a short one, and concurrent requests do not add up: it is the
speed one client sees). Failed requests are left out, and so are those whose backend reported no token
count (an OpenAI client's stream to an OpenAI-compatible backend without ``stream_options.include_usage``)."""

from __future__ import annotations

import bisect
import itertools
import math
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

#: seconds of per-second history kept
DEFAULT_WINDOW_SECONDS = 300
#: finished requests listed
DEFAULT_RECENT_REQUESTS = 50
#: a model name longer than this is cut (clients choose the name)
MAX_MODEL_CHARS = 200
#: seconds; upper bounds of the latency histogram: 1 ms to ~30 min in steps of 2**(1/4) (each step ~19 %)
LATENCY_BOUNDS_SECONDS: tuple[float, ...] = tuple(0.001 * 2 ** (i / 4) for i in range(84))
#: statuses counted as errors in the per-second series (the gateway's or a backend's failures)
ERROR_STATUS_MIN = 500
#: statuses whose completion tokens are not counted for the generation speed
FAILED_STATUS_MIN = 400


class RecentRequest(NamedTuple):
    """One finished request as the status page lists it (a tuple: built on the request path)."""

    at: float  #: wall-clock seconds when it finished
    api: str  #: the endpoint as the access log names it, e.g. openai.chat
    model: str
    backend: str
    status: int
    stream: bool
    latency_seconds: float
    ttft_seconds: float | None

    def to_json(self) -> dict[str, object]:
        return {
            "time": round(self.at, 3),
            "api": self.api,
            "model": self.model,
            "backend": self.backend,
            "status": self.status,
            "stream": self.stream,
            "latency_ms": round(self.latency_seconds * 1000, 2),
            "ttft_ms": None if self.ttft_seconds is None else round(self.ttft_seconds * 1000, 2),
        }


class _Second:
    """The requests that finished within one wall-clock second."""

    __slots__ = ("counts", "errors", "generation", "high", "low", "requests", "second")

    def __init__(self, second: int) -> None:
        self.second = second
        self.requests = 0
        self.errors = 0
        self.low = math.inf
        self.high = 0.0
        #: requests per latency bucket (LATENCY_BOUNDS_SECONDS, then one past the last bound)
        self.counts: list[int] | None = None
        #: model -> [completion tokens, seconds spent generating them], for requests that reported tokens
        self.generation: dict[str, list[float]] | None = None

    def add(self, latency_seconds: float, error: bool) -> None:
        self.requests += 1
        if error:
            self.errors += 1
        if latency_seconds < self.low:
            self.low = latency_seconds
        if latency_seconds > self.high:
            self.high = latency_seconds
        counts = self.counts
        if counts is None:
            counts = self.counts = [0] * (len(LATENCY_BOUNDS_SECONDS) + 1)
        counts[bisect.bisect_left(LATENCY_BOUNDS_SECONDS, latency_seconds)] += 1

    def quantile(self, q: float) -> float | None:
        """Seconds; the geometric middle of the bucket holding the q-quantile, kept within the second's
        lowest and highest latency (so it is exact when the second saw one request). None when empty."""
        if self.counts is None:
            return None
        rank = max(1, math.ceil(q * self.requests))
        index = next(i for i, seen in enumerate(itertools.accumulate(self.counts)) if seen >= rank)
        upper = LATENCY_BOUNDS_SECONDS[min(index, len(LATENCY_BOUNDS_SECONDS) - 1)]
        lower = LATENCY_BOUNDS_SECONDS[index - 1] if index > 0 else upper / 2
        return min(max(math.sqrt(lower * upper), self.low), self.high)


class Activity:
    """Per-second counts and latency quantiles over a sliding window, and a ring of recent requests.

    Not thread-safe: fed and read on the gateway's event loop only. ``clock`` returns wall-clock seconds
    (injected by tests)."""

    def __init__(
        self,
        *,
        window_seconds: int = DEFAULT_WINDOW_SECONDS,
        recent_requests: int = DEFAULT_RECENT_REQUESTS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if window_seconds < 1 or recent_requests < 1:
            raise ValueError("window_seconds and recent_requests must be at least 1")
        self.window_seconds = window_seconds
        self._clock = clock
        self._seconds: list[_Second | None] = [None] * window_seconds
        self._recent: deque[RecentRequest] = deque(maxlen=recent_requests)

    def record(
        self,
        api: str,
        model: str,
        backend: str,
        status: int,
        stream: bool,
        latency_seconds: float,
        ttft_seconds: float | None,
        completion_tokens: int = 0,
    ) -> None:
        """Count one finished request (O(1); called on the request path). ``completion_tokens`` is what
        the backend reported (0 when it reported nothing)."""
        now = self._clock()
        second = int(now)
        index = second % self.window_seconds
        slot = self._seconds[index]
        if slot is None or slot.second != second:
            slot = self._seconds[index] = _Second(second)
        slot.add(latency_seconds, status >= ERROR_STATUS_MIN)
        if len(model) > MAX_MODEL_CHARS:
            model = model[:MAX_MODEL_CHARS]
        if completion_tokens > 0 and status < FAILED_STATUS_MIN:
            seconds = latency_seconds  # see the module's docstring
            if stream and completion_tokens > 1 and ttft_seconds is not None:
                after_first_byte = latency_seconds - ttft_seconds
                if after_first_byte > 0:
                    seconds = after_first_byte
            generation = slot.generation
            if generation is None:
                generation = slot.generation = {}
            totals = generation.get(model)
            if totals is None:
                generation[model] = [completion_tokens, seconds]
            else:
                totals[0] += completion_tokens
                totals[1] += seconds
        self._recent.append(
            RecentRequest(now, api, model, backend, status, stream, latency_seconds, ttft_seconds)
        )

    def snapshot(self) -> dict[str, object]:
        """JSON for /status/activity: ``series`` holds one value per second for the last ``window_seconds``
        complete seconds (``start`` is the first one's epoch second; the second in progress is left out, so
        the last value does not dip), latencies in milliseconds (None for a second without requests);
        ``models`` gives each model's generation speed over the same window, the second in progress
        included (a request shows as soon as it has finished); ``recent`` lists the last requests, newest
        first."""
        end = int(self._clock())  # the second in progress, excluded
        start = end - self.window_seconds
        requests: list[int] = []
        errors: list[int] = []
        p50: list[float | None] = []
        p95: list[float | None] = []
        for second in range(start, end):
            slot = self._seconds[second % self.window_seconds]
            if slot is None or slot.second != second:
                slot = None
            requests.append(slot.requests if slot else 0)
            errors.append(slot.errors if slot else 0)
            p50.append(_ms(slot.quantile(0.5)) if slot else None)
            p95.append(_ms(slot.quantile(0.95)) if slot else None)
        return {
            "window_seconds": self.window_seconds,
            "series": {
                "start": start,
                "step_seconds": 1,
                "requests": requests,
                "errors": errors,
                "latency_p50_ms": p50,
                "latency_p95_ms": p95,
            },
            "models": self._generation_speeds(start + 1, end),
            "recent": [entry.to_json() for entry in reversed(self._recent)],
        }

    def _generation_speeds(self, first: int, last: int) -> dict[str, dict[str, float | None]]:
        """Per model, over the seconds ``first`` to ``last`` included: completion tokens, the seconds spent
        generating them and their quotient, tokens per second."""
        totals: dict[str, list[float]] = {}
        for second in range(first, last + 1):
            slot = self._seconds[second % self.window_seconds]
            if slot is None or slot.second != second or slot.generation is None:
                continue
            for model, (tokens, seconds) in slot.generation.items():
                total = totals.setdefault(model, [0.0, 0.0])
                total[0] += tokens
                total[1] += seconds
        return {
            model: {
                "completion_tokens": int(tokens),
                "generation_seconds": round(seconds, 3),
                "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else None,
            }
            for model, (tokens, seconds) in sorted(totals.items())
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)
