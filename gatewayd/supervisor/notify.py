"""sd_notify: tell systemd what the service is doing, without a dependency.

The protocol is one datagram of ``KEY=VALUE`` lines sent to the AF_UNIX SOCK_DGRAM socket named by
``NOTIFY_SOCKET`` (a leading ``@`` means Linux's abstract namespace). Without ``NOTIFY_SOCKET`` every method
does nothing, so callers never need to ask whether systemd is there.

Order that matters to systemd (``Type=notify`` / ``notify-reload``): install signal handlers, then
``ready()``; on reload ``reloading()`` then ``ready()``; on stop ``stopping()``. With the default
``NotifyAccess=main`` only the main process is heard: a respawned child becomes main when the *old* process
sends ``hand_over(child_pid)``. ``watchdog()`` must be sent from the event loop itself every
``watchdog_interval_seconds``, so that a wedged loop stops sending it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

logger = logging.getLogger(__name__)

#: a send blocks at most this long (systemd reads its socket promptly; a full queue must not wedge the loop)
NOTIFY_SEND_TIMEOUT_SECONDS = 1.0


class Notifier:
    """Sends sd_notify messages for one process. Cheap to keep; holds no open socket between sends.

    Never raises: a failed send is logged at debug level and dropped (systemd's own clients behave the
    same way; the service manager will notice a missing READY=1 or WATCHDOG=1 on its own)."""

    def __init__(
        self, address: str | None, *, watchdog_usec: int | None = None, pid: int | None = None
    ) -> None:
        #: NOTIFY_SOCKET as given (``/run/...`` or ``@abstract``); None disables every send
        self.address = address or None
        self._watchdog_usec = watchdog_usec
        self._pid = os.getpid() if pid is None else pid

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Notifier:
        """A notifier for the calling process, configured by NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID.

        The watchdog applies only if WATCHDOG_PID is unset or names this process: the variables are
        inherited, and a child that is not (yet) the main process must not think it is being watched."""
        pid = os.getpid()
        watchdog_usec: int | None = None
        watchdog_pid = environ.get("WATCHDOG_PID")
        if watchdog_pid is None or watchdog_pid == str(pid):
            try:
                watchdog_usec = int(environ.get("WATCHDOG_USEC", ""))
            except ValueError:
                watchdog_usec = None
            if watchdog_usec is not None and watchdog_usec <= 0:
                watchdog_usec = None
        return cls(environ.get("NOTIFY_SOCKET"), watchdog_usec=watchdog_usec, pid=pid)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval_seconds(self) -> float | None:
        """How often to call ``watchdog()``: half of systemd's WatchdogSec, or None when not watched."""
        if self._watchdog_usec is None or not self.enabled:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def send(self, **fields: str) -> None:
        """Send ``fields`` as ``KEY=VALUE`` lines in one datagram. Newlines in values become spaces."""
        if self.address is None or not fields:
            return
        message = "".join(f"{key}={' '.join(str(value).splitlines())}\n" for key, value in fields.items())
        address = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(NOTIFY_SEND_TIMEOUT_SECONDS)
                sock.sendto(message.encode(), address)
        except OSError as error:
            logger.debug("sd_notify to %s failed: %s (%s)", self.address, error, message.strip())

    def ready(self, status: str | None = None) -> None:
        """Serving (first start, or the end of a reload). Optionally sets STATUS in the same message."""
        if status is None:
            self.send(READY="1")
        else:
            self.send(READY="1", STATUS=status)

    def reloading(self) -> None:
        """A reload began; systemd (``Type=notify-reload``) waits for the next ``ready()``."""
        self.send(RELOADING="1", MONOTONIC_USEC=str(time.monotonic_ns() // 1000))

    def stopping(self) -> None:
        self.send(STOPPING="1")

    def status(self, text: str) -> None:
        """A one-line status for ``systemctl status``."""
        self.send(STATUS=text)

    def hand_over(self, pid: int) -> None:
        """Hand the main-process role to ``pid`` (a respawned child, ready), in one datagram: once MAINPID
        names the child, systemd no longer hears this process, so READY=1 travels with it."""
        self.send(MAINPID=str(pid), READY="1")

    def watchdog(self) -> None:
        """Keep-alive for systemd's watchdog; a no-op when not watched."""
        if self.watchdog_interval_seconds is not None:
            self.send(WATCHDOG="1")
