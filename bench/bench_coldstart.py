"""Cold-start benchmark: what a sleeping managed backend costs the first request, and how much of that is
gatewayd's own doing.

    .venv/bin/python -m bench.bench_coldstart                          # 5 rounds, --load-seconds 0,2
    .venv/bin/python -m bench.bench_coldstart --rounds 10 --load-seconds 0,0.5,2 --json out.json

Starts a real ``gatewayd run`` with one managed backend per ``--load-seconds`` value: the test model server
(tests/support/fake_backend.py, kind llama-server, so the gateway's readiness check polls ``/health``) with
``--load-seconds S``, which answers 503 on ``/health`` for S seconds after it listens, as a server loading
its model does. Each round, per backend, once ``GET /v1/models`` lists its model as "sleeping":

1. **server start**: the same command, started by hand on a free port in a session of its own (as gatewayd
   starts it), ``/health`` polled every 5 ms until it answers 200, then stopped: the server's own start
   time, with no gateway involved;
2. **cold TTFT**: a streaming chat request through the gateway to the sleeping backend, from sending it to
   the first content token (the gateway starts the server, waits for it to be ready, then relays);
3. **warm TTFT**: the same request again at once, the server now running;
4. the backend is put to sleep with ``POST /admin/backends/ID/stop``; a gatewayd without that route puts
   it to sleep itself, as each backend has ``idle_ttl_seconds: 1``.

The cold-start overhead gatewayd adds is, per round, cold TTFT - warm TTFT - server start: spawning the
command, the readiness polling and the hand-off to the waiting request. It is the difference of two
separate starts of a Python server, each of which varies by tens of milliseconds (hundreds on a busy
machine). Its part **after ready** needs no second start: the server writes ``--ready-file`` once it
listens and its load time runs from then, so it can answer from the file's time plus S. After ready is the
cold request's first token less that moment, less the warm TTFT: the readiness polling (every
``READY_POLL_INTERVAL_SECONDS``, so 0 to that much late once the server answers 503 while loading) and the
hand-off, to the file system's timestamp resolution (a few ms, erring high). Prints the median and max
over the rounds, in milliseconds. Progress goes to stderr, the table to stdout; the exit status is 1 if
the gateway or a server fails.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.bench_restart import IMPORT_FLOOR_CODE, import_floor_seconds
from bench.report import _table
from gatewayd.config.loader import PORT_PLACEHOLDER
from gatewayd.gateway.backends.process import READY_POLL_INTERVAL_SECONDS
from tests.support.process import REPO_ROOT, GatewaydProcess, free_port, wait_for

DEFAULT_ROUNDS = 5
DEFAULT_LOAD_SECONDS = "0,2"
#: a backend is put to sleep this long after its last request (plus up to the manager's 1 s idle check)
IDLE_TTL_SECONDS = 1.0
#: the managed server must be ready within this long (gatewayd's start_timeout_seconds)
START_TIMEOUT_SECONDS = 60.0
#: the hand-started server must answer /health 200 within this long
DIRECT_START_TIMEOUT_SECONDS = 60.0
#: how often the hand-started server's /health is polled: the resolution of "server start"
DIRECT_POLL_SECONDS = 0.005
DIRECT_REQUEST_TIMEOUT_SECONDS = 1.0
#: a hand-started server gets this long to exit after SIGTERM before SIGKILL
DIRECT_STOP_TIMEOUT_SECONDS = 10.0
#: how long a backend may take to be listed as sleeping again
SLEEP_TIMEOUT_SECONDS = 30.0
STATE_POLL_SECONDS = 0.02
#: bound on one benchmark request (a cold one includes the server's whole start)
REQUEST_TIMEOUT_SECONDS = START_TIMEOUT_SECONDS + 30.0
GATEWAY_READY_TIMEOUT_SECONDS = 30.0
MESSAGES = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True, slots=True)
class Round:
    """One round for one backend, in seconds."""

    server_start_seconds: float
    cold_ttft_seconds: float
    warm_ttft_seconds: float
    #: from the moment the managed server could answer (its ready file's time plus the load time) to the
    #: cold request's first token
    ready_to_token_seconds: float

    @property
    def overhead_seconds(self) -> float:
        return self.cold_ttft_seconds - self.warm_ttft_seconds - self.server_start_seconds

    @property
    def after_ready_seconds(self) -> float:
        """The part of the overhead after the server is ready: readiness polling and hand-off."""
        return self.ready_to_token_seconds - self.warm_ttft_seconds


def model_name(load_seconds: float) -> str:
    """The backend id and model name for one ``--load-seconds`` value (ids allow '.')."""
    return f"load{load_seconds:g}s"


def server_command(load_seconds: float, ready_file: Path) -> list[str]:
    """The managed command, ``${PORT}`` left for gatewayd (or ``start_server_seconds``) to fill in. The
    server writes ``ready_file`` once it listens; its load time starts then."""
    return [
        sys.executable,
        "-m",
        "tests.support.fake_backend",
        "--port",
        PORT_PLACEHOLDER,
        "--models",
        model_name(load_seconds),
        "--kind",
        "llama-server",
        "--load-seconds",
        f"{load_seconds:g}",
        "--ready-file",
        str(ready_file),
    ]


def ready_file(directory: Path, load_seconds: float) -> Path:
    return directory / f"{model_name(load_seconds)}.ready"


def write_config(directory: Path, load_values: Sequence[float]) -> Path:
    config = {
        "discovery": {"enabled": False},
        "logging": {"access_log": False},
        "backends": [
            {
                "id": model_name(load),
                "kind": "llama-server",
                "command": server_command(load, ready_file(directory, load)),
                "cwd": str(REPO_ROOT),
                "models": [model_name(load)],
                "idle_ttl_seconds": IDLE_TTL_SECONDS,
                "start_timeout_seconds": START_TIMEOUT_SECONDS,
            }
            for load in load_values
        ],
    }
    path = directory / "gatewayd.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_server_seconds(command: Sequence[str], log_path: Path) -> float:
    """Start ``command`` on a free port (cwd the repository root, in a session of its own, as gatewayd
    does), poll its ``/health`` every DIRECT_POLL_SECONDS and return the time from spawning it to the first
    200. The server is stopped (SIGTERM, then SIGKILL) before this returns. Raises RuntimeError if it exits
    or is not ready in time."""
    port = free_port()
    argv = [arg.replace(PORT_PLACEHOLDER, str(port)) for arg in command]
    url = f"http://127.0.0.1:{port}/health"
    with (
        httpx.Client(trust_env=False, timeout=DIRECT_REQUEST_TIMEOUT_SECONDS) as client,
        log_path.open("ab") as log,
    ):
        started = time.perf_counter()
        # a session of its own, as gatewayd starts it: with scheduler autogroups (Linux) a session is
        # what shares the CPU fairly with others, so this keeps the two starts comparable on a busy machine
        process = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        try:
            deadline = started + DIRECT_START_TIMEOUT_SECONDS
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"{argv} exited with {process.returncode} (log: {log_path})")
                try:
                    if client.get(url).status_code == 200:
                        return time.perf_counter() - started
                except httpx.TransportError:
                    pass
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"{argv} was not ready within {DIRECT_START_TIMEOUT_SECONDS:g} s")
                time.sleep(DIRECT_POLL_SECONDS)
        finally:
            process.terminate()
            try:
                process.wait(DIRECT_STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def first_token_seconds(client: httpx.Client, url: str, model: str) -> float:
    """Send one streaming chat request and return the time until its first content token; the rest of the
    stream is read to its end. Raises RuntimeError on an error answer or a stream with no token."""
    body = {"model": model, "messages": MESSAGES, "stream": True}
    first: float | None = None
    started = time.perf_counter()
    with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"{model}: HTTP {response.status_code}: {response.text[:500]}")
        for line in response.iter_lines():
            if first is None and carries_token(line):
                first = time.perf_counter() - started
    if first is None:
        raise RuntimeError(f"{model}: the stream ended without a content token")
    return first


def carries_token(line: str) -> bool:
    """An SSE ``data:`` line whose chat chunk has content (not the role chunk, a usage chunk or [DONE])."""
    if not line.startswith("data:"):
        return False
    payload = line.removeprefix("data:").strip()
    if payload == "[DONE]":
        return False
    choices = json.loads(payload).get("choices") or []
    return any((choice.get("delta") or {}).get("content") for choice in choices)


def listed_state(client: httpx.Client, base_url: str, model: str) -> str | None:
    try:
        models = client.get(base_url + "/v1/models").json()["data"]
    except (httpx.HTTPError, ValueError, KeyError):
        return None
    return next((str(row.get("state")) for row in models if row.get("id") == model), None)


def wait_asleep(client: httpx.Client, base_url: str, model: str) -> None:
    wait_for(
        lambda: listed_state(client, base_url, model) == "sleeping",
        timeout=SLEEP_TIMEOUT_SECONDS,
        interval=STATE_POLL_SECONDS,
        what=f"{model} to be listed as sleeping",
    )


def put_to_sleep(client: httpx.Client, base_url: str, backend_id: str) -> bool:
    """Ask gatewayd to stop the backend's server now (``POST /admin/backends/ID/stop``); False when it
    cannot (a gatewayd without that route), and the idle time-out will do it instead."""
    response = client.post(f"{base_url}/admin/backends/{backend_id}/stop")
    return response.status_code == 200


def measure_round(
    client: httpx.Client, gw: GatewaydProcess, load_seconds: float, directory: Path
) -> tuple[Round, bool]:
    """One round for one backend: once it is asleep, the hand-started server, the cold and the warm
    request; then it is put to sleep. Returns the round and whether the admin route put it to sleep (else
    its idle time-out will)."""
    model = model_name(load_seconds)
    direct_command = server_command(load_seconds, directory / "direct.ready")
    managed_ready = ready_file(directory, load_seconds)
    wait_asleep(client, gw.url(""), model)
    server_start = start_server_seconds(direct_command, directory / "direct.log")
    chat_url = gw.url("/v1/chat/completions")
    managed_ready.unlink(missing_ok=True)
    sent_at = time.time()
    cold = first_token_seconds(client, chat_url, model)
    warm = first_token_seconds(client, chat_url, model)
    # the file's time is the wall clock's (coarse: a few ms, never late), hence time.time() for the request
    ready_at = managed_ready.stat().st_mtime_ns / 1e9 + load_seconds
    stopped = put_to_sleep(client, gw.url(""), model)
    measured = Round(
        server_start_seconds=server_start,
        cold_ttft_seconds=cold,
        warm_ttft_seconds=warm,
        ready_to_token_seconds=sent_at + cold - ready_at,
    )
    return measured, stopped


@dataclass(frozen=True)
class Startup:
    """gatewayd's own start, beside the import floor measured just before it in the same run."""

    import_floor_seconds: float
    #: spawning ``gatewayd run`` to its first 200 on /healthz (polled every 20 ms) with the lock record
    #: naming a serving generation
    start_to_ready_seconds: float


def run(
    load_values: Sequence[float], rounds: int, workdir: Path
) -> tuple[dict[float, list[Round]], str, Startup]:
    """Start gatewayd, measure every backend ``rounds`` times (interleaved), stop gatewayd (which stops
    its managed servers). Returns the rounds per load time, how backends were put to sleep and the
    start-up figures. Raises AssertionError, RuntimeError, OSError or httpx.HTTPError (the gateway's log
    is in ``workdir``)."""
    results: dict[float, list[Round]] = {load: [] for load in load_values}
    sleep_methods: set[str] = set()
    config = write_config(workdir, load_values)
    floor = import_floor_seconds()
    spawned = time.perf_counter()
    with GatewaydProcess.gatewayd(workdir, config, state_dir=workdir / "state") as gw:
        try:
            gw.wait_ready(GATEWAY_READY_TIMEOUT_SECONDS)
            startup = Startup(floor, time.perf_counter() - spawned)
            with httpx.Client(trust_env=False, timeout=REQUEST_TIMEOUT_SECONDS) as client:
                for index in range(rounds):
                    for load in load_values:
                        result, stopped = measure_round(client, gw, load, workdir)
                        results[load].append(result)
                        sleep_methods.add(
                            "POST /admin/backends/ID/stop"
                            if stopped
                            else f"idle_ttl_seconds {IDLE_TTL_SECONDS:g}"
                        )
                        progress(
                            f"round {index + 1}/{rounds}, load {load:g} s: server start "
                            f"{ms(result.server_start_seconds)}, cold {ms(result.cold_ttft_seconds)}, "
                            f"warm {ms(result.warm_ttft_seconds)}, overhead {ms(result.overhead_seconds)} "
                            f"(after ready {ms(result.after_ready_seconds)})"
                        )
        finally:
            # SIGTERM lets gatewayd stop its managed servers (they run in sessions of their own)
            if gw.proc is not None and gw.proc.poll() is None:
                gw.stop()
    return results, " and ".join(sorted(sleep_methods)), startup


FIGURES = ("warm_ttft", "cold_ttft", "server_start", "overhead", "after_ready")


def summarize(rounds: Sequence[Round]) -> dict[str, float]:
    """Median and max over rounds, in milliseconds; the overheads are taken within each round first."""
    columns = {
        "warm_ttft": [r.warm_ttft_seconds for r in rounds],
        "cold_ttft": [r.cold_ttft_seconds for r in rounds],
        "server_start": [r.server_start_seconds for r in rounds],
        "overhead": [r.overhead_seconds for r in rounds],
        "after_ready": [r.after_ready_seconds for r in rounds],
    }
    figures: dict[str, float] = {}
    for name in FIGURES:
        figures[f"{name}_median_ms"] = round(statistics.median(columns[name]) * 1000, 1)
        figures[f"{name}_max_ms"] = round(max(columns[name]) * 1000, 1)
    return figures


def format_figures(results: dict[float, list[Round]], sleep_method: str, startup: Startup) -> str:
    headers = ["load s"]
    for title in ("warm TTFT", "cold TTFT", "server start", "overhead", "after ready"):
        headers += [title, "max"]
    rows = []
    for load, rounds in results.items():
        s = summarize(rounds)
        cells = [f"{s[f'{name}_{stat}_ms']:,.1f}" for name in FIGURES for stat in ("median", "max")]
        rows.append([f"{load:g}", *cells])
    count = len(next(iter(results.values()), []))
    return "\n".join(
        [
            "cold start through gatewayd: test model server (kind llama-server) as a managed backend, "
            f"{count} round(s), put to sleep by {sleep_method}; ms, median then max over rounds",
            _table(headers, rows),
            "overhead = cold TTFT - warm TTFT - server start (started by hand), per round",
            "after ready = the part of it after the managed server could answer: readiness polling "
            f"(every {READY_POLL_INTERVAL_SECONDS * 1000:g} ms) and hand-off to the waiting request",
            "",
            f"gatewayd start to ready (this config, backends asleep): {ms(startup.start_to_ready_seconds)}; "
            f"import floor (python -c '{IMPORT_FLOOR_CODE}') {ms(startup.import_floor_seconds)}, ratio "
            f"{startup.start_to_ready_seconds / startup.import_floor_seconds:.2f}; load average "
            + ", ".join(f"{value:.2f}" for value in os.getloadavg()),
        ]
    )


def as_json(results: dict[float, list[Round]]) -> dict[str, Any]:
    return {
        f"{load:g}": {
            "summary": summarize(rounds),
            "rounds": [
                {
                    **asdict(r),
                    "overhead_seconds": r.overhead_seconds,
                    "after_ready_seconds": r.after_ready_seconds,
                }
                for r in rounds
            ],
        }
        for load, rounds in results.items()
    }


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def parse_load_seconds(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of seconds: {text!r}") from error
    if not values or any(value < 0 for value in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"give distinct non-negative seconds, e.g. 0,2: {text!r}")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument(
        "--load-seconds",
        type=parse_load_seconds,
        default=parse_load_seconds(DEFAULT_LOAD_SECONDS),
        help=f"the test server's model load times, comma-separated (default {DEFAULT_LOAD_SECONDS})",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    with tempfile.TemporaryDirectory(prefix="bench-coldstart-") as tmp:
        directory = Path(tmp)
        try:
            results, sleep_method, startup = run(args.load_seconds, args.rounds, directory)
        except (AssertionError, RuntimeError, OSError, httpx.HTTPError) as error:
            print(f"cold-start benchmark failed: {error}", file=sys.stderr)
            log = directory / "gatewayd.log"
            if log.exists():
                print(f"gatewayd's log (last 4000 characters):\n{log.read_text()[-4000:]}", file=sys.stderr)
            return 1
    print(format_figures(results, sleep_method, startup))
    if args.json:
        figures = {**as_json(results), "startup": asdict(startup), "load_average": os.getloadavg()}
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
