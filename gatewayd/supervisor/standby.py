"""A warm standby for fresh-PID respawns (``restart.warm_standby``): a process started ahead of the reload,
its imports done, waiting for the handoff, so that a respawn costs no interpreter start and no imports.

    parent (serving)                                standby (same command line, GATEWAYD_STANDBY=<fd>)
    Standby.start  -- socketpair, Popen -------->   wait_as_standby: the entry point's imports are done
                   <-------- "standby <pid>\\n" --   then blocks reading its end of the channel
    Standby.hand_over (at a respawn)
       one message: the Inheritance JSON, with
       the listener, lock and ready fds -------->   adopts the fds, sets GATEWAYD_INHERIT, and goes on as a
                                                    respawned child (respawn.py: ready pipe, then serve)

The handoff is respawn.py's protocol with the fds sent over the channel (SCM_RIGHTS) instead of inherited at
fork: from the handoff on, the standby is an ordinary child. The parent's end closing (the parent stopped or
died) dismisses the standby: it exits 0 without serving. While it waits it ignores SIGINT (a Ctrl-C in the
terminal reaches the whole process group; the parent handles it and dismisses the standby) and dies of
SIGTERM like any process. A standby that exits or never says it waits is not used: the respawn starts a child
cold instead, and the next process starts a new standby once it serves.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import asdict, replace

import anyio
import psutil

from gatewayd.errors import ReloadError, StandbyUnavailable, StartupError
from gatewayd.supervisor.respawn import INHERIT_ENV, Inheritance, stop_child

log = logging.getLogger("gatewayd.supervisor")

STANDBY_ENV = "GATEWAYD_STANDBY"
#: the standby's greeting and the handoff message are short; the inheritance JSON is well below this
CHANNEL_MESSAGE_MAX_BYTES = 4096
#: the fds of a handoff, in order: listener, port lock, ready pipe
HANDOFF_FDS = 3


class StandbyState(enum.Enum):
    #: started; still importing (it has not said it waits)
    STARTING = "starting"
    #: imported and waiting for a handoff
    WAITING = "waiting"
    #: handed over: it is a respawned child now, no longer a standby
    HANDED_OVER = "handed-over"
    #: gone (dismissed, killed or crashed)
    EXITED = "exited"


class Standby:
    """The parent's handle on one standby process. Owned by the run loop (event-loop thread only)."""

    def __init__(self, process: subprocess.Popen[bytes], channel: socket.socket) -> None:
        self.process = process
        self._channel = channel
        self._greeting = b""
        self._state = StandbyState.STARTING
        self.started_at = time.time()

    @classmethod
    def start(cls, command: Sequence[str], environ: Mapping[str, str]) -> Standby:
        """Start ``command`` as a standby. Raises ReloadError if it cannot be started."""
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {name: value for name, value in environ.items() if name not in ("WATCHDOG_PID", INHERIT_ENV)}
        env[STANDBY_ENV] = str(child_end.fileno())
        try:
            process = subprocess.Popen(list(command), pass_fds=(child_end.fileno(),), env=env)
        except OSError as error:
            parent_end.close()
            raise ReloadError(f"cannot start a warm standby ({command[0]}): {error}") from error
        finally:
            child_end.close()
        parent_end.setblocking(False)
        log.info("warm standby: started pid %d", process.pid)
        return cls(process, parent_end)

    @property
    def pid(self) -> int:
        return self.process.pid

    def state(self) -> StandbyState:
        """The standby's state now (reads its greeting if it arrived; never blocks)."""
        if self._state is StandbyState.HANDED_OVER:
            return self._state
        if self.process.poll() is not None:
            self._state = StandbyState.EXITED
        elif self._state is StandbyState.STARTING:
            self._read_greeting()
        return self._state

    def _read_greeting(self) -> None:
        try:
            chunk = self._channel.recv(CHANNEL_MESSAGE_MAX_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:  # EOF: the standby closed its end, so it is exiting
            self._state = StandbyState.EXITED
            return
        self._greeting += chunk
        if b"\n" in self._greeting:
            line = self._greeting.split(b"\n", 1)[0].decode(errors="replace").strip()
            expected = f"standby {self.pid}"
            self._state = StandbyState.WAITING if line == expected else StandbyState.EXITED
            if line != expected:
                log.warning("warm standby pid %d sent %r instead of %r; not used", self.pid, line, expected)

    def snapshot(self) -> dict[str, object]:
        """pid, state, rss_bytes (None once it exited or if psutil cannot see it), started_at."""
        state = self.state()
        rss: int | None = None
        if state is not StandbyState.EXITED:
            try:
                rss = int(psutil.Process(self.pid).memory_info().rss)
            except (psutil.Error, OSError):
                rss = None
        return {"pid": self.pid, "state": state.value, "rss_bytes": rss, "started_at": self.started_at}

    async def hand_over(
        self, inheritance: Inheritance, fds: tuple[int, int, int], *, timeout_seconds: float
    ) -> subprocess.Popen[bytes]:
        """Send the handoff: ``inheritance`` with ``fds`` (listener, lock, ready pipe's write end; the caller
        keeps and closes its own). Waits up to ``timeout_seconds`` for a standby still importing. Returns the
        standby's process, now a respawned child. Raises StandbyUnavailable, with the standby stopped and
        reaped, if it exited, said something else, or did not say it waits in time."""
        with anyio.move_on_after(timeout_seconds):
            while self.state() is StandbyState.STARTING:
                await anyio.wait_readable(self._channel)
        state = self.state()
        if state is not StandbyState.WAITING:
            await self.dismiss()
            code = self.process.returncode
            if state is StandbyState.STARTING:
                raise StandbyUnavailable(
                    f"warm standby pid {self.pid} was not waiting within {timeout_seconds:g}s"
                )
            raise StandbyUnavailable(
                f"warm standby pid {self.pid} had exited"
                + (f" (exit status {code})" if code is not None else "")
            )
        payload = inheritance.to_env().encode()
        try:
            socket.send_fds(self._channel, [payload], list(fds))
        except OSError as error:
            await self.dismiss()
            raise StandbyUnavailable(f"warm standby pid {self.pid} refused the handoff: {error}") from error
        self._state = StandbyState.HANDED_OVER
        self._channel.close()
        return self.process

    async def dismiss(self) -> None:
        """Stop the standby (unless it was handed over) and reap it. Shielded; idempotent."""
        with anyio.CancelScope(shield=True):
            if self._state is not StandbyState.HANDED_OVER:
                self._channel.close()
                if self.process.poll() is None:
                    await stop_child(self.process)
                self._state = StandbyState.EXITED


def wait_as_standby(environ: MutableMapping[str, str]) -> bool:
    """In a process started by ``Standby.start``: say so to the parent, then block until the handoff.

    Call it once the entry point has imported what serving needs. Returns True when this process is to go
    on: it is no standby (no ``GATEWAYD_STANDBY``), or the handoff arrived and ``environ`` now holds the
    ``GATEWAYD_INHERIT`` of a respawned child. Returns False when the parent dismissed it: exit 0 without
    serving. Raises StartupError if ``GATEWAYD_STANDBY`` or the handoff is malformed."""
    raw = environ.pop(STANDBY_ENV, None)
    if raw is None:
        return True
    try:
        channel = socket.socket(fileno=int(raw))
    except (ValueError, OSError) as error:
        raise StartupError(f"malformed {STANDBY_ENV} from the parent process ({error}): {raw!r}") from error
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with channel:
            try:
                channel.sendall(b"standby %d\n" % os.getpid())
                message, fds, _flags, _address = socket.recv_fds(
                    channel, CHANNEL_MESSAGE_MAX_BYTES, HANDOFF_FDS
                )
            except OSError:
                return False  # the parent is gone
            if not message:
                for fd in fds:
                    os.close(fd)
                return False
            environ[INHERIT_ENV] = _adopted(message, fds)
    finally:
        signal.signal(signal.SIGINT, previous)
    return True


def _adopted(message: bytes, fds: list[int]) -> str:
    """The inheritance JSON with the parent's fd numbers replaced by the ones received here."""
    try:
        if len(fds) != HANDOFF_FDS:
            raise ValueError(f"{len(fds)} descriptor(s) instead of {HANDOFF_FDS}")
        inheritance = Inheritance(**json.loads(message))
    except (ValueError, TypeError) as error:
        for fd in fds:
            os.close(fd)
        raise StartupError(f"malformed handoff from the parent process ({error})") from error
    listen, lock, ready = fds
    return json.dumps(asdict(replace(inheritance, listen=listen, lock=lock, ready=ready)), sort_keys=True)
