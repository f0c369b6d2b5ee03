"""The staged switch, proved from the interpolated manifests (instance groups, their order, serial
flags, max_in_flight), in both directions: there is never a moment without a healthy router behind the
load balancer serving every route.

  stage 1: add-istio-routing.yml                           both tiers, the LB on gorouter only
  stage 2: add-istio-routing.yml + istio-routing-behind-lb.yml   both tiers behind the LB
  stage 3: enable-istio-routing.yml                        the Istio tier only
"""

from __future__ import annotations

import pytest
from opsfile_helpers import CF, ENABLE, OPS, PXC_PROXY_ROUTE, STAGE1, group, interpolate, registrar_routes

BEHIND_LB = OPS / "istio-routing-behind-lb.yml"
LB = ["cf-router-network-properties"]


@pytest.fixture(scope="module")
def stages(bosh_cli):
    return {1: interpolate(CF, STAGE1, PXC_PROXY_ROUTE), 2: interpolate(CF, STAGE1, BEHIND_LB, PXC_PROXY_ROUTE),
            3: interpolate(CF, ENABLE, PXC_PROXY_ROUTE)}


def _groups(manifest):
    return {g["name"]: g for g in manifest["instance_groups"]}


def _behind_lb(manifest):
    return {name for name, g in _groups(manifest).items() if "cf-router-network-properties" in (g.get("vm_extensions") or [])}


def _rolls_one_at_a_time(manifest, name):
    g = _groups(manifest)[name]
    update = {**manifest["update"], **(g.get("update") or {})}
    assert update["serial"] is True, f"{name} is not updated on its own"
    in_flight = update["max_in_flight"]
    assert isinstance(in_flight, int) and in_flight < g["instances"], f"{name}: max_in_flight {in_flight} of {g['instances']}"


def test_every_platform_route_is_on_the_istio_tier_from_stage_1(stages, base):
    nats_routes = registrar_routes(base, "route_registrar")
    istio = registrar_routes(stages[1], "istio-route-registrar")
    assert {k: v for k, v in nats_routes.items() if k != ("api", "routing-api")} == istio
    assert registrar_routes(stages[1], "route_registrar") == nats_routes  # gorouter keeps them all
    # Stage 3 keeps exactly these jobs (plus Copilot's router groups API on istio-control): nothing to redo.
    for where, item in [(w, j) for g in stages[1]["instance_groups"] for w, j in [(g["name"], j) for j in g["jobs"]]
                        if j["name"] == "istio-route-registrar"]:
        assert next(j for j in group(stages[3], where)["jobs"] if j["name"] == "istio-route-registrar") == item


def test_stage_1_to_2_only_puts_the_istio_routers_behind_the_load_balancer(stages):
    one, two = _groups(stages[1]), _groups(stages[2])
    assert _behind_lb(stages[1]) == {"router"} and _behind_lb(stages[2]) == {"router", "istio-router"}
    changed = {name for name in one.keys() | two.keys() if one.get(name) != two.get(name)}
    assert changed == {"istio-router"}
    assert {k: v for k, v in two["istio-router"].items() if k != "vm_extensions"} == one["istio-router"]
    _rolls_one_at_a_time(stages[2], "istio-router")  # recreated for the vm_extension, one VM at a time


def test_stage_2_to_3_removes_gorouter_once_the_istio_routers_already_serve_behind_the_lb(stages):
    two, three = _groups(stages[2]), _groups(stages[3])
    assert set(two) - set(three) == {"router", "tcp-router", "nats", "smoke-tests"}
    assert _behind_lb(stages[3]) == {"istio-router"}
    # The Istio routers keep what puts them behind the LB: no recreate, same VMs and addresses.
    for key in ("vm_extensions", "networks", "azs", "instances", "vm_type", "stemcell"):
        assert three["istio-router"][key] == two["istio-router"][key], key
    _rolls_one_at_a_time(stages[3], "istio-router")  # the property change rolls one router at a time


def test_the_way_back_is_the_same_stages_in_reverse(stages):
    two, three = _groups(stages[2]), _groups(stages[3])
    # 3 -> 2: gorouter, tcp-router and NATS come back while the Istio routers stay behind the LB unchanged
    # but for the router groups CA; 2 -> 1 takes the Istio routers out of the LB, one at a time.
    assert {"router", "tcp-router", "nats"} <= set(two) and _behind_lb(stages[2]) >= {"istio-router", "router"}
    assert two["istio-router"]["networks"] == three["istio-router"]["networks"]
    _rolls_one_at_a_time(stages[1], "istio-router")
    _rolls_one_at_a_time(stages[2], "router")
