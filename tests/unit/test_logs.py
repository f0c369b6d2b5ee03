"""The daemons' one log style (daemon_kit.logs): one JSON object per line, `extra` fields as keys."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator

import pytest

from daemon_kit import logs


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def record(message: str, *args: object, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    return logging.getLogger("copilot.test").makeRecord("copilot.test", level, __file__, 1, message, args, None, extra=extra)


def test_format_is_one_json_object_with_extra_fields() -> None:
    line = logs.JsonFormatter().format(record("hello %s", "world", host="a.example.com", count=3, path=None))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "hello world"
    assert entry["level"] == "info"
    assert entry["source"] == "copilot.test"
    assert entry["timestamp"].endswith("Z") and "T" in entry["timestamp"]
    assert (entry["host"], entry["count"], entry["path"]) == ("a.example.com", 3, None)
    for standard in ("args", "msg", "levelno", "pathname", "lineno", "thread"):
        assert standard not in entry


def test_non_json_values_are_stringified() -> None:
    entry = json.loads(logs.JsonFormatter().format(record("x", tags={"b"}, level=logging.WARNING)))
    assert entry["level"] == "warning"
    assert entry["tags"] == "{'b'}"


def test_exceptions_are_included() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.getLogger("x").makeRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    entry = json.loads(logs.JsonFormatter().format(rec))
    assert "ValueError: boom" in entry["exception"]


def test_configure_writes_json_lines_to_stdout(restore_root_logger, capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("warning")
    logging.getLogger("copilot.x").info("not shown")
    logging.getLogger("copilot.x").warning("shown", extra={"key": "value"})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["key"] == "value"
    assert logging.getLogger().level == logging.WARNING
