"""The gateway as the supervisor sees it: a factory of generations (see gatewayd.supervisor.contract)."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from gatewayd.config import AffinitySettings, Config
from gatewayd.config.loader import load
from gatewayd.errors import GatewaydError, StartupError
from gatewayd.gateway.activity import Activity
from gatewayd.gateway.app import create_app
from gatewayd.gateway.backends.manager import BackendManager
from gatewayd.gateway.backends.pool import BackendPool
from gatewayd.gateway.backends.transport import Transport
from gatewayd.gateway.conversations import Conversations
from gatewayd.gateway.core.affinity import AffinityTable
from gatewayd.gateway.fleet.heartbeat import Heartbeat
from gatewayd.gateway.generation import GatewayGeneration
from gatewayd.gateway.guard import DB_FILE, Guard
from gatewayd.gateway.inference import InferenceEndpoint
from gatewayd.gateway.jobs.batch_routes import batches_blueprint
from gatewayd.gateway.jobs.routes import jobs_blueprint
from gatewayd.gateway.jobs.worker import JobRunner
from gatewayd.gateway.lifecycle import Lifecycle
from gatewayd.gateway.metrics import Metrics
from gatewayd.gateway.relay import Relay, StreamRegistry

log = logging.getLogger("gatewayd.gateway")


class GatewayFactory:
    """Builds gateway generations. One per process; owns what must outlive a reload (the metrics, the
    managed backends, the affinity pins)."""

    def __init__(
        self,
        *,
        state_dir: Path,
        listen_host: str | None = None,
        listen_port: int | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self._listen_host = listen_host
        self._listen_port = listen_port
        self._environ = environ
        self.metrics = Metrics()
        #: recent requests and per-second counts for the status page: process-wide, kept across reloads
        self.activity = Activity()
        #: managed and wakeable backends: process-wide, kept across generations
        self.manager = BackendManager(state_dir, self.metrics)
        #: keys, limits and the usage record: process-wide, so limits and buffered usage survive a reload
        self.guard = Guard(state_dir, self.metrics)
        #: /v1/responses conversations kept for previous_response_id (in the store, like the keys)
        self.conversations = Conversations(state_dir / DB_FILE)
        #: durable jobs: process-wide, so a job outlives the generation current when it started (worker.py)
        self.jobs = JobRunner(self.guard, self.metrics)
        #: this instance's heartbeat row in the store and the fleet seen there (gatewayd.gateway.fleet)
        self.heartbeat = Heartbeat(state_dir / DB_FILE)
        self._affinity: AffinityTable | None = None
        self._affinity_limits: tuple[int, float] | None = None

    @asynccontextmanager
    async def lifetime(self) -> AsyncIterator[None]:
        """Run the backend manager for the life of the process; on exit it stops the model servers it
        runs, unless ``hand_over`` was called (a respawned gatewayd adopts them)."""
        async with anyio.create_task_group() as tg:
            await tg.start(self.manager.run)
            await tg.start(self.guard.run)
            await tg.start(self.jobs.run)
            await tg.start(self.heartbeat.run)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
                self.conversations.close()

    def hand_over(self) -> None:
        self.manager.hand_over()

    def load_config(self, path: str | None) -> Config:
        loaded = load(
            Path(path) if path else None,
            environ=self._environ,
            listen_host=self._listen_host,
            listen_port=self._listen_port,
        )
        for warning in loaded.warnings:
            log.warning("config: %s", warning)
        return loaded.config

    @asynccontextmanager
    async def generation(
        self, config: Config, *, number: int, instance: Any
    ) -> AsyncIterator[GatewayGeneration]:
        """Build, start and yield a generation; on exit stop its probes and close its upstream connections.
        Raises StartupError, saying what failed (and naming the backend when one did), for any failure
        while building it; a failure after it was yielded propagates as it is."""
        started = False
        try:
            async with self._generation(config, number=number, instance=instance) as generation:
                started = True
                yield generation
        except Exception as error:
            if started:
                raise
            raise _startup_error(error) from error

    @asynccontextmanager
    async def _generation(
        self, config: Config, *, number: int, instance: Any
    ) -> AsyncIterator[GatewayGeneration]:
        metrics = self.metrics
        for warning in await self.guard.configure(config):
            log.warning("keys: %s", warning)
        config = await self.manager.reconcile(config)
        self.jobs.configure(config)
        self.heartbeat.configure(config)
        async with Transport() as transport, anyio.create_task_group() as tg:
            pool = BackendPool(config, transport, self.manager)
            streams = StreamRegistry()
            affinity = self.affinity_table(config.affinity) if config.affinity.enabled else None
            relay = Relay(config, pool, transport, metrics, affinity=affinity)
            inference = InferenceEndpoint(
                Lifecycle(relay, pool),  # Ollama's load/unload requests are answered before the relay
                metrics,
                max_body_bytes=config.server.max_body_bytes,
                max_json_depth=config.server.max_json_depth,
                access_log_enabled=config.logging.access_log,
                activity=self.activity,
                guard=self.guard,
                streams=streams,
                conversations=self.conversations,
                responses=config.responses,
            )
            generation = GatewayGeneration(
                config,
                number=number,
                metrics=metrics,
                pool=pool,
                streams=streams,
                inference=inference,
                activity=self.activity,
            )
            # jobs get an endpoint of their own: the same relay, but not cut by the HTTP drain (detach)
            job_inference = InferenceEndpoint(
                Lifecycle(relay, pool),
                metrics,
                max_body_bytes=config.server.max_body_bytes,
                max_json_depth=config.server.max_json_depth,
                access_log_enabled=config.logging.access_log,
                activity=self.activity,
                guard=self.guard,
                streams=StreamRegistry(),
                conversations=self.conversations,
                responses=config.responses,
            )
            served = lambda: {row["name"] for row in generation.model_rows()}  # noqa: E731
            jobs = jobs_blueprint(self.jobs, self.guard, served, max_json_depth=config.server.max_json_depth)
            batches = batches_blueprint(self.jobs, self.guard, max_json_depth=config.server.max_json_depth)
            app = create_app(
                generation, instance.snapshot, self.guard, (jobs, batches), fleet=self.heartbeat.roster
            )
            generation.app = app
            sources = (
                (metrics.in_flight, generation.gauge_in_flight),
                (metrics.queued, generation.gauge_queued),
                (metrics.backend_up, generation.gauge_backend_up),
                (metrics.info, generation.gauge_generation),
            )
            await app.startup()
            for gauge, source in sources:
                gauge.sources.append(source)
            job_target = self.jobs.attach(number, job_inference, config, lambda: generation.draining)
            self.heartbeat.add_load(generation.status)
            try:
                await pool.run(tg)
                _log_inventory(generation)
                yield generation
            finally:
                with anyio.CancelScope(shield=True):
                    await self.jobs.detach(job_target)
                for gauge, source in sources:
                    gauge.sources.remove(source)
                self.heartbeat.remove_load(generation.status)
                tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    await app.shutdown()

    def affinity_table(self, settings: AffinitySettings) -> AffinityTable:
        """The process's affinity pins, shared by every generation so conversations stay put across reloads.
        A reload that changes ``max_entries`` or ``ttl_seconds`` starts an empty table with the new bounds
        (a generation still draining keeps the old one); the pins are lost then, not the conversations:
        their next turns are misses and pin again."""
        limits = (settings.max_entries, settings.ttl_seconds)
        if self._affinity is None or self._affinity_limits != limits:
            self._affinity = AffinityTable(max_entries=settings.max_entries, ttl_seconds=settings.ttl_seconds)
            self._affinity_limits = limits
        return self._affinity


def _startup_error(error: Exception) -> StartupError:
    """One StartupError for whatever failed while a generation was built. A task group's exception group
    is unwrapped (its first StartupError, else its first error); a gatewayd error keeps its message."""
    leaves = list(_leaves(error))
    first = next((leaf for leaf in leaves if isinstance(leaf, StartupError)), leaves[0] if leaves else error)
    if isinstance(first, StartupError):
        return first
    log.debug("building a generation failed", exc_info=error)
    if isinstance(first, GatewaydError):
        return StartupError(first.message)
    return StartupError(
        f"building the gateway failed ({type(first).__name__}: {first}): validate the config with "
        "`gatewayd check`; the traceback is logged with logging.level: debug"
    )


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


def _log_inventory(generation: GatewayGeneration) -> None:
    rows = generation.model_rows()
    backends = len(generation.pool.runtimes)
    if not backends:
        log.warning(
            "no model servers found: configure backends (gatewayd init) or start one on a usual port "
            "(Ollama 11434, llama-server 8080, LM Studio 1234, vLLM 8000); discovery keeps looking"
        )
        return
    names = ", ".join(row["name"] for row in rows) or "none yet"
    log.info("generation %d: %d backend(s), models: %s", generation.number, backends, names)
