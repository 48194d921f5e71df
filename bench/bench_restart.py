"""Restart benchmark: reloads and respawns under load, and what the clients saw.

    .venv/bin/python -m bench.bench_restart                        # 100 in-process reloads, 20 respawns, c=32
    .venv/bin/python -m bench.bench_restart --target gatewayd      # the real `gatewayd run` instead
    .venv/bin/python -m bench.bench_restart --reloads 10 --respawns 3 --concurrency 8    # a quick look

Starts one instance (the supervisor test app by default, or ``gatewayd run`` with no backends), puts a
closed-loop load of ``--concurrency`` HTTP clients on ``GET --path`` (half keep-alive clients, half opening a
new connection per request, nothing retried), measures a steady-state window, then performs the in-process
reloads (SIGUSR1) and the fresh-PID respawns (``gatewayd restart --respawn``'s request file + SIGUSR1), one
after the other, each once the previous one is in effect. Prints, per phase: requests sent, failed, refused
connections, p50/p99 latency in the second after each signal vs the steady state, and the time from the
signal until ``GET /status`` reports the new generation ("new config in effect"; the drain of the old
generation is not included). Exit status 1 if anything failed or was refused, or an in-process reload
took longer than the 1 s target. A respawn's time is printed against the same target but does not set the
exit status: it is dominated by starting a fresh interpreter and importing the gateway, which no run-loop
design can remove (``python -X importtime -m gatewayd --help`` shows where it goes).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from gatewayd.supervisor.portlock import holder_alive
from gatewayd.supervisor.sentinel import submit_reload_request
from tests.support.load import HttpLoad, LoadResult
from tests.support.process import GatewaydProcess, wait_for

#: the issue's target: the new config serves within this long of the signal
TARGET_SECONDS = 1.0
#: after a reload is in effect, the load runs this long before the next signal
GAP_SECONDS = 0.2
#: latency "during a reload" covers requests started within this long after the signal
RELOAD_WINDOW_SECONDS = 1.0
STEADY_SECONDS = 3.0
#: respawns: the child must be ready within this (the config's respawn_ready_timeout_seconds)
IN_PROCESS = "in-process reloads"
RESPAWNS = "respawns"
RESPAWN_CONFIG = "restart:\n  respawn_ready_timeout_seconds: 15\n  handoff_close_seconds: 1.0\n"


@dataclass
class Phase:
    name: str
    signals: list[float] = field(default_factory=list)
    in_effect_seconds: list[float] = field(default_factory=list)
    #: (sent, failed, refused) of the whole load when the phase began and when it ended
    counts_at_start: tuple[int, int, int] = (0, 0, 0)
    counts_at_end: tuple[int, int, int] = (0, 0, 0)

    def windows(self) -> list[tuple[float, float]]:
        return [(at, at + RELOAD_WINDOW_SECONDS) for at in self.signals]


def generation_and_pid(client: httpx.Client, url: str) -> tuple[int, int] | None:
    try:
        body = client.get(url, timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return None
    return int(body["generation"]), int(body["instance"]["pid"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", choices=["test-app", "gatewayd"], default="test-app")
    parser.add_argument("--reloads", type=int, default=100)
    parser.add_argument("--respawns", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--path", default="/healthz")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-restart-") as tmp:
        tmp_path = Path(tmp)
        if args.target == "gatewayd":
            config = tmp_path / "config.yaml"
            config.write_text("discovery:\n  enabled: false\n" + RESPAWN_CONFIG)
            gw = GatewaydProcess.gatewayd(tmp_path, config)
        else:
            gw = GatewaydProcess.test_app(tmp_path, extra_config=RESPAWN_CONFIG)
        with gw:
            gw.wait_ready()
            figures = run_phases(gw, args)
            try:
                gw.stop()
            except AssertionError as error:
                print(f"stopping the instance failed: {error}", file=sys.stderr)
    print_figures(figures, args)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    clean = all(phase["failed"] == 0 and phase["refused"] == 0 for phase in figures["phases"])
    fast = all(
        phase["in_effect_max_seconds"] is None or phase["in_effect_max_seconds"] <= TARGET_SECONDS
        for phase in figures["phases"]
        if phase["name"] == IN_PROCESS
    )
    return 0 if clean and fast else 1


def run_phases(gw: GatewaydProcess, args: argparse.Namespace) -> dict[str, Any]:
    keepalive = args.concurrency // 2
    load = HttpLoad(
        gw.url(args.path),
        keepalive_clients=keepalive,
        fresh_clients=args.concurrency - keepalive,
        max_seconds=3600,
    )
    status_url = gw.url("/status")
    phases: list[Phase] = []
    with load, httpx.Client() as client:
        load.wait_for_requests(50)
        steady_from = time.monotonic()
        time.sleep(STEADY_SECONDS)
        steady = (steady_from, time.monotonic())
        progress(f"steady state: {load.result.ok} requests so far")

        in_process = Phase(IN_PROCESS, counts_at_start=counts(load.result))
        for index in range(args.reloads):
            reload_once(gw, client, status_url, in_process, respawn=False)
            if (index + 1) % 10 == 0:
                progress(f"{index + 1}/{args.reloads} in-process reloads; {summary(load.result)}")
        in_process.counts_at_end = counts(load.result)
        phases.append(in_process)

        respawns = Phase(RESPAWNS, counts_at_start=counts(load.result))
        for index in range(args.respawns):
            reload_once(gw, client, status_url, respawns, respawn=True)
            progress(f"{index + 1}/{args.respawns} respawns; {summary(load.result)}")
        time.sleep(GAP_SECONDS)
        respawns.counts_at_end = counts(load.result)
        phases.append(respawns)
    result = load.result
    return {
        "target": args.target,
        "concurrency": args.concurrency,
        "path": args.path,
        "sent": result.sent,
        "ok": result.ok,
        "failed": result.failed,
        "refused": result.refused,
        "errors": result.errors,
        "steady_p50_ms": ms(result.percentile(0.50, between=steady)),
        "steady_p99_ms": ms(result.percentile(0.99, between=steady)),
        "phases": [phase_figures(phase, result) for phase in phases],
    }


def reload_once(
    gw: GatewaydProcess, client: httpx.Client, status_url: str, phase: Phase, *, respawn: bool
) -> None:
    current = wait_for(lambda: generation_and_pid(client, status_url), timeout=10, what="GET /status")
    generation, pid = current
    if respawn:
        submit_reload_request(gw.state_dir, gw.port, respawn=True)
    signalled = time.monotonic()
    os.kill(pid, signal.SIGUSR1)

    def in_effect() -> bool:
        seen = generation_and_pid(client, status_url)
        return seen is not None and seen[0] > generation and (not respawn or seen[1] != pid)

    wait_for(in_effect, timeout=30, interval=0.002, what=f"generation {generation + 1}")
    phase.signals.append(signalled)
    phase.in_effect_seconds.append(time.monotonic() - signalled)
    if respawn:
        # the old process drains and exits before the next respawn (one handoff at a time)
        record = gw.record()
        wait_for(lambda: not _alive(pid), timeout=30, what=f"pid {pid} to exit")
        assert record is None or holder_alive(record)
    time.sleep(GAP_SECONDS)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def phase_figures(phase: Phase, result: LoadResult) -> dict[str, Any]:
    during = sorted(
        duration
        for started, duration in result.latencies
        if any(low <= started <= high for low, high in phase.windows())
    )
    effect = phase.in_effect_seconds
    sent, failed, refused = (
        end - start for start, end in zip(phase.counts_at_start, phase.counts_at_end, strict=True)
    )
    return {
        "name": phase.name,
        "count": len(phase.signals),
        "sent": sent,
        "failed": failed,
        "refused": refused,
        "during_p50_ms": ms(during[len(during) // 2] if during else None),
        "during_p99_ms": ms(during[min(len(during) - 1, int(0.99 * len(during)))] if during else None),
        "in_effect_median_seconds": round(statistics.median(effect), 4) if effect else None,
        "in_effect_max_seconds": round(max(effect), 4) if effect else None,
    }


def counts(result: LoadResult) -> tuple[int, int, int]:
    return result.sent, result.failed, result.refused


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def summary(result: LoadResult) -> str:
    return f"{result.sent} sent, {result.failed} failed, {result.refused} refused"


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def print_figures(figures: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"\nrestart benchmark: target {figures['target']}, concurrency {figures['concurrency']} "
        f"(half keep-alive, half new connections), GET {figures['path']}"
    )
    print(
        f"requests sent {figures['sent']}, ok {figures['ok']}, failed {figures['failed']}, "
        f"refused connections {figures['refused']}"
    )
    print(f"steady state latency: p50 {figures['steady_p50_ms']} ms, p99 {figures['steady_p99_ms']} ms")
    header = (
        f"{'phase':<20} {'count':>5} {'sent':>7} {'failed':>6} {'refused':>7} {'p50 during':>11} "
        f"{'p99 during':>11} {'in effect med':>14} {'max':>8} {'<= 1 s':>7}"
    )
    print(header)
    print("-" * len(header))
    for phase in figures["phases"]:
        print(
            f"{phase['name']:<20} {phase['count']:>5} {phase['sent']:>7} {phase['failed']:>6} "
            f"{phase['refused']:>7} {fmt(phase['during_p50_ms'], 'ms'):>11} "
            f"{fmt(phase['during_p99_ms'], 'ms'):>11} {fmt(phase['in_effect_median_seconds'], 's'):>14} "
            f"{fmt(phase['in_effect_max_seconds'], 's'):>8} {within(phase['in_effect_max_seconds']):>7}"
        )
    if figures["errors"]:
        print("first errors:", *figures["errors"], sep="\n  ")
    print(f"target: 0 failed, 0 refused, new config in effect within {TARGET_SECONDS:g} s of the signal")


def within(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return "yes" if seconds <= TARGET_SECONDS else "no"


def fmt(value: object, unit: str) -> str:
    return "-" if value is None else f"{value}{unit}"


if __name__ == "__main__":
    sys.exit(main())
