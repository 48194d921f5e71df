"""Prometheus metrics: cheap to update on the request path, exposed through prometheus_client.

A ``Metrics`` object lives for the whole process (counters survive reloads, as Prometheus expects of a
counter) and owns its own ``CollectorRegistry`` (never prometheus_client's global one). The ``gatewayd_*``
series are kept here, in plain dicts, because prometheus_client's own ``Counter.labels().inc()`` and
``Histogram.labels().observe()`` cost several times more per request (``bench/bench_metrics.py`` measures
both); at scrape time they are handed to prometheus_client as metric families, beside its standard
``process_*`` and ``python_*`` collectors, and it writes the exposition in the format the scraper asked for
(Prometheus text or OpenMetrics). Gauges are read at scrape time from whatever generations are alive,
through callbacks that each generation registers and removes."""

from __future__ import annotations

import bisect
import os
import resource
from collections.abc import Callable, Iterable, Sequence

import psutil
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

LabelValues = tuple[str, ...]
GaugeSource = Callable[[], Iterable[tuple[LabelValues, float]]]

#: seconds; request latency and time to first token
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: seconds; what the gateway itself adds
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)


def _unit(name: str) -> str:
    """The OpenMetrics unit a family's name ends with (only seconds among gatewayd's)."""
    return "seconds" if name.endswith("_seconds") else ""


class Counter:
    """A counter per label set, kept in a dict: ``inc`` is one lookup and one store (request path)."""

    __slots__ = ("help", "labelnames", "name", "values")

    def __init__(self, name: str, help: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self.values: dict[LabelValues, float] = {}
        if not self.labelnames:  # one series, shown from the start (0 before the first event)
            self.values[()] = 0.0

    def inc(self, labels: LabelValues, amount: float = 1.0) -> None:
        values = self.values
        values[labels] = values.get(labels, 0.0) + amount

    def collect(self) -> Metric:
        family = CounterMetricFamily(self.name, self.help, labels=self.labelnames)
        for labels, value in sorted(self.values.items()):
            family.add_metric(labels, value)
        return family


class Histogram:
    """Bucket counts and a sum per label set: ``observe`` is one bisection and two additions (request
    path); the counts are made cumulative only at scrape time."""

    __slots__ = ("buckets", "help", "labelnames", "le", "name", "series")

    def __init__(self, name: str, help: str, labelnames: Sequence[str], buckets: Sequence[float]) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self.buckets = tuple(buckets)
        #: the buckets' ``le`` label values as prometheus_client writes them ("0.005", "1.0", "+Inf")
        self.le = (*(floatToGoString(bound) for bound in self.buckets), "+Inf")
        #: labels -> [count per bucket (non-cumulative, +Inf last)..., sum]
        self.series: dict[LabelValues, list[float]] = {}
        if not self.labelnames:  # one series, shown from the start
            self.series[()] = [0.0] * (len(self.buckets) + 2)

    def observe(self, labels: LabelValues, value: float) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = [0.0] * (len(self.buckets) + 2)
        series[bisect.bisect_left(self.buckets, value)] += 1  # the first bucket whose bound is >= value
        series[-1] += value

    def collect(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.help, labels=self.labelnames, unit=_unit(self.name))
        for labels, series in sorted(self.series.items()):
            cumulative = 0.0
            buckets: list[tuple[str, float]] = []
            for le, count in zip(self.le, series, strict=False):
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric(labels, buckets, series[-1])
        return family


class Gauge:
    """A gauge read at scrape time from sources registered by live generations (summed per label set)."""

    __slots__ = ("help", "labelnames", "name", "sources")

    def __init__(self, name: str, help: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self.sources: list[GaugeSource] = []

    def collect(self) -> Metric:
        totals: dict[LabelValues, float] = {}
        for source in list(self.sources):
            for labels, value in source():
                totals[labels] = totals.get(labels, 0.0) + value
        family = GaugeMetricFamily(self.name, self.help, labels=self.labelnames, unit=_unit(self.name))
        for labels, value in sorted(totals.items()):
            family.add_metric(labels, value)
        return family


class _Families(Collector):
    """gatewayd's own series, turned into metric families at each scrape."""

    def __init__(self, metrics: Sequence[Counter | Histogram | Gauge]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return [metric.collect() for metric in self._metrics]


class PortableProcessCollector(Collector):
    """prometheus_client's ``process_*`` families for systems without ``/proc`` (macOS), read with psutil:
    CPU time, resident and virtual memory, start time, open and maximum file descriptors."""

    def __init__(self) -> None:
        self._process = psutil.Process()

    def collect(self) -> Iterable[Metric]:
        process = self._process
        with process.oneshot():
            cpu = process.cpu_times()
            memory = process.memory_info()
            started = process.create_time()
            open_fds = process.num_fds()
        max_fds = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return [
            GaugeMetricFamily(
                "process_virtual_memory_bytes", "Virtual memory size in bytes.", value=memory.vms
            ),
            GaugeMetricFamily(
                "process_resident_memory_bytes", "Resident memory size in bytes.", value=memory.rss
            ),
            GaugeMetricFamily(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                value=started,
            ),
            CounterMetricFamily(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
                value=cpu.user + cpu.system,
            ),
            GaugeMetricFamily("process_open_fds", "Number of open file descriptors.", value=open_fds),
            GaugeMetricFamily(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                value=float("inf") if max_fds == resource.RLIM_INFINITY else max_fds,
            ),
        ]


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
        self.jobs = Gauge("gatewayd_jobs", "Jobs in the store, by state.", ("state",))
        self.job_queue_seconds = Histogram(
            "gatewayd_job_queue_seconds",
            "Time from a job's submission to its claim by a worker (each attempt).",
            (),
            LATENCY_BUCKETS,
        )
        self._all = (
            self.requests, self.attempts, self.tokens, self.latency, self.ttft, self.overhead,
            self.in_flight, self.queued, self.backend_up, self.info,
            self.starts, self.swaps, self.group_wait, self.group_queued,
            self.key_requests, self.key_tokens, self.limit_rejections, self.auth_failures,
            self.store_backlog, self.store_written, self.store_dropped, self.store_write_seconds,
            self.jobs, self.job_queue_seconds,
        )  # fmt: skip
        #: what a scrape reads: the standard process_* and python_* families, then gatewayd's
        self.registry = CollectorRegistry(auto_describe=False)
        if os.path.exists("/proc/self/stat"):
            ProcessCollector(registry=self.registry)
        else:
            self.registry.register(PortableProcessCollector())
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.registry.register(_Families(self._all))

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The scrape's body and content type, in the format the ``Accept`` header asks for, negotiated as
        prometheus_client's own handlers do: OpenMetrics 1.0 (ending in ``# EOF``) when it names
        ``application/openmetrics-text``, else Prometheus text 0.0.4."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
