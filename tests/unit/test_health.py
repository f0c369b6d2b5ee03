"""The operator endpoint: /health (JSON) and /metrics (Prometheus), standalone and in a whole Copilot fed by BBS."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import requests
from copilot_helpers import copilot_config

from bbs_double.server import BBSDouble
from copilot.health import HealthServer
from copilot.main import Copilot

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def health() -> Iterator[tuple[HealthServer, dict]]:
    state = {"healthy": True, "details": {"status": "ok", "routes": 3}, "scrapes": 0}

    def refresh() -> None:
        state["scrapes"] += 1

    server = HealthServer("127.0.0.1:0", lambda: (state["healthy"], state["details"]), refresh)
    server.start()
    yield server, state
    server.stop()


def url(server: HealthServer, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


def test_health_is_json(health) -> None:
    server, _ = health
    response = requests.get(url(server, "/health"), timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"status": "ok", "routes": 3}


def test_unhealthy_is_503(health) -> None:
    server, state = health
    state["healthy"], state["details"] = False, {"status": "broken"}
    response = requests.get(url(server, "/health"), timeout=5)
    assert response.status_code == 503
    assert response.json() == {"status": "broken"}


def test_metrics_refresh_before_each_scrape(health) -> None:
    server, state = health
    response = requests.get(url(server, "/metrics"), timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    for name in ("copilot_routes", "copilot_backends", "copilot_bbs_staleness_seconds", "copilot_hosts_rejected_total"):
        assert f"# TYPE {name}" in response.text
    requests.get(url(server, "/metrics"), timeout=5)
    assert state["scrapes"] == 2


def test_unknown_path_is_404(health) -> None:
    server, _ = health
    assert requests.get(url(server, "/"), timeout=5).status_code == 404
    assert requests.get(url(server, "/healthz"), timeout=5).status_code == 404


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_copilot_reports_bbs_state(bbs_double: BBSDouble, bbs_pki, wait_until: Callable[..., None]) -> None:
    bbs_double.desire_lrp("pg", http_routes=[{"hostnames": ["a.example.com", "b.example.com/api"], "port": 8080}], instances=2)
    bbs_double.start_instance("pg", 0, address="10.0.0.1", host_port=61000)
    bbs_double.start_instance("pg", 1, address="10.0.0.2", host_port=61001)
    config = copilot_config(bbs_double.url, bbs_pki, reconcile_interval_seconds=1)
    copilot = Copilot(config)
    copilot.start()
    try:
        base = f"http://127.0.0.1:{copilot.health.port}"

        def health() -> dict:
            return requests.get(base + "/health", timeout=5).json()

        wait_until(lambda: health()["bbs_synced"] and health()["bbs_staleness_seconds"] == 0, message="the BBS sync")
        details = health()
        assert details["status"] == "ok"
        assert (details["routes"], details["backends"]) == (2, 2)
        assert details["istiod_streams"] == 0
        text = requests.get(base + "/metrics", timeout=5).text
        assert _metric(text, "copilot_routes") == 2
        assert _metric(text, "copilot_backends") == 2
        assert _metric(text, "copilot_bbs_staleness_seconds") == 0

        bbs_double.crash_instance("pg", 1)
        wait_until(lambda: health()["backends"] == 1, message="the crash to be counted")
        bbs_double.stop()
        wait_until(lambda: health()["bbs_staleness_seconds"] > 0, message="staleness while BBS is away")
        assert health()["routes"] == 2  # last known routes are kept
        assert _metric(requests.get(base + "/metrics", timeout=5).text, "copilot_bbs_staleness_seconds") > 0
    finally:
        copilot.stop()
