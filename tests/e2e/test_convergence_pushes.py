"""What a change costs istiod and the router, as the release ships them (issue 14, convergence): the
router speaks incremental (delta) xDS with istiod, and a new app's first instance reaches the routers
as an endpoint update of its one cluster, not a full push of every route (istiod build change 6); a
push of VirtualServices alone rebuilds the routes of those that changed, not of every one (change 12),
and builds the router no clusters (change 13)."""

from __future__ import annotations

import re

from copilot.istio.builder import object_name
from devtools.tier import Tier, wait_until


def _istiod_log(tier: Tier) -> str:
    return tier.log_path("pilot-discovery").read_text(errors="replace")


def test_router_uses_delta_xds(tier: Tier) -> None:
    # istiod logs each stream it serves: a router on state-of-the-world xDS opens "new connection".
    assert "new delta connection for node" in _istiod_log(tier)


def _service(tier: Tier, host: str) -> str:
    """The service host (Copilot's, one per process) the router's routes for `host` go to."""
    [cluster] = tier.envoy.route_clusters(host)
    return cluster.rsplit("|", 1)[1]


def test_new_apps_first_instance_is_no_full_push(tier: Tier, apps, unique) -> None:
    host, process = f"{unique}.example.com", f"{unique}-pg"
    tier.bbs.desire_lrp(process, http_routes=[{"hostnames": [host], "port": 8080}])
    # The route is known (its objects are in istiod and on the router) and has no instance yet.
    wait_until(lambda: tier.get(host).status_code == 503, message="the new route without instances")
    service = _service(tier, host)
    assert f"Incremental push, service {service} at shard" in _istiod_log(tier)  # seen with no endpoints

    apps.append(tier.start_instance(process, 0, f"{unique}-i0"))
    wait_until(lambda: tier.get(host).text.strip() == f"{unique}-i0", message="the first instance to serve")

    # A later line in the same log: once it is there, everything istiod logged before it is too.
    fence = f"{unique}-fence.example.com"
    tier.bbs.desire_lrp(f"{unique}-fence", http_routes=[{"hostnames": [fence], "port": 8080}])
    wait_until(lambda: tier.get(fence).status_code == 503, message="the fence route")
    fence_service = _service(tier, fence)
    wait_until(lambda: f"service {fence_service} at shard" in _istiod_log(tier), message="istiod to log the fence route")
    # Stock istiod: "Full push, new service istio-system/<service>" (every route rebuilt for every router).
    assert f"Full push, new service istio-system/{service}" not in _istiod_log(tier)


def test_routes_carry_no_deprecated_field(tier: Tier, apps, unique) -> None:
    # Stock istiod sets RouteAction.max_grpc_timeout, which Envoy deprecated, on every route, and the router
    # logs a warning for each route it applies: two lines per host on every full push (istiod build change 9).
    host = f"{unique}.example.com"
    tier.bbs.desire_lrp(f"{unique}-pg", http_routes=[{"hostnames": [host], "port": 8080}])
    apps.append(tier.start_instance(f"{unique}-pg", 0, f"{unique}-i0"))
    wait_until(lambda: tier.get(host).text.strip() == f"{unique}-i0", message="the route to serve")
    actions = tier.envoy.route_actions()
    assert actions  # the host's routes are there
    assert [a for a in actions if "max_grpc_timeout" in a] == []
    # Clusters with a SAN list (istiod's match_subject_alt_names: platform routes' tls_san, the route-service
    # proxy) still log one each per cluster update; no route may.
    log = tier.log_path("istio-router", "envoy").read_text(errors="replace").splitlines()
    assert [line for line in log if "Deprecated field" in line and "RouteAction" in line] == []


def test_routes_carry_no_unread_fields(tier: Tier, apps, unique) -> None:
    # Stock istiod puts filter metadata (istio.config, the VirtualService's path) and a tracing decorator on
    # every route; nothing in the tier reads them (no telemetry filter, tracing off), and they were a quarter
    # of the route configuration every full push rebuilds and the router applies (istiod build change 10).
    host = f"{unique}.example.com"
    tier.bbs.desire_lrp(f"{unique}-lean", http_routes=[{"hostnames": [host], "port": 8080}])
    apps.append(tier.start_instance(f"{unique}-lean", 0, f"{unique}-i0"))
    wait_until(lambda: tier.get(host).text.strip() == f"{unique}-i0", message="the route to serve")
    routes = tier.envoy.routes(host)
    assert [route["route"]["cluster"] for route in routes]  # the host's routes are there, with their clusters
    assert [route for route in tier.envoy.routes() if "metadata" in route or "decorator" in route] == []


_GATEWAY_ROUTES = re.compile(r"gateway routes (\S+) for \S+: (\d+) VirtualServices reused, (\d+) built")


def test_a_changed_virtual_service_is_built_again_and_the_others_are_reused(tier: Tier, apps, unique) -> None:
    # istiod build change 12 keeps each VirtualService's gateway routes while its spec and what they were
    # built from (services, DestinationRules, ...) are unchanged. A host that moves from blue to green
    # changes its VirtualService twice under the same name; a stale copy would keep sending it to blue.
    blue, green = f"{unique}-blue", f"{unique}-green"
    moving, staying = f"{unique}.example.com", f"{unique}-green.example.com"
    tier.bbs.desire_lrp(blue, http_routes=[{"hostnames": [moving], "port": 8080}])
    tier.bbs.desire_lrp(green, http_routes=[{"hostnames": [staying], "port": 8080}])
    apps.append(tier.start_instance(blue, 0, f"{unique}-b0"))
    apps.append(tier.start_instance(green, 0, f"{unique}-g0"))
    wait_until(lambda: tier.get(moving).text.strip() == f"{unique}-b0", message="blue to serve its host")
    wait_until(lambda: tier.get(staying).text.strip() == f"{unique}-g0", message="green to serve its host")
    mark = len(_istiod_log(tier))

    # green's service exists: each step is a push of the host's VirtualService alone
    tier.bbs.desire_lrp(green, http_routes=[{"hostnames": [staying, moving], "port": 8080}])
    wait_until(lambda: tier.get(moving).text.strip() == f"{unique}-g0", message="the host to reach green as well")
    tier.bbs.desire_lrp(blue, http_routes=[])
    wait_until(
        lambda: {tier.get(moving).text.strip() for _ in range(10)} == {f"{unique}-g0"},
        message="the host to reach green alone",
    )
    assert tier.get(staying).text.strip() == f"{unique}-g0"

    builds = [(name, int(reused), int(built)) for name, reused, built in _GATEWAY_ROUTES.findall(_istiod_log(tier)[mark:])]
    assert builds, "istiod logged no gateway route configuration build"
    # the pushes of the moved host's VirtualService reused the others' routes (green's host among them)
    assert [b for b in builds if b[1] >= 1 and b[2] >= 1], builds


def _push_of(log: str, virtual_service: str) -> str:
    """The router's part of istiod's full push of one VirtualService alone: from that push's "XDS: Pushing"
    line (its version ends in the push's number, which the debounce line names) to the router's RDS push
    after it (a connection's pushes are generated one after another: CDS, then LDS, then RDS)."""
    alone = rf"Push debounce stable\[(\d+)\] 1 for config VirtualService/istio-system/{re.escape(virtual_service)}:"
    debounce = re.search(alone, log)
    assert debounce, f"istiod logged no push of {virtual_service} alone"
    pushing = re.search(rf"XDS: Pushing .*Version:\S+/{debounce.group(1)}\n", log[debounce.end() :])
    assert pushing, f"istiod logged no push {debounce.group(1)}"
    rest = log[debounce.end() + pushing.end() :]
    rds = re.search(r"RDS: PUSH for node:\S+", rest)
    assert rds, f"push {debounce.group(1)} sent the router no routes"
    return rest[: rds.end()]


def test_a_virtual_service_change_builds_the_router_no_clusters(tier: Tier, apps, unique) -> None:
    # istiod build change 13: a router's clusters are every service it sees, whatever the routes, so a push
    # of VirtualServices alone builds and sends it routes, not clusters (stock istiod built all its clusters).
    process, host, added = f"{unique}-pg", f"{unique}.example.com", f"{unique}-www.example.com"
    tier.bbs.desire_lrp(process, http_routes=[{"hostnames": [host], "port": 8080}])
    apps.append(tier.start_instance(process, 0, f"{unique}-i0"))
    wait_until(lambda: tier.get(host).text.strip() == f"{unique}-i0", message="the app to serve its host")

    # the app's service exists: a second host for it is a new VirtualService alone
    tier.bbs.desire_lrp(process, http_routes=[{"hostnames": [host, added], "port": 8080}])
    wait_until(lambda: tier.get(added).text.strip() == f"{unique}-i0", message="the new host to reach the app")
    push = _push_of(_istiod_log(tier), object_name(added))
    assert "LDS: PUSH" in push or "RDS: PUSH" in push
    assert "CDS: PUSH" not in push, push
