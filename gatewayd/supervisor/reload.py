"""One reload, from "reload wanted" to a recorded outcome.

    take the pending request files (ids, respawn?, allow weaker?)  ->  RELOADING=1
    load and validate the config                    invalid: log each error, outcome "rejected", keep serving
    compare it with the serving one                 lowers protection and not allowed: outcome "rejected"
    respawn (asked for, or restart.mode: respawn)   not under launchd; child ready: MAINPID=, outcome "ok",
                                                    then the run loop hands off and exits
                                                    child unhealthy: killed, bundle, go on in process
    in process: start the new generation            fails: bundle, outcome "error", the old one keeps serving
                publish it, retire the old one      outcome "ok" (or "fallback" after a failed respawn)
    record the outcome; READY=1

The outcome carries the change summary (config.compare) and names the diagnostic bundle of a failure, which
is written before the outcome is recorded. Every path records exactly one outcome and returns; nothing
escapes ``Reloader.reload`` but cancellation (a stop began), and even then the outcome ("error":
interrupted) is recorded first, shielded. So a failed, rejected or interrupted reload can never leave the
run loop unable to reload again.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from gatewayd.config import AuthMode, Config, RestartMode
from gatewayd.config.compare import ConfigChanges, changes, weakenings
from gatewayd.config.loader import is_loopback_host
from gatewayd.errors import ConfigError, ReloadError
from gatewayd.supervisor.respawn import spawn_ready_child
from gatewayd.supervisor.sentinel import (
    ALLOW_WEAKER_FLAG,
    ReloadOutcome,
    record_outcome,
    take_reload_requests,
)
from gatewayd.supervisor.service import ServiceManager

if TYPE_CHECKING:
    from gatewayd.supervisor.runloop import RunLoop

log = logging.getLogger("gatewayd.supervisor")

LAUNCHD_NOTE = "respawn skipped under launchd (it kills a fresh-PID child with the job); restarted in process"


@dataclass(frozen=True)
class Recovery:
    """The serving generation failed: restart it from the config it served, and report why."""

    config: Config
    error: BaseException


@dataclass(frozen=True)
class _Attempt:
    """What is known about a reload when it begins."""

    request_ids: tuple[str, ...]
    reason: str
    mode: str
    started_at: float
    started_monotonic: float
    old_pid: int
    old_generation: int

    def outcome(
        self,
        outcome: str,
        message: str,
        *,
        mode: str | None = None,
        errors: tuple[str, ...] = (),
        new_pid: int | None = None,
        generation: int | None = None,
        config_changes: ConfigChanges | None = None,
        bundle: Path | None = None,
    ) -> ReloadOutcome:
        return ReloadOutcome(
            request_ids=self.request_ids,
            kind="reload",
            mode=mode or self.mode,
            reason=self.reason,
            outcome=outcome,
            message=message,
            errors=errors,
            old_pid=self.old_pid,
            new_pid=self.old_pid if new_pid is None else new_pid,
            generation=self.old_generation if generation is None else generation,
            started_at=self.started_at,
            duration_seconds=round(time.monotonic() - self.started_monotonic, 6),
            changes=config_changes,
            bundle=None if bundle is None else str(bundle),
        )


class Reloader:
    """Performs reloads for one run loop, one at a time (the run loop's lifecycle task calls it)."""

    def __init__(self, loop: RunLoop) -> None:
        self.loop = loop

    async def reload(self, recovery: Recovery | None = None) -> None:
        """One reload. Returns when its outcome is recorded (and, after a respawn, the handoff has begun).
        ``recovery``: the serving generation failed; write its bundle, then start a new one, in process,
        from the config it served instead of reading the file, which may have changed since. Raises only
        cancellation."""
        loop = self.loop
        state_dir, port = loop.options.state_dir, loop.instance.port
        try:
            requests = await anyio.to_thread.run_sync(take_reload_requests, state_dir, port)
        except OSError as error:
            log.warning("cannot read pending reload requests: %s", error)
            requests = []
        respawn_requested = any(request.respawn for request in requests)
        allow_weaker = any(request.allow_weaker for request in requests)
        if recovery is not None:
            reason = "recovery"
        elif requests:
            reason = "cli"
        else:
            reason = "systemd" if loop.service_manager is ServiceManager.SYSTEMD else "signal"
        asked_mode = RestartMode.RESPAWN if respawn_requested else loop.config.restart.mode
        if recovery is not None:
            asked_mode, respawn_requested = RestartMode.IN_PROCESS, False
        attempt = _Attempt(
            request_ids=tuple(request.id for request in requests),
            reason=reason,
            mode=asked_mode.value,
            started_at=time.time(),
            started_monotonic=time.monotonic(),
            old_pid=os.getpid(),
            old_generation=loop.instance.generation,
        )
        log.info(
            "reload (%s, %s) begins; serving generation %d", reason, asked_mode.value, attempt.old_generation
        )
        loop.notifier.reloading()
        outcome: ReloadOutcome | None = None
        handoff = False
        cancelled = False
        try:
            outcome, handoff = await self._reload(attempt, respawn_requested, allow_weaker, recovery)
        except anyio.get_cancelled_exc_class():
            cancelled = True
            outcome = attempt.outcome(
                "error", "interrupted: gatewayd began stopping before the reload finished"
            )
            raise
        except Exception as error:
            log.exception("reload failed")
            bundle = await loop.write_bundle("reload-failed", error)
            outcome = attempt.outcome("error", f"reload failed: {error}", bundle=bundle)
        finally:
            with anyio.CancelScope(shield=True):
                await self._record(outcome)
            if handoff:
                loop.begin_stop(handoff=True)
            elif not cancelled:
                loop.notifier.ready(loop.status_line())

    async def _record(self, outcome: ReloadOutcome | None) -> None:
        if outcome is None:
            return
        self.loop.instance.last_reload = outcome
        level = logging.INFO if outcome.outcome == "ok" else logging.WARNING
        log.log(level, "reload %s: %s (%.3fs)", outcome.outcome, outcome.message, outcome.duration_seconds)
        try:
            await anyio.to_thread.run_sync(
                record_outcome, self.loop.options.state_dir, self.loop.instance.port, outcome
            )
        except OSError as error:
            log.error("cannot record the reload outcome: %s", error)

    async def _reload(
        self, attempt: _Attempt, respawn_requested: bool, allow_weaker: bool, recovery: Recovery | None
    ) -> tuple[ReloadOutcome, bool]:
        loop = self.loop
        bundle: Path | None = None
        if recovery is not None:
            bundle = await loop.write_bundle("generation-failed", recovery.error)
        try:
            if recovery is not None:
                config = recovery.config
            else:
                config = await anyio.to_thread.run_sync(loop.factory.load_config, loop.options.config_path)
        except ConfigError as error:
            for issue in error.issues:
                log.error("config: %s", issue)
            return (
                attempt.outcome(
                    "rejected",
                    f"invalid config ({len(error.issues)} problem(s)); still serving generation "
                    f"{attempt.old_generation}",
                    errors=tuple(str(issue) for issue in error.issues),
                ),
                False,
            )
        self._warn_if_listen_changed(config)
        bound = loop.instance.listener.host
        if not is_loopback_host(bound) and config.auth.mode is not AuthMode.KEYS:
            message = (
                f"the new config turns auth off while gatewayd listens on {bound}, which is not loopback; "
                "a reload keeps the socket: keep auth.mode: keys, or stop gatewayd and start it on 127.0.0.1"
            )
            log.error("config: %s", message)
            return attempt.outcome("rejected", message, errors=(message,)), False
        summary = changes(loop.config, config)
        notes: list[str] = []
        refused = self._check_protection(attempt, config, summary, allow_weaker, notes)
        if refused is not None:
            return refused, False
        respawn = recovery is None and (respawn_requested or config.restart.mode is RestartMode.RESPAWN)
        if respawn and loop.service_manager is ServiceManager.LAUNCHD:
            respawn = False
            notes.append(LAUNCHD_NOTE)
        fallback: ReloadError | None = None
        if respawn:
            try:
                return await self._respawn(attempt, config, summary, notes), True
            except ReloadError as error:
                fallback = error
                log.warning("%s; restarting in process instead", error)
                notes.append(f"{error}; restarted in process")
        number = loop.instance.generation + 1
        try:
            runner = await loop.start_generation(config, number)
        except Exception as error:
            log.error("generation %d failed to start: %s", number, error)
            if fallback is not None:
                await loop.write_bundle("respawn-failed", fallback)
            bundle = await loop.write_bundle("reload-failed", error)
            serving = attempt.old_generation
            message = f"generation {number} failed to start: {error}; still serving generation {serving}"
            return attempt.outcome(
                "error",
                "; ".join([*notes, message]),
                mode="in-process",
                config_changes=summary,
                bundle=bundle,
            ), False
        loop.publish(runner)
        await loop.write_record()
        if fallback is not None:  # written once the new generation serves: it does not delay it
            bundle = await loop.write_bundle("respawn-failed", fallback)
        message = "; ".join([*notes, f"generation {number} serving"])
        kind = "fallback" if fallback is not None else "ok"
        return attempt.outcome(
            kind,
            message,
            mode="respawn" if fallback is not None else "in-process",
            generation=number,
            config_changes=summary,
            bundle=bundle,
        ), False

    def _check_protection(
        self,
        attempt: _Attempt,
        config: Config,
        summary: ConfigChanges,
        allow_weaker: bool,
        notes: list[str],
    ) -> ReloadOutcome | None:
        """The "rejected" outcome if ``config`` lowers protection against the serving one and that was not
        allowed; None if it may go on (a lowering that was allowed is logged and added to ``notes``)."""
        weaker = weakenings(self.loop.config, config)
        if weaker and not allow_weaker:
            message = (
                f"the new config lowers protection; still serving generation {attempt.old_generation}. "
                f"To apply it on purpose: `gatewayd restart {ALLOW_WEAKER_FLAG}`, or stop and start gatewayd"
            )
            for reason in weaker:
                log.error("config: %s (refused: %s to apply it)", reason, ALLOW_WEAKER_FLAG)
            return attempt.outcome("rejected", message, errors=tuple(weaker), config_changes=summary)
        for reason in weaker:
            log.warning("config: protection lowered on purpose (%s): %s", ALLOW_WEAKER_FLAG, reason)
            notes.append(f"protection lowered on purpose: {reason}")
        return None

    async def _respawn(
        self, attempt: _Attempt, config: Config, summary: ConfigChanges, notes: list[str]
    ) -> ReloadOutcome:
        """Start a child that takes over; return the "ok" outcome once it is ready. Raises ReloadError."""
        loop = self.loop
        instance = loop.instance
        standby = loop.take_standby()
        child = await spawn_ready_child(
            loop.options.respawn_command,
            listen_fd=instance.listener.sock.fileno(),
            lock_fd=instance.lock.fileno(),
            environ=loop.options.environ,
            port=instance.port,
            generation=instance.generation,
            restarts=instance.restarts + 1,
            started_at=instance.started_at,
            service_manager=loop.service_manager.value,
            timeout_seconds=config.restart.respawn_ready_timeout_seconds,
            standby=standby,
        )
        loop.child = child
        if standby is None:
            how = "respawned"
        elif child.pid == standby.pid:
            how = "respawned via the warm standby"
        else:
            how = f"respawned cold (warm standby pid {standby.pid} unavailable)"
        if loop.service_manager is ServiceManager.SYSTEMD:
            loop.notifier.hand_over(child.pid)
        return attempt.outcome(
            "ok",
            "; ".join([*notes, f"{how}: pid {child.pid} serves generation {instance.generation + 1}"]),
            mode="respawn",
            new_pid=child.pid,
            generation=instance.generation + 1,
            config_changes=summary,
        )

    def _warn_if_listen_changed(self, config: Config) -> None:
        before, after = self.loop.startup_config.server, config.server
        if (before.host, before.port) != (after.host, after.port):
            log.warning(
                "server.host/port changed (%s:%d -> %s:%d): a reload keeps the listening socket; "
                "stop and start gatewayd to listen elsewhere",
                before.host,
                before.port,
                after.host,
                after.port,
            )
