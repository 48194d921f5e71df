"""Prometheus metrics in the text exposition format, kept cheap on the request path.

A ``Metrics`` object lives for the whole process (counters survive reloads, as Prometheus expects of a
counter); gauges are read at scrape time from whatever generations are alive, through callbacks that each
generation registers and removes."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Sequence

LabelValues = tuple[str, ...]
GaugeSource = Callable[[], Iterable[tuple[LabelValues, float]]]

#: seconds; request latency and time to first token
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: seconds; what the gateway itself adds
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: LabelValues, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    __slots__ = ("help", "labelnames", "name", "values")

    def __init__(self, name: str, help: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self.values: dict[LabelValues, float] = {}

    def inc(self, labels: LabelValues, amount: float = 1.0) -> None:
        values = self.values
        values[labels] = values.get(labels, 0.0) + amount

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for labels, value in sorted(self.values.items()):
            yield f"{self.name}{_labels(self.labelnames, labels)} {_number(value)}"


class Histogram:
    __slots__ = ("buckets", "help", "labelnames", "name", "series")

    def __init__(self, name: str, help: str, labelnames: Sequence[str], buckets: Sequence[float]) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self.buckets = tuple(buckets)
        #: labels -> [count per bucket (non-cumulative, +Inf last)..., sum]
        self.series: dict[LabelValues, list[float]] = {}

    def observe(self, labels: LabelValues, value: float) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [0.0] * (len(self.buckets) + 2)
        series[bisect.bisect_left(self.buckets, value)] += 1
        series[-1] += value

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for labels, series in sorted(self.series.items()):
            cumulative = 0.0
            for bound, count in zip((*self.buckets, math.inf), series, strict=False):
                cumulative += count
                le = f'le="{_number(bound)}"'
                yield f"{self.name}_bucket{_labels(self.labelnames, labels, le)} {_number(cumulative)}"
            yield f"{self.name}_sum{_labels(self.labelnames, labels)} {_number(series[-1])}"
            yield f"{self.name}_count{_labels(self.labelnames, labels)} {_number(cumulative)}"


class Gauge:
    """A gauge read at scrape time from sources registered by live generations (summed per label set)."""

    __slots__ = ("help", "labelnames", "name", "sources")

    def __init__(self, name: str, help: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self.sources: list[GaugeSource] = []

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"
        totals: dict[LabelValues, float] = {}
        for source in list(self.sources):
            for labels, value in source():
                totals[labels] = totals.get(labels, 0.0) + value
        for labels, value in sorted(totals.items()):
            yield f"{self.name}{_labels(self.labelnames, labels)} {_number(value)}"


class Metrics:
    """Every gatewayd_* metric. Names and labels are documented in the README."""

    def __init__(self) -> None:
        self.requests = Counter(
            "gatewayd_requests_total",
            "Requests answered, by model, backend and HTTP status.",
            ("model", "backend", "status"),
        )
        self.attempts = Counter(
            "gatewayd_upstream_attempts_total",
            "Upstream attempts, by backend and outcome (ok, or the error that moved the request on).",
            ("backend", "outcome"),
        )
        self.tokens = Counter(
            "gatewayd_tokens_total",
            "Tokens reported by backends, by model and kind (prompt, completion).",
            ("model", "kind"),
        )
        self.latency = Histogram(
            "gatewayd_request_duration_seconds",
            "Time from request received to last byte sent, by model.",
            ("model",),
            LATENCY_BUCKETS,
        )
        self.ttft = Histogram(
            "gatewayd_time_to_first_token_seconds",
            "Time from request received to the first body byte sent to the client, by model.",
            ("model",),
            LATENCY_BUCKETS,
        )
        self.overhead = Histogram(
            "gatewayd_overhead_seconds",
            "Time the gateway itself spends on a request outside the upstream call.",
            (),
            OVERHEAD_BUCKETS,
        )
        self.in_flight = Gauge(
            "gatewayd_in_flight_requests", "Requests being served, by backend.", ("backend",)
        )
        self.queued = Gauge(
            "gatewayd_queue_depth", "Requests waiting for a backend slot, by backend.", ("backend",)
        )
        self.backend_up = Gauge(
            "gatewayd_backend_up",
            "1 when the backend is routable (up, degraded or not yet probed), else 0.",
            ("backend", "state"),
        )
        self.info = Gauge("gatewayd_generation", "Generations alive in this process, by state.", ("state",))
        self.starts = Counter(
            "gatewayd_backend_starts_total",
            "Starts (or wakes) of servers gatewayd runs, by backend and outcome (ok, failed).",
            ("backend", "outcome"),
        )
        self.swaps = Counter(
            "gatewayd_group_swaps_total", "Members started in an exclusive group, by group.", ("group",)
        )
        self.group_wait = Histogram(
            "gatewayd_group_wait_seconds",
            "Time a request waited for its exclusive group's scheduler, by group and backend (model).",
            ("group", "backend"),
            LATENCY_BUCKETS,
        )
        self.group_queued = Gauge(
            "gatewayd_group_queue_depth",
            "Requests waiting for an exclusive group, by group and backend (model).",
            ("group", "backend"),
        )
        self.key_requests = Counter(
            "gatewayd_key_requests_total",
            "Requests by API key (its name) and HTTP status.",
            ("key", "status"),
        )
        self.key_tokens = Counter(
            "gatewayd_key_tokens_total", "Tokens (prompt and completion) used, by API key name.", ("key",)
        )
        self.limit_rejections = Counter(
            "gatewayd_limit_rejections_total",
            "Requests refused by a key's limits, by key name and limit "
            "(rate_limit_exceeded, budget_exceeded, model_not_allowed).",
            ("key", "limit"),
        )
        self.auth_failures = Counter(
            "gatewayd_auth_failures_total", "Requests refused for a missing, unknown or revoked key.", ()
        )
        self.store_backlog = Gauge(
            "gatewayd_usage_backlog", "Usage records waiting to be written to the store.", ()
        )
        self.store_written = Gauge(
            "gatewayd_usage_written", "Usage records written to the store by this process.", ()
        )
        self.store_dropped = Gauge(
            "gatewayd_usage_dropped", "Usage records dropped because the buffer was full.", ()
        )
        self.store_write_seconds = Gauge(
            "gatewayd_usage_last_write_seconds", "How long the last batch write to the store took.", ()
        )
        self._all = (
            self.requests, self.attempts, self.tokens, self.latency, self.ttft, self.overhead,
            self.in_flight, self.queued, self.backend_up, self.info,
            self.starts, self.swaps, self.group_wait, self.group_queued,
            self.key_requests, self.key_tokens, self.limit_rejections, self.auth_failures,
            self.store_backlog, self.store_written, self.store_dropped, self.store_write_seconds,
        )  # fmt: skip

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._all:
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
