"""Jobs benchmark: submission latency, sustained jobs per second with a fast upstream, and queue latency.

    .venv/bin/python -m bench.bench_jobs                     # 2,000 jobs, 32 submitting clients
    .venv/bin/python -m bench.bench_jobs --jobs 500 --concurrency 8

Starts the fast upstream (bench/upstream.py) and a real ``gatewayd run`` with ``jobs.concurrency`` set,
submits ``--jobs`` chat jobs from ``--concurrency`` keep-alive clients, and waits until every one has
succeeded. Prints submission latency p50/p95/p99, submissions per second, jobs finished per second (from the
first submission to the last job's ``finished_at``), and the queue latency p50/p95 (``started_at`` minus
``created_at`` of each job).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.process import GatewaydProcess, wait_for

CHAT = {"model": "bench", "messages": [{"role": "user", "content": "hi"}]}


def _percentile(values: list[float], percent: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(percent / 100 * len(ordered)) - 1))]


async def _submit_all(url: str, jobs: int, concurrency: int) -> tuple[list[str], list[float], float]:
    latencies: list[float] = []
    ids: list[str] = []
    left = iter(range(jobs))
    started = time.perf_counter()

    async def client() -> None:
        async with httpx.AsyncClient(timeout=60) as http:
            for _ in left:
                begin = time.perf_counter()
                response = await http.post(url, json={"endpoint": "/v1/chat/completions", "request": CHAT})
                latencies.append(time.perf_counter() - begin)
                response.raise_for_status()
                ids.append(response.json()["id"])

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return ids, latencies, time.perf_counter() - started


def _all_jobs(gw: GatewaydProcess) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100, **({"after": after} if after else {})}
        page = httpx.get(gw.url("/v1/jobs"), params=params, timeout=30).json()
        jobs += page["data"]
        if not page["has_more"]:
            return jobs
        after = page["last_id"]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--job-concurrency", type=int, default=32, help="jobs.concurrency")
    args = parser.parse_args()
    upstream = subprocess.Popen(
        [sys.executable, "bench/upstream.py", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert upstream.stdout is not None
        base = upstream.stdout.readline().strip().removeprefix("listening on ")
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "config.yaml"
            config.write_text(
                "logging:\n  access_log: false\n"
                f"jobs:\n  concurrency: {args.job_concurrency}\n  poll_interval_seconds: 0.2\n"
                f"backends:\n  - id: up\n    url: {base}\n    models: [bench]\n    max_concurrency: 64\n"
            )
            with GatewaydProcess.gatewayd(Path(tmp), config) as gw:
                gw.wait_ready()
                begin = time.time()
                ids, latencies, took = asyncio.run(
                    _submit_all(gw.url("/v1/jobs"), args.jobs, args.concurrency)
                )

                def all_done() -> list[dict[str, Any]] | None:
                    jobs = _all_jobs(gw)
                    return (
                        jobs
                        if all(j["state"] == "succeeded" for j in jobs) and len(jobs) == len(ids)
                        else None
                    )

                jobs = wait_for(all_done, timeout=600, interval=0.5, what="every job to succeed")
                last = max(j["finished_at"] for j in jobs)
                queue = [j["started_at"] - j["created_at"] for j in jobs]
                gw.stop()
    finally:
        upstream.terminate()
        upstream.wait(10)
    ms = [value * 1000 for value in latencies]
    print(f"jobs: {len(ids)} from {args.concurrency} clients, jobs.concurrency {args.job_concurrency}")
    print(f"submission latency ms: p50 {statistics.median(ms):.2f}  p95 {_percentile(ms, 95):.2f}  "
          f"p99 {_percentile(ms, 99):.2f}; {len(ids) / took:,.0f} submissions/s")  # fmt: skip
    print(f"jobs finished per second (first submission to last finish): {len(ids) / (last - begin):,.0f}")
    print(f"queue latency s: p50 {statistics.median(queue):.3f}  p95 {_percentile(queue, 95):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
