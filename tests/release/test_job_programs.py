"""The rendered configs are accepted by the programs that read them: Copilot's config loader,
`envoy --mode validate`, and a whole tier started from rendered jobs only (BBS double -> Copilot ->
istiod -> mutual TLS -> Envoy + router-sds) that routes an app over HTTP and over HTTPS (the Gateway's
certificate, which istiod has Envoy fetch from router-sds) and drains."""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import requests
import yaml
from release_helpers import copilot_link, copilot_properties, pilot_link, render
from test_job_templates import cases

from copilot.config import load as load_copilot_config
from devtools import peers
from devtools.apps import AppInstance
from devtools.certs import make_ca
from devtools.ports import free_port, free_ports, wait_for_port
from devtools.processes import ManagedProcess
from devtools.tier import wait_until

SRC = peers.REPO / "src"


def install(rendered: dict[str, Path], job: str, out: Path) -> None:
    """Make the rendered files refer to where they are instead of /var/vcap/jobs/<job>."""
    for path in rendered.values():
        path.write_text(path.read_text().replace(f"/var/vcap/jobs/{job}", str(out)))


def bpm_process(rendered: dict[str, Path], name: str) -> dict:
    return next(p for p in yaml.safe_load(rendered["config/bpm.yml"].read_text())["processes"] if p["name"] == name)


@pytest.mark.parametrize("case", ["defaults", "custom"])
def test_copilot_loads_the_rendered_config(case, pki, tmp_path):
    properties, _ = cases(pki)["copilot"][case]
    rendered = render("copilot", properties, tmp_path)
    install(rendered, "copilot", tmp_path)
    config = load_copilot_config(rendered["config/copilot.yml"])
    assert config.bbs is not None and config.bbs.ca_cert == tmp_path / "config/certs/bbs/ca.crt"
    assert (config.mcp_tls is not None) == (case == "custom") and (config.cc is not None) == (case == "custom")
    check = subprocess.run([sys.executable, "-m", "copilot.main", "--config", str(rendered["config/copilot.yml"]), "--check"],
                           capture_output=True, text=True, env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("case", ["defaults", "custom"])
def test_envoy_validates_the_rendered_bootstrap(case, pki, tmp_path):
    properties, links = cases(pki)["istio-router"][case]
    rendered = render("istio-router", properties, tmp_path, links=links)
    install(rendered, "istio-router", tmp_path)  # Envoy loads the files the bootstrap names (istiod's TLS)
    result = subprocess.run([str(peers.envoy()), "--mode", "validate", "-c", str(rendered["config/envoy.json"])],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "configuration" in result.stdout and "OK" in result.stdout


@pytest.mark.parametrize("case", ["defaults", "custom"])
def test_router_sds_accepts_the_rendered_config(case, pki, tmp_path):
    properties, links = cases(pki)["istio-router"][case]
    rendered = render("istio-router", properties, tmp_path, links=links)
    check = subprocess.run([sys.executable, "-m", "router_sds", "--config", str(rendered["config/sds.yml"]), "--check"],
                           capture_output=True, text=True, env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("case", ["defaults", "custom"])
def test_route_registrar_accepts_the_rendered_config(case, pki, tmp_path):
    properties, links = cases(pki)["istio-route-registrar"][case]
    rendered = render("istio-route-registrar", properties, tmp_path, links=links, spec={"index": 3})
    install(rendered, "istio-route-registrar", tmp_path)
    check = subprocess.run([sys.executable, "-m", "route_registrar", "--config", str(rendered["config/registrar.json"]),
                            "--check"], capture_output=True, text=True, env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert check.returncode == 0, check.stderr
    config = json.loads(rendered["config/registrar.json"].read_text())
    if case == "defaults":  # Copilot's address and registrar port come from the copilot link; the IP from spec.ip
        copilot = config["copilot"]
        assert (copilot["addresses"], copilot["port"], config["address"]) == (["10.0.16.20"], 9003, "10.0.16.10")
        assert "api.sys.example.com -> 10.0.16.10 port 9022 every 10s" in check.stdout
    else:
        assert (config["copilot"]["addresses"], config["copilot"]["port"]) == (["10.0.1.1", "10.0.2.1"], 9443)
        assert config["routes"][0]["registration_interval_seconds"] == 90
        assert config["routes"][0]["health_check"]["timeout_seconds"] == 0.5
        assert "3-login.sys.example.com/oauth -> 10.0.9.9 tls_port 8443 (uaa.service.cf.internal) every 90s" in check.stdout


def test_wait_for_copilot_hook_gives_up_after_its_timeout(tmp_path):
    port = free_port()
    rendered = render("pilot-discovery", {"copilot_wait_seconds": 1}, tmp_path,
                      links={"copilot": copilot_link({"mcp": {"listen_address": f"127.0.0.1:{port}"}})})
    install(rendered, "pilot-discovery", tmp_path)
    result = subprocess.run([str(rendered["bin/wait-for-copilot"])], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert f"not reachable at 127.0.0.1:{port} after 1s" in result.stdout


class RenderedTier:
    """Copilot, istiod and the router, each started from its rendered job like bpm would."""

    def __init__(self, workdir: Path, pki) -> None:
        self.workdir = workdir
        self.processes: list[ManagedProcess] = []
        self.pki = pki

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> ManagedProcess:
        process = ManagedProcess(name, argv, self.workdir / f"{name}.log", env).start()
        self.processes.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.log_tail(30)}" for p in self.processes)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def test_a_tier_started_from_rendered_jobs_routes_serves_sds_and_drains(pki, tmp_path):
    from bbs_double.server import BBSDouble

    pki_dir = tmp_path / "pki"
    pki_dir.mkdir()
    (pki_dir / "ca.crt").write_text(pki.ca)
    (pki_dir / "server.crt").write_text(pki.server.cert)
    (pki_dir / "server.key").write_text(pki.server.key)
    bbs = BBSDouble(ca_cert=pki_dir / "ca.crt", server_cert=pki_dir / "server.crt", server_key=pki_dir / "server.key")
    bbs.start()
    app = AppInstance("rendered-i0")
    tier = RenderedTier(tmp_path, pki)
    short = Path(tempfile.mkdtemp(prefix="sds", dir="/tmp"))  # unix socket paths must stay short
    try:
        bbs.desire_lrp("rendered-pg", http_routes=[{"hostnames": ["app.example.com"], "port": 8080}])
        bbs.start_instance("rendered-pg", 0, host_port=app.port, instance_guid="rendered-i0")
        mcp_port, health_port, http_port, https_port = free_ports(["mcp", "health", "http", "https"]).values()

        # Copilot
        copilot_props = copilot_properties(pki, bbs={"url": bbs.url, "max_backoff_seconds": 1},
                                           mcp={"listen_address": f"127.0.0.1:{mcp_port}"},
                                           health={"listen_address": f"127.0.0.1:{health_port}"},
                                           # one HTTPS certificate, named here and held (PEM) by the router
                                           gateway={"http_port": http_port, "https_port": https_port,
                                                    "certificates": [{"name": "apps", "hosts": ["*.example.com"]}]},
                                           # the app listens on loopback here, which routes reach only when allowed
                                           backends={"allowed_internal_networks": ["127.0.0.0/8"]})
        out = tmp_path / "copilot"
        rendered = render("copilot", copilot_props, out)
        install(rendered, "copilot", out)
        install(rendered, "istio-router", tmp_path / "istio-router")  # where it names the router's certificates
        process = bpm_process(rendered, "copilot")
        tier.start("copilot", [sys.executable, "-m", "copilot.main", *process["args"]], {"PYTHONPATH": str(SRC)})
        assert wait_for_port(mcp_port, timeout=30), tier.logs()

        # istiod, fed by Copilot through the copilot link, serving the router over mutual TLS
        ports = free_ports(["grpc", "secure", "http", "monitoring", "ctrlz"])
        grpc_port, secure_port, pilot_http = ports["grpc"], ports["secure"], ports["http"]
        xds_ca = make_ca(tmp_path / "xds", "xds-ca")
        istiod_cert = xds_ca.issue("istiod", tmp_path / "xds", dns_names=["istiod.service.cf.internal"], client=False)
        router_cert = xds_ca.issue("router", tmp_path / "xds", dns_names=["istio-router"], server=False)
        pilot_props = {"grpc_address": "127.0.0.1", "grpc_port": grpc_port, "http_port": pilot_http,
                       "secure_grpc_address": "127.0.0.1", "secure_grpc_port": secure_port,
                       "tls": {"cert": istiod_cert.cert_path.read_text(), "key": istiod_cert.key_path.read_text(),
                               "ca_cert": xds_ca.cert_path.read_text()},
                       "monitoring_port": ports["monitoring"], "ctrlz_port": ports["ctrlz"], "debounce_after": "10ms"}
        out = tmp_path / "pilot-discovery"
        rendered = render("pilot-discovery", pilot_props, out, links={"copilot": copilot_link(copilot_props)})
        install(rendered, "pilot-discovery", out)
        process = bpm_process(rendered, "pilot-discovery")
        hook = subprocess.run([process["hooks"]["pre_start"]], capture_output=True, text=True, timeout=30)
        assert "Copilot accepts connections" in hook.stdout
        istiod = tier.start("istiod", [str(peers.pilot_discovery()), *process["args"]], process["env"])
        assert wait_for_port(pilot_http, timeout=30), tier.logs()
        assert wait_for_port(grpc_port, timeout=60), f"istiod never synced its config source:\n{tier.logs()}"
        assert wait_for_port(secure_port, timeout=30), tier.logs()
        assert istiod.running

        # the router: Envoy + router-sds, which holds the certificate Copilot's Gateway names
        admin_port, lb_port = free_port(), free_port()
        router_props = {
            "admin_port": admin_port, "health": {"port": lb_port}, "drain": {"lb_deregister_seconds": 0, "seconds": 1},
            "pilot_tls": {"ca_cert": xds_ca.cert_path.read_text(), "client_cert": router_cert.cert_path.read_text(),
                          "client_key": router_cert.key_path.read_text()},
            "sds": {"listen_address": f"unix://{short}/sds.sock",
                    "certificates": [{"name": "apps", "cert_chain": pki.server.cert, "private_key": pki.server.key}]},
        }
        out = tmp_path / "istio-router"
        links = {"pilot": pilot_link(pilot_props, addresses=("127.0.0.1",)), "copilot": copilot_link(copilot_props)}
        rendered = render("istio-router", router_props, out, spec={"ip": "127.0.0.2"}, links=links)
        install(rendered, "istio-router", out)
        sds = bpm_process(rendered, "sds")
        tier.start("router-sds", [sys.executable, "-m", "router_sds", *sds["args"]], {"PYTHONPATH": str(SRC)})
        envoy = bpm_process(rendered, "envoy")
        tier.start("envoy", [str(peers.envoy()), *envoy["args"]])
        assert wait_for_port(admin_port, timeout=30), tier.logs()

        assert wait_for_port(lb_port, timeout=30), tier.logs()
        assert requests.get(f"http://127.0.0.1:{lb_port}/health", timeout=5).status_code == 200
        assert requests.get(f"http://127.0.0.1:{lb_port}/other", timeout=5).status_code == 404

        def routed() -> bool:
            response = requests.get(f"http://127.0.0.1:{http_port}/", headers={"Host": "app.example.com"}, timeout=5)
            return response.status_code == 200 and response.text.strip() == "rendered-i0"

        wait_until(routed, timeout=30, message=f"the app through the rendered router\n{tier.logs()}")

        # HTTPS: istiod's listener for the Gateway's server warms once router-sds has served its certificate
        wait_until(lambda: _https_get(https_port, "app.example.com", pki_dir / "ca.crt")[1] == 200, timeout=30,
                   message=f"the app over HTTPS through the rendered router\n{tier.logs()}")
        served_cert, status, body = _https_get(https_port, "app.example.com", pki_dir / "ca.crt")
        assert served_cert == ssl.PEM_cert_to_DER_cert(pki.server.cert)  # the PEM the router job was given
        assert (status, body.strip()) == (200, b"rendered-i0")

        drain = subprocess.run([str(rendered["bin/drain"])], capture_output=True, text=True, timeout=30,
                               env={"PATH": "/usr/bin:/bin", "DRAIN_LOG": str(tmp_path / "drain.log")})
        assert drain.returncode == 0 and drain.stdout == "0\n"
        assert "listeners draining" in (tmp_path / "drain.log").read_text()
        # The health check now fails (503, or refused once the drained listener closed) and Envoy says so.
        assert requests.get(f"http://127.0.0.1:{admin_port}/server_info", timeout=5).json()["state"] == "DRAINING"
        with contextlib.suppress(requests.ConnectionError):
            assert requests.get(f"http://127.0.0.1:{lb_port}/health", timeout=5).status_code == 503
    finally:
        tier.stop()
        app.stop()
        bbs.stop()
        shutil.rmtree(short, ignore_errors=True)


def _https_get(port: int, host: str, ca: Path) -> tuple[bytes, int, bytes]:
    """(the certificate the router presented, status, body) of GET / to `host` with SNI `host`, verified
    against `ca` for that name."""
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        response = http.client.HTTPResponse(tls)
        response.begin()
        return tls.getpeercert(binary_form=True) or b"", response.status, response.read()
