"""Presentation: format_* functions return strings or rich renderables; print_* own the console."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from gatewayd.errors import GatewaydError


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def stdout_console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def print_error(error: GatewaydError) -> None:
    stderr_console().print(Text.assemble(("error:", "bold red"), " ", error.message))
