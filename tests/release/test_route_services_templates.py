"""Route services in the jobs: the copilot job's gateway.route_services (in its config and its link), and
the istio-router job's route-service proxy (its config, process and monit entry) run only when the
copilot link turns route services on, on the link's ports; bad combinations fail at render time."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from release_helpers import JOBS, copilot_link, copilot_properties, pilot_link, render

from bosh_render import RenderError, render_job
from devtools.peers import REPO


def _router(pki, tmp_path: Path, properties: dict | None = None, copilot: dict | None = None, *, link: bool = True):
    links = {"pilot": pilot_link({"tls": {"cert": pki.server.cert}})}
    if link:
        links["copilot"] = copilot_link(copilot)
    pilot_tls = {"ca_cert": pki.ca, "client_cert": pki.client.cert, "client_key": pki.client.key}
    return render("istio-router", {"pilot_tls": pilot_tls, **(properties or {})}, tmp_path, links=links)


def _processes(rendered) -> list[str]:
    return [p["name"] for p in yaml.safe_load(rendered["config/bpm.yml"].read_text())["processes"]]


def _monit(pki, tmp_path: Path, copilot: dict | None, properties: dict | None = None) -> str:
    """The job's monit file rendered as BOSH renders it (an ERB template like the others)."""
    job = tmp_path / "job-with-monit"
    shutil.copytree(JOBS / "istio-router", job)
    shutil.copy(job / "monit", job / "templates" / "monit.erb")
    spec = yaml.safe_load((job / "spec").read_text())
    spec["templates"]["monit.erb"] = "monit"
    (job / "spec").write_text(yaml.safe_dump(spec))
    pilot_tls = {"ca_cert": pki.ca, "client_cert": pki.client.cert, "client_key": pki.client.key}
    rendered = render_job(job, {"pilot_tls": pilot_tls, **(properties or {})}, out_dir=tmp_path / "out",
                          links={"pilot": pilot_link({"tls": {"cert": pki.server.cert}}), "copilot": copilot_link(copilot)})
    return rendered["monit"].read_text()


ON = {"gateway": {"route_services": {"enabled": True}}}


def test_by_default_there_is_no_proxy(pki, tmp_path: Path) -> None:
    rendered = _router(pki, tmp_path)
    assert _processes(rendered) == ["envoy", "sds"]
    assert json.loads(rendered["config/route_services.json"].read_text()) == {}
    assert "route-services" not in _monit(pki, tmp_path, None)
    assert _processes(_router(pki, tmp_path / "no-link", link=False)) == ["envoy", "sds"]


def test_with_copilots_route_services_on_the_router_runs_the_proxy_on_the_links_ports(pki, tmp_path: Path) -> None:
    copilot = {"gateway": {"route_services": {"enabled": True, "proxy_port": 9070, "gateway_port": 9071}}}
    rendered = _router(pki, tmp_path, {
        "route_services_secret": "current", "route_services_secret_decrypt_only": "previous",
        "route_services_timeout": 30, "route_services_recommend_https": False,
        "route_services": {"ca_certs": [pki.ca], "cert_chain": pki.client.cert, "private_key": pki.client.key,
                           "max_attempts": 5, "skip_ssl_validation": True},
    }, copilot)
    [process] = [p for p in yaml.safe_load(rendered["config/bpm.yml"].read_text())["processes"] if p["name"] == "route-services"]
    assert process["executable"] == "/var/vcap/packages/router-sds/bin/route-services"
    assert process["args"] == ["--config", "/var/vcap/jobs/istio-router/config/route_services.json"]
    config = json.loads(rendered["config/route_services.json"].read_text())
    # One token for the job's Envoy (its environment, which Copilot's routes read) and the proxy, derived
    # from the secret: nothing else on the VM has it.
    [envoy] = [p for p in yaml.safe_load(rendered["config/bpm.yml"].read_text())["processes"] if p["name"] == "envoy"]
    token = config.pop("local_token")
    assert envoy["env"] == {"CF_ROUTE_SERVICES_TOKEN": token} and len(token) == 64 and "current" not in token
    certs = "/var/vcap/jobs/istio-router/config/certs/route_services"
    assert config == {
        "listen": "127.0.0.1:9070", "gateway": "127.0.0.1:9071", "secret": "current", "secret_decrypt_only": "previous",
        "timeout_seconds": 30, "recommend_https": False, "ca_certs": [pki.ca], "skip_ssl_validation": True,
        "max_attempts": 5, "client_cert": f"{certs}/client.crt", "client_key": f"{certs}/client.key",
    }
    assert rendered["config/certs/route_services/client.crt"].read_text().strip() == pki.client.cert.strip()
    monit = _monit(pki, tmp_path, copilot, {"route_services_secret": "current"})
    assert 'check process route-services' in monit and "bpm start istio-router -p route-services" in monit
    # The proxy accepts the rendered config (paths moved where the files are).
    text = rendered["config/route_services.json"].read_text().replace("/var/vcap/jobs/istio-router", str(tmp_path))
    (tmp_path / "rs.json").write_text(text)
    check = subprocess.run([sys.executable, "-m", "route_services", "--config", str(tmp_path / "rs.json"), "--check"],
                           capture_output=True, text=True, env={"PYTHONPATH": str(REPO / "src")}, timeout=60)
    assert check.returncode == 0 and "route services on" in check.stdout, check.stderr


def test_copilot_on_and_no_secret_the_proxy_refuses_as_gorouter_would(pki, tmp_path: Path) -> None:
    rendered = _router(pki, tmp_path, copilot=ON)
    assert "route-services" in _processes(rendered)
    config = json.loads(rendered["config/route_services.json"].read_text())
    assert (config["secret"], config["listen"], config["gateway"]) == ("", "127.0.0.1:7070", "127.0.0.1:7071")


@pytest.mark.parametrize(("properties", "copilot", "message"), [
    ({"route_services_secret": "s"}, None, "route_services_secret: set, but Copilot's gateway.route_services.enabled"),
    ({"route_services_secret_decrypt_only": "old"}, ON, "route_services_secret_decrypt_only: set without route_services_secret"),
    ({"route_services_secret": "s", "route_services": {"cert_chain": "C"}}, ON, "give both or neither"),
    ({"route_services_secret": "s", "route_services": {"ca_certs": ["nope"]}}, ON, r"route_services.ca_certs\[0\]"),
    ({"route_services_secret": "s", "route_services": {"max_attempts": 0}}, ON, "route_services.max_attempts"),
    ({"route_services_secret": "s", "route_services_timeout": 0}, ON, "route_services_timeout"),
])
def test_bad_combinations_fail_with_the_property_name(pki, tmp_path: Path, properties, copilot, message) -> None:
    with pytest.raises(RenderError, match=message):
        _router(pki, tmp_path, properties, copilot)


def test_copilot_renders_route_services_and_publishes_them_in_its_link(pki, tmp_path: Path) -> None:
    from copilot.config import load
    from copilot.settings import RouteServiceSettings

    def config(gateway: dict | None):
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        rendered = render("copilot", copilot_properties(pki, **({"gateway": gateway} if gateway else {})), out)
        for path in rendered.values():
            path.write_text(path.read_text().replace("/var/vcap/jobs/copilot", str(out)))
        return load(rendered["config/copilot.yml"]).gateway.route_services

    assert config(None) is None
    assert config({"route_services": {"enabled": True}}) == RouteServiceSettings(7070, 7071)
    ports = {"proxy_port": 8070, "gateway_port": 8071}
    assert config({"route_services": {"enabled": True, **ports}}) == RouteServiceSettings(8070, 8071)
    link = copilot_link({"gateway": {"route_services": {"enabled": True}}})["properties"]["gateway"]["route_services"]
    assert link == {"enabled": True, "proxy_port": 7070, "gateway_port": 7071, "internal_lookup": False}
    lookup = {"route_services": {"enabled": True, "internal_lookup": True, "internal_lookup_allowlist": ["*.apps.example.com"]}}
    assert config(lookup) == RouteServiceSettings(7070, 7071, True, ("*.apps.example.com",))


@pytest.mark.parametrize(("gateway", "expected"), [
    # The routers' own listeners: every address bound (loopback then), HTTPS only with certificates.
    ({}, {"internal_lookup": "127.0.0.1:80"}),
    ({"certificates": [{"name": "router-ssl", "hosts": ["*.example.com"]}]},
     {"internal_lookup": "127.0.0.1:80", "internal_lookup_https": "127.0.0.1:443"}),
    ({"bind": "10.0.0.5", "http_port": 8080}, {"internal_lookup": "10.0.0.5:8080"}),
    ({"bind": "::"}, {"internal_lookup": "[::1]:80"}),
])
def test_the_proxy_takes_internal_lookup_from_the_copilot_link(pki, tmp_path: Path, gateway: dict, expected: dict) -> None:
    copilot = {"gateway": {"route_services": {"enabled": True, "internal_lookup": True}, **gateway}}
    config = json.loads(_router(pki, tmp_path, {"route_services_secret": "s"}, copilot)["config/route_services.json"].read_text())
    assert {k: v for k, v in config.items() if k.startswith("internal_lookup")} == expected
    off = json.loads(_router(pki, tmp_path / "off", {"route_services_secret": "s"}, ON)["config/route_services.json"].read_text())
    assert not [k for k in off if k.startswith("internal_lookup")]
