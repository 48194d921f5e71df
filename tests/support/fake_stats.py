"""What the fake model server saw: per-path request counts, concurrency, last bodies, disconnects."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Stats:
    """A snapshot. Paths are request paths without the query (``/v1/chat/completions``); ``/_fake/*``
    control requests are never counted."""

    #: requests received, per path (faulted and failed ones included)
    requests: Mapping[str, int] = field(default_factory=dict)
    #: model requests (chat, completions, embeddings, generate) being answered now; probes not counted
    in_flight: int = 0
    #: the highest ``in_flight`` since start or the last reset
    peak_in_flight: int = 0
    #: the last request body per path: parsed JSON, the raw text if it was not JSON, None if empty
    last_body: Mapping[str, Any] = field(default_factory=dict)
    #: the last request's headers per path, names lower-cased
    last_headers: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    #: requests whose client went away before the answer was complete (stream or hang cut short)
    disconnects: int = 0

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    def count(self, path: str) -> int:
        return self.requests.get(path, 0)

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "last_body": dict(self.last_body),
            "last_headers": {path: dict(headers) for path, headers in self.last_headers.items()},
            "disconnects": self.disconnects,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Stats:
        return cls(
            requests=dict(data["requests"]),
            in_flight=data["in_flight"],
            peak_in_flight=data["peak_in_flight"],
            last_body=dict(data["last_body"]),
            last_headers={path: dict(headers) for path, headers in data["last_headers"].items()},
            disconnects=data["disconnects"],
        )


class StatsRecorder:
    """The mutable counters behind ``Stats``. Lives on the server's event loop (not thread-safe)."""

    def __init__(self) -> None:
        self._requests: Counter[str] = Counter()
        self._in_flight = 0
        self._peak_in_flight = 0
        self._last_body: dict[str, Any] = {}
        self._last_headers: dict[str, dict[str, str]] = {}
        self._disconnects = 0

    def record_request(self, path: str, body: Any, headers: Mapping[str, str]) -> None:
        self._requests[path] += 1
        self._last_body[path] = body
        self._last_headers[path] = {name.lower(): value for name, value in headers.items()}

    def enter(self) -> None:
        self._in_flight += 1
        self._peak_in_flight = max(self._peak_in_flight, self._in_flight)

    def leave(self) -> None:
        self._in_flight -= 1

    def record_disconnect(self) -> None:
        self._disconnects += 1

    def reset(self) -> None:
        """Forget everything but the requests still in flight (the peak restarts from them)."""
        self._requests.clear()
        self._last_body.clear()
        self._last_headers.clear()
        self._disconnects = 0
        self._peak_in_flight = self._in_flight

    def snapshot(self) -> Stats:
        return Stats(
            requests=dict(self._requests),
            in_flight=self._in_flight,
            peak_in_flight=self._peak_in_flight,
            last_body=dict(self._last_body),
            last_headers={path: dict(headers) for path, headers in self._last_headers.items()},
            disconnects=self._disconnects,
        )
