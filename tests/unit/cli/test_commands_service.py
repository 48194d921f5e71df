from __future__ import annotations

import os
import plistlib
import stat
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gatewayd.cli.commands_service import COMMANDS, install


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


def run(home: Path, *args: str) -> tuple[int, str]:
    environ = {"HOME": str(home), "XDG_CONFIG_HOME": None, "XDG_STATE_HOME": None}
    environ |= {"GATEWAYD_CONFIG": None, "GATEWAYD_STATE_DIR": None, "SUDO_USER": None}
    result = CliRunner().invoke(install, list(args), env=environ, catch_exceptions=False)
    return result.exit_code, result.output


def files_under(path: Path) -> list[str]:
    return sorted(str(item.relative_to(path)) for item in path.rglob("*"))


def test_install_is_registered() -> None:
    assert install in COMMANDS


def test_systemd_user_install_writes_both_units_and_says_what_to_run(home: Path) -> None:
    code, output = run(
        home, "--systemd", "--user", "--kill-reload", "--config", "conf/gw.yaml", "--port", "9001"
    )
    assert code == 0, output
    unit_dir = home / ".config" / "systemd" / "user"
    service = (unit_dir / "gatewayd.service").read_text()
    assert stat.S_IMODE((unit_dir / "gatewayd.service").stat().st_mode) == 0o644
    config = Path("conf/gw.yaml").absolute()
    assert f" run --config {config} --port 9001\n" in service
    assert "ExecReload=/bin/kill -USR1 $MAINPID" in service
    assert f'Environment="GATEWAYD_STATE_DIR={home / ".local" / "state" / "gatewayd"}"' in service
    assert "ListenStream=127.0.0.1:9001" in (unit_dir / "gatewayd.socket").read_text()
    state_dir = home / ".local" / "state" / "gatewayd"
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    for command in (
        "systemctl --user daemon-reload",
        "systemctl --user enable --now gatewayd.service",
        "systemctl --user enable --now gatewayd.socket gatewayd.service",
        "systemctl --user reload gatewayd.service",
        "journalctl --user -u gatewayd -f",
        "loginctl enable-linger",
    ):
        assert command in output


def test_notify_reload_can_be_forced(home: Path) -> None:
    code, output = run(home, "--systemd", "--user", "--notify-reload")
    assert code == 0, output
    service = (home / ".config" / "systemd" / "user" / "gatewayd.service").read_text()
    assert "Type=notify-reload\nReloadSignal=SIGUSR1\n" in service
    assert "--config" not in service  # no config named: the daemon finds its default itself


def test_dry_run_prints_the_files_and_writes_nothing(home: Path, tmp_path: Path) -> None:
    state_dir = tmp_path / "srv state"
    code, output = run(home, "--systemd", "--dry-run", "--run-as", "alice", "--state-dir", str(state_dir))
    assert code == 0, output
    assert files_under(home) == []
    assert not state_dir.exists()
    assert "# /etc/systemd/system/gatewayd.service\n" in output
    assert "User=alice\n" in output
    assert f'ReadWritePaths="{state_dir}"\n' in output
    assert "# /etc/systemd/system/gatewayd.socket\n" in output
    assert "Nothing was written (--dry-run)" in output
    assert "systemctl reload gatewayd.service" in output
    assert "WantedBy=multi-user.target" in output


def test_launchd_install_writes_a_valid_agent(home: Path) -> None:
    code, output = run(home, "--launchd", "--port", "9002")
    assert code == 0, output
    plist_path = home / "Library" / "LaunchAgents" / "io.gatewayd.gatewayd.plist"
    plist = plistlib.loads(plist_path.read_bytes())
    assert plist["Label"] == "io.gatewayd.gatewayd"
    assert plist["ProgramArguments"][-3:] == ["run", "--port", "9002"]
    assert plist["EnvironmentVariables"]["GATEWAYD_SUPERVISOR"] == "launchd"
    state_dir = home / "Library" / "Application Support" / "gatewayd" / "state"
    assert plist["EnvironmentVariables"]["GATEWAYD_STATE_DIR"] == str(state_dir)
    assert plist["EnvironmentVariables"]["PATH"].startswith(str(Path(plist["ProgramArguments"][0]).parent))
    assert plist["StandardOutPath"] == str(home / "Library" / "Logs" / "gatewayd" / "gatewayd.log")
    assert (home / "Library" / "Logs" / "gatewayd").is_dir()
    assert state_dir.is_dir()
    domain = f"gui/{os.getuid()}"
    assert f"launchctl bootstrap {domain} {plist_path}" in output
    assert f"launchctl kill SIGUSR1 {domain}/io.gatewayd.gatewayd" in output
    assert f"launchctl bootout {domain}/io.gatewayd.gatewayd" in output


def test_the_executable_is_this_installation(home: Path) -> None:
    code, output = run(home, "--launchd", "--dry-run")
    assert code == 0, output
    beside_python = Path(sys.executable).parent / "gatewayd"
    expected = str(beside_python) if beside_python.exists() else sys.executable
    assert f"<string>{expected}</string>" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "choose one of --systemd or --launchd"),
        (("--launchd", "--user"), "--user applies to --systemd only"),
        (("--systemd", "--user", "--run-as", "bob"), "--run-as applies to a systemd system service only"),
        (("--systemd", "--launchd"), "choose one of --systemd or --launchd"),
    ],
)
def test_wrong_combinations_are_usage_errors(home: Path, args: tuple[str, ...], message: str) -> None:
    result = CliRunner().invoke(install, list(args), env={"HOME": str(home)})
    assert result.exit_code == 2
    assert message in result.output
    assert files_under(home) == []
