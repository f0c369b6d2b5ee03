"""Isolation segment routers through real Envoy and istiod: two routers of two shards, as
istio-routing-isolation-segment-router.yml deploys them (the main routers the shared segment, the
iso-seg-router group the segment persistent_isolation_segment). Each routes only its own shard's apps,
by the isolation segment the DesiredLRP's route carries, and answers unknown route for the others."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from devtools.tier import Tier, start_tier_with_ops, wait_until

SEGMENT = "persistent_isolation_segment"
SEGMENT_ROUTER = "iso-seg-router"
SEGMENT_ADDRESS = "127.0.0.3"  # the segment router's Gateway binds here: both routers are on one machine
# What the companion ops-file sets, on the local manifest. Route services are left off here: each
# router runs its route-service proxy on the same loopback ports, which two routers on one machine
# cannot share (on BOSH each router is its own VM).
OPS = f"""
- type: replace
  path: /instance_groups/name=local/jobs/name=copilot/properties/gateway/router_shards?
  value:
  - {{name: shared, routing_table_sharding_mode: shared-and-segments, isolation_segments: []}}
  - name: {SEGMENT}
    routing_table_sharding_mode: segments
    isolation_segments: [{SEGMENT}]
    bind: {SEGMENT_ADDRESS}
- type: remove
  path: /instance_groups/name=local/jobs/name=copilot/properties/gateway/route_services
- type: remove
  path: /instance_groups/name=local/jobs/name=istio-router/properties/route_services_secret
- type: replace
  path: /instance_groups/name=local/jobs/name=istio-router/properties/router_shard?
  value: shared
"""


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tier]:
    workdir = tmp_path_factory.mktemp("iso-seg")
    tier = start_tier_with_ops(
        workdir, "router-shards", OPS, routers={SEGMENT_ROUTER: {"router_shard": SEGMENT, "node_ip": SEGMENT_ADDRESS}}
    )
    try:
        yield tier
        # istiod's config for both routers was accepted: no NACK.
        assert tier.envoy.rejected_updates() == {}
        assert tier.router_admin(SEGMENT_ROUTER).rejected_updates() == {}
    finally:
        tier.stop()


def _get(tier: Tier, address: str, host: str) -> requests.Response:
    return requests.get(f"http://{address}:{tier.http_port}/", headers={"Host": host}, timeout=5)


def test_each_router_serves_its_own_segment_only(sharded: Tier, apps) -> None:
    shared_host, segment_host, both = "shared-app.example.com", "segment-app.example.com", "both.example.com"
    # `both`: a host with an app in each segment (a VirtualService per shard, each with its own app).
    routes = {"shared-pg": ([shared_host, both], None), "segment-pg": ([segment_host, both], SEGMENT)}
    for process, (hostnames, segment) in routes.items():
        sharded.bbs.desire_lrp(process, http_routes=[{"hostnames": hostnames, "port": 8080, "isolation_segment": segment}])
    apps.append(sharded.start_instance("shared-pg", 0, "shared-i0"))
    apps.append(sharded.start_instance("segment-pg", 0, "segment-i0"))

    def serves(address: str, host: str, body: str) -> bool:
        response = _get(sharded, address, host)
        return response.status_code == 200 and response.text.strip() == body

    wait_until(
        lambda: serves("127.0.0.1", shared_host, "shared-i0"), timeout=30, message="the shared router to serve the shared app"
    )
    wait_until(
        lambda: serves(SEGMENT_ADDRESS, segment_host, "segment-i0"), timeout=30, message="the segment router to serve its app"
    )
    for address, body in (("127.0.0.1", "shared-i0"), (SEGMENT_ADDRESS, "segment-i0")):
        wait_until(lambda a=address, b=body: serves(a, both, b), timeout=30, message=f"{both} on {address}")
        assert {_get(sharded, address, both).text.strip() for _ in range(20)} == {body}  # never the other segment's
    for address, host in (("127.0.0.1", segment_host), (SEGMENT_ADDRESS, shared_host)):
        response = _get(sharded, address, host)
        assert response.status_code == 404, (address, host, response.status_code, response.text)
        assert response.headers["X-Cf-Routererror"] == "unknown_route"
