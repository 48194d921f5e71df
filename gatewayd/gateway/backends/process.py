"""One managed backend: a local model server that gatewayd starts on demand and stops when it is idle.

The child outlives the gatewayd process that spawned it. It runs in a session (and process group) of its
own, so terminal signals meant for gatewayd never reach it and stopping it reaches its workers too; it writes
straight to its log file (opened O_APPEND, no pipe through gatewayd), so it keeps logging whatever happens to
its parent; and an adoption record (``records``) lets the next gatewayd process take it over.
"""

from __future__ import annotations

import enum
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread
import psutil

from gatewayd.errors import BackendUnavailable
from gatewayd.gateway.backends import records
from gatewayd.gateway.backends.records import Record

log = logging.getLogger("gatewayd.backends")

#: the variable every managed child finds in its environment, set to its backend id (for orphan scans)
MARKER_ENV = "GATEWAYD_MANAGED_BACKEND"
#: variables addressed to gatewayd itself (service manager, socket hand-over) that a child must not inherit
_NOT_INHERITED_PREFIXES = ("GATEWAYD_", "LISTEN_", "WATCHDOG_")
_NOT_INHERITED = frozenset({"NOTIFY_SOCKET"})

#: how often ``start`` asks ``ready()`` while the child loads
READY_POLL_INTERVAL_SECONDS = 0.1
#: how often ``watch`` looks whether the child is still alive
WATCH_POLL_INTERVAL_SECONDS = 0.2
#: how often ``watch`` compares the log's size with ``log_max_bytes``
LOG_CHECK_INTERVAL_SECONDS = 10.0
#: how much of the log's end a start failure quotes, at most
LOG_TAIL_LINES = 10
LOG_TAIL_BYTES = 4096
#: a command longer than this is shortened in messages
COMMAND_DISPLAY_CHARS = 200
LOG_FILE_MODE = 0o600


class ProcessState(enum.Enum):
    SLEEPING = "sleeping"  # not running: never started, or stopped on purpose
    STARTING = "starting"  # spawned; ready() has not answered True yet
    RUNNING = "running"  # ready (or adopted from a previous gatewayd process)
    STOPPING = "stopping"  # stop signal sent; waiting for the process group to exit
    FAILED = "failed"  # the last start failed or the child died while running; last_error says why


@dataclass(frozen=True, slots=True, kw_only=True)
class LaunchSpec:
    """How to run one managed backend. Placeholders in ``argv`` are already expanded by the caller."""

    backend_id: str
    argv: tuple[str, ...]
    #: set over gatewayd's own environment (see ``child_environment``)
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    #: the loopback port the caller chose for it (see ``pick_free_port``)
    port: int
    host: str = "127.0.0.1"
    stop_signal: int = signal.SIGTERM
    stop_timeout_seconds: float = 10.0
    start_timeout_seconds: float = 120.0
    #: the child's stdout and stderr, appended to
    log_path: Path
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 3
    #: the caller's digest of the launch definition; a running child is adopted only by an equal one
    fingerprint: str


def pick_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago (the kernel's choice for port 0). Another process
    may take it before the child binds it; the child then fails to start, which ``start`` reports."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def rotate_log(path: Path, max_bytes: int, backups: int) -> bool:
    """Copy-truncate ``path`` once it exceeds ``max_bytes``: shift ``.1`` → ``.2`` … (dropping the one past
    ``backups``), copy the live file to ``.1`` and truncate it. The child keeps its O_APPEND descriptor and
    simply goes on writing at the new end; lines written between the copy and the truncation are lost, the
    price of never making the child reopen its log. Returns True if it rotated."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    if backups > 0:
        for index in range(backups - 1, 0, -1):
            older = path.with_name(f"{path.name}.{index}")
            if older.exists():
                os.replace(older, path.with_name(f"{path.name}.{index + 1}"))
        shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    os.truncate(path, 0)
    return True


def log_tail(path: Path, offset: int = 0) -> list[str]:
    """The last non-empty lines (at most LOG_TAIL_LINES) written to ``path`` after byte ``offset``; from the
    start of the file when it has been truncated below ``offset`` since. Empty if it cannot be read."""
    try:
        with path.open("rb") as file:
            size = file.seek(0, os.SEEK_END)
            start = offset if offset <= size else 0
            file.seek(max(start, size - LOG_TAIL_BYTES))
            text = file.read().decode(errors="replace")
    except OSError:
        return []
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    return lines[-LOG_TAIL_LINES:]


def describe_exit(code: int | None) -> str:
    """Say how a child ended: "exited with code 3", "was killed by SIGKILL", or "exited" (code unknown)."""
    if code is None:
        return "exited"
    if code < 0:
        return f"was killed by {records.signal_name(-code)}"
    return f"exited with code {code}"


def child_environment(spec: LaunchSpec) -> dict[str, str]:
    """gatewayd's environment minus what is addressed to gatewayd itself, plus ``spec.env`` and MARKER_ENV."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in _NOT_INHERITED and not name.startswith(_NOT_INHERITED_PREFIXES)
    }
    env.update(spec.env)
    env[MARKER_ENV] = spec.backend_id
    return env


class _Child:
    """One spawned or adopted process. ``popen`` is None for an adopted one: it is not our child."""

    __slots__ = ("log_offset", "popen", "record")

    def __init__(self, record: Record, popen: subprocess.Popen[bytes] | None, log_offset: int = 0) -> None:
        self.record = record
        self.popen = popen
        #: the log's size when it was spawned: a start failure quotes only what this run wrote
        self.log_offset = log_offset


class ManagedProcess:
    """The lifecycle of one managed backend across starts, stops, crashes and gatewayd respawns.

    One instance per backend, owned by a process-wide manager (it outlives any one gateway generation).
    Deciding *when* to start or stop, and making concurrent ``start`` calls single-flight, is the manager's
    job; this class does each move and keeps ``state`` true. ``on_exit(code)`` is called from ``watch``
    when the child dies while RUNNING, with its exit code (negative: killed by that signal; None: an adopted
    child, whose code nobody tells us)."""

    def __init__(
        self,
        spec: LaunchSpec,
        records_dir: Path,
        *,
        on_exit: Callable[[int | None], None] | None = None,
    ) -> None:
        self.spec = spec
        self._records_dir = records_dir
        self._on_exit = on_exit
        self._state = ProcessState.SLEEPING
        self._child: _Child | None = None
        self._last_error: str | None = None
        self._last_exit_code: int | None = None
        self._started_at: float | None = None
        #: set (and replaced by a fresh one) on every state change; ``watch`` and ``stop`` wait on it
        self._changed = anyio.Event()

    @property
    def state(self) -> ProcessState:
        return self._state

    @property
    def pid(self) -> int | None:
        return None if self._child is None else self._child.record.pid

    @property
    def port(self) -> int:
        """The running child's port (an adopted one's may differ from ``spec.port``), else ``spec.port``."""
        return self.spec.port if self._child is None else self._child.record.port

    @property
    def base_url(self) -> str:
        return f"http://{self.spec.host}:{self.port}"

    @property
    def last_error(self) -> str | None:
        """Why the last start failed or the child died; kept until the next successful start."""
        return self._last_error

    @property
    def last_exit_code(self) -> int | None:
        """Exit code of the last child of ours that ended (negative: the signal that killed it)."""
        return self._last_exit_code

    @property
    def started_at(self) -> float | None:
        """time.monotonic() when the current child was spawned; None when none runs."""
        return self._started_at

    async def start(
        self,
        ready: Callable[[], Awaitable[bool]],
        *,
        ready_poll_interval_seconds: float = READY_POLL_INTERVAL_SECONDS,
    ) -> None:
        """Spawn the child and return once ``ready()`` answers True; state RUNNING. A no-op when RUNNING.

        ``ready()`` is polled every ``ready_poll_interval_seconds``; it should return False while the server
        is not answering yet (an exception from it aborts the start and is re-raised). Raises
        BackendUnavailable (state FAILED) if the command cannot be run, exits before it is ready (the message
        gives its exit code and the last lines of its log), or is not ready within
        ``spec.start_timeout_seconds`` (it is stopped first), and also when ``stop`` is called meanwhile
        (state as ``stop`` leaves it). On cancellation the child is stopped (shielded) and state is SLEEPING.
        RuntimeError if it is STARTING or STOPPING: concurrent starts are the caller's to prevent."""
        if self._state is ProcessState.RUNNING:
            return
        if self._state not in (ProcessState.SLEEPING, ProcessState.FAILED):
            raise RuntimeError(f"cannot start backend {self.spec.backend_id} while it is {self._state.value}")
        spec = self.spec
        await self._rotate_log(spec.log_path)
        child = self._spawn()
        # no checkpoint since the spawn: a cancellation cannot lose the child
        self._child, self._started_at = child, time.monotonic()
        self._set_state(ProcessState.STARTING)
        outcome = "timeout"
        try:
            with anyio.move_on_after(spec.start_timeout_seconds):
                outcome = await self._wait_ready(child, ready, ready_poll_interval_seconds)
        except BaseException as error:
            if self._owns(child):
                with anyio.CancelScope(shield=True):
                    await self._shut_down(child, ProcessState.SLEEPING)
                if not isinstance(error, anyio.get_cancelled_exc_class()):
                    self._fail(f"backend {spec.backend_id}: start aborted: {error!r}")
            raise
        if not self._owns(child):
            outcome = "stopped"
        if outcome == "ready":
            self._last_error = None
            self._set_state(ProcessState.RUNNING)
            log.info("backend %s is running (pid %d, port %d)", spec.backend_id, child.record.pid, self.port)
            return
        if outcome == "stopped":
            raise BackendUnavailable(
                f"backend {spec.backend_id} was stopped while starting", backend=spec.backend_id
            )
        with anyio.CancelScope(shield=True):
            code = await self._shut_down(child, ProcessState.FAILED)
        command = self._command()
        if outcome == "exited":
            lines = log_tail(spec.log_path, child.log_offset)
            quoted = "".join(f"\n  {line}" for line in lines) if lines else " (it is empty)"
            message = (
                f"backend {spec.backend_id}: {command} {describe_exit(code)} before it was ready;"
                f" last lines of {spec.log_path}:{quoted}"
            )
        else:
            message = (
                f"backend {spec.backend_id}: {command} did not become ready within"
                f" {spec.start_timeout_seconds:g} s; it was stopped (log: {spec.log_path})"
            )
        raise self._fail(message)

    async def stop(self, reason: str) -> None:
        """Stop the child: ``spec.stop_signal`` to its process group, up to ``spec.stop_timeout_seconds`` for
        it to exit, then SIGKILL to the group; reap it, remove its record; state SLEEPING. Idempotent: with
        no child it does nothing (FAILED stays FAILED, keeping ``last_error``); during another ``stop`` it
        waits for that one. Shielded from cancellation (bounded by the timeouts): a half-done stop would leave
        a process nobody owns. ``reason`` is logged."""
        with anyio.CancelScope(shield=True):
            while self._state is ProcessState.STOPPING:
                await self._changed.wait()
            child = self._child
            if child is None:
                return
            log.info("stopping backend %s (pid %d): %s", self.spec.backend_id, child.record.pid, reason)
            await self._shut_down(child, ProcessState.SLEEPING)

    def adopt(self, record: Record) -> bool:
        """Take over a child left running by a previous gatewayd process; state RUNNING. Only if
        ``records.is_ours(record)`` and its fingerprint equals ``spec.fingerprint``: returns False otherwise
        (the caller then ends it with ``records.terminate_group`` or leaves it). The adopted process is not
        our child: ``watch`` notices its exit by polling, and its exit code stays unknown. RuntimeError
        unless SLEEPING or FAILED."""
        if self._state not in (ProcessState.SLEEPING, ProcessState.FAILED):
            raise RuntimeError(
                f"cannot adopt into backend {self.spec.backend_id} while it is {self._state.value}"
            )
        if record.backend_id != self.spec.backend_id or record.fingerprint != self.spec.fingerprint:
            return False
        if not records.is_ours(record):
            return False
        self._child = _Child(record, popen=None)
        self._started_at = time.monotonic() - max(0.0, time.time() - record.started_at)
        self._last_error = None
        self._set_state(ProcessState.RUNNING)
        log.info("adopted backend %s (pid %d, port %d)", record.backend_id, record.pid, record.port)
        return True

    async def watch(
        self,
        *,
        poll_interval_seconds: float = WATCH_POLL_INTERVAL_SECONDS,
        log_check_interval_seconds: float = LOG_CHECK_INTERVAL_SECONDS,
    ) -> None:
        """Run for the life of this object (the manager starts it once in its task group; it returns only by
        cancellation). While a child exists it rotates the log every ``log_check_interval_seconds`` when
        needed; when the child dies while RUNNING it kills what is left of its process group, reaps it,
        removes its record, sets FAILED with ``last_error`` naming the exit code or signal and calls
        ``on_exit``."""
        next_log_check = anyio.current_time() + log_check_interval_seconds
        while True:
            child = self._child
            if child is None:
                await self._changed.wait()
                continue
            if self._state is ProcessState.RUNNING and not records.is_alive(child.record):
                await self._died(child)
                continue
            if anyio.current_time() >= next_log_check:
                next_log_check = anyio.current_time() + log_check_interval_seconds
                await self._rotate_log(child.record.log_path)
            with anyio.move_on_after(poll_interval_seconds):
                await self._changed.wait()

    async def confirm_alive(self) -> bool:
        """Whether the child is running, looked at now rather than at ``watch``'s next poll (a request was
        just refused by it). A child found dead is handled as ``watch`` would (reaped, FAILED, ``on_exit``)
        before this returns, shielded from cancellation. A stop or death being handled is waited for."""
        with anyio.CancelScope(shield=True):
            while self._state is ProcessState.STOPPING:
                await self._changed.wait()
            child = self._child
            # no checkpoint between this test and _died's first state change: watch cannot handle it too
            if (
                self._state is ProcessState.RUNNING
                and child is not None
                and not records.is_alive(child.record)
            ):
                await self._died(child)
        return self._state is ProcessState.RUNNING

    async def _rotate_log(self, path: Path) -> None:
        """``rotate_log`` off the event loop; a failure is logged, never raised (a log must not stop a start
        nor end ``watch``)."""
        try:
            await anyio.to_thread.run_sync(rotate_log, path, self.spec.log_max_bytes, self.spec.log_backups)
        except OSError as error:
            log.warning("backend %s: cannot rotate %s: %s", self.spec.backend_id, path, error)

    def _spawn(self) -> _Child:
        """Spawn the child and write its record, without a checkpoint (a cancellation cannot come between the
        two); the record's fsync briefly blocks the loop, once per start. Raises BackendUnavailable (state
        FAILED) if the log cannot be opened, the command cannot be run or the record cannot be written (the
        child is then killed at once)."""
        spec = self.spec
        try:
            spec.log_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(spec.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, LOG_FILE_MODE)
        except OSError as error:
            raise self._fail(
                f"backend {spec.backend_id}: cannot open its log {spec.log_path}: {error}"
            ) from error
        try:
            offset = os.fstat(fd).st_size
            popen = subprocess.Popen(
                spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                cwd=spec.cwd,
                env=child_environment(spec),
                start_new_session=True,
            )
        except (OSError, ValueError) as error:
            raise self._fail(f"backend {spec.backend_id}: cannot run {self._command()}: {error}") from error
        finally:
            os.close(fd)
        try:
            create_time = psutil.Process(popen.pid).create_time()
        except psutil.Error:
            create_time = 0.0  # already gone: is_alive says so, and start reports its exit
        record = Record(
            backend_id=spec.backend_id,
            pid=popen.pid,
            pgid=popen.pid,  # start_new_session: the child leads a new session and process group
            create_time=create_time,
            port=spec.port,
            fingerprint=spec.fingerprint,
            log_path=spec.log_path,
            started_at=time.time(),
        )
        try:
            records.write_record(self._records_dir, record)
        except OSError as error:
            records.signal_group(popen.pid, signal.SIGKILL)
            popen.wait()  # killed: it is gone at once
            raise self._fail(f"backend {spec.backend_id}: cannot write its record: {error}") from error
        log.info("started backend %s (pid %d): %s", spec.backend_id, popen.pid, self._command())
        return _Child(record, popen, offset)

    async def _wait_ready(
        self, child: _Child, ready: Callable[[], Awaitable[bool]], interval_seconds: float
    ) -> str:
        """Return "ready", "exited" (ended, not reaped yet) or "stopped" (``stop`` took the child over)."""
        while True:
            if not self._owns(child):
                return "stopped"
            if not records.is_alive(child.record):
                return "exited"
            is_ready = await ready()
            if not self._owns(child):
                return "stopped"
            if is_ready:
                return "ready"
            await anyio.sleep(interval_seconds)

    def _owns(self, child: _Child) -> bool:
        """``start`` still owns ``child``: nobody has begun to stop it meanwhile."""
        return self._child is child and self._state is ProcessState.STARTING

    async def _shut_down(self, child: _Child, final: ProcessState) -> int | None:
        """End ``child`` (whether it still runs or has exited), reap it, remove its record, forget it; then
        state ``final``. Returns its exit code (None for an adopted child). Callers shield it."""
        self._set_state(ProcessState.STOPPING)
        record = child.record
        if child.popen is None:
            await records.terminate_group(record, self.spec.stop_signal, self.spec.stop_timeout_seconds)
            code = None
        else:
            if records.is_alive(record):
                await records.terminate_group(record, self.spec.stop_signal, self.spec.stop_timeout_seconds)
            # it has exited but is not reaped, so its group id is still ours: end whatever outlived it (a
            # session leader cannot leave its group, so the group signals always reached the child itself)
            records.signal_group(record.pgid, signal.SIGKILL)
            code = await anyio.to_thread.run_sync(child.popen.wait)
            self._last_exit_code = code
        records.remove_record(self._records_dir, record.backend_id, pid=record.pid)
        if self._child is child:
            self._child, self._started_at = None, None
        self._set_state(final)
        return code

    async def _died(self, child: _Child) -> None:
        code = await self._shut_down(child, ProcessState.FAILED)
        self._last_error = f"backend {self.spec.backend_id} {describe_exit(code)} while running"
        log.warning("%s (log: %s)", self._last_error, child.record.log_path)
        if self._on_exit is not None:
            self._on_exit(code)

    def _fail(self, message: str) -> BackendUnavailable:
        self._last_error = message
        self._set_state(ProcessState.FAILED)
        log.warning("%s", message)
        return BackendUnavailable(message, backend=self.spec.backend_id)

    def _set_state(self, state: ProcessState) -> None:
        self._state = state
        self._changed.set()
        self._changed = anyio.Event()

    def _command(self) -> str:
        command = shlex.join(self.spec.argv)
        if len(command) > COMMAND_DISPLAY_CHARS:
            command = command[: COMMAND_DISPLAY_CHARS - 1] + "…"
        return f"`{command}`"
