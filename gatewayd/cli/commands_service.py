"""``gatewayd install``: render the systemd units or the launchd agent for this installation and put them
where the service manager looks, then say how to enable, reload and watch the service."""

from __future__ import annotations

import getpass
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import click

from gatewayd.cli.output import stdout_console
from gatewayd.config import DEFAULT_PORT
from gatewayd.config.paths import CONFIG_ENV, resolve_state_dir
from gatewayd.errors import GatewaydError
from gatewayd.supervisor.service import (
    DEFAULT_LAUNCHD_LABEL,
    DEFAULT_LAUNCHD_PATH,
    SYSTEMD_SERVICE_NAME,
    SYSTEMD_SOCKET_NAME,
    ReloadStyle,
    ServiceSpec,
    daemon_command,
    gatewayd_executable,
    installed_systemd_version,
    reload_style_for,
    render_launchd_plist,
    render_systemd_service,
    render_systemd_socket,
)
from gatewayd.supervisor.statedir import ensure_private_dir

SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
#: the system service's state directory (the unit makes it writable under ProtectSystem=strict)
SYSTEM_STATE_DIR = Path("/var/lib/gatewayd")
UNIT_FILE_MODE = 0o644


@dataclass(frozen=True)
class UnitFile:
    path: Path
    content: str


@dataclass(frozen=True)
class Installation:
    """What ``install`` writes and what it tells the user to run next."""

    files: tuple[UnitFile, ...]
    #: directories to create (mode 0700), with the user to own them when installing as root
    directories: tuple[Path, ...]
    owner: str | None
    next_steps: tuple[tuple[str, str], ...]  # (what it does, the command)


def _home(environ: Mapping[str, str]) -> Path:
    return Path(environ["HOME"]) if environ.get("HOME") else Path.home()


def _config_path(explicit: str | None, environ: Mapping[str, str]) -> Path | None:
    # Only a config the user named (flag or $GATEWAYD_CONFIG) is pinned in the unit; otherwise the daemon
    # finds its default config itself, in the service's own environment.
    chosen = explicit or environ.get(CONFIG_ENV)
    return Path(chosen).expanduser().absolute() if chosen else None


def plan_systemd(
    *,
    per_user: bool,
    config: str | None,
    state_dir: str | None,
    port: int | None,
    run_as: str | None,
    notify_reload: bool | None,
    environ: Mapping[str, str],
) -> Installation:
    """The systemd units (service and socket) for this installation. Reads only its arguments, the
    environment given and, when ``notify_reload`` is None, ``systemctl --version``."""
    if per_user:
        xdg_config = environ.get("XDG_CONFIG_HOME") or str(_home(environ) / ".config")
        unit_dir = Path(xdg_config) / "systemd" / "user"
        directory = resolve_state_dir(state_dir, environ, "linux")
        owner = None
    else:
        unit_dir = SYSTEM_UNIT_DIR
        directory = Path(state_dir).expanduser().absolute() if state_dir else SYSTEM_STATE_DIR
        owner = run_as or environ.get("SUDO_USER") or getpass.getuser()
    if notify_reload is None:
        style = reload_style_for(installed_systemd_version())
    else:
        style = ReloadStyle.NOTIFY_RELOAD if notify_reload else ReloadStyle.KILL
    spec = ServiceSpec(
        command=daemon_command(gatewayd_executable(), config_path=_config_path(config, environ), port=port),
        state_dir=directory,
        port=port or DEFAULT_PORT,
        user=owner or "gatewayd",
    )
    systemctl = "systemctl --user" if per_user else _sudo("systemctl")
    journalctl = "journalctl --user" if per_user else _sudo("journalctl")
    steps = [
        ("load the new units", f"{systemctl} daemon-reload"),
        ("start now and at boot", f"{systemctl} enable --now {SYSTEMD_SERVICE_NAME}"),
        (
            "or let systemd hold the port (socket activation)",
            f"{systemctl} enable --now {SYSTEMD_SOCKET_NAME} {SYSTEMD_SERVICE_NAME}",
        ),
        ("reload the config without dropping connections", f"{systemctl} reload {SYSTEMD_SERVICE_NAME}"),
        ("status and logs", f"{systemctl} status {SYSTEMD_SERVICE_NAME}; {journalctl} -u gatewayd -f"),
    ]
    if per_user:
        steps.append(("keep it running after you log out", f"loginctl enable-linger {getpass.getuser()}"))
    return Installation(
        files=(
            UnitFile(
                unit_dir / SYSTEMD_SERVICE_NAME,
                render_systemd_service(spec, per_user=per_user, reload_style=style),
            ),
            UnitFile(unit_dir / SYSTEMD_SOCKET_NAME, render_systemd_socket(spec)),
        ),
        directories=(directory,),
        owner=owner,
        next_steps=tuple(steps),
    )


def plan_launchd(
    *, config: str | None, state_dir: str | None, port: int | None, environ: Mapping[str, str]
) -> Installation:
    """The launchd agent for this installation (``~/Library/LaunchAgents/<label>.plist``)."""
    home = _home(environ)
    label = DEFAULT_LAUNCHD_LABEL
    log_dir = home / "Library" / "Logs" / "gatewayd"
    executable = gatewayd_executable()
    search_path = os.pathsep.join(
        dict.fromkeys([str(Path(executable[0]).parent), *DEFAULT_LAUNCHD_PATH.split(os.pathsep)])
    )
    spec = ServiceSpec(
        command=daemon_command(executable, config_path=_config_path(config, environ), port=port),
        state_dir=resolve_state_dir(state_dir, environ, "darwin"),
        port=port or DEFAULT_PORT,
        label=label,
        stdout_path=log_dir / "gatewayd.log",
        stderr_path=log_dir / "gatewayd.err.log",
        path=search_path,
    )
    plist = home / "Library" / "LaunchAgents" / f"{label}.plist"
    domain = f"gui/{os.getuid()}"
    steps = (
        ("load and start it (and at every login)", f"launchctl bootstrap {domain} {plist}"),
        (
            "reload the config without dropping connections",
            f"launchctl kill SIGUSR1 {domain}/{label}",
        ),
        ("restart it", f"launchctl kickstart -k {domain}/{label}"),
        ("status", f"launchctl print {domain}/{label}"),
        ("logs", f"tail -f {spec.stdout_path} {spec.stderr_path}"),
        ("stop and unload it", f"launchctl bootout {domain}/{label}"),
    )
    return Installation(
        files=(UnitFile(plist, render_launchd_plist(spec)),),
        directories=(spec.state_dir, log_dir),
        owner=None,
        next_steps=steps,
    )


def _sudo(command: str) -> str:
    return command if os.geteuid() == 0 else f"sudo {command}"


def apply(installation: Installation) -> None:
    """Create the directories and write the files. Raises GatewaydError with the fix when not allowed."""
    try:
        for directory in installation.directories:
            ensure_private_dir(directory)
            if installation.owner is not None and os.geteuid() == 0:
                shutil.chown(directory, user=installation.owner)
        for unit in installation.files:
            unit.path.parent.mkdir(parents=True, exist_ok=True)
            unit.path.write_text(unit.content)
            unit.path.chmod(UNIT_FILE_MODE)
    except PermissionError as error:
        raise GatewaydError(
            f"cannot write {error.filename}: permission denied; run it with sudo, install a per-user "
            f"service with --user, or see the files with --dry-run"
        ) from error
    except (OSError, LookupError) as error:
        raise GatewaydError(f"install failed: {error}") from error


def format_files(installation: Installation) -> str:
    return "\n".join(f"# {unit.path}\n{unit.content}" for unit in installation.files)


def format_next_steps(installation: Installation, *, dry_run: bool) -> str:
    lines: list[str] = []
    if dry_run:
        lines.append("Nothing was written (--dry-run). Without it, install would write:")
        lines += [f"  {unit.path}" for unit in installation.files]
        lines += [f"  {directory}/ (mode 0700)" for directory in installation.directories]
    else:
        lines.append("Wrote:")
        lines += [f"  {unit.path}" for unit in installation.files]
    lines.append("Next:")
    for what, command in installation.next_steps:
        lines += [f"  # {what}", f"  {command}"]
    return "\n".join(lines)


@click.command()
@click.option("--systemd", is_flag=True, help="Install systemd units.")
@click.option("--launchd", is_flag=True, help="Install a launchd agent (macOS).")
@click.option("--user", "per_user", is_flag=True, help="systemd: a per-user service instead of a system one.")
@click.option("--dry-run", is_flag=True, help="Print the files and commands; write nothing.")
@click.option("--config", type=click.Path(dir_okay=False), help="Config file the service runs with.")
@click.option("--state-dir", type=click.Path(file_okay=False), help="State directory of the service.")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (overrides the config; the socket unit's).")
@click.option("--run-as", metavar="USER", help="systemd system service: the user it runs as.")
@click.option(
    "--notify-reload/--kill-reload",
    default=None,
    help="systemd: Type=notify-reload (systemd >= 253) or ExecReload=kill. Default: by systemd's version.",
)
def install(
    systemd: bool,
    launchd: bool,
    per_user: bool,
    dry_run: bool,
    config: str | None,
    state_dir: str | None,
    port: int | None,
    run_as: str | None,
    notify_reload: bool | None,
) -> None:
    """Install gatewayd as a systemd service or a launchd agent."""
    if systemd == launchd:
        raise click.UsageError("choose one of --systemd or --launchd")
    if per_user and not systemd:
        raise click.UsageError("--user applies to --systemd only (a launchd agent is always per user)")
    if run_as is not None and (not systemd or per_user):
        raise click.UsageError("--run-as applies to a systemd system service only")
    environ = dict(os.environ)
    if systemd:
        installation = plan_systemd(
            per_user=per_user,
            config=config,
            state_dir=state_dir,
            port=port,
            run_as=run_as,
            notify_reload=notify_reload,
            environ=environ,
        )
    else:
        installation = plan_launchd(config=config, state_dir=state_dir, port=port, environ=environ)
    console = stdout_console()
    if dry_run:
        console.out(format_files(installation), highlight=False)
    else:
        apply(installation)
    console.out(format_next_steps(installation, dry_run=dry_run), highlight=False)


COMMANDS: list[click.Command] = [install]
