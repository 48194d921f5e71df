"""A test-only GenerationFactory, and a script that runs the real run loop with it.

    python -m tests.support.supervisor_apps run --config PATH --state-dir DIR [--port P]

The generations it builds know nothing about LLMs; they serve just enough to observe the supervisor:

    GET /healthz                     200
    GET /readyz                      200, or 503 once the generation is draining
    GET /config                      {"generation": n, "marker": <first backend id>, "pid": pid}
    GET /status                      the shape the gateway serves: {"instance": snapshot, ...status()}
    GET /slow?seconds=S              a plain (non-stream) response after S seconds
    GET /stream?chunks=N&delay=D     a chunked stream of N lines, D seconds apart; end_streams() ends it early
                                     with a final "shutdown" line
    GET /hang                        never answers (cancellable)
    GET /hang?shield=1               never answers and ignores cancellation
    GET /wedge                       blocks the event loop (time.sleep) for an hour
    GET /wedge?on_drain=1            the same, once the generation is marked draining (a stop began)
    GET /crash                       a background task of the generation fails (the generation dies)

Knobs, read from the config so that a test can make one *reload* misbehave while the first start is fine
(the first backend's id is the "marker"; an id may be any string):

    a backend id "fail-start"        the generation's start raises
    a backend id "hang-start"        the generation's start never finishes
    a backend id "start-delay-S"     the generation's start takes S seconds
    a line "# crash-load"            load_config raises RuntimeError (not a ConfigError)

and from the environment, for a respawned child only (the variable is set by the test; the child sees
GATEWAYD_INHERIT at startup):

    GATEWAYD_TEST_CHILD=hang         a respawned child never becomes ready
    GATEWAYD_TEST_CHILD=exit         a respawned child exits with code 3 at once

A warm standby (``restart.warm_standby``) waits before any of this, so the knobs apply to it once handed over.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import parse_qs

import anyio

from gatewayd.config import Config
from gatewayd.config.loader import load
from gatewayd.errors import GatewaydError
from gatewayd.supervisor.contract import InstanceInfo, Receive, Scope, Send
from gatewayd.supervisor.diagnostics import EventRing
from gatewayd.supervisor.runloop import RunOptions, run
from gatewayd.supervisor.service import detect_service_manager
from gatewayd.supervisor.standby import wait_as_standby

CHILD_KNOB_ENV = "GATEWAYD_TEST_CHILD"


class TestGeneration:
    """One generation of the test app. Per-generation state only."""

    def __init__(self, config: Config, number: int, instance: InstanceInfo) -> None:
        self.config = config
        self.number = number
        self.instance = instance
        self.draining = False
        self.in_flight = 0
        self._streams_end = anyio.Event()
        self.crash = anyio.Event()

    @property
    def marker(self) -> str | None:
        return self.config.backends[0].id if self.config.backends else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.in_flight += 1
        try:
            await self._serve(scope, send)
        finally:
            self.in_flight -= 1

    async def _serve(self, scope: Scope, send: Send) -> None:
        path = scope["path"]
        query = {key: values[0] for key, values in parse_qs(scope.get("query_string", b"").decode()).items()}
        if path == "/healthz":
            await _json(send, 200, {"status": "ok"})
        elif path == "/readyz":
            await _json(send, 503 if self.draining else 200, {"draining": self.draining})
        elif path == "/config":
            await _json(send, 200, {"generation": self.number, "marker": self.marker, "pid": os.getpid()})
        elif path == "/status":
            body = {
                "instance": dict(self.instance.snapshot()),
                "generation": self.number,
                "draining": self.draining,
                **self.status(),
            }
            await _json(send, 200, body)
        elif path == "/slow":
            await anyio.sleep(float(query.get("seconds", "1")))
            await _json(send, 200, {"generation": self.number, "slept": float(query.get("seconds", "1"))})
        elif path == "/stream":
            await self._stream(send, int(query.get("chunks", "10")), float(query.get("delay", "0.1")))
        elif path == "/hang":
            if query.get("shield"):
                with anyio.CancelScope(shield=True):
                    await anyio.sleep_forever()
            await anyio.sleep_forever()
        elif path == "/crash":
            self.crash.set()
            await _json(send, 200, {"crashing": self.number})
        elif path == "/wedge":
            while query.get("on_drain") and not self.draining:
                await anyio.sleep(0.01)
            time.sleep(3600)  # noqa: ASYNC251 - the point: a wedged event loop
        else:
            await _json(send, 404, {"error": "not found"})

    async def _stream(self, send: Send, chunks: int, delay: float) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"x-generation", str(self.number).encode())],
            }
        )
        for index in range(chunks):
            if index:
                with anyio.move_on_after(delay):
                    await self._streams_end.wait()
            if self._streams_end.is_set():
                await send({"type": "http.response.body", "body": b"shutdown\n", "more_body": True})
                break
            await send({"type": "http.response.body", "body": b"chunk %d\n" % index, "more_body": True})
        else:
            await send({"type": "http.response.body", "body": b"done\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    def mark_draining(self) -> None:
        self.draining = True

    def end_streams(self) -> None:
        self._streams_end.set()

    def status(self) -> Mapping[str, object]:
        return {"backends_up": 0, "backends_total": len(self.config.backends), "in_flight": self.in_flight}


async def _json(send: Send, status: int, body: object) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class TestFactory:
    """GenerationFactory of ``TestGeneration``. Loads configs with the real loader (real ConfigErrors)."""

    def __init__(self, *, port: int | None = None, child_knob: str | None = None) -> None:
        self._port = port
        self._child_knob = child_knob

    @asynccontextmanager
    async def lifetime(self) -> AsyncIterator[None]:
        yield

    def hand_over(self) -> None:
        pass

    def load_config(self, path: str | None) -> Config:
        if path and "# crash-load" in Path(path).read_text():
            raise RuntimeError("load_config crashed (crash-load)")
        return load(Path(path) if path else None, environ=os.environ, listen_port=self._port).config

    @asynccontextmanager
    async def generation(
        self, config: Config, *, number: int, instance: InstanceInfo
    ) -> AsyncIterator[TestGeneration]:
        ids = [backend.id for backend in config.backends]
        if self._child_knob == "hang":
            await anyio.sleep_forever()
        if "fail-start" in ids:
            raise RuntimeError(f"generation {number} refuses to start (fail-start)")
        if "hang-start" in ids:
            await anyio.sleep_forever()
        for backend_id in ids:
            if backend_id.startswith("start-delay-"):
                await anyio.sleep(float(backend_id.removeprefix("start-delay-")))
        generation = TestGeneration(config, number, instance)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_crash_when_asked, generation)
            yield generation
            tg.cancel_scope.cancel()


async def _crash_when_asked(generation: TestGeneration) -> None:
    await generation.crash.wait()
    raise RuntimeError(f"generation {generation.number} crashed (/crash)")


def write_config(path: Path, *, marker: str, port: int, extra: str = "") -> Path:
    """A config file for the test factory: one backend whose id is ``marker`` (see the knobs above)."""
    path.write_text(
        f"server:\n  host: 127.0.0.1\n  port: {port}\n"
        f"backends:\n  - id: {marker}\n    url: http://127.0.0.1:9\n" + extra
    )
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="supervisor_apps")
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run")
    run_parser.add_argument("--config", required=True)
    run_parser.add_argument("--state-dir", required=True)
    run_parser.add_argument("--port", type=int)
    run_parser.add_argument("--no-uvloop", action="store_true", help="run on the stock asyncio loop")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format=f"%(asctime)s [{os.getpid()}] %(levelname)s %(message)s"
    )
    events = EventRing()
    logging.getLogger().addHandler(events)
    if not wait_as_standby(os.environ):
        return 0
    child_knob = os.environ.get(CHILD_KNOB_ENV) if "GATEWAYD_INHERIT" in os.environ else None
    if child_knob == "exit":
        return 3
    factory = TestFactory(port=args.port, child_knob=child_knob)
    options = RunOptions(
        config_path=str(Path(args.config).absolute()),
        state_dir=Path(args.state_dir).absolute(),
        respawn_command=(sys.executable, "-m", "tests.support.supervisor_apps", *sys.argv[1:]),
        use_uvloop=not args.no_uvloop,
        events=events,
        service_manager=detect_service_manager(os.environ, os.getpid()),
    )
    try:
        return run(factory, options)
    except GatewaydError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
