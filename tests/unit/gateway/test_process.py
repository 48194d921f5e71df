"""One managed backend, with real child processes and real signals: start, stop, failures, adoption, crash
detection and log rotation. The model server is the real fake backend, run as a separate process."""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx
import psutil
import pytest

from gatewayd.errors import BackendUnavailable
from gatewayd.gateway.backends import records
from gatewayd.gateway.backends.process import (
    MARKER_ENV,
    LaunchSpec,
    ManagedProcess,
    ProcessState,
    pick_free_port,
    rotate_log,
)
from tests.support.fake_backend import REPO_ROOT

pytestmark = pytest.mark.anyio

#: long enough for any child in these tests; they are stopped long before
CHILD_SLEEP_SECONDS = 600
SLEEP = f"import time; time.sleep({CHILD_SLEEP_SECONDS})"
#: announces itself in its log, then sleeps
UP_THEN_SLEEP = f"print('up', flush=True); {SLEEP}"
#: bound on every wait for something a test caused
WAIT_SECONDS = 20.0

Ready = Callable[[], Awaitable[bool]]


def python(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


def make_spec(tmp_path: Path, argv: Sequence[str], **changes: Any) -> LaunchSpec:
    spec = LaunchSpec(
        backend_id="m1",
        argv=tuple(argv),
        cwd=str(REPO_ROOT),
        port=pick_free_port(),
        log_path=tmp_path / "logs" / "m1.log",
        fingerprint="fp-1",
    )
    return replace(spec, **changes)


def fake_backend_spec(tmp_path: Path, **changes: Any) -> LaunchSpec:
    port = pick_free_port()
    argv = (sys.executable, "-m", "tests.support.fake_backend", "--port", str(port), "--models", "m1")
    return make_spec(tmp_path, argv, port=port, **changes)


def http_ready(client: httpx.AsyncClient, port: int) -> Ready:
    async def ready() -> bool:
        try:
            response = await client.get(f"http://127.0.0.1:{port}/v1/models")
        except httpx.TransportError:
            return False
        return response.status_code == 200

    return ready


def log_says(path: Path, text: str) -> Ready:
    async def ready() -> bool:
        log = anyio.Path(path)
        return await log.exists() and text in await log.read_text()

    return ready


async def never_ready() -> bool:
    return False


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def gone(pid: int) -> bool:
    """The process has ended: no such PID, or only a zombie waiting for a parent that is not us."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def wait_until(predicate: Callable[[], bool], what: str) -> None:
    with anyio.move_on_after(WAIT_SECONDS):
        while not predicate():
            await anyio.sleep(0.02)
        return
    raise AssertionError(f"timed out after {WAIT_SECONDS:g} s waiting for {what}")


def last_word(path: Path) -> str:
    words = path.read_text().split()
    return words[-1] if words else ""


@asynccontextmanager
async def managed(spec: LaunchSpec, records_dir: Path, **kwargs: Any) -> AsyncIterator[ManagedProcess]:
    process = ManagedProcess(spec, records_dir, **kwargs)
    try:
        yield process
    finally:
        await process.stop("test over")


@pytest.fixture
def records_dir(tmp_path: Path) -> Path:
    return tmp_path / "state" / "backends"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=5.0) as http:
        yield http


async def test_start_runs_the_server_and_stop_ends_it_and_frees_the_port(
    tmp_path: Path, records_dir: Path, client: httpx.AsyncClient
) -> None:
    spec = fake_backend_spec(tmp_path)
    async with managed(spec, records_dir) as backend:
        assert backend.state is ProcessState.SLEEPING
        await backend.start(http_ready(client, spec.port))
        assert backend.state is ProcessState.RUNNING
        assert backend.base_url == f"http://127.0.0.1:{spec.port}"
        response = await client.get(f"{backend.base_url}/v1/models")
        assert [model["id"] for model in response.json()["data"]] == ["m1"]
        pid = backend.pid
        assert pid is not None
        assert os.getpgid(pid) == pid  # a process group of its own
        record = records.read_records(records_dir)["m1"]
        assert (record.pid, record.port, record.fingerprint) == (pid, spec.port, "fp-1")
        assert records.is_alive(record)

        await backend.start(http_ready(client, spec.port))  # already running: nothing happens
        assert backend.pid == pid

        await backend.stop("idle")
        assert backend.state is ProcessState.SLEEPING
        assert backend.pid is None
        assert backend.last_exit_code == 0  # the fake backend exits 0 on SIGTERM
        assert not psutil.pid_exists(pid)  # reaped, not left a zombie
        assert port_is_free(spec.port)
        assert records.read_records(records_dir) == {}
        assert "listening on http://127.0.0.1:" in spec.log_path.read_text()

        await backend.stop("again")  # idempotent
        assert backend.state is ProcessState.SLEEPING


async def test_a_command_that_exits_at_once_is_reported_with_its_code_and_log(
    tmp_path: Path, records_dir: Path
) -> None:
    spec = make_spec(tmp_path, python("import sys; print('boom'); sys.exit(3)"))
    async with managed(spec, records_dir) as backend:
        with pytest.raises(BackendUnavailable) as caught:
            await backend.start(never_ready)
        assert "exited with code 3" in caught.value.message
        assert "boom" in caught.value.message
        assert caught.value.backend == "m1"
        assert backend.state is ProcessState.FAILED
        assert backend.last_error == caught.value.message
        assert backend.last_exit_code == 3
        assert records.read_records(records_dir) == {}

    # a failed start quotes only its own output, not what earlier runs left in the same log
    killed = replace(spec, argv=python("import os; os.kill(os.getpid(), 9)"))
    async with managed(killed, records_dir) as backend:
        with pytest.raises(BackendUnavailable) as again:
            await backend.start(never_ready)
        assert "was killed by SIGKILL" in again.value.message
        assert "boom" not in again.value.message
        assert "it is empty" in again.value.message


async def test_a_command_that_cannot_run_fails_the_start(tmp_path: Path, records_dir: Path) -> None:
    spec = make_spec(tmp_path, [str(tmp_path / "no-such-server")])
    async with managed(spec, records_dir) as backend:
        with pytest.raises(BackendUnavailable, match="cannot run"):
            await backend.start(never_ready)
        assert backend.state is ProcessState.FAILED
        assert backend.pid is None


async def test_a_record_that_cannot_be_written_fails_the_start(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "state"
    not_a_directory.write_text("")
    spec = make_spec(tmp_path, python(UP_THEN_SLEEP))
    async with managed(spec, not_a_directory / "backends") as backend:
        with pytest.raises(BackendUnavailable, match="cannot write its record"):
            await backend.start(never_ready)
        assert backend.state is ProcessState.FAILED
        assert backend.pid is None


async def test_a_readiness_check_that_raises_aborts_the_start(tmp_path: Path, records_dir: Path) -> None:
    spec = make_spec(tmp_path, python(SLEEP))
    async with managed(spec, records_dir) as backend:
        pids: list[int] = []

        async def ready() -> bool:
            assert backend.pid is not None
            pids.append(backend.pid)
            raise LookupError("broken check")

        with pytest.raises(LookupError):
            await backend.start(ready)
        assert backend.state is ProcessState.FAILED
        assert backend.last_error is not None
        assert "broken check" in backend.last_error
        assert not psutil.pid_exists(pids[0])
        assert records.read_records(records_dir) == {}


async def test_a_child_that_never_gets_ready_is_stopped_after_the_start_timeout(
    tmp_path: Path, records_dir: Path, client: httpx.AsyncClient
) -> None:
    spec = make_spec(tmp_path, python(SLEEP), start_timeout_seconds=0.5)
    async with managed(spec, records_dir) as backend:
        pids: list[int] = []

        async def ready() -> bool:
            assert backend.pid is not None
            pids.append(backend.pid)
            return await http_ready(client, spec.port)()

        with pytest.raises(BackendUnavailable, match=r"did not become ready within 0\.5 s"):
            await backend.start(ready)
        assert backend.state is ProcessState.FAILED
        assert pids
        assert not psutil.pid_exists(pids[0])
        assert backend.last_exit_code == -signal.SIGTERM
        assert records.read_records(records_dir) == {}


async def test_cancelling_a_start_stops_the_child(tmp_path: Path, records_dir: Path) -> None:
    spec = make_spec(tmp_path, python(SLEEP))
    async with managed(spec, records_dir) as backend:
        pids: list[int] = []

        async def ready() -> bool:
            assert backend.pid is not None
            pids.append(backend.pid)
            return False

        with anyio.move_on_after(0.3):
            await backend.start(ready)
        assert pids
        assert backend.state is ProcessState.SLEEPING
        assert not psutil.pid_exists(pids[0])
        assert records.read_records(records_dir) == {}


async def test_stop_during_a_start_ends_the_child_and_fails_it(tmp_path: Path, records_dir: Path) -> None:
    spec = make_spec(tmp_path, python(SLEEP))
    async with managed(spec, records_dir) as backend:
        errors: list[BackendUnavailable] = []

        async def start() -> None:
            try:
                await backend.start(never_ready)
            except BackendUnavailable as error:
                errors.append(error)

        async with anyio.create_task_group() as tg:
            tg.start_soon(start)
            await wait_until(lambda: backend.state is ProcessState.STARTING, "STARTING")
            pid = backend.pid
            assert pid is not None
            await backend.stop("shutting down")
            assert not psutil.pid_exists(pid)
        assert len(errors) == 1
        assert "stopped while starting" in errors[0].message
        assert backend.state is ProcessState.SLEEPING


async def test_stop_kills_a_child_that_ignores_the_stop_signal(tmp_path: Path, records_dir: Path) -> None:
    code = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ignoring SIGTERM', flush=True)\n"
        f"time.sleep({CHILD_SLEEP_SECONDS})\n"
    )
    spec = make_spec(tmp_path, python(code), stop_timeout_seconds=0.3)
    async with managed(spec, records_dir) as backend:
        await backend.start(log_says(spec.log_path, "ignoring SIGTERM"))
        pid = backend.pid
        assert pid is not None
        await backend.stop("test")
        assert backend.state is ProcessState.SLEEPING
        assert backend.last_exit_code == -signal.SIGKILL
        assert not psutil.pid_exists(pid)


async def test_stop_ends_the_whole_process_group(tmp_path: Path, records_dir: Path) -> None:
    code = (
        "import subprocess, sys, time\n"
        f"member = subprocess.Popen([sys.executable, '-c', {SLEEP!r}])\n"
        "print('member', member.pid, flush=True)\n"
        f"time.sleep({CHILD_SLEEP_SECONDS})\n"
    )
    spec = make_spec(tmp_path, python(code))
    async with managed(spec, records_dir) as backend:
        await backend.start(log_says(spec.log_path, "member"))
        member = int(spec.log_path.read_text().split()[1])
        assert not gone(member)
        await backend.stop("test")
        await wait_until(lambda: gone(member), "the group member to end")


async def test_the_child_gets_the_environment_and_the_marker(
    tmp_path: Path, records_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")  # addressed to gatewayd, not to its children
    monkeypatch.setenv("GATEWAYD_TEST_INHERITED", "no")
    monkeypatch.setenv("HOME_FOR_TEST", "inherited")
    code = (
        "import os\n"
        f"print('marker=' + os.environ['{MARKER_ENV}'])\n"
        "print('extra=' + os.environ['EXTRA'])\n"
        "print('inherited=' + os.environ.get('HOME_FOR_TEST', '-'))\n"
        "print('notify=' + os.environ.get('NOTIFY_SOCKET', '-'))\n"
        "print('gatewayd=' + os.environ.get('GATEWAYD_TEST_INHERITED', '-'), flush=True)\n"
    )
    spec = make_spec(tmp_path, python(code), env={"EXTRA": "yes"})
    async with managed(spec, records_dir) as backend:
        with pytest.raises(BackendUnavailable, match="exited with code 0"):
            await backend.start(never_ready)
        lines = spec.log_path.read_text().split()
        assert lines == ["marker=m1", "extra=yes", "inherited=inherited", "notify=-", "gatewayd=-"]


async def test_a_second_instance_adopts_the_running_child_and_can_stop_it(
    tmp_path: Path, records_dir: Path, client: httpx.AsyncClient
) -> None:
    spec = fake_backend_spec(tmp_path)
    async with managed(spec, records_dir) as first:
        await first.start(http_ready(client, spec.port))
        record = records.read_records(records_dir)["m1"]

        second = ManagedProcess(spec, records_dir)
        assert second.adopt(record)
        assert second.state is ProcessState.RUNNING
        assert second.pid == first.pid == record.pid
        assert second.port == spec.port
        assert await http_ready(client, spec.port)()

        await second.stop("no longer configured")
        assert second.state is ProcessState.SLEEPING
        assert not records.is_alive(record)
        assert port_is_free(spec.port)
        assert records.read_records(records_dir) == {}
        # ``first`` is still the parent here: its stop reaps the child that ``second`` ended
    assert not psutil.pid_exists(record.pid)


async def test_adopt_refuses_another_fingerprint_or_process(tmp_path: Path, records_dir: Path) -> None:
    spec = make_spec(tmp_path, python(UP_THEN_SLEEP))
    async with managed(spec, records_dir) as first:
        await first.start(log_says(spec.log_path, "up"))
        record = records.read_records(records_dir)["m1"]

        assert not ManagedProcess(replace(spec, fingerprint="fp-2"), records_dir).adopt(record)

        # the PID is alive, but it is not the process the record was written for
        records.write_record(records_dir, replace(record, create_time=record.create_time - 5.0))
        recycled = records.read_records(records_dir)["m1"]
        stranger = ManagedProcess(spec, records_dir)
        assert not stranger.adopt(recycled)
        assert stranger.state is ProcessState.SLEEPING
        assert stranger.pid is None

        assert ManagedProcess(spec, records_dir).adopt(record)
        assert first.state is ProcessState.RUNNING


async def test_watch_reports_a_child_killed_while_running(tmp_path: Path, records_dir: Path) -> None:
    spec = make_spec(tmp_path, python(UP_THEN_SLEEP))
    exits: list[int | None] = []
    exited = anyio.Event()

    def on_exit(code: int | None) -> None:
        exits.append(code)
        exited.set()

    async with managed(spec, records_dir, on_exit=on_exit) as backend, anyio.create_task_group() as tg:
        tg.start_soon(partial(backend.watch, poll_interval_seconds=0.02))
        await backend.start(log_says(spec.log_path, "up"))
        pid = backend.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with anyio.fail_after(WAIT_SECONDS):
            await exited.wait()
        assert exits == [-signal.SIGKILL]
        assert backend.state is ProcessState.FAILED
        assert backend.last_error is not None
        assert "was killed by SIGKILL" in backend.last_error
        assert backend.pid is None
        assert not psutil.pid_exists(pid)  # reaped
        assert records.read_records(records_dir) == {}

        # the watch goes on: a new start is watched too
        exited = anyio.Event()
        await backend.start(log_says(spec.log_path, "up"))
        assert backend.state is ProcessState.RUNNING
        assert backend.last_error is None
        tg.cancel_scope.cancel()


async def test_watch_reports_an_adopted_child_that_dies(
    tmp_path: Path, records_dir: Path, client: httpx.AsyncClient
) -> None:
    spec = fake_backend_spec(tmp_path)
    exits: list[int | None] = []
    async with managed(spec, records_dir) as first:
        await first.start(http_ready(client, spec.port))
        adopter = ManagedProcess(spec, records_dir, on_exit=exits.append)
        assert adopter.adopt(records.read_records(records_dir)["m1"])
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(adopter.watch, poll_interval_seconds=0.02))
            assert first.pid is not None
            os.kill(first.pid, signal.SIGKILL)
            await wait_until(lambda: adopter.state is ProcessState.FAILED, "the adopter to notice")
            tg.cancel_scope.cancel()
        assert exits == [None]  # not our child: its exit code is not ours to know
        assert adopter.last_error == "backend m1 exited while running"


async def test_watch_rotates_the_log_and_the_child_keeps_writing(tmp_path: Path, records_dir: Path) -> None:
    # one write per line, whatever the buffering (print() writes the text and its newline separately when
    # stdout is unbuffered, and a copy-truncate may fall between the two)
    code = (
        "import itertools, os, time\n"
        "for i in itertools.count():\n"
        "    os.write(1, f'line {i:06d}\\n'.encode())\n"
        "    time.sleep(0.005)\n"
    )
    spec = make_spec(tmp_path, python(code), log_max_bytes=300, log_backups=2)
    first_backup = spec.log_path.with_name("m1.log.1")
    second_backup = spec.log_path.with_name("m1.log.2")
    async with managed(spec, records_dir) as backend, anyio.create_task_group() as tg:
        await backend.start(log_says(spec.log_path, "line 000000"))
        tg.start_soon(partial(backend.watch, poll_interval_seconds=0.01, log_check_interval_seconds=0.05))
        await wait_until(second_backup.exists, "two rotations")
        tg.cancel_scope.cancel()
        last_rotated = last_word(first_backup)
        await wait_until(lambda: last_rotated < last_word(spec.log_path), "new lines in the live log")
        live = spec.log_path.read_bytes()
        assert b"\0" not in live  # O_APPEND: the child wrote at the new end, not past a hole
        assert live.startswith(b"line ")
        assert not spec.log_path.with_name("m1.log.3").exists()


def test_rotate_log_shifts_backups_and_keeps_at_most_the_configured_number(tmp_path: Path) -> None:
    path = tmp_path / "b.log"
    for generation in range(1, 5):
        path.write_text(f"generation {generation}\n" * 10)
        assert rotate_log(path, max_bytes=50, backups=2)
        assert path.read_text() == ""
    assert path.with_name("b.log.1").read_text().startswith("generation 4")
    assert path.with_name("b.log.2").read_text().startswith("generation 3")
    assert not path.with_name("b.log.3").exists()
    path.write_text("short\n")
    assert not rotate_log(path, max_bytes=50, backups=2)
    assert not rotate_log(tmp_path / "missing.log", max_bytes=50, backups=2)


async def test_start_rotates_an_oversized_log_first(tmp_path: Path, records_dir: Path) -> None:
    spec = make_spec(tmp_path, python("print('fresh run', flush=True)"), log_max_bytes=100)
    spec.log_path.parent.mkdir(parents=True)
    spec.log_path.write_text("old run\n" * 100)
    async with managed(spec, records_dir) as backend:
        with pytest.raises(BackendUnavailable):
            await backend.start(never_ready)
    assert spec.log_path.read_text() == "fresh run\n"
    assert spec.log_path.with_name("m1.log.1").read_text() == "old run\n" * 100
