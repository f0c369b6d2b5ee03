"""enable-istio-routing.yml against the real cf-deployment v58 manifest, interpolated by the real bosh
CLI, alone and with the bosh-lite ops-file (with and without our bosh-lite companion)."""

from __future__ import annotations

import pytest
import yaml
from opsfile_helpers import (
    NATS_VARIABLES,
    REMOVED_GROUPS,
    REMOVED_JOBS,
    ROUTES_OF_REMOVED_JOBS,
    ROUTING_API_CLIENTS,
    ROUTING_API_VARIABLES,
    group,
    job,
    jobs,
    registrar_routes,
    variables_referenced,
)


def test_removed_instance_groups_and_jobs_are_gone(result):
    assert not REMOVED_GROUPS & {g["name"] for g in result["instance_groups"]}
    left = sorted(f"{where}/{item['name']}" for where, item in jobs(result) if item["name"] in REMOVED_JOBS)
    assert not left
    assert not {"nats", "routing"} & {r["name"] for r in result["releases"]}


def test_no_nats_or_routing_api_variable_or_property_is_left_in_any_job(result):
    for where, item in jobs(result):
        properties = item.get("properties") or {}
        used = variables_referenced(properties)
        assert not used & NATS_VARIABLES, f"{where}/{item['name']} still uses {used & NATS_VARIABLES}"
        assert not used & ROUTING_API_VARIABLES, f"{where}/{item['name']} still uses {used & ROUTING_API_VARIABLES}"
        assert "nats" not in properties, f"{where}/{item['name']} still has nats properties"
        if (properties.get("routing_api") or {}).get("enabled") is True:  # routing-api's clients, and Copilot serving it
            assert item["name"] in ROUTING_API_CLIENTS | {"copilot"}, f"{where}/{item['name']} uses routing-api"
    declared = {v["name"] for v in result["variables"]}
    assert not declared & (NATS_VARIABLES | ROUTING_API_VARIABLES)


def test_every_referenced_variable_is_declared(result):
    """Only system_domain comes from outside, as in cf-deployment itself."""
    declared = {v["name"] for v in result["variables"]}
    referenced = variables_referenced({k: v for k, v in result.items() if k != "variables"})
    assert referenced - declared == {"system_domain"}


def test_the_istio_groups_are_there_with_the_routers_load_balancer_wiring(result, base):
    control = group(result, "istio-control")
    assert [j["name"] for j in control["jobs"]] == ["copilot", "pilot-discovery", "istio-route-registrar"]
    assert all(j["release"] == "istio-routing" for j in control["jobs"])
    copilot = job(result, "istio-control", "copilot")["properties"]
    assert copilot["registrar"]["enabled"] is True and copilot["registrar"]["listen_address"].startswith("0.0.0.0:")
    assert copilot["bbs"]["client_cert"] == "((copilot_bbs_client.certificate))"

    router = group(result, "istio-router")
    assert [j["name"] for j in router["jobs"]][0] == "istio-router"
    if result is not base and "static_ips" not in router["networks"][0]:  # the plain cf-deployment case
        gorouter = group(base, "router")
        for key in ("vm_extensions", "instances", "azs", "vm_type", "update"):
            assert router[key] == gorouter[key], key
        assert control["instances"] >= 2 and len(control["azs"]) >= 2
    assert {r["name"]: r["version"] for r in result["releases"]}["istio-routing"] == "latest"


def test_bosh_lite_companion_gives_the_istio_router_what_bosh_lite_gave_the_router(lite, lite_without_companion):
    router = group(lite, "istio-router")
    assert router["networks"] == [{"name": "default", "static_ips": ["10.244.0.34"]}]
    assert router["vm_extensions"] == ["ssh-proxy-and-router-lb"]
    assert router["instances"] == 1 and group(lite, "istio-control")["instances"] == 1
    ssh_proxy = job(lite, "istio-router", "ssh_proxy")
    assert ssh_proxy["release"] == "diego"
    # bosh-lite.yml moved ssh_proxy onto the router group; without the companion it is gone.
    assert not [item for _, item in jobs(lite_without_companion) if item["name"] == "ssh_proxy"]
    assert [where for where, item in jobs(lite) if item["name"] == "ssh_proxy"] == ["istio-router"]


def test_every_platform_route_is_carried_by_istio_route_registrar(result, base):
    before = registrar_routes(base, "route_registrar")
    after = registrar_routes(result, "istio-route-registrar")
    assert before, "the base manifest has no route_registrar routes?"
    expected = {key: route for key, route in before.items() if key not in ROUTES_OF_REMOVED_JOBS}
    # routing-api's own route moves to istio-control, where Copilot serves router groups: the same
    # definition (api.<sys>/routing, tls_port 3001, its SAN, 20 s), without routing-api's health check script.
    routing_api = {k: v for k, v in before[("api", "routing-api")].items() if k != "health_check"}
    expected[("istio-control", "routing-api")] = routing_api
    assert after == expected  # the very same route definitions, TLS settings and health checks included
    hosts = {uri.split("/")[0].split(".")[0] for route in after.values() for uri in route["uris"]}
    assert {"api", "uaa", "login", "doppler", "log-cache", "log-stream", "blobstore", "proxy"} <= hosts
    for (group_name, _), _route in after.items():
        registrar = job(result, group_name, "istio-route-registrar")
        assert registrar["release"] == "istio-routing"
        assert set(registrar["properties"]) == {"route_registrar", "copilot"}


def test_certificate_variables_are_signed_by_cas_in_the_manifest(result):
    variables = {v["name"]: v for v in result["variables"]}
    ours = ["copilot_bbs_client", "copilot_registrar_server", "istio_route_registrar_client", "istiod_xds_server",
            "istio_router_xds_client"]
    for name in ours:
        ca = variables[name]["options"]["ca"]
        assert variables[ca]["type"] == "certificate" and variables[ca]["options"].get("is_ca") is True
    assert variables["copilot_bbs_client"]["options"]["ca"] == "service_cf_internal_ca"  # the CA BBS trusts
    assert variables["copilot_registrar_server"]["options"]["ca"] == "service_cf_internal_ca"
    for v in variables.values():
        ca = (v.get("options") or {}).get("ca")
        assert ca is None or ca in variables, f"{v['name']} is signed by {ca}, which is not in the manifest"


def test_dns_aliases_point_at_groups_that_exist(result):
    aliases = next(item for where, item in jobs(result) if where == "addon:bosh-dns-aliases")["properties"]["aliases"]
    domains = {a["domain"]: a for a in aliases}
    assert not {"nats.service.cf.internal", "_.nats.service.cf.internal", "routing-api.service.cf.internal"} & set(domains)
    assert [t["instance_group"] for t in domains["copilot.service.cf.internal"]["targets"]] == ["istio-control"]
    assert [t["instance_group"] for t in domains["istio-router.service.cf.internal"]["targets"]] == ["istio-router"]
    assert [t["instance_group"] for t in domains["istiod.service.cf.internal"]["targets"]] == ["istio-control"]
    targets = {t["instance_group"] for a in aliases for t in a["targets"]}
    assert not targets & REMOVED_GROUPS


def test_routers_reach_istiod_over_mutual_tls_with_a_ca_of_its_own(result):
    """istiod serves the routers on its secure port only (plaintext stays on the job's loopback default),
    with a certificate naming what the routers verify; it lets in clients of istio_xds_ca, which signs
    nothing but these two certificates."""
    pilot = job(result, "istio-control", "pilot-discovery")["properties"]
    assert pilot["tls"] == {"cert": "((istiod_xds_server.certificate))", "key": "((istiod_xds_server.private_key))",
                            "ca_cert": "((istio_router_xds_client.ca))"}
    assert "grpc_address" not in pilot  # the job's default, 127.0.0.1
    router = job(result, "istio-router", "istio-router")["properties"]
    assert router["pilot_tls"] == {"ca_cert": "((istiod_xds_server.ca))",
                                   "client_cert": "((istio_router_xds_client.certificate))",
                                   "client_key": "((istio_router_xds_client.private_key))",
                                   "server_name": "istiod.service.cf.internal"}
    variables = {v["name"]: v for v in result["variables"]}
    server, client = variables["istiod_xds_server"]["options"], variables["istio_router_xds_client"]["options"]
    assert server["ca"] == client["ca"] == "istio_xds_ca" and variables["istio_xds_ca"]["options"]["is_ca"] is True
    assert "istiod.service.cf.internal" in server["alternative_names"] and server["extended_key_usage"] == ["server_auth"]
    assert client["alternative_names"] and client["extended_key_usage"] == ["client_auth"]
    assert [v["name"] for v in variables.values() if (v.get("options") or {}).get("ca") == "istio_xds_ca"] == [
        "istiod_xds_server", "istio_router_xds_client"]


def test_cells_keep_tls_proxy_ports_and_routers_verify_instances(result):
    rep = job(result, "diego-cell", "rep")["properties"]
    # Route integrity: the cells keep their TLS proxy ports (as cf-deployment has them); the routers check
    # each instance's identity with Diego's instance identity CA.
    assert rep["containers"]["proxy"]["enable_unproxied_port_mappings"] is False
    router = job(result, "istio-router", "istio-router")["properties"]
    assert router["route_integrity"]["ca_cert"] == "((diego_instance_identity_ca.ca))"
    copilot = job(result, "istio-control", "copilot")["properties"]
    assert copilot["gateway"]["instance_identity_ca_file"] == "/var/vcap/jobs/istio-router/config/certs/instance_identity_ca.crt"


def test_the_ops_file_applies_after_the_bosh_lite_one_only(tmp_path):
    """Documented order: bosh-lite.yml first (it patches the router group that ours removes)."""
    from opsfile_helpers import BOSH_LITE, CF, ENABLE, bosh

    result = bosh("int", str(CF), "-o", str(ENABLE), "-o", str(BOSH_LITE))
    assert result.returncode != 0 and "name=router" in result.stderr


@pytest.mark.parametrize("path", ["enable-istio-routing.yml", "enable-istio-routing-bosh-lite.yml",
                                  "add-istio-routing.yml", "istio-router-tls-certificates.yml",
                                  "istio-router-static-ips.yml", "istio-routing-pxc-proxy-route.yml",
                                  "istio-routing-scale-to-one-az.yml", "istio-routing-behind-lb.yml",
                                  "istio-routing-disable-http2.yml", "istio-routing-disable-router-tls-termination.yml",
                                  "istio-routing-internal-route-services.yml", "istio-routing-default-router-group.yml"])
def test_ops_files_are_lists_of_operations(path):
    from opsfile_helpers import OPS

    operations = yaml.safe_load((OPS / path).read_text())
    assert isinstance(operations, list) and operations
    assert all(op["type"] in ("replace", "remove") and op["path"].startswith("/") for op in operations)
