"""Adoption records: what a gatewayd process leaves on disk about the backends it started.

A managed backend outlives the gatewayd process that spawned it (a fresh-PID respawn, a crash). The next
process finds it again through its record, ``<backend_id>.json`` in the records directory (the caller passes
``state_dir / "backends"``), and either adopts it or, when it is no longer wanted, ends its process group.

A record is trusted only as far as ``is_alive`` confirms it: the PID must exist, not be a zombie, and have
the recorded create_time, so that a PID the kernel gave to an unrelated process is never signalled.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

import anyio
import psutil

from gatewayd.store.files import write_json_atomic

log = logging.getLogger("gatewayd.backends")

#: psutil derives create_time from clock ticks (10 ms); two readings of one process agree far closer than this
CREATE_TIME_TOLERANCE_SECONDS = 0.01
#: how often ``terminate_group`` looks whether the group leader is gone
TERMINATE_POLL_INTERVAL_SECONDS = 0.05
#: after SIGKILL, how long ``terminate_group`` waits for the leader to disappear before it gives up
KILL_WAIT_SECONDS = 5.0
RECORDS_DIR_MODE = 0o700
RECORD_FILE_MODE = 0o600

#: backend ids the config accepts; also what keeps a record's file name inside its directory
_BACKEND_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True, slots=True)
class Record:
    """One running managed backend, as written right after it was spawned."""

    backend_id: str
    pid: int
    #: the child's process group (its own session, so normally equal to ``pid``); signals go to the group
    pgid: int
    #: psutil's create_time of ``pid``: tells our child apart from a later process that reuses its PID
    create_time: float
    port: int
    #: the caller's digest of the launch definition; a process is adopted only by an identical definition
    fingerprint: str
    log_path: Path
    #: time.time() when it was spawned
    started_at: float

    def to_json(self) -> dict[str, object]:
        return {
            "backend_id": self.backend_id,
            "pid": self.pid,
            "pgid": self.pgid,
            "create_time": self.create_time,
            "port": self.port,
            "fingerprint": self.fingerprint,
            "log_path": str(self.log_path),
            "started_at": self.started_at,
        }

    @classmethod
    def from_json(cls, value: object) -> Record:
        """The record stored as ``value``. Raises ValueError naming the first problem.
        Extra keys are ignored."""
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        ints = ("pid", "pgid", "port")
        numbers = ("create_time", "started_at")
        strings = ("backend_id", "fingerprint", "log_path")
        for key in (*ints, *numbers, *strings):
            if key not in value:
                raise ValueError(f"missing {key!r}")
        for key in ints:
            if not _is_int(value[key]) or value[key] <= 0:
                raise ValueError(f"{key!r} is not a positive integer")
        for key in numbers:
            if not _is_number(value[key]):
                raise ValueError(f"{key!r} is not a number")
        for key in strings:
            if not isinstance(value[key], str):
                raise ValueError(f"{key!r} is not a string")
        return cls(
            backend_id=value["backend_id"],
            pid=value["pid"],
            pgid=value["pgid"],
            create_time=float(value["create_time"]),
            port=value["port"],
            fingerprint=value["fingerprint"],
            log_path=Path(value["log_path"]),
            started_at=float(value["started_at"]),
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def record_path(directory: Path, backend_id: str) -> Path:
    """Where the record of ``backend_id`` lives. Raises ValueError for an id that is not a plain file name."""
    if not _BACKEND_ID.fullmatch(backend_id):
        raise ValueError(f"backend id {backend_id!r} cannot name a record file")
    return directory / f"{backend_id}.json"


def write_record(directory: Path, record: Record) -> Path:
    """Replace the record of ``record.backend_id`` atomically (temporary file, fsync, rename): a reader sees
    the old record or the new one, never a torn write. Creates ``directory`` (mode 0700) if needed. Returns
    the file's path; raises OSError if it cannot be written (the old record, if any, is left untouched)."""
    path = record_path(directory, record.backend_id)
    directory.mkdir(mode=RECORDS_DIR_MODE, parents=True, exist_ok=True)
    write_json_atomic(path, record.to_json(), mode=RECORD_FILE_MODE)
    return path


def read_records(directory: Path) -> dict[str, Record]:
    """Every readable record in ``directory``, by backend id; empty if the directory does not exist.

    A file that cannot be read or parsed, or whose content names another backend than its file name, is
    skipped with a warning on the ``gatewayd.backends`` logger: one bad file must not hide the others. Does
    not check liveness (see ``is_alive``)."""
    records: dict[str, Record] = {}
    if not directory.is_dir():
        return records
    for path in sorted(directory.glob("*.json")):
        try:
            record = Record.from_json(json.loads(path.read_bytes()))
            if record.backend_id != path.stem:
                raise ValueError(f"it names backend {record.backend_id!r}")
        except (OSError, ValueError) as error:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            log.warning("skipping unreadable backend record %s: %s", path, error)
            continue
        records[record.backend_id] = record
    return records


def remove_record(directory: Path, backend_id: str, *, pid: int | None = None) -> None:
    """Delete the record of ``backend_id``; a missing record is not an error. With ``pid``, only if the
    record is still that process's: during a reload a replaced server is stopped while its successor (same
    backend id) has already written its own record."""
    path = record_path(directory, backend_id)
    if pid is not None:
        try:
            if json.loads(path.read_text()).get("pid") != pid:
                return
        except (OSError, ValueError, AttributeError):
            return
    path.unlink(missing_ok=True)


def is_alive(record: Record) -> bool:
    """True if the record's PID is running (not a zombie) and is the very process the record was written for
    (same create_time, so a recycled PID is never taken for our child).

    A process we may not inspect (AccessDenied) counts as dead: nothing may be signalled on its behalf."""
    try:
        process = psutil.Process(record.pid)
        if abs(process.create_time() - record.create_time) > CREATE_TIME_TOLERANCE_SECONDS:
            return False
        return process.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):  # NoSuchProcess includes ZombieProcess
        return False


def is_ours(record: Record) -> bool:
    """``is_alive``, and the process still leads the recorded process group: signalling ``record.pgid`` then
    reaches our child's group and nobody else."""
    if not is_alive(record):
        return False
    try:
        return os.getpgid(record.pid) == record.pgid
    except ProcessLookupError:
        return False


def signal_name(signum: int) -> str:
    """ "SIGTERM" for 15; the number itself for a signal Python has no name for."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def signal_group(pgid: int, signum: int) -> bool:
    """``os.killpg`` that treats a group that is already gone as done. Returns False when it was gone."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    return True


async def wait_gone(
    record: Record, timeout_seconds: float, *, poll_interval_seconds: float = TERMINATE_POLL_INTERVAL_SECONDS
) -> bool:
    """Wait (polling, never blocking the event loop) until ``is_alive(record)`` is False, at most
    ``timeout_seconds``. Returns True if the process is gone (a zombie counts as gone)."""
    with anyio.move_on_after(timeout_seconds):
        while is_alive(record):
            await anyio.sleep(poll_interval_seconds)
        return True
    return False


async def terminate_group(
    record: Record,
    stop_signal: int,
    timeout_seconds: float,
    *,
    poll_interval_seconds: float = TERMINATE_POLL_INTERVAL_SECONDS,
) -> bool:
    """End the process group of the recorded backend: ``stop_signal`` to the group, up to ``timeout_seconds``
    for the leader to exit, then SIGKILL to the group (the leader if it ignored ``stop_signal``, and any
    member that outlived it). Returns False, signalling nothing, when ``is_ours`` says the record no longer
    names our child; True otherwise.

    It does not reap: a caller whose child it is must reap it afterwards (a zombie leader keeps its PID and
    group id reserved, which is what makes the final SIGKILL safe). For an adopted leader that its own parent
    reaped, the SIGKILL reaches whatever still holds the group id; that id cannot be handed to a new group
    while a member lives, so only a PID wrap-around within ``poll_interval_seconds`` could misdirect it.

    Polls with anyio.sleep, so it never blocks the event loop. On cancellation it stops waiting where it is
    (callers that must finish the job shield it)."""
    if not is_ours(record):
        return False
    signal_group(record.pgid, stop_signal)
    if not await wait_gone(record, timeout_seconds, poll_interval_seconds=poll_interval_seconds):
        log.warning(
            "backend %s (pid %d) did not exit within %g s of %s; killing its process group",
            record.backend_id, record.pid, timeout_seconds, signal_name(stop_signal),
        )  # fmt: skip
    signal_group(record.pgid, signal.SIGKILL)
    await wait_gone(record, KILL_WAIT_SECONDS, poll_interval_seconds=poll_interval_seconds)
    return True
