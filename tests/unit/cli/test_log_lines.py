"""The plain log line's formatter renders exactly what logging.Formatter renders, its time text cached."""

from __future__ import annotations

import logging

from gatewayd.cli.commands_run import LineFormatter

FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"


def record_at(created: float, message: str) -> logging.LogRecord:
    record = logging.LogRecord("gatewayd.access", logging.INFO, __file__, 1, message, None, None)
    record.created = created
    record.msecs = (created - int(created)) * 1000
    return record


def test_each_line_matches_the_standard_formatter_within_a_second_and_across_seconds() -> None:
    ours, standard = LineFormatter(FORMAT), logging.Formatter(FORMAT)
    moments = [1_780_000_000.001, 1_780_000_000.5, 1_780_000_000.999, 1_780_000_001.0, 1_780_000_061.25]
    for created in [*moments, moments[0]]:  # back to an earlier second, too
        record = record_at(created, f"request at {created}")
        assert ours.format(record) == standard.format(record_at(created, f"request at {created}"))


def test_a_date_format_of_its_own_is_honoured() -> None:
    ours = LineFormatter("%(asctime)s %(message)s")
    record = record_at(1_780_000_000.25, "x")
    assert ours.formatTime(record, "%H") == logging.Formatter().formatTime(record, "%H")
