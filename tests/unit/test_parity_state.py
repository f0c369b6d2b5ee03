"""State behind router parity: TCP routes and app guids in the views, and the gateway's HTTPS,
sticky-session and instance-routing settings in Copilot's config."""

from __future__ import annotations

import pytest
from google.protobuf import json_format

from copilot.config import ConfigError, parse
from copilot.istio.builder import build_gateway, build_router_objects
from copilot.model import Backend, HttpRoute, Instance, PortMapping, ProcessRoutes, TcpRoute, ViewKind
from copilot.protos import istio_networking_pb2 as pb
from copilot.settings import Certificate
from copilot.views import Views


def instance(guid: str, index: int, host_port: int, container_port: int = 5000) -> Instance:
    return Instance(guid, index, f"{guid}-{index}", "RUNNING", True, "10.0.0.1", "", False,
                    (PortMapping(container_port, host_port), PortMapping(8080, host_port + 1000)))


def test_tcp_port_pools_every_process_routing_it() -> None:
    table = Views()
    table.bbs.upsert_process("a", ProcessRoutes(tcp=(TcpRoute(1024, 5000),)))
    table.bbs.upsert_process("b", ProcessRoutes(tcp=(TcpRoute(1024, 5000), TcpRoute(1025, 8080))))
    tcp_only = {ViewKind.HOST: set(), ViewKind.INTERNAL_HOST: set(), ViewKind.TCP_PORT: {1024, 1025}}
    assert table.take_dirty() == tcp_only  # TCP changes never touch HTTP hosts
    table.bbs.upsert_instance(0, instance("a", 0, 61000))
    table.bbs.upsert_instance(0, instance("b", 0, 62000))
    assert table.take_dirty() == tcp_only
    assert [b.port for b in table.tcp_routes(1024).backends] == [61000, 62000]
    assert [b.port for b in table.tcp_routes(1025).backends] == [63000]  # b's container port 8080
    assert sorted(table.keys(ViewKind.TCP_PORT)) == [1024, 1025]


def test_removing_a_tcp_route_dirties_only_its_port() -> None:
    table = Views()
    table.bbs.upsert_process("a", ProcessRoutes(http=(HttpRoute("a.example.com", "", 8080),), tcp=(TcpRoute(1024, 5000),)))
    table.take_dirty()
    table.bbs.upsert_process("a", ProcessRoutes(http=(HttpRoute("a.example.com", "", 8080),)))
    dirty = table.take_dirty()
    assert (dirty[ViewKind.TCP_PORT], dirty[ViewKind.HOST]) == ({1024}, set())
    assert table.tcp_routes(1024) is None
    table.bbs.upsert_process("a", ProcessRoutes(tcp=(TcpRoute(1030, 5000),)))
    table.bbs.remove_process("a")
    assert table.take_dirty()[ViewKind.TCP_PORT] == {1030}
    assert sorted(table.keys(ViewKind.TCP_PORT)) == []


def test_destinations_carry_the_app_guid_and_a_new_guid_rebuilds_the_hosts() -> None:
    table = Views()
    table.bbs.upsert_process("p", ProcessRoutes(http=(HttpRoute("a.example.com", "", 8080),), app_guid="app-1"))
    table.bbs.upsert_instance(0, instance("p", 0, 61000, container_port=8080))
    table.take_dirty()
    [dest] = table.host_routes("a.example.com").paths[""]
    assert dest.app_guid == "app-1"
    assert dest.backends == [Backend("10.0.0.1", 61000, 0, "p-0", 0, "")]
    table.bbs.upsert_process("p", ProcessRoutes(http=(HttpRoute("a.example.com", "", 8080),), app_guid="app-2"))
    assert table.take_dirty()[ViewKind.HOST] == {"a.example.com"}


def test_gateway_https_and_parity_settings() -> None:
    gateway = parse({"gateway": {
        "certificates": [{"name": "apps", "hosts": ["*.Apps.example.com"]}, {"name": "api", "hosts": ["api.example.com"]}],
        "certificate_dir": "/var/vcap/jobs/istio-router/config/certs",
        "tls_min_version": "1.3",
        "tls_cipher_suites": ["ECDHE-RSA-AES128-GCM-SHA256"],
        "sticky_session_cookies": ["JSESSIONID", "SESSION"],
        "instance_routing": True,
    }}).gateway
    assert gateway.https_port == 443  # the default once there are certificates
    assert gateway.certificates == (Certificate("apps", ("*.apps.example.com",)), Certificate("api", ("api.example.com",)))
    assert (gateway.tls_min_version, gateway.tls_cipher_suites) == ("1.3", ("ECDHE-RSA-AES128-GCM-SHA256",))
    assert gateway.sticky_session_cookies == ("JSESSIONID", "SESSION") and gateway.instance_routing is True
    # what the routers get from these settings: an HTTPS server per certificate, with its files and TLS
    servers = {s.name: s for s in build_gateway(gateway).spec.servers}
    apps, fallback = servers["https-cert-apps"], servers["https-fallback"]
    assert (apps.port.number, list(apps.hosts), list(fallback.hosts)) == (443, ["*.apps.example.com"], ["*"])
    assert (apps.tls.server_certificate, apps.tls.private_key) == (
        "/var/vcap/jobs/istio-router/config/certs/apps.crt", "/var/vcap/jobs/istio-router/config/certs/apps.key",
    )
    assert fallback.tls.server_certificate == apps.tls.server_certificate  # the first certificate answers other SNI
    assert (apps.tls.min_protocol_version, list(apps.tls.cipher_suites)) == (
        pb.ServerTLSSettings.TLSV1_3, ["ECDHE-RSA-AES128-GCM-SHA256"],
    )
    assert list(servers["https-cert-api"].hosts) == ["api.example.com"]
    patches = json_format.MessageToDict(build_router_objects(gateway)[2].spec)["configPatches"]
    [sticky] = [p["patch"]["value"] for p in patches if p["patch"]["value"].get("name") == "envoy.filters.http.stateful_session"]
    [matcher] = sticky["typed_config"]["xds_matcher"]["matcher_list"]["matchers"]
    regexes = [p["not_matcher"]["single_predicate"]["value_match"]["safe_regex"]["regex"]
               for p in matcher["predicate"]["and_matcher"]["predicate"]]
    assert all("(JSESSIONID|SESSION)=" in r for r in regexes)  # both make a session sticky
    defaults = parse({}).gateway
    assert (defaults.https_port, defaults.certificates, defaults.instance_routing) == (0, (), False)
    assert defaults.sticky_session_cookies == ("JSESSIONID",)
    assert [s.name for s in build_gateway(defaults).spec.servers] == ["http"]  # HTTP only


@pytest.mark.parametrize(("gateway", "message"), [
    ({"https_port": 443}, "gateway.https_port: HTTPS needs gateway.certificates"),
    ({"certificates": [{"name": "a", "hosts": ["a.example.com"]}], "https_port": 80}, "is also gateway.http_port"),
    ({"certificates": [{"name": "a/b", "hosts": ["a.example.com"]}]}, "gateway.certificates[0].name"),
    ({"certificates": [{"name": "a", "hosts": ["a.example.com"]}, {"name": "a", "hosts": ["b.example.com"]}]},
     "gateway.certificates[1].name: 'a' is given twice"),
    ({"certificates": [{"name": "a", "hosts": ["x.example.com"]}, {"name": "b", "hosts": ["X.example.com"]}]},
     "served by two certificates"),
    ({"certificates": [{"name": "a", "hosts": []}]}, "gateway.certificates[0].hosts: needs at least one"),
    ({"certificates": [{"name": "a", "hosts": ["bad host"]}]}, "gateway.certificates[0].hosts"),
    ({"certificates": [{"name": "a", "hosts": ["a.example.com"], "cert": "x"}]}, "gateway.certificates[0].cert: unknown key"),
    ({"certificate_dir": "relative"}, "gateway.certificate_dir: must be an absolute path"),
    ({"tls_min_version": "1.1"}, "gateway.tls_min_version"),
    ({"sticky_session_cookies": ["bad cookie"]}, "gateway.sticky_session_cookies"),
    ({"sticky_session_cookies": ["__VCAP_ID__"]}, "gateway.sticky_session_cookies"),
    ({"instance_routing": "yes"}, "gateway.instance_routing: must be true or false"),
])
def test_bad_gateway_settings_are_named(gateway: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse({"gateway": gateway})
