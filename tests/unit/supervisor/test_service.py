from __future__ import annotations

import getpass
import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gatewayd.config import ServerSettings, ShutdownSettings
from gatewayd.supervisor.service import (
    DEFAULT_LAUNCHD_LABEL,
    ReloadStyle,
    ServiceManager,
    ServiceSpec,
    daemon_command,
    detect_service_manager,
    gatewayd_executable,
    installed_systemd_version,
    reload_style_for,
    render_launchd_plist,
    render_systemd_service,
    render_systemd_socket,
    systemd_quote,
)

PID = 4321
REPO = Path(__file__).resolve().parents[3]
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")

# -- detection --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, ServiceManager.NONE),
        ({"SYSTEMD_EXEC_PID": str(PID)}, ServiceManager.SYSTEMD),
        ({"GATEWAYD_SUPERVISOR": "systemd"}, ServiceManager.SYSTEMD),
        ({"GATEWAYD_SUPERVISOR": "launchd"}, ServiceManager.LAUNCHD),
        ({"XPC_SERVICE_NAME": DEFAULT_LAUNCHD_LABEL}, ServiceManager.LAUNCHD),
        (
            {"XPC_SERVICE_NAME": "com.example.gw", "GATEWAYD_LAUNCHD_LABEL": "com.example.gw"},
            ServiceManager.LAUNCHD,
        ),
        # the marker wins over anything inherited, both ways
        ({"GATEWAYD_SUPERVISOR": "none", "SYSTEMD_EXEC_PID": str(PID)}, ServiceManager.NONE),
        ({"GATEWAYD_SUPERVISOR": " SystemD "}, ServiceManager.SYSTEMD),
        ({"GATEWAYD_SUPERVISOR": "upstart"}, ServiceManager.NONE),
    ],
)
def test_detection_believes_only_signals_meant_for_this_process(
    environ: dict[str, str], expected: ServiceManager
) -> None:
    assert detect_service_manager(environ, PID) is expected


@pytest.mark.parametrize(
    "environ",
    [
        # a shell opened from a systemd-managed desktop session or a CI job's service
        {"INVOCATION_ID": "a3f1c0de", "JOURNAL_STREAM": "8:12345", "MANAGERPID": "1234"},
        # SYSTEMD_EXEC_PID of the service that started our parent
        {"SYSTEMD_EXEC_PID": "1", "INVOCATION_ID": "a3f1c0de", "NOTIFY_SOCKET": "/run/systemd/notify"},
        # a terminal app on macOS, and a desktop app that launched us
        {"XPC_SERVICE_NAME": "0"},
        {"XPC_SERVICE_NAME": "application.com.microsoft.VSCode.81234567.81234573"},
        # our default label, while this installation runs under another label
        {"XPC_SERVICE_NAME": DEFAULT_LAUNCHD_LABEL, "GATEWAYD_LAUNCHD_LABEL": "com.example.gw"},
    ],
)
def test_inherited_service_variables_do_not_count(environ: dict[str, str]) -> None:
    assert detect_service_manager(environ, PID) is ServiceManager.NONE


# -- helpers ----------------------------------------------------------------------------------------------


def test_reload_style_follows_the_systemd_version() -> None:
    assert reload_style_for(None) is ReloadStyle.KILL
    assert reload_style_for(252) is ReloadStyle.KILL
    assert reload_style_for(253) is ReloadStyle.NOTIFY_RELOAD
    assert reload_style_for(256) is ReloadStyle.NOTIFY_RELOAD


@pytest.mark.skipif(shutil.which("systemctl") is None, reason="systemctl is not installed")
def test_the_installed_systemd_version_is_read() -> None:
    version = installed_systemd_version()
    assert version is not None
    assert version >= 200


def test_the_executable_is_the_script_beside_python_or_python_dash_m(tmp_path: Path) -> None:
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    assert gatewayd_executable(str(python)) == (str(python), "-m", "gatewayd")
    script = tmp_path / "bin" / "gatewayd"
    script.write_text("#!/bin/sh\n")
    assert gatewayd_executable(str(python)) == (str(python), "-m", "gatewayd")  # not executable
    script.chmod(0o755)
    assert gatewayd_executable(str(python)) == (str(script),)


def test_daemon_command_runs_in_the_foreground_with_the_given_overrides() -> None:
    assert daemon_command(("/bin/gatewayd",)) == ("/bin/gatewayd", "run")
    assert daemon_command(("py", "-m", "gatewayd"), config_path=Path("/etc/g.yaml"), port=9000) == (
        "py",
        "-m",
        "gatewayd",
        "run",
        "--config",
        "/etc/g.yaml",
        "--port",
        "9000",
    )


def test_systemd_quoting() -> None:
    assert systemd_quote("/usr/bin/gatewayd") == "/usr/bin/gatewayd"
    assert systemd_quote("/srv/my models/50%") == '"/srv/my models/50%%"'
    assert systemd_quote("$HOME/x", exec_line=True) == "$$HOME/x"
    assert systemd_quote("$HOME/x") == "$HOME/x"
    assert systemd_quote('a"b\\c') == '"a\\"b\\\\c"'
    assert systemd_quote("it's") == '"it\'s"'
    assert systemd_quote("") == '""'
    assert systemd_quote("A=b", always=True) == '"A=b"'


# -- rendering --------------------------------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """A unit file as {section: [(key, value), ...]}, keeping repeated keys in order."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for line in text.splitlines():
        if not line.strip() or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        assert current is not None, f"key outside a section: {line!r}"
        key, _, value = line.partition("=")
        current.append((key, value))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [value for name, value in unit[section] if name == key]


def single(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"{section}.{key}: {found}"
    return found[0]


def spec(tmp_path: Path, **overrides: object) -> ServiceSpec:
    settings: dict[str, object] = {
        "command": daemon_command((sys.executable, "-m", "gatewayd"), config_path=tmp_path / "config.yaml"),
        "state_dir": tmp_path / "state",
        "port": 8484,
        "user": getpass.getuser(),
        "stdout_path": tmp_path / "logs" / "out.log",
        "stderr_path": tmp_path / "logs" / "err.log",
    }
    settings.update(overrides)
    return ServiceSpec(**settings)  # type: ignore[arg-type]


def test_the_system_service_has_every_setting_the_run_loop_relies_on(tmp_path: Path) -> None:
    unit = parse_unit(
        render_systemd_service(spec(tmp_path), per_user=False, reload_style=ReloadStyle.NOTIFY_RELOAD)
    )
    service = dict(unit["Service"])
    assert service["Type"] == "notify-reload"
    assert service["ReloadSignal"] == "SIGUSR1"
    assert "ExecReload" not in service
    assert service["NotifyAccess"] == "main"
    assert single(unit, "Service", "ExecStart") == (
        f"{sys.executable} -m gatewayd run --config {tmp_path / 'config.yaml'}"
    )
    assert service["User"] == getpass.getuser()
    assert values(unit, "Service", "Environment") == [
        "GATEWAYD_SUPERVISOR=systemd",
        f'"GATEWAYD_STATE_DIR={tmp_path / "state"}"',
    ]
    shutdown = ShutdownSettings()
    assert int(service["TimeoutStopSec"]) > shutdown.force_exit_seconds > shutdown.drain_timeout_seconds
    assert service["KillMode"] == "mixed"
    assert service["Restart"] == "on-failure"
    assert service["RestartSec"] == "1"
    assert service["RestartPreventExitStatus"] == "78"
    assert service["WatchdogSec"] == "30"
    assert service["NoNewPrivileges"] == "yes"
    assert service["PrivateTmp"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"] == str(tmp_path / "state")
    assert dict(unit["Install"]) == {"WantedBy": "multi-user.target"}


def test_the_pre_253_variant_reloads_with_kill(tmp_path: Path) -> None:
    unit = parse_unit(render_systemd_service(spec(tmp_path), per_user=False, reload_style=ReloadStyle.KILL))
    service = dict(unit["Service"])
    assert service["Type"] == "notify"
    assert service["ExecReload"] == "/bin/kill -USR1 $MAINPID"
    assert "ReloadSignal" not in service


def test_the_user_service_has_no_user_and_no_namespace_hardening(tmp_path: Path) -> None:
    unit = parse_unit(
        render_systemd_service(spec(tmp_path), per_user=True, reload_style=ReloadStyle.NOTIFY_RELOAD)
    )
    service = dict(unit["Service"])
    assert "User" not in service
    assert "ProtectSystem" not in service
    assert "PrivateTmp" not in service
    assert service["NoNewPrivileges"] == "yes"
    assert service["RestartPreventExitStatus"] == "78"
    assert "GATEWAYD_SUPERVISOR=systemd" in values(unit, "Service", "Environment")
    assert dict(unit["Install"]) == {"WantedBy": "default.target"}
    assert "After" not in dict(unit["Unit"])  # network-online.target does not exist in a user manager


def test_the_socket_listens_on_loopback_with_the_servers_backlog(tmp_path: Path) -> None:
    unit = parse_unit(render_systemd_socket(spec(tmp_path, port=9123)))
    assert dict(unit["Socket"]) == {
        "ListenStream": "127.0.0.1:9123",
        "Backlog": str(ServerSettings().backlog),
        "NoDelay": "true",
    }
    assert dict(unit["Install"]) == {"WantedBy": "sockets.target"}
    ipv6 = parse_unit(render_systemd_socket(spec(tmp_path, host="::1")))
    assert dict(ipv6["Socket"])["ListenStream"] == "[::1]:8484"


def test_a_user_name_that_is_not_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a valid user name"):
        render_systemd_service(
            spec(tmp_path, user="bob\nExecStartPre=/bin/rm"), per_user=False, reload_style=ReloadStyle.KILL
        )


def test_the_launchd_plist_parses_with_every_key(tmp_path: Path) -> None:
    odd_dir = tmp_path / "Tom & Jerry <models>"
    rendered = render_launchd_plist(
        spec(tmp_path, state_dir=odd_dir, command=("/opt/gw & co/gatewayd", "run"))
    )
    plist = plistlib.loads(rendered.encode())
    assert plist == {
        "Label": DEFAULT_LAUNCHD_LABEL,
        "ProgramArguments": ["/opt/gw & co/gatewayd", "run"],
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False, "Crashed": True},
        "ExitTimeOut": 30,
        "ThrottleInterval": 5,
        "ProcessType": "Interactive",
        "StandardOutPath": str(tmp_path / "logs" / "out.log"),
        "StandardErrorPath": str(tmp_path / "logs" / "err.log"),
        "EnvironmentVariables": {
            "GATEWAYD_SUPERVISOR": "launchd",
            "GATEWAYD_STATE_DIR": str(odd_dir),
            "PATH": "/usr/local/bin:/opt/homebrew/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        },
    }
    assert plist["ExitTimeOut"] > ShutdownSettings().force_exit_seconds
    with pytest.raises(ValueError, match="stdout_path"):
        render_launchd_plist(spec(tmp_path, stdout_path=None))


# -- systemd-analyze --------------------------------------------------------------------------------------

# systemd < 253 does not know these; everything else it says is a failure
PRE_253_WARNINGS = ("Failed to parse service type, ignoring: notify-reload", "Unknown key 'ReloadSignal'")


def verify(directory: Path, *names: str, per_user: bool = False) -> None:
    assert SYSTEMD_ANALYZE is not None
    runtime = directory / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    command = [
        SYSTEMD_ANALYZE,
        *(["--user"] if per_user else []),
        "verify",
        *(str(directory / n) for n in names),
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_COLOR": "0"},
        check=False,
    )
    problems = [line for line in result.stderr.splitlines() if not any(w in line for w in PRE_253_WARNINGS)]
    assert result.returncode == 0, result.stderr
    assert problems == [], result.stderr


@needs_systemd_analyze
@pytest.mark.parametrize("per_user", [False, True])
@pytest.mark.parametrize("style", list(ReloadStyle))
def test_systemd_analyze_accepts_the_rendered_units(
    tmp_path: Path, per_user: bool, style: ReloadStyle
) -> None:
    # an executable path with a space and a '%' proves the quoting reaches systemd intact
    odd_bin = tmp_path / "odd bin 100%"
    odd_bin.mkdir()
    (odd_bin / "python").symlink_to(sys.executable)
    rendered = spec(
        tmp_path,
        command=daemon_command((str(odd_bin / "python"), "-m", "gatewayd"), port=8484),
        state_dir=tmp_path / "state dir",
    )
    (tmp_path / "gatewayd.service").write_text(
        render_systemd_service(rendered, per_user=per_user, reload_style=style)
    )
    (tmp_path / "gatewayd.socket").write_text(render_systemd_socket(rendered))
    verify(tmp_path, "gatewayd.socket", "gatewayd.service", per_user=per_user)


@needs_systemd_analyze
def test_systemd_analyze_catches_a_missing_executable(tmp_path: Path) -> None:
    # guards the test above: verify does check ExecStart, so a mangled path would fail it
    rendered = spec(tmp_path, command=(str(tmp_path / "no such" / "gatewayd"), "run"))
    (tmp_path / "gatewayd.service").write_text(
        render_systemd_service(rendered, per_user=False, reload_style=ReloadStyle.KILL)
    )
    with pytest.raises(AssertionError, match="is not executable"):
        verify(tmp_path, "gatewayd.service")


# -- the reference copies under packaging/ ----------------------------------------------------------------


def test_the_reference_copies_in_packaging_match_the_templates() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "packaging" / "render.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
