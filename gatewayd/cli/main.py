"""The gatewayd command. Errors are caught once, here, and turned into an exit code and a message.

A command's module is imported only when that command is looked up (to run it, or for ``--help``): ``gatewayd
run`` pays for its own imports, not for the HTTP client and tables of ``status``, ``backends`` or ``keys``.
"""

from __future__ import annotations

import importlib
import sys

import click

from gatewayd import __version__
from gatewayd.cli.output import print_error
from gatewayd.errors import GatewaydError

#: command name -> the module in gatewayd.cli that defines it (in its COMMANDS list)
COMMAND_MODULES: dict[str, str] = {
    "run": "commands_run",
    "restart": "commands_instance",
    "stop": "commands_instance",
    "status": "commands_instance",
    "check": "commands_config",
    "init": "commands_config",
    "models": "commands_models",
    "backends": "commands_backends",
    "keys": "commands_keys",
    "usage": "commands_keys",
    "jobs": "commands_jobs",
    "install": "commands_service",
}


class _Group(click.Group):
    """Finds commands through COMMAND_MODULES, importing a module on first use, and turns a GatewaydError
    raised by any command into its message and exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMAND_MODULES})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            module = importlib.import_module(f"gatewayd.cli.{COMMAND_MODULES[cmd_name]}")
            for command in module.COMMANDS:
                self.add_command(command)
        return self.commands.get(cmd_name)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except GatewaydError as error:
            print_error(error)
            sys.exit(error.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gatewayd")
def cli() -> None:
    """Keeps an OpenAI- and Ollama-compatible LLM gateway up."""


def main() -> None:
    cli(prog_name="gatewayd")
