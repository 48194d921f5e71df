"""Where the listening socket comes from: fresh bind, a parent's fd, systemd socket activation."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from gatewayd.errors import StartupError
from gatewayd.supervisor.listeners import ListenerOrigin, bind_listener, open_listener, take_systemd_fds


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock
    sock.close()


def test_a_fresh_bind_is_listening_non_blocking_non_inheritable_and_reuseaddr() -> None:
    sock = bind_listener("127.0.0.1", 0, backlog=16)
    try:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert sock.getblocking() is False
        assert sock.get_inheritable() is False
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
        with socket.create_connection(sock.getsockname(), timeout=2):
            pass
    finally:
        sock.close()


def test_binding_a_port_in_use_is_a_startup_error_that_says_so(listening: socket.socket) -> None:
    port = listening.getsockname()[1]
    with pytest.raises(
        StartupError, match=f"cannot listen on 127.0.0.1:{port}.*another program is listening"
    ):
        bind_listener("127.0.0.1", port, backlog=16)


def test_an_unresolvable_host_is_a_startup_error() -> None:
    with pytest.raises(StartupError, match=r"cannot listen on no-such-host\.invalid:8484"):
        bind_listener("no-such-host.invalid", 8484, backlog=16)


def test_an_inherited_fd_is_adopted_and_made_private(listening: socket.socket) -> None:
    fd = os.dup(listening.fileno())
    os.set_inheritable(fd, True)
    listener = open_listener("127.0.0.1", 1, backlog=16, inherited_fd=fd, environ={})
    try:
        assert listener.origin is ListenerOrigin.INHERITED
        assert listener.port == listening.getsockname()[1]
        assert listener.address == f"127.0.0.1:{listener.port}"
        assert listener.sock.get_inheritable() is False
        assert listener.sock.getblocking() is False
    finally:
        listener.close()


def test_an_inherited_fd_that_is_not_a_listening_socket_is_refused() -> None:
    unconnected = socket.socket()
    try:
        with pytest.raises(StartupError, match="not a listening TCP socket"):
            open_listener("127.0.0.1", 1, backlog=16, inherited_fd=unconnected.fileno(), environ={})
    finally:
        unconnected.close()
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(StartupError, match="not a socket"):
            open_listener("127.0.0.1", 1, backlog=16, inherited_fd=read_end, environ={})
    finally:
        os.close(write_end)


def test_systemd_variables_are_popped_and_only_honoured_for_our_pid() -> None:
    environ = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "http", "OTHER": "x"}
    assert take_systemd_fds(environ, pid=2) == []
    assert environ == {"OTHER": "x"}
    environ = {"LISTEN_PID": "7", "LISTEN_FDS": "2"}
    assert take_systemd_fds(environ, pid=7) == [3, 4]
    assert environ == {}
    assert take_systemd_fds({"LISTEN_PID": "x", "LISTEN_FDS": "1"}, pid=7) == []
    assert take_systemd_fds({}, pid=7) == []


def test_socket_activation_adopts_fd_3_in_a_real_process(listening: socket.socket) -> None:
    # The child moves the passed socket to fd 3 and names itself in LISTEN_PID, as systemd would.
    script = textwrap.dedent(
        """
        import os, sys
        from gatewayd.supervisor.listeners import open_listener
        os.dup2(int(sys.argv[1]), 3)
        os.close(int(sys.argv[1]))
        os.environ["LISTEN_PID"] = str(os.getpid())
        os.environ["LISTEN_FDS"] = "1"
        listener = open_listener("127.0.0.1", 1, backlog=16, inherited_fd=None, environ=os.environ)
        print(listener.origin.value, listener.port, listener.sock.fileno(), listener.sock.get_inheritable(),
              "LISTEN_PID" in os.environ, "LISTEN_FDS" in os.environ)
        """
    )
    fd = listening.fileno()
    result = subprocess.run(
        [sys.executable, "-c", script, str(fd)], pass_fds=[fd], capture_output=True, text=True, check=True
    )
    port = listening.getsockname()[1]
    assert result.stdout.split() == ["systemd", str(port), "3", "False", "False", "False"]


def test_a_socket_activated_on_a_public_address_is_refused_in_a_real_process() -> None:
    public = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    public.bind(("0.0.0.0", 0))
    public.listen(4)
    script = textwrap.dedent(
        """
        import os, sys
        from gatewayd.errors import StartupError
        from gatewayd.supervisor.listeners import activated_listener
        os.dup2(int(sys.argv[1]), 3)
        os.close(int(sys.argv[1]))
        os.environ["LISTEN_PID"] = str(os.getpid())
        os.environ["LISTEN_FDS"] = "1"
        try:
            activated_listener(os.environ)
        except StartupError as error:
            print(error)
        """
    )
    with public:
        fd = public.fileno()
        result = subprocess.run(
            [sys.executable, "-c", script, str(fd)], pass_fds=[fd], capture_output=True, text=True, check=True
        )
        port = public.getsockname()[1]
    assert f"listens on 0.0.0.0:{port}, which is not a loopback address" in result.stdout
    assert f"ListenStream=127.0.0.1:{port}" in result.stdout
