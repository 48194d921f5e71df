"""Slowloris benchmark: two floods of sockets that each send half a request head and then nothing.

    .venv/bin/python -m bench.bench_slowloris                    # 2 floods of 20,000 sockets
    .venv/bin/python -m bench.bench_slowloris --sockets 2000     # a quick look

Starts the real ``gatewayd run`` (default server settings: header timeout 10 s, connection cap derived from
the open-file limit) in front of a fake OpenAI backend, all on 127.0.0.1. Then, twice: opens ``--sockets``
connections that each send ``GET /healthz HTTP/1.1\\r\\nHost: x\\r\\n`` and nothing more, and with the flood
still open measures how long a normal client waits for ``GET /healthz`` and for a chat completion (new
connections each). It then waits (bounded) until gatewayd has closed the flood's connections. Prints, per
flood: the time to open it, the good client's two times, gatewayd's open descriptors and RSS at the peak and
after the flood, and the number of accept()-error and connection-cap log lines. This process raises its own
open-file limit to fit the flood (it needs root to go past the hard limit; otherwise the flood is smaller, and
the output says so). Exit status 1 if a good request took longer than the 1 s target or failed.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

from tests.support.fake_backend import running_fake_backend
from tests.support.process import GatewaydProcess

TARGET_SECONDS = 1.0
PARTIAL_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
#: connections the flood opens concurrently
CONNECTING_AT_ONCE = 256
#: descriptors this process keeps for itself besides the flood
OWN_FDS = 200
MODEL = "bench-model"
#: gatewayd closes the flood within its header timeout (10 s) plus this
CLOSE_MARGIN_SECONDS = 20.0


def raise_own_limit(wanted: int) -> int:
    """Raise this process's open-file limit to ``wanted`` if it can; return the soft limit in force."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for new_hard in (max(hard, wanted), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, new_hard), new_hard))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_flood(port: int, count: int) -> list[socket.socket]:
    """``count`` sockets that sent a partial head, opened CONNECTING_AT_ONCE at a time (as fast as a single
    attacking process can). A socket gatewayd closes at once to make room is kept all the same."""

    async def flood() -> list[socket.socket]:
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(CONNECTING_AT_ONCE)
        opened: list[socket.socket] = []

        async def one() -> None:
            async with gate:
                sock = socket.socket()
                sock.setblocking(False)
                opened.append(sock)
                try:
                    await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), 10)
                    await loop.sock_sendall(sock, PARTIAL_HEAD)
                except (OSError, TimeoutError):
                    pass

        await asyncio.gather(*(one() for _ in range(count)))
        return opened

    return asyncio.run(flood())


class Prober(threading.Thread):
    """A normal client asking for /healthz again and again while the flood is being opened: the longest
    wait seen is the worst a client would have met."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.times: list[float] = []
        self.failures = 0

    def run(self) -> None:
        while not self.stop.is_set():
            start = time.perf_counter()
            try:
                with httpx.Client(timeout=30) as client:
                    client.get(self.url + "/healthz").raise_for_status()
                self.times.append(time.perf_counter() - start)
            except httpx.HTTPError:
                self.failures += 1
            self.stop.wait(0.2)


def good_client(url: str) -> tuple[float, float]:
    """Seconds to an answer for GET /healthz and for a chat completion, each on a new connection."""
    with httpx.Client(timeout=30) as client:
        start = time.perf_counter()
        assert client.get(url + "/healthz", headers={"Connection": "close"}).status_code == 200
        healthz = time.perf_counter() - start
    with httpx.Client(timeout=30) as client:
        start = time.perf_counter()
        response = client.post(
            url + "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        )
        chat = time.perf_counter() - start
    assert response.status_code == 200, response.text
    return healthz, chat


def mib(process: psutil.Process) -> float:
    return float(process.memory_info().rss) / 2**20


def wait_closed(process: psutil.Process, baseline_fds: int, deadline: float) -> float:
    """Wait until gatewayd holds no more descriptors than before the flood (+ a few); return the seconds."""
    start = time.monotonic()
    while process.num_fds() > baseline_fds + 8 and time.monotonic() < deadline:
        time.sleep(0.1)
    return time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sockets", type=int, default=20_000)
    parser.add_argument("--floods", type=int, default=2)
    args = parser.parse_args(argv)

    limit = raise_own_limit(args.sockets + OWN_FDS)
    sockets = min(args.sockets, limit - OWN_FDS)
    if sockets < args.sockets:
        print(f"open-file limit {limit}: flooding with {sockets} sockets instead of {args.sockets}")
    ok = True
    with (
        tempfile.TemporaryDirectory(prefix="bench-slowloris-") as tmp,
        running_fake_backend(models=(MODEL,)) as fake,
    ):
        tmp_path = Path(tmp)
        config = tmp_path / "config.yaml"
        config.write_text(
            "discovery:\n  enabled: false\n"
            f"backends:\n  - id: fake\n    url: {fake.url}\n    kind: openai\n    models: [{MODEL}]\n"
        )
        with GatewaydProcess.gatewayd(tmp_path, config) as gw:
            gw.wait_ready()
            url = f"http://127.0.0.1:{gw.port}"
            process = psutil.Process(gw.pid)
            good_client(url)  # warm the upstream pool
            baseline_fds = process.num_fds()
            print(f"gatewayd pid {gw.pid}: RSS {mib(process):.1f} MiB, {baseline_fds} fds before any flood")
            for number in range(1, args.floods + 1):
                prober = Prober(url)
                prober.start()
                start = time.monotonic()
                flood = open_flood(gw.port, sockets)
                opened = time.monotonic() - start
                prober.stop.set()
                prober.join()
                try:
                    healthz, chat = good_client(url)
                    peak_fds, peak_rss = process.num_fds(), mib(process)
                    closed_in = wait_closed(
                        process, baseline_fds, time.monotonic() + 10 + CLOSE_MARGIN_SECONDS
                    )
                finally:
                    for sock in flood:
                        sock.close()
                time.sleep(0.5)
                print(
                    f"flood {number}: {len(flood)} sockets opened in {opened:.1f}s; with it open: "
                    f"/healthz {healthz * 1000:.0f} ms, chat completion {chat * 1000:.0f} ms; "
                    f"gatewayd at the peak {peak_fds} fds, {peak_rss:.1f} MiB; flood closed by gatewayd "
                    f"{closed_in:.1f}s after the answers; after: {process.num_fds()} fds, "
                    f"RSS {mib(process):.1f} MiB"
                )
                worst = max(prober.times, default=0.0)
                print(
                    f"  while the flood was being opened: {len(prober.times)} /healthz answered, slowest "
                    f"{worst * 1000:.0f} ms, {prober.failures} failed"
                )
                ok = ok and healthz <= TARGET_SECONDS and chat <= TARGET_SECONDS and not prober.failures
            log = gw.log_path.read_text(errors="replace")
            print(
                f"log lines: {log.count('accept() failed')} accept() failures, "
                f"{log.count('server.max_connections')} about the connection cap"
            )
            gw.stop()
    print("target met" if ok else f"a good request took longer than {TARGET_SECONDS:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
