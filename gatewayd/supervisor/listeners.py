"""The listening socket: where it comes from, and the guarantees it carries.

The run loop owns one listening socket for the life of the process and never closes it while serving. It
comes from one of three places, in this order:

1. **inherited** from a respawning parent (the fd number arrives in ``GATEWAYD_INHERIT``; see respawn.py);
2. **systemd socket activation**: ``LISTEN_PID`` equals our pid and ``LISTEN_FDS`` >= 1; fds start at 3. The
   ``LISTEN_*`` variables are removed from the environment once read, so no child believes they are its own;
3. **bound fresh**: ``SO_REUSEADDR`` (a restarted instance can bind while old connections sit in TIME_WAIT),
   never ``SO_REUSEPORT`` (two processes accepting from two queues is not a safe handoff), listen backlog
   from ``server.backlog``.

Whatever its origin, the socket is made non-blocking and non-inheritable: child processes (managed model
servers, hooks) never hold it. Only respawn.py passes it on, deliberately, with ``pass_fds``.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass

from gatewayd.config.loader import is_loopback_host
from gatewayd.errors import StartupError

log = logging.getLogger("gatewayd.supervisor")

#: systemd passes activated sockets from this fd upwards (sd_listen_fds(3))
SD_LISTEN_FDS_START = 3


class ListenerOrigin(enum.Enum):
    INHERITED = "inherited"  # passed by the parent during a fresh-PID respawn
    SYSTEMD = "systemd"  # socket activation (a .socket unit holds it)
    BOUND = "bound"  # bound by this process


@dataclass(frozen=True)
class Listener:
    """The listening socket and where it came from. ``host``/``port`` are what the socket is bound to."""

    sock: socket.socket
    origin: ListenerOrigin

    @property
    def host(self) -> str:
        return str(self.sock.getsockname()[0])

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    @property
    def address(self) -> str:
        host = self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def close(self) -> None:
        self.sock.close()


def open_listener(
    host: str, port: int, *, backlog: int, inherited_fd: int | None, environ: MutableMapping[str, str]
) -> Listener:
    """The process's listening socket: inherited fd, else systemd's, else a fresh bind of ``host:port``.

    ``environ`` is the process environment; the ``LISTEN_*`` variables are popped from it when present.
    Raises StartupError if an inherited or activated fd is not a listening TCP socket, or the bind fails
    (the message names the address and the likely cause).
    """
    if inherited_fd is not None:
        return Listener(_adopt(inherited_fd, "inherited from the parent process"), ListenerOrigin.INHERITED)
    activated = activated_listener(environ)
    if activated is not None:
        return activated
    return Listener(bind_listener(host, port, backlog=backlog), ListenerOrigin.BOUND)


def activated_listener(environ: MutableMapping[str, str], *, allow_public: bool = False) -> Listener | None:
    """The socket systemd passed us, or None when not socket-activated. Extra fds are closed.

    Raises StartupError when the fd is not a listening TCP socket, or listens on an address that is not
    loopback unless ``allow_public`` (auth.mode: keys): without keys it must not be reachable from other
    machines."""
    activated = take_systemd_fds(environ, os.getpid())
    if not activated:
        return None
    first, *extra = activated
    for fd in extra:
        log.warning("ignoring extra socket-activated fd %d: gatewayd listens on one socket", fd)
        os.close(fd)
    listener = Listener(_adopt(first, "passed by systemd socket activation"), ListenerOrigin.SYSTEMD)
    if not allow_public and not is_loopback_host(listener.host):
        address, port = listener.address, listener.port
        listener.close()
        raise StartupError(
            f"the socket passed by systemd listens on {address}, which is not a loopback address; "
            "listening on a public address requires authentication, and auth.mode is off: "
            f"set auth.mode: keys, or ListenStream=127.0.0.1:{port} in the .socket unit"
        )
    return listener


def take_systemd_fds(environ: MutableMapping[str, str], pid: int) -> list[int]:
    """The fds systemd passed us (empty if none or if they were meant for another pid). Pops ``LISTEN_PID``,
    ``LISTEN_FDS`` and ``LISTEN_FDNAMES`` from ``environ`` either way."""
    listen_pid = environ.pop("LISTEN_PID", None)
    listen_fds = environ.pop("LISTEN_FDS", None)
    environ.pop("LISTEN_FDNAMES", None)
    if listen_pid is None or listen_fds is None:
        return []
    try:
        if int(listen_pid) != pid:
            return []
        count = int(listen_fds)
    except ValueError:
        log.warning("ignoring malformed LISTEN_PID/LISTEN_FDS (%r/%r)", listen_pid, listen_fds)
        return []
    return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + max(count, 0)))


def bind_listener(host: str, port: int, *, backlog: int) -> socket.socket:
    """A fresh, listening, non-blocking, non-inheritable TCP socket on ``host:port``. Raises StartupError."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise StartupError(f"cannot listen on {host}:{port}: {error.strerror}") from error
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as error:
        sock.close()
        hint = ""
        if isinstance(error, PermissionError):
            hint = " (ports below 1024 need privileges)"
        elif error.errno == errno.EADDRINUSE:
            hint = " (another program is listening there; pick another port with --port or server.port)"
        raise StartupError(f"cannot listen on {host}:{port}: {error.strerror}{hint}") from error
    sock.setblocking(False)
    sock.set_inheritable(False)
    return sock


def _adopt(fd: int, origin: str) -> socket.socket:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as error:
        raise StartupError(f"fd {fd} {origin} is not a socket: {error.strerror}") from error
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()
        raise StartupError(f"fd {fd} {origin} is not a listening TCP socket")
    sock.setblocking(False)
    sock.set_inheritable(False)
    return sock
