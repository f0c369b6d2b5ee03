"""The `copilot` command: config errors exit 2 with the message on stderr; --check; a real run and SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from copilot.main import main

SRC = Path(__file__).resolve().parents[2] / "src"


def run_copilot(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run(
        [sys.executable, "-m", "copilot.main", *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def test_bad_config_exits_2_with_the_message_on_stderr(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("bbs:\n  url: http://bbs.service.cf.internal:8889\n")
    result = run_copilot("--config", str(bad))
    assert result.returncode == 2
    assert "invalid config" in result.stderr
    assert "bbs.url: 'http://bbs.service.cf.internal:8889' must be an https:// URL" in result.stderr
    assert result.stdout == ""


def test_check_on_a_good_file_exits_0(tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text("mcp:\n  listen: 127.0.0.1:15030\nlog_level: warning\n")
    result = run_copilot("--config", str(good), "--check")
    assert result.returncode == 0, result.stderr
    assert "config ok" in result.stdout


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tmp_path / "nope.yml")]) == 2
    assert "cannot read config file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "key"),
    [("bogus: 1\n", "bogus: unknown key"), ("log_level: loud\n", "log_level:"), ("health:\n  listen: nope\n", "health.listen:")],
)
def test_main_reports_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str) -> None:
    path = tmp_path / "c.yml"
    path.write_text(text)
    assert main(["--config", str(path), "--check"]) == 2
    assert key in capsys.readouterr().err


def test_check_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"log_level": "error"}')
    assert main(["--config", str(path), "--check"]) == 0
    assert capsys.readouterr().out.strip() == "config ok"


@pytest.mark.timeout(60)
def test_runs_serves_health_and_stops_on_sigterm(tmp_path: Path, wait_until) -> None:
    path = tmp_path / "c.yml"
    path.write_text("mcp:\n  listen: 127.0.0.1:0\nhealth:\n  listen: 127.0.0.1:0\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "copilot.main", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    timer = threading.Timer(30, process.kill)  # bound the whole run
    timer.start()
    try:
        started = None
        assert process.stdout is not None
        for line in process.stdout:
            entry = json.loads(line)
            assert {"timestamp", "level", "source", "message"} <= set(entry)
            if entry["message"] == "copilot started":
                started = entry
                break
        assert started is not None, "copilot never logged that it started"
        assert started["mcp_port"] > 0 and started["tls"] is False
        base = f"http://127.0.0.1:{started['health_port']}"
        assert requests.get(base + "/live", timeout=5).status_code == 200
        # Ready (200) once the first snapshot is published; without sources that follows the start at once.
        wait_until(lambda: requests.get(base + "/health", timeout=5).status_code == 200, message="copilot ready")
        health = requests.get(base + "/health", timeout=5).json()
        assert health["status"] == "ok" and health["ready"] is True and health["bbs_synced"] is True
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        timer.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
