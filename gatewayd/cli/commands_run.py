"""``gatewayd run``: the daemon in the foreground, and its logging.

This module imports only what serving needs: every process start and every fresh-PID respawn pays for its
imports before it can serve. The HTTP client and the tables the other commands use (commands_instance.py)
are not imported here; tests/e2e/test_startup_imports.py keeps it so. Exit code 78 under systemd when a
healthy instance already holds the port (the unit's RestartPreventExitStatus).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from datetime import UTC, datetime

import click

from gatewayd.config import LogFormat, LoggingSettings
from gatewayd.config.loader import load
from gatewayd.config.paths import resolve_config_path, resolve_state_dir
from gatewayd.errors import EXIT_ALREADY_RUNNING_UNDER_SYSTEMD, AlreadyRunning
from gatewayd.supervisor.diagnostics import EventRing
from gatewayd.supervisor.service import ServiceManager, detect_service_manager

log = logging.getLogger("gatewayd")


@click.command()
@click.option(
    "--config",
    "config_path",
    metavar="PATH",
    help="Config file [default: $GATEWAYD_CONFIG, else the default path if it exists, else the built-in "
    "defaults].",
)
@click.option("--host", metavar="H", help="Listen on this address instead of server.host.")
@click.option("--port", type=int, metavar="P", help="Listen on this port instead of server.port.")
@click.option(
    "--state-dir",
    metavar="DIR",
    help="State directory [default: $GATEWAYD_STATE_DIR, else the per-user state directory].",
)
def run(config_path: str | None, host: str | None, port: int | None, state_dir: str | None) -> None:
    """Run the gateway in the foreground until SIGTERM or Ctrl-C; SIGUSR1 (or SIGHUP) reloads."""
    # Imported here, not at the top: ``run --help`` and a config error need neither.
    from gatewayd.gateway.service import GatewayFactory
    from gatewayd.supervisor import runloop
    from gatewayd.supervisor.standby import wait_as_standby

    environ = os.environ
    # a warm standby (restart.warm_standby) waits here, imported, until a respawn hands over to it; the
    # config is read after that, so it is the one the respawn asked for
    if not wait_as_standby(environ):
        return
    path = resolve_config_path(config_path, environ)
    state = resolve_state_dir(state_dir, environ)
    # a ConfigError is reported before any logging is set up
    loaded = load(path, environ=environ, listen_host=host, listen_port=port)
    events = EventRing()
    configure_logging(loaded.config.logging, events)
    for warning in loaded.warnings:
        log.warning("config: %s", warning)
    manager = detect_service_manager(environ, os.getpid())
    factory = GatewayFactory(state_dir=state, listen_host=host, listen_port=port, environ=environ)
    options = runloop.RunOptions(
        config_path=str(path) if path is not None else None,
        state_dir=state,
        respawn_command=(sys.executable, "-m", "gatewayd", *sys.argv[1:]),
        service_manager=manager,
        events=events,
        environ=environ,
        config=loaded.config,
    )
    try:
        code = runloop.run(factory, options)
    except AlreadyRunning as error:
        if manager is ServiceManager.SYSTEMD:
            error.exit_code = EXIT_ALREADY_RUNNING_UNDER_SYSTEMD
        raise
    sys.exit(code)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and exception), plus the structured
    ``fields`` a record carries (the access log's request id, model, backend, status, latency...)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


#: logging.Formatter's own default time text: 2026-12-04 14:05:09,123
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_MSEC_FORMAT = "%s,%03d"


class LineFormatter(logging.Formatter):
    """``logging.Formatter`` with the time text (``asctime``) rendered once per second, not once per line:
    with the access log on, ``time.strftime`` was a third of the cost of each request's log line."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._second = -1
        self._second_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime(_TIME_FORMAT, self.converter(record.created))
            self._second = second
        return _MSEC_FORMAT % (self._second_text, record.msecs)


def configure_logging(settings: LoggingSettings, events: EventRing) -> None:
    """Logs go to stderr: rich when it is a terminal, plain lines otherwise (journald, files), JSON lines
    with ``logging.format: json``. ``events`` keeps the recent ones for diagnostic bundles.

    No record gatewayd writes shows its source line or thread, so the logging module is told not to look
    them up (``logging._srcfile = None`` and the ``log*`` switches, its documented optimisations): finding
    the caller's frame was another third of an access log line's cost."""
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    if hasattr(logging, "logAsyncioTasks"):  # Python 3.12+: the task's name, another lookup per record
        logging.logAsyncioTasks = False  # type: ignore[attr-defined,unused-ignore]
    handler: logging.Handler
    if settings.format is LogFormat.JSON:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonLogFormatter())
    elif sys.stderr.isatty():
        from rich.logging import RichHandler  # only a terminal needs rich (and its traceback module)

        from gatewayd.cli.output import stderr_console

        handler = RichHandler(console=stderr_console(), show_path=False, markup=False, rich_tracebacks=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(LineFormatter("%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.addHandler(events)
    root.setLevel(settings.level.upper())


COMMANDS: list[click.Command] = [run]
