"""The status page in a real headless browser: Debian's chromium driven by Playwright, against the real
``gatewayd run`` in front of the test model server run as a separate process. The page renders, shows the
model's tokens per second once it has answered, the backend going down when its server stops and up again
when it comes back, reloads through its button (with the admin token typed in), and logs no console error
or uncaught exception on the way.

Skipped when the ``playwright`` package or a chromium binary is missing (``apt-get install chromium``; the
browser Playwright downloads itself is not used). ``GATEWAYD_CHROMIUM`` names another binary.
With ``GATEWAYD_UPDATE_SCREENSHOT=1`` the final screenshot is also written to docs/status-page.png."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fake_backend import spawn_fake_backend
from tests.support.process import REPO_ROOT, GatewaydProcess, free_port, process_alive, wait_for

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("GATEWAYD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOT = REPO_ROOT / "docs" / "status-page.png"
MODEL = "fake-model"
#: what the page may take to show a change (it polls every second; probes run every 0.25 s)
PAGE_TIMEOUT_MS = 20_000
#: the test traffic: one request per this long, at most this many
TRAFFIC_INTERVAL_SECONDS = 0.1
TRAFFIC_MAX_REQUESTS = 400
BEHAVIOUR = {"first_byte_delay_seconds": 0.02, "chunk_delay_seconds": 0.01}


def write_config(path: Path, backend_port: int) -> Path:
    path.write_text(
        f"""
health:
  probe_interval_busy_seconds: 0.25
  probe_interval_idle_seconds: 0.25
  probe_timeout_seconds: 1.0
  failure_threshold: 1
  cooldown_seconds: 0.5
backends:
  - id: fake
    url: http://127.0.0.1:{backend_port}
    models: [{MODEL}]
routes:
  - model: chat
    targets: [{{backend: fake, model: {MODEL}}}]
"""
    )
    return path


class FakeServer:
    """The test model server as a process that can be stopped and started again on the same port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process, _ = spawn_fake_backend(models=(MODEL,), port=self.port, behaviour=BEHAVIOUR)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        with process:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class Traffic(threading.Thread):
    """Chat requests through the gateway, streamed and not, until stopped (bounded in count); failures
    while the backend is down are expected and only counted."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.done = threading.Event()
        self.statuses: list[int] = []

    def run(self) -> None:
        body: dict[str, Any] = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(timeout=10) as client:
            for i in range(TRAFFIC_MAX_REQUESTS):
                if self.done.wait(TRAFFIC_INTERVAL_SECONDS):
                    return
                try:
                    response = client.post(
                        f"{self.url}/v1/chat/completions", json={**body, "stream": i % 2 == 0}
                    )
                    self.statuses.append(response.status_code)
                except httpx.HTTPError:
                    self.statuses.append(0)

    def stop(self) -> None:
        self.done.set()
        self.join(15)


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("no chromium binary (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield browser
        finally:
            browser.close()


def watch_console(page: Any) -> list[str]:
    """The page's console errors (failed loads and policy violations included) and uncaught exceptions,
    as they come."""
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))
    return problems


def backend_state_of(backend: str, state: str) -> str:
    return f'#backends tr[data-backend="{backend}"] td.state .badge[data-state="{state}"]'


def backend_state(state: str) -> str:
    return backend_state_of("fake", state)


def test_the_page_follows_a_backend_down_and_up_and_reloads(tmp_path: Path, browser: Any) -> None:
    fake = FakeServer(free_port())
    with ExitStack() as stack:
        fake.start()
        stack.callback(fake.stop)
        gw = stack.enter_context(
            GatewaydProcess.gatewayd(tmp_path, write_config(tmp_path / "c.yaml", fake.port))
        )
        gw.wait_ready()
        traffic = Traffic(gw.url("").rstrip("/"))
        stack.callback(traffic.stop)

        page = browser.new_page(viewport={"width": 1200, "height": 800})
        problems = watch_console(page)
        page.goto(gw.url("/"))

        page.wait_for_selector(backend_state("up"), timeout=PAGE_TIMEOUT_MS)
        # an OpenAI-kind backend with no max_concurrency: unbounded, and the page says so
        concurrency = '#backends tr[data-backend="fake"] td.concurrency'
        assert re.fullmatch(r"\d+/∞ unbounded", page.inner_text(concurrency))
        assert "429" in (page.get_attribute(concurrency, "title") or "")
        assert page.inner_text('#models tr[data-model="chat"]').startswith("chat")
        assert page.inner_text('#instance dd[data-field="pid"]') == str(gw.pid)
        reload_button = page.locator("#reload")
        assert reload_button.is_disabled()
        assert "admin token" in (reload_button.get_attribute("title") or "")

        speed = '#models tr[data-model="chat"] td.tokens-per-second'
        assert page.inner_text(speed) == "—"  # nothing generated yet
        traffic.start()
        page.wait_for_selector("#recent tbody tr td.status-ok", timeout=PAGE_TIMEOUT_MS)
        # the answers sent in one piece report their tokens: the model's speed shows in its row
        wait_for(
            lambda: re.fullmatch(r"\d+\.\d", page.inner_text(speed)),
            timeout=PAGE_TIMEOUT_MS / 1000,
            what="the model's tokens per second",
        )
        assert float(page.inner_text(speed)) > 0
        assert "tokens in" in (page.get_attribute(speed, "title") or "")

        fake.stop()
        page.wait_for_selector(backend_state("down"), timeout=PAGE_TIMEOUT_MS)
        page.wait_for_selector("#recent tbody tr td.status-error", timeout=PAGE_TIMEOUT_MS)

        fake.start()
        page.wait_for_selector(backend_state("up"), timeout=PAGE_TIMEOUT_MS)
        served_before = traffic.statuses.count(200)
        wait_for(
            lambda: traffic.statuses.count(200) > served_before + 5, timeout=20, what="requests served again"
        )
        traffic.stop()

        recent_before = gw.get("/status/activity").json()["recent"]
        page.fill("#token", "any-token")  # no admin token is configured: the admin API is open on loopback
        assert reload_button.is_enabled()
        reload_button.click()
        page.wait_for_selector('#message[data-kind="ok"]', timeout=PAGE_TIMEOUT_MS)
        wait_for(
            lambda: page.inner_text('#instance dd[data-field="generation"]') == "2",
            timeout=PAGE_TIMEOUT_MS / 1000,
            what="the page to show generation 2",
        )
        page.wait_for_selector(
            '#instance dd[data-field="last-reload"] .badge[data-state="ok"]', timeout=PAGE_TIMEOUT_MS
        )
        page.wait_for_selector(backend_state("up"), timeout=PAGE_TIMEOUT_MS)
        assert gw.get("/status/activity").json()["recent"] == recent_before  # kept across the reload

        page.select_option("#chart-window", "60")
        shot = tmp_path / "status-page.png"
        page.screenshot(path=str(shot))
        assert shot.read_bytes().startswith(b"\x89PNG")
        if os.environ.get("GATEWAYD_UPDATE_SCREENSHOT") == "1":
            SCREENSHOT.parent.mkdir(exist_ok=True)
            shutil.copyfile(shot, SCREENSHOT)

        assert problems == []
        assert 503 in traffic.statuses or 0 in traffic.statuses  # the page saw real failures, not a lull


def managed_config(path: Path) -> Path:
    command = json.dumps(
        [sys.executable, "-m", "tests.support.fake_backend", "--port", "${PORT}", "--models", "m"]
    )
    path.write_text(
        "health:\n"
        "  probe_interval_busy_seconds: 0.25\n"
        "  probe_interval_idle_seconds: 0.25\n"
        "backends:\n"
        "  - id: local\n"
        "    kind: openai\n"
        f"    command: {command}\n"
        f"    cwd: {json.dumps(str(REPO_ROOT))}\n"
        "    models: [m]\n"
        "    start_timeout_seconds: 30\n"
    )
    return path


def server_state(state: str) -> str:
    return f'#backends tr[data-backend="local"] td.server .badge[data-state="{state}"]'


def kill_leftover_servers(state_dir: Path) -> None:
    """Managed servers run in sessions of their own: a failed test's are killed through their records."""
    for leftover in (state_dir / "backends").glob("*.json"):
        try:
            os.killpg(int(json.loads(leftover.read_text())["pgid"]), signal.SIGKILL)
        except (ProcessLookupError, ValueError, KeyError):
            pass


def test_start_and_stop_buttons_drive_a_managed_backend(tmp_path: Path, browser: Any) -> None:
    with ExitStack() as stack:
        gw = stack.enter_context(GatewaydProcess.gatewayd(tmp_path, managed_config(tmp_path / "c.yaml")))
        stack.callback(kill_leftover_servers, gw.state_dir)
        gw.wait_ready()
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        problems = watch_console(page)
        page.goto(gw.url("/ui"))

        page.wait_for_selector(server_state("sleeping"), timeout=PAGE_TIMEOUT_MS)
        start = page.locator('button[data-action="start:local"]')
        assert start.is_disabled()  # no token yet
        page.fill("#token", "any-token")
        page.wait_for_selector('button[data-action="start:local"]:enabled', timeout=PAGE_TIMEOUT_MS)
        assert page.locator('button[data-action="stop:local"]').is_disabled()  # nothing to stop
        start.click()
        page.wait_for_selector(server_state("running"), timeout=PAGE_TIMEOUT_MS)
        page.wait_for_selector(backend_state_of("local", "up"), timeout=PAGE_TIMEOUT_MS)
        pid = page.inner_text('#backends tr[data-backend="local"] td.pid')
        assert pid.isdigit()
        assert process_alive(int(pid))

        page.click('button[data-action="stop:local"]')
        page.wait_for_selector(server_state("sleeping"), timeout=PAGE_TIMEOUT_MS)
        page.wait_for_selector('#message[data-kind="ok"]', timeout=PAGE_TIMEOUT_MS)
        assert "local: sleeping" in page.inner_text("#message")
        wait_for(lambda: not process_alive(int(pid)), timeout=10, what="the stopped server to exit")
        assert problems == []
