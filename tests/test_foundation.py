"""The process-wide plumbing: logging format and the command line."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

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


def test_named_stream_follows_the_process_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test's output capture replaces sys.stderr and closes its stream when the test ends:
    a handler configured by name writes to the stream of the moment, never a closed one."""
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    logs.configure(level="INFO", fmt="json", stream="stderr")
    log = logs.get_logger("mwc.test")
    log.info("to_first")
    first.close()
    monkeypatch.setattr(sys, "stderr", second)
    log.info("to_second")
    assert [json.loads(line)["event"] for line in second.getvalue().splitlines()] == [
        "to_second"]
    with pytest.raises(ValueError, match="'journal'"):
        logs.configure(stream="journal")  # type: ignore[arg-type]
