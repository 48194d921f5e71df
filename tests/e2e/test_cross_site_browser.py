"""Pages of other sites against the real gateway, in a real headless browser (Debian's chromium driven by
Playwright): a page whose name resolves to 127.0.0.1 (DNS rebinding, simulated with chromium's
--host-resolver-rules), a page on another port that sends a blind text/plain POST, and a chat UI whose
origin is in server.cors_origins, which reads answers and streams through CORS.

Skipped when the ``playwright`` package or a chromium binary is missing (``apt-get install chromium``).
``GATEWAYD_CHROMIUM`` names another binary."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from gatewayd.config import Backend, BackendKind, Config, ServerSettings
from tests.support.fake_backend import FakeBackend, running_fake_backend
from tests.support.gateway import RunningGateway, running_gateway

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("GATEWAYD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
MODEL = "m"
#: the attacker's name, resolved by the browser to 127.0.0.1
REBOUND = "rebound.example"
BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False})


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        page = b"<!doctype html><title>another site</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def pages() -> Iterator[tuple[int, int]]:
    """Two web servers on loopback: (the chat UI's port, another site's port)."""
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), _Page) for _ in range(2)]
    threads = [threading.Thread(target=server.serve_forever, daemon=True) for server in servers]
    for thread in threads:
        thread.start()
    try:
        yield servers[0].server_address[1], servers[1].server_address[1]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def browser() -> Iterator[Any]:
    """Closed before the gateway stops (tests take it after ``setup``), so no connection is left open."""
    if CHROMIUM is None:
        pytest.skip("no chromium binary (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=[f"--host-resolver-rules=MAP {REBOUND} 127.0.0.1"]
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def setup(pages: tuple[int, int]) -> Iterator[tuple[RunningGateway, FakeBackend, str, str]]:
    ui_port, other_port = pages
    ui, other = f"http://localhost:{ui_port}", f"http://localhost:{other_port}"
    with running_fake_backend(models=(MODEL,)) as fake:
        config = Config(
            server=ServerSettings(cors_origins=(ui,)),
            backends=(Backend(id="b", url=fake.url, kind=BackendKind.OPENAI, models=(MODEL,)),),
        )
        with running_gateway(config) as gateway:
            yield gateway, fake, ui, other


def chats(fake: FakeBackend) -> int:
    return fake.stats().count("/v1/chat/completions")


BLIND_POST = """async ([url, body]) => {
    const response = await fetch(url, {method: "POST", mode: "no-cors", body,
                                       headers: {"Content-Type": "text/plain"}});
    return response.type;
}"""
READ = """async ([url, init]) => {
    try {
        const response = await fetch(url, init);
        return {status: response.status, backend: response.headers.get("x-gatewayd-backend"),
                text: await response.text()};
    } catch (error) {
        return {failed: String(error)};
    }
}"""


def test_a_rebound_name_reads_nothing(
    setup: tuple[RunningGateway, FakeBackend, str, str], browser: Any
) -> None:
    gateway, _, _, _ = setup
    page = browser.new_page()
    rebound = page.goto(f"http://{REBOUND}:{gateway.port}/status")
    assert rebound is not None
    assert rebound.status == 403
    assert "host_not_allowed" in rebound.text()
    own = page.goto(f"http://localhost:{gateway.port}/status")
    assert own is not None
    assert own.status == 200


def test_another_sites_page_cannot_run_a_generation_or_read_anything(
    setup: tuple[RunningGateway, FakeBackend, str, str], browser: Any
) -> None:
    gateway, fake, ui, other = setup
    chat = f"{gateway.url}/api/chat"
    page = browser.new_page()
    page.goto(other)
    before = chats(fake)
    assert page.evaluate(BLIND_POST, [chat, BODY]) == "opaque"  # sent; the answer is hidden from the page
    read = page.evaluate(READ, [f"{gateway.url}/v1/models", {}])
    assert "failed" in read  # refused, and no CORS header to read it by

    allowed = browser.new_page()
    allowed.goto(ui)
    assert allowed.evaluate(BLIND_POST, [chat, BODY]) == "opaque"
    fake.wait_for(lambda stats: stats.count("/v1/chat/completions") == before + 1)  # this one is served
    assert chats(fake) == before + 1  # ... and the other page's never was


def test_a_chat_ui_in_cors_origins_reads_answers_and_streams(
    setup: tuple[RunningGateway, FakeBackend, str, str], browser: Any
) -> None:
    gateway, _, ui, _ = setup
    page = browser.new_page()
    page.goto(ui)
    init = {
        "method": "POST",
        "headers": {"Content-Type": "application/json", "Authorization": "Bearer unused"},  # preflighted
        "body": BODY,
    }
    answer = page.evaluate(READ, [f"{gateway.url}/v1/chat/completions", init])
    assert answer.get("status") == 200, answer
    assert answer["backend"] == "b"
    assert json.loads(answer["text"])["choices"][0]["message"]["content"]
    streamed = page.evaluate(
        READ, [f"{gateway.url}/v1/chat/completions", {**init, "body": BODY.replace("false", "true")}]
    )
    assert streamed.get("status") == 200, streamed
    assert streamed["text"].rstrip().endswith("data: [DONE]")
    admin = page.evaluate(READ, [f"{gateway.url}/admin/backends", {}])
    assert "failed" in admin  # /admin stays same-origin only
