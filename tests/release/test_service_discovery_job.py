"""The copilot job's service discovery (`*.apps.internal` for bosh-dns-adapter): its properties render
Copilot's `service_discovery` section and certificates, and its `service-discovery-controller` link
gives a consumer what bosh-dns-adapter reads from it (the link's address and `port`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from release_helpers import JOBS, copilot_properties, render

from bosh_render import RenderError, link_from_job, render_job
from copilot.config import load


def _sd(pki, **overrides) -> dict:
    return {"enabled": True, "server_cert": pki.server.cert, "server_key": pki.server.key, "client_ca_cert": pki.ca,
            **overrides}


def _config(rendered: dict[str, Path]) -> dict:
    return yaml.safe_load(rendered["config/copilot.yml"].read_text())


def test_off_by_default(pki, tmp_path) -> None:
    config = _config(render("copilot", copilot_properties(pki), tmp_path))
    assert "service_discovery" not in config


def test_enabled_renders_the_section_and_the_certificates(pki, tmp_path) -> None:
    rendered = render("copilot", copilot_properties(pki, service_discovery=_sd(pki)), tmp_path)
    certs = "/var/vcap/jobs/copilot/config/certs/service_discovery"
    assert _config(rendered)["service_discovery"] == {
        "listen": "0.0.0.0:8054", "cert": f"{certs}/server.crt", "key": f"{certs}/server.key",
        "client_ca": f"{certs}/client_ca.crt",
    }
    assert rendered["config/certs/service_discovery/server.crt"].read_text().strip() == pki.server.cert.strip()
    assert rendered["config/certs/service_discovery/server.key"].read_text().strip() == pki.server.key.strip()
    assert rendered["config/certs/service_discovery/client_ca.crt"].read_text().strip() == pki.ca.strip()
    # Copilot accepts what the job renders (paths moved to where the files are here).
    text = rendered["config/copilot.yml"].read_text().replace("/var/vcap/jobs/copilot", str(tmp_path))
    rendered["config/copilot.yml"].write_text(text)
    assert load(rendered["config/copilot.yml"]).service_discovery.listen == "0.0.0.0:8054"


def test_the_link_gives_the_port_and_the_address(pki, tmp_path) -> None:
    assert link_from_job(JOBS / "copilot", "service-discovery-controller", {})["properties"] == {"port": 8054}
    moved = {"port": 9054, "service_discovery": _sd(pki, listen_address="0.0.0.0:9054")}
    link = link_from_job(JOBS / "copilot", "service-discovery-controller", moved, address="q-s0.istio-control.default.cf.bosh")
    assert link["properties"] == {"port": 9054}
    assert _config(render("copilot", copilot_properties(pki, **moved), tmp_path / "job"))["service_discovery"]["listen"] == (
        "0.0.0.0:9054")
    # A consumer reading the link as bosh-dns-adapter does: its alias target is the link's address, the
    # port it dials the link's `port`.
    consumer = tmp_path / "consumer"
    (consumer / "templates").mkdir(parents=True)
    (consumer / "spec").write_text(yaml.safe_dump({
        "name": "sd-consumer", "templates": {"out.json.erb": "out.json"}, "packages": [],
        "consumes": [{"name": "service-discovery-controller", "type": "service-discovery-controller"}], "properties": {},
    }))
    (consumer / "templates" / "out.json.erb").write_text(
        "<%= JSON.dump({'alias' => link('service-discovery-controller').address,"
        " 'port' => link('service-discovery-controller').p('port').to_s}) %>\n")
    out = render_job(consumer, {}, links={"service-discovery-controller": link}, out_dir=tmp_path / "consumer-out")
    assert json.loads(out["out.json"].read_text()) == {"alias": "q-s0.istio-control.default.cf.bosh", "port": "9054"}


@pytest.mark.parametrize(("overrides", "extra", "message"), [
    ({"client_ca_cert": ""}, {}, "service_discovery.client_ca_cert: is required when service_discovery.enabled is true"),
    ({"server_key": None}, {}, "service_discovery.server_key: is required"),
    ({"listen_address": "0.0.0.0:9054"}, {}, r"port: 8054 must be the port of service_discovery.listen_address \(0.0.0.0:9054\)"),
    ({"listen_address": "8054"}, {}, 'service_discovery.listen_address: "8054" must be host:port'),
    ({"listen_address": "0.0.0.0:9003"}, {"port": 9003},
     "service_discovery.listen_address: 0.0.0.0:9003 uses the port of registrar.listen_address"),
])
def test_invalid_settings_fail_with_the_property_name(pki, tmp_path, overrides, extra, message) -> None:
    sd = {k: v for k, v in _sd(pki, **overrides).items() if v is not None}
    registrar = {"enabled": True, "server_cert": pki.server.cert, "server_key": pki.server.key, "client_ca_cert": pki.ca}
    with pytest.raises(RenderError, match=message):
        render("copilot", copilot_properties(pki, service_discovery=sd, registrar=registrar, **extra), tmp_path)
