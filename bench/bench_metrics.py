"""Metrics cost per request: gatewayd's own counters and histograms against prometheus_client's.

    .venv/bin/python -m bench.bench_metrics                  # 200,000 requests, 5 rounds
    .venv/bin/python -m bench.bench_metrics --requests 50000 --rounds 3

A request updates what ``InferenceEndpoint._record`` and the relay update for a served request: the
requests counter (model, backend, status), the latency, time-to-first-token and overhead histograms, the
prompt and completion token counters and the upstream attempts counter (4 counter increments and 3
histogram observations, with labels). The label values cycle over a few models and backends, as real traffic
does. Each way is timed over the same requests; the figure is the median over rounds of the time per request
(CPU time of this one thread, no IO), and the first line (one counter increment and one histogram
observation) is the smallest request-path update.

Ways compared:

- ``hand-written``: ``gatewayd.gateway.metrics`` (a dict per series, a list of bucket counts per histogram);
- ``prometheus_client labels()``: ``Counter(...).labels(...).inc()`` and ``Histogram(...).labels(...)
  .observe()`` as its documentation shows them (a lock and a lookup of the child on each call);
- ``prometheus_client cached``: the same metrics with each labelled child looked up once and kept in a dict
  by the caller (what a wrapper around prometheus_client would do to avoid ``labels()``).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import statistics
import sys
import time
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter
from prometheus_client import Histogram as PromHistogram

from gatewayd.gateway.metrics import LATENCY_BUCKETS, OVERHEAD_BUCKETS, Metrics

#: (model, backend, status, latency, ttft, overhead, prompt tokens, completion tokens)
Request = tuple[str, str, str, float, float, float, int, int]
Way = Callable[[Sequence[Request]], None]


def workload(count: int) -> list[Request]:
    models = itertools.cycle(("llama3", "qwen2.5-coder", "mistral", "phi4"))
    backends = itertools.cycle(("gpu", "cpu", "ollama"))
    statuses = itertools.cycle(("200",) * 9 + ("503",))
    latencies = itertools.cycle((0.004, 0.03, 0.2, 0.9, 2.0, 7.5, 40.0))
    return [
        (next(models), next(backends), next(statuses), latency, latency / 3, 0.0003, 40, 200)
        for latency in itertools.islice(latencies, count)
    ]


def hand_written() -> tuple[Way, Way]:
    metrics = Metrics()

    def minimal(requests: Sequence[Request]) -> None:
        inc, observe = metrics.requests.inc, metrics.latency.observe
        for model, backend, status, latency, *_ in requests:
            inc((model, backend, status))
            observe((model,), latency)

    def full(requests: Sequence[Request]) -> None:
        m = metrics
        for model, backend, status, latency, ttft, overhead, prompt, completion in requests:
            m.requests.inc((model, backend, status))
            m.latency.observe((model,), latency)
            m.ttft.observe((model,), ttft)
            m.overhead.observe((), overhead)
            m.tokens.inc((model, "prompt"), prompt)
            m.tokens.inc((model, "completion"), completion)
            m.attempts.inc((backend, "ok"))

    return minimal, full


class _Prometheus:
    def __init__(self) -> None:
        registry = CollectorRegistry()
        self.requests = PromCounter(
            "gatewayd_requests_total", "r", ("model", "backend", "status"), registry=registry
        )
        self.attempts = PromCounter(
            "gatewayd_upstream_attempts_total", "a", ("backend", "outcome"), registry=registry
        )
        self.tokens = PromCounter("gatewayd_tokens_total", "t", ("model", "kind"), registry=registry)
        self.latency = PromHistogram(
            "gatewayd_request_duration_seconds", "l", ("model",), buckets=LATENCY_BUCKETS, registry=registry
        )
        self.ttft = PromHistogram(
            "gatewayd_time_to_first_token_seconds",
            "f",
            ("model",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.overhead = PromHistogram(
            "gatewayd_overhead_seconds", "o", buckets=OVERHEAD_BUCKETS, registry=registry
        )


def prometheus_labels() -> tuple[Way, Way]:
    p = _Prometheus()

    def minimal(requests: Sequence[Request]) -> None:
        for model, backend, status, latency, *_ in requests:
            p.requests.labels(model, backend, status).inc()
            p.latency.labels(model).observe(latency)

    def full(requests: Sequence[Request]) -> None:
        for model, backend, status, latency, ttft, overhead, prompt, completion in requests:
            p.requests.labels(model, backend, status).inc()
            p.latency.labels(model).observe(latency)
            p.ttft.labels(model).observe(ttft)
            p.overhead.observe(overhead)
            p.tokens.labels(model, "prompt").inc(prompt)
            p.tokens.labels(model, "completion").inc(completion)
            p.attempts.labels(backend, "ok").inc()

    return minimal, full


def prometheus_cached() -> tuple[Way, Way]:
    p = _Prometheus()
    children: dict[tuple[object, ...], PromCounter | PromHistogram] = {}

    def child(metric: PromCounter | PromHistogram, *labels: str) -> PromCounter | PromHistogram:
        key = (metric, *labels)
        found = children.get(key)
        if found is None:
            found = children[key] = metric.labels(*labels)
        return found

    def minimal(requests: Sequence[Request]) -> None:
        for model, backend, status, latency, *_ in requests:
            child(p.requests, model, backend, status).inc()  # type: ignore[union-attr]
            child(p.latency, model).observe(latency)  # type: ignore[union-attr]

    def full(requests: Sequence[Request]) -> None:
        for model, backend, status, latency, ttft, overhead, prompt, completion in requests:
            child(p.requests, model, backend, status).inc()  # type: ignore[union-attr]
            child(p.latency, model).observe(latency)  # type: ignore[union-attr]
            child(p.ttft, model).observe(ttft)  # type: ignore[union-attr]
            p.overhead.observe(overhead)
            child(p.tokens, model, "prompt").inc(prompt)  # type: ignore[union-attr]
            child(p.tokens, model, "completion").inc(completion)  # type: ignore[union-attr]
            child(p.attempts, backend, "ok").inc()  # type: ignore[union-attr]

    return minimal, full


WAYS: dict[str, Callable[[], tuple[Way, Way]]] = {
    "hand-written": hand_written,
    "prometheus_client labels()": prometheus_labels,
    "prometheus_client cached": prometheus_cached,
}


def _loop_only(requests: Sequence[Request]) -> None:
    for _ in requests:
        pass


def per_request_us(way: Way, requests: Sequence[Request], rounds: int) -> float:
    way(requests[:1000])  # warm: every series exists, as in a running gateway
    figures = []
    for _ in range(rounds):
        gc.collect()
        start = time.thread_time()
        way(requests)
        figures.append((time.thread_time() - start) / len(requests) * 1e6)
    return statistics.median(figures)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    requests = workload(args.requests)
    loop = per_request_us(_loop_only, requests, args.rounds)
    results = {
        name: [per_request_us(w, requests, args.rounds) for w in make()] for name, make in WAYS.items()
    }
    base_minimal, base_full = results["hand-written"]
    print(
        f"µs of CPU per request (median of {args.rounds} rounds of {args.requests:,}; "
        f"the loop alone: {loop:.2f} µs)"
    )
    print(f"{'way':28} {'1 inc + 1 observe':>18} {'vs hand':>8} {'4 inc + 3 observe':>18} {'vs hand':>8}")
    for name, (minimal, full) in results.items():
        print(
            f"{name:28} {minimal:18.2f} {minimal - base_minimal:+8.2f} {full:18.2f} {full - base_full:+8.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
