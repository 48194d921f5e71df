"""Presentation: format_* functions return strings or rich renderables; print_* own the console.

rich is imported when a console is first wanted, not with this module: ``gatewayd run`` logging to a pipe
or the journal never needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gatewayd.errors import GatewaydError

if TYPE_CHECKING:
    from rich.console import Console


def stderr_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def stdout_console() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def print_error(error: GatewaydError) -> None:
    from rich.text import Text

    stderr_console().print(Text.assemble(("error:", "bold red"), " ", error.message))
