"""``gatewayd models``: the routed models and the backends that serve them."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from gatewayd.cli.commands_instance import fetch_live_status, find_instance
from gatewayd.cli.output import stderr_console, stdout_console
from gatewayd.config.loader import load
from gatewayd.config.paths import resolve_config_path, resolve_state_dir
from gatewayd.errors import NotRunning
from gatewayd.gateway.core.inventory import Inventory


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--port", type=int, metavar="P", help="The instance listening on this port (when several run).")
@click.option(
    "--state-dir", metavar="DIR", help="State directory [default: $GATEWAYD_STATE_DIR, else per-user]."
)
@click.option(
    "--config",
    "config_path",
    metavar="PATH",
    help="When no instance runs, list what this config declares [default: $GATEWAYD_CONFIG, else per-user].",
)
def models(as_json: bool, port: int | None, state_dir: str | None, config_path: str | None) -> None:
    """List the routed models and their backends.

    Asks the running instance (models discovered on backends included, with their state); when none runs,
    lists what the config declares."""
    live_rows: list[Mapping[str, Any]] | None = None
    source = ""
    try:
        record = find_instance(resolve_state_dir(state_dir, os.environ), port)
    except NotRunning as error:
        stderr_console().print(f"{error.message}; listing what the config declares")
    else:
        live = fetch_live_status(record)
        found = live.get("models") if live is not None else None
        if isinstance(found, list):
            live_rows = found
            source = f"instance pid {record.pid} on port {record.port}"
    rows: Sequence[Mapping[str, Any]]
    if live_rows is None:
        path = resolve_config_path(config_path, os.environ)
        rows = declared_rows(path)
        source = f"config {path}" if path else "built-in defaults (no backends declared)"
    else:
        rows = live_rows
    if as_json:
        click.echo(json.dumps({"source": source, "models": list(rows)}, indent=2))
    else:
        stdout_console().print(format_models(rows, source))


def declared_rows(path: Path | None) -> list[dict[str, Any]]:
    """Model rows from the config alone: routes, then the models backends declare (state unknown)."""
    config = load(path, environ=os.environ).config
    inventory = Inventory(
        routes=config.routes,
        backend_order=[b.id for b in config.backends],
        declared={b.id: b.models for b in config.backends},
    )
    return [
        {
            "name": entry.name,
            "routed": entry.routed,
            "backends": [{"backend": t.backend, "model": t.model} for t in entry.targets],
            "state": "not running",
        }
        for entry in inventory.entries()
    ]


def format_models(rows: Sequence[Mapping[str, Any]], source: str) -> Table:
    table = Table(title=f"models ({source})", title_justify="left", show_edge=False)
    table.add_column("model")
    table.add_column("state")
    table.add_column("backends (in order)")
    table.add_column("route")
    if not rows:
        table.add_row("(none)", "", "", "")
    for row in rows:
        targets = ", ".join(
            t["backend"] if t["model"] == row["name"] else f"{t['backend']} as {t['model']}"
            for t in row["backends"]
        )
        table.add_row(row["name"], str(row["state"]), targets, "yes" if row.get("routed") else "")
    return table


COMMANDS: list[click.Command] = [models]
