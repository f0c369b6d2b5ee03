"""The ops-files interpolate with every variable provided (`bosh int --var-errs` with a vars file the
real bosh CLI generated), and our jobs render from the result with BOSH's template semantics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from opsfile_helpers import (
    BOSH_LITE,
    CF,
    CF_OPS,
    DEFAULT_ROUTER_GROUP,
    ENABLE,
    ENABLE_LITE,
    HTTP2_OFF,
    INTERNAL_ROUTE_SERVICES,
    ISO_SEG_ROUTER,
    ONE_AZ,
    OPERATOR_TLS,
    PXC_PROXY_ROUTE,
    STAGE1,
    SYSTEM_DOMAIN,
    TLS_AT_LB,
    bosh,
    group,
    interpolate,
    jobs,
    vars_store,
)

from bosh_render import link_from_job, render_job
from copilot.config import load as load_copilot_config
from devtools.peers import CACHE, REPO

COMBINATIONS = {
    "enable": (ENABLE, PXC_PROXY_ROUTE),
    "bosh-lite": (BOSH_LITE, ENABLE, ENABLE_LITE, PXC_PROXY_ROUTE),
    "stage-1": (STAGE1,),
    "operator-tls": (ENABLE, OPERATOR_TLS),
    "isolation-segment": (CF_OPS / "add-persistent-isolation-segment-router.yml", ENABLE, ISO_SEG_ROUTER, PXC_PROXY_ROUTE),
    # Every companion of a cf-deployment router choice (docs/operating.md, "With cf-deployment's ops-files").
    "companions": (ENABLE, PXC_PROXY_ROUTE, HTTP2_OFF, TLS_AT_LB, INTERNAL_ROUTE_SERVICES, DEFAULT_ROUTER_GROUP, ONE_AZ),
}


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    """Every variable of cf-deployment plus ours (stage 1 declares them all), then the operator's TLS pair."""
    generated = vars_store(CACHE / "opsfile-vars", CF, STAGE1, extra=("-v", f"system_domain={SYSTEM_DOMAIN}"))
    values = yaml.safe_load(generated.read_text())
    values["istio_router_tls"] = {k: values["router_ssl"][k] for k in ("certificate", "private_key")}
    values["system_domain"] = SYSTEM_DOMAIN
    values["default_router_group_reservable_ports"] = "1024-1123"  # the operator's, for configure-default-router-group
    out = tmp_path_factory.mktemp("vars") / "vars.yml"
    out.write_text(yaml.safe_dump(values))
    return out


@pytest.fixture(scope="session")
def with_vars(store) -> dict[str, dict]:
    return {name: interpolate(CF, *ops, extra=("-l", str(store), "--var-errs")) for name, ops in COMBINATIONS.items()}


@pytest.mark.parametrize("name", sorted(COMBINATIONS))
def test_interpolates_with_every_variable_provided(name, with_vars):
    text = yaml.safe_dump(with_vars[name])
    assert "((" not in text
    assert "BEGIN CERTIFICATE" in text


def test_var_errs_catches_a_missing_variable(store, tmp_path):
    """The check above can fail: without the operator's TLS pair the TLS ops-file does not interpolate."""
    values = yaml.safe_load(store.read_text())
    del values["istio_router_tls"]
    partial = tmp_path / "vars.yml"
    partial.write_text(yaml.safe_dump(values))
    result = bosh("int", str(CF), "-o", str(ENABLE), "-o", str(OPERATOR_TLS), "-l", str(partial), "--var-errs")
    assert result.returncode != 0 and "istio_router_tls" in result.stderr


def test_operator_tls_replaces_the_generated_router_certificate(with_vars, store):
    values = yaml.safe_load(store.read_text())
    router = next(item for where, item in jobs(with_vars["operator-tls"]) if item["name"] == "istio-router")
    assert router["properties"]["sds"]["certificates"][0]["cert_chain"] == values["istio_router_tls"]["certificate"]
    assert "router_ssl" not in {v["name"] for v in with_vars["operator-tls"].get("variables", [])}


def _assert_tls_pair(*, ca: str, leaf: str, usage: x509.ObjectIdentifier, dns_name: str | None = None) -> None:
    """`leaf` is signed by `ca`, has the extended key usage and a SAN (istiod reads the client's identity
    from it), and names `dns_name` if given."""
    ca_cert, leaf_cert = x509.load_pem_x509_certificate(ca.encode()), x509.load_pem_x509_certificate(leaf.encode())
    leaf_cert.verify_directly_issued_by(ca_cert)
    assert usage in leaf_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    sans = leaf_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(sans)
    if dns_name:
        assert dns_name in sans.get_values_for_type(x509.DNSName)


def _install(rendered: dict[str, Path], job: str, out: Path) -> None:
    for path in rendered.values():
        path.write_text(path.read_text().replace(f"/var/vcap/jobs/{job}", str(out)))


def _instances(manifest: dict, group_name: str) -> list[dict]:
    count = group(manifest, group_name)["instances"]
    return [{"address": f"{group_name}-{i}.example", "index": i} for i in range(count)]


@pytest.mark.parametrize("name", ["enable", "bosh-lite"])
def test_our_jobs_render_from_the_manifest_and_their_programs_accept_the_result(name, with_vars, tmp_path):
    manifest = with_vars[name]
    copilot_props = next(item for _, item in jobs(manifest) if item["name"] == "copilot")["properties"]
    control = _instances(manifest, "istio-control")
    copilot_link = link_from_job(REPO / "jobs" / "copilot", "copilot", copilot_props, instances=control)

    rendered = render_job(REPO / "jobs" / "copilot", copilot_props, out_dir=tmp_path / "copilot")
    _install(rendered, "copilot", tmp_path / "copilot")
    config = load_copilot_config(rendered["config/copilot.yml"])
    assert config.registrar is not None and config.registrar.listen == "0.0.0.0:9003"
    assert config.gateway.upstream_ca_file == "/var/vcap/jobs/istio-router/config/certs/upstream_ca.crt"

    pilot_props = next(item for _, item in jobs(manifest) if item["name"] == "pilot-discovery").get("properties") or {}
    pilot = render_job(REPO / "jobs" / "pilot-discovery", pilot_props, links={"copilot": copilot_link},
                       out_dir=tmp_path / "pilot")
    pilot_link = link_from_job(REPO / "jobs" / "pilot-discovery", "pilot", pilot_props, instances=control)
    assert "config/mesh.yml" in pilot
    # istiod: plaintext xDS on loopback only, mutual TLS on 15012 for the routers.
    args = yaml.safe_load(pilot["config/bpm.yml"].read_text())["processes"][0]["args"]
    assert "--grpcAddr=127.0.0.1:15010" in args and "--secureGRPCAddr=0.0.0.0:15012" in args
    assert "--caCertFile=/var/vcap/jobs/pilot-discovery/config/certs/ca.crt" in args

    router_props = next(item for _, item in jobs(manifest) if item["name"] == "istio-router")["properties"]
    router = render_job(REPO / "jobs" / "istio-router", router_props, links={"pilot": pilot_link, "copilot": copilot_link},
                        out_dir=tmp_path / "router")
    assert router["config/certs/upstream_ca.crt"].read_text().count("BEGIN CERTIFICATE") == 4  # + the router groups API's CA
    bootstrap = json.loads(router["config/envoy.json"].read_text())
    # The foundation's prom_scraper (every VM) scrapes each job's config/prom_scraper_config.yml at
    # http://127.0.0.1:<port><path>: the ports the processes really listen on, plain HTTP.
    scrape = {job: yaml.safe_load(out["config/prom_scraper_config.yml"].read_text())
              for job, out in (("copilot", rendered), ("istiod", pilot), ("istio-router", router))}
    copilot_health = yaml.safe_load(rendered["config/copilot.yml"].read_text())["health"]["listen"]
    assert scrape["copilot"] == {**scrape["copilot"], "port": int(copilot_health.rsplit(":", 1)[1]),
                                 "source_id": "copilot", "scheme": "http", "path": "/metrics"}
    assert f"--monitoringAddr=127.0.0.1:{scrape['istiod']['port']}" in args
    assert scrape["istiod"]["source_id"] == "istiod" and scrape["istiod"]["path"] == "/metrics"
    assert scrape["istio-router"]["port"] == bootstrap["admin"]["address"]["socket_address"]["port_value"]
    assert scrape["istio-router"]["path"] == "/stats/prometheus" and scrape["istio-router"]["scheme"] == "http"
    assert all(c.get("instance_id") for c in scrape.values())
    xds = next(c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "xds-grpc")
    assert {e["endpoint"]["address"]["socket_address"]["port_value"]
            for e in xds["load_assignment"]["endpoints"][0]["lb_endpoints"]} == {15012}
    assert xds["transport_socket"]["typed_config"]["sni"] == "istiod.service.cf.internal"
    # The generated certificates fit together: the router's CA verifies istiod's certificate, which names
    # the server name the router checks; istiod's client CA verifies the router's client certificate.
    _assert_tls_pair(ca=router["config/certs/pilot/ca.crt"].read_text(), leaf=pilot["config/certs/tls.crt"].read_text(),
                     usage=ExtendedKeyUsageOID.SERVER_AUTH, dns_name="istiod.service.cf.internal")
    _assert_tls_pair(ca=pilot["config/certs/ca.crt"].read_text(), leaf=router["config/certs/pilot/client.crt"].read_text(),
                     usage=ExtendedKeyUsageOID.CLIENT_AUTH)

    checked = 0
    for group_name, item in jobs(manifest):
        if item["name"] != "istio-route-registrar":
            continue
        out = tmp_path / "registrar" / group_name
        spec = {"name": group_name, "index": 1, "ip": "10.0.1.7"}
        rendered = render_job(REPO / "jobs" / "istio-route-registrar", item["properties"], links={"copilot": copilot_link},
                              spec_overrides=spec, out_dir=out)
        _install(rendered, "istio-route-registrar", out)
        check = subprocess.run([sys.executable, "-m", "route_registrar", "--config", str(rendered["config/registrar.json"]),
                                "--check"], capture_output=True, text=True, env={"PYTHONPATH": str(REPO / "src")}, timeout=60)
        assert check.returncode == 0, check.stderr
        assert "config ok" in check.stdout
        checked += 1
        if group_name == "database":
            assert f"1-proxy.{SYSTEM_DOMAIN} -> 10.0.1.7 port 8083" in check.stdout  # prepend_instance_index
        if group_name == "istio-control":  # Copilot's router groups, where Cloud Controller asks routing-api
            assert f"api.{SYSTEM_DOMAIN}/routing -> 10.0.1.7 tls_port 3001 (routing-api.service.cf.internal)" in check.stdout
        if group_name == "uaa":
            assert f"*.login.{SYSTEM_DOMAIN} -> 10.0.1.7 tls_port 8443 (uaa.service.cf.internal)" in check.stdout
            assert "health check uaa-healthcheck" in check.stdout
            bpm = yaml.safe_load(rendered["config/bpm.yml"].read_text())
            volumes = bpm["processes"][0]["unsafe"]["unrestricted_volumes"]
            assert {"path": "/var/vcap/jobs/uaa", "allow_executions": True} in volumes
    assert checked == 7


def test_isolation_segment_routers_render_into_their_shards_gateways(with_vars, tmp_path):
    """Copilot loads the companion's router_shards, and each router group's istio-router renders (its
    router_shard one Copilot lists) with the node labels its own shard's Gateways select, no other's."""
    manifest = with_vars["isolation-segment"]
    copilot_props = next(item for _, item in jobs(manifest) if item["name"] == "copilot")["properties"]
    copilot_link = link_from_job(REPO / "jobs" / "copilot", "copilot", copilot_props,
                                 instances=_instances(manifest, "istio-control"))
    rendered = render_job(REPO / "jobs" / "copilot", copilot_props, out_dir=tmp_path / "copilot")
    _install(rendered, "copilot", tmp_path / "copilot")
    gateway = load_copilot_config(rendered["config/copilot.yml"]).gateway
    shards = [shard.name for shard in gateway.router_shards]
    assert shards == ["shared", "persistent_isolation_segment"]
    pilot_props = next(item for _, item in jobs(manifest) if item["name"] == "pilot-discovery").get("properties") or {}
    pilot_link = link_from_job(REPO / "jobs" / "pilot-discovery", "pilot", pilot_props,
                               instances=_instances(manifest, "istio-control"))
    for group_name, shard in (("istio-router", "shared"), ("iso-seg-router", "persistent_isolation_segment")):
        [props] = [j["properties"] for j in group(manifest, group_name)["jobs"] if j["name"] == "istio-router"]
        router = render_job(REPO / "jobs" / "istio-router", props, links={"pilot": pilot_link, "copilot": copilot_link},
                            spec_overrides={"name": group_name}, out_dir=tmp_path / group_name)
        labels = json.loads(router["config/envoy.json"].read_text())["node"]["metadata"]["LABELS"]
        selected = [i for i in range(len(shards)) if gateway.shard_selector(i).items() <= labels.items()]
        assert selected == [shards.index(shard)], (group_name, labels)
def test_the_companions_reach_copilot_and_the_routers_as_meant(with_vars, tmp_path):
    """HTTP/2 off, TLS at the load balancer, internal route-service lookup, the default router group's
    ports: rendered from the interpolated manifest, Copilot's and the route-service proxy's own loaders
    accept the result and it says what the cf-deployment ops-files said."""
    manifest = with_vars["companions"]
    copilot_props = next(item for _, item in jobs(manifest) if item["name"] == "copilot")["properties"]
    rendered = render_job(REPO / "jobs" / "copilot", copilot_props, out_dir=tmp_path / "copilot")
    _install(rendered, "copilot", tmp_path / "copilot")
    gateway = load_copilot_config(rendered["config/copilot.yml"]).gateway
    assert (gateway.enable_http2, gateway.https_port, gateway.certificates, gateway.trusted_proxy_hops) == (False, 0, (), 1)
    assert gateway.route_services is not None and gateway.route_services.internal_lookup
    routing_api = load_copilot_config(rendered["config/copilot.yml"]).routing_api
    assert routing_api is not None and [(g.name, g.reservable_ports) for g in routing_api.router_groups] == [
        ("default-tcp", "1024-1123")]

    control = _instances(manifest, "istio-control")
    copilot_link = link_from_job(REPO / "jobs" / "copilot", "copilot", copilot_props, instances=control)
    pilot_props = next(item for _, item in jobs(manifest) if item["name"] == "pilot-discovery").get("properties") or {}
    pilot_link = link_from_job(REPO / "jobs" / "pilot-discovery", "pilot", pilot_props, instances=control)
    router_props = next(item for _, item in jobs(manifest) if item["name"] == "istio-router")["properties"]
    router = render_job(REPO / "jobs" / "istio-router", router_props, links={"pilot": pilot_link, "copilot": copilot_link},
                        out_dir=tmp_path / "router")
    # The routers hold only the cells' client certificate: no router-ssl, as no Gateway server serves one.
    assert [c["name"] for c in json.loads(router["config/sds.yml"].read_text())["certificates"]] == ["backend-client"]
    route_services = json.loads(router["config/route_services.json"].read_text())
    # Internal lookup through the router's own HTTP listener only: it has no HTTPS one.
    assert route_services["internal_lookup"] == "127.0.0.1:80" and "internal_lookup_https" not in route_services
    _install(router, "istio-router", tmp_path / "router")
    check = subprocess.run([sys.executable, "-m", "route_services", "--config", str(router["config/route_services.json"]),
                            "--check"], capture_output=True, text=True, env={"PYTHONPATH": str(REPO / "src")}, timeout=60)
    assert check.returncode == 0, check.stderr
    assert [group(manifest, g)["azs"] for g in ("istio-router", "istio-control")] == [["z1"], ["z1"]]
