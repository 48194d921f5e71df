"""A real PostgreSQL server for the tests: initdb into a temporary directory, postgres on a free loopback
port (as the ``postgres`` user when the tests run as root: the server refuses to run as root), a fresh
database per test, everything removed at the end of the session.

Registered for the whole suite by tests/conftest.py. Fixtures:

- ``postgres_server`` (session): the running ``PostgresServer``; skips, saying why, when PostgreSQL's
  binaries cannot be found, and fails instead when GATEWAYD_REQUIRE_POSTGRES=1 (CI);
- ``postgres_url`` (function): ``postgresql://...`` of a database created for the test (dropped after).

``PostgresServer.stop`` / ``start`` stop and restart the same cluster on the same port (outage tests).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.process import free_port

REQUIRE_ENV = "GATEWAYD_REQUIRE_POSTGRES"
#: how long the server may take to start or stop on a busy machine
START_TIMEOUT_SECONDS = 60.0
SERVER_USER = "postgres"
SUPERUSER = "gatewayd"


def find_bindir() -> Path | None:
    """Where initdb and postgres are: $PG_BINDIR, the PATH, or Debian's /usr/lib/postgresql/N/bin."""
    candidates = [os.environ.get("PG_BINDIR", "")]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(os.path.realpath(initdb)).parent))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists() and (Path(candidate) / "postgres").exists():
            return Path(candidate)
    return None


class PostgresServer:
    """One cluster in a temporary directory, listening on 127.0.0.1:``port`` (trust authentication)."""

    def __init__(self, bindir: Path, root: Path) -> None:
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        #: the server's processes run as this user, directly (no wrapper between the signal and them)
        self._user: dict[str, object] = {}
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SERVER_USER)  # KeyError: no such user
            self._user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
            shutil.chown(root, SERVER_USER)

    def _run(self, *command: str) -> None:
        subprocess.run(command, check=True, capture_output=True, timeout=START_TIMEOUT_SECONDS, **self._user)  # type: ignore[call-overload]

    def init(self) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )

    def start(self) -> None:
        """Start (or restart after ``stop``) the server and wait until it takes connections."""
        log = open(self.root / "postgres.log", "ab")  # noqa: SIM115 (the server's stderr for its life)
        self.process = subprocess.Popen(
            [
                str(self.bindir / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={self.root}",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=200",
            ],
            stdout=log,
            stderr=log,
            **self._user,  # type: ignore[arg-type]
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {(self.root / 'postgres.log').read_text()[-2000:]}")
            ready = subprocess.run(
                [str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER],
                capture_output=True,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("postgres did not start in time")

    def stop(self, *, fast: bool = True) -> None:
        """Stop the server (fast shutdown: every session is cut, like a database going away)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGINT if fast else signal.SIGTERM)
        try:
            self.process.wait(timeout=START_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str, database: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def create_database(self) -> str:
        name = f"t_{secrets.token_hex(6)}"
        self.execute(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        with contextlib.suppress(Exception):
            self.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    bindir = find_bindir()
    if bindir is None:
        reason = "PostgreSQL not found (install Debian's postgresql package, or set PG_BINDIR)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{reason}; {REQUIRE_ENV}=1 requires it", pytrace=False)
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="gatewayd-pg-"))
    server = PostgresServer(bindir, root)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database on the session's server; dropped when the test ends."""
    if postgres_server.process is None:
        postgres_server.start()  # a test stopped it and failed before restarting it
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        if postgres_server.process is None:
            postgres_server.start()
        postgres_server.drop_database(name)
