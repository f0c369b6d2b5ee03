"""`*.apps.internal` after the switch (real bosh CLI on cf-deployment v58): service-discovery-controller
goes, bosh-dns-adapter stays on the cells unchanged and finds Copilot through its
service-discovery-controller link, Copilot serves with the controller's certificate and CA (v58's
cf_app_sd_* variables), and nothing registers internal routes over NATS. With generated variables, a
client holding bosh-dns-adapter's certificate gets an answer from the copilot job rendered from the
manifest. Stage 1 keeps bosh-dns-adapter on the controller."""

from __future__ import annotations

import dataclasses
import http.client
import socket
import ssl

import pytest
import yaml
from opsfile_helpers import CF, ENABLE, STAGE1, SYSTEM_DOMAIN, interpolate, job, jobs, vars_store

from bosh_render import link_from_job, render_job
from copilot.config import load as load_copilot_config
from copilot.service_discovery import SERVER_NAME, AddressTable, ServiceDiscoveryServer
from copilot.views import Views
from devtools.peers import CACHE, REPO

ALIAS = "copilot-service-discovery"
LINK = "service-discovery-controller"


def _providers(manifest: dict, alias: str) -> list[str]:
    found = []
    for where, item in jobs(manifest):
        for name, provided in (item.get("provides") or {}).items():
            if (provided.get("as", name) if isinstance(provided, dict) else name) == alias:
                found.append(f"{where}/{item['name']}")
    return found


def test_bosh_dns_adapter_stays_unchanged_and_consumes_copilots_link(result, base):
    adapter = job(result, "diego-cell", "bosh-dns-adapter")
    before = job(base, "diego-cell", "bosh-dns-adapter")
    assert adapter["properties"] == before["properties"]  # internal_domains, cf_app_sd_client_tls, its CA
    assert adapter["properties"]["dnshttps"]["client"]["tls"] == "((cf_app_sd_client_tls))"
    assert adapter["release"] == before["release"] == "cf-networking"
    assert adapter["consumes"] == {LINK: {"from": ALIAS}}
    assert _providers(result, ALIAS) == ["istio-control/copilot"]
    copilot_spec = yaml.safe_load((REPO / "jobs" / "copilot" / "spec").read_text())
    provided = {p["name"]: p for p in copilot_spec["provides"]}
    assert provided[LINK]["type"] == "service-discovery-controller"  # the type bosh-dns-adapter's spec consumes
    assert provided[LINK]["properties"] == ["port"]
    # The controller, the only other provider of that type, is gone.
    assert not [w for w, item in jobs(result) if item["name"] == "service-discovery-controller"]


def test_copilot_serves_with_the_controllers_certificate_and_ca(result):
    copilot = job(result, "istio-control", "copilot")
    assert copilot["provides"] == {LINK: {"as": ALIAS}}
    assert copilot["properties"]["service_discovery"] == {
        "enabled": True,
        "server_cert": "((cf_app_sd_server_tls.certificate))",
        "server_key": "((cf_app_sd_server_tls.private_key))",
        "client_ca_cert": "((cf_app_sd_server_tls.ca))",
    }
    assert "listen_address" not in copilot["properties"]["service_discovery"]  # 0.0.0.0:8054, the link's port
    assert link_from_job(REPO / "jobs" / "copilot", LINK, copilot["properties"])["properties"] == {"port": 8054}
    variables = {v["name"]: v for v in result["variables"]}
    assert variables["cf_app_sd_ca"]["options"]["is_ca"] is True
    for name, usage in (("cf_app_sd_server_tls", "server_auth"), ("cf_app_sd_client_tls", "client_auth")):
        options = variables[name]["options"]
        assert options["ca"] == "cf_app_sd_ca"
        assert SERVER_NAME in options["alternative_names"] and options["extended_key_usage"] == [usage]


def test_nothing_registers_internal_routes_over_nats(result):
    emitters = [item for _, item in jobs(result) if item["name"] in ("route_emitter", "route_emitter_windows")]
    for emitter in emitters:
        assert emitter["properties"].get("internal_routes", {}).get("enabled") is False
    assert "nats" not in {g["name"] for g in result["instance_groups"]}


def test_stage1_keeps_bosh_dns_adapter_on_the_controller(stage1, enabled):
    adapter = job(stage1, "diego-cell", "bosh-dns-adapter")
    assert adapter["consumes"] == {LINK: {"from": LINK}}  # the controller's link, by its own name
    controller = job(stage1, "scheduler", "service-discovery-controller")
    assert "provides" not in controller  # not aliased: its link keeps the name bosh-dns-adapter names
    assert _providers(stage1, LINK) == [] and _providers(stage1, ALIAS) == ["istio-control/copilot"]
    assert job(stage1, "diego-cell", "route_emitter")["properties"]["internal_routes"]["enabled"] is True  # NATS stays
    copilot1, copilot2 = job(stage1, "istio-control", "copilot"), job(enabled, "istio-control", "copilot")
    assert copilot1["provides"] == copilot2["provides"]  # Copilot serves the same in both stages
    assert copilot1["properties"]["service_discovery"] == copilot2["properties"]["service_discovery"]


def _ask(context: ssl.SSLContext, port: int, path: str) -> tuple[int, bytes]:
    """bosh-dns-adapter's request: to 127.0.0.1 (the alias's target), verifying the controller's name."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, \
            context.wrap_socket(sock, server_hostname=SERVER_NAME) as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {SERVER_NAME}:8054\r\n\r\n".encode())
        response = http.client.HTTPResponse(tls)  # type: ignore[arg-type]
        response.begin()
        return response.status, response.read()


@pytest.fixture(scope="module")
def generated() -> dict:
    """enable-istio-routing with every variable generated by the real bosh CLI."""
    store = vars_store(CACHE / "opsfile-vars", CF, STAGE1, extra=("-v", f"system_domain={SYSTEM_DOMAIN}"))
    return interpolate(CF, ENABLE, extra=("-l", str(store), "-v", f"system_domain={SYSTEM_DOMAIN}", "--var-errs"))


def test_bosh_dns_adapters_certificate_is_answered_by_the_rendered_copilot(generated, tmp_path):
    manifest = generated
    copilot = job(manifest, "istio-control", "copilot")
    rendered = render_job(REPO / "jobs" / "copilot", copilot["properties"], out_dir=tmp_path / "copilot")
    config_path = rendered["config/copilot.yml"]
    config_path.write_text(config_path.read_text().replace("/var/vcap/jobs/copilot", str(tmp_path / "copilot")))
    sd = load_copilot_config(config_path).service_discovery
    assert sd is not None and sd.listen == "0.0.0.0:8054"

    table = Views()
    server = ServiceDiscoveryServer(AddressTable(table.bbs, lambda: True), dataclasses.replace(sd, listen="127.0.0.1:0"))
    server.start()
    server.addresses.refresh()  # the first snapshot now, rather than waiting for the refresher
    try:
        # bosh-dns-adapter's side, from its properties in the same manifest: its client certificate
        # (dnshttps.client.tls) and the CA it trusts for the server (dnshttps.server.ca).
        adapter = job(manifest, "diego-cell", "bosh-dns-adapter")["properties"]["dnshttps"]
        (tmp_path / "client.crt").write_text(adapter["client"]["tls"]["certificate"])
        (tmp_path / "client.key").write_text(adapter["client"]["tls"]["private_key"])
        context = ssl.create_default_context(cadata=adapter["server"]["ca"])
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(tmp_path / "client.crt", tmp_path / "client.key")
        assert _ask(context, server.port, "/v1/registration/app.apps.internal.") == (
            200, b'{"hosts":[],"env":"","service":""}')
        # A client certificate another CA of the foundation signed is refused.
        other = ssl.create_default_context(cadata=adapter["server"]["ca"])
        bbs_client = copilot["properties"]["bbs"]
        (tmp_path / "other.crt").write_text(bbs_client["client_cert"])
        (tmp_path / "other.key").write_text(bbs_client["client_key"])
        other.load_cert_chain(tmp_path / "other.crt", tmp_path / "other.key")
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            _ask(other, server.port, "/routes")
    finally:
        server.stop()
