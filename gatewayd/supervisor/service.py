"""The service manager: which one supervises this process, and the unit files that make it do so.

Detection never trusts what any child inherits. systemd's INVOCATION_ID, JOURNAL_STREAM and MANAGERPID
leak into every shell a desktop session or CI job starts, and launchd's XPC_SERVICE_NAME into everything a
desktop app launches; believing them makes gatewayd exit "for the supervisor to restart it" with nobody
there to do so. So: systemd only if SYSTEMD_EXEC_PID names this very process, launchd only if
XPC_SERVICE_NAME is our own label, or, either way, the ``GATEWAYD_SUPERVISOR`` marker that the shipped units
set (it also covers a respawned child, whose PID systemd never started).

The unit templates live in ``gatewayd/supervisor/templates`` (``string.Template``, ``${name}``
placeholders) so that an installed gatewayd can render them; ``render_*`` fill them in.
"""

from __future__ import annotations

import enum
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template
from xml.sax.saxutils import escape

from gatewayd.config import DEFAULT_HOST, ServerSettings
from gatewayd.config.paths import STATE_DIR_ENV

#: set by the shipped unit files: "systemd" or "launchd" ("none" forces stand-alone behaviour)
SUPERVISOR_MARKER_ENV = "GATEWAYD_SUPERVISOR"
LAUNCHD_LABEL_ENV = "GATEWAYD_LAUNCHD_LABEL"
DEFAULT_LAUNCHD_LABEL = "io.gatewayd.gatewayd"

#: first systemd release with Type=notify-reload and ReloadSignal=
NOTIFY_RELOAD_SYSTEMD_VERSION = 253
#: how long ``installed_systemd_version`` waits for ``systemctl --version``
SYSTEMCTL_VERSION_TIMEOUT_SECONDS = 5.0

#: PATH for the launchd job (launchd's own is minimal); install puts gatewayd's own directory first
DEFAULT_LAUNCHD_PATH = "/usr/local/bin:/opt/homebrew/bin:/usr/bin:/bin:/usr/sbin:/sbin"

SYSTEMD_SERVICE_NAME = "gatewayd.service"
SYSTEMD_SOCKET_NAME = "gatewayd.socket"


class ServiceManager(enum.Enum):
    NONE = "none"  # started by hand, by a script, or by anything we cannot vouch for
    SYSTEMD = "systemd"  # the main process of a systemd service (or the child it handed that role to)
    LAUNCHD = "launchd"  # a launchd job with our label; restart in process only (launchd kills fresh PIDs)


def launchd_label(environ: Mapping[str, str]) -> str:
    return environ.get(LAUNCHD_LABEL_ENV) or DEFAULT_LAUNCHD_LABEL


def detect_service_manager(environ: Mapping[str, str], pid: int) -> ServiceManager:
    """Who supervises process ``pid`` given its environment. Pure; see the module docstring for why only
    these signals count. An unknown marker value is ignored."""
    marker = environ.get(SUPERVISOR_MARKER_ENV, "").strip().lower()
    if marker in {manager.value for manager in ServiceManager}:
        return ServiceManager(marker)
    if environ.get("SYSTEMD_EXEC_PID") == str(pid):
        return ServiceManager.SYSTEMD
    if environ.get("XPC_SERVICE_NAME") == launchd_label(environ):
        return ServiceManager.LAUNCHD
    return ServiceManager.NONE


class ReloadStyle(enum.Enum):
    NOTIFY_RELOAD = "notify-reload"  # systemd >= 253: Type=notify-reload, ReloadSignal=SIGUSR1
    KILL = "kill"  # older systemd: Type=notify, ExecReload sends SIGUSR1 (systemctl reload returns at once)


_RELOAD_LINES = {
    ReloadStyle.NOTIFY_RELOAD: "Type=notify-reload\nReloadSignal=SIGUSR1",
    ReloadStyle.KILL: "Type=notify\nExecReload=/bin/kill -USR1 $MAINPID",
}


def reload_style_for(systemd_version: int | None) -> ReloadStyle:
    """notify-reload where systemd supports it; the kill variant when the version is older or unknown."""
    if systemd_version is not None and systemd_version >= NOTIFY_RELOAD_SYSTEMD_VERSION:
        return ReloadStyle.NOTIFY_RELOAD
    return ReloadStyle.KILL


def installed_systemd_version() -> int | None:
    """The major version ``systemctl --version`` reports, or None if systemctl is missing or says nothing
    parseable. Runs a subprocess (at most ``SYSTEMCTL_VERSION_TIMEOUT_SECONDS``)."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return None
    try:
        output = subprocess.run(
            [systemctl, "--version"],
            capture_output=True,
            text=True,
            timeout=SYSTEMCTL_VERSION_TIMEOUT_SECONDS,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.match(r"systemd (\d+)", output)
    return int(match.group(1)) if match else None


def gatewayd_executable(python: str = sys.executable) -> tuple[str, ...]:
    """The command that runs this very installation of gatewayd: the ``gatewayd`` script installed next to
    ``python`` if there is one, else ``python -m gatewayd``. Paths are kept as given (a virtualenv's python
    must not be resolved to the interpreter it links to)."""
    script = Path(python).parent / "gatewayd"
    if script.is_file() and os.access(script, os.X_OK):
        return (str(script),)
    return (python, "-m", "gatewayd")


def daemon_command(
    executable: Sequence[str], *, config_path: Path | None = None, port: int | None = None
) -> tuple[str, ...]:
    """The argv a service manager runs: ``gatewayd run`` in the foreground, with the given overrides."""
    command = [*executable, "run"]
    if config_path is not None:
        command += ["--config", str(config_path)]
    if port is not None:
        command += ["--port", str(port)]
    return tuple(command)


@dataclass(frozen=True)
class ServiceSpec:
    """Everything a unit file needs. Paths must be absolute: service managers do not know our cwd."""

    #: argv that runs the daemon in the foreground (see ``daemon_command``)
    command: tuple[str, ...]
    state_dir: Path
    #: the port the socket unit listens on
    port: int
    host: str = DEFAULT_HOST
    #: User= of a system unit; ignored by per-user units and launchd
    user: str = "gatewayd"
    label: str = DEFAULT_LAUNCHD_LABEL
    #: launchd's StandardOutPath / StandardErrorPath
    stdout_path: Path | None = None
    stderr_path: Path | None = None
    #: PATH for the launchd job
    path: str = DEFAULT_LAUNCHD_PATH


def _template(name: str) -> Template:
    return Template(resources.files("gatewayd.supervisor").joinpath("templates", name).read_text())


def render_systemd_service(spec: ServiceSpec, *, per_user: bool, reload_style: ReloadStyle) -> str:
    """``gatewayd.service`` for a system manager (runs as ``spec.user``, hardened) or a user manager."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*\$?", spec.user):
        raise ValueError(f"not a valid user name for User=: {spec.user!r}")
    template = _template("gatewayd.user.service" if per_user else "gatewayd.service")
    executable, *args = spec.command
    return template.substitute(
        reload=_RELOAD_LINES[reload_style],
        executable=systemd_quote(executable, exec_line=True),
        args=" ".join(systemd_quote(arg, exec_line=True) for arg in args),
        user=spec.user,
        state_dir=systemd_quote(str(spec.state_dir)),
        state_dir_environment=systemd_quote(f"{STATE_DIR_ENV}={spec.state_dir}", always=True),
    )


def render_systemd_socket(spec: ServiceSpec) -> str:
    """``gatewayd.socket``: systemd listens on ``spec.host:spec.port`` and passes the socket (LISTEN_FDS)."""
    host = f"[{spec.host}]" if ":" in spec.host else spec.host
    return _template("gatewayd.socket").substitute(
        listen=systemd_quote(f"{host}:{spec.port}"), backlog=ServerSettings().backlog
    )


def render_launchd_plist(spec: ServiceSpec) -> str:
    """The launchd agent ``<label>.plist``. Needs ``stdout_path`` and ``stderr_path``."""
    if spec.stdout_path is None or spec.stderr_path is None:
        raise ValueError("a launchd plist needs stdout_path and stderr_path")
    arguments = "\n".join(f"        <string>{escape(arg)}</string>" for arg in spec.command)
    return _template("io.gatewayd.gatewayd.plist").substitute(
        label=escape(spec.label),
        program_arguments=arguments,
        stdout_path=escape(str(spec.stdout_path)),
        stderr_path=escape(str(spec.stderr_path)),
        state_dir=escape(str(spec.state_dir)),
        path=escape(spec.path),
    )


def systemd_quote(word: str, *, exec_line: bool = False, always: bool = False) -> str:
    """``word`` as one systemd unit-file word: ``%`` specifiers escaped, double-quoted (with C escapes) when
    it contains whitespace, quotes or backslashes. ``exec_line`` also escapes ``$`` (ExecStart= expands
    environment variables)."""
    word = word.replace("%", "%%")
    if exec_line:
        word = word.replace("$", "$$")
    if always or not word or re.search(r"[\s\"'\\;]", word):
        escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        return f'"{escaped}"'
    return word
