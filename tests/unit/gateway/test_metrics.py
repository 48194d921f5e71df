"""The Prometheus text exposition of gatewayd's metrics: counters, histograms, scrape-time gauges."""

from __future__ import annotations

import re

from gatewayd.gateway.metrics import Counter, Gauge, GaugeSource, Histogram, LabelValues, Metrics

FAMILIES = {
    "gatewayd_requests_total": ("counter", ("model", "backend", "status")),
    "gatewayd_upstream_attempts_total": ("counter", ("backend", "outcome")),
    "gatewayd_tokens_total": ("counter", ("model", "kind")),
    "gatewayd_request_duration_seconds": ("histogram", ("model",)),
    "gatewayd_time_to_first_token_seconds": ("histogram", ("model",)),
    "gatewayd_overhead_seconds": ("histogram", ()),
    "gatewayd_in_flight_requests": ("gauge", ("backend",)),
    "gatewayd_queue_depth": ("gauge", ("backend",)),
    "gatewayd_backend_up": ("gauge", ("backend", "state")),
    "gatewayd_generation": ("gauge", ("state",)),
}


def constant(labels: LabelValues, value: float = 1.0) -> GaugeSource:
    return lambda: [(labels, value)]


def lines(metric: Counter | Histogram | Gauge) -> list[str]:
    return list(metric.render())


def test_a_counter_renders_help_type_and_sorted_samples() -> None:
    counter = Counter("x_total", "Things.", ("model", "status"))
    counter.inc(("b", "200"))
    counter.inc(("a", "500"), 2.5)
    counter.inc(("b", "200"))
    assert lines(counter) == [
        "# HELP x_total Things.",
        "# TYPE x_total counter",
        'x_total{model="a",status="500"} 2.5',
        'x_total{model="b",status="200"} 2',
    ]


def test_label_values_are_escaped() -> None:
    counter = Counter("x_total", "Things.", ("model",))
    counter.inc(('we"ird\\na\nme',))
    assert lines(counter)[-1] == 'x_total{model="we\\"ird\\\\na\\nme"} 1'


def test_a_histogram_renders_cumulative_buckets_sum_and_count() -> None:
    histogram = Histogram("h_seconds", "Durations.", ("model",), (0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(("m",), value)
    assert lines(histogram) == [
        "# HELP h_seconds Durations.",
        "# TYPE h_seconds histogram",
        'h_seconds_bucket{model="m",le="0.1"} 2',
        'h_seconds_bucket{model="m",le="1"} 3',
        'h_seconds_bucket{model="m",le="+Inf"} 4',
        'h_seconds_sum{model="m"} 3.65',
        'h_seconds_count{model="m"} 4',
    ]


def test_a_histogram_without_labels_renders_only_le() -> None:
    histogram = Histogram("o_seconds", "Overhead.", (), (0.001,))
    histogram.observe((), 0.002)
    rendered = lines(histogram)
    assert 'o_seconds_bucket{le="0.001"} 0' in rendered
    assert 'o_seconds_bucket{le="+Inf"} 1' in rendered
    assert "o_seconds_count 1" in rendered


def test_a_gauge_sums_its_sources_at_scrape_time() -> None:
    gauge = Gauge("g", "Live.", ("backend",))
    values = {"a": 1.0}
    gauge.sources.append(lambda: [(("a",), values["a"])])
    gauge.sources.append(lambda: [(("a",), 2.0), (("b",), 0.0)])
    assert lines(gauge)[2:] == ['g{backend="a"} 3', 'g{backend="b"} 0']
    values["a"] = 5.0
    assert lines(gauge)[2] == 'g{backend="a"} 7'


def test_a_gauge_without_sources_renders_no_samples() -> None:
    gauge = Gauge("g", "Live.", ("backend",))
    assert lines(gauge) == ["# HELP g Live.", "# TYPE g gauge"]


def test_every_gatewayd_family_is_declared_with_its_type_and_labels() -> None:
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
    text = metrics.render()
    assert text.endswith("\n")
    for name, (kind, labelnames) in FAMILIES.items():
        assert f"# TYPE {name} {kind}\n" in text
        sample = name + ("_count" if kind == "histogram" else "")
        pattern = rf"^{re.escape(sample)}(\{{[^}}]*\}})? \S+$"
        found = [line for line in text.splitlines() if re.match(pattern, line)]
        assert found, f"no sample for {name}"
        assert sorted(re.findall(r'(\w+)="', found[0])) == sorted(labelnames)
