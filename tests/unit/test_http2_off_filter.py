"""HTTP/2 off (copilot gateway.enable_http2: false, gorouter's router.enable_http2: false): the router
filter makes the connection managers HTTP/1.1-only and gives each HTTPS filter chain a TLS context with
ALPN http/1.1 alone; http2 routes' apps are reached over HTTP/1.1. (Through real istiod and Envoy:
tests/e2e/test_http2_off.py.)"""

from __future__ import annotations

import dataclasses

from google.protobuf import json_format

from copilot.config import parse
from copilot.istio import kinds
from copilot.istio.builder import build_host, build_router_objects
from copilot.istio.router_filter import HTTP1_TLS_SOCKET, HTTP1_TLS_SOCKET_BY_SNI, SDS_CLUSTER, file_cert_name
from copilot.model import Backend, Destination, HostRoutes
from copilot.protos import istio_networking_pb2 as pb
from copilot.settings import Certificate, GatewaySettings
from router_sds.server import file_cert_name as sds_file_cert_name

CERTS = (Certificate("wild", ("*.example.com",)), Certificate("app", ("app.example.com", "www.example.com")))
CIPHERS = ("ECDHE-RSA-AES128-GCM-SHA256",)
ON = GatewaySettings(https_port=443, certificates=CERTS, certificate_dir="/certs", tls_cipher_suites=CIPHERS)
OFF = dataclasses.replace(ON, enable_http2=False)


def _filter_patches(settings: GatewaySettings) -> list[dict]:
    [ef] = [o for o in build_router_objects(settings) if o.kind == kinds.ENVOY_FILTER and o.name.endswith("/cf-router")]
    return [json_format.MessageToDict(p, preserving_proto_field_name=True) for p in ef.spec.config_patches]


def test_enable_http2_is_on_by_default_and_parsed() -> None:
    assert parse({}).gateway.enable_http2 is True
    assert parse({"gateway": {"enable_http2": False}}).gateway.enable_http2 is False


def test_http2_on_patches_neither_codec_nor_tls() -> None:
    patches = _filter_patches(ON)
    assert not [p for p in patches if p["apply_to"] == "FILTER_CHAIN"]
    assert all("codec_type" not in p["patch"]["value"].get("typed_config", {}) for p in patches)


def test_http2_off_makes_every_connection_manager_http1_only() -> None:
    [hcm] = [p for p in _filter_patches(OFF) if p["apply_to"] == "NETWORK_FILTER"]
    assert hcm["match"]["context"] == "GATEWAY" and "port_number" not in hcm["match"]["listener"]  # HTTP and HTTPS
    assert hcm["patch"]["value"]["typed_config"]["codec_type"] == "HTTP1"


def test_http2_off_replaces_each_https_chains_tls_with_alpn_http1_only() -> None:
    chains = [p for p in _filter_patches(OFF) if p["apply_to"] == "FILTER_CHAIN"]
    # Every chain first (the fallback has no SNI) with the first certificate, then each certificate's own
    # chain by its first SNI name, under a second socket name so that patch replaces the first one's.
    listeners = [p["match"]["listener"] for p in chains]
    assert [(m["port_number"], m.get("filter_chain", {}).get("sni")) for m in listeners] == [
        (443, None), (443, "*.example.com"), (443, "app.example.com"),
    ]
    assert {p["patch"]["operation"] for p in chains} == {"MERGE"}
    sockets = [p["patch"]["value"]["transport_socket"] for p in chains]
    assert [s["name"] for s in sockets] == [HTTP1_TLS_SOCKET, HTTP1_TLS_SOCKET_BY_SNI, HTTP1_TLS_SOCKET_BY_SNI]
    assert len({HTTP1_TLS_SOCKET, HTTP1_TLS_SOCKET_BY_SNI, "envoy.transport_sockets.tls"}) == 3  # each replaces
    secrets = []
    for socket in sockets:
        common = socket["typed_config"]["common_tls_context"]
        assert common["alpn_protocols"] == ["http/1.1"]
        assert common["tls_params"] == {"tls_minimum_protocol_version": "TLSv1_2", "cipher_suites": list(CIPHERS)}
        [secret] = common["tls_certificate_sds_secret_configs"]
        assert secret["sds_config"]["api_config_source"]["grpc_services"] == [{"envoy_grpc": {"cluster_name": SDS_CLUSTER}}]
        secrets.append(secret["name"])
    assert secrets == [sds_file_cert_name("/certs", name) for name in ("wild", "wild", "app")]
    assert file_cert_name("/certs/app.crt", "/certs/app.key") == sds_file_cert_name("/certs", "app")  # one naming


def test_http2_off_without_https_patches_no_tls() -> None:
    patches = _filter_patches(GatewaySettings(enable_http2=False))
    assert not [p for p in patches if p["apply_to"] == "FILTER_CHAIN"]
    assert [p["patch"]["value"]["typed_config"]["codec_type"] for p in patches if p["apply_to"] == "NETWORK_FILTER"] == ["HTTP1"]


def test_http2_off_reaches_http2_routes_over_http1() -> None:
    routes = HostRoutes("a.example.com", {"": [Destination("h2", 8080, 100, "http2", [Backend("10.0.0.1", 61001)])]})
    policies = {}
    for settings in (ON, OFF):
        dr = next(o.spec for o in build_host(settings, routes) if o.kind == kinds.DESTINATION_RULE)
        assert list(dr.subsets) == []  # one process: its policy is the host's default cluster's
        policies[settings.enable_http2] = dr.traffic_policy.connection_pool.http.h2_upgrade_policy
    http = pb.ConnectionPoolSettings.HTTPSettings
    assert policies == {True: http.UPGRADE, False: http.DEFAULT}
