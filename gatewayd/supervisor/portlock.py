"""One instance per port: an flock on ``port-<port>.lock`` plus a record of who holds it.

Files in the state directory, per port:

- ``port-<port>.lock``: empty; the lock is an ``flock`` on it. The kernel releases an flock when the last
  descriptor of its open file description closes, so a killed holder (even one left as a zombie) never blocks
  the next start. The file is never deleted: unlinking a lock file lets two processes lock two inodes.
- ``port-<port>.json``: the ``LockRecord`` of the holder, for ``gatewayd status``/``stop`` and for the message
  a second instance prints.

Handing the lock to a respawned child: ``fileno()`` gives a duplicate of the locked descriptor, the child
receives it through ``pass_fds`` and adopts it with ``PortLock.inherit``. Both processes then hold the *same*
lock (one open file description), so there is no moment when the port is unlocked. For the same reason this
module never calls ``flock(LOCK_UN)``: an unlock through any descriptor releases the lock for every process
sharing it, the child included. ``release()`` only closes this process's descriptor. (filelock is not used
here because its ``release()`` and its exit handler both unlock.)
"""

from __future__ import annotations

import errno
import fcntl
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import psutil

from gatewayd import __version__
from gatewayd.errors import AlreadyRunning, InstanceError
from gatewayd.supervisor.statedir import (
    STATE_FILE_MODE,
    ensure_private_dir,
    read_json,
    write_json_atomic,
)

logger = logging.getLogger(__name__)

#: how often ``acquire`` retries while another process holds the lock
LOCK_POLL_INTERVAL_SECONDS = 0.05
#: psutil derives create_time from clock ticks (10 ms); two readings of one process agree far closer than this
CREATE_TIME_TOLERANCE_SECONDS = 0.01

_CONTENTION_ERRNOS = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES})


@dataclass(frozen=True)
class LockRecord:
    """Who holds the port lock. Written by the holder after it acquires (and again on each reload)."""

    pid: int
    #: psutil's create_time of ``pid``: tells the holder apart from a later process that reuses its PID
    create_time: float
    port: int
    host: str
    config_path: str | None
    version: str
    #: time.time() when the instance started (kept across in-process reloads)
    started_at: float
    generation: int
    restarts: int

    @classmethod
    def for_this_process(
        cls,
        *,
        port: int,
        host: str,
        config_path: str | None,
        started_at: float,
        generation: int,
        restarts: int,
    ) -> LockRecord:
        """A record naming the calling process, with its create_time and gatewayd's version filled in."""
        return cls(
            pid=os.getpid(),
            create_time=psutil.Process().create_time(),
            port=port,
            host=host,
            config_path=config_path,
            version=__version__,
            started_at=started_at,
            generation=generation,
            restarts=restarts,
        )

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, value: object) -> LockRecord | None:
        """The record stored as ``value``, or None if it is malformed. Extra keys are ignored."""
        if not isinstance(value, dict):
            return None
        try:
            record = cls(**{field.name: value[field.name] for field in fields(cls)})
        except (KeyError, TypeError):
            return None
        well_typed = (
            _is_int(record.pid)
            and _is_number(record.create_time)
            and _is_int(record.port)
            and isinstance(record.host, str)
            and (record.config_path is None or isinstance(record.config_path, str))
            and isinstance(record.version, str)
            and _is_number(record.started_at)
            and _is_int(record.generation)
            and _is_int(record.restarts)
        )
        return record if well_typed else None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def lock_path(state_dir: Path, port: int) -> Path:
    return state_dir / f"port-{port}.lock"


def record_path(state_dir: Path, port: int) -> Path:
    return state_dir / f"port-{port}.json"


class PortLock:
    """The lock on one port's instance. Not thread-safe: one owner (the run loop) drives it.

    Lifecycle: ``acquire()`` (or ``inherit()``), ``write_record()`` as often as needed, ``release()``. The
    lock is also released, by the kernel, when the process dies.
    """

    def __init__(self, state_dir: Path, port: int) -> None:
        self.state_dir = state_dir
        self.port = port
        self.lock_path = lock_path(state_dir, port)
        self.record_path = record_path(state_dir, port)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, timeout_seconds: float = 1.0) -> None:
        """Take the lock, retrying for up to ``timeout_seconds`` while another process holds it.

        A record left by a holder that died without releasing (killed, crashed) means a stale lock was taken
        over: that is logged as a warning naming the dead holder. Creates the state directory (mode 0700) if
        missing. Raises ``AlreadyRunning`` naming the holder when the lock stays held: the live instance
        from the record, or, when the record names a process that is gone, whichever process still has the
        lock file open (an orphaned child that inherited it). Raises OSError if the state directory or the
        lock file cannot be created. Blocks the calling thread.
        """
        if self._fd is not None:
            raise RuntimeError(f"the lock for port {self.port} is already held by this PortLock")
        ensure_private_dir(self.state_dir)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, STATE_FILE_MODE)
        deadline = time.monotonic() + timeout_seconds
        try:
            while not _try_flock(fd):
                if time.monotonic() >= deadline:
                    raise self._already_running()
                time.sleep(LOCK_POLL_INTERVAL_SECONDS)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._log_takeover()

    def _log_takeover(self) -> None:
        """Warn if the record left behind names another holder: it died holding the lock."""
        record = read_record(self.state_dir, self.port)
        if record is None or (record.pid == os.getpid() and holder_alive(record)):
            return  # no record, or this very process's own
        logger.warning(
            "took over the lock for port %d from a holder that is gone: pid %d (%s), gatewayd %s, started "
            "%s, generation %d, config %s; it exited without releasing the lock (killed or crashed)",
            self.port,
            record.pid,
            _why_gone(record),
            record.version,
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.started_at)),
            record.generation,
            record.config_path or "built-in defaults",
        )

    @classmethod
    def inherit(cls, state_dir: Path, port: int, fd: int) -> PortLock:
        """Adopt the lock held through ``fd``, a descriptor inherited from the parent (see ``fileno``).

        ``fd`` must refer to this port's lock file. The adopted descriptor is made non-inheritable so that
        later children do not hold the lock by accident. Raises ``InstanceError`` if ``fd`` is not the lock
        file, or if its lock was dropped and another process holds the lock now.
        """
        lock = cls(state_dir, port)
        fd_stat = os.fstat(fd)
        try:
            path_stat = os.stat(lock.lock_path)
        except FileNotFoundError:
            path_stat = None
        if path_stat is None or (fd_stat.st_dev, fd_stat.st_ino) != (path_stat.st_dev, path_stat.st_ino):
            raise InstanceError(f"inherited fd {fd} is not the port lock {lock.lock_path}")
        # On a description that already holds the lock this succeeds at once; it only fails if the lock was
        # released (someone unlocked it) and another process took it since.
        if not _try_flock(fd):
            raise InstanceError(
                f"inherited fd {fd} no longer holds the port lock {lock.lock_path}: another process took it"
            )
        os.set_inheritable(fd, False)
        lock._fd = fd
        return lock

    def fileno(self) -> int:
        """A new descriptor sharing this lock, for a child to inherit (``Popen(pass_fds=[...])``).

        The caller owns it and must close it once the child is started: while it is open this process keeps
        the lock held, even after ``release()``. The duplicate is non-inheritable until passed explicitly."""
        if self._fd is None:
            raise RuntimeError(f"the lock for port {self.port} is not held")
        return os.dup(self._fd)

    def write_record(self, record: LockRecord) -> None:
        """Atomically replace the lock record (mode 0600). Only the holder may write it."""
        if self._fd is None:
            raise RuntimeError(f"the lock for port {self.port} is not held; refusing to write its record")
        write_json_atomic(self.record_path, record.to_json())

    def release(self) -> None:
        """Close this process's hold on the lock. Idempotent; never raises for an unheld lock.

        The record is removed if it names this process (a respawned child that already wrote its own record
        keeps it). The lock itself becomes free once no descriptor shares it any more: at once for a
        stand-alone instance, when the child exits if it was handed to a child."""
        if self._fd is None:
            return
        record = read_record(self.state_dir, self.port)
        if record is not None and record.pid == os.getpid() and holder_alive(record):
            try:
                self.record_path.unlink()
            except FileNotFoundError:
                pass
        fd, self._fd = self._fd, None
        os.close(fd)

    def _already_running(self) -> AlreadyRunning:
        record = read_record(self.state_dir, self.port)
        if record is not None and holder_alive(record):
            return AlreadyRunning(
                f"gatewayd is already running on port {self.port} (pid {record.pid}); "
                f"stop it with `gatewayd stop --port {self.port}`",
                pid=record.pid,
            )
        recorded = "no lock record" if record is None else f"its record names pid {record.pid}, which is gone"
        holders = processes_holding(self.lock_path)
        if not holders:
            return AlreadyRunning(
                f"the lock for port {self.port} ({self.lock_path}) is held by a process that cannot be "
                f"identified ({recorded}); find it with `fuser -v {self.lock_path}` and stop it",
                pid=None,
            )
        pid, name = holders[0]
        return AlreadyRunning(
            f"the lock for port {self.port} is held by pid {pid} ({name}) although {recorded}: probably an "
            f"orphaned child process that inherited the lock; stop it (`kill {pid}`) and start again",
            pid=pid,
        )


def _try_flock(fd: int) -> bool:
    """One non-blocking exclusive flock attempt: True if this descriptor holds the lock now."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in _CONTENTION_ERRNOS:
            return False
        raise
    return True


def processes_holding(path: Path) -> list[tuple[int, str]]:
    """(pid, name) of every process, other than this one, with ``path`` open, as far as psutil can see.

    Processes of other users are usually invisible (AccessDenied) and skipped. Slow (it walks every
    process): only for error messages."""
    target = os.path.realpath(path)
    found: list[tuple[int, str]] = []
    for process in psutil.process_iter(["pid", "name"]):
        if process.pid == os.getpid():
            continue
        try:
            if any(os.path.realpath(opened.path) == target for opened in process.open_files()):
                found.append((process.pid, process.info["name"] or "?"))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _why_gone(record: LockRecord) -> str:
    """Why the process ``record`` names is not its holder any more (for a log line)."""
    try:
        process = psutil.Process(record.pid)
        if abs(process.create_time() - record.create_time) > CREATE_TIME_TOLERANCE_SECONDS:
            return "no such process; its pid now belongs to another one"
        if process.status() == psutil.STATUS_ZOMBIE:
            return "exited, not yet reaped"
    except psutil.NoSuchProcess:
        return "no such process"
    except psutil.AccessDenied:
        pass
    return "no longer holds the lock"


def holder_alive(record: LockRecord) -> bool:
    """True if the process the record names is still the one that wrote it and is running.

    Dead if the PID does not exist, belongs to a newer process (create_time differs: PID reuse), or is a
    zombie. A process we may not inspect (AccessDenied) counts as alive: it exists and we cannot prove
    otherwise."""
    if record.pid <= 0:
        return False
    try:
        process = psutil.Process(record.pid)
        if abs(process.create_time() - record.create_time) > CREATE_TIME_TOLERANCE_SECONDS:
            return False
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:  # includes psutil.ZombieProcess
        return False
    except psutil.AccessDenied:
        return True


def read_record(state_dir: Path, port: int) -> LockRecord | None:
    """The lock record for ``port``, or None if there is none or it is unreadable. Does not check liveness."""
    return LockRecord.from_json(read_json(record_path(state_dir, port)))


def running_instances(state_dir: Path) -> list[LockRecord]:
    """Records whose holder is alive, ordered by port. Empty if the state directory does not exist."""
    records: list[LockRecord] = []
    for path in state_dir.glob("port-*.json"):
        port = path.stem.removeprefix("port-")
        if not port.isdigit():
            continue
        record = read_record(state_dir, int(port))
        if record is not None and holder_alive(record):
            records.append(record)
    return sorted(records, key=lambda record: record.port)
