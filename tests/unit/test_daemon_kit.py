"""daemon_kit, the daemons' shared kit: the strict config reader names every bad key, main() exits 2 on a
bad config, 1 when the daemon cannot start and 0 after SIGTERM, logging JSON lines; replies are complete."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from daemon_kit.config import ConfigError, Section, default, read
from daemon_kit.httpd import reply

SRC = Path(__file__).resolve().parents[2] / "src"


def error_of(call) -> str:
    with pytest.raises(ConfigError) as caught:
        call()
    return str(caught.value)


def test_a_key_nobody_read_is_reported_unknown() -> None:
    section = Section({"port": 1, "colour": "blue", "zebra": 2}, "server")
    assert section.port("port") == 1
    assert error_of(section.done) == "server.colour: unknown key"


def test_absent_and_null_take_the_default_and_without_one_are_required() -> None:
    section = Section({"given": None})
    assert section.number("given", 5, minimum=0) == 5
    assert section.string("absent", "x") == "x"
    assert error_of(lambda: section.string("name")) == "name: is required (a string)"
    section.done()


@pytest.mark.parametrize(
    ("data", "read_it", "expected"),
    [
        ({"n": True}, lambda s: s.number("n"), "n: must be a number"),
        ({"n": 1.5}, lambda s: s.number("n", integer=True), "n: must be an integer"),
        ({"n": 0}, lambda s: s.number("n", above=0), "n: 0 is out of range (must be greater than 0)"),
        ({"n": 11}, lambda s: s.number("n", minimum=1, maximum=10), "n: 11 is out of range (must be at least 1 and at most 10)"),
        ({"p": True}, lambda s: s.port("p"), "p: must be an integer"),
        ({"p": 0}, lambda s: s.port("p"), "p: 0 is not a port number"),
        ({"s": ""}, lambda s: s.string("s"), "s: must be a non-empty string"),
        ({"s": 3}, lambda s: s.string("s", "", empty=True), "s: must be a string"),
        ({"a": "nowhere"}, lambda s: s.address("a"), "a: 'nowhere' must be host:port"),
        ({"f": "/nonexistent/file"}, lambda s: s.file("f"), "f: file /nonexistent/file does not exist"),
        ({"b": "yes"}, lambda s: s.boolean("b"), "b: must be true or false"),
        ({"l": "loud"}, lambda s: s.log_level("l"), "l: 'loud' is not one of debug, info, warning, error"),
        ({"m": []}, lambda s: s.section("m"), "m: must be a mapping"),
        ({"m": {"k": 1}}, lambda s: s.string_map("m"), "m: must be a mapping of strings to strings"),
        ({"l": ["a", ""]}, lambda s: s.string_list("l"), "l: must be a list of non-empty strings"),
    ],
)
def test_a_bad_value_names_its_key(data: dict, read_it, expected: str) -> None:
    assert error_of(lambda: read_it(Section(data))) == expected


def test_nested_sections_name_the_full_key() -> None:
    root = Section({"outer": {"inner": {"port": "x"}}})
    inner = root.section("outer").section("inner")
    assert error_of(lambda: inner.port("port")) == "outer.inner.port: must be an integer"
    assert root.optional_section("absent").string("k", "d") == "d"
    assert error_of(lambda: Section([1])) == "config: must be a mapping"


def test_read_names_the_file_and_the_format(tmp_path: Path) -> None:
    assert "cannot read config file" in error_of(lambda: read(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{")
    assert error_of(lambda: read(tmp_path / "bad.json")).startswith(f"config file {tmp_path / 'bad.json'} is not JSON: ")
    (tmp_path / "good.json").write_text('{"a": 1}')
    assert read(tmp_path / "good.json") == {"a": 1}


@dataclass(frozen=True)
class _Settings:
    required: str
    plain: float = 2.5
    made: tuple[str, ...] = field(default_factory=lambda: ("x",))


def test_default_is_read_from_the_settings_type() -> None:
    assert (default(_Settings, "plain"), default(_Settings, "made")) == (2.5, ("x",))
    with pytest.raises(KeyError):
        default(_Settings, "required")


_DAEMON = textwrap.dedent(
    """
    import logging, sys
    from daemon_kit import cli
    from daemon_kit.config import Section, read

    class Config:
        def __init__(self, data):
            root = Section(data)
            self.log_level = root.log_level()
            self.fail = root.boolean("fail", False)
            root.done()

    class Daemon:
        def stop(self):
            logging.getLogger("toy").info("stopped")

    def start(config):
        if config.fail:
            raise OSError("port 1 is taken")
        logging.getLogger("toy").info("started", extra={"answer": 42})
        return Daemon()

    check = lambda c: ["config ok", f"level {c.log_level}"]
    program = cli.Program("toy", "a toy daemon", lambda p: Config(read(p)), start, check)
    sys.exit(program.main())
"""
)


def _toy(tmp_path: Path, config: dict, *args: str) -> subprocess.Popen:
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(config))
    return subprocess.Popen(
        [sys.executable, "-c", _DAEMON, "--config", str(path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )


def test_main_exits_2_on_a_bad_config_and_prints_check_lines(tmp_path: Path) -> None:
    out, err = _toy(tmp_path, {"colour": 1}, "--check").communicate(timeout=30)
    assert err.strip() == "toy: invalid config: colour: unknown key" and out == ""
    process = _toy(tmp_path, {"log_level": "debug"}, "--check")
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0 and out.splitlines() == ["config ok", "level debug"], err


def test_main_logs_why_a_daemon_cannot_start_and_exits_1(tmp_path: Path) -> None:
    process = _toy(tmp_path, {"fail": True})
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 1
    entry = json.loads(out.splitlines()[-1])
    assert (entry["level"], entry["source"], entry["message"], entry["error"]) == (
        "error",
        "toy",
        "cannot start",
        "port 1 is taken",
    )


@pytest.mark.timeout(60)
def test_main_serves_until_sigterm_and_logs_json_lines(tmp_path: Path) -> None:
    process = _toy(tmp_path, {})
    timer = threading.Timer(30, process.kill)  # bound the whole run
    timer.start()
    try:
        assert process.stdout is not None
        started = json.loads(process.stdout.readline())
        assert {k: started[k] for k in ("level", "source", "message", "answer")} == {
            "level": "info",
            "source": "toy",
            "message": "started",
            "answer": 42,
        }
        assert started["timestamp"].endswith("Z")
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=20)
        assert process.returncode == 0
        assert [json.loads(line)["message"] for line in out.splitlines()] == ["toy stopping", "stopped"]
    finally:
        timer.cancel()
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_reply_sends_json_or_bytes_with_their_length() -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/json":
                reply(self, 503, {"ready": False}, headers=[("X-Why", "starting")])
            else:
                reply(self, 404, b"not found\n", "text/plain")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        answer = requests.get(base + "/json", timeout=5)
        assert (answer.status_code, answer.json(), answer.headers["X-Why"]) == (503, {"ready": False}, "starting")
        assert answer.headers["Content-Type"] == "application/json"
        assert answer.headers["Content-Length"] == str(len(answer.content))
        other = requests.get(base + "/other", timeout=5)
        assert (other.status_code, other.text, other.headers["Content-Type"]) == (404, "not found\n", "text/plain")
    finally:
        server.shutdown()
        server.server_close()
