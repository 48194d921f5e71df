from __future__ import annotations

from pathlib import Path

import pytest

from gatewayd.config.paths import (
    default_config_path,
    default_state_dir,
    resolve_config_path,
    resolve_state_dir,
)

HOME = "/home/ada"
SUPPORT = Path(HOME, "Library", "Application Support", "gatewayd")


def test_linux_defaults_follow_xdg() -> None:
    environ = {"HOME": HOME, "XDG_CONFIG_HOME": "/cfg", "XDG_STATE_HOME": "/state"}
    assert default_config_path(environ, "linux") == Path("/cfg/gatewayd/config.yaml")
    assert default_state_dir(environ, "linux") == Path("/state/gatewayd")


def test_linux_defaults_without_xdg_variables_are_under_home() -> None:
    assert default_config_path({"HOME": HOME}, "linux") == Path(HOME, ".config/gatewayd/config.yaml")
    assert default_state_dir({"HOME": HOME}, "linux") == Path(HOME, ".local/state/gatewayd")


def test_relative_xdg_variables_are_ignored() -> None:
    environ = {"HOME": HOME, "XDG_CONFIG_HOME": "cfg", "XDG_STATE_HOME": ""}
    assert default_config_path(environ, "linux") == Path(HOME, ".config/gatewayd/config.yaml")
    assert default_state_dir(environ, "linux") == Path(HOME, ".local/state/gatewayd")


def test_macos_defaults_are_in_application_support() -> None:
    environ = {"HOME": HOME, "XDG_CONFIG_HOME": "/cfg"}
    assert default_config_path(environ, "darwin") == SUPPORT / "config.yaml"
    assert default_state_dir(environ, "darwin") == SUPPORT / "state"


def test_config_path_precedence(tmp_path: Path) -> None:
    environ = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert resolve_config_path(None, environ, "linux") is None  # nothing anywhere: built-in defaults

    default = tmp_path / "xdg" / "gatewayd" / "config.yaml"
    default.parent.mkdir(parents=True)
    default.write_text("")
    assert resolve_config_path(None, environ, "linux") == default

    from_env = {**environ, "GATEWAYD_CONFIG": str(tmp_path / "env.yaml")}
    assert resolve_config_path(None, from_env, "linux") == tmp_path / "env.yaml"  # even though it is missing
    assert resolve_config_path(str(tmp_path / "cli.yaml"), from_env, "linux") == tmp_path / "cli.yaml"


def test_resolved_paths_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_config_path("rel.yaml", {}) == tmp_path / "rel.yaml"
    assert resolve_state_dir(None, {"GATEWAYD_STATE_DIR": "state"}) == tmp_path / "state"
    assert resolve_config_path("~/x.yaml", {}) == Path.home() / "x.yaml"


def test_state_dir_precedence() -> None:
    environ = {"HOME": HOME, "GATEWAYD_STATE_DIR": "/run/gw"}
    assert resolve_state_dir("/tmp/explicit", environ, "linux") == Path("/tmp/explicit")
    assert resolve_state_dir(None, environ, "linux") == Path("/run/gw")
    assert resolve_state_dir(None, {"HOME": HOME}, "linux") == Path(HOME, ".local/state/gatewayd")
    assert resolve_state_dir(None, {"HOME": HOME, "GATEWAYD_STATE_DIR": ""}, "darwin") == SUPPORT / "state"
