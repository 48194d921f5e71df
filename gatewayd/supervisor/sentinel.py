"""Reload requests from the CLI, and reload outcomes for the CLI, as files in the state directory.

    reload-requests/<port>/<id>.json   pending requests: written by the CLI before it sends SIGUSR1,
                                       claimed (read and deleted) by the daemon when it handles the signal
    reload-<port>.json                 the latest outcome
    reload-<port>.jsonl                outcome history, one JSON object a line, newest last, at most 200 lines

A signal carries no payload; the request file tells the daemon who asked and how (respawn or not; whether a
config that lowers protection may be applied), and its id lets the CLI find the outcome of *its* request in
the history. The outcome names what the reload changed and, when one was written, the diagnostic bundle
(written before the outcome is recorded, so a reader of the outcome finds the bundle). A SIGUSR1 with no
pending request (from ``kill`` or systemd) is a reload with reason "signal" or "systemd" and no request ids.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from gatewayd.config.compare import ConfigChanges
from gatewayd.errors import ReloadError
from gatewayd.supervisor.statedir import (
    ensure_private_dir,
    exclusive_lock,
    read_json,
    write_atomic,
    write_json_atomic,
)

logger = logging.getLogger(__name__)

#: outcome history lines kept in reload-<port>.jsonl
HISTORY_LIMIT = 200
#: how often ``wait_for_outcome`` looks at the history
OUTCOME_POLL_INTERVAL_SECONDS = 0.05

#: the ``gatewayd restart`` flag that sets ``ReloadRequest.allow_weaker``
ALLOW_WEAKER_FLAG = "--allow-weaker"

RELOAD_MODES = frozenset({"in-process", "respawn"})
RELOAD_REASONS = frozenset({"signal", "cli", "systemd", "recovery"})
RELOAD_RESULTS = frozenset({"ok", "rejected", "error", "fallback"})


@dataclass(frozen=True)
class ReloadRequest:
    """One ``gatewayd reload`` invocation, waiting for the daemon to take it."""

    id: str
    #: the caller asked for a fresh-PID respawn rather than the configured mode
    respawn: bool
    requested_at: float
    requested_by_pid: int
    #: the caller allows a config that lowers protection (``gatewayd restart --allow-weaker``)
    allow_weaker: bool = False


@dataclass(frozen=True)
class ReloadOutcome:
    """What one reload did. Several requests taken together share one outcome."""

    request_ids: tuple[str, ...]
    kind: str  #: "reload"
    mode: str  #: "in-process" | "respawn"
    reason: str  #: "signal" | "cli" | "systemd" | "recovery" (the serving generation failed)
    #: "ok": the new config serves; "rejected": the new config is invalid, the old generation keeps
    #: serving; "error": the new generation failed to start, the old one keeps serving; "fallback": a respawn
    #: failed and the reload was done in process instead
    outcome: str
    message: str
    errors: tuple[str, ...]
    old_pid: int
    new_pid: int
    generation: int
    started_at: float
    duration_seconds: float
    #: what the new config changes against the one that served (None: the config was not read)
    changes: ConfigChanges | None = None
    #: the diagnostic bundle this reload wrote (a failure), already on disk when the outcome is recorded
    bundle: str | None = None

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("mode", self.mode, RELOAD_MODES),
            ("reason", self.reason, RELOAD_REASONS),
            ("outcome", self.outcome, RELOAD_RESULTS),
        ):
            if value not in allowed:
                raise ValueError(f"ReloadOutcome.{name} must be one of {sorted(allowed)}, not {value!r}")

    def to_json(self) -> dict[str, object]:
        value = asdict(self)
        value["request_ids"] = list(self.request_ids)
        value["errors"] = list(self.errors)
        value["changes"] = None if self.changes is None else self.changes.to_json()
        return value

    @classmethod
    def from_json(cls, value: object) -> ReloadOutcome | None:
        """The outcome stored as ``value``, or None if it is malformed (e.g. from an incompatible version)."""
        if not isinstance(value, dict):
            return None
        try:
            # fields with a default may be missing (an outcome recorded by an older version)
            raw = {field.name: value[field.name] for field in fields(cls) if field.name in value or
                   field.default is MISSING}  # fmt: skip
            raw["request_ids"] = tuple(str(item) for item in raw["request_ids"])
            raw["errors"] = tuple(str(item) for item in raw["errors"])
            if raw.get("changes") is not None:
                raw["changes"] = ConfigChanges.from_json(raw["changes"])
            if raw.get("bundle") is not None:
                raw["bundle"] = str(raw["bundle"])
            return cls(**raw)
        except (KeyError, TypeError, ValueError):
            return None


def requests_dir(state_dir: Path, port: int) -> Path:
    return state_dir / "reload-requests" / str(port)


def latest_outcome_path(state_dir: Path, port: int) -> Path:
    return state_dir / f"reload-{port}.json"


def history_path(state_dir: Path, port: int) -> Path:
    return state_dir / f"reload-{port}.jsonl"


def submit_reload_request(
    state_dir: Path, port: int, *, respawn: bool, allow_weaker: bool = False
) -> ReloadRequest:
    """Write a pending request atomically (CLI side; call it *before* sending SIGUSR1). Creates the
    directories (mode 0700) if missing. Raises OSError if the state directory is not writable."""
    request = ReloadRequest(
        id=uuid.uuid4().hex,
        respawn=respawn,
        requested_at=time.time(),
        requested_by_pid=os.getpid(),
        allow_weaker=allow_weaker,
    )
    directory = ensure_private_dir(requests_dir(state_dir, port))
    write_json_atomic(directory / f"{request.id}.json", asdict(request))
    return request


def cancel_reload_request(state_dir: Path, port: int, request_id: str) -> bool:
    """Withdraw a request the daemon has not taken (CLI side, e.g. when sending the signal failed).
    True if it was still pending."""
    try:
        (requests_dir(state_dir, port) / f"{request_id}.json").unlink()
    except FileNotFoundError:
        return False
    return True


def take_reload_requests(state_dir: Path, port: int) -> list[ReloadRequest]:
    """Claim every pending request (daemon side), oldest first. Each is deleted as it is claimed, so two
    takers never both get one. Malformed files are deleted and logged. Never raises for a missing
    directory."""
    directory = requests_dir(state_dir, port)
    requests: list[ReloadRequest] = []
    for path in directory.glob("*.json"):
        try:
            with path.open("rb") as file:
                path.unlink()  # the claim: whoever unlinks first owns the request
                content = file.read()
        except FileNotFoundError:
            continue
        request = _parse_request(content)
        if request is None:
            logger.warning("ignoring malformed reload request %s", path)
            continue
        requests.append(request)
    return sorted(requests, key=lambda request: request.requested_at)


def _parse_request(content: bytes) -> ReloadRequest | None:
    try:
        value = json.loads(content)
        request = ReloadRequest(**value)
    except (ValueError, TypeError):
        return None
    well_typed = (
        isinstance(request.id, str)
        and isinstance(request.respawn, bool)
        and isinstance(request.requested_at, int | float)
        and isinstance(request.requested_by_pid, int)
        and isinstance(request.allow_weaker, bool)
    )
    return request if well_typed else None


def record_outcome(state_dir: Path, port: int, outcome: ReloadOutcome) -> None:
    """Make ``outcome`` the latest and append it to the history, keeping the newest ``HISTORY_LIMIT`` lines.

    Both files are replaced atomically; concurrent writers (old and new process during a respawn) are
    serialised by a lock file. Blocks briefly on file IO: call it from a worker thread in async code.
    Raises OSError if the state directory is not writable."""
    ensure_private_dir(state_dir)
    line = json.dumps(outcome.to_json(), sort_keys=True)
    history = history_path(state_dir, port)
    with exclusive_lock(state_dir / f"reload-{port}.lock"):
        write_json_atomic(latest_outcome_path(state_dir, port), outcome.to_json())
        try:
            lines = history.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        lines = [*lines[-(HISTORY_LIMIT - 1) :], line]
        write_atomic(history, ("\n".join(lines) + "\n").encode())


def last_outcome(state_dir: Path, port: int) -> ReloadOutcome | None:
    """The latest outcome recorded for ``port``, or None if there is none (or it is unreadable)."""
    return ReloadOutcome.from_json(read_json(latest_outcome_path(state_dir, port)))


def outcome_history(state_dir: Path, port: int) -> list[ReloadOutcome]:
    """Every readable outcome in the history, oldest first."""
    try:
        lines = history_path(state_dir, port).read_text().splitlines()
    except FileNotFoundError:
        return []
    outcomes: list[ReloadOutcome] = []
    for line in lines:
        try:
            outcome = ReloadOutcome.from_json(json.loads(line))
        except ValueError:
            outcome = None
        if outcome is not None:
            outcomes.append(outcome)
    return outcomes


def find_outcome(state_dir: Path, port: int, request_id: str) -> ReloadOutcome | None:
    """The outcome that answered ``request_id``, or None if none has yet."""
    for outcome in reversed(outcome_history(state_dir, port)):
        if request_id in outcome.request_ids:
            return outcome
    return None


def wait_for_outcome(
    state_dir: Path,
    port: int,
    request_id: str,
    *,
    timeout_seconds: float,
    pid_alive: Callable[[], bool],
) -> ReloadOutcome:
    """Poll the history until an outcome names ``request_id`` (CLI side) and return it, whatever it says.

    ``pid_alive`` must answer for the *instance*, not for one PID: during a respawn the old process exits
    once the child is ready (e.g. check the holder of the current lock record). Raises ``ReloadError`` if the
    instance is gone before an outcome appears, or after ``timeout_seconds``. Blocks the calling thread.
    """
    deadline = time.monotonic() + timeout_seconds
    while True:
        if (outcome := find_outcome(state_dir, port, request_id)) is not None:
            return outcome
        if not pid_alive():
            # it may have recorded the outcome just before exiting
            if (outcome := find_outcome(state_dir, port, request_id)) is not None:
                return outcome
            raise ReloadError(
                f"gatewayd on port {port} stopped before it reported the outcome of the reload: "
                f"check its logs and `gatewayd status --port {port}`"
            )
        if time.monotonic() >= deadline:
            raise ReloadError(
                f"gatewayd on port {port} did not report the outcome of the reload within "
                f"{timeout_seconds:g} s; it may still be reloading: check `gatewayd status --port {port}` "
                f"and its logs"
            )
        time.sleep(OUTCOME_POLL_INTERVAL_SECONDS)
