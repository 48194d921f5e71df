"""Swap benchmark: model-aware scheduling against strict FIFO on one GPU slot shared by two models.

    .venv/bin/python -m bench.bench_swaps                           # 4,000 requests, the defaults below
    .venv/bin/python -m bench.bench_swaps --rate-per-second 0.5 --load-seconds 10 --max-wait-seconds 60

A simulation with a virtual clock: no processes, no network. Requests for models ``a`` and ``b`` arrive as a
Poisson stream (a seeded ``random.Random``; a share ``--share-a`` of them for ``a``) at a group of capacity
1, so only one model is loaded at a time. Each request holds its model for ``--service-seconds``; a swap
unloads the running model (``--unload-seconds``) and loads the other (``--load-seconds``); each model serves
up to ``--max-in-flight`` requests at once. The same arrivals are run through ``GroupScheduler`` with the
model-aware policy (serve the loaded model first, bounded by ``--max-wait-seconds``) and with strict FIFO
(swap whenever the oldest request is for the other model). Prints, per policy and model: requests, loads
(swaps into that model), and the p50/p95/max wait from arrival to grant, plus the simulated time at which
the last request finished.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from gatewayd.gateway.core.scheduler import GroupScheduler, Policy

MODELS = ("a", "b")


@dataclass
class Outcome:
    """What one policy did with the workload."""

    policy: Policy
    waits: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in MODELS})
    loads: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODELS, 0))
    finished_at: float = 0.0


def arrivals(args: argparse.Namespace) -> list[tuple[float, str]]:
    rng = random.Random(args.seed)
    now = 0.0
    out: list[tuple[float, str]] = []
    for _ in range(args.requests):
        now += rng.expovariate(args.rate_per_second)
        out.append((now, "a" if rng.random() < args.share_a else "b"))
    return out


def simulate(policy: Policy, workload: Sequence[tuple[float, str]], args: argparse.Namespace) -> Outcome:
    scheduler = GroupScheduler(
        dict.fromkeys(MODELS, args.max_in_flight),
        capacity=1,
        max_wait_seconds=args.max_wait_seconds,
        policy=policy,
    )
    outcome = Outcome(policy)
    seq = itertools.count()
    events: list[tuple[float, int, str, str]] = [(t, next(seq), "arrive", m) for t, m in workload]
    heapq.heapify(events)
    wakes: set[float] = set()
    while events:
        now, _, kind, model = heapq.heappop(events)
        if kind == "arrive":
            scheduler.enqueue(model, now)
        elif kind == "done":
            scheduler.released(model, now)
            outcome.finished_at = now
        elif kind == "ready":
            scheduler.ready(model, now)
        elif kind == "stopped":
            scheduler.stopped(model, now)
        else:
            wakes.discard(now)
        decision = scheduler.decide(now)
        for ticket in decision.grants:
            outcome.waits[ticket.member].append(now - ticket.enqueued_at)
            heapq.heappush(events, (now + args.service_seconds, next(seq), "done", ticket.member))
        for member in decision.start:
            outcome.loads[member] += 1
            heapq.heappush(events, (now + args.load_seconds, next(seq), "ready", member))
        for member in decision.evict:
            heapq.heappush(events, (now + args.unload_seconds, next(seq), "stopped", member))
        if decision.wake_at is not None and decision.wake_at not in wakes:
            wakes.add(decision.wake_at)
            heapq.heappush(events, (decision.wake_at, next(seq), "wake", ""))
    return outcome


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def print_table(outcomes: Sequence[Outcome], args: argparse.Namespace) -> None:
    print(
        f"\nswap benchmark: {args.requests} requests, Poisson {args.rate_per_second:g}/s, "
        f"{args.share_a:.0%} for model a; one GPU slot; service {args.service_seconds:g} s, "
        f"load {args.load_seconds:g} s, unload {args.unload_seconds:g} s, "
        f"max in flight {args.max_in_flight}, max wait {args.max_wait_seconds:g} s, seed {args.seed}"
    )
    header = (
        f"{'policy':<12} {'model':<5} {'requests':>8} {'loads':>6} {'p50 wait s':>11} "
        f"{'p95 wait s':>11} {'max wait s':>11}"
    )
    print(header)
    print("-" * len(header))
    for outcome in outcomes:
        for model in MODELS:
            waits = outcome.waits[model]
            print(
                f"{outcome.policy.value:<12} {model:<5} {len(waits):>8} {outcome.loads[model]:>6} "
                f"{percentile(waits, 0.50):>11.1f} {percentile(waits, 0.95):>11.1f} "
                f"{max(waits, default=0.0):>11.1f}"
            )
        every = outcome.waits["a"] + outcome.waits["b"]
        print(
            f"{outcome.policy.value:<12} {'all':<5} {len(every):>8} {sum(outcome.loads.values()):>6} "
            f"{percentile(every, 0.50):>11.1f} {percentile(every, 0.95):>11.1f} "
            f"{max(every, default=0.0):>11.1f}   last done at {outcome.finished_at:,.0f} s"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rate-per-second", type=float, default=0.25, help="mean arrival rate, both models")
    parser.add_argument("--share-a", type=float, default=0.5, help="fraction of requests for model a")
    parser.add_argument("--service-seconds", type=float, default=2.0)
    parser.add_argument("--load-seconds", type=float, default=6.0)
    parser.add_argument("--unload-seconds", type=float, default=1.0)
    parser.add_argument("--max-in-flight", type=int, default=4, help="concurrent requests per model")
    parser.add_argument("--max-wait-seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    workload = arrivals(args)
    outcomes = [simulate(policy, workload, args) for policy in (Policy.MODEL_AWARE, Policy.FIFO)]
    print_table(outcomes, args)
    for outcome in outcomes:
        served = sum(len(w) for w in outcome.waits.values())
        if served != args.requests:
            print(f"{outcome.policy.value}: {served} of {args.requests} requests served", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
