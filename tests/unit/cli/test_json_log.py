import json
import logging

from gatewayd.cli.commands_run import JsonLogFormatter


def test_json_lines_carry_the_access_log_fields() -> None:
    record = logging.LogRecord("gatewayd.access", logging.INFO, __file__, 1, "%s done", ("r1",), None)
    record.fields = {"request_id": "r1", "backend": "a", "status": 200, "latency_ms": 1.5}
    line = json.loads(JsonLogFormatter().format(record))
    assert line["message"] == "r1 done"
    assert line["logger"] == "gatewayd.access"
    assert line["backend"] == "a"
    assert line["status"] == 200
    assert line["latency_ms"] == 1.5
