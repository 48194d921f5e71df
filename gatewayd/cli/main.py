"""The gatewayd command. Errors are caught once, here, and turned into an exit code and a message."""

from __future__ import annotations

import sys

import click

from gatewayd import __version__
from gatewayd.cli import (
    commands_backends,
    commands_config,
    commands_instance,
    commands_jobs,
    commands_keys,
    commands_models,
    commands_service,
)
from gatewayd.cli.output import print_error
from gatewayd.errors import GatewaydError


class _Group(click.Group):
    """Turns a GatewaydError raised by any command into its message and exit code."""

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


for module in (
    commands_instance,
    commands_config,
    commands_models,
    commands_backends,
    commands_keys,
    commands_jobs,
    commands_service,
):
    for command in module.COMMANDS:
        cli.add_command(command)


def main() -> None:
    cli(prog_name="gatewayd")
