"""Stage 1 (add-istio-routing.yml: both tiers), and the standalone manifest of this release."""

from __future__ import annotations

import copy

import yaml
from opsfile_helpers import STANDALONE, group, interpolate, job, jobs, registrar_routes

from bosh_render import link_from_job, render_job
from devtools.peers import REPO


def test_stage1_adds_the_istio_tier_and_keeps_gorouter_nats_and_routing_api(stage1, base):
    names = {g["name"] for g in stage1["instance_groups"]}
    assert {"router", "tcp-router", "nats", "istio-control", "istio-router"} <= names
    assert registrar_routes(stage1, "route_registrar") == registrar_routes(base, "route_registrar")
    # Platform routes are on both tiers from stage 1 (the Istio routers serve everything before the load
    # balancer sends them anything): the same routes, bar routing-api's, which Copilot serves in stage 3.
    istio = registrar_routes(stage1, "istio-route-registrar")
    # (pxc's proxy dashboard on the database group comes with istio-routing-pxc-proxy-route.yml.)
    assert istio == {k: v for k, v in registrar_routes(base, "route_registrar").items()
                     if k != ("api", "routing-api") and k[0] != "database"}
    assert "vm_extensions" not in group(stage1, "istio-router")  # the load balancer stays on gorouter
    assert job(stage1, "diego-cell", "route_emitter")
    proxy = job(stage1, "diego-cell", "rep")["properties"].get("containers", {}).get("proxy", {})
    assert proxy["enable_unproxied_port_mappings"] is False  # as cf-deployment has it
    # istio-router sits just before router, so both tiers are updated next to each other.
    order = [g["name"] for g in stage1["instance_groups"]]
    assert order.index("istio-router") == order.index("router") - 1


def test_stage1_and_stage2_declare_the_same_istio_pieces(stage1, enabled):
    # Stage 2 adds the router groups API (routing-api goes): Copilot's routing_api, the registrar of its
    # route, and its CA among the routers' upstream CAs. Everything else is the same in both stages.
    control = copy.deepcopy(group(enabled, "istio-control"))
    control["jobs"] = [j for j in control["jobs"] if j["name"] != "istio-route-registrar"]
    del next(j for j in control["jobs"] if j["name"] == "copilot")["properties"]["routing_api"]
    assert group(stage1, "istio-control") == control
    router1, router2 = group(stage1, "istio-router"), copy.deepcopy(group(enabled, "istio-router"))
    router2["jobs"][0]["properties"]["upstream_tls"]["ca_certs"].remove("((copilot_routing_api_tls.ca))")
    assert {k: v for k, v in router2.items() if k != "vm_extensions"} == router1
    ours = {"copilot_routing_api_ca", "copilot_routing_api_tls",  # stage 2 serves router groups with them
            "copilot_bbs_client", "copilot_registrar_server", "istio_route_registrar_ca", "istio_route_registrar_client",
            "istio_xds_ca", "istiod_xds_server", "istio_router_xds_client"}
    assert [v for v in stage1["variables"] if v["name"] in ours] == [v for v in enabled["variables"] if v["name"] in ours]
    assert len(ours) == len([v for v in enabled["variables"] if v["name"] in ours])


def test_standalone_manifest_interpolates_and_renders(tmp_path):
    values = {"bbs_url": "https://bbs.service.cf.internal:8889", "bbs_ca_cert": "CA", "bbs_client_cert": "CERT",
              "bbs_client_key": "KEY"}
    args = [a for k, v in values.items() for a in ("-v", f"{k}={v}")]
    manifest = interpolate(STANDALONE, extra=("--vars-store", str(tmp_path / "vars.yml"), "--var-errs", *args))
    assert [g["name"] for g in manifest["instance_groups"]] == ["istio-control", "istio-router"]
    assert "((" not in yaml.safe_dump(manifest)
    copilot_props = job(manifest, "istio-control", "copilot")["properties"]
    copilot_link = link_from_job(REPO / "jobs" / "copilot", "copilot", copilot_props)
    render_job(REPO / "jobs" / "copilot", copilot_props, out_dir=tmp_path / "copilot")
    pilot_props = job(manifest, "istio-control", "pilot-discovery")["properties"]
    pilot = render_job(REPO / "jobs" / "pilot-discovery", pilot_props, links={"copilot": copilot_link},
                       out_dir=tmp_path / "pilot")
    args = yaml.safe_load(pilot["config/bpm.yml"].read_text())["processes"][0]["args"]
    assert "--grpcAddr=127.0.0.1:15010" in args and "--secureGRPCAddr=0.0.0.0:15012" in args
    pilot_link = link_from_job(REPO / "jobs" / "pilot-discovery", "pilot", pilot_props)
    render_job(REPO / "jobs" / "istio-router", job(manifest, "istio-router", "istio-router").get("properties"),
               links={"pilot": pilot_link, "copilot": copilot_link}, out_dir=tmp_path / "router")
    assert {item["release"] for _, item in jobs(manifest)} == {"istio-routing", "bpm"}
