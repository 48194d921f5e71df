"""The HTTP server: our own accept loop feeding hypercorn's per-connection protocol machinery.

This is the only module that touches hypercorn internals (``TCPServer``, ``WorkerContext``, ``ASGIWrapper``,
``Config``); pyproject pins ``hypercorn==0.18.*`` and tests/unit/supervisor/test_hypercorn_pin.py fails
loudly if any of them changes shape. We do not use ``hypercorn.asyncio.serve`` because it owns the listening
socket (it closes it on return), closes idle keep-alive connections *before* it stops accepting, and relies on
``Server.wait_closed()``, which on recent CPythons waits for every connection with no bound.

Here the listening socket belongs to the run loop and is never closed by the server. Accepting is a reader
callback on the listener's fd (``loop.add_reader``), so stopping is ``remove_reader`` and nothing else: no
``Server.close()`` and therefore no reset of connections accepted in the same batch (CPython issue 109564).
The shutdown order is the reverse of hypercorn's stock one: stop accepting, let the caller settle, then close
idle keep-alive connections, then wait (bounded) for the rest.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

import anyio
from anyio.abc import TaskStatus
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config as HypercornConfig

from gatewayd.config import ServerSettings

log = logging.getLogger("gatewayd.server")

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]

#: connections accepted per readiness callback before yielding to the event loop again
ACCEPT_BATCH_SIZE = 64
#: after an accept() error such as EMFILE, accepting pauses this long instead of spinning
ACCEPT_ERROR_PAUSE_SECONDS = 0.5


class ServerState(enum.Enum):
    NEW = "new"  # built; serve() not entered yet
    ACCEPTING = "accepting"  # the reader is installed on the listener; new connections are taken
    NOT_ACCEPTING = "not-accepting"  # stop_accepting() was called; open connections are still served
    CLOSED = "closed"  # serve() has returned; every connection task is gone


def hypercorn_config(settings: ServerSettings) -> HypercornConfig:
    """The hypercorn Config our connections run with. Its bind/graceful/worker settings are irrelevant
    because hypercorn's serve() is never used."""
    config = HypercornConfig()
    config.keep_alive_timeout = settings.keep_alive_timeout_seconds
    config.backlog = settings.backlog
    config.accesslog = None
    config.errorlog = log  # a Logger instance: hypercorn uses it as is and installs no handlers
    config.include_server_header = False
    return config


class HttpServer:
    """Serves one ASGI app on a listening socket it does not own.

    Lifecycle: ``serve()`` installs the accept reader and reports started; ``stop_accepting()`` removes it;
    ``close_idle()`` closes idle keep-alive connections (and makes busy ones close after their current
    response); ``wait_closed(timeout)`` waits, bounded, for the connection count to reach 0; cancelling the
    ``serve()`` task cancels every connection task (connections are aborted) and returns.

    The listening socket must be non-blocking; it is never closed here.
    """

    def __init__(self, listener: socket.socket, app: ASGIApp, settings: ServerSettings) -> None:
        self._listener = listener
        self._app = ASGIWrapper(cast(Any, app))
        self._config = hypercorn_config(settings)
        self._context = WorkerContext(None)
        self._lifespan_state: dict[str, Any] = {}
        self._state = ServerState.NEW
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._connections = 0
        #: set when the last connection closes; created on demand (anyio needs a running loop)
        self._no_connections: anyio.Event | None = None
        self._paused_handle: asyncio.TimerHandle | None = None

    @property
    def state(self) -> ServerState:
        return self._state

    @property
    def connections(self) -> int:
        """Open client connections (accepted and not yet closed)."""
        return self._connections

    def apply_settings(self, settings: ServerSettings) -> None:
        """Apply a reloaded config's connection settings: the keep-alive timeout (from each connection's next
        idle period) and the listen backlog (re-listen). The address cannot change without a new socket."""
        self._config.keep_alive_timeout = settings.keep_alive_timeout_seconds
        if settings.backlog != self._config.backlog:
            self._listener.listen(settings.backlog)
            self._config.backlog = settings.backlog

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Accept and serve until cancelled. Reports started once the accept reader is installed.

        On cancellation: accepting stops, every connection task is cancelled and its transport aborted;
        returns (re-raising the cancellation) once they are all gone. Raises RuntimeError if called twice.
        """
        if self._state is not ServerState.NEW:
            raise RuntimeError(f"serve() called on a server in state {self._state.value}")
        self._loop = asyncio.get_running_loop()
        try:
            async with anyio.create_task_group() as task_group:
                self._task_group = task_group
                self._state = ServerState.ACCEPTING
                self._loop.add_reader(self._listener.fileno(), self._on_readable)
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self.stop_accepting()
            self._task_group = None
            self._state = ServerState.CLOSED

    def stop_accepting(self) -> None:
        """Stop taking new connections (remove the reader). Idempotent; open connections are unaffected and
        connections still in the kernel's queue stay there (for a respawned child, or until the socket
        closes)."""
        if self._paused_handle is not None:
            self._paused_handle.cancel()
            self._paused_handle = None
        if self._state is ServerState.ACCEPTING:
            assert self._loop is not None
            self._loop.remove_reader(self._listener.fileno())
            self._state = ServerState.NOT_ACCEPTING

    async def close_idle(self) -> None:
        """Close idle keep-alive connections now; busy ones close after their current response.

        Call it only after ``stop_accepting()`` and a short settle: a connection accepted just before
        would otherwise be closed before its request is read.
        """
        if self._state is ServerState.ACCEPTING:
            raise RuntimeError(
                "close_idle() before stop_accepting() would close freshly accepted connections"
            )
        await self._context.terminated.set()

    async def wait_closed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every connection to close. Returns True if they all did."""
        with anyio.move_on_after(timeout):
            while self._connections:
                if self._no_connections is None:
                    self._no_connections = anyio.Event()
                await self._no_connections.wait()
        return self._connections == 0

    def _on_readable(self) -> None:
        task_group = self._task_group
        if task_group is None or self._state is not ServerState.ACCEPTING:
            return
        for _ in range(ACCEPT_BATCH_SIZE):
            try:
                conn, _address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as error:
                # EMFILE, ENFILE, ENOBUFS, ENOMEM: back off instead of spinning on a readable listener
                log.error(
                    "accept() failed: %s; pausing accepting for %.1fs", error, ACCEPT_ERROR_PAUSE_SECONDS
                )
                self._pause_accepting()
                return
            conn.setblocking(False)
            self._connections += 1
            task_group.start_soon(self._serve_connection, conn)

    def _pause_accepting(self) -> None:
        assert self._loop is not None
        self._loop.remove_reader(self._listener.fileno())

        def resume() -> None:
            self._paused_handle = None
            if self._state is ServerState.ACCEPTING and self._loop is not None:
                self._loop.add_reader(self._listener.fileno(), self._on_readable)

        self._paused_handle = self._loop.call_later(ACCEPT_ERROR_PAUSE_SECONDS, resume)

    async def _serve_connection(self, conn: socket.socket) -> None:
        """One connection, start to end. Never raises (an exception here would cancel the whole server)."""
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_connection(sock=conn)
            assert self._loop is not None
            await TCPServer(
                self._app, self._loop, self._config, self._context, self._lifespan_state, reader, writer
            )
        except OSError:
            pass  # the peer went away before or while we set up the connection
        except Exception:
            log.exception("connection handler failed")
        finally:
            if writer is None:
                conn.close()
            elif not writer.transport.is_closing():
                writer.transport.abort()
            self._connections -= 1
            if self._connections == 0 and self._no_connections is not None:
                self._no_connections.set()
                self._no_connections = None
