"""The respawn handoff with real child processes: fds passed by number, readiness over a private pipe,
unhealthy children stopped and reaped."""

from __future__ import annotations

import json
import os
import socket
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from gatewayd.errors import ReloadError, StartupError
from gatewayd.supervisor.portlock import PortLock
from gatewayd.supervisor.respawn import (
    INHERIT_ENV,
    Inheritance,
    child_environment,
    spawn_ready_child,
    stop_child,
    take_inheritance,
)

pytestmark = pytest.mark.anyio

HEALTHY_CHILD = textwrap.dedent(
    """
    import json, os, socket, sys, time
    from gatewayd.supervisor.respawn import announce_ready, take_inheritance
    inheritance = take_inheritance(os.environ)
    listener = socket.socket(fileno=inheritance.listen)
    lock = os.fstat(inheritance.lock)
    with open(sys.argv[1], "w") as report:
        json.dump({"port": listener.getsockname()[1], "lock_inode": lock.st_ino,
                   "generation": inheritance.generation, "restarts": inheritance.restarts,
                   "inherit_left": "GATEWAYD_INHERIT" in os.environ}, report)
    announce_ready(inheritance)
    time.sleep(60)
    """
)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock
    sock.close()


@pytest.fixture
def lock(tmp_path: Path) -> Iterator[PortLock]:
    held = PortLock(tmp_path / "state", 4242)
    held.acquire()
    yield held
    held.release()


async def spawn(
    script: str, listener: socket.socket, lock: PortLock, *args: str, timeout: float = 10.0
) -> Any:
    return await spawn_ready_child(
        [sys.executable, "-c", script, *args],
        listen_fd=listener.fileno(),
        lock_fd=lock.fileno(),
        environ={**os.environ, "WATCHDOG_PID": "1"},
        port=4242,
        generation=5,
        restarts=2,
        started_at=123.0,
        service_manager="none",
        timeout_seconds=timeout,
    )


def test_inheritance_round_trips_through_the_environment_and_is_popped() -> None:
    read_end, write_end = os.pipe()
    try:
        os.set_inheritable(write_end, True)
        sent = Inheritance(
            listen=5,
            lock=6,
            ready=write_end,
            port=80,
            generation=2,
            restarts=1,
            started_at=9.5,
            service_manager="none",
        )
        environ = child_environment({"WATCHDOG_PID": "10", "PATH": "/bin"}, sent)
        assert "WATCHDOG_PID" not in environ
        assert environ["PATH"] == "/bin"
        assert take_inheritance(environ) == sent
        assert INHERIT_ENV not in environ
        assert os.get_inheritable(write_end) is False
        assert take_inheritance(environ) is None
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_malformed_inheritance_is_a_startup_error() -> None:
    with pytest.raises(StartupError, match="malformed GATEWAYD_INHERIT"):
        take_inheritance({INHERIT_ENV: "{not json"})
    with pytest.raises(StartupError, match="malformed GATEWAYD_INHERIT"):
        take_inheritance({INHERIT_ENV: json.dumps({"listen": 1})})


async def test_a_healthy_child_receives_the_fds_and_reports_ready(
    tmp_path: Path, listener: socket.socket, lock: PortLock
) -> None:
    report = tmp_path / "report.json"
    child = await spawn(HEALTHY_CHILD, listener, lock, str(report))
    try:
        assert child.poll() is None
        seen = json.loads(report.read_text())
        assert seen["port"] == listener.getsockname()[1]
        assert seen["lock_inode"] == os.stat(lock.lock_path).st_ino
        assert (seen["generation"], seen["restarts"], seen["inherit_left"]) == (5, 2, False)
    finally:
        assert await stop_child(child) == -15  # SIGTERM


async def test_a_child_that_exits_before_ready_is_reported(listener: socket.socket, lock: PortLock) -> None:
    with pytest.raises(
        ReloadError, match=r"restart-unhealthy: child pid \d+ exited with code 3 before ready"
    ):
        await spawn("import sys; sys.exit(3)", listener, lock)


async def test_a_child_that_is_not_ready_in_time_is_stopped_and_reaped(
    listener: socket.socket, lock: PortLock
) -> None:
    started = time.monotonic()
    with pytest.raises(
        ReloadError, match=r"restart-unhealthy: child pid (\d+) was not ready within 0.5s"
    ) as info:
        await spawn("import time; time.sleep(60)", listener, lock, timeout=0.5)
    assert time.monotonic() - started < 3
    assert_reaped(int(str(info.value).split("child pid ")[1].split()[0]))


async def test_a_child_that_answers_garbage_is_refused(listener: socket.socket, lock: PortLock) -> None:
    script = (
        "import os, time\n"
        "from gatewayd.supervisor.respawn import take_inheritance\n"
        "i = take_inheritance(os.environ)\n"
        "os.write(i.ready, b'hello\\n')\n"
        "time.sleep(60)\n"
    )
    with pytest.raises(ReloadError, match="sent 'hello' instead of ready"):
        await spawn(script, listener, lock)


def assert_reaped(pid: int) -> None:
    """``pid`` is no longer a child of ours: it was waited for (no zombie left behind)."""
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


async def test_cancelling_the_wait_stops_and_reaps_the_child(
    tmp_path: Path, listener: socket.socket, lock: PortLock
) -> None:
    pid_file = tmp_path / "pid"
    script = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    with anyio.move_on_after(10) as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(spawn, script, listener, lock)
            while not pid_file.exists() or not pid_file.read_text():
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    assert not scope.cancelled_caught
    assert_reaped(int(pid_file.read_text()))


def test_the_parent_keeps_no_fd_of_the_handoff(
    listener: socket.socket, lock: PortLock, tmp_path: Path
) -> None:
    before = set(os.listdir("/proc/self/fd"))

    async def run_once() -> None:
        child = await spawn(HEALTHY_CHILD, listener, lock, str(tmp_path / "r.json"))
        await stop_child(child)

    anyio.run(run_once)
    assert set(os.listdir("/proc/self/fd")) <= before
