"""Container-to-container service discovery (`*.apps.internal`) through the local tier's rendered copilot
job: a client that makes bosh-dns-adapter's request exactly (GET /v1/registration/<the DNS question's
name, trailing dot> to the service-discovery-controller alias's address and the link's port, over
mutual TLS with cf_app_sd_client_tls, verifying the server name
service-discovery-controller.service.cf.internal; it reads hosts[].ip_address) resolves one app's name
for another, gets the documented answers for an unknown name and before Copilot's first BBS listing,
and the answers follow Diego as instances come and go."""

from __future__ import annotations

import http.client
import json
import socket
import ssl

import requests

from devtools.tier import Tier, wait_until
from local_tier import render

SERVER_NAME = "service-discovery-controller.service.cf.internal"
UNKNOWN = b'{"hosts":[],"env":"","service":""}'


class BoshDnsAdapter:
    """What bosh-dns-adapter on a cell sends Copilot for a DNS question (A record) about `name`."""

    def __init__(self, tier: Tier) -> None:
        variables = render.variables(tier.layout)
        pki = tier.layout.pki
        pki.mkdir(parents=True, exist_ok=True)
        self._cert, self._key = pki / "cf_app_sd_client_tls.crt", pki / "cf_app_sd_client_tls.key"
        self._cert.write_text(variables["cf_app_sd_client_tls"]["certificate"])
        self._key.write_text(variables["cf_app_sd_client_tls"]["private_key"])
        self._key.chmod(0o600)
        self._server_ca = variables["cf_app_sd_client_tls"]["ca"]  # v58: dnshttps.server.ca
        # The alias service-discovery-controller.service.cf.internal -> the link's address (loopback here).
        self.address = ("127.0.0.1", tier.ports["copilot_service_discovery_port"])

    def ask(self, name: str) -> tuple[int, bytes]:
        """(status, body) of GET /v1/registration/<name> as the adapter's Go client writes it."""
        context = ssl.create_default_context(cadata=self._server_ca)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self._cert, self._key)
        with socket.create_connection(self.address, timeout=10) as sock, \
                context.wrap_socket(sock, server_hostname=SERVER_NAME) as tls:
            tls.sendall(
                f"GET /v1/registration/{name} HTTP/1.1\r\nHost: {SERVER_NAME}:{self.address[1]}\r\n"
                "User-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\n\r\n".encode()
            )
            response = http.client.HTTPResponse(tls)  # type: ignore[arg-type]
            response.begin()
            return response.status, response.read()

    def resolve(self, name: str) -> list[str] | None:
        """The A records the adapter would answer bosh-dns with (None: it would answer SERVFAIL)."""
        status, content = self.ask(name)
        if status != 200:
            return None
        hosts = json.loads(content)["hosts"]
        return sorted(next(v for k, v in h.items() if k.lower() == "ip_address") for h in hosts)


def test_an_app_resolves_another_apps_internal_name_and_reaches_it(tier: Tier, apps, unique) -> None:
    adapter = BoshDnsAdapter(tier)
    backend, frontend = f"{unique}-backend.apps.internal", f"{unique}-frontend.apps.internal"
    tier.bbs.desire_lrp(f"{unique}-backend", internal_routes=[{"hostname": backend}], instances=2)
    tier.bbs.desire_lrp(f"{unique}-frontend", internal_routes=[{"hostname": frontend}],
                        http_routes=[{"hostnames": [f"{unique}.example.com"], "port": 8080}])
    instances = [tier.start_instance(f"{unique}-backend", i, f"{unique}-b{i}") for i in range(2)]
    apps.extend(instances)
    apps.append(tier.start_instance(f"{unique}-frontend", 0, f"{unique}-f0"))
    ips = sorted(i.container_ip for i in instances)

    # The frontend's container asks its resolver for the backend; bosh-dns hands the adapter the FQDN.
    wait_until(lambda: adapter.resolve(f"{backend}.") == ips, message="the backend's container addresses")
    assert adapter.resolve(f"1.{backend}.") == [instances[1].container_ip]
    assert adapter.resolve(f"{backend.upper()}") == ips  # case-insensitive, trailing dot optional
    # ... and reaches a backend instance on its container address, not through the router.
    answers = {requests.get(f"http://{ip}:8080/", timeout=5).text.strip() for ip in adapter.resolve(f"{backend}.")}
    assert answers == {f"{unique}-b0", f"{unique}-b1"}

    status, content = adapter.ask(f"nobody-{unique}.apps.internal.")
    assert (status, content) == (200, UNKNOWN)  # NOERROR without answers, never NXDOMAIN or SERVFAIL

    # Diego stops an instance: its address goes from the next answer.
    tier.bbs.remove_instance(f"{unique}-backend", 1)
    wait_until(lambda: adapter.resolve(f"{backend}.") == [instances[0].container_ip], timeout=5,
               message="the stopped instance's address to go")
    assert adapter.ask(f"1.{backend}.") == (200, UNKNOWN)
    tier.bbs.remove_desired_lrp(f"{unique}-backend")
    wait_until(lambda: adapter.ask(f"{backend}.") == (200, UNKNOWN), timeout=5, message="the stopped app's name to go")


def test_not_warm_until_copilot_has_listed_the_bbs(tier: Tier, apps, unique) -> None:
    adapter = BoshDnsAdapter(tier)
    name = f"{unique}.apps.internal"
    tier.bbs.desire_lrp(f"{unique}-pg", internal_routes=[{"hostname": name}])
    instance = tier.start_instance(f"{unique}-pg", 0, f"{unique}-i0")
    apps.append(instance)
    wait_until(lambda: adapter.resolve(f"{name}.") == [instance.container_ip], message="the name before the restart")

    listing = "/v1/desired_lrp_routing_infos/list"
    tier.bbs.fail_requests(listing, count=1_000_000)
    try:
        tier.restart_copilot()  # a new Copilot process: it cannot list the BBS
        wait_until(lambda: adapter.ask(f"{name}.") == (500, b"address table is not warm\n"), timeout=30,
                   message="the restarted Copilot's not-warm answer")
        failed = tier.bbs.requests_received(listing)
        wait_until(lambda: tier.bbs.requests_received(listing) > failed, timeout=30, message="another failed listing")
        for asked in (f"{name}.", f"nobody-{unique}.apps.internal."):
            assert adapter.ask(asked) == (500, b"address table is not warm\n")  # the adapter then answers SERVFAIL
    finally:
        tier.bbs.clear_failures()
    wait_until(lambda: adapter.resolve(f"{name}.") == [instance.container_ip], timeout=30,
               message="the name once Copilot has listed the BBS")
    wait_until(lambda: tier.copilot_health()["serving_istiod"], timeout=30, message="Copilot serving istiod again")
