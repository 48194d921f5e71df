"""Run a gatewayd instance as a real subprocess: ``gatewayd run`` or the supervisor test app.

    with GatewaydProcess.test_app(tmp_path, marker="v1") as gw:     # tests/support/supervisor_apps.py
        gw.wait_ready()
        gw.get("/config").json()["marker"]
        gw.signal(signal.SIGUSR1)
        gw.wait_exit()

    with GatewaydProcess.gatewayd(tmp_path, config_path) as gw:      # the real CLI
        ...

Each instance gets its own state directory and a free port; stderr (the logs, the respawned child's too) goes
to a file that ``logs()`` reads. The process is started in a session of its own so that cleanup can kill the
whole process group, respawned children included, whatever state a failed test left them in.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from gatewayd.supervisor.portlock import LockRecord, holder_alive, read_record
from tests.support.supervisor_apps import write_config

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_READY_TIMEOUT_SECONDS = 20.0
DEFAULT_EXIT_TIMEOUT_SECONDS = 30.0
_NOT_INHERITED = frozenset(
    {
        "GATEWAYD_INHERIT",
        "GATEWAYD_SUPERVISOR",
        "GATEWAYD_STATE_DIR",
        "GATEWAYD_CONFIG",
        "LISTEN_PID",
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "SYSTEMD_EXEC_PID",
        "XPC_SERVICE_NAME",
    }
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    predicate: Callable[[], Any], *, timeout: float, interval: float = 0.02, what: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns something truthy; return that. AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class GatewaydProcess:
    """One instance started from ``command``; ``port`` and ``state_dir`` are what it was told to use."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        port: int,
        state_dir: Path,
        log_path: Path,
        config_path: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.command = list(command)
        self.port = port
        self.state_dir = state_dir
        self.log_path = log_path
        self.config_path = config_path
        # nothing from the test runner's own environment may make the instance think it is supervised
        inherited = {name: value for name, value in os.environ.items() if name not in _NOT_INHERITED}
        self.env = {**inherited, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.pgid: int | None = None

    # -- construction ---------------------------------------------------------------------------------

    @classmethod
    def test_app(
        cls,
        tmp_path: Path,
        *,
        marker: str = "v1",
        port: int | None = None,
        extra_config: str = "",
        env: Mapping[str, str] | None = None,
        state_dir: Path | None = None,
        name: str = "gw",
        args: Sequence[str] = (),
    ) -> GatewaydProcess:
        """The run loop with the supervisor test factory (tests/support/supervisor_apps.py); ``args`` are
        added to its command line (e.g. ``--no-uvloop``)."""
        port = port or free_port()
        state_dir = state_dir or tmp_path / "state"
        config_path = write_config(
            tmp_path / f"{name}-config.yaml", marker=marker, port=port, extra=extra_config
        )
        command = [
            sys.executable,
            "-m",
            "tests.support.supervisor_apps",
            "run",
            "--config",
            str(config_path),
            "--state-dir",
            str(state_dir),
            *args,
        ]
        return cls(
            command,
            port=port,
            state_dir=state_dir,
            log_path=tmp_path / f"{name}.log",
            config_path=config_path,
            env=env,
        )

    @classmethod
    def gatewayd(
        cls,
        tmp_path: Path,
        config_path: Path,
        *,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        state_dir: Path | None = None,
        name: str = "gatewayd",
    ) -> GatewaydProcess:
        """The real ``gatewayd run`` with ``config_path``, on ``port`` (free one by default)."""
        port = port or free_port()
        state_dir = state_dir or tmp_path / "state"
        command = [
            sys.executable,
            "-m",
            "gatewayd",
            "run",
            "--config",
            str(config_path),
            "--state-dir",
            str(state_dir),
            "--port",
            str(port),
        ]
        return cls(
            command,
            port=port,
            state_dir=state_dir,
            log_path=tmp_path / f"{name}.log",
            config_path=config_path,
            env=env,
        )

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> GatewaydProcess:
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                self.command,
                cwd=REPO_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
            )
        self.pgid = self.proc.pid
        return self

    def __enter__(self) -> GatewaydProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.kill_all()

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str, *, timeout: float = 10.0) -> httpx.Response:
        with httpx.Client(timeout=timeout) as client:
            return client.get(self.url(path))

    def wait_ready(self, timeout: float = DEFAULT_READY_TIMEOUT_SECONDS) -> None:
        """Until /healthz answers 200 and the lock record names a serving generation. Fails fast (with the
        logs) if the process exits first."""

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"exited with {self.proc.returncode} before ready:\n{self.logs()}")
            try:
                if self.get("/healthz", timeout=1.0).status_code != 200:
                    return False
            except httpx.HTTPError:
                return False
            record = self.record()
            return record is not None and record.generation >= 1

        wait_for(ready, timeout=timeout, what=f"{self.command[:4]} to be ready on port {self.port}")

    def signal(self, signum: int, pid: int | None = None) -> None:
        os.kill(pid or self.pid, signum)

    def wait_exit(self, timeout: float = DEFAULT_EXIT_TIMEOUT_SECONDS) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired as error:
            raise AssertionError(
                f"pid {self.pid} still running after {timeout:g}s:\n{self.logs()}"
            ) from error

    def stop(self, timeout: float = DEFAULT_EXIT_TIMEOUT_SECONDS) -> int:
        """SIGTERM the current instance holder (the original pid unless it respawned) and wait for it."""
        record = self.record()
        pid = record.pid if record is not None and holder_alive(record) else self.pid
        os.kill(pid, signal.SIGTERM)
        if pid == self.pid:
            return self.wait_exit(timeout)
        wait_for(lambda: not _alive(pid), timeout=timeout, what=f"pid {pid} to exit")
        return 0

    def kill_all(self) -> None:
        """SIGKILL the whole process group (respawned children included) and reap the original."""
        if self.pgid is not None:
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            self.proc.wait(10)

    # -- observation ----------------------------------------------------------------------------------

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def record(self) -> LockRecord | None:
        return read_record(self.state_dir, self.port)

    def wait_log(self, text: str, timeout: float = 10.0) -> None:
        wait_for(lambda: text in self.logs(), timeout=timeout, what=f"{text!r} in the log")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still "exists": ask /proc where it can
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def process_alive(pid: int) -> bool:
    return _alive(pid)


__all__ = ["GatewaydProcess", "free_port", "process_alive", "wait_for"]


class Stream:
    """Reads a /stream response on a thread; ``lines`` fills as chunks arrive."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.lines: list[str] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._read)
        self.thread.start()

    def _read(self) -> None:
        try:
            with httpx.Client(timeout=60) as client, client.stream("GET", self.url) as response:
                for line in response.iter_lines():
                    self.lines.append(line)
        except httpx.HTTPError as error:
            self.error = error

    def join(self) -> None:
        self.thread.join(60)


class Request:
    """One plain GET on a thread; ``status`` (and the ``response``) or ``error`` when done."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.status: int | None = None
        self.response: httpx.Response | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._get)
        self.thread.start()

    def _get(self) -> None:
        try:
            with httpx.Client(timeout=60) as client:
                self.response = client.get(self.url)
                self.status = self.response.status_code
        except httpx.HTTPError as error:
            self.error = error

    def join(self) -> None:
        self.thread.join(60)


def gatewayd_cli(
    *args: str, state_dir: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m gatewayd ARGS --state-dir DIR`` from the repository, output captured; ``env`` is added
    to this process's environment (a wide terminal, so tables are not wrapped)."""
    return subprocess.run(
        [sys.executable, "-m", "gatewayd", *args, "--state-dir", str(state_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
