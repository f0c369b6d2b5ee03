"""Chaos through the real router: a bounded client loop runs while one part of the tier at a time is
killed (SIGKILL; supervisor restarts it, as monit would) or a peer loses its state, and every failed
request is counted. The budget per case is the one `docs/operating.md` ("Failure budget") documents:
0 for every restart that keeps state; a bounded few for an app instance dying before Diego reports it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import requests

from devtools.tier import Tier, start_tier, wait_until
from local_tier import launch

# docs/operating.md, "Failure budget": failed requests allowed per case.
BUDGET = {
    "copilot killed": 0,
    "istiod killed": 0,
    "bbs restarted with its state": 0,
    "bbs restarted empty": 0,
    "app instance killed": 5,
}
MAX_REQUESTS = 3000  # per case: the loop is bounded in count as well as in time
INTERVAL = 0.01
APP_INSTANCES = 3


@dataclass
class Traffic:
    """A client loop on one host through the router: a fresh connection per request, as separate clients."""

    tier: Tier
    host: str
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _loop(self) -> None:
        for _ in range(MAX_REQUESTS):
            if self._stop.is_set():
                return
            try:
                response = self.tier.get(self.host, timeout=5)
                if response.status_code == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"{response.status_code} {response.headers.get('X-Cf-Routererror', '')}")
            except requests.RequestException as error:
                self.failures.append(type(error).__name__)
            time.sleep(INTERVAL)  # pacing of the load, not synchronisation

    def during(self, case: Callable[[], None], settle: int = 50) -> None:
        """Runs `case` while the loop runs, then keeps the loop going for `settle` more successes."""
        thread = threading.Thread(target=self._loop, daemon=True)
        thread.start()
        try:
            wait_until(lambda: self.ok >= 20, timeout=30, message="traffic before the fault")
            case()
            after = self.ok
            wait_until(lambda: self.ok >= after + settle, timeout=60, message="traffic after recovery")
        finally:
            self._stop.set()
            thread.join(timeout=10)


@pytest.fixture(scope="module")
def chaos_tier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tier]:
    tier = start_tier(tmp_path_factory.mktemp("tier-chaos"))
    yield tier
    tier.stop()


@pytest.fixture(scope="module")
def app(chaos_tier: Tier) -> Iterator[str]:
    """An app with three instances on the cell, serving `chaos.example.com` (three: a BBS listing that
    withdraws all of them is above the withdrawal guard's default minimum)."""
    host = "chaos.example.com"
    _desire(chaos_tier, host)
    instances = [chaos_tier.start_instance("chaos-pg", i, f"chaos-i{i}") for i in range(APP_INSTANCES)]
    chaos_tier.wait_for_every_instance(host, [f"chaos-i{i}" for i in range(APP_INSTANCES)])
    chaos_tier.extra["chaos_instances"] = instances
    yield host
    for instance in instances:
        instance.stop()


def _desire(tier: Tier, host: str) -> None:
    tier.bbs.desire_lrp("chaos-pg", http_routes=[{"hostnames": [host], "port": 8080}], instances=APP_INSTANCES)


def _kill(tier: Tier, program: str) -> None:
    """SIGKILL to a supervised program; returns once supervisor runs it again under a new pid."""
    before = tier.pid(program)
    os.kill(before, signal.SIGKILL)
    wait_until(lambda: tier.pid(program) not in (0, before), timeout=30, message=f"{program} to be restarted")


def _ready(tier: Tier) -> None:
    wait_until(lambda: tier.copilot_health().get("serving_istiod"), timeout=90, message="copilot serving istiod again")


def _report(case: str, traffic: Traffic) -> None:
    print(f"\nchaos: {case}: {len(traffic.failures)} failed of {traffic.ok + len(traffic.failures)} ({traffic.failures[:10]})")
    assert len(traffic.failures) <= BUDGET[case], (case, traffic.failures)


def test_copilot_killed(chaos_tier: Tier, app: str) -> None:
    def case() -> None:
        _kill(chaos_tier, "copilot")
        wait_until(lambda: launch.listening(chaos_tier.ports["copilot_cc_port"]), timeout=30, message="copilot's CC API")
        launch.cloud_controller_sync(chaos_tier.layout, chaos_tier.ports)  # CC's route syncer, as on a restart
        _ready(chaos_tier)

    traffic = Traffic(chaos_tier, app)
    traffic.during(case)
    _report("copilot killed", traffic)


def test_istiod_killed(chaos_tier: Tier, app: str) -> None:
    def case() -> None:
        _kill(chaos_tier, "pilot-discovery")
        wait_until(lambda: launch.listening(chaos_tier.ports["istiod_grpc_port"]), timeout=60, message="istiod again")

    traffic = Traffic(chaos_tier, app)
    traffic.during(case)
    _report("istiod killed", traffic)


def test_bbs_restarted_with_its_state(chaos_tier: Tier, app: str) -> None:
    def case() -> None:
        chaos_tier.bbs.restart(keep_state=True)  # streams end, connections are cut; the LRPs are kept
        wait_until(lambda: chaos_tier.bbs.subscriber_count() > 0, timeout=60, message="copilot to subscribe again")
        wait_until(lambda: chaos_tier.copilot_health()["bbs_synced"], timeout=60, message="copilot to relist")

    traffic = Traffic(chaos_tier, app)
    traffic.during(case)
    _report("bbs restarted with its state", traffic)


def test_app_instance_killed(chaos_tier: Tier, app: str) -> None:
    # A third instance dies (its process and its container proxy) and Diego has not noticed yet: the
    # router must stop sending it requests by itself.
    doomed = chaos_tier.start_instance("chaos-pg", APP_INSTANCES, "chaos-doomed")
    seen: set[str] = set()
    wait_until(lambda: seen.add(chaos_tier.get(app).text.strip()) or "chaos-doomed" in seen, timeout=30, message="it to serve")

    traffic = Traffic(chaos_tier, app)
    try:
        traffic.during(doomed.stop, settle=200)
    finally:
        chaos_tier.bbs.remove_instance("chaos-pg", APP_INSTANCES)
    _report("app instance killed", traffic)


def test_bbs_restarted_empty_and_restored(chaos_tier: Tier, app: str) -> None:
    # The BBS comes back without its database (a lost or replaced one): its listing would withdraw every
    # route. Copilot holds it (docs/operating.md, "A BBS that lost its state"); the operator restores the
    # state, Diego's events bring it back, and no request fails meanwhile.
    def case() -> None:
        chaos_tier.bbs.restart(keep_state=False)
        wait_until(lambda: chaos_tier.copilot_health().get("bbs_withdrawal_hold"), timeout=60, message="the hold")
        _desire(chaos_tier, app)
        for index, instance in enumerate(chaos_tier.extra["chaos_instances"]):
            chaos_tier.bbs.start_instance("chaos-pg", index, **instance.net_info())
        wait_until(lambda: chaos_tier.copilot_health()["bbs_synced"], timeout=60, message="copilot subscribed again")

    traffic = Traffic(chaos_tier, app)
    traffic.during(case)
    _report("bbs restarted empty", traffic)
