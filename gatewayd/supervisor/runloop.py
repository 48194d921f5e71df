"""The run loop: one process, one listening socket, a sequence of generations, signals turned into actions.

    run(factory, options)                    sync entry: lock, listener, event loop; returns the exit code
      RunLoop.main                           the task group everything below lives in
        HttpServer.serve                     accepts from the first generation's start to the stop (server.py)
        _pump_signals  -> commands           signal handlers only enqueue
        _dispatch_commands -> handle_<name>  one loop; handlers only change state or start tasks
        _lifecycle                           first generation, then one reload per "reload wanted" event
        GenerationRunner.run (one per gen)   serve until retired, then drain and close (generations.py)
        _keep_standby                        after the start and each reload: a warm standby if configured
        _stop                                drain and exit (or hand off to a respawned child)
        _notifications                       sd_notify WATCHDOG=1 and STATUS= from inside the loop

Signals: SIGTERM and SIGINT stop; SIGUSR1 and SIGHUP reload (SIGHUP too, because that is what operators and
tools such as ``systemctl reload`` with an ``ExecReload=kill -HUP`` habitually send; both are the same
reload). During a stop every signal is logged and ignored, except a second SIGINT, which exits at once
(code 130). Reload requests are coalesced by construction: a request sets a fresh "reload wanted" event, and
the lifecycle task runs one reload each time it finds the event set, so any number of requests during a
reload (or during startup) make exactly one more reload. No flag can be left stuck: there is no flag, and
every reload is wrapped so that its failure is recorded and the loop goes on (reload.py).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread

from gatewayd.config import AuthMode, Config
from gatewayd.config.loader import is_loopback_host, redacted
from gatewayd.config.paths import STATE_DIR_ENV
from gatewayd.errors import EXIT_FAILURE, ReloadError, StartupError
from gatewayd.supervisor.contract import GenerationFactory
from gatewayd.supervisor.diagnostics import EventRing, write_bundle
from gatewayd.supervisor.dispatcher import Dispatcher
from gatewayd.supervisor.fdlimit import raise_open_file_limit
from gatewayd.supervisor.forceexit import ForceExitWatchdog
from gatewayd.supervisor.generations import END_STREAMS_GRACE_SECONDS, GenerationRunner
from gatewayd.supervisor.instance import InstanceState
from gatewayd.supervisor.listeners import (
    Listener,
    ListenerOrigin,
    activated_listener,
    bind_listener,
    open_listener,
)
from gatewayd.supervisor.notify import Notifier
from gatewayd.supervisor.portlock import PortLock
from gatewayd.supervisor.reload import Recovery, Reloader
from gatewayd.supervisor.respawn import Inheritance, announce_ready, take_inheritance
from gatewayd.supervisor.server import HttpServer
from gatewayd.supervisor.service import ServiceManager
from gatewayd.supervisor.standby import Standby, StandbyState

log = logging.getLogger("gatewayd.supervisor")

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)
#: exit code after a second SIGINT (the shell convention for "killed by SIGINT")
EXIT_INTERRUPTED = 128 + signal.SIGINT
#: how often STATUS= is refreshed for systemd (only sent when it changed)
STATUS_INTERVAL_SECONDS = 5.0
#: once every generation is closed, connections get this long to flush their last bytes
CONNECTIONS_CLOSE_GRACE_SECONDS = 1.0
#: how long a new instance waits for the port lock to be freed by an exiting holder
LOCK_TIMEOUT_SECONDS = 1.0


@dataclass(frozen=True)
class RunOptions:
    """What the CLI knows that the run loop needs."""

    config_path: str | None
    state_dir: Path
    #: the full command line that starts this very program again (for a fresh-PID respawn)
    respawn_command: tuple[str, ...]
    service_manager: ServiceManager = ServiceManager.NONE
    #: the log-event ring attached to the root logger, for diagnostic bundles
    events: EventRing | None = None
    #: the process environment: GATEWAYD_INHERIT and LISTEN_* are popped from it
    environ: MutableMapping[str, str] = field(default_factory=lambda: os.environ)
    lock_timeout_seconds: float = LOCK_TIMEOUT_SECONDS
    use_uvloop: bool = True
    #: the config as the caller already loaded it (with its warnings logged); None: the run loop loads it
    config: Config | None = None


def run(factory: GenerationFactory, options: RunOptions) -> int:
    """Run an instance until it stops; return its exit code (0 after a clean stop or a respawn handoff).

    Raises, before anything serves: ConfigError (the config is invalid), AlreadyRunning (another instance
    holds the port), StartupError (the socket cannot be bound, or the first generation failed to start; the
    message says why). The lock and the socket are released on every path.
    """
    # Until the run loop's signal receiver is installed, a SIGUSR1/SIGHUP (from a CLI that found the lock
    # record) would kill the process with the default action: hold them pending until then.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    try:
        return _run(factory, options)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _run(factory: GenerationFactory, options: RunOptions) -> int:
    started_at = time.time()
    raise_open_file_limit()  # before anything opens files; the connection cap is derived from it
    inheritance = take_inheritance(options.environ)
    service_manager = ServiceManager(inheritance.service_manager) if inheritance else options.service_manager
    config = options.config if options.config is not None else factory.load_config(options.config_path)
    with contextlib.ExitStack() as cleanup:
        if inheritance is not None:
            lock = PortLock.inherit(options.state_dir, inheritance.port, inheritance.lock)
            cleanup.callback(lock.release)
            started_at = inheritance.started_at
            listener = open_listener(
                config.server.host,
                config.server.port,
                backlog=config.server.backlog,
                inherited_fd=inheritance.listen,
                environ=options.environ,
            )
            cleanup.callback(listener.close)
            if not is_loopback_host(listener.host) and config.auth.mode is not AuthMode.KEYS:
                raise StartupError(
                    f"the config turns auth off while the inherited socket listens on {listener.host}, which "
                    "is not loopback: keep auth.mode: keys, or stop gatewayd and start it on 127.0.0.1"
                )
        else:
            # a socket-activated instance is locked by the port systemd's socket has, not the config's
            activated = activated_listener(options.environ, allow_public=config.auth.mode is AuthMode.KEYS)
            if activated is not None:
                cleanup.callback(activated.close)
            lock = PortLock(options.state_dir, activated.port if activated else config.server.port)
            try:
                lock.acquire(timeout_seconds=options.lock_timeout_seconds)
            except OSError as error:
                raise _state_dir_error(options.state_dir, error) from error
            cleanup.callback(lock.release)
            if activated is None:
                listener = Listener(
                    bind_listener(config.server.host, config.server.port, backlog=config.server.backlog),
                    ListenerOrigin.BOUND,
                )
                cleanup.callback(listener.close)
            else:
                listener = activated
        instance = InstanceState(
            lock=lock,
            listener=listener,
            state_dir=options.state_dir,
            config_path=options.config_path,
            started_at=started_at,
            generation=inheritance.generation if inheritance else 0,
            restarts=inheritance.restarts if inheritance else 0,
        )
        with contextlib.suppress(OSError):
            instance.refresh_last_reload()
        if inheritance is None:
            # A respawned child leaves the parent's record alone until it serves (publish writes it):
            # until then the parent is the instance, and the child may still be killed.
            try:
                instance.write_record()
            except OSError as error:
                raise _state_dir_error(options.state_dir, error) from error
        loop = RunLoop(factory, options, config, instance, service_manager, inheritance)
        use_uvloop = options.use_uvloop and importlib.util.find_spec("uvloop") is not None
        return anyio.run(loop.main, backend="asyncio", backend_options={"use_uvloop": use_uvloop})


def _state_dir_error(state_dir: Path, error: OSError) -> StartupError:
    return StartupError(
        f"cannot use the state directory {state_dir}: {error.strerror or error}; "
        f"pass --state-dir DIR or set {STATE_DIR_ENV} to a directory this user can write"
    )


@dataclass(frozen=True)
class Command:
    """One item for the dispatch loop: a signal name ("sigterm", ...) or an internal "exit"."""

    name: str
    exit_code: int = 0


class RunLoop:
    """The event-loop half of ``run``. One per process; not reusable."""

    def __init__(
        self,
        factory: GenerationFactory,
        options: RunOptions,
        config: Config,
        instance: InstanceState,
        service_manager: ServiceManager,
        inheritance: Inheritance | None,
    ) -> None:
        self.factory = factory
        self.options = options
        self.instance = instance
        self.service_manager = service_manager
        self.notifier = Notifier.from_environ(options.environ)
        self.dispatcher = Dispatcher()
        self.server = HttpServer(instance.listener.sock, self.dispatcher, config.server)
        #: the config of the generation being served (the last good one)
        self.config = config
        #: the config the process started with: its listen address is the one the socket has
        self.startup_config = config
        self.current: GenerationRunner | None = None
        self.runners: set[GenerationRunner] = set()
        self.child: subprocess.Popen[bytes] | None = None
        self._inheritance = inheritance
        self._send, self._receive = anyio.create_memory_object_stream[Command](math.inf)
        self._task_group: anyio.abc.TaskGroup | None = None
        self._lifecycle_scope: anyio.CancelScope | None = None
        self._lifecycle_done: anyio.Event | None = None
        self._reload_wanted: anyio.Event | None = None
        self._record_lock: anyio.Lock | None = None
        #: set when the serving generation failed: the next reload restarts it from the config it served
        self._recovery: Recovery | None = None
        self._stopping = False
        self._handoff = False
        #: the signal that asked to stop (None for a handoff or an internal stop)
        self._stop_reason: str | None = None
        self._exit_code: int | None = None
        self._fatal: BaseException | None = None
        self._watchdog: ForceExitWatchdog | None = None

    # -- main -----------------------------------------------------------------------------------------

    async def main(self) -> int:
        """Serve until stopped. Returns the exit code; raises StartupError if the first generation failed."""
        self._reload_wanted = anyio.Event()
        self._record_lock = anyio.Lock()
        self._lifecycle_done = anyio.Event()
        self._lifecycle_scope = anyio.CancelScope()
        self._warn_about_bounds(self.config)
        with self._send, self._receive:
            await self._run_tasks()
        if self._fatal is not None:
            raise self._fatal
        assert self._exit_code is not None
        return self._exit_code

    async def _run_tasks(self) -> None:
        async with self.factory.lifetime(), anyio.create_task_group() as task_group:
            self._task_group = task_group
            with anyio.open_signal_receiver(*HANDLED_SIGNALS) as signals:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)  # held since run() began
                task_group.start_soon(self._pump_signals, signals)
                log.info(
                    "socket http://%s (%s); starting the gateway",
                    self.instance.listener.address,
                    self.instance.listener.origin.value,
                )
                task_group.start_soon(self._lifecycle)
                task_group.start_soon(self._notifications)
                await self._dispatch_commands()
                task_group.cancel_scope.cancel()

    async def _pump_signals(self, signals: AsyncIterator[signal.Signals]) -> None:
        async for signum in signals:
            self._send.send_nowait(Command(signal.Signals(signum).name.lower()))

    async def _dispatch_commands(self) -> None:
        async for command in self._receive:
            handler = getattr(self, f"handle_{command.name}")
            try:
                handler(command)
            except Exception:
                log.exception("handling %s failed; the run loop goes on", command.name.upper())
            if self._exit_code is not None:
                return

    # -- handlers: they only change state or start tasks ----------------------------------------------

    def handle_sigterm(self, command: Command) -> None:
        self._request_stop("SIGTERM")

    def handle_sigint(self, command: Command) -> None:
        if self._stopping and self._stop_reason == "SIGINT":
            log.warning("second SIGINT: exiting now without waiting for the drain")
            for handler in logging.getLogger().handlers:
                handler.flush()
            os._exit(EXIT_INTERRUPTED)
        self._request_stop("SIGINT")

    def handle_sigusr1(self, command: Command) -> None:
        self._request_reload("SIGUSR1")

    def handle_sighup(self, command: Command) -> None:
        self._request_reload("SIGHUP")

    def handle_exit(self, command: Command) -> None:
        self._exit_code = command.exit_code

    def _request_stop(self, reason: str) -> None:
        if self._stopping:
            if self._handoff and self._stop_reason is None:
                self._hurry_handoff(reason)
            else:
                log.info("%s ignored: already stopping", reason)
            return
        log.info("%s: stopping", reason)
        self._stop_reason = reason
        self.begin_stop(handoff=False)

    def _hurry_handoff(self, reason: str) -> None:
        """A stop while the old process drains after a handoff (bounded by restart.drain_timeout_seconds):
        finish within the stop's bounds instead."""
        self._stop_reason = reason
        shutdown = self.config.shutdown
        log.info("%s: stopping; the drain after the handoff now ends within %gs", reason,
                 shutdown.drain_timeout_seconds)  # fmt: skip
        for runner in list(self.runners):
            runner.retire(drain_timeout_seconds=shutdown.drain_timeout_seconds)
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._watchdog = ForceExitWatchdog(shutdown.force_exit_seconds, self._force_exit_bundle)
        self._watchdog.start()

    def _request_reload(self, reason: str) -> None:
        if self._stopping:
            if self._handoff and self.child is not None and self.child.poll() is None:
                # a CLI that found this process just before the handoff: the child is the instance now
                log.info("%s: forwarded to pid %d, which took over", reason, self.child.pid)
                self.child.send_signal(signal.SIGUSR1)
                return
            log.info("%s ignored: stopping", reason)
            return
        assert self._reload_wanted is not None
        if self._reload_wanted.is_set():
            log.info("%s: a reload is already pending; coalesced", reason)
        else:
            log.info("%s: reload requested", reason)
        self._reload_wanted.set()

    # -- lifecycle: startup, then reloads -------------------------------------------------------------

    async def _lifecycle(self) -> None:
        assert self._lifecycle_done is not None
        assert self._lifecycle_scope is not None
        try:
            with self._lifecycle_scope:
                if not await self._start_first_generation():
                    return
                await self._keep_standby()
                reloader = Reloader(self)
                while True:
                    assert self._reload_wanted is not None
                    await self._reload_wanted.wait()
                    self._reload_wanted = anyio.Event()
                    recovery, self._recovery = self._recovery, None
                    await reloader.reload(recovery)
                    if not self._stopping:
                        await self._keep_standby()
        finally:
            self._lifecycle_done.set()

    async def _start_first_generation(self) -> bool:
        number = self.instance.generation + 1
        try:
            runner = await self.start_generation(self.config, number)
        except Exception as error:
            log.error("the gateway could not start: %s", error)
            self._fatal = StartupError(f"the gateway could not start: {error}")
            self._fatal.__cause__ = error
            self.exit(EXIT_FAILURE)
            return False
        self.publish(runner)
        await self.write_record()
        # Accepting starts only now: until then connections wait in the listen queue (or, during a respawn,
        # are taken by the parent, which still serves) instead of being answered "starting".
        assert self._task_group is not None
        await self._task_group.start(self.server.serve)
        self.notifier.ready(self.status_line())
        log.info("serving generation %d on http://%s", number, self.instance.listener.address)
        if self._inheritance is not None:
            try:
                announce_ready(self._inheritance)
            except ReloadError as error:
                log.error("%s; stopping", error)
                self.begin_stop(handoff=False)
                return False
        return True

    # -- warm standby (standby.py) ---------------------------------------------------------------------

    def _standby_wanted(self) -> bool:
        return self.config.restart.warm_standby and self.service_manager is not ServiceManager.LAUNCHD

    async def _keep_standby(self) -> None:
        """Once the serving generation serves: start a standby if the config wants one and there is none
        alive (the first, or one that exited since); dismiss it if the config no longer wants one."""
        standby = self.instance.standby
        if standby is not None and (not self._standby_wanted() or standby.state() is StandbyState.EXITED):
            self.instance.standby = None
            code = standby.process.poll()
            if code is not None:
                log.warning("warm standby pid %d had exited (status %d); replacing it", standby.pid, code)
            await standby.dismiss()
            standby = None
        if standby is None and self._standby_wanted():
            try:
                self.instance.standby = Standby.start(self.options.respawn_command, self.options.environ)
            except ReloadError as error:
                log.warning("%s; respawns start their child cold", error)

    def take_standby(self) -> Standby | None:
        """The standby, for a respawn to hand over to (it is no longer this process's standby)."""
        standby, self.instance.standby = self.instance.standby, None
        return standby

    async def start_generation(self, config: Config, number: int) -> GenerationRunner:
        """Start a generation (not yet published). Raises whatever the factory raised while starting it."""
        assert self._task_group is not None
        runner = GenerationRunner(
            self.factory, config, number=number, instance=self.instance, on_failure=self._generation_failed
        )
        await self._task_group.start(runner.run)
        self.runners.add(runner)
        return runner

    def publish(self, runner: GenerationRunner) -> None:
        """Make ``runner`` the current generation and retire the previous one (it drains on its own task).
        The caller then awaits ``write_record``."""
        old = self.current
        self.dispatcher.swap(runner.slot)
        self.current = runner
        self.config = runner.config
        self.instance.generation = runner.number
        self.server.apply_settings(runner.config.server)
        if old is not None:
            old.retire(drain_timeout_seconds=self.config.restart.drain_timeout_seconds)
        self.runners = {each for each in self.runners if not each.closed}
        self.notifier.status(self.status_line())

    async def write_record(self) -> None:
        """Rewrite the lock record from the instance's current state, off the event loop (it fsyncs).
        Writes are serialised, and each writes the state current when it runs, so the last one wins."""
        assert self._record_lock is not None
        async with self._record_lock:
            try:
                await anyio.to_thread.run_sync(self.instance.write_record)
            except OSError as error:
                log.warning("cannot rewrite the lock record: %s", error)

    def _generation_failed(self, runner: GenerationRunner, error: BaseException) -> None:
        if runner is self.current and not self._stopping:
            log.error(
                "the serving generation %d failed (%s); reloading the same config", runner.number, error
            )
            # the config it served, not the file, which may have changed; the reload writes the bundle
            self._recovery = Recovery(runner.config, error)
            self._request_reload("generation failure")

    # -- stop -----------------------------------------------------------------------------------------

    def begin_stop(self, *, handoff: bool) -> None:
        """Start stopping (idempotent). ``handoff``: a respawned child took over; answer with
        ``Connection: close`` for a while before draining, and send no STOPPING=1 (this process is no longer
        the main one)."""
        if self._stopping:
            return
        self._stopping = True
        self._handoff = handoff
        if handoff:
            self.factory.hand_over()
        shutdown = self.config.shutdown
        force_exit = shutdown.force_exit_seconds
        if handoff:  # the old process drains for as long as a reload would, with the same margin on top
            margin = max(force_exit - shutdown.drain_timeout_seconds, 0.0)
            force_exit = max(force_exit, self.config.restart.drain_timeout_seconds + margin)
        self._watchdog = ForceExitWatchdog(force_exit, self._force_exit_bundle)
        self._watchdog.start()
        assert self._task_group is not None
        self._task_group.start_soon(self._stop, handoff)

    async def _stop(self, handoff: bool) -> None:
        assert self._lifecycle_done is not None
        assert self._lifecycle_scope is not None
        if not handoff:
            self.notifier.stopping()
        self._lifecycle_scope.cancel()
        await self._lifecycle_done.wait()
        if (standby := self.take_standby()) is not None:
            await standby.dismiss()
        shutdown = self.config.shutdown
        if handoff:
            self.dispatcher.connection_close = True
            self.server.stop_accepting()
            await anyio.sleep(max(shutdown.accept_settle_seconds, self.config.restart.handoff_close_seconds))
        else:
            if self.current is not None:
                self.current.generation.mark_draining()
            self.server.stop_accepting()
            await anyio.sleep(shutdown.accept_settle_seconds)
        await self.server.close_idle()
        bound = self.config.restart.drain_timeout_seconds if handoff else shutdown.drain_timeout_seconds
        for runner in list(self.runners):
            runner.retire(drain_timeout_seconds=bound)
        for runner in list(self.runners):
            await runner.wait_closed()
        if not await self.server.wait_closed(CONNECTIONS_CLOSE_GRACE_SECONDS):
            log.warning("%d connection(s) still open at exit; closing them", self.server.connections)
        if self._watchdog is not None:
            self._watchdog.cancel()
        log.info(
            "handed over to pid %d; exiting" if handoff else "stopped",
            *([self.child.pid] if handoff and self.child else []),
        )
        self.exit(0)

    def exit(self, code: int) -> None:
        """End the run loop with ``code`` (the dispatch loop returns; main cancels what is left)."""
        self._send.send_nowait(Command("exit", code))

    # -- status, watchdog, bundles --------------------------------------------------------------------

    async def _notifications(self) -> None:
        interval = self.notifier.watchdog_interval_seconds
        period = min(interval, STATUS_INTERVAL_SECONDS) if interval else STATUS_INTERVAL_SECONDS
        last_status = ""
        while True:
            # another process may have recorded an outcome (the parent of a respawn, after its handoff)
            with contextlib.suppress(OSError):
                await anyio.to_thread.run_sync(self.instance.refresh_last_reload)
            self.notifier.watchdog()
            line = self.status_line()
            if line != last_status and self.notifier.enabled:
                self.notifier.status(line)
                last_status = line
            await anyio.sleep(period)

    def status_line(self) -> str:
        """One line for STATUS=: generation, backends up, requests in flight."""
        if self.current is None:
            return "starting"
        parts = [f"generation {self.current.number}"]
        try:
            status = self.current.generation.status()
            parts.append(f"backends {status.get('backends_up', '?')}/{status.get('backends_total', '?')} up")
        except Exception:  # a status page must never take the loop down
            log.debug("generation %d status() failed", self.current.number, exc_info=True)
        parts.append(f"{self.dispatcher.in_flight} in flight")
        if self._stopping:
            parts.append("stopping")
        return ", ".join(parts)

    def bundle(self, reason: str, error: BaseException | str | None) -> Path | None:
        """Write a diagnostic bundle (blocking file IO). Never raises: returns None if it failed."""
        try:
            path = write_bundle(
                self.options.state_dir,
                reason=reason,
                error=error,
                events=self.options.events.events() if self.options.events is not None else [],
                config=redacted(self.config),
                started_at=self.instance.started_at,
                extra={
                    "generation": self.instance.generation,
                    "restarts": self.instance.restarts,
                    "in_flight": self.dispatcher.in_flight,
                    "connections": self.server.connections,
                    "listen": self.instance.listener.address,
                },
            )
        except Exception:
            log.exception("could not write a diagnostic bundle")
            return None
        log.warning("diagnostic bundle written: %s", path)
        return path

    async def write_bundle(self, reason: str, error: BaseException | str | None) -> Path | None:
        """``bundle`` on a worker thread; returns once it is on disk (None if it could not be written), so
        that an outcome recorded afterwards can name it. Shielded: a bundle is what a failure leaves."""
        with anyio.CancelScope(shield=True):
            path = await anyio.to_thread.run_sync(self.bundle, reason, error)
        return path

    def _force_exit_bundle(self) -> None:
        # runs on the watchdog thread while the loop may be wedged: only read state, never await
        self.bundle(
            "force-exit",
            f"stop did not finish within shutdown.force_exit_seconds="
            f"{self.config.shutdown.force_exit_seconds:g}; "
            f"{self.dispatcher.in_flight} request(s) in flight, {self.server.connections} connection(s) open",
        )

    @staticmethod
    def _warn_about_bounds(config: Config) -> None:
        shutdown = config.shutdown
        needed = shutdown.drain_timeout_seconds + END_STREAMS_GRACE_SECONDS + CONNECTIONS_CLOSE_GRACE_SECONDS
        if shutdown.force_exit_seconds <= needed:
            log.warning(
                "shutdown.force_exit_seconds (%g) is not above drain_timeout_seconds plus grace (%g): "
                "a stop with busy requests will end in a forced exit",
                shutdown.force_exit_seconds,
                needed,
            )
