"""The builder's gorouter-parity objects: HTTPS servers per certificate, the unknown-route answer, the
cf-router EnvoyFilter, per-instance endpoint labels and routes, HTTP/2 subsets and TCP ports."""

from __future__ import annotations

import re

import pytest
from google.protobuf import json_format

from copilot import invalid_input
from copilot.istio import kinds
from copilot.istio.builder import (
    APP_INSTANCE_HEADER,
    APPLICATION_ID_LABEL,
    IDENTITY_SERVICE_PORT,
    INSTANCE_GUID_LABEL,
    INSTANCE_INDEX_LABEL,
    INSTANCE_LABEL,
    Certificate,
    GatewaySettings,
    build_gateway,
    build_host,
    build_router_objects,
    build_tcp,
    instance_subset_name,
    tcp_object_names,
    tcp_service_host,
)
from copilot.istio.router_filter import CLIENT_HEADERS_DROPPED, session_cookie_regex
from copilot.model import Backend, Destination, HostRoutes, TcpPortRoutes
from copilot.protos import istio_networking_pb2 as pb

CERTS = (Certificate("wildcard", ("*.example.com",)), Certificate("app", ("app.example.com",)))
SETTINGS = GatewaySettings(namespace="cf", https_port=8443, certificates=CERTS, certificate_dir="/certs/", bind="127.0.0.1")


def app(guid: str = "web", *backends: Backend, protocol: str = "http1", app_guid: str = "app-guid") -> Destination:
    return Destination(guid, 8080, 100, protocol, list(backends), app_guid=app_guid)


def host(settings: GatewaySettings, routes: HostRoutes) -> tuple[pb.VirtualService, pb.DestinationRule, pb.ServiceEntry]:
    """A host with one destination: its VirtualService and its service's DestinationRule and ServiceEntry."""
    vs, dr, se = (o.spec for o in build_host(settings, routes))
    return vs, dr, se  # type: ignore[return-value]


def services(settings: GatewaySettings, routes: HostRoutes) -> dict[str, tuple[pb.DestinationRule, pb.ServiceEntry]]:
    """Per service host, the DestinationRule and ServiceEntry of the services a host routes to."""
    objects = build_host(settings, routes)
    rules = [o.spec for o in objects if o.kind is kinds.DESTINATION_RULE]
    entries = [o.spec for o in objects if o.kind is kinds.SERVICE_ENTRY]
    return {dr.host: (dr, se) for dr, se in zip(rules, entries, strict=True)}  # type: ignore[attr-defined]


def _string_matches(match: pb.StringMatch, value: str | None) -> bool:
    kind = match.WhichOneof("match_type")
    if value is None:
        return False
    return kind is None or (kind == "exact" and value == match.exact) or (kind == "prefix" and value.startswith(match.prefix))


def _route_for(vs: pb.VirtualService, path: str, headers: dict[str, str] | None = None) -> pb.HTTPRoute:
    """The VirtualService's route a request takes, as Envoy picks it from istiod's translation: the first
    whose any match has the path (exact or prefix) and every header it names (a match without a value:
    present). Only the match kinds the builder writes."""
    headers = {k.lower(): v for k, v in (headers or {}).items()}
    for route in vs.http:
        for match in route.match or [pb.HTTPMatchRequest()]:
            uri_ok = not match.HasField("uri") or _string_matches(match.uri, path)
            if uri_ok and all(_string_matches(m, headers.get(name)) for name, m in match.headers.items()):
                return route
    raise AssertionError(f"no route for {path} {headers}")


def _reached(destination: pb.Destination, dr: pb.DestinationRule, se: pb.ServiceEntry) -> list[str]:
    """The endpoints (address:port) a destination selects, as istiod resolves it: the ServiceEntry of its
    host, the port of its number, the endpoints carrying every label of its DestinationRule subset."""
    assert destination.host in se.hosts and dr.host == destination.host
    [port] = [p.name for p in se.ports if p.number == (destination.port.number or se.ports[0].number)]
    labels: dict[str, str] = {}
    if destination.subset:
        [subset] = [s for s in dr.subsets if s.name == destination.subset]
        labels = dict(subset.labels)
    return [f"{e.address}:{e.ports[port]}" for e in se.endpoints if labels.items() <= dict(e.labels).items()]


def test_https_servers_per_certificate_with_a_fallback_for_other_sni() -> None:
    servers = build_gateway(SETTINGS).spec.servers
    assert [(s.name, s.port.number, s.port.protocol, list(s.hosts)) for s in servers] == [
        ("http", 80, "HTTP", ["*"]),
        ("https-fallback", 8443, "HTTPS", ["*"]),
        ("https-cert-wildcard", 8443, "HTTPS", ["*.example.com"]),
        ("https-cert-app", 8443, "HTTPS", ["app.example.com"]),
    ]
    fallback, wildcard, exact = servers[1:]
    assert fallback.tls.server_certificate == wildcard.tls.server_certificate == "/certs/wildcard.crt"
    assert (exact.tls.server_certificate, exact.tls.private_key) == ("/certs/app.crt", "/certs/app.key")
    assert all(s.tls.mode == pb.ServerTLSSettings.SIMPLE for s in servers[1:])
    assert all(s.tls.min_protocol_version == pb.ServerTLSSettings.TLSV1_2 for s in servers[1:])
    assert all(s.bind == "127.0.0.1" for s in servers)


def test_no_https_without_certificates() -> None:
    assert [s.name for s in build_gateway(GatewaySettings(https_port=443)).spec.servers] == ["http"]


def test_https_connection_managers_use_the_http_route_configuration() -> None:
    """istiod would build one route configuration per HTTPS server, each with every host again."""
    [shared] = [o for o in build_router_objects(SETTINGS) if o.name == "cf/cf-shared-routes"]
    assert shared.kind is kinds.ENVOY_FILTER and dict(shared.spec.workload_selector.labels) == {"app": "istio-router"}
    [patch] = json_format.MessageToDict(shared.spec)["configPatches"]
    assert (patch["applyTo"], patch["patch"]["operation"], patch["match"]["context"]) == ("NETWORK_FILTER", "MERGE", "GATEWAY")
    assert patch["match"]["listener"]["portNumber"] == 8443  # every filter chain there: the fallback and each certificate
    assert patch["patch"]["value"]["typed_config"]["rds"] == {"route_config_name": "http.80.127.0.0.1"}  # istiod's name
    no_https = GatewaySettings(namespace="cf", https_port=8443)
    assert [o.name for o in build_router_objects(no_https) if o.kind is kinds.ENVOY_FILTER] == ["cf/cf-router"]


def test_router_objects_answer_unknown_routes_and_carry_the_router_filter() -> None:
    gateway, unknown, router_filter, _shared_routes = build_router_objects(SETTINGS)
    assert (gateway.kind, unknown.kind, router_filter.kind) == (kinds.GATEWAY, kinds.VIRTUAL_SERVICE, kinds.ENVOY_FILTER)
    assert list(unknown.spec.hosts) == ["*"] and list(unknown.spec.gateways) == ["cf/cf-ingress"]
    [route] = unknown.spec.http
    assert route.direct_response.status == 404
    assert dict(route.headers.response.set) == {"X-Cf-Routererror": "unknown_route"}
    ef = router_filter.spec
    assert router_filter.name == "cf/cf-router" and dict(ef.workload_selector.labels) == {"app": "istio-router"}
    patches = json_format.MessageToDict(ef)["configPatches"]
    assert [(p["applyTo"], p["patch"]["operation"]) for p in patches] == [
        ("HTTP_FILTER", "MERGE"), ("HTTP_FILTER", "INSERT_BEFORE"), ("HTTP_FILTER", "INSERT_FIRST"), ("NETWORK_FILTER", "MERGE"),
        ("CLUSTER", "MERGE"),
    ]
    identity = patches[-1]
    assert identity["match"]["cluster"]["portNumber"] == IDENTITY_SERVICE_PORT
    tls = identity["patch"]["value"]["transport_socket"]["typed_config"]
    assert tls["auto_host_sni"] is True and tls["auto_sni_san_validation"] is True
    upstream = patches[0]["patch"]["value"]["typed_config"]["upstream_http_filters"]
    assert [f["name"] for f in upstream] == [
        "envoy.filters.http.header_mutation", "envoy.filters.http.upstream_codec",
    ]
    assert patches[1]["patch"]["value"]["name"] == "envoy.filters.http.stateful_session"

    # the values that decide what the router does
    mutations = upstream[0]["typed_config"]["mutations"]["request_mutations"]
    set_headers = {m["append"]["header"]["key"]: m["append"]["header"]["value"] for m in mutations if "append" in m}
    assert set_headers["x-vcap-request-id"] == "%REQ(x-request-id)%"  # gorouter's request id, Envoy's x-request-id
    assert set_headers["x-request-start"] == "%START_TIME(%s%3f)%"  # epoch milliseconds, as gorouter sends it
    # the app and instance headers come from the picked endpoint's metadata, after a client's values are dropped
    assert set_headers["x-cf-applicationid"] == "%UPSTREAM_METADATA(copilot.cloudfoundry.org:application-id)%"
    assert set_headers["x-cf-instanceid"] == "%UPSTREAM_METADATA(copilot.cloudfoundry.org:instance-id)%"
    assert set_headers["x-cf-instanceindex"] == "%UPSTREAM_METADATA(copilot.cloudfoundry.org:instance-index)%"
    order = [m.get("remove") or m["append"]["header"]["key"] for m in mutations]
    for header in ("x-cf-applicationid", "x-cf-instanceid", "x-cf-instanceindex"):
        assert order.index(header) < order.index(header, order.index(header) + 1)  # removed, then set
    wrapped = patches[1]["patch"]["value"]["typed_config"]
    session = wrapped["extension_config"]["typed_config"]["session_state"]["typed_config"]["cookie"]
    assert session == {"name": "__VCAP_ID__", "path": "/"}  # the instance a sticky session goes back to
    [matcher] = wrapped["xds_matcher"]["matcher_list"]["matchers"]
    assert matcher["on_match"]["action"]["typed_config"]["@type"].endswith("SkipFilter")
    request, response = (p["not_matcher"]["single_predicate"] for p in matcher["predicate"]["and_matcher"]["predicate"])
    # skipped only when neither the request carried a session cookie nor the response sets one
    assert (request["input"]["typed_config"]["header_name"], request["value_match"]["safe_regex"]["regex"]) == (
        "cookie", r"(.*[;,])?\s*(JSESSIONID)=.*")
    assert (response["input"]["typed_config"]["header_name"], response["value_match"]["safe_regex"]["regex"]) == (
        "set-cookie", r"(.*[,])?\s*(JSESSIONID)=.*")
    dropped = patches[2]["patch"]["value"]["typed_config"]["mutations"]["request_mutations"]
    assert [m["remove"] for m in dropped] == list(CLIENT_HEADERS_DROPPED)
    assert "x-cf-applicationid" in CLIENT_HEADERS_DROPPED  # only the router sets it, from the endpoint
    mappers = patches[3]["patch"]["value"]["typed_config"]["local_reply_config"]["mappers"]
    assert {
        flag: m["headers_to_add"][0]["header"]["value"] for m in mappers for flag in m["filter"]["response_flag_filter"]["flags"]
    } == {"UH": "no_endpoints", "UF": "endpoint_failure", "URX": "endpoint_failure", "UC": "endpoint_failure",
          "UT": "endpoint_failure", "UR": "endpoint_failure"}  # gorouter's X-Cf-Routererror values
    assert all(m["headers_to_add"][0]["header"]["key"] == "x-cf-routererror" for m in mappers)


def test_sticky_cookie_names_are_checked() -> None:
    regex = session_cookie_regex(("JSESSIONID", "my.session"), ";,")
    assert regex == r"(.*[;,])?\s*(JSESSIONID|my\.session)=.*"
    # Envoy matches the whole header value
    assert re.fullmatch(regex, "a=1; my.session=x") and re.fullmatch(regex, "JSESSIONID=1")
    assert re.fullmatch(regex, "a=1,JSESSIONID=2; b=3")
    assert not re.fullmatch(regex, "a=1; myXsession=x") and not re.fullmatch(regex, "XJSESSIONID=1")
    assert not re.fullmatch(regex, "a=JSESSIONID=1")
    for bad in ('a"b', "a b", "__VCAP_ID__", ""):
        with pytest.raises(ValueError):
            session_cookie_regex((bad,), ",")
    with pytest.raises(ValueError):
        session_cookie_regex((), ",")


def test_app_instances_get_identity_and_app_id_labels() -> None:
    routes = HostRoutes("a.example.com", {"": [app("web", Backend("10.0.0.1", 61001, 0, "guid-0", 0),
                                                        Backend("10.0.0.2", 61002, 0, "guid-1", 1))]})
    vs, dr, se = host(SETTINGS, routes)
    assert [dict(e.labels) for e in se.endpoints] == [
        {APPLICATION_ID_LABEL: "app-guid", INSTANCE_GUID_LABEL: "guid-0", INSTANCE_INDEX_LABEL: "0"},
        {APPLICATION_ID_LABEL: "app-guid", INSTANCE_GUID_LABEL: "guid-1", INSTANCE_INDEX_LABEL: "1"},
    ]
    [route] = vs.http
    assert not route.route[0].headers.request.set  # X-CF-ApplicationID comes from the endpoint, not the route
    assert list(dr.subsets) == []  # its routes use the service's cluster; no per-instance subsets by default
    assert _reached(route.route[0].destination, dr, se) == ["10.0.0.1:61001", "10.0.0.2:61002"]


def test_unsafe_identities_are_left_out() -> None:
    routes = HostRoutes("a.example.com", {"": [app("web", Backend("10.0.0.1", 61001, 0, "not a label!", 0), app_guid="%x\n")]})
    vs, _, se = host(SETTINGS, routes)
    assert dict(se.endpoints[0].labels) == {}
    assert not vs.http[0].route[0].headers.request.set


@pytest.mark.parametrize("app_guid", ["a:b", "x" * 64, "-starts-with-a-dash", "has space"])
def test_an_app_guid_istiod_refuses_as_a_label_is_counted_and_the_route_kept(app_guid: str) -> None:
    """istiod validates endpoint labels: an app guid that is no label value gets no label (the route works,
    without X-CF-ApplicationID), counted once in copilot_invalid_input_total{source="builder",field="app_guid"}."""
    invalid_input.forget()
    counter = invalid_input.INVALID_INPUT.labels("builder", "app_guid")
    before = counter._value.get()
    routes = HostRoutes("a.example.com", {"": [app("web", Backend("10.0.0.1", 61001, 0, "guid-0", 0), app_guid=app_guid)]})
    vs, _, se = host(SETTINGS, routes)
    assert dict(se.endpoints[0].labels) == {INSTANCE_GUID_LABEL: "guid-0", INSTANCE_INDEX_LABEL: "0"}
    assert [d.destination.host for d in vs.http[0].route] == [se.hosts[0]]
    assert counter._value.get() == before + 1
    host(SETTINGS, routes)  # rebuilt: not counted again
    assert counter._value.get() == before + 1


def test_a_weighted_route_s_endpoints_name_each_their_own_app() -> None:
    """Each destination of a weighted route is its own service; its endpoints carry its app guid, so the
    header names the app that answered."""
    blue = app("blue", Backend("10.0.0.1", 61001, 0, "b0", 0), app_guid="blue-app")
    green = app("green", Backend("10.0.0.2", 61002, 0, "g0", 0), app_guid="green-app")
    routes = HostRoutes("a.example.com", {"": [blue, green]})
    labels = [dict(se.endpoints[0].labels) for _, se in services(SETTINGS, routes).values()]
    apps = {endpoint[INSTANCE_GUID_LABEL]: endpoint[APPLICATION_ID_LABEL] for endpoint in labels}
    assert apps == {"b0": "blue-app", "g0": "green-app"}
    [vs] = [o.spec for o in build_host(SETTINGS, routes) if o.kind is kinds.VIRTUAL_SERVICE]
    assert [(d.weight, dict(d.headers.request.set)) for d in vs.http[0].route] == [(50, {}), (50, {})]


def test_instance_routing_adds_a_route_and_subset_per_instance() -> None:
    settings = GatewaySettings(namespace="cf", instance_routing=True)
    backends = (Backend("10.0.0.1", 61001, 0, "guid-0", 0), Backend("10.0.0.2", 61002, 0, "guid-1", 1))
    vs, dr, se = host(settings, HostRoutes("a.example.com", {"/api": [app("web", *backends)]}))
    names = [r.name for r in vs.http]
    assert names == ["/api instance app-guid:0", "/api instance app-guid:1", "/api unknown instance", "/api", "unknown-route"]
    first = vs.http[0]
    assert [(m.uri.WhichOneof("match_type"), m.headers[APP_INSTANCE_HEADER].exact) for m in first.match] == [
        ("exact", "app-guid:0"), ("prefix", "app-guid:0"),
    ]
    assert first.route[0].destination.subset == instance_subset_name("web", 8080, "guid-0")
    missing = vs.http[2]
    assert missing.match[0].headers[APP_INSTANCE_HEADER].WhichOneof("match_type") is None  # present
    assert missing.direct_response.status == 400
    assert dict(missing.headers.response.set) == {"X-Cf-Routererror": "unknown_route"}
    assert vs.http[4].direct_response.status == 404  # no root route on this host
    assert [s.name for s in dr.subsets] == [  # the process itself is the service's cluster
        instance_subset_name("web", 8080, "guid-0"), instance_subset_name("web", 8080, "guid-1"),
    ]
    assert se.endpoints[1].labels[INSTANCE_LABEL] == instance_subset_name("web", 8080, "guid-1")

    # what requests reach (gorouter's X-CF-App-Instance: "app guid:index")
    def reaches(path: str, **headers: str) -> list[str] | int:
        route = _route_for(vs, path, {k.replace("_", "-"): v for k, v in headers.items()})
        return route.direct_response.status if route.HasField("direct_response") else _reached(route.route[0].destination, dr, se)

    assert reaches("/api/x", x_cf_app_instance="app-guid:0") == ["10.0.0.1:61001"]
    assert reaches("/api", x_cf_app_instance="app-guid:1") == ["10.0.0.2:61002"]
    assert reaches("/api/x", x_cf_app_instance="app-guid:2") == 400  # no such instance
    assert reaches("/api/x", x_cf_app_instance="other-app:0") == 400
    assert reaches("/api/x") == ["10.0.0.1:61001", "10.0.0.2:61002"]
    assert reaches("/apis") == 404  # not under /api


def test_http2_routes_get_h2c_services() -> None:
    routes = HostRoutes("a.example.com", {"": [app("h2", Backend("10.0.0.1", 61001), protocol="http2"),
                                               app("h1", Backend("10.0.0.2", 61002))]})
    vs = build_host(SETTINGS, routes)[0].spec
    built = services(SETTINGS, routes)
    policies = {svc: dr.traffic_policy.connection_pool.http.h2_upgrade_policy for svc, (dr, _) in built.items()}
    assert sorted(policies.values()) == sorted(
        [pb.ConnectionPoolSettings.HTTPSettings.UPGRADE, pb.ConnectionPoolSettings.HTTPSettings.DEFAULT]
    )
    # the request to the host is shared by both processes; only the HTTP/2 one's instances get h2c
    upgrade = {
        address: policies[d.destination.host]
        for d in _route_for(vs, "/").route  # type: ignore[arg-type]
        for address in _reached(d.destination, *built[d.destination.host])
    }
    assert upgrade == {
        "10.0.0.1:61001": pb.ConnectionPoolSettings.HTTPSettings.UPGRADE,
        "10.0.0.2:61002": pb.ConnectionPoolSettings.HTTPSettings.DEFAULT,
    }


def test_tcp_port_gets_its_own_gateway_virtual_service_and_endpoints() -> None:
    objects = build_tcp(SETTINGS, TcpPortRoutes(1024, [Backend("10.0.0.1", 61001), Backend("10.0.0.2", 61002)]))
    assert [(o.kind, o.name) for o in objects] == [
        (kinds.GATEWAY, "cf/cf-tcp-1024"), (kinds.VIRTUAL_SERVICE, "cf/cf-tcp-1024"), (kinds.SERVICE_ENTRY, "cf/cf-tcp-1024"),
        (kinds.DESTINATION_RULE, "cf/cf-tcp-1024"),
    ]
    gateway, vs, se, dr = (o.spec for o in objects)
    assert not dr.traffic_policy.HasField("tls")  # plain ports: no TLS without route integrity
    [server] = gateway.servers
    assert (server.port.number, server.port.protocol, server.bind) == (1024, "TCP", "127.0.0.1")
    assert list(vs.gateways) == ["cf/cf-tcp-1024"]  # never bound to the HTTP gateway
    [route] = vs.tcp
    assert route.match[0].port == 1024 and route.route[0].destination.host == tcp_service_host(1024)
    assert _reached(route.route[0].destination, dr, se) == ["10.0.0.1:61001", "10.0.0.2:61002"]
    assert [(e.address, dict(e.ports)) for e in se.endpoints] == [("10.0.0.1", {"tcp": 61001}), ("10.0.0.2", {"tcp": 61002})]
    assert [(o.kind, o.name) for o in tcp_object_names(SETTINGS, 1024)] == [(o.kind, o.name) for o in objects]


def test_tcp_port_cannot_take_the_http_ports() -> None:
    for port in (80, 8443):
        with pytest.raises(ValueError, match="HTTP"):
            build_tcp(SETTINGS, TcpPortRoutes(port, []))
