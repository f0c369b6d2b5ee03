"""A BBS that restarts, through the real router: restored with its state it costs no request; restarted
empty, Copilot holds the empty listing (bbs.withdrawal_hold_seconds) and the routes keep serving until
the hold ends, after which the withdrawal, still listed, is applied. A bounded client loop on loopback
counts every failed request (docs/operating.md, "A BBS that lost its state, or hangs")."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import requests

from devtools.cell import CellInstance
from devtools.tier import Tier, start_tier_with_ops, wait_until

HOLD_SECONDS = 8
MAX_REQUESTS = 3000  # the client loop is bounded in count as well as in time
_OPS = f"""
- type: replace
  path: /instance_groups/name=local/jobs/name=copilot/properties/bbs/withdrawal_hold_seconds?
  value: {HOLD_SECONDS}
- type: replace
  path: /instance_groups/name=local/jobs/name=copilot/properties/bbs/withdrawal_hold_minimum?
  value: 2
"""


@dataclass
class Traffic:
    """Requests through the router to some hosts, round robin, a fresh connection each; every answer that
    is not 200 from the host's own app counts as a failure."""

    tier: Tier
    hosts: dict[str, set[str]]  # host -> the bodies (instance guids) that may answer it
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _loop(self) -> None:
        hosts = list(self.hosts)
        for n in range(MAX_REQUESTS):
            if self._stop.is_set():
                return
            host = hosts[n % len(hosts)]
            try:
                response = self.tier.get(host, timeout=5)
                if response.status_code == 200 and response.text.strip() in self.hosts[host]:
                    self.ok += 1
                else:
                    self.failures.append(f"{host}: {response.status_code} {response.text.strip()[:40]}")
            except requests.RequestException as error:
                self.failures.append(f"{host}: {type(error).__name__}")
            time.sleep(0.005)  # pacing of the load, not synchronisation

    def __enter__(self) -> Traffic:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        wait_until(lambda: self.ok >= 20, timeout=30, message="traffic before the fault")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=10)

    @property
    def total(self) -> int:
        return self.ok + len(self.failures)


@pytest.fixture(scope="module")
def guarded_tier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tier]:
    tier = start_tier_with_ops(tmp_path_factory.mktemp("tier-bbs-lost-state"), "bbs-withdrawal-hold", _OPS)
    yield tier
    try:
        assert tier.envoy.rejected_updates() == {}
    finally:
        tier.stop()


@pytest.fixture
def two_apps(guarded_tier: Tier) -> Iterator[dict[str, set[str]]]:
    """Two apps of two instances each, serving through the router; stopped (and forgotten) afterwards."""
    tier, started = guarded_tier, []
    hosts: dict[str, set[str]] = {}
    name = f"a{time.monotonic_ns() % 10**8}"
    for app in ("one", "two"):
        process, host = f"{name}-{app}", f"{name}-{app}.example.com"
        tier.bbs.desire_lrp(process, http_routes=[{"hostnames": [host], "port": 8080}], instances=2)
        guids = {f"{process}-i{index}" for index in range(2)}
        for index in range(2):
            started.append(tier.start_instance(process, index, f"{process}-i{index}"))
        hosts[host] = guids
    for host, guids in hosts.items():
        seen: set[str] = set()
        wait_until(lambda h=host, s=seen, g=guids: s.add(tier.get(h).text.strip()) or s == g, timeout=30, message=host)
    yield hosts
    _stop(tier, started)


def _stop(tier: Tier, instances: list[CellInstance]) -> None:
    """Stops the instances and, as Diego would, removes what the BBS still has of them."""
    for instance in instances:
        instance.stop()
    for lrp in tier.bbs.actual_lrps():
        tier.bbs.remove_instance(lrp.actual_lrp_key.process_guid, lrp.actual_lrp_key.index)
    for desired in tier.bbs.desired_lrps():
        tier.bbs.remove_desired_lrp(desired.process_guid)


def _metric(tier: Tier, name: str) -> float:
    for line in tier.metrics().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _report(case: str, traffic: Traffic) -> None:
    print(f"\nbbs lost state: {case}: {len(traffic.failures)} failed of {traffic.total} ({traffic.failures[:10]})")


def test_a_bbs_restarted_with_its_state_costs_no_request(guarded_tier: Tier, two_apps: dict[str, set[str]]) -> None:
    tier = guarded_tier
    syncs = _metric(tier, "copilot_bbs_syncs_total")
    with Traffic(tier, two_apps) as traffic:
        tier.bbs.restart(keep_state=True)
        wait_until(lambda: _metric(tier, "copilot_bbs_syncs_total") > syncs, timeout=30, message="copilot to relist")
        wait_until(lambda: tier.copilot_health()["bbs_synced"], timeout=30, message="copilot live again")
        after = traffic.ok
        wait_until(lambda: traffic.ok >= after + 100, timeout=30, message="traffic after the restart")
    _report("restarted with its state", traffic)
    assert traffic.failures == []
    assert tier.copilot_health()["bbs_withdrawal_hold"] is None


def test_a_bbs_restarted_empty_keeps_routes_for_the_hold_then_withdraws_them(
    guarded_tier: Tier, two_apps: dict[str, set[str]]
) -> None:
    """Before the fix every route answered 404 within a second of the empty BBS being listed."""
    tier = guarded_tier
    with Traffic(tier, two_apps) as traffic:
        tier.bbs.restart(keep_state=False)
        wait_until(lambda: tier.copilot_health()["bbs_withdrawal_hold"] is not None, timeout=30, message="the hold")
        hold = tier.copilot_health()["bbs_withdrawal_hold"]
        assert hold["instances_withdrawn"] == 4 and hold["desired_lrps_withdrawn"] == 2
        assert _metric(tier, "copilot_bbs_withdrawal_held") == 1
        # traffic until shortly before the hold ends: every request still reaches its app
        wait_until(
            lambda: (tier.copilot_health()["bbs_withdrawal_hold"] or {"applied_in_seconds": 0})["applied_in_seconds"] < 1.5,
            timeout=HOLD_SECONDS + 10,
            interval=0.2,
            message="the hold to near its end",
        )
    _report("restarted empty, during the hold", traffic)
    assert traffic.failures == []
    assert traffic.total >= 100

    # The BBS still lists nothing once the hold is over: that is applied, and the routes go.
    def gone() -> bool:
        return all(tier.get(host).status_code == 404 for host in two_apps)

    wait_until(gone, timeout=HOLD_SECONDS + 20, message="the persisting withdrawal to be applied")
    assert tier.copilot_health()["bbs_withdrawal_hold"] is None
    assert _metric(tier, "copilot_bbs_withdrawal_held") == 0
