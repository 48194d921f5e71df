"""An aiohttp load generator, run as its own process by bench_gateway.py: closed loop, N concurrent clients.

``python bench/loadgen.py --url URL --concurrency N --duration-seconds S --mode plain|stream`` sends
``POST URL`` (an OpenAI chat completion, ``"stream": true`` in stream mode) from N keep-alive clients for
S seconds and prints one JSON object:

- ``requests``, ``errors``, ``elapsed_seconds``, ``rps``;
- ``latency_ms``: p50/p99 of whole-response times (plain) or whole-stream times (stream);
- stream mode only: ``ttfc_ms``, p50/p99 of the time from sending the request to the first SSE event.

A request counts as an error on a non-200 status, a transport error, or (stream) a stream without
``data: [DONE]``. Requests still running at the deadline are finished, then counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

PLAIN_BODY = {"model": "bench", "messages": [{"role": "user", "content": "Say hello."}]}
STREAM_BODY = {**PLAIN_BODY, "stream": True}
#: one request may take at most this long before it counts as an error
REQUEST_TIMEOUT_SECONDS = 30.0


@dataclass
class Results:
    latencies: list[float] = field(default_factory=list)
    first_chunks: list[float] = field(default_factory=list)
    errors: int = 0


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


async def _plain(session: aiohttp.ClientSession, url: str, body: bytes, results: Results) -> None:
    started = time.perf_counter()
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
        await response.read()
        if response.status != 200:
            results.errors += 1
            return
    results.latencies.append(time.perf_counter() - started)


async def _stream(session: aiohttp.ClientSession, url: str, body: bytes, results: Results) -> None:
    started = time.perf_counter()
    first: float | None = None
    done = False
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
        if response.status != 200:
            await response.read()
            results.errors += 1
            return
        async for line in response.content:
            if not line.startswith(b"data: "):
                continue
            if first is None:
                first = time.perf_counter() - started
            if line.startswith(b"data: [DONE]"):
                done = True
    if first is None or not done:
        results.errors += 1
        return
    results.first_chunks.append(first)
    results.latencies.append(time.perf_counter() - started)


async def run(url: str, concurrency: int, duration_seconds: float, mode: str) -> dict[str, Any]:
    body = json.dumps(STREAM_BODY if mode == "stream" else PLAIN_BODY).encode()
    one = _stream if mode == "stream" else _plain
    results = Results()
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        deadline = started + duration_seconds

        async def client() -> None:
            while time.perf_counter() < deadline:
                try:
                    await one(session, url, body, results)
                except (aiohttp.ClientError, TimeoutError):
                    results.errors += 1

        async with asyncio.TaskGroup() as tasks:
            for _ in range(concurrency):
                tasks.create_task(client())
        elapsed = time.perf_counter() - started

    summary: dict[str, Any] = {
        "mode": mode,
        "concurrency": concurrency,
        "requests": len(results.latencies),
        "errors": results.errors,
        "elapsed_seconds": elapsed,
        "rps": len(results.latencies) / elapsed if elapsed > 0 else 0.0,
        "latency_ms": _quantiles(results.latencies),
    }
    if mode == "stream":
        summary["ttfc_ms"] = _quantiles(results.first_chunks)
    return summary


def _quantiles(seconds: Sequence[float]) -> dict[str, float | None]:
    p50, p99 = percentile(seconds, 0.50), percentile(seconds, 0.99)
    return {
        "p50": None if p50 is None else p50 * 1000,
        "p99": None if p99 is None else p99 * 1000,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="full URL of the chat completions endpoint")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration-seconds", type=float, default=5.0)
    parser.add_argument("--mode", choices=("plain", "stream"), default="plain")
    args = parser.parse_args(argv)
    coroutine = run(args.url, args.concurrency, args.duration_seconds, args.mode)
    try:
        import uvloop
    except ImportError:
        summary = asyncio.run(coroutine)
    else:
        summary = uvloop.run(coroutine)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
