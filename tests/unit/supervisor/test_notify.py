from __future__ import annotations

import logging
import os
import secrets
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gatewayd.supervisor.notify import Notifier


class Listener:
    """A bound AF_UNIX datagram socket playing systemd's side."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(5)

    def receive(self) -> str:
        return self.sock.recv(4096).decode()


@pytest.fixture
def listener() -> Iterator[tuple[Listener, str]]:
    # a short directory: AF_UNIX paths are limited to 108 bytes
    with tempfile.TemporaryDirectory(prefix="gwn") as directory:
        path = str(Path(directory) / "notify")
        server = Listener(path)
        with server.sock:
            yield server, path


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier.from_environ({"WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval_seconds is None
    notifier.ready("serving")
    notifier.reloading()
    notifier.stopping()
    notifier.watchdog()
    notifier.send(STATUS="x")


def test_messages_arrive_as_key_value_lines_in_one_datagram(listener: tuple[Listener, str]) -> None:
    server, path = listener
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    notifier.ready("serving 3/4 backends")
    assert server.receive() == "READY=1\nSTATUS=serving 3/4 backends\n"
    notifier.ready()
    assert server.receive() == "READY=1\n"
    notifier.status("line one\nline two")
    assert server.receive() == "STATUS=line one line two\n"
    notifier.stopping()
    assert server.receive() == "STOPPING=1\n"
    notifier.hand_over(4242)
    assert server.receive() == "MAINPID=4242\nREADY=1\n"


def test_reloading_carries_the_monotonic_clock_in_microseconds(listener: tuple[Listener, str]) -> None:
    server, path = listener
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    before = time.monotonic_ns() // 1000
    notifier.reloading()
    after = time.monotonic_ns() // 1000
    lines = server.receive().splitlines()
    assert lines[0] == "RELOADING=1"
    key, value = lines[1].split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_the_watchdog_applies_only_to_the_process_it_names(listener: tuple[Listener, str]) -> None:
    server, path = listener
    mine = Notifier.from_environ(
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    )
    assert mine.watchdog_interval_seconds == 15.0
    unnamed = Notifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})
    assert unnamed.watchdog_interval_seconds == 1.0
    inherited = Notifier.from_environ(
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}
    )
    assert inherited.watchdog_interval_seconds is None
    garbage = Notifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "soon"})
    assert garbage.watchdog_interval_seconds is None

    inherited.watchdog()  # not watched: sends nothing
    mine.status("marker")
    assert server.receive() == "STATUS=marker\n"
    mine.watchdog()
    assert server.receive() == "WATCHDOG=1\n"


def test_abstract_namespace_addresses_are_used() -> None:
    name = f"gatewayd-test-{secrets.token_hex(8)}"
    server = Listener("\0" + name)
    with server.sock:
        Notifier.from_environ({"NOTIFY_SOCKET": "@" + name}).ready()
        assert server.receive() == "READY=1\n"


def test_a_failed_send_is_logged_at_debug_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gatewayd.supervisor.notify")
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": "/nonexistent/gatewayd/notify"})
    notifier.ready()
    assert any(
        "sd_notify to /nonexistent/gatewayd/notify failed" in record.message for record in caplog.records
    )
    assert all(record.levelno == logging.DEBUG for record in caplog.records)
