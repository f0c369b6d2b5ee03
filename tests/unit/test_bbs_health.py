"""Copilot's /health while the BBS event stream is down: not "ok", BBS not synced, last known routes kept."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import requests
from copilot_helpers import copilot_config

from bbs_double.server import BBSDouble
from copilot.main import Copilot

pytestmark = pytest.mark.timeout(60)


def test_health_reports_bbs_stale_while_no_stream_is_up(bbs_double: BBSDouble, bbs_pki, wait_until: Callable[..., None]) -> None:
    bbs_double.desire_lrp("pg", http_routes=[{"hostnames": ["a.example.com"], "port": 8080}])
    bbs_double.start_instance("pg", 0, address="10.0.0.1", host_port=61000)
    config = copilot_config(bbs_double.url, bbs_pki, reconcile_interval_seconds=30)
    copilot = Copilot(config)
    copilot.start()
    try:
        url = f"http://127.0.0.1:{copilot.health.port}/health"

        def health() -> dict:
            return requests.get(url, timeout=5).json()

        wait_until(lambda: health()["status"] == "ok", message="ok once subscribed and listed")
        assert health()["bbs_synced"] is True and health()["backends"] == 1

        # BBS keeps answering, but with an error type no client knows: no stream can be established
        bbs_double.fail_requests(error_type=77, count=1_000_000)
        bbs_double.close_event_streams()
        wait_until(lambda: health()["status"] == "bbs_stale", message="the status to say BBS is stale")
        response = requests.get(url, timeout=5)
        assert response.status_code == 200  # still serving the last known routes
        details = response.json()
        assert details["bbs_synced"] is False and details["bbs_staleness_seconds"] > 0
        assert (details["routes"], details["backends"]) == (1, 1)
        metrics_url = f"http://127.0.0.1:{copilot.health.port}/metrics"
        wait_until(
            lambda: 'copilot_bbs_unrecognized_total{field="Error.type"}' in requests.get(metrics_url, timeout=5).text,
            message="the unknown error type to be counted",
        )
        assert health()["status"] == "bbs_stale"

        bbs_double.clear_failures()
        bbs_double.start_instance("pg", 1, address="10.0.0.2", host_port=61001)
        wait_until(lambda: health()["status"] == "ok" and health()["backends"] == 2, message="ok again, converged")
        assert health()["bbs_staleness_seconds"] == 0
    finally:
        copilot.stop()
