"""The README's local sequence, as a newcomer runs it: run-local, cf-local push, curl through the router,
scale 1 -> 3, stop the app (404), stop the tier (nothing left listening)."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
import requests
import yaml

from devtools import peers
from devtools.ports import free_ports
from devtools.waiting import wait_until

SCRIPTS = peers.REPO / "scripts"


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def local(tmp_path: Path):
    # A root and ports of its own, so the test never meets a tier someone else runs on this machine.
    names = yaml.safe_load((peers.REPO / "manifests" / "local-ports.yml").read_text())
    ports = free_ports(list(names))
    env = {**os.environ, "ISTIO_ROUTING_LOCAL_ROOT": str(tmp_path / "local")}

    def run(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([str(SCRIPTS / script), *args], env=env, capture_output=True, text=True, timeout=300)
        if check:
            assert result.returncode == 0, f"{script} {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result

    yield run, ports
    run("run-local", "stop", check=False)


def test_run_push_curl_scale_stop(local) -> None:
    run, ports = local
    out = run("run-local", "start", *(f"-v{name}={port}" for name, port in ports.items())).stdout
    assert "The routing tier is up" in out
    router = f"http://127.0.0.1:{ports['router_http_port']}"

    out = run("cf-local", "push", "hello").stdout
    assert f"curl -H 'Host: hello.apps.local' {router}/" in out

    def hello() -> requests.Response:
        return requests.get(router, headers={"Host": "hello.apps.local"}, timeout=5)

    wait_until(lambda: hello().status_code == 200, timeout=60, message="the pushed app to answer")
    response = hello()
    assert response.text.startswith("hello-v1-0"), response.text

    run("cf-local", "scale", "hello", "-i", "3")
    seen: set[str] = set()

    def every_instance() -> bool:
        seen.add(hello().text.strip().rsplit("-", 1)[0])
        return len(seen) >= 3

    wait_until(every_instance, timeout=30, message="requests to reach three instances")
    assert seen == {"hello-v1-0", "hello-v1-1", "hello-v1-2"}

    assert "RUNNING" in run("run-local", "status").stdout
    # The release's smoke-test errand, its script unchanged, passes against the local tier.
    assert "SMOKE TEST PASSED" in run("run-local", "smoke-test").stdout
    run("cf-local", "stop", "hello")
    wait_until(lambda: hello().status_code == 404, timeout=30, message="the stopped app's route to answer 404")

    out = run("run-local", "stop").stdout
    assert "nothing it started is listening" in out
    assert [name for name, port in ports.items() if _listening(port)] == []


def test_taken_port_is_refused_with_its_name(local) -> None:
    run, ports = local
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", ports["router_admin_port"]))
        blocker.listen()
        result = run("run-local", "start", *(f"-v{name}={port}" for name, port in ports.items()), check=False)
    assert result.returncode != 0
    assert f"router_admin_port={ports['router_admin_port']}" in result.stderr
