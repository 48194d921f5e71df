"""The CLI finds each command through a table (a command's module is imported only when it is used): the
table and the modules' COMMANDS lists must agree."""

from __future__ import annotations

import importlib

from click.testing import CliRunner

from gatewayd.cli.main import COMMAND_MODULES, cli


def test_the_table_names_exactly_the_commands_the_modules_define() -> None:
    defined: dict[str, str] = {}
    for module_name in sorted(set(COMMAND_MODULES.values())):
        for command in importlib.import_module(f"gatewayd.cli.{module_name}").COMMANDS:
            assert command.name is not None
            defined[command.name] = module_name
    assert defined == COMMAND_MODULES


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    listed = {line.split()[0] for line in result.output.split("Commands:")[1].splitlines() if line.strip()}
    assert listed == set(COMMAND_MODULES)
