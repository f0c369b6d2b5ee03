"""Route services with the ops-files on cf-deployment v58 (real bosh CLI): the routers get the secret
Cloud Controller already has (router_route_services_secret), Copilot turns its routes to the routers'
route-service proxy on, and the rendered router runs the proxy with that secret and Copilot's ports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from opsfile_helpers import CF, ENABLE, STAGE1, interpolate, job, jobs, vars_store

from bosh_render import link_from_job, render_job
from copilot.config import load as load_copilot_config
from copilot.settings import RouteServiceSettings
from devtools.peers import CACHE, REPO


def test_the_routers_sign_with_the_secret_cloud_controller_has(result, base):
    cc = job(base, "api", "cloud_controller_ng")["properties"]["router"]["route_services_secret"]
    assert cc == "((router_route_services_secret))"
    assert job(result, "api", "cloud_controller_ng")["properties"]["router"]["route_services_secret"] == cc
    assert job(result, "istio-router", "istio-router")["properties"]["route_services_secret"] == cc
    assert job(result, "istio-control", "copilot")["properties"]["gateway"]["route_services"] == {"enabled": True}
    assert "router_route_services_secret" in {v["name"] for v in result["variables"]}
    # Nothing else signs route service requests any more (gorouter is gone).
    users = sorted(f"{w}/{i['name']}" for w, i in jobs(result) if "route_services_secret" in str(i.get("properties")))
    routers = sorted(f"{w}/istio-router" for w, i in jobs(result) if i["name"] == "istio-router")
    assert "istio-router/istio-router" in routers  # and an isolation segment's router group, if there is one
    assert users == sorted(["api/cloud_controller_ng", *routers])


def test_stage1_turns_route_services_on_beside_gorouter_with_the_same_secret(stage1):
    # Both tiers serve every app route: a signature either makes, the other accepts.
    gorouter = job(stage1, "router", "gorouter")["properties"]["router"]["route_services_secret"]
    assert job(stage1, "istio-router", "istio-router")["properties"]["route_services_secret"] == gorouter
    assert job(stage1, "istio-control", "copilot")["properties"]["gateway"]["route_services"] == {"enabled": True}


@pytest.mark.parametrize("ops", [ENABLE, STAGE1], ids=["enable", "stage1"])
def test_the_rendered_router_runs_the_proxy_on_copilots_ports(ops: Path, tmp_path: Path) -> None:
    extra = ("-v", "system_domain=sys.example.com")
    store = vars_store(CACHE / "opsfile-vars", CF, ops, extra=extra)
    manifest = interpolate(CF, ops, extra=("-l", str(store), *extra, "--var-errs"))
    secret = yaml.safe_load(store.read_text())["router_route_services_secret"]
    copilot = job(manifest, "istio-control", "copilot")["properties"]
    control = [{"address": "istio-control-0.example", "index": 0}]
    router = job(manifest, "istio-router", "istio-router")["properties"]
    rendered = render_job(
        REPO / "jobs" / "istio-router", router,
        links={"pilot": link_from_job(REPO / "jobs" / "pilot-discovery", "pilot",
                                      job(manifest, "istio-control", "pilot-discovery").get("properties") or {},
                                      instances=control),
               "copilot": link_from_job(REPO / "jobs" / "copilot", "copilot", copilot, instances=control)},
        out_dir=tmp_path / "router",
    )
    config = json.loads(rendered["config/route_services.json"].read_text())
    assert (config["secret"], config["listen"], config["gateway"]) == (secret, "127.0.0.1:7070", "127.0.0.1:7071")
    assert secret and config["secret_decrypt_only"] == ""
    assert (config["timeout_seconds"], config["recommend_https"], config["max_attempts"]) == (60, True, 3)
    bpm = rendered["config/bpm.yml"].read_text()
    assert "/var/vcap/packages/router-sds/bin/route-services" in bpm
    # The rendered Copilot sends bound routes to those ports.
    copilot_dir = tmp_path / "copilot"
    for path in render_job(REPO / "jobs" / "copilot", copilot, out_dir=copilot_dir).values():
        path.write_text(path.read_text().replace("/var/vcap/jobs/copilot", str(copilot_dir)))
    gateway = load_copilot_config(copilot_dir / "config" / "copilot.yml").gateway
    assert gateway.route_services == RouteServiceSettings(proxy_port=7070, gateway_port=7071)
