"""The istio-smoke-tests errand's run script, with a fake cf CLI and a local stand-in for the routers."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from release_helpers import render, smoke_properties

from devtools.peers import REPO

FAKE_CF = """#!/usr/bin/env bash
echo "cf $*" >>"$FAKE_CF_LOG"
case "$1" in
  version) echo "cf version 8.0.0-fake" ;;
  "$FAKE_CF_FAIL") echo "FAILED: $1 went wrong" ; exit 1 ;;
  *) echo "OK" ;;
esac
"""


class Router:
    """Answers like the Istio routers would once the route exists: the app's page for its host."""

    def __init__(self, status: int = 200, body: str | None = None) -> None:
        self.hosts: list[str] = []
        router = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                router.hosts.append(self.headers.get("Host", ""))
                page = body if body is not None else (REPO / "src/istio-smoke-tests/app/index.html").read_text()
                data = page.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def router():
    routers: list[Router] = []

    def make(**kwargs) -> Router:
        routers.append(Router(**kwargs))
        return routers[-1]

    yield make
    for r in routers:
        r.stop()


def run_errand(tmp_path: Path, properties: dict, fail: str = "") -> tuple[subprocess.CompletedProcess, list[str]]:
    packages = tmp_path / "packages"
    (packages / "cf-cli" / "bin").mkdir(parents=True)
    cf = packages / "cf-cli" / "bin" / "cf"
    cf.write_text(FAKE_CF)
    cf.chmod(0o755)
    shutil.copytree(REPO / "src/istio-smoke-tests/app", packages / "istio-smoke-tests" / "app")
    run = render("istio-smoke-tests", properties, tmp_path / "job")["bin/run"]
    log = tmp_path / "cf.log"
    env = {"PATH": os.environ["PATH"], "BOSH_PACKAGES_DIR": str(packages), "FAKE_CF_LOG": str(log), "FAKE_CF_FAIL": fail}
    result = subprocess.run([str(run)], capture_output=True, text=True, env=env, timeout=60)
    calls = log.read_text().splitlines() if log.exists() else []
    return result, calls


def test_passes_and_says_every_step(router, tmp_path):
    r = router()
    result, calls = run_errand(tmp_path, smoke_properties(router_endpoint=r.endpoint, cf={"admin_password": "p'w d"}))
    assert result.returncode == 0, result.stdout + result.stderr
    steps = [line for line in result.stdout.splitlines() if line.startswith("==> step")]
    assert [s.split(": ", 1)[1].split()[0] for s in steps] == ["check", "target", "authenticate", "create", "push", "map", "curl"]
    assert "SMOKE TEST PASSED" in result.stdout
    verbs = [c.split()[1] for c in calls]
    assert verbs == ["version", "api", "auth", "create-org", "target", "create-space", "target", "push", "map-route",
                     "delete-org"]
    assert calls[1] == "cf api https://api.sys.example.com"
    assert calls[2] == "cf auth", "the password must not be on the command line"
    push = calls[7].split()
    assert push[push.index("-b") + 1] == "staticfile_buildpack" and "--no-route" in push
    app = push[2]
    assert calls[8] == f"cf map-route {app} istio.example.com --hostname {app}"
    assert r.hosts and r.hosts[-1] == f"{app}.istio.example.com"
    assert calls[9].startswith("cf delete-org istio-smoke-tests-") and calls[9].endswith(" -f")


def test_skip_ssl_validation_is_passed_to_cf(router, tmp_path):
    r = router()
    result, calls = run_errand(tmp_path, smoke_properties(router_endpoint=r.endpoint, cf={"skip_ssl_validation": True}))
    assert result.returncode == 0
    assert calls[1] == "cf api https://api.sys.example.com --skip-ssl-validation"


def test_a_failing_cf_step_names_the_step_and_cleans_up(router, tmp_path):
    r = router()
    result, calls = run_errand(tmp_path, smoke_properties(router_endpoint=r.endpoint), fail="push")
    assert result.returncode == 1
    assert "SMOKE TEST FAILED at step 5 (push the test app" in result.stderr
    assert "cf push' exited with status 1" in result.stderr
    assert "FAILED: push went wrong" in result.stdout
    assert calls[-1].startswith("cf delete-org")
    assert "PASSED" not in result.stdout


def test_auth_failure_needs_no_cleanup(router, tmp_path):
    result, calls = run_errand(tmp_path, smoke_properties(router_endpoint=router().endpoint), fail="auth")
    assert result.returncode == 1
    assert "SMOKE TEST FAILED at step 3 (authenticate as admin)" in result.stderr
    assert not any("delete-org" in c for c in calls)


def test_a_route_that_never_answers_200_fails_with_the_last_status(router, tmp_path):
    r = router(status=404, body="no route")
    result, _ = run_errand(tmp_path, smoke_properties(router_endpoint=r.endpoint, timeout_seconds=2))
    assert result.returncode == 1
    assert "SMOKE TEST FAILED at step 7 (curl" in result.stderr
    assert "last status 404, last body: no route" in result.stderr


def test_a_200_that_is_not_the_app_fails(router, tmp_path):
    r = router(body="some other page")
    result, _ = run_errand(tmp_path, smoke_properties(router_endpoint=r.endpoint))
    assert result.returncode == 1
    assert "status 200 but the body is not the test app's page" in result.stderr
