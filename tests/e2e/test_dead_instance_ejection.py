"""Passive health checking through the real router: an app instance that died without Diego reporting it
(its container and port mapping gone, the BBS still says RUNNING) is ejected by the router after a few
failed connections, as gorouter stops using an endpoint it failed to reach, instead of being tried first by
every request it is picked for forever. An app left with no healthy instance is still tried (panic
threshold), so a one-instance app is never cut off by the router alone. The copilot job's default
properties (gateway.outlier_detection.*): 3 consecutive failures.
"""

from __future__ import annotations

from devtools.cell import CellInstance
from devtools.tier import Tier, wait_until

CONSECUTIVE_FAILURES = 3  # gateway.outlier_detection.consecutive_failures' default
# Envoy's workers count the failures; its main thread ejects the endpoint and tells the workers. Requests
# a worker completes in between still try the endpoint first: 0 to 15 more here, on a busy machine.
# Without outlier detection the dead instance is tried first by every other request (about 65 per half).
BOUND = 40
REQUESTS = 300  # in two halves: the second must not try the dead instance at all
CLIENT_FAILURES = 2  # requests reset by the dying instance's cell before their response

def _endpoint_stats(tier: Tier, host: str) -> dict[str, dict[str, str]]:
    """Per endpoint (ip:port) of the cluster the host's route uses (its process's service), the admin
    /clusters entries: cx_connect_fail, health_flags, ..."""
    [cluster] = tier.envoy.route_clusters(host)
    endpoints: dict[str, dict[str, str]] = {}
    for line in tier.envoy.clusters().splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == cluster:
            endpoints.setdefault(parts[1], {})[parts[2]] = parts[3]
    return endpoints


def _address(instance: CellInstance) -> str:
    return f"{instance.cell_ip}:{instance.host_tls_proxy_port}"


def _start_app(tier: Tier, apps: list, unique: str, count: int) -> tuple[str, list[CellInstance]]:
    host, process = f"{unique}.example.com", f"{unique}-pg"
    tier.bbs.desire_lrp(process, http_routes=[{"hostnames": [host], "port": 8080}], instances=count)
    instances = []
    for index in range(count):
        instance = tier.start_instance(process, index, f"{unique}-i{index}")
        apps.append(instance)
        instances.append(instance)
    tier.wait_for_every_instance(host, [f"{unique}-i{index}" for index in range(count)])
    return host, instances


def test_a_dead_instance_diego_did_not_report_is_ejected_after_a_few_failures(tier: Tier, apps, unique) -> None:
    host, (alive, dead) = _start_app(tier, apps, unique, 2)
    dead.stop()  # the container and its port mapping are gone; BBS is not told (the cell is unreachable)

    def connect_failures() -> int:
        return int(_endpoint_stats(tier, host)[_address(dead)].get("cx_connect_fail", "0"))

    start = connect_failures()
    answers: dict[str, int] = {}
    halves = []
    for _ in range(2):
        for _ in range(REQUESTS // 2):  # a bounded client loop, one fresh connection per request
            response = tier.get(host)
            key = response.text.strip() if response.status_code == 200 else f"HTTP {response.status_code}"
            answers[key] = answers.get(key, 0) + 1
        halves.append(connect_failures() - start - sum(halves))
    print(f"\noutlier detection: failed connections to the dead instance per {REQUESTS // 2} requests: {halves}; {answers}")
    # Connection failures are retried on the other instance, so clients see none of them. A request the
    # dying instance's cell had already accepted and then reset is not retried (Istio's retry policy
    # leaves out resets, so a non-idempotent request is never sent twice): at most a couple, while the
    # cell tears the mapping down (docs/operating.md, "Failure budget").
    failed = REQUESTS - answers.get(f"{unique}-i0", 0)
    assert set(answers) <= {f"{unique}-i0", "HTTP 503"} and failed <= CLIENT_FAILURES, answers
    assert sum(halves) <= BOUND, f"the dead instance was tried {halves} times"
    assert halves[1] == 0, f"the dead instance was still tried: {halves}"
    after = _endpoint_stats(tier, host)[_address(dead)]
    assert "failed_outlier_check" in after.get("health_flags", "")
    assert "failed_outlier_check" not in _endpoint_stats(tier, host)[_address(alive)].get("health_flags", "")
    tier.bbs.remove_instance(f"{unique}-pg", 1)


def test_an_app_whose_only_instance_is_ejected_is_still_tried(tier: Tier, apps, unique) -> None:
    host, (only,) = _start_app(tier, apps, unique, 1)
    only.stop()
    wait_until(
        lambda: tier.get(host).status_code != 200
        and "failed_outlier_check" in _endpoint_stats(tier, host)[_address(only)].get("health_flags", ""),
        timeout=30,
        message="the only instance to be ejected",
    )
    attempts = int(_endpoint_stats(tier, host)[_address(only)].get("cx_connect_fail", "0"))
    for _ in range(10):
        response = tier.get(host)
        # The router tried the instance (and failed to connect), rather than answering "no healthy upstream".
        assert response.status_code == 503 and "upstream connect error" in response.text, response.text
    # Still tried on every request (Envoy's panic mode: no healthy endpoint left, use them all), so an
    # instance that answers again gets traffic at once rather than after its ejection.
    assert int(_endpoint_stats(tier, host)[_address(only)].get("cx_connect_fail", "0")) >= attempts + 10
    assert "failed_outlier_check" in _endpoint_stats(tier, host)[_address(only)].get("health_flags", "")

    # Diego reports the replacement: it serves at once, whatever the dead one's ejection.
    tier.bbs.remove_instance(f"{unique}-pg", 0)
    replacement = tier.start_instance(f"{unique}-pg", 0, f"{unique}-r0")
    apps.append(replacement)
    wait_until(lambda: tier.get(host).text.strip() == f"{unique}-r0", timeout=30, message="the replacement")
