"""The commands that act on a running instance: ``restart``, ``stop`` and ``status`` (``run`` is in
commands_run.py).

Each finds its instance through the lock records in the state directory
(``--state-dir``, ``$GATEWAYD_STATE_DIR``, else the per-user default), picking it by ``--port`` when several
run. Exit codes: 0 success; 1 failure (a rejected or failed reload included); 3 nothing is running.

``restart`` exits 0 for the outcomes "ok" and "fallback": a fallback means the respawn failed but the reload
was done in process, so the new config *is* in effect; the warning is printed all the same.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import click
import httpx
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from gatewayd.cli.output import stderr_console, stdout_console
from gatewayd.config.compare import ConfigChanges, NameChanges
from gatewayd.config.paths import resolve_state_dir
from gatewayd.errors import EXIT_FAILURE, InstanceError, NotRunning
from gatewayd.supervisor.portlock import LockRecord, holder_alive, read_record, running_instances
from gatewayd.supervisor.sentinel import (
    ALLOW_WEAKER_FLAG,
    ReloadOutcome,
    cancel_reload_request,
    last_outcome,
    submit_reload_request,
    wait_for_outcome,
)

#: how long ``restart`` waits for the outcome of its reload by default
RESTART_TIMEOUT_SECONDS = 60.0
#: how long ``stop`` waits for the instance to exit by default (above the default force-exit bound)
STOP_TIMEOUT_SECONDS = 35.0
#: ``status`` asks the instance for live figures over HTTP, bounded by this
STATUS_HTTP_TIMEOUT_SECONDS = 2.0
_POLL_SECONDS = 0.05

_state_dir_option = click.option(
    "--state-dir",
    metavar="DIR",
    help="State directory [default: $GATEWAYD_STATE_DIR, else the per-user state directory].",
)
_port_option = click.option(
    "--port", type=int, metavar="P", help="The instance listening on this port (when several run)."
)


# -- finding the instance ---------------------------------------------------------------------------


def find_instance(state_dir: Path, port: int | None) -> LockRecord:
    """The running instance on ``port`` (or the only one). Raises NotRunning, or InstanceError when several
    run and no port picks one."""
    if port is not None:
        record = read_record(state_dir, port)
        if record is None or not holder_alive(record):
            raise NotRunning(
                f"gatewayd is not running on port {port} (no live instance in {state_dir}); "
                f"start it with `gatewayd run --port {port}`"
            )
        return record
    instances = running_instances(state_dir)
    if not instances:
        raise NotRunning(
            f"gatewayd is not running (no live instance in {state_dir}); start it with `gatewayd run`"
        )
    if len(instances) > 1:
        ports = ", ".join(str(record.port) for record in instances)
        raise InstanceError(f"several gatewayd instances are running (ports {ports}): pick one with --port")
    return instances[0]


def instance_alive(state_dir: Path, port: int) -> bool:
    """Whether *some* process holds the instance on ``port`` (during a respawn the holder changes)."""
    record = read_record(state_dir, port)
    return record is not None and holder_alive(record)


def _signal(record: LockRecord, signum: signal.Signals) -> None:
    try:
        os.kill(record.pid, signum)
    except ProcessLookupError:
        raise NotRunning(f"gatewayd (pid {record.pid}) exited before it could be signalled") from None
    except PermissionError:
        raise InstanceError(
            f"not permitted to signal gatewayd (pid {record.pid}): it runs as another user"
        ) from None


# -- restart ----------------------------------------------------------------------------------------


@click.command()
@click.option(
    "--respawn", is_flag=True, help="Start a fresh process (after an upgrade) instead of the configured mode."
)
@click.option(
    "--allow-weaker",
    is_flag=True,
    help="Apply a config that lowers protection (auth turned off, the admin API opened); refused otherwise.",
)
@click.option("--timeout", type=float, default=RESTART_TIMEOUT_SECONDS, show_default=True, metavar="S",
              help="Seconds to wait for the outcome.")  # fmt: skip
@_port_option
@_state_dir_option
def restart(
    respawn: bool, allow_weaker: bool, timeout: float, port: int | None, state_dir: str | None
) -> None:
    """Reload the running instance's config (SIGUSR1) and report the outcome and what changed."""
    state = resolve_state_dir(state_dir, os.environ)
    record = find_instance(state, port)
    request = submit_reload_request(state, record.port, respawn=respawn, allow_weaker=allow_weaker)
    try:
        _signal(record, signal.SIGUSR1)
    except InstanceError:
        cancel_reload_request(state, record.port, request.id)
        raise
    outcome = wait_for_outcome(
        state,
        record.port,
        request.id,
        timeout_seconds=timeout,
        pid_alive=lambda: instance_alive(state, record.port),
    )
    console = stdout_console() if outcome.outcome in ("ok", "fallback") else stderr_console()
    console.print(format_outcome(outcome))
    if outcome.outcome not in ("ok", "fallback"):
        sys.exit(EXIT_FAILURE)


def format_outcome(outcome: ReloadOutcome) -> Text:
    style = {"ok": "bold green", "fallback": "bold yellow"}.get(outcome.outcome, "bold red")
    label = {
        "ok": "reloaded",
        "fallback": "reloaded in process (respawn failed)",
        "rejected": "config rejected",
    }
    text = Text.assemble(
        (label.get(outcome.outcome, "reload failed") + ":", style),
        f" {outcome.message}",
        f"\n  mode {outcome.mode}, pid {outcome.old_pid}",
    )
    if outcome.new_pid != outcome.old_pid:
        text.append(f" -> {outcome.new_pid}")
    text.append(f", generation {outcome.generation}, {outcome.duration_seconds:.2f}s")
    for error in outcome.errors:
        text.append("\n  ")
        text.append(error)
    if outcome.outcome == "rejected" and ALLOW_WEAKER_FLAG not in outcome.message:
        text.append("\n  the running config is unchanged; fix the file and run `gatewayd restart` again")
    if outcome.bundle is not None:
        text.append(f"\n  diagnostic bundle: {outcome.bundle}")
    if outcome.changes is None:
        return text
    text.append("\n")
    text.append_text(format_changes(outcome.changes, applied=outcome.outcome in ("ok", "fallback")))
    return text


def format_changes(changes: ConfigChanges, *, applied: bool) -> Text:
    """The change summary: one line per kind (backends, routes, keys) with what was added, removed and
    changed, and one for the other sections that changed. ``applied``: the new config serves."""
    title = "changes" if applied else "changes not applied"
    text = Text(f"  {title}:", style="bold")
    if not changes:
        text.append(" none", style="dim")
        return text
    for kind in ("backends", "routes", "keys"):
        names: NameChanges = getattr(changes, kind)
        if not names:
            continue
        text.append(f"\n    {kind}: ", style="bold")
        parts = [
            (label, items, style)
            for label, items, style in (
                ("added", names.added, "green"),
                ("removed", names.removed, "red"),
                ("changed", names.changed, "yellow"),
            )
            if items
        ]
        for index, (label, items, style) in enumerate(parts):
            text.append(("; " if index else "") + label, style=style)
            text.append(" " + ", ".join(items))
    if changes.settings:
        text.append("\n    settings: ", style="bold")
        text.append(", ".join(changes.settings))
    return text


# -- stop -------------------------------------------------------------------------------------------


@click.command()
@click.option("--timeout", type=float, default=STOP_TIMEOUT_SECONDS, show_default=True, metavar="S",
              help="Seconds to wait for it to exit.")  # fmt: skip
@_port_option
@_state_dir_option
def stop(timeout: float, port: int | None, state_dir: str | None) -> None:
    """Stop the running instance gracefully (SIGTERM) and wait until it has exited."""
    state = resolve_state_dir(state_dir, os.environ)
    record = find_instance(state, port)
    _signal(record, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while holder_alive(record):
        if time.monotonic() >= deadline:
            raise InstanceError(
                f"gatewayd (pid {record.pid}) is still running {timeout:g}s after SIGTERM; it may be "
                f"draining long requests: wait, or `kill -9 {record.pid}`"
            )
        time.sleep(_POLL_SECONDS)
    stdout_console().print(f"stopped gatewayd (pid {record.pid}, port {record.port})")


# -- status -----------------------------------------------------------------------------------------


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_port_option
@_state_dir_option
def status(as_json: bool, port: int | None, state_dir: str | None) -> None:
    """Show the running instance: pid, uptime, generation, reloads, backends, requests in flight."""
    state = resolve_state_dir(state_dir, os.environ)
    record = find_instance(state, port)
    report = instance_report(record, fetch_live_status(record), last_outcome(state, record.port))
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        stdout_console().print(format_status(report))


def fetch_live_status(record: LockRecord) -> Mapping[str, object] | None:
    """GET /status from the instance, or None if it does not answer with a JSON object."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(record.host, record.host)
    netloc = f"[{host}]:{record.port}" if ":" in host else f"{host}:{record.port}"
    try:
        response = httpx.get(f"http://{netloc}/status", timeout=STATUS_HTTP_TIMEOUT_SECONDS, trust_env=False)
        body = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def instance_report(
    record: LockRecord, live: Mapping[str, object] | None, outcome: ReloadOutcome | None
) -> dict[str, object]:
    """What ``status`` shows: the lock record, overlaid with the live figures when the instance answered."""
    instance = live.get("instance") if live is not None else None
    snapshot: Mapping[str, object] = instance if isinstance(instance, dict) else {}
    report: dict[str, object] = {
        "pid": record.pid,
        "version": record.version,
        "listen": f"{record.host}:{record.port}",
        "port": record.port,
        "config_path": record.config_path,
        "started_at": record.started_at,
        "uptime_seconds": round(max(0.0, time.time() - record.started_at), 1),
        "generation": record.generation,
        "restarts": record.restarts,
        "last_reload": outcome.to_json()
        if outcome is not None and outcome.started_at >= record.started_at
        else None,
        "backends_up": None,
        "backends_total": None,
        "in_flight": None,
        "queued": None,
        "standby": None,
        "live": live is not None,
        "name": None,
        "fleet": [],
    }
    for key in ("generation", "restarts", "listen", "config_path", "last_reload", "name", "standby"):
        if key in snapshot:
            report[key] = snapshot[key]
    if live is not None:
        for key in ("backends_up", "backends_total", "in_flight", "queued"):
            report[key] = live.get(key)
        fleet = live.get("fleet")
        report["fleet"] = [row for row in fleet if isinstance(row, dict)] if isinstance(fleet, list) else []
    return report


def format_status(report: Mapping[str, object]) -> RenderableType:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("pid", str(report["pid"]))
    if report.get("name"):
        table.add_row("instance", str(report["name"]))
    table.add_row("listen", f"http://{report['listen']}")
    table.add_row("uptime", format_duration(float(report["uptime_seconds"])))  # type: ignore[arg-type]
    table.add_row("generation", f"{report['generation']} ({report['restarts']} respawn(s))")
    table.add_row("config", str(report["config_path"] or "built-in defaults"))
    if report["live"]:
        table.add_row("backends", f"{report['backends_up']} up of {report['backends_total']}")
        table.add_row("in flight", f"{report['in_flight']} (queued {report['queued'] or 0})")
        fleet = report.get("fleet")
        if isinstance(fleet, list) and fleet:
            table.add_row("fleet", format_fleet(fleet))
        table.add_row("warm standby", format_standby(report["standby"]))
    else:
        table.add_row(
            "live figures", Text("unavailable (the instance did not answer GET /status)", style="yellow")
        )
    last = report["last_reload"]
    if isinstance(last, dict):
        when = datetime.fromtimestamp(float(last["started_at"])).strftime("%Y-%m-%d %H:%M:%S")
        style = "green" if last["outcome"] == "ok" else "yellow" if last["outcome"] == "fallback" else "red"
        table.add_row(
            "last reload", Text.assemble((str(last["outcome"]), style), f" at {when}: {last['message']}")
        )
    else:
        table.add_row("last reload", "none")
    table.add_row("version", str(report["version"]))
    return table


def format_fleet(rows: list[dict[str, object]]) -> Text:
    """One line per instance seen lately: its name, version, load and how long ago it was heard from."""
    text = Text(f"{len(rows)} instance(s) seen")
    for row in rows:
        load = row.get("load")
        load = load if isinstance(load, dict) else {}
        mark = " (this one)" if row.get("self") else f", {row.get('age_seconds', '?')} s ago"
        text.append(
            f"\n{row.get('name')}: {load.get('in_flight', 0)} in flight, {load.get('queued', 0)} queued, "
            f"version {row.get('version')}{mark}"
        )
    return text


def format_standby(standby: object) -> str:
    """The warm standby's pid, state and resident memory, or "none" (restart.warm_standby off)."""
    if not isinstance(standby, dict):
        return "none"
    rss = standby.get("rss_bytes")
    memory = f", {rss / 2**20:.1f} MiB resident" if isinstance(rss, int) else ""
    return f"pid {standby.get('pid')}, {standby.get('state')}{memory}"


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


COMMANDS: list[click.Command] = [restart, stop, status]
