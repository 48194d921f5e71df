"""The running instance as the run loop tracks it: what ``InstanceInfo.snapshot()`` reports to generations
(their /status page) and what the lock record tells the CLI.

Counters: ``generation`` numbers app generations over the instance's whole life, across respawns (1 is the
first); ``restarts`` counts fresh-PID respawns. ``started_at`` is when the instance first started and also
survives respawns, so uptime is the instance's, not the current process's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

from gatewayd import __version__
from gatewayd.supervisor.listeners import Listener
from gatewayd.supervisor.portlock import LockRecord, PortLock
from gatewayd.supervisor.sentinel import ReloadOutcome, last_outcome
from gatewayd.supervisor.standby import Standby


class InstanceState:
    """Mutable, owned by the run loop (event-loop thread only). Implements ``InstanceInfo``."""

    def __init__(
        self,
        *,
        lock: PortLock,
        listener: Listener,
        state_dir: Path,
        config_path: str | None,
        started_at: float,
        generation: int,
        restarts: int,
    ) -> None:
        self.lock = lock
        self.listener = listener
        self.state_dir = state_dir
        self.config_path = config_path
        self.started_at = started_at
        self.generation = generation
        self.restarts = restarts
        self.pid = os.getpid()
        #: the latest reload outcome of this instance, kept in memory so /status reads no file
        self.last_reload: ReloadOutcome | None = None
        #: the warm standby waiting for the next respawn (restart.warm_standby), kept by the run loop
        self.standby: Standby | None = None

    @property
    def port(self) -> int:
        """The port the lock (and the state files) are keyed by."""
        return self.lock.port

    def snapshot(self) -> Mapping[str, object]:
        """pid, started_at, uptime_seconds, generation, restarts, last_reload, listen, config_path, version,
        standby.

        ``last_reload`` is the latest reload outcome of this instance (None if it never reloaded);
        ``standby`` the warm standby's pid, state and resident memory (None without one)."""
        outcome = self.last_reload
        last_reload = outcome.to_json() if outcome is not None else None
        return {
            "pid": self.pid,
            "started_at": self.started_at,
            "uptime_seconds": max(0.0, time.time() - self.started_at),
            "generation": self.generation,
            "restarts": self.restarts,
            "last_reload": last_reload,
            "listen": self.listener.address,
            "config_path": self.config_path,
            "version": __version__,
            "standby": self.standby.snapshot() if self.standby is not None else None,
        }

    def refresh_last_reload(self) -> None:
        """Read the latest recorded reload outcome (one small file; blocking: run it off the event loop).
        Raises OSError if the state directory cannot be read."""
        outcome = last_outcome(self.state_dir, self.port)
        if outcome is None or outcome.started_at < self.started_at:
            return
        if self.last_reload is None or outcome.started_at >= self.last_reload.started_at:
            self.last_reload = outcome

    def write_record(self) -> None:
        """Rewrite the lock record (after every generation change). Raises OSError if it cannot."""
        self.lock.write_record(
            LockRecord.for_this_process(
                port=self.port,
                host=self.listener.host,
                config_path=self.config_path,
                started_at=self.started_at,
                generation=self.generation,
                restarts=self.restarts,
            )
        )
