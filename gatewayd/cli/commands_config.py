"""``gatewayd check`` validates a config; ``gatewayd init`` writes the commented example."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import click
from rich.text import Text

from gatewayd.cli.output import stderr_console, stdout_console
from gatewayd.config.loader import LoadedConfig, load, template_text
from gatewayd.config.paths import default_config_path, resolve_config_path
from gatewayd.errors import ConfigIssue, GatewaydError

#: the written config may come to hold API keys: only its owner may read it
CONFIG_FILE_MODE = 0o600


@click.command()
@click.option(
    "--config",
    "config_path",
    metavar="PATH",
    help="Config file [default: $GATEWAYD_CONFIG, else the default path if it exists, else the built-in "
    "defaults].",
)
def check(config_path: str | None) -> None:
    """Validate the config and report every problem with its line."""
    path = resolve_config_path(config_path, os.environ)
    loaded = load(path, environ=os.environ)
    for warning in loaded.warnings:
        stderr_console().print(format_warning(warning))
    stdout_console().print(format_check_result(path, loaded), markup=False)


@click.command()
@click.argument("path", required=False, metavar="[PATH]")
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
def init(path: str | None, force: bool) -> None:
    """Write a commented example config to PATH (default: the default config path)."""
    target = Path(path).expanduser() if path else default_config_path()
    write_config_template(target, force=force)
    stdout_console().print(format_init_result(target), markup=False)


def write_config_template(target: Path, *, force: bool) -> None:
    """Write the example config to ``target``, creating its directory. Raises GatewaydError if the file
    exists and ``force`` is false, or if it cannot be written."""
    if target.is_dir():
        raise GatewaydError(f"{target} is a directory; give the path of a file")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
        with os.fdopen(os.open(target, flags, CONFIG_FILE_MODE), "w", encoding="utf-8") as file:
            file.write(template_text())
    except FileExistsError:
        raise GatewaydError(f"{target} already exists; pass --force to overwrite it") from None
    except OSError as error:
        raise GatewaydError(f"cannot write {target}: {error.strerror}") from None


def format_warning(issue: ConfigIssue) -> Text:
    return Text.assemble(("warning:", "bold yellow"), f" {issue}")


def format_check_result(path: Path | None, loaded: LoadedConfig) -> str:
    backends = len(loaded.config.backends)
    routes = len(loaded.config.routes)
    source = str(path) if path is not None else "built-in defaults"
    return f"ok: {source}: {_count(backends, 'backend')}, {_count(routes, 'route')}"


def format_init_result(target: Path) -> str:
    quoted = shlex.quote(str(target))
    return f"wrote {target}\nnext:  gatewayd check --config {quoted}\nthen:  gatewayd run --config {quoted}"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


COMMANDS: list[click.Command] = [check, init]
