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

Every connection is tracked by phase (``connections``): a ``TCPServer`` subclass notes hypercorn's
``Updated`` events (a request head is complete / the connection went idle) and a ``StreamReader`` subclass
notes the first bytes of a next request. That is what ``server.header_timeout_seconds`` and
``server.max_connections`` act on.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import socket
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, cast

import anyio
from anyio.abc import TaskStatus
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Event as HypercornEvent
from hypercorn.events import Updated

from gatewayd.config import ServerSettings
from gatewayd.supervisor.connections import Connection, Connections, Phase
from gatewayd.supervisor.fdlimit import RESERVED_FDS, connection_cap, open_file_limit

log = logging.getLogger("gatewayd.server")

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]

#: connections accepted per readiness callback before yielding to the event loop again
ACCEPT_BATCH_SIZE = 64
#: after an accept() error such as EMFILE, accepting pauses this long instead of spinning
ACCEPT_ERROR_PAUSE_SECONDS = 0.5
#: the header timeout is checked at least this often (and at most this precisely: a late head is closed
#: within this long after its deadline)
HEADER_CHECK_MAX_INTERVAL_SECONDS = 1.0
HEADER_CHECK_MIN_INTERVAL_SECONDS = 0.01
_REFUSED_BODY = b'{"error":"gatewayd is at server.max_connections and every connection is busy; retry"}'
#: written to a connection refused at server.max_connections while every connection is busy
REFUSED_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
    b"connection: close\r\ncontent-length: " + str(len(_REFUSED_BODY)).encode() + b"\r\n\r\n" + _REFUSED_BODY
)


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


class CloseWhenBodyUnread:
    """ASGI middleware: a response that starts before its request's body has been read to the end says
    ``Connection: close``.

    An app may answer before reading the body (a 401, 403 or 413 decided from the headers). hypercorn then
    closes the connection after the response, since the rest of the body is still on the wire, but without
    saying so: the client reuses the connection for its next request, which fails with "server disconnected".
    Saying it lets the client open a new connection instead."""

    __slots__ = ("_app",)

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http" or not _has_body(scope["headers"]):
            await self._app(scope, receive, send)
            return
        body_read = False

        async def tracking_receive() -> Any:
            nonlocal body_read
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_read = True
            return message

        async def closing_send(message: Any) -> None:
            if message["type"] == "http.response.start" and not body_read:
                message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
            await send(message)

        await self._app(scope, tracking_receive, closing_send)


def _has_body(headers: Any) -> bool:
    for name, value in headers:
        if name == b"content-length":
            return value.strip() != b"0"
        if name == b"transfer-encoding":
            return True
    return False


class _TrackingReader(asyncio.StreamReader):
    """A connection's StreamReader that tells its ``Connection`` when bytes arrive (hypercorn reads only
    through ``read``)."""

    def __init__(self, connection: Connection) -> None:
        super().__init__()
        self._connection = connection

    async def read(self, n: int = -1) -> bytes:
        data = await super().read(n)
        if data:
            self._connection.data_received()
        return data


class _IdleTimer:
    """A connection's keep-alive bound as one timer handle, in place of hypercorn's idle task.

    hypercorn bounds an idle keep-alive connection with a task (``TCPServer._idle_timeout``: a ``wait_for``
    on ``context.terminated`` with ``keep_alive_timeout``) that it cancels, awaits and starts again around
    every request: two tasks, a lock and the loop iterations of a cancellation per request, 4-5% of the CPU
    of a small request. This keeps ``restart``/``stop``, the interface ``TCPServer`` calls, on a
    ``loop.call_later`` handle. What the task did when it ended, it does too: the connection is closed the
    way hypercorn closes it (``_initiate_server_close``), when the timeout passes or, through
    ``HttpServer.close_idle``, at once (``armed`` is the set of idle connections it closes)."""

    __slots__ = ("_armed", "_handle", "_server")

    def __init__(self, server: _TrackingTCPServer, armed: set[_IdleTimer]) -> None:
        self._server = server
        self._armed = armed
        self._handle: asyncio.TimerHandle | None = None

    async def restart(self, task_group: object, action: object) -> None:
        """The connection went idle (or was just accepted): arm the keep-alive timeout, read from the
        config now (a reload's value applies from the next idle period). Idle after ``close_idle``: closed."""
        self._disarm()
        server = self._server
        if server.context.terminated.is_set():
            self.expire()
            return
        self._handle = server.loop.call_later(server.config.keep_alive_timeout, self.expire)
        self._armed.add(self)

    async def stop(self) -> None:
        """A request began, or the connection is closing: no keep-alive timeout."""
        self._disarm()

    def _disarm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._armed.discard(self)

    def expire(self) -> None:
        """Close the idle connection now."""
        self._disarm()
        self._server.close_idle_connection()


class _TrackingTCPServer(TCPServer):
    """hypercorn's per-connection driver, telling its ``Connection`` when a request head is complete
    (``Updated(idle=False)``) and when the connection goes idle between requests (``Updated(idle=True)``),
    and ending the connection's task as soon as reading ends."""

    connection: Connection

    def close_idle_connection(self) -> None:
        """Close this idle connection as hypercorn's idle task did when it ended, in a task of the
        connection's task group (which exists while ``run`` runs, as the timer does)."""
        self._task_group._task_group.create_task(self._initiate_server_close())

    async def _read_data(self) -> None:
        await super()._read_data()
        # The peer closed (or we did): nothing more can arrive. hypercorn would keep this connection's task,
        # and its memory, until the keep-alive timer fires (75 s by default) when the connection was idle or
        # had not sent a request yet.
        await self.idle_task.stop()

    async def protocol_send(self, event: HypercornEvent) -> None:
        if isinstance(event, Updated):
            if event.idle:
                self.connection.response_done()
            else:
                self.connection.head_complete()
        await super().protocol_send(event)


class _Burst:
    """Logs the first of a run of like events and, when the run ends, how many there were: a flood makes two
    log lines, not one per event."""

    __slots__ = ("_first", "_last", "count")

    def __init__(self, first: str, last: str) -> None:
        self._first = first
        self._last = last
        self.count = 0

    def hit(self, *args: object) -> None:
        if self.count == 0:
            log.warning(self._first, *args)
        self.count += 1

    def end(self) -> None:
        if self.count:
            log.warning(self._last, self.count)
            self.count = 0


class HttpServer:
    """Serves one ASGI app on a listening socket it does not own.

    Lifecycle: ``serve()`` installs the accept reader and reports started; ``stop_accepting()`` removes it;
    ``close_idle()`` closes idle keep-alive connections (and makes busy ones close after their current
    response); ``wait_closed(timeout)`` waits, bounded, for the connection count to reach 0; cancelling the
    ``serve()`` task cancels every connection task (connections are aborted) and returns.

    Connections: a connection that has not sent a complete request head within ``header_timeout_seconds``
    (from its accept, or from the first byte of its next request) is closed. At ``max_connections``, a new
    connection closes the oldest one without a complete request head (else the oldest idle one); when every
    connection is busy, the new one gets a 503 and is closed (see ``gatewayd.supervisor.connections``).

    The listening socket must be non-blocking; it is never closed here.
    """

    def __init__(self, listener: socket.socket, app: ASGIApp, settings: ServerSettings) -> None:
        self._listener = listener
        self._app = ASGIWrapper(cast(Any, CloseWhenBodyUnread(app)))
        self._config = hypercorn_config(settings)
        self._context = WorkerContext(None)
        self._lifespan_state: dict[str, Any] = {}
        self._state = ServerState.NEW
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._connections = 0
        self._tracked = Connections()
        #: the keep-alive timers of the connections idle right now (``close_idle`` closes them)
        self._idle: set[_IdleTimer] = set()
        #: accepted connections whose task has not started (and so is not tracked) yet
        self._starting = 0
        #: set when the last connection closes; created on demand (anyio needs a running loop)
        self._no_connections: anyio.Event | None = None
        self._paused_handle: asyncio.TimerHandle | None = None
        self._header_timeout = settings.header_timeout_seconds
        self._max_connections = self._connection_cap(settings)
        self._accept_errors = _Burst(
            "accept() failed: %s; accepting pauses and resumes every %.1fs until it works again",
            "accept() works again after %d failures",
        )
        self._at_cap = _Burst(
            "at server.max_connections (%d): new connections close the oldest ones that have "
            "sent no complete request, or are refused while every connection is busy",
            "below server.max_connections again; %d connections were closed or refused at the cap",
        )

    @property
    def state(self) -> ServerState:
        return self._state

    @property
    def connections(self) -> int:
        """Open client connections (accepted and not yet closed)."""
        return self._connections

    @property
    def max_connections(self) -> int:
        """The connection cap in force (``server.max_connections``, or derived from the open-file limit)."""
        return self._max_connections

    def apply_settings(self, settings: ServerSettings) -> None:
        """Apply a reloaded config's connection settings: the keep-alive timeout (from each connection's next
        idle period), the header timeout and the connection cap (from now on), and the listen backlog
        (re-listen). The address cannot change without a new socket."""
        self._config.keep_alive_timeout = settings.keep_alive_timeout_seconds
        self._header_timeout = settings.header_timeout_seconds
        self._max_connections = self._connection_cap(settings)
        if settings.backlog != self._config.backlog:
            self._listener.listen(settings.backlog)
            self._config.backlog = settings.backlog

    @staticmethod
    def _connection_cap(settings: ServerSettings) -> int:
        open_files = open_file_limit()
        cap = connection_cap(settings.max_connections, open_files)
        if 2 * cap + RESERVED_FDS > open_files:
            log.warning(
                "server.max_connections is %d but the open-file limit is %d: busy connections could run out "
                "of file descriptors; lower server.max_connections or raise the hard limit (ulimit -Hn, "
                "LimitNOFILE= in the systemd unit)",
                cap,
                open_files,
            )
        return cap

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
                task_group.start_soon(self._enforce_header_timeout)
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
        for timer in list(self._idle):
            timer.expire()

    async def wait_closed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every connection to close. Returns True if they all did."""
        with anyio.move_on_after(timeout):
            while self._connections:
                if self._no_connections is None:
                    self._no_connections = anyio.Event()
                await self._no_connections.wait()
        return self._connections == 0

    async def _enforce_header_timeout(self) -> None:
        """Close connections whose request head is late, waking when the oldest one is due."""
        while True:
            _closed, due = self._tracked.close_late_heads(self._header_timeout)
            wait = HEADER_CHECK_MAX_INTERVAL_SECONDS if due is None else due - time.monotonic()
            await anyio.sleep(
                min(max(wait, HEADER_CHECK_MIN_INTERVAL_SECONDS), HEADER_CHECK_MAX_INTERVAL_SECONDS)
            )

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
                self._accept_errors.hit(error, ACCEPT_ERROR_PAUSE_SECONDS)
                self._pause_accepting()
                return
            self._accept_errors.end()
            # connections closed to make room may take a few loop iterations to end: not counted here
            if len(self._tracked) + self._starting >= self._max_connections:
                self._at_cap.hit(self._max_connections)
                if not self._tracked.evict_one():
                    _refuse(conn)
                    continue
            else:
                self._at_cap.end()
            conn.setblocking(False)
            self._connections += 1
            self._starting += 1
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
        tracked: Connection | None = None
        try:
            assert self._loop is not None
            loop = self._loop

            def close() -> None:
                if writer is not None:
                    writer.transport.abort()

            self._starting -= 1
            tracked = self._tracked.add(close)
            reader = _TrackingReader(tracked)
            protocol = asyncio.StreamReaderProtocol(reader)
            transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock=conn)
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            if tracked.phase is Phase.CLOSED:  # evicted or timed out while the transport was set up
                return
            server = _TrackingTCPServer(
                self._app, loop, self._config, self._context, self._lifespan_state, reader, writer
            )
            server.connection = tracked
            server.idle_task = _IdleTimer(server, self._idle)  # type: ignore[assignment]
            await server
        except OSError:
            pass  # the peer went away before or while we set up the connection
        except Exception:
            log.exception("connection handler failed")
        finally:
            if tracked is not None:
                tracked.forget()
            if writer is None:
                conn.close()
            elif not writer.transport.is_closing():
                writer.transport.abort()
            self._connections -= 1
            if self._connections == 0 and self._no_connections is not None:
                self._no_connections.set()
                self._no_connections = None


def _refuse(conn: socket.socket) -> None:
    """Answer a connection that cannot be served with a 503 (best effort, never blocking) and close it."""
    try:
        conn.setblocking(False)
        conn.send(REFUSED_RESPONSE)
    except OSError:
        pass
    finally:
        conn.close()
