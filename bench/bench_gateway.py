"""The gateway benchmark: what gatewayd adds to a fast upstream, in latency, throughput, CPU and memory.

Starts bench/upstream.py (pinned to one core), writes a gatewayd config pointing at it, starts the reference
proxy (bench/minimal_proxy.py) and ``python -m gatewayd run --config FILE`` (both pinned to the other core),
waits for each to answer ``GET /readyz``, then for each concurrency measures the upstream directly, through
the reference and through the gateway, interleaved, for a number of rounds, non-streaming and streaming,
and prints medians, and the gateway's figures as ratios to the reference's from the same rounds: a noisy
machine moves both, so the ratio is the figure to compare between runs. See bench/README.md for each figure.

Run from the repository root: ``python -m bench.bench_gateway [--quick] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped, unused-ignore]
import yaml

from bench.measure import LoadResult, run_load, write_wrk_script, wrk_path
from bench.report import Report, Round, format_ratios, format_report, ratios

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_GATEWAYD_CMD = "{python} -m gatewayd run --config {config}"
DEFAULT_REFERENCE_CMD = "{python} bench/minimal_proxy.py --port {port} --upstream {upstream}"
DEFAULT_CONCURRENCY = (1, 16, 64)
DEFAULT_DURATION_SECONDS = 5.0
DEFAULT_ROUNDS = 3
QUICK_DURATION_SECONDS = 1.0
#: the proxy must answer /readyz within this long of being started
READY_TIMEOUT_SECONDS = 60.0
READY_POLL_SECONDS = 0.01
UPSTREAM_START_TIMEOUT_SECONDS = 10.0
#: a stopped process gets this long to exit after SIGTERM before SIGKILL
STOP_TIMEOUT_SECONDS = 30.0
#: warm-up before the first measured round, per target and mode
WARMUP_SECONDS = 1.0
WARMUP_CONCURRENCY = 4
#: the peak RSS sampler's period (used where /proc/PID/status has no VmHWM)
RSS_SAMPLE_SECONDS = 0.05
#: the proxy's idle RSS is read after it has been ready for this long
IDLE_SETTLE_SECONDS = 0.5


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _cpu_plan() -> tuple[set[int] | None, set[int] | None, str]:
    """(upstream + load generator cores, proxy cores, description). No pinning with fewer than 2 cores."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None, "not pinned (no sched_setaffinity here)"
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None, None, "not pinned (one core available)"
    return {cores[0]}, {cores[1]}, f"upstream and load generator on core {cores[0]}, proxy on core {cores[1]}"


def _pin(pid: int, cpus: set[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(pid, cpus)


@contextlib.contextmanager
def _process(
    command: Sequence[str], *, log: Path, cpus: set[int] | None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` (stdout and stderr to ``log``) pinned to ``cpus``; SIGTERM, then SIGKILL, on exit."""
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            list(command), cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        _pin(process.pid, cpus)
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_for_line(log: Path, process: subprocess.Popen[bytes], prefix: str, timeout_seconds: float) -> str:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith(prefix):
                return line.removeprefix(prefix).strip()
        if process.poll() is not None:
            break
        time.sleep(READY_POLL_SECONDS)
    raise RuntimeError(f"{log.name}: no '{prefix}' line; log:\n{_tail(log)}")


def _tail(log: Path, characters: int = 4000) -> str:
    return log.read_text(errors="replace")[-characters:]


def _wait_ready(port: int, process: subprocess.Popen[bytes], log: Path, path: str) -> float:
    """Poll ``GET path`` until it answers 200 and return that moment (time.monotonic()); RuntimeError if the
    process exits or READY_TIMEOUT_SECONDS pass first."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the proxy exited with {process.returncode}; log:\n{_tail(log)}")
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        try:
            connection.request("GET", path)
            if connection.getresponse().status == 200:
                return time.monotonic()
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(READY_POLL_SECONDS)
    raise RuntimeError(f"the proxy did not answer 200 on {path} within {READY_TIMEOUT_SECONDS:g} s")


def write_config(directory: Path, *, port: int, upstream_url: str) -> Path:
    """The gatewayd config the benchmark runs with: one OpenAI-kind backend, roomy limits, access log on."""
    config = {
        "server": {"host": "127.0.0.1", "port": port},
        "backends": [
            {"id": "up", "url": upstream_url, "kind": "openai", "models": ["bench"], "max_concurrency": 256}
        ],
        "limits": {"queue_size": 1024},
        "logging": {"access_log": True},
    }
    path = directory / "gatewayd.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class ProcessWatch:
    """CPU time and peak RSS of a process and its children, read with psutil."""

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self._peak_sampled = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)

    def __enter__(self) -> ProcessWatch:
        self._sampler.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._sampler.join()

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self._process, *self._process.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        total = 0.0
        for process in self._tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    def rss_bytes(self) -> int:
        total = 0
        for process in self._tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += process.memory_info().rss
        return total

    def peak_rss_bytes(self) -> int:
        """VmHWM (the kernel's high-water mark) of the main process where readable, plus the children's
        sampled peak; else the sampled peak of the whole tree."""
        status = Path(f"/proc/{self._process.pid}/status")
        with contextlib.suppress(OSError):
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return max(int(line.split()[1]) * 1024, self._peak_sampled)
        return self._peak_sampled

    def _sample(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_SECONDS):
            self._peak_sampled = max(self._peak_sampled, self.rss_bytes())


@dataclasses.dataclass(frozen=True, slots=True)
class _Target:
    """One proxy under measurement: its URL, its CPU watch and the report its rounds go to."""

    url: str
    watch: ProcessWatch
    report: Report


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    direct_url: str
    targets: list[_Target]
    load_cpus: set[int] | None
    wrk_script: Path | None


def _measure(args: argparse.Namespace, plan: _Plan) -> None:
    """Warm every target up, then for each concurrency and mode run the interleaved rounds: the upstream
    directly, then each proxy (in turn, the order reversed every other round so that drift during a round
    does not favour one), each proxy's round paired with that round's direct run."""

    def run(url: str, mode: str, concurrency: int, duration_seconds: float) -> LoadResult:
        return run_load(
            url,
            mode=mode,
            concurrency=concurrency,
            duration_seconds=duration_seconds,
            cpus=plan.load_cpus,
            wrk_script=plan.wrk_script,
        )

    for url in (plan.direct_url, *(target.url for target in plan.targets)):
        for mode in ("plain", "stream"):
            run(url, mode, WARMUP_CONCURRENCY, args.warmup_seconds)
    for concurrency in args.concurrency:
        for mode in ("plain", "stream"):
            for round_number in range(1, args.rounds + 1):
                direct = run(plan.direct_url, mode, concurrency, args.duration_seconds)
                order = plan.targets if round_number % 2 else plan.targets[::-1]
                figures = []
                for target in order:
                    cpu_before = target.watch.cpu_seconds()
                    proxied = run(target.url, mode, concurrency, args.duration_seconds)
                    cpu_seconds = target.watch.cpu_seconds() - cpu_before
                    pair = Round(direct=direct, proxied=proxied, proxy_cpu_seconds=cpu_seconds)
                    results = target.report.plain if mode == "plain" else target.report.stream
                    results.setdefault(concurrency, []).append(pair)
                    figures.append(f"{target.report.name} {proxied.rps:,.0f}/s ({proxied.errors} errors)")
                _progress(
                    f"c={concurrency} {mode} round {round_number}: direct {direct.rps:,.0f}/s, "
                    + ", ".join(figures)
                )


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def _started_proxy(
    name: str, command: str, *, port: int, workdir: Path, cpus: set[int] | None, args: argparse.Namespace
) -> Iterator[tuple[subprocess.Popen[bytes], ProcessWatch, Report]]:
    """Start one proxy, wait until it is ready, read its idle RSS; yield it with its (empty) report."""
    log = workdir / name / "proxy.log"
    _progress(f"starting {name}: {command}")
    started = time.monotonic()
    with _process(shlex.split(command), log=log, cpus=cpus) as proxy:
        ready_at = _wait_ready(port, proxy, log, args.ready_path)
        with ProcessWatch(proxy.pid) as watch:
            time.sleep(IDLE_SETTLE_SECONDS)
            report = Report(
                name=name,
                proxy_command=command,
                load_tool="",
                duration_seconds=args.duration_seconds,
                rounds=args.rounds,
                pinned="",
                start_to_ready_seconds=ready_at - started,
                idle_rss_bytes=watch.rss_bytes(),
            )
            yield proxy, watch, report
            report.peak_rss_bytes = watch.peak_rss_bytes()
        if proxy.poll() is not None:
            raise RuntimeError(f"{name} exited during the run; log:\n{_tail(log)}")


def run_benchmark(args: argparse.Namespace, workdir: Path) -> list[Report]:
    """Start the upstream and the proxies, measure, stop them. Returns the reports, the reference's first
    (when there is one). Raises RuntimeError on any failure."""
    upstream_cpus, proxy_cpus, pinned = _cpu_plan()
    use_wrk = wrk_path() is not None and not args.no_wrk
    upstream_log = workdir / "upstream.log"
    upstream_command = [
        sys.executable,
        str(REPO_ROOT / "bench" / "upstream.py"),
        "--port",
        "0",
        "--chunk-delay-ms",
        str(args.chunk_delay_ms),
    ]
    commands = [("gatewayd", args.gatewayd_cmd)]
    if args.reference_cmd:
        commands.insert(0, ("reference", args.reference_cmd))
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(_process(upstream_command, log=upstream_log, cpus=upstream_cpus))
        upstream_url = _wait_for_line(upstream_log, upstream, "listening on ", UPSTREAM_START_TIMEOUT_SECONDS)
        _progress(f"upstream {upstream_url}")
        targets: list[_Target] = []
        for name, template in commands:
            port = _free_port()
            target_dir = workdir / name
            target_dir.mkdir()
            config = write_config(target_dir, port=port, upstream_url=upstream_url)
            command = template.format(
                python=shlex.quote(sys.executable),
                config=shlex.quote(str(config)),
                port=port,
                upstream=upstream_url,
            )
            _, watch, report = stack.enter_context(
                _started_proxy(name, command, port=port, workdir=workdir, cpus=proxy_cpus, args=args)
            )
            report.load_tool = ("wrk (non-streaming), " if use_wrk else "") + "aiohttp client process"
            report.pinned = pinned
            targets.append(_Target(f"http://127.0.0.1:{port}/v1/chat/completions", watch, report))
        plan = _Plan(
            direct_url=upstream_url + "/v1/chat/completions",
            targets=targets,
            load_cpus=upstream_cpus,
            wrk_script=write_wrk_script(workdir) if use_wrk else None,
        )
        _measure(args, plan)
    return [target.report for target in targets]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_gateway",
        description="Measure what gatewayd (or another proxy) adds to a fast upstream.",
    )
    parser.add_argument("--quick", action="store_true", help="short smoke run: 1 s per run, 1 round")
    parser.add_argument("--duration-seconds", type=float, default=None, help="per run (default 5)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds; medians (default 3)")
    parser.add_argument(
        "--concurrency",
        type=lambda text: tuple(int(part) for part in text.split(",")),
        default=DEFAULT_CONCURRENCY,
        help="comma-separated client counts (default 1,16,64)",
    )
    parser.add_argument(
        "--gatewayd-cmd",
        default=DEFAULT_GATEWAYD_CMD,
        help="proxy command; placeholders {python} {config} {port} {upstream} (default: %(default)s)",
    )
    parser.add_argument(
        "--reference-cmd",
        default=DEFAULT_REFERENCE_CMD,
        help="the reference proxy measured in the same rounds; '' for none (default: %(default)s)",
    )
    parser.add_argument("--ready-path", default="/readyz", help="polled until it answers 200")
    parser.add_argument("--chunk-delay-ms", type=float, default=5.0, help="upstream pause between chunks")
    parser.add_argument("--no-wrk", action="store_true", help="use the aiohttp client even if wrk is present")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure and raw round here")
    args = parser.parse_args(argv)
    if args.duration_seconds is None:
        args.duration_seconds = QUICK_DURATION_SECONDS if args.quick else DEFAULT_DURATION_SECONDS
    if args.rounds is None:
        args.rounds = 1 if args.quick else DEFAULT_ROUNDS
    args.warmup_seconds = min(WARMUP_SECONDS, args.duration_seconds)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as directory:
        try:
            reports = run_benchmark(args, Path(directory))
        except RuntimeError as error:
            print(f"benchmark failed: {error}", file=sys.stderr)
            return 1
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    print("\n\n".join(format_report(report) for report in reports))
    if len(reports) == 2:
        print("\n" + format_ratios(reports[1], reports[0]))
    if args.json is not None:
        figures: dict[str, Any] = {report.name: report.as_json() for report in reports}
        if len(reports) == 2:
            figures["ratios"] = ratios(reports[1], reports[0])
        figures["load_average"] = os.getloadavg()
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
