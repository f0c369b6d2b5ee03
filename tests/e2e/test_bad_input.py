"""Bad input is contained to itself, through the real istiod and Envoy: one app instance Diego reports
with an address that is not an IP, a port istiod refuses or an address routes must not reach is left
out, and the app's other instances keep getting traffic; a new instance of that app gets traffic and a
removed one stops getting it. A registration for such an address is refused, naming the field."""

from __future__ import annotations

import collections

import pytest

from devtools.tier import Tier, wait_until


def _bodies(tier: Tier, host: str, count: int = 30) -> collections.Counter:
    return collections.Counter(
        (r.text.strip() if r.status_code == 200 else str(r.status_code)) for r in (tier.get(host) for _ in range(count))
    )


def _only(tier: Tier, host: str, expected: set[str]) -> bool:
    return set(_bodies(tier, host)) == expected


def _metric(tier: Tier, source: str, field: str) -> float:
    prefix = f'copilot_invalid_input_total{{field="{field}",source="{source}"}} '
    for line in tier.metrics().splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


# The bad instance has a TLS proxy port, as a v58 cell's instances do, so nothing but its own bad field
# could keep it from being routed.
BAD_INSTANCES = {
    "not-an-ip": ({"address": "not-an-ip", "host_tls_proxy_port": 61999}, "actual_lrp_net_info.address"),
    "999.1.1.1": ({"address": "999.1.1.1", "host_tls_proxy_port": 61999}, "actual_lrp_net_info.address"),
    "tls port 70000": ({"address": "127.0.0.1", "host_tls_proxy_port": 70000}, "actual_lrp_net_info.ports.host_tls_proxy_port"),
    "metadata service": ({"address": "169.254.169.254", "host_tls_proxy_port": 80}, "actual_lrp_net_info.address"),
}


@pytest.mark.parametrize("case", list(BAD_INSTANCES))
def test_one_bad_instance_does_not_stop_its_apps_other_instances(tier: Tier, apps, unique, case: str) -> None:
    net_info, field = BAD_INSTANCES[case]
    host, process = f"{unique}.example.com", f"{unique}-pg"
    tier.bbs.desire_lrp(process, http_routes=[{"hostnames": [host], "port": 8080}], instances=3)
    apps.append(tier.start_instance(process, 0, f"{unique}-i0"))
    wait_until(lambda: _only(tier, host, {f"{unique}-i0"}), message="the first instance to serve")
    counted = _metric(tier, "bbs", field)

    tier.bbs.start_instance(process, 1, host_port=0, instance_guid=f"{unique}-bad", **net_info)
    # A new instance of the same app still gets traffic, and a removed one stops getting it.
    apps.append(tier.start_instance(process, 2, f"{unique}-i2"))
    wait_until(lambda: _only(tier, host, {f"{unique}-i0", f"{unique}-i2"}), timeout=20, message="the new instance to serve")
    tier.bbs.remove_instance(process, 0)
    wait_until(lambda: _only(tier, host, {f"{unique}-i2"}), timeout=20, message="the removed instance to stop serving")
    assert set(_bodies(tier, host, 60)) == {f"{unique}-i2"}

    wait_until(lambda: _metric(tier, "bbs", field) == counted + 1, message=f"copilot_invalid_input_total for {field}")
    log = tier.log_path("copilot").read_text()
    assert sum(1 for line in log.splitlines() if f'"{unique}-bad"' in line and "reported once" in line) == 1


@pytest.mark.parametrize("address", ["169.254.169.254", "::1", "0.0.0.0"])
def test_a_registration_for_an_address_routes_must_not_reach_is_refused(tier: Tier, unique, address: str) -> None:
    """The local tier allows 127.0.0.0/8 (its backends live there), nothing else internal."""
    good = {"host": f"ok.{unique}.system.example.com", "address": "127.0.0.1", "port": 9, "ttl_seconds": 5}
    bad = {"host": f"admin.{unique}.system.example.com", "address": address, "port": tier.ports["router_admin_port"]}
    response = tier.register([good, bad])
    assert response.status_code == 400
    assert response.json()["error"].startswith("registrations[1].address: ")
    assert tier.get(bad["host"]).status_code == 404  # nothing of the request was applied
