"""One generation's life in the run loop: start, serve until retired, drain, close.

Each generation runs in its own task (``GenerationRunner.run``) inside the run loop's task group, so that
several can be alive at once during a reload: the new one serving, old ones draining. The runner reports
started only once the factory's context manager has been entered (the generation can serve); publishing
it in the dispatcher is the caller's move. ``retire()`` starts the drain:

    mark_draining()  ->  wait until no request is pinned to it, at most the bound given to retire()
                     ->  end_streams()  ->  wait at most END_STREAMS_GRACE_SECONDS
                     ->  close (exit the factory's context)

Failures after start never escape the runner (they would cancel the whole run loop): they are logged and
reported through ``on_failure``.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable

import anyio
from anyio.abc import TaskStatus

from gatewayd.config import Config
from gatewayd.supervisor.contract import Generation, GenerationFactory, InstanceInfo
from gatewayd.supervisor.dispatcher import GenerationSlot

log = logging.getLogger("gatewayd.supervisor")

#: after end_streams(), streams get this long to send their final event before the generation is closed
END_STREAMS_GRACE_SECONDS = 1.0


class GenerationState(enum.Enum):
    STARTING = "starting"  # the factory is building and starting it
    SERVING = "serving"  # started; published (or about to be) and taking requests
    DRAINING = "draining"  # retired: no new requests; waiting for the pinned ones
    CLOSED = "closed"  # its context has exited (or it never started)


class GenerationRunner:
    """Runs one generation. ``run`` is meant for ``TaskGroup.start``; it returns once the generation is
    closed. Not reusable."""

    def __init__(
        self,
        factory: GenerationFactory,
        config: Config,
        *,
        number: int,
        instance: InstanceInfo,
        on_failure: Callable[[GenerationRunner, BaseException], None],
    ) -> None:
        self.factory = factory
        self.config = config
        self.number = number
        self._instance = instance
        self._on_failure = on_failure
        self.state = GenerationState.STARTING
        self._slot: GenerationSlot | None = None
        self._retired = anyio.Event()
        self._closed = anyio.Event()
        self._drain_deadline = math.inf
        self._drain_wait: anyio.CancelScope | None = None

    @property
    def slot(self) -> GenerationSlot:
        """The dispatcher slot of the started generation. Raises RuntimeError before it has started."""
        if self._slot is None:
            raise RuntimeError(f"generation {self.number} has not started")
        return self._slot

    @property
    def generation(self) -> Generation:
        return self.slot.generation

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def run(self, *, task_status: TaskStatus[GenerationRunner] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start the generation, report ``started(self)``, serve until ``retire()``, drain and close.

        An exception while starting propagates to the ``TaskGroup.start`` caller (nothing is left running).
        After start nothing propagates: a failure is logged and passed to ``on_failure``. Cancelled before
        started: the factory's context is cancelled and nothing is left running. Cancelled after: the drain
        is skipped and the generation is closed at once.
        """
        started = False
        try:
            async with self.factory.generation(
                self.config, number=self.number, instance=self._instance
            ) as gen:
                self._slot = GenerationSlot(gen, number=self.number)
                self.state = GenerationState.SERVING
                started = True
                task_status.started(self)
                await self._retired.wait()
                await self._drain()
        except Exception as error:
            if not started:
                raise
            log.exception("generation %d failed", self.number)
            self._on_failure(self, error)
        finally:
            self.state = GenerationState.CLOSED
            self._retired.set()
            self._closed.set()
        log.info("generation %d closed", self.number)

    def retire(self, *, drain_timeout_seconds: float) -> None:
        """Stop serving (the caller has already swapped it out, or is stopping) and drain: its requests may
        finish within ``drain_timeout_seconds`` from now. Called again, the earlier deadline wins (a stop
        arriving while a reload's long drain runs shortens it)."""
        deadline = anyio.current_time() + drain_timeout_seconds
        if deadline < self._drain_deadline:
            self._drain_deadline = deadline
            if self._drain_wait is not None:
                self._drain_wait.cancel()  # the drain loop recomputes its wait from the new deadline
        self._retired.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def _drain(self) -> None:
        slot = self.slot
        self.state = GenerationState.DRAINING
        slot.generation.mark_draining()
        if slot.in_flight:
            log.info(
                "generation %d draining: %d request(s) in flight, up to %gs",
                self.number,
                slot.in_flight,
                self._drain_deadline - anyio.current_time(),
            )
        while slot.in_flight:
            remaining = self._drain_deadline - anyio.current_time()
            if remaining <= 0:
                break
            with anyio.CancelScope() as self._drain_wait:
                await slot.wait_idle(remaining)
        self._drain_wait = None
        if not slot.in_flight:
            return
        log.warning(
            "generation %d: %d request(s) still running at the drain deadline; ending open streams",
            self.number,
            slot.in_flight,
        )
        slot.generation.end_streams()
        if not await slot.wait_idle(END_STREAMS_GRACE_SECONDS):
            log.warning(
                "generation %d: closing with %d request(s) still running; they will be cut off",
                self.number,
                slot.in_flight,
            )
