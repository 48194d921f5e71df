"""sd_notify as systemd would receive it: a real AF_UNIX datagram socket in NOTIFY_SOCKET."""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.process import GatewaydProcess, process_alive, wait_for

pytestmark = pytest.mark.slow


class NotifySocket:
    """Collects every datagram sent to it, with the sender's pid (SO_PASSCRED)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[tuple[int, dict[str, str]]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.settimeout(0.1)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        credentials_size = socket.CMSG_SPACE(12)
        while not self._closed.is_set():
            try:
                data, ancillary, _, _ = self._sock.recvmsg(4096, credentials_size)
            except TimeoutError:
                continue
            pid = 0
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = int.from_bytes(payload[:4], "little")
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((pid, fields))

    def from_pid(self, pid: int) -> list[dict[str, str]]:
        return [fields for sender, fields in self.messages if sender == pid]

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2)
        self._sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def test_ready_reloading_status_watchdog_and_stopping(tmp_path: Path, notify_socket: NotifySocket) -> None:
    env = {
        "NOTIFY_SOCKET": str(notify_socket.path),
        "WATCHDOG_USEC": "200000",
        "GATEWAYD_SUPERVISOR": "systemd",
    }
    with GatewaydProcess.test_app(tmp_path, env=env) as gw:
        gw.wait_ready()
        wait_for(lambda: any("READY" in m for m in notify_socket.from_pid(gw.pid)), timeout=5, what="READY=1")
        ready = next(m for m in notify_socket.from_pid(gw.pid) if "READY" in m)
        assert ready["STATUS"].startswith("generation 1")
        wait_for(
            lambda: sum("WATCHDOG" in m for m in notify_socket.from_pid(gw.pid)) >= 3,
            timeout=5,
            what="watchdog pings every WATCHDOG_USEC/2",
        )
        gw.signal(signal.SIGUSR1)

        def kinds() -> list[str]:
            return [key for m in notify_socket.from_pid(gw.pid) for key in m if key in ("READY", "RELOADING")]

        wait_for(lambda: len(kinds()) >= 3, timeout=5, what="the reload's READY=1")
        assert kinds() == ["READY", "RELOADING", "READY"]
        final = [m for m in notify_socket.from_pid(gw.pid) if "READY" in m][-1]
        assert final["STATUS"].startswith("generation 2")
        reloading = next(m for m in notify_socket.from_pid(gw.pid) if "RELOADING" in m)
        assert int(reloading["MONOTONIC_USEC"]) > 0
        assert gw.stop() == 0
        assert any("STOPPING" in m for m in notify_socket.from_pid(gw.pid))


def test_a_respawn_hands_mainpid_to_the_child_in_the_same_message_as_ready(
    tmp_path: Path, notify_socket: NotifySocket
) -> None:
    env = {
        "NOTIFY_SOCKET": str(notify_socket.path),
        "WATCHDOG_USEC": "400000",
        "GATEWAYD_SUPERVISOR": "systemd",
    }
    config = "restart:\n  mode: respawn\n  handoff_close_seconds: 0.2\n"
    with GatewaydProcess.test_app(tmp_path, env=env, extra_config=config) as gw:
        gw.wait_ready()
        gw.signal(signal.SIGUSR1)
        wait_for(lambda: (r := gw.record()) is not None and r.pid != gw.pid, timeout=40, what="the respawn")
        record = gw.record()
        assert record is not None
        child = record.pid
        assert gw.wait_exit() == 0
        handoff = [m for m in notify_socket.from_pid(gw.pid) if "MAINPID" in m]
        assert handoff == [{"MAINPID": str(child), "READY": "1"}]
        assert not any("STOPPING" in m for m in notify_socket.from_pid(gw.pid))
        # the child, now the main process, keeps the watchdog fed
        wait_for(
            lambda: any("WATCHDOG" in m for m in notify_socket.from_pid(child)), timeout=5, what="child pings"
        )
        gw.signal(signal.SIGTERM, pid=child)
        wait_for(lambda: not process_alive(child), timeout=15, what="the child to stop")
        assert any("STOPPING" in m for m in notify_socket.from_pid(child))
