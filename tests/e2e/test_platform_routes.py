"""Platform routes (api, uaa, ...) registered the way our route_registrar job does, instead of NATS:
reachable through the router while renewed, gone when deregistered or no longer renewed."""

from __future__ import annotations

import requests

from devtools.apps import AppInstance
from devtools.tier import Tier, wait_until


def test_registered_platform_route_serves_then_expires(tier: Tier, apps, unique) -> None:
    vm = AppInstance(f"{unique}-api-vm")
    apps.append(vm)
    host = f"api.{unique}.system.example.com"
    registration = {"host": host, "address": "127.0.0.1", "port": vm.port, "source": "api/0", "ttl_seconds": 2}
    assert tier.register([registration]).status_code == 200
    wait_until(lambda: tier.get(host).text.strip() == f"{unique}-api-vm", message="the platform route")
    # A platform component is no app instance: no X-CF-ApplicationID, X-CF-InstanceID / Index, not even
    # empty, and a client's are dropped.
    sent = {"X-CF-ApplicationID": "spoofed", "X-CF-InstanceID": "spoofed", "X-CF-InstanceIndex": "7"}
    seen = requests.get(f"{tier.router_url}/headers", headers={"Host": host, **sent}, timeout=5).json()
    assert {k: v for k, v in seen.items() if k.startswith(("x-cf-instance", "x-cf-application"))} == {}
    # Not renewed: it expires.
    wait_until(lambda: tier.get(host).status_code == 404, timeout=15, message="the registration to expire")


def test_deregistration_and_validation(tier: Tier, apps, unique) -> None:
    vm = AppInstance(f"{unique}-uaa-vm")
    apps.append(vm)
    host = f"uaa.{unique}.system.example.com"
    registration = {"host": host, "path": "/oauth", "address": "127.0.0.1", "port": vm.port, "ttl_seconds": 120}
    assert tier.register([registration]).status_code == 200
    wait_until(lambda: tier.get(host, "/oauth/token").status_code == 200, message="the platform route with a path")
    assert tier.get(host, "/other").status_code == 404

    bad = tier.register([registration, {"host": "bad_host!", "address": "127.0.0.1", "port": 1}])
    assert bad.status_code == 400 and "registrations[1].host" in bad.json()["error"]
    assert tier.get(host, "/oauth").status_code == 200  # a rejected request changed nothing

    assert tier.register([registration], delete=True).status_code == 200
    wait_until(lambda: tier.get(host, "/oauth").status_code == 404, message="the route to go on deregistration")


def test_tls_platform_backend_is_verified_by_name(tier: Tier, apps, unique, tmp_path) -> None:
    """A platform route with a tls_port is reached over TLS, and only if the backend's certificate names
    server_cert_domain_san (signed by the CA the router trusts for platform components)."""
    ca = tier.extra["upstream_ca"]
    good = ca.issue(f"{unique}-api", tmp_path, dns_names=[f"api.{unique}.service.cf.internal"], client=False)
    vm = AppInstance(f"{unique}-tls-vm", tls=(good.cert_path, good.key_path))
    apps.append(vm)
    host = f"api.{unique}.system.example.com"
    registration = {"host": host, "address": "127.0.0.1", "tls_port": vm.port, "ttl_seconds": 120,
                    "server_cert_domain_san": f"api.{unique}.service.cf.internal", "source": "api/0"}
    assert tier.register([registration]).status_code == 200
    wait_until(lambda: tier.get(host).text.strip() == f"{unique}-tls-vm", message="the TLS platform route")

    # The same backend registered under a name its certificate does not carry is never reached.
    other = f"uaa.{unique}.system.example.com"
    wrong = {**registration, "host": other, "server_cert_domain_san": f"uaa.{unique}.service.cf.internal"}
    assert tier.register([wrong]).status_code == 200
    wait_until(lambda: tier.get(other).status_code == 503, message="a certificate for another name to be refused")
    for _ in range(5):
        response = tier.get(other)
        assert response.status_code == 503 and f"{unique}-tls-vm" not in response.text
