from __future__ import annotations

import stat
from collections.abc import Mapping
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from gatewayd.cli.main import cli
from gatewayd.config.loader import template_text
from tests.unit.config.helpers import write_config


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str | None]:
    """An environment with no config anywhere and no overrides: the default path is under tmp_path."""
    return {
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "GATEWAYD_CONFIG": None,
        "GATEWAYD_HOST": None,
        "GATEWAYD_PORT": None,
        "FORCE_COLOR": None,
        "TTY_COMPATIBLE": None,
    }


def run(args: list[str], environ: Mapping[str, str | None]) -> Result:
    return CliRunner().invoke(cli, args, env=environ)


VALID = """
backends:
  - id: a
    url: http://127.0.0.1:8080
routes:
  - model: m
    targets: [a]
"""


def test_check_reports_a_valid_file(tmp_path: Path, environ: dict[str, str | None]) -> None:
    path = write_config(tmp_path, VALID)
    result = run(["check", "--config", str(path)], environ)
    assert (result.exit_code, result.stdout, result.stderr) == (0, f"ok: {path}: 1 backend, 1 route\n", "")


def test_check_without_any_config_uses_the_defaults(environ: dict[str, str | None]) -> None:
    result = run(["check"], environ)
    assert (result.exit_code, result.stdout) == (0, "ok: built-in defaults: 0 backends, 0 routes\n")


def test_check_finds_the_config_from_the_environment(tmp_path: Path, environ: dict[str, str | None]) -> None:
    path = write_config(tmp_path, VALID)
    result = run(["check"], {**environ, "GATEWAYD_CONFIG": str(path)})
    assert (result.exit_code, result.stdout) == (0, f"ok: {path}: 1 backend, 1 route\n")


def test_check_finds_the_config_at_the_default_path(tmp_path: Path, environ: dict[str, str | None]) -> None:
    directory = tmp_path / "xdg" / "gatewayd"
    directory.mkdir(parents=True)
    path = write_config(directory, VALID)
    result = run(["check"], environ)
    assert (result.exit_code, result.stdout) == (0, f"ok: {path}: 1 backend, 1 route\n")


def test_check_prints_override_warnings_and_passes(environ: dict[str, str | None]) -> None:
    result = run(["check"], {**environ, "GATEWAYD_PORT": "eighty"})
    assert result.exit_code == 0
    assert result.stderr == (
        "warning: GATEWAYD_PORT: server.port: 'eighty' is not a port number from 0 to 65535; ignored "
        "(set a number or unset GATEWAYD_PORT)\n"
    )


def test_check_fails_with_every_problem_and_its_line(tmp_path: Path, environ: dict[str, str | None]) -> None:
    path = write_config(tmp_path, VALID.replace("targets: [a]", "targets: [b]") + "server:\n  prot: 1\n")
    result = run(["check", "--config", str(path)], environ)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: invalid config (2 problems):\n")
    assert (
        f"{path}:6: routes[0].targets[0].backend: unknown backend 'b' (declared backends: a)" in result.stderr
    )
    assert f"{path}:8: server.prot: unknown key 'prot' (did you mean 'port'?)" in result.stderr


def test_check_refuses_an_empty_file_and_says_how_to_fix_it(
    tmp_path: Path, environ: dict[str, str | None]
) -> None:
    path = write_config(tmp_path, "# server:\n#   port: 8484\n")
    result = run(["check", "--config", str(path)], environ)
    assert result.exit_code == 1
    assert f"{path}: the file holds no settings (it is empty or only comments)" in result.stderr
    assert "gatewayd init" in result.stderr


def test_check_refuses_url_credentials_with_an_api_key_naming_the_backend(
    tmp_path: Path, environ: dict[str, str | None]
) -> None:
    path = write_config(tmp_path, VALID.replace("http://", "http://me:pw@") + "    api_key: sk-x\n")
    path.write_text(path.read_text().replace("routes:\n  - model: m\n    targets: [a]\n", ""))
    result = run(["check", "--config", str(path)], environ)
    assert result.exit_code == 1, result.output
    assert (
        "backends[0].url: backend 'a': the url carries a user and password and api_key is set"
        in result.stderr
    )


def test_check_warns_about_short_secrets_and_passes(tmp_path: Path, environ: dict[str, str | None]) -> None:
    path = write_config(tmp_path, VALID + "auth:\n  admin_token: z9q7x\n")
    result = run(["check", "--config", str(path)], environ)
    assert result.exit_code == 0
    assert "warning:" in result.stderr
    assert "the admin token is 5 characters long, under 16: easy to guess" in result.stderr
    assert "z9q7x" not in result.stderr


def test_check_of_a_missing_file_says_how_to_create_it(
    tmp_path: Path, environ: dict[str, str | None]
) -> None:
    path = tmp_path / "missing.yaml"
    result = run(["check", "--config", str(path)], environ)
    assert result.exit_code == 1
    assert f"run 'gatewayd init {path}' to write a commented example" in result.stderr


def test_init_writes_a_template_that_checks(tmp_path: Path, environ: dict[str, str | None]) -> None:
    path = tmp_path / "new dir" / "gatewayd.yaml"
    result = run(["init", str(path)], environ)
    assert result.exit_code == 0, result.output
    assert path.read_text() == template_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert result.stdout == (
        f"wrote {path}\nnext:  gatewayd check --config '{path}'\nthen:  gatewayd run --config '{path}'\n"
    )
    checked = run(["check", "--config", str(path)], environ)
    assert (checked.exit_code, checked.stdout) == (0, f"ok: {path}: 0 backends, 0 routes\n")


def test_init_without_a_path_writes_the_default_config(
    tmp_path: Path, environ: dict[str, str | None]
) -> None:
    result = run(["init"], environ)
    assert result.exit_code == 0, result.output
    path = tmp_path / "xdg" / "gatewayd" / "config.yaml"
    assert path.read_text() == template_text()
    assert run(["check"], environ).stdout == f"ok: {path}: 0 backends, 0 routes\n"


def test_init_refuses_to_overwrite_without_force(tmp_path: Path, environ: dict[str, str | None]) -> None:
    path = write_config(tmp_path, VALID)
    result = run(["init", str(path)], environ)
    assert result.exit_code == 1
    assert result.stderr == f"error: {path} already exists; pass --force to overwrite it\n"
    assert path.read_text() == VALID.lstrip("\n")

    forced = run(["init", "--force", str(path)], environ)
    assert forced.exit_code == 0, forced.output
    assert path.read_text() == template_text()


def test_init_refuses_a_directory(tmp_path: Path, environ: dict[str, str | None]) -> None:
    result = run(["init", "--force", str(tmp_path)], environ)
    assert result.exit_code == 1
    assert "is a directory" in result.stderr
