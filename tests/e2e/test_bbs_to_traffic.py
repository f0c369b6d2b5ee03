"""BBS -> Copilot -> istiod -> Envoy: app instances Diego reports RUNNING are reachable through the
router, and stop being reachable when Diego stops them (the spine's seven cases)."""

from __future__ import annotations

import collections
import threading
import time

import requests

from devtools.cell import CellInstance
from devtools.tier import Tier, wait_until


def _serves(tier: Tier, host: str, body: str, path: str = "/") -> bool:
    response = tier.get(host, path)
    return response.status_code == 200 and response.text.strip() == body


def _status(tier: Tier, host: str, path: str = "/") -> int:
    return tier.get(host, path).status_code


def _start(tier: Tier, apps: list, process: str, index: int, guid: str) -> CellInstance:
    instance = tier.start_instance(process, index, guid)
    apps.append(instance)
    return instance


def test_running_instance_is_reachable(tier: Tier, apps, unique) -> None:
    host = f"{unique}.example.com"
    tier.bbs.desire_lrp(f"{unique}-pg", http_routes=[{"hostnames": [host], "port": 8080}])
    _start(tier, apps, f"{unique}-pg", 0, f"{unique}-i0")
    wait_until(lambda: _serves(tier, host, f"{unique}-i0"), message="the instance to serve its route")
    # Hostnames are case-insensitive, as with gorouter.
    assert _serves(tier, host.upper(), f"{unique}-i0")


def test_requests_reach_all_three_instances(tier: Tier, apps, unique) -> None:
    host = f"{unique}.example.com"
    tier.bbs.desire_lrp(f"{unique}-pg", http_routes=[{"hostnames": [host], "port": 8080}], instances=3)
    for index in range(3):
        _start(tier, apps, f"{unique}-pg", index, f"{unique}-i{index}")
    tier.wait_for_every_instance(host, [f"{unique}-i{i}" for i in range(3)], timeout=20)


def test_removed_crashed_and_unroutable_instances_get_no_traffic(tier: Tier, apps, unique) -> None:
    host, process = f"{unique}.example.com", f"{unique}-pg"
    tier.bbs.desire_lrp(process, http_routes=[{"hostnames": [host], "port": 8080}], instances=4)
    for index in range(4):
        _start(tier, apps, process, index, f"{unique}-i{index}")
    wait_until(lambda: len({tier.get(host).text.strip() for _ in range(40)}) == 4, timeout=20, message="4 instances serving")

    tier.bbs.remove_instance(process, 1)
    tier.bbs.crash_instance(process, 2)
    tier.bbs.set_routable(process, 3, False)
    survivors = {f"{unique}-i0"}

    def only_survivors() -> bool:
        return {tier.get(host).text.strip() for _ in range(30)} == survivors

    wait_until(only_survivors, timeout=20, message="only instance 0 to get traffic")
    bodies = collections.Counter(tier.get(host).text.strip() for _ in range(100))
    assert set(bodies) == survivors, bodies

    tier.bbs.remove_instance(process, 0)
    wait_until(lambda: _status(tier, host) == 503, message="503 once the last instance is gone")
    tier.bbs.remove_desired_lrp(process)
    wait_until(lambda: _status(tier, host) == 404, message="404 once the route is gone")


def test_context_path_goes_to_its_own_process(tier: Tier, apps, unique) -> None:
    host = f"{unique}.example.com"
    tier.bbs.desire_lrp(f"{unique}-web", http_routes=[{"hostnames": [host], "port": 8080}])
    tier.bbs.desire_lrp(f"{unique}-api", http_routes=[{"hostnames": [f"{host}/api"], "port": 8080}])
    _start(tier, apps, f"{unique}-web", 0, f"{unique}-web")
    _start(tier, apps, f"{unique}-api", 0, f"{unique}-api")
    wait_until(lambda: _serves(tier, host, f"{unique}-api", "/api/users"), message="/api to reach the api process")
    assert _serves(tier, host, f"{unique}-api", "/api")
    assert _serves(tier, host, f"{unique}-web", "/")
    assert _serves(tier, host, f"{unique}-web", "/apix")  # a path segment boundary, not a string prefix
    assert _serves(tier, host, f"{unique}-web", "/other/api")


def test_copilot_restart_while_traffic_flows(tier: Tier, apps, unique) -> None:
    host, process = f"{unique}.example.com", f"{unique}-pg"
    tier.bbs.desire_lrp(process, http_routes=[{"hostnames": [host], "port": 8080}], instances=2)
    for index in range(2):
        _start(tier, apps, process, index, f"{unique}-i{index}")
    wait_until(lambda: _serves(tier, host, f"{unique}-i0") or _serves(tier, host, f"{unique}-i1"), message="route up")

    failures: list[str] = []
    sent = 0
    stop = threading.Event()

    def load() -> None:
        nonlocal sent
        while not stop.is_set() and sent < 5000:
            sent += 1
            try:
                response = tier.get(host, timeout=5)
                if response.status_code != 200:
                    failures.append(str(response.status_code))
            except requests.RequestException as error:
                failures.append(type(error).__name__)
            time.sleep(0.005)  # pacing of the load, not synchronisation

    worker = threading.Thread(target=load)
    worker.start()
    try:
        wait_until(lambda: sent > 20, message="traffic to flow")
        tier.restart_copilot()
        wait_until(lambda: tier.copilot_health()["serving_istiod"], message="Copilot to rebuild its state from BBS")
        # State was rebuilt from BBS: a change made now flows through the restarted Copilot.
        _start(tier, apps, process, 2, f"{unique}-i2")
        wait_until(lambda: _serves(tier, host, f"{unique}-i2"), message="a new instance after the restart")
    finally:
        stop.set()
        worker.join()
    assert sent > 50
    assert failures == [], f"{len(failures)} of {sent} requests failed: {collections.Counter(failures)}"
    health = tier.copilot_health()
    assert health["routes"] >= 1 and health["backends"] >= 3


def test_bbs_down_keeps_last_known_routes(tier: Tier, apps, unique) -> None:
    host, process = f"{unique}.example.com", f"{unique}-pg"
    tier.bbs.desire_lrp(process, http_routes=[{"hostnames": [host], "port": 8080}], instances=2)
    _start(tier, apps, process, 0, f"{unique}-i0")
    wait_until(lambda: _serves(tier, host, f"{unique}-i0"), message="route up")

    tier.bbs.stop()
    try:
        wait_until(lambda: tier.copilot_health()["bbs_staleness_seconds"] > 0, message="Copilot to notice BBS is gone")
        for _ in range(50):
            assert _serves(tier, host, f"{unique}-i0")
        assert "copilot_bbs_staleness_seconds" in tier.metrics()
        # Diego changes things while BBS is unreachable from Copilot...
        second = tier.cell.start_instance(f"{unique}-i1")
        apps.append(second)
    finally:
        tier.bbs.start()
    tier.bbs.start_instance(process, 1, **second.net_info())
    wait_until(lambda: _serves(tier, host, f"{unique}-i1"), timeout=30, message="changes to flow again once BBS is back")
    wait_until(lambda: tier.copilot_health()["bbs_staleness_seconds"] == 0, message="staleness back to 0")


def test_malformed_payloads_and_invalid_hostnames_are_skipped(tier: Tier, apps, unique) -> None:
    good = f"{unique}.example.com"
    tier.bbs.inject_raw_event("actual_lrp_instance_created", b"\xff\x00 not a protobuf")
    tier.bbs.inject_raw_event("no_such_event", b"")
    tier.bbs.desire_lrp(f"{unique}-broken", raw_routes={"cf-router": b"{not json"})
    tier.bbs.desire_lrp(
        f"{unique}-pg",
        http_routes=[
            {"hostnames": ["bad_host!.example.com", good, "-leading-dash.example.com"], "port": 8080},
            {"hostnames": [f"{unique}-ssh.example.com"], "port": 2222},
        ],
    )
    _start(tier, apps, f"{unique}-pg", 0, f"{unique}-i0")
    wait_until(lambda: _serves(tier, good, f"{unique}-i0"), message="the valid route to work")
    assert _status(tier, "bad_host!.example.com") in (400, 404)
    assert _status(tier, f"{unique}-ssh.example.com") == 404
    metrics = tier.metrics()
    assert 'copilot_bbs_errors_total{kind="malformed_event"}' in metrics
    log = tier.log_path("copilot").read_text()
    assert "bad_host!.example.com" in log and "not JSON" in log


def test_copilot_restarted_while_bbs_is_down_keeps_routes(tier: Tier, apps, unique) -> None:
    """A restarted Copilot holds istiod's requests until it has read BBS, so it never announces an empty world."""
    host, process = f"{unique}.example.com", f"{unique}-pg"
    tier.bbs.desire_lrp(process, http_routes=[{"hostnames": [host], "port": 8080}])
    _start(tier, apps, process, 0, f"{unique}-i0")
    wait_until(lambda: _serves(tier, host, f"{unique}-i0"), message="route up")
    tier.bbs.stop()
    try:
        tier.restart_copilot()

        def istiod_reconnected() -> bool:
            assert _serves(tier, host, f"{unique}-i0")  # served all along
            return tier.copilot_health()["istiod_streams"] >= 1

        wait_until(istiod_reconnected, timeout=30, message="istiod to reconnect to the restarted Copilot")
        health = tier.copilot_health()
        assert (health["bbs_synced"], health["serving_istiod"]) == (False, False)
        pushes = [line for line in tier.metrics().splitlines() if line.startswith("copilot_pushes_total{")]
        assert pushes == []  # istiod's requests are held: the restarted Copilot has answered nothing yet
        assert _serves(tier, host, f"{unique}-i0")
    finally:
        tier.bbs.start()
    wait_until(lambda: tier.copilot_health()["bbs_synced"], timeout=30, message="Copilot to sync once BBS is back")
    assert _serves(tier, host, f"{unique}-i0")
