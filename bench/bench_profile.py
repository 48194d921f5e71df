"""Where gatewayd's CPU goes under load, per layer: py-spy samples grouped by the package on top of the stack.

Starts bench/upstream.py, then ``python -m gatewayd run`` with bench_gateway's config (both pinned as
bench_gateway pins them), loads it closed-loop (wrk, else bench/loadgen.py) and records it with py-spy
(``pip install py-spy``; it needs ptrace rights: root, or ``kernel.yama.ptrace_scope=0``). Prints, per
layer, the share of samples whose innermost frame is in it (self time) and the share whose stack passes
through it (total), then the top functions by self time.

``python -m bench.bench_profile [--mode plain|stream] [--concurrency 16] [--duration-seconds 10]
[--raw FILE]`` (``--raw`` keeps py-spy's collapsed stacks for a flame graph).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from bench.bench_gateway import (
    DEFAULT_GATEWAYD_CMD,
    UPSTREAM_START_TIMEOUT_SECONDS,
    _cpu_plan,
    _free_port,
    _process,
    _wait_for_line,
    _wait_ready,
    write_config,
)
from bench.measure import run_load, write_wrk_script, wrk_path

REPO_ROOT = Path(__file__).resolve().parents[1]
#: py-spy's sampling rate (samples per second)
SAMPLE_RATE_HZ = 250
#: load runs this long before py-spy attaches, so the profile sees the steady state
LOAD_LEAD_SECONDS = 1.0
#: functions listed under the layer table
TOP_FUNCTIONS = 25

#: (layer, substring of a frame's file name); the first match names a frame's layer
LAYERS: tuple[tuple[str, str], ...] = (
    ("gatewayd supervisor (dispatcher, server)", "/gatewayd/supervisor/"),
    ("gatewayd inference edge", "/gatewayd/gateway/inference.py"),
    ("gatewayd relay", "/gatewayd/gateway/relay.py"),
    ("gatewayd transport", "/gatewayd/gateway/backends/transport.py"),
    ("gatewayd guard (keys, limits, usage)", "/gatewayd/gateway/guard.py"),
    ("gatewayd metrics + activity", "/gatewayd/gateway/metrics.py"),
    ("gatewayd metrics + activity", "/gatewayd/gateway/activity.py"),
    ("gatewayd store (usage record)", "/gatewayd/store/"),
    ("gatewayd other", "/gatewayd/"),
    ("h11", "/h11/"),
    ("hypercorn", "/hypercorn/"),
    ("quart / werkzeug", "/quart/"),
    ("quart / werkzeug", "/werkzeug/"),
    ("aiohttp + yarl + multidict", "/aiohttp/"),
    ("aiohttp + yarl + multidict", "/yarl/"),
    ("aiohttp + yarl + multidict", "/multidict/"),
    ("anyio", "/anyio/"),
    ("logging", "/logging/"),
    ("json", "/json/"),
    ("asyncio", "/asyncio/"),
    ("uvloop", "/uvloop/"),
)


def layer_of(frame: str) -> str:
    """The layer of one py-spy frame, ``function (path/to/file.py:line)``; paths may be relative."""
    path = "/" + frame.rpartition("(")[2]
    for name, marker in LAYERS:
        if marker in path:
            return name
    return "other (interpreter, event loop, C code)"


def summarize(collapsed: str) -> str:
    """The layer table and the top functions from py-spy's collapsed stacks (``frame;frame;... count``)."""
    self_counts: collections.Counter[str] = collections.Counter()
    total_counts: collections.Counter[str] = collections.Counter()
    functions: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame for frame in stack.split(";") if not frame.startswith("process ")]
        if not frames:
            continue
        samples += count
        self_counts[layer_of(frames[-1])] += count
        functions[frames[-1]] += count
        for layer in {layer_of(frame) for frame in frames}:
            total_counts[layer] += count
    if not samples:
        return "no samples"
    rows = ["| layer | self % | total % |", "|---|---|---|"]
    for layer, count in self_counts.most_common():
        rows.append(f"| {layer} | {100 * count / samples:.1f} | {100 * total_counts[layer] / samples:.1f} |")
    rows += ["", f"{samples} samples; top functions by self time:", ""]
    top = functions.most_common(TOP_FUNCTIONS)
    rows += [f"{100 * count / samples:5.1f}%  {frame}" for frame, count in top]
    return "\n".join(rows)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_profile", description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("plain", "stream"), default="plain")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration-seconds", type=float, default=10.0, help="py-spy records this long")
    parser.add_argument("--gatewayd-cmd", default=DEFAULT_GATEWAYD_CMD, help="as bench_gateway's")
    parser.add_argument("--raw", type=Path, default=None, help="also keep py-spy's collapsed stacks here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 1
    upstream_cpus, proxy_cpus, _ = _cpu_plan()
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as directory, contextlib.ExitStack() as stack:
        workdir = Path(directory)
        upstream_log = workdir / "upstream.log"
        upstream = stack.enter_context(
            _process(
                [sys.executable, str(REPO_ROOT / "bench" / "upstream.py"), "--port", "0"],
                log=upstream_log,
                cpus=upstream_cpus,
            )
        )
        upstream_url = _wait_for_line(upstream_log, upstream, "listening on ", UPSTREAM_START_TIMEOUT_SECONDS)
        port = _free_port()
        config = write_config(workdir, port=port, upstream_url=upstream_url)
        command = args.gatewayd_cmd.format(
            python=shlex.quote(sys.executable),
            config=shlex.quote(str(config)),
            port=port,
            upstream=upstream_url,
        )
        log = workdir / "gatewayd.log"
        proxy = stack.enter_context(_process(shlex.split(command), log=log, cpus=proxy_cpus))
        _wait_ready(port, proxy, log, "/readyz")
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        script = write_wrk_script(workdir) if wrk_path() is not None else None
        load_seconds = args.duration_seconds + 2 * LOAD_LEAD_SECONDS + 1
        loader = threading.Thread(
            target=run_load,
            kwargs={
                "url": url,
                "mode": args.mode,
                "concurrency": args.concurrency,
                "duration_seconds": load_seconds,
                "cpus": upstream_cpus,
                "wrk_script": script,
            },
            daemon=True,
        )
        loader.start()
        threading.Event().wait(LOAD_LEAD_SECONDS)
        raw = workdir / "profile.txt"
        subprocess.run(
            [
                py_spy,
                "record",
                "--pid",
                str(proxy.pid),
                "--rate",
                str(SAMPLE_RATE_HZ),
                "--duration",
                str(round(args.duration_seconds)),
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(raw),
            ],
            check=True,
            capture_output=True,
        )
        loader.join()
        collapsed = raw.read_text()
        if args.raw is not None:
            args.raw.write_text(collapsed)
    rate = f"{args.duration_seconds:g} s at {SAMPLE_RATE_HZ} Hz"
    print(f"gatewayd, {args.mode}, c={args.concurrency}, {rate}\n")
    print(summarize(collapsed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
