"""Route services (gorouter's protocol, issue 13) through the real istiod and Envoy, the router's
route-service proxy and a v58 cell, on the local tier as it ships (manifests/local.yml: Copilot's
gateway.route_services on, the router's route_services_secret from the vars store).

A route service of the tests' own (HTTPS on loopback, its certificate from a CA the router trusts)
checks every request's signature with the tests' independent implementation of the algorithm
(tests/route_service_reference.py), then sends the request back to its X-CF-Forwarded-Url through the
router, as a route service does. Signatures made by that implementation are sent to the router
directly, to check its answers to valid, tampered, expired and misdirected ones."""

from __future__ import annotations

import datetime
import hashlib
import http.client
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

import route_service_reference as reference
from devtools.certs import CA
from devtools.tier import Tier, start_tier_with_ops, wait_until
from devtools.websocket import WebSocketClient
from local_tier import render

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host", "content-length"}
# The sample app answers with its request headers (JSON) on any path ending in /headers, query included.
HEADERS = "/headers"


def _router_https(tier: Tier, server_name: str) -> http.client.HTTPSConnection:
    """An HTTPS connection to the router's HTTPS port with `server_name` as SNI, the router CA trusted."""
    context = ssl.create_default_context(cafile=str(tier.router_ca))
    connection = http.client.HTTPSConnection("127.0.0.1", tier.https_port, timeout=10, context=context)
    connection.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", tier.https_port), timeout=10),
                                          server_hostname=server_name)
    return connection


def _call(tier: Tier, url: str, method: str = "GET", headers: dict | None = None, body: bytes | None = None):
    """A request to `url` (https://<host><path>) through the router's HTTPS port: (status, headers, body)."""
    parts = urlsplit(url)
    connection = _router_https(tier, parts.hostname or "")
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.request(method, target or "/", body=body, headers={"Host": parts.netloc, **(headers or {})})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


class RouteService:
    """The tests' route service. Every request is recorded with the outcome of checking its signature;
    a request to `/forward...` is then sent back to its X-CF-Forwarded-Url through the router (method,
    headers and body as received) and the router's answer returned; any other path answers itself
    (201, a JSON summary of what arrived)."""

    def __init__(self, tier: Tier, workdir: Path) -> None:
        variables = render.variables(tier.layout)
        self.secret: str = variables["router_route_services_secret"]
        ca_vars = variables["test_route_service_ca"]
        ca = CA.from_pem(workdir, "test-route-service-ca", ca_vars["certificate"], ca_vars["private_key"])
        pair = ca.issue("route-service", workdir, ip_addresses=["127.0.0.1"], server=True)
        self.requests: list[dict[str, Any]] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def __getattr__(self, name: str) -> Any:
                if name.startswith("do_"):
                    return self._handle
                raise AttributeError(name)

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                record: dict[str, Any] = {"method": self.command, "path": self.path, "headers": dict(self.headers.items()),
                                          "body": body}
                try:
                    record["signed"] = reference.open_signature(
                        service.secret, self.headers["X-CF-Proxy-Signature"], self.headers["X-CF-Proxy-Metadata"]
                    )
                except Exception as error:  # noqa: BLE001 (recorded for the test to see)
                    record["signature_error"] = repr(error)
                service.requests.append(record)
                if self.path.startswith("/forward"):
                    self._forward(body)
                else:
                    summary = {"method": self.command, "bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
                    self._answer(201, {"content-type": "application/json", "x-route-service": "answered"},
                                 json.dumps(summary).encode())

            def _forward(self, body: bytes) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                status, answer_headers, answer = _call(
                    tier, self.headers["X-CF-Forwarded-Url"], self.command, headers, body if body else None
                )
                answer_headers = {k: v for k, v in answer_headers.items() if k not in HOP_BY_HOP | {"date", "server"}}
                self._answer(status, {**answer_headers, "x-route-service": "forwarded"}, answer)

            def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(pair.cert_path), str(pair.key_path))
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name="route-service", daemon=True).start()

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def route_service(tier: Tier, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouteService]:
    service = RouteService(tier, tmp_path_factory.mktemp("route-service"))
    yield service
    service.stop()


def _bound_app(tier: Tier, apps: list, unique: str, service_url: str, *, extra_paths: tuple[str, ...] = ()) -> tuple[str, str]:
    """An app (log guid `<unique>-app`, one instance `<unique>-i0`) on `<unique>.example.com`, its
    `/guarded` path bound to the route service `service_url`, its root and `extra_paths` not."""
    host, app_guid = f"{unique}.example.com", f"{unique}-app"
    routes = [{"hostnames": [host], "port": 8080},
              {"hostnames": [f"{host}/guarded"], "port": 8080, "route_service_url": service_url}]
    routes += [{"hostnames": [f"{host}{path}"], "port": 8080} for path in extra_paths]
    tier.bbs.desire_lrp(f"{unique}-pg", http_routes=routes, log_guid=app_guid)
    apps.append(tier.start_instance(f"{unique}-pg", 0, f"{unique}-i0"))
    wait_until(lambda: tier.get(host).status_code == 200, message=f"{host} to serve")
    return host, app_guid


def test_a_request_goes_through_its_route_service_and_comes_back_to_the_app(
    tier: Tier, apps: list, unique: str, route_service: RouteService
) -> None:
    host, app_guid = _bound_app(tier, apps, unique, route_service.url("/forward/check?service=1"))
    wait_until(lambda: tier.get(host, "/guarded/headers").headers.get("x-route-service") == "forwarded",
               message="the route through the route service")
    route_service.requests.clear()

    response = tier.get(host, f"/guarded/a%20b?q=a%20b&x=1&then={HEADERS}")
    assert (response.status_code, response.headers.get("x-route-service")) == (200, "forwarded"), response.text
    # The app answered (its request headers as JSON), without the route service protocol's headers.
    seen_by_app = response.json()
    assert seen_by_app["x-cf-applicationid"] == app_guid and seen_by_app["x-cf-instanceid"] == f"{unique}-i0"
    assert not {"x-cf-proxy-signature", "x-cf-proxy-metadata", "x-cf-forwarded-url"} & set(seen_by_app), seen_by_app
    assert not [name for name in seen_by_app if name.startswith("x-cf-rs-")], seen_by_app
    assert seen_by_app["x-forwarded-proto"] == "https"  # the route service came back over HTTPS

    # The route service got the request at its own URL, signed: the tests' own implementation opens the
    # signature, which names the original URL (https, the host without port) at about now.
    [received] = route_service.requests
    assert (received["method"], received["path"]) == ("GET", "/forward/check?service=1")
    headers = {k.lower(): v for k, v in received["headers"].items()}
    forwarded_url = f"https://{host}/guarded/a%20b?q=a%20b&x=1&then={HEADERS}"
    assert headers["x-cf-forwarded-url"] == forwarded_url
    assert headers["host"] == f"127.0.0.1:{route_service.port}"
    assert "signature_error" not in received, received["signature_error"]
    assert received["signed"]["forwarded_url"] == forwarded_url
    age = datetime.datetime.now(datetime.UTC) - received["signed"]["requested_time"]
    assert datetime.timedelta(seconds=-5) < age < datetime.timedelta(seconds=30), age
    assert "x-cf-applicationid" not in headers and "x-cf-instanceid" not in headers  # gorouter sends none to services
    assert not [name for name in headers if name.startswith("x-cf-rs-")], headers

    # Only the router's own Envoy can have requests signed: another process on the VM, at the proxy's
    # loopback port without the job's token, gets nothing signed.
    route_service.requests.clear()
    connection = http.client.HTTPConnection("127.0.0.1", tier.ports["router_route_services_proxy_port"], timeout=5)
    connection.request("GET", "/guarded", headers={"Host": host, "x-cf-rs-route-host": host, "x-cf-rs-route-path": "/guarded",
                                                  "x-cf-rs-route-service-url": route_service.url("/forward")})
    response = connection.getresponse()
    assert (response.status, response.read()) == (500, b"500 Internal Server Error: Route service request failed.\n")
    connection.close()
    assert route_service.requests == []

    # The host's other paths are not bound: straight to the app.
    direct = tier.get(host, "/other/headers").json()
    assert direct["x-cf-applicationid"] == app_guid and "x-cf-forwarded-url" not in direct


def test_method_body_and_answer_pass_through_the_route_service_unchanged(
    tier: Tier, apps: list, unique: str, route_service: RouteService
) -> None:
    host, _ = _bound_app(tier, apps, unique, route_service.url("/answer"))
    wait_until(lambda: tier.get(host, "/guarded").status_code == 201, message="the route through the route service")
    body = bytes(range(256)) * 1024  # 256 KiB
    connection = http.client.HTTPConnection("127.0.0.1", tier.http_port, timeout=10)
    connection.request("PUT", "/guarded/upload", body=body, headers={"Host": host, "X-Custom": "kept"})
    response = connection.getresponse()
    answer = response.read()
    connection.close()
    assert (response.status, response.getheader("x-route-service")) == (201, "answered")
    assert json.loads(answer) == {"method": "PUT", "bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    received = route_service.requests[-1]
    headers = {k.lower(): v for k, v in received["headers"].items()}
    assert received["body"] == body and headers.get("x-custom") == "kept"
    assert "signature_error" not in received and received["signed"]["forwarded_url"] == f"https://{host}/guarded/upload"


def test_signatures_the_router_did_not_make_for_this_route_are_refused(
    tier: Tier, apps: list, unique: str, route_service: RouteService
) -> None:
    # The route service's return trip, played by the test: requests to the router carrying signatures
    # the tests' implementation made. A valid one reaches the app; every other gets gorouter's answer.
    host, app_guid = _bound_app(tier, apps, unique, route_service.url("/forward"), extra_paths=("/guarded/inner",))
    secret = route_service.secret
    url = f"https://{host}/guarded/headers"

    def back(signature: str, metadata: str, target: str = url) -> tuple[int, dict, bytes]:
        return _call(tier, target, headers={"X-CF-Proxy-Signature": signature, "X-CF-Proxy-Metadata": metadata,
                                            "X-CF-Forwarded-Url": target})

    wait_until(lambda: back(*reference.seal(secret, url))[0] == 200, message="a valid signature to reach the app")
    status, headers, body = back(*reference.seal(secret, url))
    seen = json.loads(body)
    assert status == 200 and seen["x-cf-applicationid"] == app_guid, body
    assert not {"x-cf-proxy-signature", "x-cf-proxy-metadata", "x-cf-forwarded-url"} & set(seen)

    def refused(status: int, headers: dict, body: bytes, expected_status: int, message: str) -> None:
        reason = http.client.responses[expected_status]
        assert status == expected_status, (status, body)
        assert body.decode() == f"{expected_status} {reason}: Failed to validate Route Service Signature: {message}\n"
        assert headers["content-type"] == "text/plain; charset=utf-8"
        assert "x-cf-routererror" not in headers  # gorouter sets none on these
        assert b"x-cf-applicationid" not in body.lower()

    signature, metadata = reference.seal(secret, url)
    tampered = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    refused(*back(tampered, metadata), 502, "cipher: message authentication failed")
    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=61)
    refused(*back(*reference.seal(secret, url, old)), 504, "route service request expired")
    refused(*back(signature, ""), 502, "No metadata found")
    refused(*back(*reference.seal("another foundation's secret", url)), 502, "cipher: message authentication failed")
    # Valid signatures, for other routes: another host, the host's unbound root, a longer context path.
    for other in (f"https://other-{host}/guarded/headers", f"https://{host}/headers", f"https://{host}/guarded/inner/x"):
        status, headers, body = back(*reference.seal(secret, other))
        prefix = b"502 Bad Gateway: Failed to validate Route Service Signature: route service forwarded URL "
        assert status == 502 and body.startswith(prefix), body
    # The URL in the header is never what counts: the signature's is.
    status, _, body = back(*reference.seal(secret, f"https://{host}/headers"), target=url)
    assert status == 502, body


def test_websocket_upgrades_are_refused_on_a_route_service_route(
    tier: Tier, apps: list, unique: str, route_service: RouteService
) -> None:
    host, _ = _bound_app(tier, apps, unique, route_service.url("/forward"))
    wait_until(lambda: tier.get(host, "/guarded").headers.get("x-route-service") == "forwarded", message="the bound route")
    client = WebSocketClient(("127.0.0.1", tier.http_port), host, path="/guarded")
    try:
        assert (client.accepted, client.status) == (False, 503), (client.status, client.headers)
        assert client.headers.get("x-cf-routererror") == "route_service_unsupported"
    finally:
        client.close()
    accepted = WebSocketClient(("127.0.0.1", tier.http_port), host, path="/open")
    try:
        assert accepted.accepted  # the host's unbound paths upgrade as ever
    finally:
        accepted.close()


# ---------------------------------------------------------------- without a secret: fail closed

# The job defaults: Copilot's gateway.route_services off, no route_services_secret on the router.
_NO_SECRET_OPS = """
- type: remove
  path: /instance_groups/name=local/jobs/name=copilot/properties/gateway/route_services
- type: remove
  path: /instance_groups/name=local/jobs/name=istio-router/properties/route_services_secret
"""


@pytest.fixture(scope="module")
def tier_without_secret(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tier]:
    tier = start_tier_with_ops(tmp_path_factory.mktemp("tier-no-route-services"), "no-route-services", _NO_SECRET_OPS)
    yield tier
    tier.stop()


def test_a_route_bound_to_a_route_service_fails_closed_without_a_secret(tier_without_secret: Tier, apps, unique) -> None:
    # gorouter without route_services_secret: 502 with X-Cf-Routererror: route_service_unsupported, a
    # WebSocket upgrade too (gorouter checks that route services are on first); the app is never
    # reached, which would bypass an authentication or rate-limiting service. The host's other paths,
    # without a service, keep serving.
    tier = tier_without_secret
    host = f"{unique}.example.com"
    tier.bbs.desire_lrp(
        f"{unique}-pg",
        http_routes=[
            {"hostnames": [host], "port": 8080},
            {"hostnames": [f"{host}/guarded"], "port": 8080, "route_service_url": "https://rs.example.org/check"},
        ],
    )
    apps.append(tier.start_instance(f"{unique}-pg", 0, f"{unique}-i0"))
    wait_until(lambda: tier.get(host).status_code == 200, message=f"{host} to serve")
    for path in ("/guarded", "/guarded/deeper?x=1"):
        refused = tier.get(host, path)
        assert (refused.status_code, refused.headers.get("X-Cf-Routererror")) == (502, "route_service_unsupported")
        assert refused.text == "502 Bad Gateway: Support for route services is disabled.\n"
    client = WebSocketClient(("127.0.0.1", tier.http_port), host, path="/guarded")
    try:
        assert (client.accepted, client.status) == (False, 502), (client.status, client.headers)
        assert client.headers.get("x-cf-routererror") == "route_service_unsupported"
    finally:
        client.close()
    assert tier.get(host, "/other").text.strip() == f"{unique}-i0"


# ---------------------------------------------------------------- internal lookup

_INTERNAL_LOOKUP_OPS = """
# What istio-routing-internal-route-services.yml sets, on the local tier's group.
- type: replace
  path: /instance_groups/name=local/jobs/name=copilot/properties/gateway/route_services/internal_lookup?
  value: true
"""


@pytest.fixture(scope="module")
def tier_with_internal_lookup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tier]:
    tier = start_tier_with_ops(tmp_path_factory.mktemp("tier-internal-lookup"), "internal-lookup", _INTERNAL_LOOKUP_OPS)
    yield tier
    tier.stop()


def test_internal_lookup_sends_a_route_service_that_is_an_app_through_the_router(
    tier_with_internal_lookup: Tier, apps, unique
) -> None:
    # gorouter's route_services_internal_lookup: the route service is an app of this foundation, so the
    # router hands it the signed request itself (its name resolves nowhere here: the load balancer's way
    # would fail). The app is routed first, its route service second: Copilot rebuilds the bound route
    # when its route service's route appears.
    tier = tier_with_internal_lookup
    host, service_host = f"{unique}.example.com", f"{unique}-rs.example.com"
    tier.bbs.desire_lrp(f"{unique}-pg", http_routes=[
        {"hostnames": [f"{host}/guarded"], "port": 8080, "route_service_url": f"https://{service_host}/check{HEADERS}"}])
    apps.append(tier.start_instance(f"{unique}-pg", 0, f"{unique}-i0"))
    wait_until(lambda: tier.get(host, "/guarded").status_code == 502, message="the bound route (its service unknown yet)")
    tier.bbs.desire_lrp(f"{unique}-rs", http_routes=[{"hostnames": [service_host], "port": 8080}])
    apps.append(tier.start_instance(f"{unique}-rs", 0, f"{unique}-rs0"))
    wait_until(lambda: tier.get(host, "/guarded/x").status_code == 200, message="the route service through the router")
    # The route service app (it answers with the headers it got) was reached through the router, at its
    # own URL, with the route service protocol's signed headers for the original URL.
    seen = tier.get(host, "/guarded/x?q=1").json()
    assert seen["x-cf-instanceid"] == f"{unique}-rs0", seen
    assert seen["x-cf-forwarded-url"] == f"https://{host}/guarded/x?q=1"
    assert seen["x-cf-proxy-signature"] and seen["x-cf-proxy-metadata"]
    assert not [name for name in seen if name.startswith("x-cf-rs-")], seen
    # The client's scheme, as the route service would see it through the load balancer (gorouter's
    # internal listener is HTTPS: the proxy uses the router's HTTPS listener for HTTPS requests).
    assert seen["x-forwarded-proto"] == "http", seen
    status, _, body = _call(tier, f"https://{host}/guarded/x")
    assert status == 200 and json.loads(body)["x-forwarded-proto"] == "https", body
