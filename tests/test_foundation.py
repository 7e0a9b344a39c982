"""The process-wide plumbing: logging format and the command line."""

from __future__ import annotations

import io
import json
import logging

from controller import cli, logs


def test_json_logs_route_library_loggers_through_structlog() -> None:
    buf = io.StringIO()
    logs.configure(level="INFO", fmt="json", stream=buf)
    logs.get_logger("mwc.test", station_id="ST1").info("cycle_done", gun=1)
    logging.getLogger("pymodbus").warning("library says %s", "hello")
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert lines[0]["event"] == "cycle_done"
    assert lines[0]["station_id"] == "ST1"
    assert lines[0]["gun"] == 1
    assert lines[1]["event"] == "library says hello"
    assert lines[1]["level"] == "warning"
    assert lines[1]["logger"] == "pymodbus"


def test_console_format_is_not_json() -> None:
    buf = io.StringIO()
    logs.configure(level="INFO", fmt="console", stream=buf)
    logs.get_logger("mwc.test").info("hello_console")
    assert "hello_console" in buf.getvalue()
    assert not buf.getvalue().lstrip().startswith("{")


def test_cli_without_command_prints_help_and_fails(capsys: object) -> None:
    assert cli.main([]) == 2
