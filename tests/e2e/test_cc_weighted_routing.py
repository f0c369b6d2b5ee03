"""Cloud Controller -> Copilot -> istiod -> Envoy: weighted routing between processes, weight changes,
unmapping, and internal routes that the router must not serve."""

from __future__ import annotations

import collections

import requests

from copilot.protos import cc_copilot_pb2 as api
from devtools.tier import Tier, wait_until


def _process(tier: Tier, apps: list, diego_guid: str, host: str, app_guid: str | None = None) -> None:
    """A process with one instance (instance guid = process guid) of app `app_guid` (its log guid, by
    default the process guid), its own DesiredLRP route on `host`."""
    tier.bbs.desire_lrp(diego_guid, http_routes=[{"hostnames": [host], "port": 8080}], log_guid=app_guid)
    apps.append(tier.start_instance(diego_guid, 0, diego_guid))


def _map(stub, route_guid: str, capi: str, weight: int) -> None:
    stub.MapRoute(
        api.MapRouteRequest(route_mapping=api.RouteMapping(capi_process_guid=capi, route_guid=route_guid, route_weight=weight))
    )


def _split(tier: Tier, host: str, n: int) -> collections.Counter:
    """Which process answered each of n requests (one keep-alive connection: Envoy balances per request)."""
    with requests.Session() as session:
        return collections.Counter(session.get(tier.router_url, headers={"Host": host}, timeout=5).text.strip() for _ in range(n))


def test_weights_split_traffic_and_follow_changes(tier: Tier, apps, unique) -> None:
    stub = tier.cc_stub()
    host = f"{unique}.example.com"
    blue, green = f"{unique}-blue-v1", f"{unique}-green-v1"
    # The processes' own DesiredLRP routes use another host: the weighted route comes from CC alone.
    _process(tier, apps, blue, f"{unique}-blue.example.com")
    _process(tier, apps, green, f"{unique}-green.example.com")
    stub.UpsertRoute(api.UpsertRouteRequest(route=api.Route(guid=f"{unique}-route", host=host.upper())))
    for capi, diego in ((f"{unique}-blue", blue), (f"{unique}-green", green)):
        association = api.CapiDiegoProcessAssociation(capi_process_guid=capi, diego_process_guids=[diego])
        stub.UpsertCapiDiegoProcessAssociation(
            api.UpsertCapiDiegoProcessAssociationRequest(capi_diego_process_association=association)
        )
    _map(stub, f"{unique}-route", f"{unique}-blue", 1)
    _map(stub, f"{unique}-route", f"{unique}-green", 3)
    wait_until(lambda: len(_split(tier, host, 40)) == 2, timeout=20, message="both processes to serve the route")

    split = _split(tier, host, 2000)
    assert set(split) == {blue, green}
    assert abs(split[blue] / 2000 - 0.25) < 0.05, split
    assert abs(split[green] / 2000 - 0.75) < 0.05, split

    # Changing the weights moves the split within a second.
    _map(stub, f"{unique}-route", f"{unique}-blue", 3)
    _map(stub, f"{unique}-route", f"{unique}-green", 1)
    # (How fast is measured by bench/bench_convergence.py; here: that it moves, and where to.)
    wait_until(lambda: _split(tier, host, 200)[blue] > 120, timeout=10, message="the split to follow the new weights")
    split = _split(tier, host, 2000)
    assert abs(split[blue] / 2000 - 0.75) < 0.05, split

    # Unmapping one sends all traffic to the other.
    stub.UnmapRoute(
        api.UnmapRouteRequest(
            route_mapping=api.RouteMapping(capi_process_guid=f"{unique}-blue", route_guid=f"{unique}-route", route_weight=3)
        )
    )
    wait_until(lambda: set(_split(tier, host, 50)) == {green}, timeout=10, message="all traffic to green")
    assert set(_split(tier, host, 300)) == {green}


def test_each_answer_of_a_weighted_route_names_the_app_that_gave_it(tier: Tier, apps, unique) -> None:
    """X-CF-ApplicationID comes from the endpoint the router picked (its app guid label), not from the
    route: on a route weighted over two apps, each request carries the id of the app that got it."""
    stub = tier.cc_stub()
    host = f"{unique}.example.com"
    blue, green = f"{unique}-blue-v1", f"{unique}-green-v1"
    app_of = {blue: f"{unique}-blue-app", green: f"{unique}-green-app"}
    for diego, app_guid in app_of.items():
        _process(tier, apps, diego, f"{diego}.example.com", app_guid)
    stub.UpsertRoute(api.UpsertRouteRequest(route=api.Route(guid=f"{unique}-route", host=host)))
    for diego in app_of:
        association = api.CapiDiegoProcessAssociation(capi_process_guid=f"{diego}-capi", diego_process_guids=[diego])
        stub.UpsertCapiDiegoProcessAssociation(
            api.UpsertCapiDiegoProcessAssociationRequest(capi_diego_process_association=association)
        )
        _map(stub, f"{unique}-route", f"{diego}-capi", 1)
    wait_until(lambda: len(_split(tier, host, 40)) == 2, timeout=20, message="both apps to serve the route")

    seen: collections.Counter = collections.Counter()
    with requests.Session() as session:
        for _ in range(100):
            headers = session.get(
                tier.router_url + "/headers", headers={"Host": host, "X-CF-ApplicationID": "spoofed"}, timeout=5
            ).json()
            seen[(headers["x-cf-instanceid"], headers.get("x-cf-applicationid"))] += 1
    assert set(seen) == {(blue, app_of[blue]), (green, app_of[green])}, seen


def test_internal_route_is_not_reachable_through_the_router(tier: Tier, apps, unique) -> None:
    stub = tier.cc_stub()
    internal, external = f"{unique}.apps.internal", f"{unique}.example.com"
    diego = f"{unique}-v1"
    _process(tier, apps, diego, external)
    stub.UpsertRoute(
        api.UpsertRouteRequest(route=api.Route(guid=f"{unique}-int", host=internal, internal=True, vip="10.255.0.7"))
    )
    association = api.CapiDiegoProcessAssociation(capi_process_guid=f"{unique}-capi", diego_process_guids=[diego])
    stub.UpsertCapiDiegoProcessAssociation(
        api.UpsertCapiDiegoProcessAssociationRequest(capi_diego_process_association=association)
    )
    _map(stub, f"{unique}-int", f"{unique}-capi", 1)
    wait_until(lambda: tier.get(external).status_code == 200, message="the external route")
    # istiod accepted the internal ServiceEntry: Envoy knows its cluster...
    wait_until(
        lambda: f"outbound|8080||{internal}" in str(tier.envoy.config_dump()), timeout=15, message="the internal service in Envoy"
    )
    # ...but the router serves no route for it.
    for _ in range(20):
        assert tier.get(internal).status_code == 404
