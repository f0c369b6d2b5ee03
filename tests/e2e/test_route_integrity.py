"""Route integrity as cf-deployment v58 cells demand it: every instance is reachable only on its cell's TLS
proxy port, the cell's Envoy accepts only a client certificate signed by service_cf_internal_ca with a SAN
it lists (the router's gorouter_backend_tls), and the router accepts an instance only with a certificate
naming a guid of the process it meant to reach. Negative controls: a cell that does not trust the
router's CA, a router without its client certificate, and a stale address now held by another app: each
answers 503 with X-Cf-Routererror, never another app's response; a stale address held by another
instance of the same app is refused too (each instance is checked against its own guid)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from devtools.tier import Tier, start_tier_with_ops, wait_until


def _route(tier: Tier, unique: str, name: str) -> tuple[str, str]:
    host, process = f"{unique}-{name}.example.com", f"{unique}-{name}"
    tier.bbs.desire_lrp(process, http_routes=[{"hostnames": [host], "port": 8080}])
    return host, process


def test_instances_are_reached_through_the_cell_proxy_with_the_router_certificate(tier: Tier, apps, unique) -> None:
    host, process = _route(tier, unique, "a")
    instance = tier.start_instance(process, 0, f"{unique}-a0")
    apps.append(instance)
    assert instance.host_port == 0  # v58: the app port itself is not mapped, only its TLS proxy
    wait_until(lambda: tier.get(host).text.strip() == f"{unique}-a0", message="the instance through its cell proxy")
    response = tier.get(host, "/headers")
    assert response.json()["x-cf-instanceid"] == f"{unique}-a0"


def test_a_stale_address_held_by_another_app_gets_503(tier: Tier, apps, unique) -> None:
    # App A's instance owns an address; BBS still reports app B's (gone) instance at that same address.
    a_host, a_process = _route(tier, unique, "a")
    b_host, b_process = _route(tier, unique, "b")
    a0 = tier.start_instance(a_process, 0, f"{unique}-a0")
    apps.append(a0)
    tier.bbs.start_instance(b_process, 0, **{**a0.net_info(), "instance_guid": f"{unique}-b0"})
    wait_until(lambda: tier.get(a_host).text.strip() == f"{unique}-a0", message="app A")
    wait_until(lambda: tier.get(b_host).status_code == 503, message="503 for the stale address")
    for _ in range(20):
        response = tier.get(b_host)
        assert response.status_code == 503
        assert response.headers["X-Cf-Routererror"].startswith("endpoint_failure")
        assert f"{unique}-a0" not in response.text


def test_each_instance_is_checked_against_its_own_guid(tier: Tier, apps, unique) -> None:
    # BBS reports two instances of one process, but instance 1's address is held by instance 0 (a stale
    # address inside the same app): the router refuses it as gorouter does, and retries on instance 0.
    # (Instance 0's proxy also listens on its container address, a second address presenting its identity.)
    host, process = _route(tier, unique, "a")
    a0 = tier.start_instance(process, 0, f"{unique}-a0")
    apps.append(a0)
    stale = {"address": a0.container_ip, "host_tls_proxy_port": a0.container_tls_proxy_port}
    tier.bbs.start_instance(process, 1, **{**a0.net_info(), **stale, "instance_guid": f"{unique}-a1"})
    wait_until(lambda: tier.get(host).status_code == 200, message="the route")
    bodies = {tier.get(host).text.strip() for _ in range(30)}
    assert bodies == {f"{unique}-a0"}

    [cluster] = tier.envoy.route_clusters(host)
    service = cluster.rsplit("|", 1)[1]  # the process's service host (statistics use istiod's alt_stat_name)

    def san_failures() -> int:
        stats = requests.get(f"http://127.0.0.1:{tier.ports['router_admin_port']}/stats?filter=ssl.fail_verify_san", timeout=5)
        return sum(int(line.rsplit(":", 1)[1]) for line in stats.text.splitlines() if service in line)

    assert san_failures() > 0  # the handshakes with instance 1's endpoint failed on its name


def test_a_cell_that_does_not_trust_the_routers_ca_refuses_it(tier: Tier, apps, unique, tmp_path: Path) -> None:
    from devtools.cell import CellPKI
    from devtools.certs import make_ca

    pki = tier.extra["cell_pki"]
    other_ca = make_ca(tmp_path, "another-internal-ca")
    strict = tier.new_cell(
        f"{unique}-other-ca",
        pki=CellPKI(pki.identity_ca, pki.root_ca_cert, (other_ca.cert_path,)),
    )
    host, process = _route(tier, unique, "a")
    apps.append(tier.start_instance(process, 0, f"{unique}-a0", cell=strict))
    good_host, good_process = _route(tier, unique, "good")
    apps.append(tier.start_instance(good_process, 0, f"{unique}-good0"))
    wait_until(lambda: tier.get(good_host).status_code == 200, message="an instance on a cell that trusts the router")
    wait_until(lambda: tier.get(host).status_code == 503, message="the refused instance to answer 503")
    response = tier.get(host)
    assert response.headers["X-Cf-Routererror"].startswith("endpoint_failure")
    assert f"{unique}-a0" not in response.text


def test_a_cell_refuses_a_certificate_without_a_san_it_lists(tier: Tier, apps, unique) -> None:
    # The router's certificate names gorouter.service.cf.internal; this cell allows only ssh-proxy.
    strict = tier.new_cell(f"{unique}-ssh-only", verify_subject_alt_names=["ssh-proxy.service.cf.internal"])
    host, process = _route(tier, unique, "a")
    apps.append(tier.start_instance(process, 0, f"{unique}-a0", cell=strict))
    wait_until(lambda: tier.get(host).status_code in (502, 503), message="the refused instance to fail")
    response = tier.get(host)
    assert "X-Cf-Routererror" in response.headers
    assert f"{unique}-a0" not in response.text


_NO_CLIENT_CERTIFICATE = """\
# The router presents no client certificate to the cells (negative control for v58 cells).
- type: remove
  path: /instance_groups/name=local/jobs/name=copilot/properties/gateway/backend_client_certificate
"""


@pytest.fixture(scope="module")
def tier_without_client_certificate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tier]:
    tier = start_tier_with_ops(tmp_path_factory.mktemp("tier-no-client-cert"), "no-client-certificate", _NO_CLIENT_CERTIFICATE)
    yield tier
    tier.stop()


def test_a_router_without_its_client_certificate_is_refused_by_v58_cells(
    tier_without_client_certificate: Tier, apps, unique
) -> None:
    tier = tier_without_client_certificate
    host, process = _route(tier, unique, "a")
    apps.append(tier.start_instance(process, 0, f"{unique}-a0"))
    # The same instance on a cell with require_and_verify_client_certificates off answers: the route works.
    lax = tier.new_cell(f"{unique}-lax", require_and_verify_client_certificates=False)
    lax_host, lax_process = _route(tier, unique, "lax")
    apps.append(tier.start_instance(lax_process, 0, f"{unique}-lax0", cell=lax))
    wait_until(lambda: tier.get(lax_host).text.strip() == f"{unique}-lax0", message="the instance on a lax cell")
    wait_until(lambda: tier.get(host).status_code == 503, message="the v58 cell to refuse the router")
    response = tier.get(host)
    assert response.headers["X-Cf-Routererror"].startswith("endpoint_failure")
