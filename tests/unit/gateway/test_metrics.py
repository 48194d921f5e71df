"""gatewayd's metrics as a scraper reads them: Prometheus text and OpenMetrics written by prometheus_client,
parsed back with its parsers; counters, histograms, scrape-time gauges and the standard process_* and
python_* families."""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.registry import Collector

from gatewayd.gateway.metrics import (
    Counter,
    Gauge,
    GaugeSource,
    Histogram,
    LabelValues,
    Metrics,
    PortableProcessCollector,
)

OPENMETRICS_ACCEPT = (  # what Prometheus 2.x sends
    "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)
# a family's name as the text parser gives it (counters without _total), its type and label names
FAMILIES = {
    "gatewayd_requests": ("counter", ("model", "backend", "status")),
    "gatewayd_upstream_attempts": ("counter", ("backend", "outcome")),
    "gatewayd_tokens": ("counter", ("model", "kind")),
    "gatewayd_request_duration_seconds": ("histogram", ("model",)),
    "gatewayd_time_to_first_token_seconds": ("histogram", ("model",)),
    "gatewayd_overhead_seconds": ("histogram", ()),
    "gatewayd_in_flight_requests": ("gauge", ("backend",)),
    "gatewayd_queue_depth": ("gauge", ("backend",)),
    "gatewayd_backend_up": ("gauge", ("backend", "state")),
    "gatewayd_generation": ("gauge", ("state",)),
    "gatewayd_auth_failures": ("counter", ()),
}
STANDARD_FAMILIES = {
    "process_cpu_seconds": "counter",
    "process_resident_memory_bytes": "gauge",
    "process_virtual_memory_bytes": "gauge",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
    "process_start_time_seconds": "gauge",
    "python_info": "gauge",
    "python_gc_collections": "counter",
}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class _One(Collector):
    def __init__(self, metric: Counter | Histogram | Gauge) -> None:
        self.metric = metric

    def collect(self) -> list[Metric]:
        return [self.metric.collect()]


def scraped(metric: Counter | Histogram | Gauge) -> Metric:
    """The metric written as Prometheus text by prometheus_client and parsed back."""
    registry = CollectorRegistry()
    registry.register(_One(metric))
    [family] = parse_text(generate_latest(registry).decode())
    return family


def samples(family: Metric) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value for s in family.samples}


def constant(labels: LabelValues, value: float = 1.0) -> GaugeSource:
    return lambda: [(labels, value)]


def exercised() -> Metrics:
    metrics = Metrics()
    metrics.requests.inc(("m", "a", "200"))
    metrics.attempts.inc(("a", "ok"))
    metrics.tokens.inc(("m", "prompt"), 3)
    metrics.latency.observe(("m",), 0.2)
    metrics.ttft.observe(("m",), 0.1)
    metrics.overhead.observe((), 0.0003)
    for gauge, labels in (
        (metrics.in_flight, ("a",)),
        (metrics.queued, ("a",)),
        (metrics.backend_up, ("a", "up")),
        (metrics.info, ("serving",)),
    ):
        gauge.sources.append(constant(labels))
    return metrics


def test_a_counter_is_scraped_with_its_help_type_and_samples() -> None:
    counter = Counter("x_total", "Things.", ("model", "status"))
    counter.inc(("b", "200"))
    counter.inc(("a", "500"), 2.5)
    counter.inc(("b", "200"))
    family = scraped(counter)
    assert (family.name, family.type, family.documentation) == ("x", "counter", "Things.")
    assert samples(family) == {
        ("x_total", frozenset({("model", "a"), ("status", "500")})): 2.5,
        ("x_total", frozenset({("model", "b"), ("status", "200")})): 2.0,
    }


def test_label_values_survive_escaping() -> None:
    counter = Counter("x_total", "Things.", ("model",))
    name = 'we"ird\\na\nme'
    counter.inc((name,))
    assert [s.labels for s in scraped(counter).samples] == [{"model": name}]


def test_a_histogram_is_scraped_with_cumulative_buckets_sum_and_count() -> None:
    histogram = Histogram("h_seconds", "Durations.", ("model",), (0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(("m",), value)
    family = scraped(histogram)
    assert family.type == "histogram"
    assert samples(family) == {
        ("h_seconds_bucket", frozenset({("model", "m"), ("le", "0.1")})): 2,
        ("h_seconds_bucket", frozenset({("model", "m"), ("le", "1.0")})): 3,  # the usual form: 1.0
        ("h_seconds_bucket", frozenset({("model", "m"), ("le", "+Inf")})): 4,
        ("h_seconds_sum", frozenset({("model", "m")})): 3.65,
        ("h_seconds_count", frozenset({("model", "m")})): 4,
    }


def test_unlabelled_series_are_there_before_the_first_event() -> None:
    histogram = Histogram("o_seconds", "Overhead.", (), (0.001,))
    assert samples(scraped(histogram)) == {
        ("o_seconds_bucket", frozenset({("le", "0.001")})): 0,
        ("o_seconds_bucket", frozenset({("le", "+Inf")})): 0,
        ("o_seconds_sum", frozenset()): 0,
        ("o_seconds_count", frozenset()): 0,
    }
    histogram.observe((), 0.002)
    assert samples(scraped(histogram))[("o_seconds_count", frozenset())] == 1
    assert samples(scraped(Counter("f_total", "Failures.", ()))) == {("f_total", frozenset()): 0}


def test_a_gauge_sums_its_sources_at_scrape_time() -> None:
    gauge = Gauge("g", "Live.", ("backend",))
    values = {"a": 1.0}
    gauge.sources.append(lambda: [(("a",), values["a"])])
    gauge.sources.append(lambda: [(("a",), 2.0), (("b",), 0.0)])
    assert samples(scraped(gauge)) == {
        ("g", frozenset({("backend", "a")})): 3,
        ("g", frozenset({("backend", "b")})): 0,
    }
    values["a"] = 5.0
    assert samples(scraped(gauge))[("g", frozenset({("backend", "a")}))] == 7


def test_a_gauge_without_sources_has_no_samples() -> None:
    family = scraped(Gauge("g", "Live.", ("backend",)))
    assert (family.type, family.samples) == ("gauge", [])


def check_families(families: list[Metric]) -> None:
    by_name = {family.name: family for family in families}
    for name, (kind, labelnames) in FAMILIES.items():
        family = by_name[name]
        assert family.type == kind, name
        assert family.documentation, name
        assert family.samples, f"no sample for {name}"
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == set(labelnames), sample
    for name, kind in STANDARD_FAMILIES.items():
        assert by_name[name].type == kind, name
        assert by_name[name].samples, name


def test_the_text_exposition_parses_with_every_family_and_the_standard_ones() -> None:
    body, content_type = exercised().exposition(None)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    text = body.decode()
    assert "# EOF" not in text
    check_families(list(parse_text(text)))


def test_an_openmetrics_scraper_gets_openmetrics() -> None:
    body, content_type = exercised().exposition(OPENMETRICS_ACCEPT)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    text = body.decode()
    assert text.endswith("# EOF\n")
    assert "# UNIT gatewayd_request_duration_seconds seconds\n" in text
    families = list(parse_openmetrics(text))  # the strict parser: it refuses malformed OpenMetrics
    check_families(families)
    requests = next(f for f in families if f.name == "gatewayd_requests")
    assert [s.name for s in requests.samples] == ["gatewayd_requests_total"]


def test_each_metrics_object_has_its_own_registry() -> None:
    one, other = Metrics(), Metrics()
    one.requests.inc(("m", "a", "200"))
    assert one.registry is not other.registry
    assert b"gatewayd_requests_total{" in one.exposition()[0]
    assert b"gatewayd_requests_total{" not in other.exposition()[0]
    assert b"gatewayd_" not in generate_latest(prometheus_client.REGISTRY)


def test_the_portable_process_collector_gives_the_standard_families() -> None:
    def families(collector: Collector) -> dict[str, tuple[str, float]]:
        return {f.name: (f.type, f.samples[0].value) for f in collector.collect()}

    portable = families(PortableProcessCollector())
    standard = families(ProcessCollector(registry=None))  # /proc, as on Linux
    assert {name: kind for name, (kind, _) in portable.items()} == {
        name: kind for name, (kind, _) in standard.items()
    }
    assert portable["process_open_fds"][1] > 0
    assert portable["process_resident_memory_bytes"][1] > 0
    assert portable["process_max_fds"] == standard["process_max_fds"]
    assert abs(portable["process_start_time_seconds"][1] - standard["process_start_time_seconds"][1]) < 2
