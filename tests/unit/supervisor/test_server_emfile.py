"""accept() failing with EMFILE (the process is out of file descriptors): logged once per burst, not once per
attempt, and serving resumes once descriptors are free. Runs the server in a child process whose open-file
limit is tiny, so the descriptors really run out."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

CHILD = r"""
import logging, resource, socket, sys
import anyio, anyio.to_thread
from gatewayd.config import ServerSettings
from gatewayd.supervisor.server import HttpServer

logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})

async def main():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    listener.setblocking(False)
    settings = ServerSettings(max_connections=1000, header_timeout_seconds=60)  # the cap is not what stops it
    server = HttpServer(listener, app, settings)
    print("port", listener.getsockname()[1], flush=True)
    await anyio.to_thread.run_sync(sys.stdin.readline)  # the flood is queued: now accept it
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        await anyio.sleep(60)

anyio.run(main)
"""
#: more connections than the child's 64 descriptors
FLOOD = 150
#: generous: starting an interpreter and importing the gateway is slow on a loaded machine
DEADLINE_SECONDS = 90.0


def test_emfile_is_logged_once_per_burst_and_serving_resumes(tmp_path: Path) -> None:
    log_path = tmp_path / "child.log"
    with log_path.open("wb") as log:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT
        )
    assert child.stdin is not None
    try:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while (found := re.search(r"^port (\d+)$", log_path.read_text(), re.MULTILINE)) is None:
            assert child.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        port = int(found.group(1))
        # the whole flood waits in the accept queue before the server takes any of it: one burst
        flood = [socket.create_connection(("127.0.0.1", port)) for _ in range(FLOOD)]
        child.stdin.write(b"go\n")
        child.stdin.flush()
        # accept() fails again and again while the flood holds every descriptor (it retries every 0.5 s)
        time.sleep(2.0)
        for sock in flood:
            sock.close()
        while True:  # serving resumes once the flood's descriptors are free
            assert time.monotonic() < deadline, log_path.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).text == "ok":
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        text = log_path.read_text()
        # accept() kept failing while the flood held every descriptor (retried every 0.5 s for 2 s)...
        bursts = [int(n) for n in re.findall(r"accept\(\) works again after (\d+) failures", text)]
        assert bursts, text
        assert bursts[0] >= 3, text
        # ...and that run of failures was logged once (a connection arriving while the flood's descriptors
        # are being freed may start one more, short, burst)
        assert text.count("accept() failed") == len(bursts), text
        assert len(bursts) * 2 <= sum(bursts), text
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()
        child.stdin.close()
