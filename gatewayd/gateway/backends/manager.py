"""Managed and wakeable backends, process-wide: started on demand, put to sleep when idle, kept across
reloads and respawns.

One ``BackendManager`` lives as long as the gatewayd process (the factory's ``lifetime``); generations come
and go around it. Each generation calls ``reconcile(config)`` as it is built: a backend whose launch
definition is unchanged keeps its running server untouched; a changed one gets a new unit and the old one is
stopped once its requests are done; a removed one is stopped the same way. The first reconcile of a process
adopts the servers a previous gatewayd process left running (a respawn, or a crash) and stops the ones it
cannot adopt, so none is left holding a port.

Requests go through ``ManagedBackend.use()``: it starts (or wakes) the server once however many requests
wait for it, and all waiters share the outcome; a failed start answers the same 503 to every request for
``managed.failed_start_backoff_seconds``, then the next request tries again. Members of an exclusive group
are admitted by the group's scheduler instead (``groups.GroupDriver``).
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import math
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import anyio
import anyio.abc

from gatewayd.config import Backend, Config, ManagedSettings, Timeouts
from gatewayd.config.loader import MODEL_PATH_PLACEHOLDER, PORT_PLACEHOLDER
from gatewayd.errors import BackendError, BackendUnavailable
from gatewayd.gateway.backends import records
from gatewayd.gateway.backends.groups import GroupDriver, build_groups
from gatewayd.gateway.backends.kinds import KINDS
from gatewayd.gateway.backends.process import LaunchSpec, ManagedProcess, ProcessState, pick_free_port
from gatewayd.gateway.backends.transport import Transport
from gatewayd.gateway.metrics import Metrics

log = logging.getLogger("gatewayd.backends")

#: how often idle backends are looked for
IDLE_CHECK_INTERVAL_SECONDS = 1.0
#: how often a starting (or waking) server is asked whether it is ready
READY_POLL_INTERVAL_SECONDS = 0.1
#: bound on one readiness request
READY_REQUEST_TIMEOUT_SECONDS = 2.0
#: how much of a failed wake command's output an error quotes
WAKE_OUTPUT_CHARS = 300
LOOPBACK = "127.0.0.1"


class UnitState(enum.Enum):
    SLEEPING = "sleeping"  # not running; started by the next request for it
    STARTING = "starting"  # being started or woken; requests wait for it
    RUNNING = "running"  # ready and serving
    STOPPING = "stopping"  # being stopped (idle, evicted, replaced, or gatewayd stops)
    FAILED = "failed"  # the last start failed: requests get its error until the backoff has passed


def fingerprint(backend: Backend) -> str:
    """Digest of what a running server was started from: equal digests mean it can be kept (adopted)."""
    definition = {
        "kind": backend.kind.value,
        "command": backend.command,
        "env": backend.env,
        "cwd": backend.cwd,
        "model_path": backend.model_path,
        "url": backend.url,
    }
    return hashlib.blake2b(json.dumps(definition, sort_keys=True).encode(), digest_size=16).hexdigest()


def resolved_url(backend: Backend, port: int) -> str:
    if not backend.url:
        return f"http://{LOOPBACK}:{port}"
    return backend.url.replace(PORT_PLACEHOLDER, str(port))


class ManagedBackend:
    """One managed (or wakeable) backend, across generations. ``backend`` is its latest config with the
    url resolved; ``leases`` counts the requests using it, whatever generation they belong to."""

    def __init__(self, manager: BackendManager, backend: Backend, port: int | None, definition: str) -> None:
        self.manager = manager
        #: ``fingerprint`` of its config as written (before the url was resolved)
        self.fingerprint = definition
        self.port = port
        self.backend = backend
        self.process: ManagedProcess | None = None
        if backend.managed:
            assert port is not None
            self.process = ManagedProcess(
                self._spec(backend, port), manager.records_dir, on_exit=self._exited
            )
        self.leases = 0
        self.last_used = manager.clock()
        self.retired = False
        #: set while woken (wake-only backends have no process to ask)
        self._awake = False
        self._starting: anyio.Event | None = None
        self._error: BackendUnavailable | None = None
        self._failed_until = -math.inf
        self._crashes = 0
        self._idle = anyio.Event()
        #: the group scheduler that admits this backend's requests, if it is in a group
        self.group: GroupDriver | None = None

    # -- state --------------------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self.backend.id

    @property
    def state(self) -> UnitState:
        if self._starting is not None:
            return UnitState.STARTING
        if self.manager.clock() < self._failed_until:
            return UnitState.FAILED
        if self.process is None:
            return UnitState.RUNNING if self._awake else UnitState.SLEEPING
        return _UNIT_STATES[self.process.state]

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def last_error(self) -> str | None:
        if self._error is not None:
            return self._error.message
        return None if self.process is None else self.process.last_error

    @property
    def uptime_seconds(self) -> float | None:
        started = None if self.process is None else self.process.started_at
        return None if started is None else max(0.0, time.monotonic() - started)

    @property
    def running(self) -> bool:
        if self.process is None:
            return self._awake
        return self.process.state is ProcessState.RUNNING

    # -- requests -----------------------------------------------------------------------------------

    @asynccontextmanager
    async def use(self) -> AsyncIterator[None]:
        """Hold the backend for one request: start (or wake) it first if needed, or wait for the group's
        scheduler to admit the request. Raises BackendUnavailable (the start failed or is in backoff)."""
        group = self.group
        if group is None:
            await self.ensure_running()
        else:
            while not await group.acquire(self):  # False: a reload replaced the group meanwhile
                group = self.group
                assert group is not None
        self.leases += 1
        try:
            yield
        finally:
            self.leases -= 1
            self.last_used = self.manager.clock()
            if self.leases == 0:
                self._idle.set()
                self._idle = anyio.Event()
            if group is not None:
                group.release(self)

    def start_error(self) -> BackendUnavailable | None:
        """The error of the last failed start while its backoff lasts, else None."""
        return self._error if self.manager.clock() < self._failed_until else None

    async def ensure_running(self) -> None:
        """Return once the server is ready; start it once for all concurrent callers. Raises the start's
        BackendUnavailable to every caller waiting for it, and for the backoff after it."""
        while not self.running or self._starting is not None:
            if self.manager.clock() < self._failed_until and self._error is not None:
                raise self._error
            starting = self._starting
            if starting is None:
                starting = self._starting = anyio.Event()
                self.manager.spawn(self._start, starting)
            await starting.wait()
            if self._error is not None and self.manager.clock() < self._failed_until:
                raise self._error

    async def _start(self, done: anyio.Event) -> None:
        """The one start (or wake) that every waiter shares. Runs in the manager's task group, so a waiter
        that gives up does not cancel it for the others."""
        try:
            await self.start_now()
        except BackendUnavailable as error:
            self.manager.metrics.starts.inc((self.id, "failed"))
            self._error = error
            self._failed_until = self.manager.clock() + self.manager.settings.failed_start_backoff_seconds
        else:
            self.manager.metrics.starts.inc((self.id, "ok"))
            self._error = None
            self._failed_until = -math.inf
        finally:
            self._starting = None
            done.set()

    async def start_now(self) -> None:
        """Start or wake the server and wait until it is ready. Raises BackendUnavailable."""
        backend = self.backend
        if self.process is not None:
            delay = self._crash_backoff()
            if delay > 0:
                log.info("backend %s crashed %d time(s) in a row: starting it in %gs", self.id,
                         self._crashes, delay)  # fmt: skip
                await anyio.sleep(delay)
            if self.process.state is ProcessState.STOPPING:
                await self.process.stop("a request needs it again")  # waits for the stop under way
            try:
                await self.process.start(self._ready)
            except RuntimeError as error:  # a move the process cannot make now: say so, never crash
                raise BackendUnavailable(f"backend {self.id}: {error}", backend=self.id) from error
            self.last_used = self.manager.clock()
            return
        if await self._ready():
            self._awake = True
            return
        await self._wake(backend)
        with anyio.move_on_after(backend.start_timeout_seconds):
            while not await self._ready():
                await anyio.sleep(READY_POLL_INTERVAL_SECONDS)
            self._awake = True
            self.last_used = self.manager.clock()
            log.info("backend %s is awake", self.id)
            return
        raise BackendUnavailable(
            f"backend {self.id} was woken but did not become ready within "
            f"{backend.start_timeout_seconds:g} s",
            backend=self.id,
        )

    async def stop(self, reason: str) -> None:
        """Stop the server now (never while a request uses it: waits for them first)."""
        while self.leases:
            await self._idle.wait()
        if self.process is not None:
            await self.process.stop(reason)
        self._awake = False

    def note_awake(self, answered: bool) -> None:
        """What a probe of a wake-only backend found: one that stopped answering is woken again by the
        next request."""
        self._awake = answered

    # -- internals ----------------------------------------------------------------------------------

    def _crash_backoff(self) -> float:
        if self._crashes == 0:
            return 0.0
        settings = self.manager.settings
        return min(
            settings.restart_backoff_seconds * 2 ** (self._crashes - 1), settings.restart_backoff_max_seconds
        )

    def _exited(self, code: int | None) -> None:
        """The server died while running (a crash, or killed from outside)."""
        self._crashes += 1
        if self.group is not None:
            self.group.crashed(self)
        if self.backend.always_on and not self.retired:
            self.manager.spawn(self._restart_always_on)

    async def _restart_always_on(self) -> None:
        try:
            await self.ensure_running()
        except BackendError as error:
            log.warning("backend %s (always on) could not be restarted: %s", self.id, error)

    def _spec(self, backend: Backend, port: int) -> LaunchSpec:
        assert backend.command is not None
        values = {
            PORT_PLACEHOLDER: str(port),
            "${HOST}": LOOPBACK,
            MODEL_PATH_PLACEHOLDER: backend.model_path or "",
            "${ID}": backend.id,
        }
        argv = tuple(_expand(arg, values) for arg in backend.command)
        settings = self.manager.settings
        return LaunchSpec(
            backend_id=backend.id,
            argv=argv,
            env={name: _expand(value, values) for name, value in backend.env},
            cwd=backend.cwd,
            port=port,
            host=LOOPBACK,
            stop_signal=signal.Signals[backend.stop_signal],
            stop_timeout_seconds=backend.stop_timeout_seconds,
            start_timeout_seconds=backend.start_timeout_seconds,
            log_path=self.manager.records_dir / f"{backend.id}.log",
            log_max_bytes=settings.log_max_bytes,
            log_backups=settings.log_backups,
            fingerprint=self.fingerprint,
        )

    async def _ready(self) -> bool:
        path = self.backend.ready_path or KINDS[self.backend.kind].ready_path
        base = self.backend.url.rstrip("/").removesuffix("/v1")
        bound = READY_REQUEST_TIMEOUT_SECONDS
        timeouts = Timeouts(connect_seconds=bound, first_byte_seconds=bound, idle_seconds=bound)
        try:
            response = await self.manager.transport.open(
                "GET", base + path, backend=self.id, timeouts=timeouts
            )
        except BackendError:
            return False
        try:
            await response.read()
        except BackendError:
            return False
        finally:
            response.close()
        return response.status == 200

    async def _run_wake_command(self, command: tuple[str, ...]) -> None:
        code, output = await _wake_command_output(command)
        if code != 0:
            raise BackendUnavailable(
                f"backend {self.id}: the wake command exited with code {code}"
                + (f": {output}" if output else ""),
                backend=self.id,
            )

    async def _wake(self, backend: Backend) -> None:
        wake = backend.wake
        assert wake is not None
        log.info("waking backend %s", self.id)
        try:
            with anyio.fail_after(wake.timeout_seconds):
                if wake.url is not None:
                    bound = wake.timeout_seconds
                    timeouts = Timeouts(connect_seconds=bound, first_byte_seconds=bound, idle_seconds=bound)
                    response = await self.manager.transport.open(
                        wake.method,
                        wake.url,
                        backend=self.id,
                        timeouts=timeouts,
                        body=wake.body.encode() if wake.body is not None else None,
                    )
                    response.close()
                    if response.status >= 400:
                        raise BackendUnavailable(
                            f"backend {self.id}: the wake request answered HTTP {response.status}",
                            backend=self.id,
                        )
                if wake.command is not None:
                    await self._run_wake_command(wake.command)
        except TimeoutError:
            raise BackendUnavailable(
                f"backend {self.id}: the wake action did not finish within {wake.timeout_seconds:g} s",
                backend=self.id,
            ) from None
        except OSError as error:
            raise BackendUnavailable(f"backend {self.id}: cannot run the wake command: {error}") from error


async def _wake_command_output(command: tuple[str, ...]) -> tuple[int, str]:
    """Run ``command`` to its exit; its exit code and the end of its output. The output goes to a file, not
    a pipe: a command that starts a daemon (which inherits its stdout) must not hold us until EOF."""
    with tempfile.TemporaryFile() as output:
        process = await anyio.open_process(
            list(command), stdin=subprocess.DEVNULL, stdout=output, stderr=output, start_new_session=True
        )
        try:
            code = await process.wait()
        finally:
            if process.returncode is None:
                with anyio.CancelScope(shield=True):
                    process.kill()
                    await process.wait()
        output.seek(0)
        text = output.read().decode(errors="replace").strip()
    return code, text[-WAKE_OUTPUT_CHARS:]


_UNIT_STATES: Mapping[ProcessState, UnitState] = {
    ProcessState.SLEEPING: UnitState.SLEEPING,
    ProcessState.STARTING: UnitState.STARTING,
    ProcessState.RUNNING: UnitState.RUNNING,
    ProcessState.STOPPING: UnitState.STOPPING,
    # a crashed server is started again by the next request (after its crash backoff)
    ProcessState.FAILED: UnitState.SLEEPING,
}


def _expand(text: str, values: Mapping[str, str]) -> str:
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return text


class BackendManager:
    """Every managed and wakeable backend of the process. ``run`` is its lifetime (a task in the factory's
    lifetime); ``reconcile`` is called by each generation as it is built."""

    def __init__(
        self,
        state_dir: Path,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.records_dir = state_dir / "backends"
        self.metrics = metrics
        metrics.group_queued.sources.append(self._queue_depths)
        self.clock = clock
        self.settings = ManagedSettings()
        self.units: dict[str, ManagedBackend] = {}
        self.groups: dict[str, GroupDriver] = {}
        self.transport = Transport()
        self._tg: anyio.abc.TaskGroup | None = None
        self._adopted = False
        self._handed_over = False

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Own the watchers, starts and the idle check until cancelled; then stop every server, unless
        ``hand_over`` was called (a respawned gatewayd adopts them)."""
        try:
            async with self.transport, anyio.create_task_group() as tg:
                self._tg = tg
                task_status.started()
                await self._check_idle_forever()
        finally:
            self._tg = None
            with anyio.CancelScope(shield=True):
                if not self._handed_over:
                    await self.stop_all("gatewayd is stopping")

    def _queue_depths(self) -> list[tuple[tuple[str, ...], float]]:
        return [
            ((name, member), float(driver.queue_depth(member)))
            for name, driver in self.groups.items()
            for member in driver.members
        ]

    def hand_over(self) -> None:
        """A respawned gatewayd takes over: leave every server running, stop putting idle ones to sleep."""
        self._handed_over = True

    def spawn(self, func: Callable[..., object], *args: object) -> None:
        assert self._tg is not None, "BackendManager used outside run()"
        self._tg.start_soon(func, *args)  # type: ignore[arg-type]

    def unit(self, backend_id: str) -> ManagedBackend | None:
        return self.units.get(backend_id)

    async def reconcile(self, config: Config) -> Config:
        """Bring the units in line with ``config`` and return it with managed urls resolved. Unchanged
        backends keep their server; changed and removed ones are stopped once their requests are done.
        The first call adopts (or stops) the servers a previous gatewayd process left running."""
        self.settings = config.managed
        left_running = (
            {} if self._adopted else await anyio.to_thread.run_sync(records.read_records, self.records_dir)
        )
        wanted: dict[str, Backend] = {b.id: b for b in config.backends if b.wakeable}
        for backend_id, unit in list(self.units.items()):
            new = wanted.get(backend_id)
            if new is None or fingerprint(new) != unit.fingerprint:
                del self.units[backend_id]
                unit.retired = True
                what = "removed from" if new is None else "changed in"
                self.spawn(unit.stop, f"{what} the config")
        backends: list[Backend] = []
        for backend in config.backends:
            if not backend.wakeable:
                backends.append(backend)
                continue
            existing = self.units.get(backend.id)
            if existing is None:
                unit = self.units[backend.id] = self._new_unit(backend, left_running.pop(backend.id, None))
            else:
                unit = existing
                port = unit.port
                unit.backend = replace(backend, url=resolved_url(backend, port) if port else backend.url)
                if unit.process is not None and port is not None:
                    unit.process.spec = unit._spec(unit.backend, port)
            backends.append(unit.backend)
        for record in left_running.values():
            self.spawn(self._end_orphan, record)
        self._adopted = True
        build_groups(self, config)
        for unit in self.units.values():
            if unit.backend.always_on and not unit.running:
                self.spawn(unit._restart_always_on)
        return replace(config, backends=tuple(backends))

    def _new_unit(self, backend: Backend, record: records.Record | None) -> ManagedBackend:
        port: int | None = None
        if backend.managed:
            port = record.port if record is not None else pick_free_port(LOOPBACK)
        resolved = replace(backend, url=resolved_url(backend, port)) if port is not None else backend
        unit = ManagedBackend(self, resolved, port, fingerprint(backend))
        if unit.process is not None:
            self.spawn(unit.process.watch)
            if record is not None and not unit.process.adopt(record):
                self.spawn(self._end_orphan, record)
                unit.port = pick_free_port(LOOPBACK)
                unit.backend = replace(backend, url=resolved_url(backend, unit.port))
                unit.process.spec = unit._spec(unit.backend, unit.port)
        return unit

    async def _end_orphan(self, record: records.Record) -> None:
        """A server left by a previous gatewayd process that this config cannot use: stop it."""
        if await records.terminate_group(record, signal.SIGTERM, timeout_seconds=10.0):
            log.info("stopped backend %s (pid %d) left running by a previous gatewayd", record.backend_id,
                     record.pid)  # fmt: skip
        records.remove_record(self.records_dir, record.backend_id, pid=record.pid)

    async def stop_all(self, reason: str) -> None:
        async with anyio.create_task_group() as tg:
            for unit in self.units.values():
                if unit.process is not None:
                    tg.start_soon(unit.process.stop, reason)

    async def _check_idle_forever(self) -> None:
        while True:
            await anyio.sleep(IDLE_CHECK_INTERVAL_SECONDS)
            if self._handed_over:
                continue
            now = self.clock()
            for unit in list(self.units.values()):
                ttl = unit.backend.idle_ttl_seconds
                if (
                    ttl > 0
                    and not unit.backend.always_on
                    and unit.process is not None
                    and unit.running
                    and unit.leases == 0
                    and now - unit.last_used >= ttl
                    and (unit.group is None or unit.group.may_sleep(unit))
                ):
                    self.spawn(self._sleep, unit, ttl)

    async def _sleep(self, unit: ManagedBackend, ttl: float) -> None:
        if unit.group is not None:
            await unit.group.evict(unit, f"idle for {ttl:g} s")
        else:
            await unit.stop(f"idle for {ttl:g} s")
