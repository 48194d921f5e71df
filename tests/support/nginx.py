"""Debian's nginx as the load balancer in front of several gatewayd processes, for the fleet tests.

    with running_nginx(tmp_path / "nginx", [a.port, b.port]) as lb:   # round robin over both
        httpx.get(lb.url("/v1/models"))

nginx runs in the foreground (``daemon off``) from a config written to a temporary directory: its pid file,
logs and temporary files live there, it listens on a free loopback port, and it needs no root (as root, as
in CI containers, its workers keep the invoking user so they can use the temporary directory). The
upstreams are balanced round robin with keep-alive connections, as a production config does
(packaging/fleet/nginx.conf); a request an instance cannot take before it answers (connection refused,
502, 503) goes to the next one.

``running_fleet`` starts the gatewayd processes themselves and nginx in front of them.

Without nginx the tests that need it skip saying how to install it, or fail when GATEWAYD_REQUIRE_FLEET is
set (``.ci/run`` sets it: CI never skips them silently).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.process import GatewaydProcess, free_port, wait_for

REQUIRE_ENV = "GATEWAYD_REQUIRE_FLEET"
NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/bin/nginx")
READY_TIMEOUT_SECONDS = 20.0
STOP_TIMEOUT_SECONDS = 10.0


def nginx_binary() -> str:
    """nginx's path; skips the test (fails it with GATEWAYD_REQUIRE_FLEET=1) when it is not installed."""
    found = shutil.which("nginx") or next((p for p in NGINX_CANDIDATES if Path(p).exists()), None)
    if found is not None:
        return found
    reason = "nginx is not installed (apt-get install nginx-light): the fleet tests need a load balancer"
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{reason}; {REQUIRE_ENV} is set, so this is a failure, not a skip")
    pytest.skip(reason)


@dataclass
class Nginx:
    port: int
    directory: Path
    process: subprocess.Popen[bytes]

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def logs(self) -> str:
        return (self.directory / "error.log").read_text(errors="replace")


def nginx_config(directory: Path, port: int, upstream_ports: Sequence[int]) -> str:
    servers = "\n".join(
        f"        server 127.0.0.1:{upstream} max_fails=1 fail_timeout=2s;" for upstream in upstream_ports
    )
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {directory / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}daemon off;
worker_processes 1;
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} warn;
events {{ worker_connections 1024; }}
http {{
    access_log {directory / "access.log"};
{temp}
    upstream gatewayd {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 16m;
        location / {{
            proxy_pass http://gatewayd;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 1800s;
            proxy_next_upstream error timeout http_502 http_503;
        }}
    }}
}}
"""


@contextlib.contextmanager
def running_nginx(directory: Path, upstream_ports: Sequence[int]) -> Iterator[Nginx]:
    """nginx on a free loopback port balancing over ``upstream_ports``; ready once it answers /healthz
    through one of them (so start the upstreams first). Stopped (SIGQUIT, then SIGKILL) on exit."""
    binary = nginx_binary()
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = directory / "nginx.conf"
    config.write_text(nginx_config(directory, port, upstream_ports))
    command = [binary, "-p", str(directory), "-c", str(config), "-e", str(directory / "error.log")]
    with (directory / "stderr.log").open("ab") as stderr:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)
    nginx = Nginx(port, directory, process)
    try:

        def ready() -> bool:
            if process.poll() is not None:
                output = (directory / "stderr.log").read_text(errors="replace")
                raise AssertionError(f"nginx exited with {process.returncode}:\n{output}\n{nginx.logs()}")
            try:
                return httpx.get(nginx.url("/healthz"), timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=READY_TIMEOUT_SECONDS, what=f"nginx on port {port}")
        yield nginx
    finally:
        if process.poll() is None:
            process.terminate()  # fast shutdown: the test is over
            try:
                process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass
class Fleet:
    """gatewayd instances behind nginx."""

    nginx: Nginx
    instances: list[GatewaydProcess]

    def url(self, path: str = "/") -> str:
        return self.nginx.url(path)


@contextlib.contextmanager
def running_fleet(
    tmp_path: Path,
    configs: Sequence[Path],
    *,
    state_dirs: Sequence[Path] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Fleet]:
    """One real ``gatewayd run`` per config (``state_dirs``: one each; by default one shared directory, so
    the instances share one SQLite store), all ready, and nginx in front of them."""
    nginx_binary()  # skip (or fail) before starting anything
    shared = tmp_path / "state"
    dirs = list(state_dirs) if state_dirs is not None else [shared] * len(configs)
    with contextlib.ExitStack() as stack:
        instances = [
            stack.enter_context(
                GatewaydProcess.gatewayd(tmp_path, config, state_dir=state, name=f"gw{i}", env=env)
            )
            for i, (config, state) in enumerate(zip(configs, dirs, strict=True))
        ]
        for instance in instances:
            instance.wait_ready()
        nginx = stack.enter_context(running_nginx(tmp_path / "nginx", [gw.port for gw in instances]))
        yield Fleet(nginx, instances)
