"""The control plane is closed (issue 11): the router gets its config from istiod over mutual TLS on
istiod's secure port, and istiod refuses an xDS client that does not present a certificate its client
CA signed (no certificate, another CA's, or no TLS at all), in the TLS handshake, before any config
leaves it. The plaintext port stays on loopback (the job's default; tests/release checks the templates)."""

from __future__ import annotations

import grpc
import pytest
import requests
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from devtools.certs import make_ca
from devtools.tier import Tier
from local_tier import render

ISTIOD_NAME = "istiod.service.cf.internal"  # istio-router pilot_tls.server_name in manifests/local.yml
CLUSTERS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def _ask_for_clusters(port: int, credentials: grpc.ChannelCredentials | None) -> list:
    """One ADS request for clusters, as a router would send it; the resources istiod answers with."""
    options = [("grpc.ssl_target_name_override", ISTIOD_NAME)]
    target = f"127.0.0.1:{port}"
    channel = grpc.secure_channel(target, credentials, options) if credentials else grpc.insecure_channel(target)
    with channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        node = base_pb2.Node(id="router~127.0.0.9~probe-0.istio-system~istio-system.svc.cluster.local")
        request = discovery_pb2.DiscoveryRequest(node=node, type_url=CLUSTERS)
        for response in stub.StreamAggregatedResources(iter([request]), timeout=10):
            return list(response.resources)
    return []


def _variables(tier: Tier) -> dict:
    return render.variables(tier.layout)


def _stats(tier: Tier, *names: str) -> dict[str, int]:
    """The router Envoy's counters and gauges of these exact names (admin API, loopback)."""
    text = requests.get(f"http://127.0.0.1:{tier.ports['router_admin_port']}/stats", timeout=5).text
    values = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    return {name: int(values[name]) for name in names}


def test_istiod_serves_a_client_with_the_routers_certificate(tier: Tier):
    """The positive control for the refusals below: the same request with the router's client certificate
    (BOSH-generated, DNS SAN only, as the ops-files generate it) gets istiod's clusters."""
    variables = _variables(tier)
    client = variables["istio_router_xds_client"]
    credentials = grpc.ssl_channel_credentials(
        variables["istiod_xds_server"]["ca"].encode(), client["private_key"].encode(), client["certificate"].encode()
    )
    assert _ask_for_clusters(tier.ports["istiod_secure_grpc_port"], credentials)


@pytest.mark.parametrize("client", ["plaintext", "tls-without-certificate", "certificate-of-another-ca"])
def test_istiod_refuses_an_xds_client_without_a_certificate_its_ca_signed(client, tier: Tier, tmp_path):
    variables = _variables(tier)
    istiod_ca = variables["istiod_xds_server"]["ca"].encode()
    if client == "plaintext":
        credentials = None
    elif client == "tls-without-certificate":
        credentials = grpc.ssl_channel_credentials(istiod_ca)  # istiod's certificate verified, none presented
    else:
        other = make_ca(tmp_path, "not-the-xds-ca").issue("istio-router", tmp_path, dns_names=["istio-router"], server=False)
        credentials = grpc.ssl_channel_credentials(istiod_ca, other.key_path.read_bytes(), other.cert_path.read_bytes())
    with pytest.raises(grpc.RpcError) as refused:
        _ask_for_clusters(tier.ports["istiod_secure_grpc_port"], credentials)
    # Refused in the handshake (the connection never carries a stream), not after a stream was opened.
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value


def test_the_router_gets_its_config_over_mutual_tls_on_the_secure_port(tier: Tier):
    dump = tier.envoy.config_dump()
    clusters = next(c for c in dump["configs"] if c["@type"].endswith("ClustersConfigDump"))
    [xds] = [c["cluster"] for c in clusters["static_clusters"] if c["cluster"]["name"] == "xds-grpc"]
    [endpoint] = xds["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"]["port_value"] == tier.ports["istiod_secure_grpc_port"]
    tls = xds["transport_socket"]["typed_config"]
    assert tls["sni"] == ISTIOD_NAME
    assert tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": ISTIOD_NAME}}]
    stats = _stats(tier, "cluster.xds-grpc.ssl.handshake", "control_plane.connected_state")
    assert stats["cluster.xds-grpc.ssl.handshake"] >= 1 and stats["control_plane.connected_state"] == 1
    # ... and its Gateway listeners came that way (the traffic tests route through them).
    assert f":{tier.http_port}" in tier.envoy.listeners()
