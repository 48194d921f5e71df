"""The backends of one generation: their health, admission slots, probe loops and discovery."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anyio
from anyio.abc import TaskGroup

from gatewayd.config import Backend, Config, Limits
from gatewayd.errors import BackendError, StartupError
from gatewayd.gateway.backends.admission import Admission
from gatewayd.gateway.backends.kinds import KINDS
from gatewayd.gateway.backends.manager import BackendManager, ManagedBackend, UnitState
from gatewayd.gateway.backends.probes import describe, probe
from gatewayd.gateway.backends.transport import Transport
from gatewayd.gateway.core.concurrency import Concurrency
from gatewayd.gateway.core.health import BackendState, Health, ProbeResult
from gatewayd.gateway.core.inventory import Inventory
from gatewayd.gateway.core.metadata import ModelInfo
from gatewayd.gateway.core.routing import Load

log = logging.getLogger("gatewayd.backends")

#: readiness waits at most this long for the first probe of every backend
FIRST_ROUND_WAIT_SECONDS = 0.5


class BackendRuntime:
    """One backend's live state in one generation. ``unit`` is the process-wide managed backend behind it
    (managed and wakeable backends only): its state overrides the probes' while it is not running."""

    __slots__ = ("admission", "concurrency", "config", "health", "idle_slots", "last_used", "unit", "wake")

    def __init__(
        self, config: Backend, health: Health, limits: Limits, unit: ManagedBackend | None = None
    ) -> None:
        self.config = config
        self.health = health
        self.unit = unit
        #: the concurrency limit in force and its source; ``admission`` enforces it
        self.concurrency = Concurrency.initial(config.max_concurrency, KINDS[config.kind].default_concurrency)
        self.admission = Admission(
            capacity=self.concurrency.limit,
            queue_size=limits.queue_size,
            queue_timeout_seconds=limits.queue_timeout_seconds,
            retry_after_seconds=limits.retry_after_seconds,
        )
        self.idle_slots: int | None = None
        self.last_used = 0.0
        #: set when traffic arrives, so an idle probe loop switches to the busy interval at once
        self.wake = anyio.Event()

    @property
    def state(self) -> BackendState:
        """The state routing sees: the probes' while the server runs, else the manager's."""
        unit = self.unit
        if unit is None:
            return self.health.state
        state = unit.state
        if state is UnitState.FAILED:
            return BackendState.DOWN
        if state is UnitState.STARTING:
            return BackendState.STARTING
        if unit.process is None:  # wakes on its own terms: asleep while it does not answer
            if self.health.state is not BackendState.DOWN:
                return self.health.state
            return BackendState.UP if unit.running else BackendState.SLEEPING
        if state is UnitState.RUNNING:
            return self.health.state
        return BackendState.SLEEPING

    def learn_concurrency(self, result: ProbeResult) -> None:
        """Take the slots a probe reported as the limit (unless the config sets one): admission adjusts
        live, keeping the requests it has admitted counted once."""
        learned = self.concurrency.learned(result.total_slots, result.total_slots_from)
        if learned == self.concurrency:
            return
        log.info("backend %s: concurrency %s, was %s", self.config.id, learned.label, self.concurrency.label)
        self.concurrency = learned
        self.admission.set_capacity(learned.limit)

    def load(self) -> Load:
        return Load(
            state=self.state,
            in_flight=self.admission.in_flight,
            max_concurrency=self.admission.capacity,
            weight=self.config.weight,
            idle_slots=self.idle_slots,
        )


class BackendPool:
    """Owns every BackendRuntime of a generation and the tasks that probe them.

    ``run`` starts a probe loop per backend (and the discovery loop when enabled) in the given task group;
    they stop when that group is cancelled (when the generation closes)."""

    def __init__(
        self,
        config: Config,
        transport: Transport,
        manager: BackendManager | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._manager = manager
        self._transport = transport
        #: the clock health and idleness are measured with (tests inject one)
        self.clock = clock
        self._tg: TaskGroup | None = None
        #: ``run`` has returned: the generation serves, and a probe's failure can no longer fail its start
        self._started = False
        self._last_refresh = -1e9
        self.runtimes: dict[str, BackendRuntime] = {}
        for backend in config.backends:
            self.runtimes[backend.id] = self._runtime(backend)
        self.inventory = Inventory(
            routes=config.routes,
            backend_order=[b.id for b in config.backends],
            declared={b.id: b.models for b in config.backends},
        )

    def _runtime(self, backend: Backend) -> BackendRuntime:
        health = Health(
            failure_threshold=self._config.health.failure_threshold,
            cooldown_seconds=self._config.health.cooldown_seconds,
        )
        unit = self._manager.unit(backend.id) if self._manager is not None and backend.wakeable else None
        if unit is not None and unit.running:
            health.state = (
                BackendState.UP
            )  # kept across the reload, or adopted: it answered its readiness check
        return BackendRuntime(backend, health, self._config.limits, unit)

    def load(self, backend_id: str) -> Load:
        return self.runtimes[backend_id].load()

    async def run(self, tg: TaskGroup) -> None:
        """Start probing every backend (and discovery, when enabled) in ``tg``; return once the first round
        is in, or after ``FIRST_ROUND_WAIT_SECONDS`` (a hung backend must not delay readiness)."""
        self._tg = tg
        pending = len(self.runtimes) + (1 if self._config.discovery_enabled else 0)
        first_round = anyio.Event()

        def one_done() -> None:
            nonlocal pending
            pending -= 1
            if pending <= 0:
                first_round.set()

        for runtime in self.runtimes.values():
            tg.start_soon(self._probe_loop, runtime, one_done)
        if self._config.discovery_enabled:
            tg.start_soon(self._discovery_loop, one_done)
        if pending:
            with anyio.move_on_after(FIRST_ROUND_WAIT_SECONDS):
                await first_round.wait()
        self._started = True

    async def refresh_models(self) -> bool:
        """An unknown model was asked for: re-read every backend's model list once (rate-limited).
        Returns True when a refresh ran."""
        now = self.clock()
        if now - self._last_refresh < self._config.discovery.refresh_min_interval_seconds:
            return False
        self._last_refresh = now
        async with anyio.create_task_group() as tg:
            for runtime in list(self.runtimes.values()):
                if runtime.config.models is None:
                    tg.start_soon(self._probe_once, runtime)
            if self._config.discovery_enabled:
                tg.start_soon(self._discover)
        return True

    def note_traffic(self, runtime: BackendRuntime) -> None:
        runtime.last_used = self.clock()
        if not runtime.wake.is_set():
            runtime.wake.set()

    async def _probe_once(self, runtime: BackendRuntime) -> ProbeResult | None:
        unit = runtime.unit
        if unit is not None and unit.process is not None and not unit.running:
            runtime.health.reset_for_start()  # the next start's readiness check is its first probe
            return None
        timeout = self._config.health.probe_timeout_seconds
        try:
            with anyio.fail_after(timeout * 3):
                result = await probe(self._transport, runtime.config, timeout)
        except (TimeoutError, BackendError) as error:
            result = ProbeResult(ok=False, detail=str(error) or "probe timed out")
        except Exception as error:  # not a backend fault: the backend's settings cannot be used as given
            problem = f"{type(error).__name__}: {error}"
            if not self._started:
                raise StartupError(
                    f"backend '{runtime.config.id}' cannot be used ({problem}): check its url, api_key and "
                    "kind, and validate the config with `gatewayd check`"
                ) from error
            result = ProbeResult(ok=False, detail=f"its probe failed: {problem}")
        before = runtime.health.state
        runtime.health.probed(self.clock(), result)
        runtime.idle_slots = result.idle_slots
        runtime.learn_concurrency(result)
        if result.models is not None:
            self.inventory.set_discovered(runtime.config.id, result.models)
        await self._learn_models(runtime, result)
        if unit is not None and unit.process is None:
            unit.note_awake(
                result.ok
            )  # a wake-only backend that stops answering is woken by the next request
        if runtime.health.state is not before:
            level = logging.WARNING if runtime.health.state is BackendState.DOWN else logging.INFO
            log.log(level, "backend %s is %s%s", runtime.config.id, runtime.health.state.value,
                    f" ({result.detail})" if result.detail else "")  # fmt: skip
        return result

    async def _learn_models(self, runtime: BackendRuntime, result: ProbeResult) -> None:
        """Cache what a successful probe's listing said about the backend's models, and ask the backend
        about the models it has not described yet (once per model and digest: /api/show, /props)."""
        if not result.ok or result.models is None:
            return
        backend_id = runtime.config.id
        self.inventory.set_listed_info(backend_id, result.info or {})
        undescribed = self.inventory.undescribed(backend_id, result.models)
        if not undescribed:
            return
        timeout = self._config.health.probe_timeout_seconds
        found: dict[str, ModelInfo] = {}
        with anyio.move_on_after(timeout * 3):  # the rest is asked at the next probe
            await describe(self._transport, runtime.config, undescribed, timeout, found)
        for model, info in found.items():
            self.inventory.set_described(backend_id, model, info)

    async def _probe_loop(
        self, runtime: BackendRuntime, first_done: Callable[[], None] | None = None
    ) -> None:
        health = self._config.health
        await self._probe_once(runtime)
        if first_done is not None:
            first_done()
        while True:
            busy = self.clock() - runtime.last_used < health.probe_interval_idle_seconds
            down = runtime.health.state is BackendState.DOWN
            interval = (
                health.probe_interval_busy_seconds if busy or down else health.probe_interval_idle_seconds
            )
            runtime.wake = anyio.Event()
            with anyio.move_on_after(interval):
                if not busy:
                    await runtime.wake.wait()
                    await anyio.sleep(health.probe_interval_busy_seconds)
                else:
                    await anyio.sleep_forever()
            await self._probe_once(runtime)

    async def _discover(self) -> None:
        """Look for model servers on the usual loopback ports; add those that answer as backends."""
        settings = self._config.discovery
        async with anyio.create_task_group() as tg:
            for port, kind in settings.ports:
                backend_id = f"{kind.value}-{port}"
                if backend_id in self.runtimes:
                    continue
                backend = Backend(
                    id=backend_id,
                    url=f"http://{settings.host}:{port}",
                    kind=kind,
                    timeouts=self._config.timeouts,
                )
                tg.start_soon(self._try_discovered, backend)

    async def _try_discovered(self, backend: Backend) -> None:
        runtime = self._runtime(backend)
        result = await probe(self._transport, backend, self._config.health.probe_timeout_seconds)
        if not result.ok or backend.id in self.runtimes:
            return
        runtime.health.probed(self.clock(), result)
        runtime.learn_concurrency(result)
        self.runtimes[backend.id] = runtime
        self.inventory.add_backend(backend.id)
        if result.models is not None:
            self.inventory.set_discovered(backend.id, result.models)
        await self._learn_models(runtime, result)
        log.info("discovered %s at %s serving %s", backend.kind.value, backend.url,
                 ", ".join(self.inventory.served_by(backend.id)) or "no models")  # fmt: skip
        if self._tg is not None:
            self._tg.start_soon(self._probe_loop, runtime)

    async def _discovery_loop(self, first_done: Callable[[], None]) -> None:
        await self._discover()
        first_done()
        while True:
            await anyio.sleep(self._config.discovery.interval_seconds)
            await self._discover()
