"""gatewayd/supervisor/server.py reaches into hypercorn's internals. If any of them changes shape, these tests
fail with a message naming what changed, before anything subtler breaks at runtime."""

from __future__ import annotations

import inspect
from importlib.metadata import version

from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio import tcp_server
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.protocol import h11 as h11_protocol


def parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_hypercorn_is_the_pinned_minor_version() -> None:
    installed = version("hypercorn")
    assert installed.startswith("0.18."), (
        f"hypercorn {installed} is installed but gatewayd/supervisor/server.py was written against 0.18.*: "
        "re-check TCPServer, WorkerContext and ASGIWrapper before moving the pin"
    )


def test_tcp_server_constructor_is_unchanged() -> None:
    expected = ["self", "app", "loop", "config", "context", "state", "reader", "writer"]
    assert parameters(TCPServer.__init__) == expected, (
        f"hypercorn.asyncio.tcp_server.TCPServer.__init__ changed: {parameters(TCPServer.__init__)}; "
        f"server.py calls it as TCPServer{tuple(expected[1:])}"
    )
    assert hasattr(TCPServer, "__await__"), "TCPServer is no longer awaitable; server.py awaits it"


def test_worker_context_still_has_the_terminated_event() -> None:
    assert parameters(WorkerContext.__init__) == ["self", "max_requests"], (
        f"WorkerContext.__init__ changed: {parameters(WorkerContext.__init__)}; "
        "server.py builds WorkerContext(None)"
    )
    context = WorkerContext(None)
    assert inspect.iscoroutinefunction(context.terminated.set), (
        "WorkerContext.terminated.set is no longer a coroutine; HttpServer.close_idle awaits it"
    )
    assert not context.terminated.is_set()


def test_idle_connections_still_close_on_terminated() -> None:
    """server.py's _IdleTimer stands in for TCPServer's idle task: TCPServer must still drive it through
    idle_task.restart/stop and close an idle connection with _initiate_server_close."""
    run_source = inspect.getsource(TCPServer.run)
    send_source = inspect.getsource(TCPServer.protocol_send)
    for source in (run_source, send_source):
        assert "self.idle_task.restart(" in source, (
            "TCPServer no longer arms its idle task with idle_task.restart(): _IdleTimer would never be armed"
        )
    assert "self.idle_task.stop()" in send_source, (
        "TCPServer.protocol_send no longer stops its idle task when a request begins: _IdleTimer would "
        "close busy connections"
    )
    assert "self.idle_task.stop()" in inspect.getsource(TCPServer._close), "TCPServer._close changed"
    assert inspect.iscoroutinefunction(TCPServer._initiate_server_close), (
        "TCPServer._initiate_server_close is gone: _IdleTimer closes idle connections with it"
    )
    recycle_source = inspect.getsource(h11_protocol.H11Protocol._maybe_recycle)
    assert "context.terminated.is_set()" in recycle_source, (
        "H11Protocol._maybe_recycle no longer checks context.terminated: busy connections would no longer "
        "close after their response once close_idle() ran"
    )
    assert "_task_group" in inspect.getsource(TCPServer.run), (
        "TCPServer.run no longer keeps its task group in self._task_group; _IdleTimer closes in it"
    )


def test_asgi_wrapper_calling_convention_is_unchanged() -> None:
    assert parameters(ASGIWrapper.__init__) == ["self", "app"], "ASGIWrapper.__init__ changed"
    assert parameters(ASGIWrapper.__call__) == [
        "self",
        "scope",
        "receive",
        "send",
        "sync_spawn",
        "call_soon",
    ], f"ASGIWrapper.__call__ changed: {parameters(ASGIWrapper.__call__)}"


def test_config_fields_we_set_still_exist() -> None:
    config = Config()
    for name in ("keep_alive_timeout", "backlog", "accesslog", "errorlog", "include_server_header"):
        assert hasattr(config, name), f"hypercorn Config has no '{name}' any more; hypercorn_config() sets it"
    assert hasattr(tcp_server, "MAX_RECV")


def test_connection_phases_can_still_be_followed() -> None:
    """server.py's header timeout and connection cap follow each connection through hypercorn's Updated
    events, the reads of its StreamReader and TCPServer's idle task."""
    assert parameters(TCPServer.protocol_send) == ["self", "event"], (
        f"TCPServer.protocol_send changed: {parameters(TCPServer.protocol_send)}; "
        "_TrackingTCPServer overrides it"
    )
    assert parameters(TCPServer._read_data) == ["self"], (
        "TCPServer._read_data changed; _TrackingTCPServer overrides it"
    )
    read_source = inspect.getsource(TCPServer._read_data)
    assert "self.reader.read(" in read_source, (
        "TCPServer._read_data no longer reads with StreamReader.read: "
        "_TrackingReader would not see new requests"
    )
    h11_source = inspect.getsource(h11_protocol.H11Protocol)
    for sent in ("Updated(idle=False)", "Updated(idle=True)"):
        assert sent in h11_source, (
            f"H11Protocol no longer sends {sent} when a request head is complete / the connection goes idle: "
            "server.py's header timeout and eviction would misjudge every connection"
        )
    assert "idle_task" in inspect.getsource(TCPServer.__init__), "TCPServer has no idle_task any more"
    assert inspect.iscoroutinefunction(WorkerContext.single_task_class.stop), "the idle task has no stop()"
