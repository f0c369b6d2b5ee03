"""The copilot job's routing_api properties (routing-api's router groups for Cloud Controller): rendered
into a config Copilot loads, with UAA's keys as cf-deployment's variables give them; render errors name
the property."""

from __future__ import annotations

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from release_helpers import copilot_properties, render

from bosh_render import RenderError
from copilot.config import DEFAULT_ROUTER_GROUPS
from copilot.config import load as load_copilot_config
from copilot.router_groups_api import default_guid

ISSUER = "https://uaa.sys.example.com/oauth/token"


@pytest.fixture(scope="module")
def uaa_public_key() -> str:
    """As a BOSH `rsa` variable's public_key (cf-deployment's uaa_jwt_signing_key)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _routing_api(pki, uaa_public_key: str, **overrides) -> dict:
    # cf-deployment's two UAA signing keys: uaa_jwt_signing_key (rsa) and uaa_jwt_signing_cert (certificate).
    return {"enabled": True, "server_cert": pki.server.cert, "server_key": pki.server.key,
            "uaa": {"issuer": ISSUER, "verification_keys": [uaa_public_key, pki.ca]}, **overrides}


def _load(rendered, tmp_path):
    config_file = rendered["config/copilot.yml"]
    config_file.write_text(config_file.read_text().replace("/var/vcap/jobs/copilot", str(tmp_path)))
    return load_copilot_config(config_file)


def test_off_by_default(pki, tmp_path) -> None:
    rendered = render("copilot", copilot_properties(pki), tmp_path)
    assert "routing_api" not in yaml.safe_load(rendered["config/copilot.yml"].read_text())
    assert rendered["config/certs/routing_api/server.crt"].read_text().strip() == ""


def test_rendered_config_loads_with_v58s_default_router_group_and_both_uaa_keys(pki, tmp_path, uaa_public_key) -> None:
    rendered = render("copilot", copilot_properties(pki, routing_api=_routing_api(pki, uaa_public_key)), tmp_path)
    config = _load(rendered, tmp_path).routing_api
    assert config is not None
    assert config.listen == "0.0.0.0:3001" and config.uaa_issuer == ISSUER
    assert len(config.uaa_verification_keys) == 2
    assert config.router_groups == DEFAULT_ROUTER_GROUPS
    assert rendered["config/certs/routing_api/server.key"].read_text().strip() == pki.server.key.strip()


def test_router_groups_as_routing_api_took_them(pki, tmp_path, uaa_public_key) -> None:
    groups = [{"name": "default-tcp", "type": "tcp", "reservable_ports": "1024-1033,2000", "guid": "from-routing-api"},
              {"name": "other-tcp", "type": "tcp", "reservable_ports": 3000}]
    properties = copilot_properties(pki, routing_api=_routing_api(pki, uaa_public_key, router_groups=groups,
                                                                   listen_address="0.0.0.0:3443"))
    config = _load(render("copilot", properties, tmp_path), tmp_path).routing_api
    assert config is not None and config.listen == "0.0.0.0:3443"
    assert [g.to_json() for g in config.router_groups] == [
        {"guid": "from-routing-api", "name": "default-tcp", "type": "tcp", "reservable_ports": "1024-1033,2000"},
        {"guid": default_guid("other-tcp"), "name": "other-tcp", "type": "tcp", "reservable_ports": "3000"},
    ]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"uaa": {"verification_keys": ["K"]}}, "routing_api.uaa.issuer: is required when routing_api.enabled"),
        ({"uaa": {"issuer": ISSUER, "verification_keys": []}}, "routing_api.uaa.verification_keys: must be a list of PEM"),
        ({"uaa": {"issuer": ISSUER, "verification_keys": ["not a pem"]}}, "routing_api.uaa.verification_keys: must be"),
        ({"server_cert": ""}, "routing_api.server_cert: is required"),
        ({"listen_address": "0.0.0.0:9003"}, "routing_api.listen_address: 0.0.0.0:9003 uses the port of registrar"),
        ({"listen_address": "3001"}, "routing_api.listen_address: \"3001\" must be host:port"),
        ({"router_groups": {"name": "default-tcp"}}, "routing_api.router_groups: must be a list"),
    ],
)
def test_render_errors_name_the_property(pki, tmp_path, uaa_public_key, overrides, message) -> None:
    routing_api = {**_routing_api(pki, uaa_public_key), **overrides}
    tls = {"enabled": True, "server_cert": pki.server.cert, "server_key": pki.server.key, "client_ca_cert": pki.ca}
    with pytest.raises(RenderError, match=message):
        render("copilot", copilot_properties(pki, routing_api=routing_api, registrar=tls), tmp_path)
