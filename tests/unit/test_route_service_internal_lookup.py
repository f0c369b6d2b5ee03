"""Route services' internal lookup (gorouter's router.route_services_internal_lookup): Copilot marks a
bound route whose route service URL is a route of this foundation (allowlist permitting), rebuilds it
when that route comes or goes, and the route-service proxy then sends the signed request to its own
router's HTTP listener instead of the route service's address. (Through real Envoy:
tests/e2e/test_route_services.py, test_internal_lookup_*.)"""

from __future__ import annotations

import dataclasses
import http.client
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from copilot.config import ConfigError, parse
from copilot.istio import kinds
from copilot.istio.builder import ROUTE_SERVICE_INTERNAL_HEADER, build_host, object_name
from copilot.istio.router_filter import CLIENT_HEADERS_DROPPED
from copilot.model import Backend, Destination, HostRoutes, HttpRoute, ProcessRoutes
from copilot.protos import istio_networking_pb2 as pb
from copilot.publisher import Publisher
from copilot.route_service_lookup import InternalLookup, allowlisted
from copilot.settings import GatewaySettings, RouteServiceSettings
from copilot.views import Views
from copilot.xds.store import Store
from route_services import proxy as rs_proxy
from route_services.config import Config
from route_services.config import parse as parse_proxy_config
from route_services.proxy import RouteServiceProxy

SETTINGS = GatewaySettings(route_services=RouteServiceSettings(internal_lookup=True))


def _routes(host: str, url: str = "", paths: tuple[str, ...] = ("",)) -> HostRoutes:
    backends = [Backend("10.0.0.1", 61001)]
    return HostRoutes(host, {p: [Destination(f"{host}{p}", 8080, 100, "http1", backends, route_service_url=url)] for p in paths})


def _proxy_headers(settings: GatewaySettings, routes: HostRoutes, lookup) -> list[dict[str, str]]:
    vs = next(o.spec for o in build_host(settings, routes, lookup) if o.kind == kinds.VIRTUAL_SERVICE)
    return [dict(r.headers.request.set) for r in vs.http if r.name.endswith("route service")]


def test_the_table_decides_exact_host_before_wildcard_and_the_path_must_be_a_route() -> None:
    table = {"rs.apps.example.com": _routes("rs.apps.example.com", paths=("/svc",))}
    table["*.wild.example.com"] = _routes("*.wild.example.com")
    lookup = InternalLookup(table.get)
    assert lookup.is_internal("https://rs.apps.example.com/svc/check?x=1")
    assert lookup.is_internal("https://rs.apps.example.com/svc")
    assert not lookup.is_internal("https://rs.apps.example.com/other")  # the host, not this path
    assert lookup.is_internal("https://any.wild.example.com/")  # a wildcard route
    assert not lookup.is_internal("https://rs.elsewhere.example.org/")


def test_the_allowlist_takes_fqdns_and_one_label_wildcards() -> None:
    assert allowlisted("a.example.com", ())  # empty: every route
    assert allowlisted("a.example.com", ("a.example.com",)) and allowlisted("b.example.com", ("*.example.com",))
    assert not allowlisted("x.b.example.com", ("*.example.com",)) and not allowlisted("c.example.org", ("a.example.com",))
    table = {"rs.example.com": _routes("rs.example.com")}
    assert not InternalLookup(table.get, ("other.example.com",)).is_internal("https://rs.example.com/")


def test_a_bound_route_is_marked_only_when_its_route_service_is_ours() -> None:
    ours, theirs = _routes("app.example.com", "https://rs.example.com/x"), _routes("app2.example.com", "https://rs.example.org/")
    lookup = InternalLookup({"rs.example.com": _routes("rs.example.com")}.get)
    assert _proxy_headers(SETTINGS, ours, lookup.is_internal)[0][ROUTE_SERVICE_INTERNAL_HEADER] == "true"
    assert ROUTE_SERVICE_INTERNAL_HEADER not in _proxy_headers(SETTINGS, theirs, lookup.is_internal)[0]
    off = dataclasses.replace(SETTINGS, route_services=RouteServiceSettings())
    assert ROUTE_SERVICE_INTERNAL_HEADER not in _proxy_headers(off, ours, lookup.is_internal)[0]
    assert ROUTE_SERVICE_INTERNAL_HEADER not in _proxy_headers(SETTINGS, ours, None)[0]


def test_hosts_bound_to_a_route_service_host_are_its_dependents() -> None:
    lookup = InternalLookup({}.get)
    lookup.record("a.example.com", ["https://rs.example.com/x"])
    lookup.record("b.example.com", ["https://rs.example.com/y", "https://other.example.com/"])
    assert lookup.dependents(["rs.example.com"]) == {"a.example.com", "b.example.com"}
    assert lookup.dependents(["*.example.com"]) == {"a.example.com", "b.example.com"}  # a wildcard route serves them
    lookup.record("b.example.com", [])  # b no longer bound
    assert lookup.dependents(["rs.example.com", "other.example.com"]) == {"a.example.com"}


def _virtual_service(snapshot, host: str) -> pb.VirtualService:
    vs = snapshot.get(kinds.VIRTUAL_SERVICE, f"{SETTINGS.namespace}/{object_name(host)}")
    if vs is None:
        raise AssertionError(f"no VirtualService for {host}")
    return vs


def _marked(snapshot, host: str) -> bool:
    [to_proxy] = [r for r in _virtual_service(snapshot, host).http if r.name.endswith("route service")]
    return to_proxy.headers.request.set.get(ROUTE_SERVICE_INTERNAL_HEADER) == "true"


def test_publisher_rebuilds_a_bound_host_when_its_route_service_route_comes_and_goes() -> None:
    table, snapshot = Views(), Store()
    publisher = Publisher(table, snapshot, SETTINGS)
    table.bbs.upsert_process("app", ProcessRoutes(http=(HttpRoute("app.example.com", "", 8080, route_service_url="https://rs.example.com/x"),)))
    assert publisher.publish() == 1 and not _marked(snapshot, "app.example.com")  # no such route yet: outside
    table.bbs.upsert_process("rs", ProcessRoutes(http=(HttpRoute("rs.example.com", "", 8080),)))
    assert publisher.publish() == 2 and _marked(snapshot, "app.example.com")  # rs.example.com, and the host bound to it
    table.bbs.remove_process("rs")
    assert publisher.publish() == 2 and not _marked(snapshot, "app.example.com")


def test_copilot_config_takes_internal_lookup_and_its_allowlist() -> None:
    rs = parse({"gateway": {"route_services": {"internal_lookup": True, "internal_lookup_allowlist": ["*.Apps.example.com"]}}})
    expected = RouteServiceSettings(internal_lookup=True, internal_lookup_allowlist=("*.apps.example.com",))
    assert rs.gateway.route_services == expected
    assert parse({"gateway": {"route_services": {}}}).gateway.route_services == RouteServiceSettings()
    with pytest.raises(ConfigError, match=r"gateway.route_services.internal_lookup_allowlist"):
        parse({"gateway": {"route_services": {"internal_lookup_allowlist": ["not a host"]}}})


class _Router(ThreadingHTTPServer):
    """Stands in for the router's own HTTP listener: records what the proxy sends it."""

    daemon_threads = True

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        router = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                router.seen.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}})
                self.send_response(200)
                self.send_header("Content-Length", "6")
                self.end_headers()
                self.wfile.write(b"rs-app")

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.fixture
def router() -> Iterator[_Router]:
    server = _Router()
    yield server
    server.shutdown()
    server.server_close()


def _ask(proxy: RouteServiceProxy, internal: str | None) -> tuple[int, bytes]:
    headers = {"Host": "app.example.com", rs_proxy.ROUTE_HOST_HEADER: "app.example.com", rs_proxy.ROUTE_PATH_HEADER: "/",
               rs_proxy.ROUTE_SERVICE_URL_HEADER: "https://rs.example.invalid/check?a=1"}
    if internal is not None:
        headers[rs_proxy.ROUTE_SERVICE_INTERNAL_HEADER] = internal
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    try:
        connection.request("GET", "/page", headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_the_proxy_sends_a_route_of_ours_to_its_own_router(router: _Router) -> None:
    config = Config(listen=("127.0.0.1", 0), gateway=("127.0.0.1", 1), secret="s", max_attempts=1, connect_timeout_seconds=2,
                    internal_lookup=("127.0.0.1", router.server_address[1]))
    proxy = RouteServiceProxy(config).start()
    try:
        assert _ask(proxy, "true") == (200, b"rs-app")
        [seen] = router.seen
        # The route service's own URL and host, signed as for any route service; no header of ours.
        assert seen["path"] == "/check?a=1" and seen["headers"]["host"] == "rs.example.invalid"
        assert seen["headers"]["x-cf-forwarded-url"] == "https://app.example.com/page" and seen["headers"]["x-cf-proxy-signature"]
        assert not [h for h in seen["headers"] if h.startswith("x-cf-rs-")]
        # Without the route's mark, the route service's own address (here: a name that does not resolve).
        assert _ask(proxy, None)[0] == 502 and len(router.seen) == 1
    finally:
        proxy.stop()
    off = RouteServiceProxy(dataclasses.replace(config, internal_lookup=None)).start()
    try:  # a proxy without internal lookup ignores the mark
        assert _ask(off, "true")[0] == 502 and len(router.seen) == 1
    finally:
        off.stop()


def test_proxy_config_and_header_names() -> None:
    minimal = {"listen": "127.0.0.1:7070", "gateway": "127.0.0.1:7071"}
    assert parse_proxy_config(minimal).internal_lookup is None
    assert parse_proxy_config({**minimal, "internal_lookup": "[::1]:80"}).internal_lookup == ("::1", 80)
    with pytest.raises(Exception, match="internal_lookup"):
        parse_proxy_config({**minimal, "internal_lookup": "router.local:80"})
    with pytest.raises(Exception, match="internal_lookup_https: given without internal_lookup"):
        parse_proxy_config({**minimal, "internal_lookup_https": "127.0.0.1:443"})
    assert rs_proxy.ROUTE_SERVICE_INTERNAL_HEADER == ROUTE_SERVICE_INTERNAL_HEADER
    assert ROUTE_SERVICE_INTERNAL_HEADER in CLIENT_HEADERS_DROPPED  # clients' copies dropped
