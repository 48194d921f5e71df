"""``gatewayd backends``: the backends of the running instance, and starting or stopping the model servers
gatewayd runs (``backends start ID``, ``backends stop ID``), through its /admin/backends endpoints.

Exit codes: 0 success; 1 the instance refused or failed (unknown backend, one gatewayd does not run, a full
group, a failed start, no answer); 3 nothing is running.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import click
import httpx
from rich.table import Table
from rich.text import Text

from gatewayd.cli.commands_instance import STATUS_HTTP_TIMEOUT_SECONDS, find_instance, format_duration
from gatewayd.cli.output import stdout_console
from gatewayd.config.paths import resolve_state_dir
from gatewayd.errors import GatewaydError, InstanceError
from gatewayd.supervisor.portlock import LockRecord

#: ``start`` waits for the server to load (a backend's start_timeout_seconds is 120 s by default) and ``stop``
#: for its requests to finish, bounded by this by default
ACTION_TIMEOUT_SECONDS = 300.0

#: the last error is cut to this many characters in the table (``--json`` gives all of it)
ERROR_DISPLAY_CHARS = 60
_QUOTED_COMMAND = re.compile(r"`[^`]*`")

_STATE_STYLES = {
    "running": "green",
    "up": "green",
    "degraded": "yellow",
    "starting": "cyan",
    "stopping": "cyan",
    "sleeping": "dim",
    "failed": "red",
    "down": "red",
}


_F = TypeVar("_F", bound=Callable[..., None])


def _instance_options(command: _F) -> _F:
    command = click.option(
        "--state-dir",
        metavar="DIR",
        help="State directory [default: $GATEWAYD_STATE_DIR, else the per-user state directory].",
    )(command)
    return click.option(
        "--port", type=int, metavar="P", help="The instance listening on this port (when several run)."
    )(command)


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_instance_options
@click.pass_context
def backends(ctx: click.Context, as_json: bool, port: int | None, state_dir: str | None) -> None:
    """List the running instance's backends: state, pid, port, models, uptime, load, last error.

    `gatewayd backends start ID` and `gatewayd backends stop ID` start and stop the servers it runs."""
    ctx.obj = (port, state_dir)
    if ctx.invoked_subcommand is not None:
        return
    record = _find(ctx, port, state_dir)
    rows = _request(record, "GET", "/admin/backends", timeout_seconds=STATUS_HTTP_TIMEOUT_SECONDS)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        stdout_console().print(format_backends(rows, f"instance pid {record.pid} on port {record.port}"))


@backends.command()
@click.argument("backend_id", metavar="ID")
@click.option("--timeout", type=float, default=ACTION_TIMEOUT_SECONDS, show_default=True, metavar="S",
              help="Seconds to wait for it to be ready.")  # fmt: skip
@_instance_options
@click.pass_context
def start(
    ctx: click.Context, backend_id: str, timeout: float, port: int | None, state_dir: str | None
) -> None:
    """Start (or wake) backend ID and wait until it is ready."""
    row = _act(_find(ctx, port, state_dir), backend_id, "start", timeout_seconds=timeout)
    stdout_console().print(format_action("started", row))


@backends.command()
@click.argument("backend_id", metavar="ID")
@click.option("--timeout", type=float, default=ACTION_TIMEOUT_SECONDS, show_default=True, metavar="S",
              help="Seconds to wait for its requests to finish and its server to exit.")  # fmt: skip
@_instance_options
@click.pass_context
def stop(
    ctx: click.Context, backend_id: str, timeout: float, port: int | None, state_dir: str | None
) -> None:
    """Stop backend ID's server once its requests are done (the next request starts it again)."""
    row = _act(_find(ctx, port, state_dir), backend_id, "stop", timeout_seconds=timeout)
    stdout_console().print(format_action("stopped", row))


def _find(ctx: click.Context, port: int | None, state_dir: str | None) -> LockRecord:
    """The instance, by the subcommand's own options, else the group's (``backends --port P start ID``)."""
    group_port, group_state_dir = ctx.obj if isinstance(ctx.obj, tuple) else (None, None)
    state = resolve_state_dir(state_dir or group_state_dir, os.environ)
    return find_instance(state, port if port is not None else group_port)


def _act(record: LockRecord, backend_id: str, action: str, *, timeout_seconds: float) -> Any:
    path = f"/admin/backends/{quote(backend_id, safe='')}/{action}"
    return _request(record, "POST", path, timeout_seconds=timeout_seconds)


def instance_url(record: LockRecord) -> str:
    """Where the instance answers HTTP (a wildcard listen address is reached on loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(record.host, record.host)
    return f"http://[{host}]:{record.port}" if ":" in host else f"http://{host}:{record.port}"


def _request(record: LockRecord, method: str, path: str, *, timeout_seconds: float) -> Any:
    """The JSON answer of ``method path`` on the instance. Raises GatewaydError with the instance's own
    message when it refuses, InstanceError when it does not answer."""
    where = f"gatewayd (pid {record.pid}, port {record.port})"
    try:
        response = httpx.request(
            method, instance_url(record) + path, timeout=timeout_seconds, trust_env=False
        )
    except httpx.TimeoutException:
        raise InstanceError(
            f"{where} did not answer {method} {path} within {timeout_seconds:g} s; "
            "see `gatewayd backends` for where it stands, or give more --timeout"
        ) from None
    except httpx.HTTPError as error:
        raise InstanceError(
            f"{where} did not answer {method} {path} ({error}); is it still starting? check its logs"
        ) from None
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code == 200 and body is not None:
        return body
    raise GatewaydError(refusal_message(response.status_code, body, method, path))


def refusal_message(status: int, body: object, method: str, path: str) -> str:
    """What to tell the user about a refused admin request, with how to fix it."""
    error = body.get("error") if isinstance(body, dict) else None
    message = (
        str(error.get("message")) if isinstance(error, dict) else f"{method} {path} answered HTTP {status}"
    )
    code = error.get("code") if isinstance(error, dict) else None
    if status == 404 and message.startswith("no such endpoint"):
        return (
            f"{message}: this gatewayd predates the admin endpoints; after upgrading, "
            "`gatewayd restart --respawn` runs the new version"
        )
    hints = {
        "not_managed": "only backends with a command: (or a wake:) in the config are started by gatewayd",
        "group_full": "`gatewayd backends stop ID` stops one",
        "backend_stopping": "wait for it to stop, then try again",
    }
    hint = hints.get(code) if isinstance(code, str) else None
    if status == 503 and code == "backend_unavailable":
        return f"could not start: {message}"
    return f"{message} ({hint})" if hint else message


# -- presentation ----------------------------------------------------------------------------------


def format_backends(rows: Sequence[Mapping[str, Any]], source: str) -> Table:
    table = Table(title=f"backends ({source})", title_justify="left", show_edge=False)
    table.add_column("id", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("pid", justify="right", no_wrap=True)
    table.add_column("port", justify="right", no_wrap=True)
    table.add_column("models")
    table.add_column("uptime", no_wrap=True)
    table.add_column("in-flight", justify="right", no_wrap=True)
    table.add_column("limit", no_wrap=True)
    table.add_column("queue", justify="right", no_wrap=True)
    table.add_column("last error", overflow="fold")
    if not rows:
        table.add_row("(none)", *[""] * 9)
    for row in rows:
        group = row.get("group")
        table.add_row(
            Text(str(row["id"]) + ("" if group is None else f" ({group})")),
            format_state(str(row["state"])),
            _or_blank(row.get("pid")),
            _or_blank(row.get("port")),
            Text(", ".join(row.get("models") or ())),
            format_duration(float(row["uptime_seconds"])) if row.get("uptime_seconds") is not None else "",
            str(row.get("in_flight", 0)),
            format_limit(row),
            str(row.get("queued", 0)),
            format_error(row.get("last_error"), str(row["id"])),
        )
    return table


def format_limit(row: Mapping[str, Any]) -> str:
    """The concurrency limit in force and where it came from: "8 (props)", "unbounded"; blank from an
    instance too old to say."""
    source = row.get("concurrency_source")
    if source is None:
        return ""
    limit = row.get("max_concurrency")
    return str(source) if limit is None else f"{limit} ({source})"


def format_state(state: str) -> Text:
    return Text(state, style=_STATE_STYLES.get(state, ""))


def format_error(error: object, backend_id: str = "", limit: int = ERROR_DISPLAY_CHARS) -> Text:
    """A table-sized summary of ``error``: its first clause, without the "backend ID" the row already
    names and with the quoted command shortened to "command", cut to ``limit`` characters."""
    lines = str(error or "").strip().splitlines()
    first = lines[0] if lines else ""
    first = re.sub(rf"^backend {re.escape(backend_id)}:? ", "", first)
    first = _QUOTED_COMMAND.sub("command", first).split("; ")[0]
    return Text(first if len(first) <= limit else first[: limit - 1] + "…", style="red")


def format_action(done: str, row: Mapping[str, Any]) -> Text:
    """``started backend local: running, pid 123, port 456``."""
    text = Text.assemble((f"{done} backend {row['id']}:", "bold"), " ", format_state(str(row["state"])))
    for label in ("pid", "port"):
        if row.get(label) is not None:
            text.append(f", {label} {row[label]}")
    return text


def _or_blank(value: object) -> str:
    return "" if value is None else str(value)


COMMANDS: list[click.Command] = [backends]
