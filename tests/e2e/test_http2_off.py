"""HTTP/2 off (ops-files/istio-routing-disable-http2.yml: copilot gateway.enable_http2 false), as gorouter
with router.enable_http2: false, through real istiod and Envoy: HTTPS offers clients HTTP/1.1 only (ALPN
without h2, each certificate still chosen by SNI), HTTP takes no h2c, and an http2 route's app is reached
over HTTP/1.1 (an HTTP/1.1 app answers it; an h2c-only app cannot)."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator

import pytest

from devtools.tier import Tier, start_tier_with_ops, wait_until

_HTTP2_OFF = """\
# The copilot property istio-routing-disable-http2.yml sets, on the local tier's group.
- type: replace
  path: /instance_groups/name=local/jobs/name=copilot/properties/gateway/enable_http2?
  value: false
"""


@pytest.fixture(scope="module")
def http1_tier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tier]:
    tier = start_tier_with_ops(tmp_path_factory.mktemp("tier-http2-off"), "http2-off", _HTTP2_OFF)
    try:
        yield tier
        assert tier.envoy.rejected_updates() == {}  # istiod's config with the filter's patches was accepted
    finally:
        tier.stop()


def _curl(tier: Tier, *args: str) -> subprocess.CompletedProcess:
    """curl through the router; prints the HTTP version it spoke and the status."""
    return subprocess.run(["curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                           *args], capture_output=True, text=True, timeout=15)


def _routed_app(tier: Tier, apps, unique: str) -> str:
    """An app with one instance routed at `<unique>.example.com`, once the router serves it; its host."""
    host = f"{unique}.example.com"
    tier.bbs.desire_lrp(unique, http_routes=[{"hostnames": [host], "port": 8080}])
    apps.append(tier.start_instance(unique, 0, f"{unique}-i0"))
    wait_until(lambda: tier.get(host).status_code == 200, message="the route")
    return host


def _served(tier: Tier, sni: str | None) -> tuple[str | None, str]:
    with tier.tls_connect(sni, alpn=["h2", "http/1.1"]) as sock:
        return sock.selected_alpn_protocol(), dict(item[0] for item in sock.getpeercert()["subject"])["commonName"]


def test_https_offers_http1_only_and_keeps_each_certificate(http1_tier: Tier, apps, unique) -> None:
    tier = http1_tier
    host = _routed_app(tier, apps, unique)
    assert _served(tier, host) == ("http/1.1", "wildcard-example-com")
    assert _served(tier, "app.example.com") == ("http/1.1", "app-example-com")  # exact name before the wildcard
    assert _served(tier, None) == ("http/1.1", "wildcard-example-com")  # the fallback chain too
    # The replaced TLS contexts keep the Gateway's minimum version (TLS 1.2).
    with pytest.raises(ssl.SSLError, match="(?i)protocol.version"):
        tier.tls_connect("app.example.com", version=ssl.TLSVersion.TLSv1_1).close()
    https = _curl(tier, "--http2", "--cacert", str(tier.router_ca), "--resolve", f"{host}:{tier.https_port}:127.0.0.1",
                  f"https://{host}:{tier.https_port}/")
    assert https.stdout == "1.1 200", https.stderr


def test_http_takes_no_h2c(http1_tier: Tier, apps, unique) -> None:
    tier = http1_tier
    host = _routed_app(tier, apps, unique)
    upgrade = _curl(tier, "--http2", "-H", f"Host: {host}", f"http://127.0.0.1:{tier.http_port}/")
    assert upgrade.stdout == "1.1 200", upgrade.stderr  # the h2c upgrade offer is not taken
    prior = _curl(tier, "--http2-prior-knowledge", "-H", f"Host: {host}", f"http://127.0.0.1:{tier.http_port}/")
    assert not prior.stdout.startswith("2 "), (prior.stdout, prior.stderr)  # no HTTP/2 without asking either


def test_http2_routes_reach_their_apps_over_http1(http1_tier: Tier, apps, unique) -> None:
    tier = http1_tier
    # With HTTP/2 on, the router speaks HTTP/2 to an http2 route's app (tests/e2e/test_router_parity.py):
    # an HTTP/1.1 app then cannot answer, an h2c app can. Off, the reverse.
    h1_app, h2c_app = f"{unique}-h1.example.com", f"{unique}-h2c.example.com"
    tier.bbs.desire_lrp(f"{unique}-h1", http_routes=[{"hostnames": [h1_app], "port": 8080, "protocol": "http2"}])
    apps.append(tier.start_instance(f"{unique}-h1", 0, f"{unique}-h1"))
    wait_until(lambda: tier.get(h1_app).status_code == 200, message="the http2 route of an HTTP/1.1 app")
    assert tier.get(h1_app).text.strip() == f"{unique}-h1"
    tier.bbs.desire_lrp(f"{unique}-h2c", http_routes=[{"hostnames": [h2c_app], "port": 8080, "protocol": "http2"}])
    apps.append(tier.start_instance(f"{unique}-h2c", 0, f"{unique}-h2c", app="h2c"))
    wait_until(lambda: tier.get(h2c_app).status_code != 404, message="the http2 route of an h2c app")
    failed = tier.get(h2c_app)
    assert failed.status_code in (502, 503) and f"{unique}-h2c" not in failed.text, (failed.status_code, failed.text)
