"""Route integrity: the router reaches an instance on its TLS proxy port and accepts it only if its
certificate (Diego's instance identity, signed by the identity CA) names that instance's guid. A stale
address, now held by another app's instance, answers 503, never the other app's response."""

from __future__ import annotations

from devtools.apps import AppInstance
from devtools.tier import Tier, wait_until


def _instance(tier: Tier, apps: list, tmp_path, guid: str) -> tuple[AppInstance, AppInstance]:
    """An instance as a Diego cell runs it: the app on a plain port, and its TLS proxy (identity cert)."""
    identity = tier.extra["identity_ca"].issue(guid, tmp_path, dns_names=[guid], client=False)
    plain = AppInstance(f"{guid}-plain")
    proxied = AppInstance(f"{guid}-tls", tls=(identity.cert_path, identity.key_path))
    apps.extend([plain, proxied])
    return plain, proxied


def test_instances_are_reached_over_tls_and_verified(tier: Tier, apps, unique, tmp_path) -> None:
    host = f"{unique}.example.com"
    guid = f"{unique}-a0"
    plain, proxied = _instance(tier, apps, tmp_path, guid)
    tier.bbs.desire_lrp(f"{unique}-a", http_routes=[{"hostnames": [host], "port": 8080}])
    tier.bbs.start_instance(f"{unique}-a", 0, host_port=plain.port, host_tls_proxy_port=proxied.port, instance_guid=guid)
    wait_until(lambda: tier.get(host).text.strip() == f"{guid}-tls", message="the instance through its TLS proxy")
    for _ in range(10):
        assert tier.get(host).text.strip() == f"{guid}-tls"


def test_a_stale_address_held_by_another_app_gets_503(tier: Tier, apps, unique, tmp_path) -> None:
    # App A's instance owns an address; BBS still reports app B's (gone) instance at that same address.
    a_guid, b_guid = f"{unique}-a0", f"{unique}-b0"
    a_plain, a_proxied = _instance(tier, apps, tmp_path, a_guid)
    a_host, b_host = f"{unique}-a.example.com", f"{unique}-b.example.com"
    tier.bbs.desire_lrp(f"{unique}-a", http_routes=[{"hostnames": [a_host], "port": 8080}])
    tier.bbs.start_instance(f"{unique}-a", 0, host_port=a_plain.port, host_tls_proxy_port=a_proxied.port, instance_guid=a_guid)
    tier.bbs.desire_lrp(f"{unique}-b", http_routes=[{"hostnames": [b_host], "port": 8080}])
    tier.bbs.start_instance(f"{unique}-b", 0, host_port=a_plain.port, host_tls_proxy_port=a_proxied.port, instance_guid=b_guid)
    wait_until(lambda: tier.get(a_host).text.strip() == f"{a_guid}-tls", message="app A")
    wait_until(lambda: tier.get(b_host).status_code == 503, message="503 for the stale address")
    for _ in range(20):
        response = tier.get(b_host)
        assert response.status_code == 503
        assert a_guid not in response.text
