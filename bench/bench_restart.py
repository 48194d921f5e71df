"""Restart benchmark: reloads and respawns under load, and what the clients saw.

    .venv/bin/python -m bench.bench_restart                        # 100 in-process reloads, 20 respawns, c=32
    .venv/bin/python -m bench.bench_restart --target gatewayd      # the real `gatewayd run` instead
    .venv/bin/python -m bench.bench_restart --reloads 10 --respawns 3 --concurrency 8    # a quick look
    .venv/bin/python -m bench.bench_restart --target gatewayd --reloads 0 --respawns 10 --concurrency 8

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
design can remove (``python -X importtime -m gatewayd run --help`` shows where it goes).

Before the load, ``--startups`` rounds (default 5) measure start-up, interleaved: the import floor (``python
-c "import quart, hypercorn, aiohttp"``, spawn to exit), the reference proxy's start (bench/minimal_proxy.py,
spawn to its first 200 on ``/readyz``) and ``gatewayd run``'s (the same). The respawns are printed beside
that floor too: a fresh process cannot serve sooner than it can import its server stack, and on a loaded
machine the floor moves with everything else, so the ratios are what compares between runs.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
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
from tests.support.process import GatewaydProcess, free_port, wait_for

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
GATEWAYD_CONFIG = "discovery:\n  enabled: false\n" + RESPAWN_CONFIG
#: what a fresh process must import before it can serve at all: the floor of any respawn
IMPORT_FLOOR_CODE = "import quart, hypercorn, aiohttp"
REPO_ROOT = Path(__file__).resolve().parents[1]
#: a started process must answer /readyz within this long
START_TIMEOUT_SECONDS = 60.0
READY_POLL_SECONDS = 0.005


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
    parser.add_argument("--startups", type=int, default=5, help="start-up rounds before the load (0: none)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-restart-") as tmp:
        tmp_path = Path(tmp)
        config = tmp_path / "config.yaml"
        config.write_text(GATEWAYD_CONFIG)
        startup = measure_startups(args.startups, tmp_path, config)
        if args.target == "gatewayd":
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
        figures["startup"] = startup
        figures["load_average"] = os.getloadavg()
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


def measure_startups(rounds: int, tmp_path: Path, config: Path) -> dict[str, float | None]:
    """Medians over ``rounds`` interleaved rounds of: the import floor, the reference proxy's start to
    ready, and ``gatewayd run``'s start to ready (seconds)."""
    floor: list[float] = []
    reference: list[float] = []
    gatewayd: list[float] = []
    for index in range(rounds):
        floor.append(import_floor_seconds())
        port = free_port()
        command = [sys.executable, "bench/minimal_proxy.py", "--port", str(port)]
        reference.append(start_to_ready([*command, "--upstream", "http://127.0.0.1:9"], port))
        port = free_port()
        state_dir = tmp_path / f"startup-state-{index}"
        command = [sys.executable, "-m", "gatewayd", "run", "--config", str(config)]
        command += ["--state-dir", str(state_dir), "--port", str(port)]
        gatewayd.append(start_to_ready(command, port))
        progress(
            f"start-up round {index + 1}/{rounds}: floor {floor[-1]:.3f} s, reference {reference[-1]:.3f} s, "
            f"gatewayd {gatewayd[-1]:.3f} s"
        )
    return {
        "rounds": rounds,
        "import_floor_median_seconds": median(floor),
        "reference_start_to_ready_median_seconds": median(reference),
        "gatewayd_start_to_ready_median_seconds": median(gatewayd),
    }


def import_floor_seconds() -> float:
    """How long a fresh interpreter takes to import quart, hypercorn and aiohttp and exit."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", IMPORT_FLOOR_CODE], check=True, cwd=REPO_ROOT)
    return time.monotonic() - started


def start_to_ready(command: list[str], port: int) -> float:
    """Spawn ``command``, poll ``GET /readyz`` on ``port`` until 200; return the time that took. The process
    is stopped (SIGTERM, then SIGKILL) before returning. RuntimeError if it exits or is not ready in time."""
    started = time.monotonic()
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        while time.monotonic() - started < START_TIMEOUT_SECONDS:
            if process.poll() is not None:
                stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
                raise RuntimeError(f"{command[:4]} exited with {process.returncode}:\n{stderr[-2000:]}")
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            try:
                connection.request("GET", "/readyz")
                if connection.getresponse().status == 200:
                    return time.monotonic() - started
            except OSError:
                pass
            finally:
                connection.close()
            time.sleep(READY_POLL_SECONDS)
        raise RuntimeError(f"{command[:4]} was not ready within {START_TIMEOUT_SECONDS:g} s")
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None


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
    print_startup(figures)
    print(f"target: 0 failed, 0 refused, new config in effect within {TARGET_SECONDS:g} s of the signal")


def print_startup(figures: dict[str, Any]) -> None:
    """Start-up and respawn medians beside the import floor and the reference proxy of the same run."""
    startup = figures["startup"]
    load = ", ".join(f"{value:.2f}" for value in figures["load_average"])
    print(f"\nstart-up, medians of {startup['rounds']} interleaved round(s); load average {load}")
    if not startup["rounds"]:
        return
    floor = startup["import_floor_median_seconds"]
    rows = [
        (f"import floor (python -c '{IMPORT_FLOOR_CODE}')", floor),
        ("reference proxy start to ready", startup["reference_start_to_ready_median_seconds"]),
        ("gatewayd run start to ready", startup["gatewayd_start_to_ready_median_seconds"]),
    ]
    respawn = next((phase for phase in figures["phases"] if phase["name"] == RESPAWNS), None)
    if respawn is not None and respawn["count"]:
        rows.append(
            (
                f"respawn: signal to new process serving ({figures['concurrency']} clients)",
                respawn["in_effect_median_seconds"],
            )
        )
    for label, seconds in rows:
        ratio = f"{seconds / floor:.2f}x floor" if seconds is not None and floor else "-"
        print(f"  {label:<66} {fmt(seconds, ' s'):>10} {ratio:>12}")


def within(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return "yes" if seconds <= TARGET_SECONDS else "no"


def fmt(value: object, unit: str) -> str:
    return "-" if value is None else f"{value}{unit}"


if __name__ == "__main__":
    sys.exit(main())
