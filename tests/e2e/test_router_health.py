"""The router's load-balancer health check (`/health` on the istio-router job's static listener) through the
real Envoy, rendered from the job: it must not say 200 before the router has its Gateway listeners and
routes from istiod, and it says 503 from the moment the drain script starts.

Envoy opens no listener before its initialization is done (first CDS and LDS answers, listeners warmed).
With Envoy's default `initial_fetch_timeout` it gives up waiting for istiod after 15 s per step and opens
the health listener, answering 200 with no Gateway listener at all; the job's bootstrap waits as long
as istiod takes. This tier is the module's own: it stops istiod and drains the router.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from devtools.tier import Tier, start_tier, wait_until
from local_tier import supervisor

HOST = "health.example.com"
# Envoy's default initial_fetch_timeout (15 s) for CDS, then for LDS, and a margin: how long an Envoy
# with the default would have waited for an unreachable istiod before opening its health listener.
DEFAULT_INITIAL_FETCHES_SECONDS = 2 * 15 + 5
DRAIN_OPS = """
- type: replace
  path: /instance_groups/name=local/jobs/name=istio-router/properties/drain/lb_deregister_seconds
  value: 300
"""

pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope="module")
def health_tier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tier]:
    # A load balancer's deregistration window long enough to look at the health check during the drain.
    workdir = tmp_path_factory.mktemp("tier-router-health")
    ops = workdir / "drain.yml"
    ops.write_text(DRAIN_OPS)
    tier = start_tier(workdir / "tier", ops_files=[ops])
    yield tier
    tier.stop()


@pytest.fixture(scope="module")
def app(health_tier: Tier) -> Iterator[None]:
    health_tier.bbs.desire_lrp("health-pg", http_routes=[{"hostnames": [HOST], "port": 8080}])
    instance = health_tier.start_instance("health-pg", 0, "health-i0")
    wait_until(lambda: health_tier.get(HOST).text.strip() == "health-i0", timeout=30, message="the app")
    yield
    instance.stop()


def _ctl(tier: Tier, *args: str) -> None:
    result = supervisor.ctl(tier.layout, *args)
    assert result.returncode == 0, f"supervisorctl {' '.join(args)}: {result.stdout}{result.stderr}"


def _stat(tier: Tier, name: str) -> int:
    text = requests.get(f"http://127.0.0.1:{tier.envoy.port}/stats?filter=^{name}$", timeout=5).text
    return int(text.split(":")[1])


def test_health_is_refused_until_istiod_gave_the_router_its_routes(health_tier: Tier, app: None) -> None:
    tier = health_tier
    assert tier.router_health() == 200
    _ctl(tier, "stop", "pilot-discovery")
    try:
        before = tier.pid("istio-router-envoy")
        _ctl(tier, "restart", "istio-router-envoy")  # a router (re)started while istiod is unreachable
        wait_until(lambda: tier.pid("istio-router-envoy") not in (0, before), timeout=30, message="a new Envoy")
        wait_until(
            lambda: requests.get(f"http://127.0.0.1:{tier.envoy.port}/server_info", timeout=5).ok,
            timeout=30,
            message="the new Envoy's admin API",
        )
        wait_until(lambda: _stat(tier, "cluster_manager.cds.update_failure") > 0, timeout=30, message="istiod refused")

        # Observed for as long as Envoy's default would have waited: never 200, only refused (or 503).
        answers: dict[int | None, int] = {}
        deadline = time.monotonic() + DEFAULT_INITIAL_FETCHES_SECONDS
        while time.monotonic() < deadline:
            code = tier.router_health()
            answers[code] = answers.get(code, 0) + 1
            assert code in (None, 503), f"the router said {code} with no routes from istiod ({answers})"
            time.sleep(0.2)  # polling pace of the observation window, not synchronisation
        assert _stat(tier, "listener_manager.lds.init_fetch_timeout") == 0  # Envoy never gave up waiting
        assert _stat(tier, "cluster_manager.cds.init_fetch_timeout") == 0
        server_info = requests.get(f"http://127.0.0.1:{tier.envoy.port}/server_info", timeout=5).json()
        assert server_info["state"] != "LIVE"
    finally:
        _ctl(tier, "start", "pilot-discovery")

    # istiod is back: the first answer the load balancer gets is 200, and by then the route works.
    wait_until(lambda: tier.router_health() is not None, timeout=120, message="the router's health listener")
    assert tier.router_health() == 200
    response = tier.get(HOST)
    assert (response.status_code, response.text.strip()) == (200, "health-i0")


def test_health_is_503_from_the_start_of_the_drain(health_tier: Tier, app: None, tmp_path: Path) -> None:
    tier = health_tier
    wait_until(lambda: tier.router_health() == 200, timeout=60, message="a healthy router")
    drain_log = tmp_path / "drain.log"
    drain = subprocess.Popen(
        [str(tier.layout.jobs / "istio-router" / "bin" / "drain")],
        env={"PATH": "/usr/bin:/bin", "DRAIN_LOG": str(drain_log)},
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_until(lambda: drain_log.is_file() and "health check failing" in drain_log.read_text(), message="the drain")
        assert tier.router_health() == 503
        # While the load balancer deregisters the router, requests already sent still get through.
        response = tier.get(HOST)
        assert (response.status_code, response.text.strip()) == (200, "health-i0")
        assert drain.poll() is None  # still in the deregistration window: the 503 is the drain's
    finally:
        os.killpg(drain.pid, signal.SIGTERM)
        drain.wait(timeout=10)
        if drain.stdout is not None:
            drain.stdout.close()
