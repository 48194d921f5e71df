"""The force-exit watchdog: the last resort when a stop does not finish in time.

It is a *thread*, not a task: the case it exists for is an event loop that is wedged (a blocking call, a
request that ignores cancellation), where no task would ever run again. Started when a stop begins; if the
process is still alive ``timeout_seconds`` later, it runs ``on_fire`` (write a diagnostic bundle; any error
there is swallowed) and ends the process with ``os._exit(EXIT_FAILURE)``, skipping every cleanup handler.
Keep the timeout below the service manager's stop budget, so that we, not SIGKILL, decide what is recorded.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from gatewayd.errors import EXIT_FAILURE

log = logging.getLogger("gatewayd.supervisor")


class ForceExitWatchdog:
    """One-shot: ``start()`` once, ``cancel()`` when the stop completed normally."""

    def __init__(
        self, timeout_seconds: float, on_fire: Callable[[], None], *, exit: Callable[[int], object] = os._exit
    ) -> None:
        self.timeout_seconds = timeout_seconds
        self._on_fire = on_fire
        self._exit = exit
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="gatewayd-force-exit", daemon=True)

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        self._cancelled.set()

    def _watch(self) -> None:
        if self._cancelled.wait(self.timeout_seconds):
            return
        try:
            log.critical("stop did not finish within %gs: forcing exit", self.timeout_seconds)
            self._on_fire()
        except BaseException:  # nothing may stop the exit
            pass
        finally:
            for handler in logging.getLogger().handlers:
                try:
                    handler.flush()
                except Exception:
                    pass
            self._exit(EXIT_FAILURE)
