"""An in-process gateway for tests: one generation of the real gateway, served by the real supervisor's
server and dispatcher on 127.0.0.1, on a thread with its own event loop (so sync clients such as the
official openai and ollama packages can call it)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from gatewayd.config import Config
from gatewayd.gateway.generation import GatewayGeneration
from gatewayd.gateway.service import GatewayFactory
from gatewayd.supervisor.dispatcher import Dispatcher, GenerationSlot
from gatewayd.supervisor.server import HttpServer


class _Instance:
    def snapshot(self) -> Mapping[str, object]:
        return {"pid": 0, "generation": 1, "mode": "test"}


@dataclass
class RunningGateway:
    url: str
    port: int
    generation: GatewayGeneration
    factory: GatewayFactory
    _call: Callable[[Callable[[], Any]], Any]
    #: the HTTP server (its connection count, its cap)
    server: HttpServer | None = None

    @property
    def openai_url(self) -> str:
        return f"{self.url}/v1"

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the gateway's event loop thread and return its result (for reading live state)."""
        return self._call(fn)


@contextmanager
def running_gateway(config: Config, *, state_dir: Path | None = None) -> Iterator[RunningGateway]:
    """Serve one generation built from ``config`` until the block exits."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    config = replace(config, server=replace(config.server, port=port))
    factory = GatewayFactory(state_dir=state_dir or Path("/nonexistent"))
    ready: Future[tuple[GatewayGeneration, Any, HttpServer]] = Future()
    stop = threading.Event()

    async def main() -> None:
        token = anyio.lowlevel.current_token()
        async with (
            factory.lifetime(),
            factory.generation(config, number=1, instance=_Instance()) as generation,
        ):
            dispatcher = Dispatcher()
            dispatcher.swap(GenerationSlot(generation, number=1))
            server = HttpServer(listener, dispatcher, config.server)
            async with anyio.create_task_group() as tg:
                await tg.start(server.serve)
                ready.set_result((generation, token, server))
                while not stop.is_set():
                    await anyio.sleep(0.02)
                tg.cancel_scope.cancel()

    def thread_main() -> None:
        try:
            anyio.run(main)
        except BaseException as error:  # surfaced to the test below
            if not ready.done():
                ready.set_exception(error)
            raise

    thread = threading.Thread(target=thread_main, name="gateway", daemon=True)
    thread.start()
    generation, token, server = ready.result(timeout=10)

    def call(fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return fn()

        return anyio.from_thread.run(run, token=token)

    try:
        yield RunningGateway(f"http://127.0.0.1:{port}", port, generation, factory, call, server)
    finally:
        stop.set()
        thread.join(timeout=10)
        listener.close()


@pytest.fixture
def gateway_factory() -> Iterator[Callable[[Config], RunningGateway]]:
    """Start in-process gateways: ``gw = gateway_factory(Config(backends=...))``; stopped at test end."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        yield lambda config: stack.enter_context(running_gateway(config))
