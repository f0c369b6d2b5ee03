"""TCP domains with enable-istio-routing.yml on cf-deployment v58 (real bosh CLI): Cloud Controller keeps
asking routing-api's router groups at https://api.<system_domain>/routing with its cc_routing client;
Copilot serves them with UAA's issuer and UAA's own signing keys; an istio-route-registrar on
istio-control registers that route to Copilot's listener over TLS, which the routers can verify. With the
generated variables: tokens signed with either of UAA's keys pass the rendered Copilot's checks, and the
server certificate chains to the routers' upstream CA bundle under the registered name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cryptography import x509
from opsfile_helpers import (
    CF,
    ENABLE,
    OPS,
    ROUTING_API_CLIENTS,
    STAGE1,
    SYSTEM_DOMAIN,
    interpolate,
    job,
    jobs,
    vars_store,
)

from bosh_render import link_from_job, render_job
from copilot.config import load as load_copilot_config
from copilot.uaa_token import TokenError, TokenValidator
from devtools.peers import CACHE, REPO
from devtools.uaa import TestUAA

KEEP_GUID = OPS / "keep-routing-api-router-group-guid.yml"
READ = "routing.router_groups.read"


def _var(reference: str) -> tuple[str, str]:
    """("name", "field") of "((name.field))"."""
    name, _, field = reference.strip().removeprefix("((").removesuffix("))").partition(".")
    return name, field


def test_cloud_controller_keeps_its_routing_api_settings_and_uaa_client(result, base):
    for item in (item for _, item in jobs(result) if item["name"] in ROUTING_API_CLIENTS):
        before = next(b for _, b in jobs(base) if b["name"] == item["name"])
        assert item["properties"]["routing_api"] == before["properties"]["routing_api"] == {"enabled": True}
        assert item["properties"]["uaa"]["clients"]["cc_routing"] == before["properties"]["uaa"]["clients"]["cc_routing"]
    assert {item["name"] for _, item in jobs(result)} >= ROUTING_API_CLIENTS
    uaa = job(result, "uaa", "uaa")["properties"]["uaa"]
    assert uaa["clients"]["cc_routing"] == job(base, "uaa", "uaa")["properties"]["uaa"]["clients"]["cc_routing"]
    assert uaa["clients"]["cc_routing"]["authorities"] == READ
    admin = next(user for user in uaa["scim"]["users"] if user["name"] == "admin")
    assert {READ, "routing.router_groups.write"} <= set(admin["groups"])  # the cf CLI's user token


def test_copilot_serves_v58s_router_groups_with_uaas_issuer_and_signing_keys(result, base):
    copilot = job(result, "istio-control", "copilot")["properties"]["routing_api"]
    assert copilot["enabled"] is True
    uaa = job(result, "uaa", "uaa")["properties"]["uaa"]
    assert "issuer" not in uaa  # UAA's issuer is then its url + /oauth/token
    assert copilot["uaa"]["issuer"] == uaa["url"] + "/oauth/token"
    # Every key UAA signs with (uaa.jwt.policy.keys), as its public half: an rsa variable's public_key,
    # or the key's signing certificate.
    expected = set()
    for key in uaa["jwt"]["policy"]["keys"].values():
        name, field = _var(key["signingKey"])
        assert field == "private_key"
        expected.add(key.get("signingCert", f"(({name}.public_key))"))
    assert set(copilot["uaa"]["verification_keys"]) == expected and len(expected) == 2
    routing_api = next(b for _, b in jobs(base) if b["name"] == "routing-api")["properties"]["routing_api"]
    assert copilot["router_groups"] == routing_api["router_groups"]  # default-tcp, tcp, 1024-1033


def test_the_router_groups_route_reaches_copilots_listener_over_tls(result):
    copilot = job(result, "istio-control", "copilot")["properties"]["routing_api"]
    registrar = job(result, "istio-control", "istio-route-registrar")
    assert registrar["release"] == "istio-routing"
    [route] = registrar["properties"]["route_registrar"]["routes"]
    assert route["uris"] == ["api.((system_domain))/routing"]  # CC's routing_api url, through the routers
    assert route["tls_port"] == int(copilot["listen_address"].rpartition(":")[2]) and "port" not in route
    variables = {v["name"]: v for v in result["variables"]}
    cert_name, _ = _var(copilot["server_cert"])
    assert _var(copilot["server_key"]) == (cert_name, "private_key")
    cert = variables[cert_name]["options"]
    assert route["server_cert_domain_san"] in cert["alternative_names"] and cert["extended_key_usage"] == ["server_auth"]
    router = job(result, "istio-router", "istio-router")["properties"]
    assert f"(({cert_name}.ca))" in router["upstream_tls"]["ca_certs"]
    # Its CA signs nothing else: the routers trust it for platform backends.
    assert [n for n, v in variables.items() if (v.get("options") or {}).get("ca") == cert["ca"]] == [cert_name]
    assert variables[cert["ca"]]["options"]["is_ca"] is True


def test_a_live_foundation_keeps_routing_apis_guid_for_default_tcp():
    guid = "0b5f2c4e-6a1d-4f3b-9c8e-7d2a1b0c9e8f"
    manifest = interpolate(CF, ENABLE, KEEP_GUID, extra=("-v", f"default_tcp_router_group_guid={guid}"))
    groups = job(manifest, "istio-control", "copilot")["properties"]["routing_api"]["router_groups"]
    assert groups == [{"name": "default-tcp", "type": "tcp", "reservable_ports": "1024-1033", "guid": guid}]


@pytest.fixture(scope="module")
def with_vars(tmp_path_factory) -> tuple[dict, dict]:
    extra = ("-v", f"system_domain={SYSTEM_DOMAIN}")
    store = vars_store(CACHE / "opsfile-vars", CF, STAGE1, extra=extra)
    return interpolate(CF, ENABLE, extra=("-l", str(store), *extra, "--var-errs")), yaml.safe_load(store.read_text())


def test_rendered_copilot_accepts_tokens_from_either_uaa_key_and_the_routers_can_verify_it(with_vars, tmp_path: Path):
    manifest, values = with_vars
    properties = job(manifest, "istio-control", "copilot")["properties"]
    rendered = render_job(REPO / "jobs" / "copilot", properties, out_dir=tmp_path / "copilot")
    for path in rendered.values():
        path.write_text(path.read_text().replace("/var/vcap/jobs/copilot", str(tmp_path / "copilot")))
    config = load_copilot_config(rendered["config/copilot.yml"]).routing_api
    assert config is not None
    issuer = f"https://uaa.{SYSTEM_DOMAIN}/oauth/token"
    assert config.uaa_issuer == issuer
    assert [g.name for g in config.router_groups] == ["default-tcp"]
    validator = TokenValidator(config.uaa_verification_keys, config.uaa_issuer)
    for variable in ("uaa_jwt_signing_key", "uaa_jwt_signing_cert"):  # UAA's key-1 and key-2
        assert validator.check(TestUAA(issuer, values[variable]["private_key"]).authorization([READ]), READ)
    with pytest.raises(TokenError):
        validator.check(TestUAA(issuer).authorization([READ]), READ)

    # The routers' upstream CA bundle verifies Copilot's server certificate, which names the route's SAN.
    control = [{"address": "istio-control-0.example", "index": 0}]
    router = render_job(
        REPO / "jobs" / "istio-router", job(manifest, "istio-router", "istio-router")["properties"],
        links={"pilot": link_from_job(REPO / "jobs" / "pilot-discovery", "pilot",
                                      job(manifest, "istio-control", "pilot-discovery").get("properties") or {},
                                      instances=control),
               "copilot": link_from_job(REPO / "jobs" / "copilot", "copilot", properties, instances=control)},
        out_dir=tmp_path / "router",
    )
    leaf = x509.load_pem_x509_certificate(rendered["config/certs/routing_api/server.crt"].read_bytes())
    bundle = x509.load_pem_x509_certificates(router["config/certs/upstream_ca.crt"].read_bytes())
    issuers = [ca for ca in bundle if ca.subject == leaf.issuer]
    assert issuers, "no CA in the routers' upstream bundle issued Copilot's router groups certificate"
    leaf.verify_directly_issued_by(issuers[0])
    [route] = job(manifest, "istio-control", "istio-route-registrar")["properties"]["route_registrar"]["routes"]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert route["server_cert_domain_san"] in sans
