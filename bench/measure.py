"""One load run against one URL: wrk for non-streaming requests when it is on PATH, else (and always for
streams) bench/loadgen.py in a process of its own. Both are closed-loop: N connections, each sending its
next request when the last one is answered."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from bench.loadgen import PLAIN_BODY

BENCH_DIR = Path(__file__).resolve().parent
#: a load run may overrun its duration by this much (slow requests finishing) before it is killed
RUN_GRACE_SECONDS = 60.0
#: wrk gives up on one request after this long and counts a timeout
WRK_REQUEST_TIMEOUT = "30s"

_WRK_SCRIPT = """wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
"""
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one run measured. Latencies in milliseconds; for streams ``latency`` is the whole stream."""

    tool: str
    mode: str
    concurrency: int
    requests: int
    errors: int
    elapsed_seconds: float
    rps: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    ttfc_p50_ms: float | None = None
    ttfc_p99_ms: float | None = None


def wrk_path() -> str | None:
    return shutil.which("wrk")


def write_wrk_script(directory: Path) -> Path:
    path = directory / "post.lua"
    path.write_text(_WRK_SCRIPT.format(body=json.dumps(PLAIN_BODY, separators=(",", ":"))))
    return path


def run_load(
    url: str,
    *,
    mode: str,
    concurrency: int,
    duration_seconds: float,
    cpus: Collection[int] | None,
    wrk_script: Path | None,
) -> LoadResult:
    """Load ``url`` (the chat completions endpoint) for ``duration_seconds``; the load generator runs
    pinned to ``cpus`` when given. wrk is used for ``mode="plain"`` when ``wrk_script`` is given.

    Raises RuntimeError if the generator fails or overruns.
    """
    if mode == "plain" and wrk_script is not None:
        wrk = wrk_path()
        if wrk is None:
            raise RuntimeError("wrk is not on PATH")
        command = [
            wrk,
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(duration_seconds))}s",
            "--latency",
            "--timeout",
            WRK_REQUEST_TIMEOUT,
            "-s",
            str(wrk_script),
            url,
        ]
        return parse_wrk(_run(command, cpus, duration_seconds), concurrency)
    command = [
        sys.executable,
        str(BENCH_DIR / "loadgen.py"),
        "--url",
        url,
        "--concurrency",
        str(concurrency),
        "--duration-seconds",
        str(duration_seconds),
        "--mode",
        mode,
    ]
    summary = json.loads(_run(command, cpus, duration_seconds).strip().splitlines()[-1])
    ttfc = summary.get("ttfc_ms", {})
    return LoadResult(
        tool="aiohttp",
        mode=mode,
        concurrency=concurrency,
        requests=summary["requests"],
        errors=summary["errors"],
        elapsed_seconds=summary["elapsed_seconds"],
        rps=summary["rps"],
        latency_p50_ms=summary["latency_ms"]["p50"],
        latency_p99_ms=summary["latency_ms"]["p99"],
        ttfc_p50_ms=ttfc.get("p50"),
        ttfc_p99_ms=ttfc.get("p99"),
    )


def _run(command: list[str], cpus: Collection[int] | None, duration_seconds: float) -> str:
    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, set(cpus))

    completed = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=duration_seconds + RUN_GRACE_SECONDS,
        preexec_fn=pin if cpus and hasattr(os, "sched_setaffinity") else None,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"{command[0]} failed ({completed.returncode}): {completed.stderr.strip()[-2000:]}"
        )
    return completed.stdout


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNIT_MS[unit]


def parse_wrk(output: str, concurrency: int) -> LoadResult:
    """Read wrk's ``--latency`` report. Non-2xx answers and socket errors count as errors."""
    percentiles = {
        match.group(1): _ms(match.group(2), match.group(3))
        for match in re.finditer(r"^\s*(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE)
    }
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if done is None or rate is None:
        raise RuntimeError(f"cannot read wrk's report:\n{output}")
    errors = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        errors += int(non_2xx.group(1))
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if socket_errors:
        errors += sum(int(count) for count in socket_errors.groups())
    requests = int(done.group(1))
    return LoadResult(
        tool="wrk",
        mode="plain",
        concurrency=concurrency,
        requests=requests - (int(non_2xx.group(1)) if non_2xx else 0),
        errors=errors,
        elapsed_seconds=_ms(done.group(2), done.group(3)) / 1000,
        rps=float(rate.group(1)),
        latency_p50_ms=percentiles.get("50"),
        latency_p99_ms=percentiles.get("99"),
    )
