"""Fresh-PID respawn: the handoff protocol between a parent instance and the child that replaces it.

Parent side (``spawn_ready_child``): start the same command line with three fds passed by number (the
listening socket, a duplicate of the locked port-lock fd, and the write end of a private "ready" pipe) and
``GATEWAYD_INHERIT`` describing them; wait, bounded, for the child to write ``ready <pid>\\n`` on the pipe.
An HTTP probe cannot stand in for the pipe: both processes accept from one queue, so the parent could answer
it. If the child exits, writes garbage or is late, it is stopped (SIGTERM, then SIGKILL) and reaped before
``ReloadError("restart-unhealthy: ...")`` is raised; the caller falls back to an in-process restart.

Child side (``take_inheritance`` then ``announce_ready``): read and remove ``GATEWAYD_INHERIT`` from the
environment, adopt the fds (listeners.py and PortLock.inherit make them non-inheritable), and once the first
generation serves and the lock record names the child, write the ready line and close the pipe.

The child stays in the parent's process group, so a Ctrl-C in the terminal reaches it too, and inherits
stdout/stderr, so its logs go where the parent's went. ``WATCHDOG_PID`` is dropped from its environment:
systemd expects watchdog pings from the main PID, which the child becomes once the parent sends MAINPID=.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import anyio

from gatewayd.errors import ReloadError, StandbyUnavailable, StartupError

if TYPE_CHECKING:
    from gatewayd.supervisor.standby import Standby

log = logging.getLogger("gatewayd.supervisor")

INHERIT_ENV = "GATEWAYD_INHERIT"
#: after SIGTERM, an unhealthy child gets this long to exit before SIGKILL
CHILD_STOP_GRACE_SECONDS = 3.0
#: after the ready pipe hits EOF, how long to wait for the child's exit status (for the message)
CHILD_EXIT_REPORT_SECONDS = 1.0
#: the ready line is short; anything longer is garbage
READY_LINE_MAX_BYTES = 64
_POLL_SECONDS = 0.02


@dataclass(frozen=True)
class Inheritance:
    """What a respawned child receives from its parent (``GATEWAYD_INHERIT``, JSON)."""

    #: fd numbers, valid in the child (pass_fds keeps the numbers)
    listen: int
    lock: int
    ready: int
    #: the port the lock is for
    port: int
    #: the parent's last generation number; the child's first generation is this plus one
    generation: int
    #: fresh-PID respawns of this instance so far, including the one that started this child
    restarts: int
    #: time.time() when the instance first started: uptime survives respawns
    started_at: float
    #: the service manager the parent detected ("none", "systemd", "launchd"): the child cannot detect it
    #: itself, since markers such as SYSTEMD_EXEC_PID name the parent's pid
    service_manager: str

    def to_env(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def take_inheritance(environ: MutableMapping[str, str]) -> Inheritance | None:
    """The inheritance passed by a respawning parent, or None when this process was not respawned.

    Pops ``GATEWAYD_INHERIT`` from ``environ`` so no later child sees it, and makes the ready pipe
    non-inheritable. Raises StartupError if the variable is malformed."""
    raw = environ.pop(INHERIT_ENV, None)
    if raw is None:
        return None
    try:
        inheritance = Inheritance(**json.loads(raw))
        for fd in (inheritance.listen, inheritance.lock, inheritance.ready):
            if not isinstance(fd, int):
                raise TypeError(f"fd {fd!r} is not an int")
        os.set_inheritable(inheritance.ready, False)
    except (ValueError, TypeError, OSError) as error:
        raise StartupError(f"malformed {INHERIT_ENV} from the parent process ({error}): {raw!r}") from error
    return inheritance


def announce_ready(inheritance: Inheritance) -> None:
    """Tell the parent this child serves: write ``ready <pid>`` on the private pipe and close it.

    A parent that already gave up (closed its end) makes the write fail: raises ReloadError, and the caller
    should stop, since the parent killed or is about to kill this child."""
    try:
        os.write(inheritance.ready, b"ready %d\n" % os.getpid())
    except OSError as error:
        raise ReloadError(f"the parent stopped waiting for this process to be ready: {error}") from error
    finally:
        os.close(inheritance.ready)


def child_environment(environ: Mapping[str, str], inheritance: Inheritance) -> dict[str, str]:
    env = {name: value for name, value in environ.items() if name != "WATCHDOG_PID"}
    env[INHERIT_ENV] = inheritance.to_env()
    return env


async def spawn_ready_child(
    command: Sequence[str],
    *,
    listen_fd: int,
    lock_fd: int,
    environ: Mapping[str, str],
    port: int,
    generation: int,
    restarts: int,
    started_at: float,
    service_manager: str,
    timeout_seconds: float,
    standby: Standby | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``command`` as a child that inherits the listener and the lock; return it once it is ready.

    With a ``standby`` (standby.py), the handoff goes to that process, already imported, instead of a new
    one; a standby that cannot take it is stopped and the child is started cold, within the same bound.

    ``lock_fd`` is a duplicate of the port-lock fd owned by this call: it is closed in this process once the
    child holds its copy. Raises ReloadError("restart-unhealthy: ...") if the child cannot be started, exits,
    answers garbage, or is not ready within ``timeout_seconds``; the child is stopped and reaped first. On
    cancellation the child is stopped and reaped too (shielded), then the cancellation propagates.
    """
    read_end, write_end = os.pipe()
    inheritance = Inheritance(
        listen=listen_fd,
        lock=lock_fd,
        ready=write_end,
        port=port,
        generation=generation,
        restarts=restarts,
        started_at=started_at,
        service_manager=service_manager,
    )
    started = time.monotonic()
    try:
        child = await _warm_child(standby, inheritance, (listen_fd, lock_fd, write_end), timeout_seconds)
        if child is None:
            child = subprocess.Popen(  # noqa: ASYNC220 - fork+exec; returns at once
                list(command),
                pass_fds=(listen_fd, lock_fd, write_end),
                env=child_environment(environ, inheritance),
            )
            log.info("respawn: started child pid %d", child.pid)
    except OSError as error:
        os.close(read_end)
        raise ReloadError(f"restart-unhealthy: cannot start {command[0]}: {error}") from error
    finally:
        os.close(write_end)
        os.close(lock_fd)
    remaining = max(timeout_seconds - (time.monotonic() - started), 0.0)
    log.info("respawn: waiting up to %.3gs for pid %d to be ready", remaining, child.pid)
    ready = False
    try:
        with anyio.move_on_after(remaining):
            line = await _read_line(read_end)
            if line == f"ready {child.pid}":
                ready = True
                return child
            if line:
                raise ReloadError(f"restart-unhealthy: child pid {child.pid} sent {line!r} instead of ready")
            # EOF: the child closed the pipe, most likely by exiting; its exit status follows shortly
            with anyio.move_on_after(CHILD_EXIT_REPORT_SECONDS):
                while child.poll() is None:
                    await anyio.sleep(_POLL_SECONDS)
            code = child.returncode
            if code is not None:
                raise ReloadError(
                    f"restart-unhealthy: child pid {child.pid} exited with code {code} before ready"
                )
            raise ReloadError(f"restart-unhealthy: child pid {child.pid} closed the ready pipe without ready")
        raise ReloadError(
            f"restart-unhealthy: child pid {child.pid} was not ready within {timeout_seconds:g}s"
        )
    finally:
        os.close(read_end)
        if not ready:
            with anyio.CancelScope(shield=True):
                await stop_child(child)


async def _warm_child(
    standby: Standby | None, inheritance: Inheritance, fds: tuple[int, int, int], timeout_seconds: float
) -> subprocess.Popen[bytes] | None:
    """The standby, handed over to, or None if there is none or it cannot take the handoff (logged)."""
    if standby is None:
        return None
    try:
        child = await standby.hand_over(inheritance, fds, timeout_seconds=timeout_seconds)
    except StandbyUnavailable as error:
        log.warning("respawn: %s; starting a child cold", error)
        return None
    log.info("respawn: handed over to the warm standby pid %d", child.pid)
    return child


async def _read_line(fd: int) -> str:
    """One line from a pipe, without blocking the loop. Returns what was read at EOF ("" if nothing)."""
    os.set_blocking(fd, False)
    data = b""
    while b"\n" not in data and len(data) < READY_LINE_MAX_BYTES:
        await anyio.wait_readable(fd)
        try:
            chunk = os.read(fd, READY_LINE_MAX_BYTES)
        except BlockingIOError:
            continue
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0].decode(errors="replace").strip()


async def stop_child(child: subprocess.Popen[bytes]) -> int:
    """Stop an unwanted child: SIGTERM, then SIGKILL after ``CHILD_STOP_GRACE_SECONDS``; reap it. Returns
    its exit status."""
    if child.poll() is None:
        child.terminate()
        deadline = time.monotonic() + CHILD_STOP_GRACE_SECONDS
        while child.poll() is None and time.monotonic() < deadline:
            await anyio.sleep(_POLL_SECONDS)
        if child.poll() is None:
            log.warning("respawn: child pid %d ignored SIGTERM; killing it", child.pid)
            child.kill()
    while (code := child.poll()) is None:
        await anyio.sleep(_POLL_SECONDS)
    log.info("respawn: child pid %d stopped (exit status %d)", child.pid, code)
    return code
