"""What Copilot emits for route services (gateway.route_services on): the route-service proxy as a
service on the routers' loopback, the loopback Gateway it hands verified requests back to, and per
bound route a WebSocket refusal, the app on the loopback Gateway only, and the proxy on the router's."""

from __future__ import annotations

import dataclasses

import pytest
from google.protobuf import json_format

from copilot.config import ConfigError, parse
from copilot.istio import kinds
from copilot.istio.builder import (
    ROUTE_SERVICE_EXCLUDED_HEADER,
    ROUTE_SERVICE_HOST_HEADER,
    ROUTE_SERVICE_PATH_HEADER,
    ROUTE_SERVICE_PROXY_HOST,
    ROUTE_SERVICE_TOKEN_HEADER,
    ROUTE_SERVICE_URL_HEADER,
    GatewaySettings,
    RouteServiceSettings,
    build_host,
    build_router_objects,
    destination_service,
)
from copilot.istio.router_filter import build_router_filter
from copilot.model import Backend, Destination, HostRoutes
from copilot.protos import istio_networking_pb2 as pb

SETTINGS = GatewaySettings(namespace="cf", name="ingress", selector={"istio": "router"}, http_port=8000,
                           route_services=RouteServiceSettings(proxy_port=7070, gateway_port=7071))
INTERNAL = "cf/cf-route-services"


def _dest(guid: str, service: str = "", app: str = "app-guid") -> Destination:
    return Destination(guid, 8080, 100, "http1", [Backend("10.0.0.1", 61001, 0, f"{guid}-i0", 0)], app_guid=app,
                       route_service_url=service)


def _service(guid: str) -> str:
    """The service host a route to process `guid` (port 8080) names."""
    return destination_service(SETTINGS, "app.example.com", _dest(guid)).host


def _vs(settings: GatewaySettings, routes: HostRoutes) -> pb.VirtualService:
    objects = build_host(settings, routes)
    assert objects[0].kind == kinds.VIRTUAL_SERVICE
    return objects[0].spec  # type: ignore[return-value]


def _routes(service: str = "https://rs.example.org/check?a=1") -> HostRoutes:
    return HostRoutes("app.example.com", {
        "": [_dest("web")],
        "/guarded": [_dest("web", service)],
        "/guarded/inner": [_dest("inner")],
        "/guardedness": [_dest("other")],
    })


def test_router_objects_add_the_proxy_service_and_the_loopback_gateway() -> None:
    objects = {o.name: o for o in build_router_objects(SETTINGS)}
    gateway = objects[INTERNAL]
    assert gateway.kind == kinds.GATEWAY
    [server] = gateway.spec.servers
    assert (server.port.number, server.port.protocol, server.bind, list(server.hosts)) == (7071, "HTTP", "127.0.0.1", ["*"])
    assert dict(gateway.spec.selector) == {"istio": "router"}
    proxy = objects["cf/cf-route-service-proxy"]
    assert proxy.kind == kinds.SERVICE_ENTRY
    assert list(proxy.spec.hosts) == [ROUTE_SERVICE_PROXY_HOST] and proxy.spec.resolution == pb.ServiceEntry.STATIC
    assert [(p.number, p.protocol) for p in proxy.spec.ports] == [(7070, "HTTP")]
    assert [e.address for e in proxy.spec.endpoints] == ["127.0.0.1"]
    assert not proxy.spec.endpoints[0].labels  # so the router sets no X-CF-ApplicationID on requests to the proxy
    # Off: neither exists.
    assert set(o.name for o in build_router_objects(dataclasses.replace(SETTINGS, route_services=None))) == {
        "cf/ingress", "cf/cf-unknown-route", "cf/cf-router"}


def test_a_bound_route_goes_through_the_proxy_and_comes_back_to_the_app() -> None:
    vs = _vs(SETTINGS, _routes())
    assert list(vs.gateways) == ["cf/ingress", INTERNAL]
    guarded = [r for r in vs.http if r.name.startswith("/guarded route service")]
    assert [r.name for r in guarded] == [
        "/guarded route service (websocket)", "/guarded route service (verified)", "/guarded route service"]
    websocket, verified, to_proxy = guarded
    uris = [("/guarded", ""), ("", "/guarded/")]

    # 1. WebSocket upgrades: refused, on the router's Gateway.
    assert websocket.direct_response.status == 503 and list(websocket.route) == []
    assert websocket.direct_response.body.string == (
        "503 Service Unavailable: Websocket requests are not supported for routes bound to Route Services.\n")
    assert dict(websocket.headers.response.set) == {"X-Cf-Routererror": "route_service_unsupported"}
    assert [(m.uri.exact, m.uri.prefix, list(m.gateways), m.headers["upgrade"].regex) for m in websocket.match] == [
        (e, p, ["cf/ingress"], "(?i)websocket") for e, p in uris]
    # 2. Verified requests, on the loopback Gateway only: the app, X-Forwarded-Proto restored.
    assert [(m.uri.exact, m.uri.prefix, list(m.gateways)) for m in verified.match] == [(e, p, [INTERNAL]) for e, p in uris]
    assert [(d.destination.host, d.destination.subset) for d in verified.route] == [(_service("web"), "")]
    assert not verified.route[0].headers.request.set  # X-CF-ApplicationID: from the app's endpoint (router filter)
    assert dict(verified.headers.request.set) == {"x-forwarded-proto": "%REQ(x-cf-rs-forwarded-proto)%"}
    # 3. Everything else of the route, on the router's Gateway: the proxy, told about the route.
    assert [(m.uri.exact, m.uri.prefix, list(m.gateways)) for m in to_proxy.match] == [(e, p, ["cf/ingress"]) for e, p in uris]
    assert [(d.destination.host, d.destination.port.number) for d in to_proxy.route] == [(ROUTE_SERVICE_PROXY_HOST, 7070)]
    assert not to_proxy.route[0].headers.request.set  # no X-CF-ApplicationID to route services, as gorouter
    assert dict(to_proxy.headers.request.set) == {
        # From Envoy's environment (the istio-router job's): the proxy serves only the router's own Envoy.
        ROUTE_SERVICE_TOKEN_HEADER: "%ENVIRONMENT(CF_ROUTE_SERVICES_TOKEN)%",
        ROUTE_SERVICE_HOST_HEADER: "app.example.com",
        ROUTE_SERVICE_PATH_HEADER: "/guarded",
        ROUTE_SERVICE_URL_HEADER: "https://rs.example.org/check?a=1",
        ROUTE_SERVICE_EXCLUDED_HEADER: "/guarded/inner",  # a longer context path: another route (not /guardedness)
    }
    assert to_proxy.HasField("retries") and to_proxy.retries.attempts == 0  # a route service's 503 is never retried
    # The unbound paths: as ever, on the router's Gateway (and the loopback one, where nothing sends them).
    inner = next(r for r in vs.http if r.name == "/guarded/inner")
    assert [d.destination.host for d in inner.route] == [_service("inner")]


def test_a_bound_root_route_matches_every_path_and_excludes_the_hosts_context_paths() -> None:
    routes = HostRoutes("app.example.com", {"": [_dest("web", "https://rs.example.org")], "/api": [_dest("api")]})
    vs = _vs(SETTINGS, routes)
    to_proxy = next(r for r in vs.http if r.name == "/ route service")
    assert [(m.HasField("uri"), list(m.gateways)) for m in to_proxy.match] == [(False, ["cf/ingress"])]
    headers = dict(to_proxy.headers.request.set)
    assert (headers[ROUTE_SERVICE_PATH_HEADER], headers[ROUTE_SERVICE_EXCLUDED_HEADER]) == ("/", "/api")
    assert [r.name for r in vs.http][0] == "/api"  # longer context paths still come first


def test_percent_signs_reach_the_proxy_literally() -> None:
    # In route header values Envoy reads % as a command operator: Copilot doubles it.
    routes = HostRoutes("app.example.com", {"/a%20b": [_dest("web", "https://rs.example.org/x?t=a%2Fb")]})
    headers = dict(next(r for r in _vs(SETTINGS, routes).http if r.name == "/a%20b route service").headers.request.set)
    assert headers[ROUTE_SERVICE_URL_HEADER] == "https://rs.example.org/x?t=a%%2Fb"
    assert headers[ROUTE_SERVICE_PATH_HEADER] == "/a%%20b"


@pytest.mark.parametrize("url", ["https://rs.example.org/a b", "https://rs.example.org/\n", "https://" + "a" * 2100])
def test_a_route_service_url_that_cannot_be_passed_on_fails_closed(url: str) -> None:
    vs = _vs(SETTINGS, HostRoutes("app.example.com", {"/g": [_dest("web", url)]}))
    [route] = [r for r in vs.http if r.name.startswith("/g")]
    assert route.direct_response.status == 502 and list(route.route) == []
    assert dict(route.headers.response.set) == {"X-Cf-Routererror": "route_service_unsupported"}


def test_hosts_without_a_route_service_stay_off_the_loopback_gateway() -> None:
    vs = _vs(SETTINGS, HostRoutes("plain.example.com", {"": [_dest("web")]}))
    assert list(vs.gateways) == ["cf/ingress"]
    assert not [m for r in vs.http for m in r.match if m.gateways]


def test_instance_routes_of_a_bound_route_are_only_on_the_loopback_gateway() -> None:
    # X-CF-App-Instance must not bypass the route service: its routes apply after the return trip only.
    settings = dataclasses.replace(SETTINGS, instance_routing=True)
    vs = _vs(settings, HostRoutes("app.example.com", {"": [_dest("web", "https://rs.example.org")]}))
    instance_routes = [r for r in vs.http if "instance" in r.name]
    assert [r.name for r in instance_routes] == ["/ instance app-guid:0", "/ unknown instance"]
    assert all(list(m.gateways) == [INTERNAL] for r in instance_routes for m in r.match)
    names = [r.name for r in vs.http]
    assert names.index("/ route service (websocket)") < names.index("/ instance app-guid:0") < names.index("/ route service")


def test_the_router_filter_drops_client_sent_route_headers_and_the_scratch_header() -> None:
    ef = build_router_filter("cf", {"istio": "router"}, ("JSESSIONID",)).spec
    patches = [json_format.MessageToDict(p.patch.value) for p in ef.config_patches]
    # the first HTTP filter of the chain drops what a client sent, before any route sets its own
    [first] = [p for p in patches if p.get("name") == "cf.client_headers"]
    dropped = {m["remove"] for m in first["typed_config"]["mutations"]["request_mutations"]}
    for header in (ROUTE_SERVICE_HOST_HEADER, ROUTE_SERVICE_PATH_HEADER, ROUTE_SERVICE_URL_HEADER, ROUTE_SERVICE_EXCLUDED_HEADER,
                   ROUTE_SERVICE_TOKEN_HEADER):
        assert header in dropped, header
    [router] = [p for p in patches if p.get("name") == "envoy.filters.http.router"]
    upstream = router["typed_config"]["upstream_http_filters"][0]["typed_config"]["mutations"]["request_mutations"]
    assert {"remove": "x-cf-rs-forwarded-proto"} in upstream


def test_config_gateway_route_services() -> None:
    assert parse({}).gateway.route_services is None
    gateway = parse({"gateway": {"route_services": {}}}).gateway
    assert gateway.route_services == RouteServiceSettings(7070, 7071)
    gateway = parse({"gateway": {"route_services": {"proxy_port": 9000, "gateway_port": 9001}}}).gateway
    assert gateway.route_services == RouteServiceSettings(9000, 9001)
    for bad, key in (
        ({"proxy_port": 7071}, "gateway.route_services.gateway_port"),
        ({"proxy_port": 80}, "gateway.route_services.proxy_port"),
        ({"gateway_port": 0}, "gateway.route_services.gateway_port"),
        ({"surprise": 1}, "gateway.route_services.surprise"),
    ):
        with pytest.raises(ConfigError, match=f"^{key}:"):
            parse({"gateway": {"route_services": bad}})
