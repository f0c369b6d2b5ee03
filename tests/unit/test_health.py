"""The operator endpoint: /health (readiness, JSON), /live (liveness) and /metrics (Prometheus), standalone and in a
whole Copilot fed by BBS: /health is 503 until Copilot serves istiod and again once it stops; /live is 200 throughout."""

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

    state["live"] = True
    server = HealthServer(
        "127.0.0.1:0",
        lambda: (state["healthy"], state["details"]),
        refresh,
        live=lambda: (state["live"], {"live": state["live"]}),
    )
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


def test_live_is_its_own_answer(health) -> None:
    server, state = health
    state["healthy"] = False  # not ready ...
    assert requests.get(url(server, "/health"), timeout=5).status_code == 503
    response = requests.get(url(server, "/live"), timeout=5)  # ... but alive
    assert (response.status_code, response.json()) == (200, {"live": True})
    state["live"] = False
    assert requests.get(url(server, "/live"), timeout=5).status_code == 503


def test_live_defaults_to_answering() -> None:
    server = HealthServer("127.0.0.1:0", lambda: (False, {}), lambda: None)
    server.start()
    try:
        assert requests.get(url(server, "/live"), timeout=5).status_code == 200
    finally:
        server.stop()


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


def test_not_ready_until_bbs_is_listed_and_not_ready_once_stopping(
    bbs_double: BBSDouble, bbs_pki, wait_until: Callable[..., None]
) -> None:
    """Readiness is what istiod gets: nothing until BBS was listed and published, so /health is 503 until
    then (whatever the body says), 200 while serving, and 503 again from the moment Copilot stops."""
    bbs_double.desire_lrp("pg", http_routes=[{"hostnames": ["a.example.com"], "port": 8080}])
    bbs_double.start_instance("pg", 0, address="10.0.0.1", host_port=61000)
    bbs_double.fail_requests(error_type=77, count=1_000_000)  # BBS answers, but no listing succeeds
    copilot = Copilot(copilot_config(bbs_double.url, bbs_pki))
    copilot.start()
    base = f"http://127.0.0.1:{copilot.health.port}"
    try:
        wait_until(lambda: bbs_double.requests_received() >= 2, message="Copilot to try BBS and fail")
        response = requests.get(base + "/health", timeout=5)
        assert response.status_code == 503
        details = response.json()
        assert details["status"] == "starting" and details["ready"] is False
        assert details["bbs_synced"] is False and details["serving_istiod"] is False
        live = requests.get(base + "/live", timeout=5)
        assert live.status_code == 200 and live.json() == {"live": True, "ready": False}

        bbs_double.clear_failures()
        wait_until(lambda: requests.get(base + "/health", timeout=5).status_code == 200, message="ready once BBS is listed")
        details = requests.get(base + "/health", timeout=5).json()
        assert details["status"] == "ok" and details["ready"] is True and details["serving_istiod"] is True
        assert details["backends"] == 1
        assert requests.get(base + "/live", timeout=5).json() == {"live": True, "ready": True}
    finally:
        copilot.stop()
    ready, details = copilot.status()
    assert ready is False and details["status"] == "stopping" and details["ready"] is False
    assert copilot.live() == (True, {"live": True, "ready": False})


def test_stopping_copilot_answers_503_while_it_shuts_down(bbs_double: BBSDouble, bbs_pki, wait_until) -> None:
    """From the first step of `stop()`, before its listeners close, /health says 503 `stopping`."""
    copilot = Copilot(copilot_config(bbs_double.url, bbs_pki))
    copilot.start()
    base = f"http://127.0.0.1:{copilot.health.port}"
    seen: dict = {}
    try:
        wait_until(lambda: requests.get(base + "/health", timeout=5).status_code == 200, message="ready")
        # The BBS watcher is among the first things stop() takes down (the health server is the last):
        # look at /health and /live from inside its (public) stop, then let it stop.
        watcher = copilot.watcher
        assert watcher is not None
        watcher_stop = watcher.stop

        def observing_stop() -> None:
            response = requests.get(base + "/health", timeout=5)
            seen.update(code=response.status_code, body=response.json())
            seen["live"] = requests.get(base + "/live", timeout=5).status_code
            watcher_stop()

        watcher.stop = observing_stop  # type: ignore[method-assign]
    finally:
        copilot.stop()
    assert seen["code"] == 503 and seen["body"]["status"] == "stopping" and seen["live"] == 200
