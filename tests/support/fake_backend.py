"""A real HTTP model server for tests, speaking the OpenAI and Ollama wire formats on 127.0.0.1.

Three ways to run it:

- ``FakeBackend`` / ``running_fake_backend(...)``: in the test process, on its own thread and event loop,
  so sync tests (the openai / ollama clients) and anyio tests alike can talk to it;
- ``serve_fake(...)`` (tests.support.fake_server): on the caller's own asyncio event loop;
- a separate process: ``python -m tests.support.fake_backend --port 0 --models a,b [--kind KIND]
  [--ready-file PATH] [--behaviour JSON] [--load-seconds S]``, or ``spawn_fake_backend(...)`` from a test.
  The first stdout line is ``listening on http://127.0.0.1:PORT``; SIGTERM/SIGINT exit 0.

What it answers is documented in the route modules (fake_openai, fake_ollama, fake_probes), how to script
faults in fake_behaviour, what it records in fake_stats.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel

from tests.support.fake_behaviour import Behaviour
from tests.support.fake_http import Kind
from tests.support.fake_server import FakeServer, serve_fake
from tests.support.fake_stats import Stats

__all__ = [
    "Behaviour",
    "FakeBackend",
    "Kind",
    "Stats",
    "running_fake_backend",
    "spawn_fake_backend",
    "spawned_fake_backend",
]

#: how long the server thread or process may take to start listening
START_TIMEOUT_SECONDS = 10.0
#: how long closing may take (hanging requests are cancelled after aiohttp's grace)
STOP_TIMEOUT_SECONDS = 10.0
REPO_ROOT = Path(__file__).resolve().parents[2]
LISTENING_PREFIX = "listening on "

_T = TypeVar("_T")


class FakeBackend:
    """A fake model server running on a thread of its own with its own asyncio event loop.

    ``start()`` returns once the socket listens; ``close()`` stops it and joins the thread. Both are also
    done by the context manager. ``set``, ``stats`` and ``reset_stats`` are thread-safe and take effect
    before they return. Do not call them from the server's own loop (a route handler): that deadlocks.
    """

    def __init__(
        self,
        *,
        models: Sequence[str] = ("fake-model",),
        kind: Kind | str = Kind.OPENAI,
        behaviour: Behaviour | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._models = tuple(models)
        self._kind = Kind(kind)
        self._initial = behaviour or Behaviour()
        self._host = host
        self._requested_port = port
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._server: FakeServer | None = None
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._stop: anyio.Event | None = None

    @property
    def url(self) -> str:
        return self._running().url

    @property
    def port(self) -> int:
        return self._running().port

    @property
    def models(self) -> tuple[str, ...]:
        return self._models

    @property
    def kind(self) -> Kind:
        return self._kind

    def start(self) -> None:
        """Start serving; raises RuntimeError if the server does not listen within START_TIMEOUT_SECONDS
        (with the startup error, e.g. OSError for a busy port, as its cause)."""
        if self._thread is not None:
            raise RuntimeError("fake backend already started")
        self._thread = threading.Thread(target=self._thread_main, name="fake-backend", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_SECONDS) or self._server is None:
            self._thread.join(STOP_TIMEOUT_SECONDS)
            raise RuntimeError("fake backend did not start") from self._startup_error

    def close(self) -> None:
        """Stop serving and join the thread. Idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if self._token is not None and self._stop is not None:
            try:
                anyio.from_thread.run_sync(self._stop.set, token=self._token)
            except anyio.RunFinishedError:
                pass
        thread.join(STOP_TIMEOUT_SECONDS)
        if thread.is_alive():
            raise RuntimeError("fake backend thread did not stop")

    def __enter__(self) -> FakeBackend:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def set(self, **behaviour: Any) -> None:
        """Replace the named behaviour fields (see ``Behaviour``); raises ValueError for an invalid one."""
        server = self._running()
        self._call(lambda: server.set(**behaviour))

    @property
    def behaviour(self) -> Behaviour:
        server = self._running()
        return self._call(lambda: server.behaviour)

    def stats(self) -> Stats:
        server = self._running()
        return self._call(server.stats)

    def reset_stats(self) -> None:
        server = self._running()
        self._call(server.reset_stats)

    def wait_for(
        self, predicate: Callable[[Stats], bool], *, timeout_seconds: float = 5.0, poll_seconds: float = 0.005
    ) -> Stats:
        """Poll ``stats()`` until ``predicate`` holds and return that snapshot; raises TimeoutError."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            snapshot = self.stats()
            if predicate(snapshot):
                return snapshot
            if time.monotonic() >= deadline:
                raise TimeoutError(f"fake backend stats never matched; last: {snapshot}")
            time.sleep(poll_seconds)

    def _running(self) -> FakeServer:
        if self._server is None or self._thread is None:
            raise RuntimeError("fake backend is not running")
        return self._server

    def _call(self, function: Callable[[], _T]) -> _T:
        """Run ``function`` on the server's loop and return its result (or raise its exception)."""
        assert self._token is not None
        return anyio.from_thread.run_sync(function, token=self._token)

    def _thread_main(self) -> None:
        try:
            anyio.run(self._serve, backend="asyncio")
        except BaseException as error:
            self._startup_error = error
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._stop = anyio.Event()
        async with serve_fake(
            models=self._models,
            kind=self._kind,
            behaviour=self._initial,
            host=self._host,
            port=self._requested_port,
        ) as server:
            self._token = anyio.lowlevel.current_token()
            self._server = server
            self._ready.set()
            await self._stop.wait()


@contextmanager
def running_fake_backend(
    *, models: Sequence[str] = ("fake-model",), kind: Kind | str = Kind.OPENAI, **behaviour: Any
) -> Iterator[FakeBackend]:
    """A started ``FakeBackend`` with the given behaviour fields, closed on exit."""
    with FakeBackend(models=models, kind=kind, behaviour=Behaviour().updated(behaviour)) as backend:
        yield backend


def fake_backend_command(
    *,
    models: Sequence[str] = ("fake-model",),
    kind: Kind | str = Kind.OPENAI,
    port: int = 0,
    behaviour: Mapping[str, Any] | None = None,
    ready_file: Path | None = None,
    load_seconds: float | None = None,
) -> list[str]:
    """The argv that runs the fake as a process (run it with cwd=REPO_ROOT)."""
    command = [
        sys.executable,
        "-m",
        "tests.support.fake_backend",
        "--port",
        str(port),
        "--models",
        ",".join(models),
        "--kind",
        str(Kind(kind)),
    ]
    if behaviour:
        command += ["--behaviour", json.dumps(dict(behaviour))]
    if ready_file is not None:
        command += ["--ready-file", str(ready_file)]
    if load_seconds is not None:
        command += ["--load-seconds", str(load_seconds)]
    return command


def spawn_fake_backend(
    *,
    models: Sequence[str] = ("fake-model",),
    kind: Kind | str = Kind.OPENAI,
    port: int = 0,
    behaviour: Mapping[str, Any] | None = None,
    ready_file: Path | None = None,
    load_seconds: float | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start the fake as a child process and return it with its URL once it listens.

    The caller owns the process: terminate and wait for it, and close it (``with proc:``) so its stdout
    pipe is closed; ``spawned_fake_backend`` does all that. Raises RuntimeError (after killing the child)
    if it does not print its URL within START_TIMEOUT_SECONDS.
    """
    command = fake_backend_command(
        models=models,
        kind=kind,
        port=port,
        behaviour=behaviour,
        ready_file=ready_file,
        load_seconds=load_seconds,
    )
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        line = _read_first_line(process, START_TIMEOUT_SECONDS)
        if not line.startswith(LISTENING_PREFIX):
            raise RuntimeError(f"fake backend process printed {line!r} instead of its URL")
    except BaseException:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()
        raise
    return process, line.removeprefix(LISTENING_PREFIX)


@contextmanager
def spawned_fake_backend(**options: Any) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``spawn_fake_backend(**options)``; on exit SIGTERM, wait (kill after STOP_TIMEOUT_SECONDS), close."""
    process, url = spawn_fake_backend(**options)
    with process:
        try:
            yield process, url
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(STOP_TIMEOUT_SECONDS)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _read_first_line(process: subprocess.Popen[bytes], timeout_seconds: float) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_seconds
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError("fake backend process did not report its URL in time")
            if not selector.select(remaining):
                continue
            data = os.read(process.stdout.fileno(), 4096)
            if not data:
                raise RuntimeError(f"fake backend process exited ({process.wait()}) before listening")
            buffer += data
    return buffer.split(b"\n", 1)[0].decode()


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.support.fake_backend", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--models", default="fake-model", help="comma-separated model names")
    parser.add_argument("--kind", default=Kind.OPENAI.value, choices=[kind.value for kind in Kind])
    parser.add_argument("--ready-file", type=Path, help="write the URL here once listening")
    parser.add_argument("--behaviour", default="{}", help="initial behaviour fields as a JSON object")
    parser.add_argument(
        "--load-seconds", type=float, default=None, help="report loading (503) for this long after start"
    )
    return parser.parse_args(argv)


async def _main(args: argparse.Namespace) -> None:
    changes = json.loads(args.behaviour)
    if args.load_seconds:
        changes["loading"] = True
    behaviour = Behaviour().updated(changes)
    models = [model for model in args.models.split(",") if model]
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with (
            serve_fake(
                models=models, kind=args.kind, behaviour=behaviour, host=args.host, port=args.port
            ) as server,
            anyio.create_task_group() as tasks,
        ):
            print(f"{LISTENING_PREFIX}{server.url}", flush=True)
            if args.ready_file is not None:
                partial = args.ready_file.with_name(args.ready_file.name + ".partial")
                partial.write_text(server.url + "\n")
                partial.replace(args.ready_file)
            if args.load_seconds:
                tasks.start_soon(_finish_loading, server, args.load_seconds)
            async for _ in signals:
                tasks.cancel_scope.cancel()
                break


async def _finish_loading(server: FakeServer, seconds: float) -> None:
    await anyio.sleep(seconds)
    server.set(loading=False)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    anyio.run(_main, args, backend="asyncio")
    return 0


if __name__ == "__main__":
    sys.exit(main())
