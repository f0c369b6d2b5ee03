"""The route-service proxy in process, between a client playing the router's Envoy (sending the route
headers Copilot's routes set), a route service (HTTPS, its own CA) and a stand-in for Envoy's loopback
Gateway server. Signatures are checked with the tests' own implementation (tests/route_service_reference.py)."""

from __future__ import annotations

import dataclasses
import datetime
import http.client
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import route_service_reference as reference
from copilot.istio import builder
from devtools.certs import make_ca
from route_services import proxy as rs_proxy
from route_services.config import Config, ConfigError, parse
from route_services.proxy import RouteServiceProxy

SECRET = "unit-secret"
HOST = "app.example.com"


class Recorder:
    """An HTTP(S) server recording each request (method, path, headers, body); answers with `answer`."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.answer: tuple[int, list[tuple[str, str]], list[bytes]] = (200, [("Content-Type", "text/plain")], [b"app\n"])
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def __getattr__(self, name: str) -> Any:
                if name.startswith("do_"):
                    return self._handle
                raise AttributeError(name)

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                if "chunked" in self.headers.get("Transfer-Encoding", ""):
                    body = b""
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        body += self.rfile.read(size)
                        self.rfile.readline()
                        if not size:
                            break
                else:
                    body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                recorder.requests.append({"method": self.command, "path": self.path, "body": body,
                                          "headers": {k.lower(): v for k, v in self.headers.items()}})
                status, headers, chunks = recorder.answer
                self.send_response_only(status)
                for name, value in headers:
                    self.send_header(name, value)
                if not any(n.lower() in ("content-length", "transfer-encoding") for n, _ in headers):
                    self.send_header("Connection", "close")  # a body delimited by the end of the connection
                    self.close_connection = True
                self.end_headers()
                if self.command != "HEAD":
                    for chunk in chunks:
                        self.wfile.write(chunk)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*map(str, tls))
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclasses.dataclass
class Setup:
    proxy: RouteServiceProxy
    service: Recorder
    gateway: Recorder
    service_url: str

    def request(self, method: str = "GET", target: str = "/guarded/x?q=1", headers: dict | None = None,
                body: bytes | None = None, *, route: dict | None = None, host: str = f"{HOST}:8080"):
        """A request as the router's Envoy sends it (the route's headers set): (status, headers, body)."""
        route_headers = {
            rs_proxy.ROUTE_HOST_HEADER: HOST,
            rs_proxy.ROUTE_PATH_HEADER: "/guarded",
            rs_proxy.ROUTE_SERVICE_URL_HEADER: self.service_url,
            **(route or {}),
        }
        connection = http.client.HTTPConnection("127.0.0.1", self.proxy.port, timeout=10)
        try:
            all_headers = {"Host": host, **route_headers, **(headers or {})}
            connection.request(method, target, body=body, headers=all_headers,
                               encode_chunked="Transfer-Encoding" in all_headers)
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("rs-pki")
    ca = make_ca(root, "rs-ca")
    other = make_ca(root / "other", "other-ca")
    return {
        "ca": ca,
        "server": ca.issue("route-service", root, ip_addresses=["127.0.0.1"], client=False),
        "misnamed": ca.issue("misnamed", root, dns_names=["elsewhere.example.com"], client=False),
        "untrusted": other.issue("untrusted", root / "other", ip_addresses=["127.0.0.1"], client=False),
    }


def _config(gateway_port: int, pki, **overrides) -> Config:
    base = Config(listen=("127.0.0.1", 0), gateway=("127.0.0.1", gateway_port), secret=SECRET,
                  ca_certs=(pki["ca"].cert_path.read_text(),), connect_timeout_seconds=2, max_attempts=2)
    return dataclasses.replace(base, **overrides)


@pytest.fixture
def setup(pki) -> Iterator[Setup]:
    service, gateway = Recorder(tls=(pki["server"].cert_path, pki["server"].key_path)), Recorder()
    proxy = RouteServiceProxy(_config(gateway.port, pki)).start()
    yield Setup(proxy, service, gateway, f"https://127.0.0.1:{service.port}/rs/check?token=a%2Fb")
    proxy.stop()
    service.stop()
    gateway.stop()


def test_a_request_without_signature_goes_to_the_route_service_signed(setup: Setup) -> None:
    setup.service.answer = (207, [("Content-Type", "x/y"), ("Content-Length", "5"), ("X-From", "service")], [b"hello"])
    status, headers, body = setup.request(headers={"X-Custom": "1", "X-Forwarded-Proto": "http",
                                                   "X-Envoy-Attempt-Count": "1", "Connection": "keep-alive, X-Hop",
                                                   "X-Hop": "dropped"})
    assert (status, body, headers["x-from"], headers["content-type"]) == (207, b"hello", "service", "x/y")
    [received] = setup.service.requests
    # The route service's own URL (path and query); the original URL only in X-CF-Forwarded-Url.
    assert (received["method"], received["path"]) == ("GET", "/rs/check?token=a%2Fb")
    sent = received["headers"]
    assert sent["host"] == f"127.0.0.1:{setup.service.port}"
    assert sent["x-cf-forwarded-url"] == f"https://{HOST}/guarded/x?q=1"  # https, the host without its port
    contents = reference.open_signature(SECRET, sent["x-cf-proxy-signature"], sent["x-cf-proxy-metadata"])
    assert contents["forwarded_url"] == sent["x-cf-forwarded-url"]
    assert abs(datetime.datetime.now(datetime.UTC) - contents["requested_time"]) < datetime.timedelta(seconds=5)
    assert sent["x-custom"] == "1" and sent["x-forwarded-proto"] == "http"
    # Not passed on: the route's headers, Envoy's, hop-by-hop ones (and those Connection names).
    assert not [h for h in sent if h.startswith(("x-cf-rs-", "x-envoy-"))] and "x-hop" not in sent
    assert setup.gateway.requests == []


def test_the_forwarded_url_follows_recommend_https(pki) -> None:
    service, gateway = Recorder(tls=(pki["server"].cert_path, pki["server"].key_path)), Recorder()
    proxy = RouteServiceProxy(_config(gateway.port, pki, recommend_https=False)).start()
    try:
        Setup(proxy, service, gateway, f"https://127.0.0.1:{service.port}/").request(target="/guarded")
        assert service.requests[0]["headers"]["x-cf-forwarded-url"] == f"http://{HOST}/guarded"
    finally:
        proxy.stop()
        service.stop()
        gateway.stop()


def test_bodies_stream_both_ways_with_and_without_length(setup: Setup) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    setup.service.answer = (200, [("Transfer-Encoding", "chunked")], [b"5\r\nhello\r\n", b"6\r\n world\r\n", b"0\r\n\r\n"])
    status, headers, answer = setup.request("POST", body=body)
    assert (status, answer) == (200, b"hello world")
    assert setup.service.requests[-1]["body"] == body
    # A chunked request body stays chunked; an answer delimited by closing is re-chunked for Envoy.
    setup.service.answer = (200, [], [b"until ", b"close"])
    status, headers, answer = setup.request("PUT", body=iter([b"a" * 70000, b"b" * 10]), headers={"Transfer-Encoding": "chunked"})
    assert (status, answer, headers.get("transfer-encoding")) == (200, b"until close", "chunked")
    assert setup.service.requests[-1]["body"] == b"a" * 70000 + b"b" * 10
    setup.service.answer = (200, [("Content-Length", "3")], [b"abc"])
    status, headers, answer = setup.request("HEAD")
    assert (status, answer, headers["content-length"]) == (200, b"", "3")


def test_keep_alive_connections_carry_request_after_request(setup: Setup) -> None:
    setup.service.answer = (200, [("Content-Length", "2")], [b"ok"])
    connection = http.client.HTTPConnection("127.0.0.1", setup.proxy.port, timeout=10)
    route = {rs_proxy.ROUTE_HOST_HEADER: HOST, rs_proxy.ROUTE_PATH_HEADER: "/guarded",
             rs_proxy.ROUTE_SERVICE_URL_HEADER: setup.service_url, "Host": HOST}
    for _ in range(3):
        connection.request("POST", "/guarded", body=b"x" * 100, headers=route)
        assert connection.getresponse().read() == b"ok"
    # A refused request with a body it did not read closes the connection rather than misread the next.
    connection.request("POST", "/guarded", body=b"y" * 100, headers={**route, "X-CF-Proxy-Signature": "bad"})
    response = connection.getresponse()
    assert (response.status, response.getheader("connection")) == (502, "close")
    connection.close()


def test_a_valid_return_trip_goes_to_the_loopback_gateway_without_the_protocols_headers(setup: Setup) -> None:
    signature, metadata = reference.seal(SECRET, f"https://{HOST}/guarded/x?q=1")
    setup.gateway.answer = (201, [("Content-Length", "4"), ("Set-Cookie", "a=b")], [b"app\n"])
    status, headers, body = setup.request(
        "POST", "/guarded/x?q=1", {"X-CF-Proxy-Signature": signature, "X-CF-Proxy-Metadata": metadata,
                                   "X-CF-Forwarded-Url": "https://whatever", "X-Forwarded-Proto": "https", "X-Keep": "1"},
        body=b"payload",
    )
    assert (status, body, headers["set-cookie"]) == (201, b"app\n", "a=b")
    [received] = setup.gateway.requests
    assert (received["method"], received["path"], received["body"]) == ("POST", "/guarded/x?q=1", b"payload")
    sent = received["headers"]
    assert sent["host"] == f"{HOST}:8080"  # the request's own Host, for Envoy's routing
    assert sent["x-keep"] == "1"
    assert not {"x-cf-proxy-signature", "x-cf-proxy-metadata", "x-cf-forwarded-url"} & set(sent)
    # The scheme the router saw, for the loopback Gateway's route to restore; nothing else of ours.
    assert [h for h in sent if h.startswith("x-cf-rs-")] == [rs_proxy.FORWARDED_PROTO_HEADER]
    assert sent[rs_proxy.FORWARDED_PROTO_HEADER] == "https"
    assert setup.service.requests == []


def test_a_signature_made_with_the_decrypt_only_secret_is_accepted(pki) -> None:
    gateway = Recorder()
    proxy = RouteServiceProxy(_config(gateway.port, pki, secret="new", secret_decrypt_only=SECRET)).start()
    try:
        setup = Setup(proxy, Recorder(), gateway, "https://127.0.0.1:1/")
        for secret in (SECRET, "new"):
            signature, metadata = reference.seal(secret, f"https://{HOST}/guarded")
            status, _, _ = setup.request(target="/guarded", headers={"X-CF-Proxy-Signature": signature,
                                                                      "X-CF-Proxy-Metadata": metadata})
            assert status == 200
        signature, metadata = reference.seal("older", f"https://{HOST}/guarded")
        assert setup.request(target="/guarded", headers={"X-CF-Proxy-Signature": signature,
                                                          "X-CF-Proxy-Metadata": metadata})[0] == 502
        setup.service.stop()
    finally:
        proxy.stop()
        gateway.stop()


def _refusal(result, status: int, message: str) -> None:
    got_status, headers, body = result
    assert got_status == status, body
    assert body.decode() == f"{status} {http.client.responses[status]}: {message}\n"
    assert headers["content-type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize(
    ("signed_url", "request_target", "route", "message"),
    [
        # another host
        ("https://other.example.com/guarded/x", "/guarded/x", {},
         f"route service forwarded URL {HOST}/guarded does not match the original request URL other.example.com/guarded/x"),
        # the host's root (not this route), and a path that only starts like the context path
        (f"https://{HOST}/x", "/guarded/x", {}, "does not match the original request URL app.example.com/x"),
        (f"https://{HOST}/guardedness", "/guarded/x", {}, "does not match"),
        # a longer context path of the host is another route
        (f"https://{HOST}/guarded/inner/x", "/guarded/x", {rs_proxy.ROUTE_EXCLUDED_HEADER: "/guarded/inner /guarded/z"},
         "does not match the original request URL app.example.com/guarded/inner/x"),
        ("not a url", "/guarded/x", {}, "original request URL not a url does not exist in the routing table"),
    ],
)
def test_a_signature_for_another_route_is_refused(setup: Setup, signed_url, request_target, route, message) -> None:
    signature, metadata = reference.seal(SECRET, signed_url)
    status, headers, body = setup.request(target=request_target, route=route,
                                          headers={"X-CF-Proxy-Signature": signature, "X-CF-Proxy-Metadata": metadata})
    assert status == 502 and "x-cf-routererror" not in headers
    assert body.startswith(b"502 Bad Gateway: Failed to validate Route Service Signature: ") and message.encode() in body
    assert setup.gateway.requests == [] and setup.service.requests == []


def test_the_same_route_in_another_case_or_with_a_port_is_this_route(setup: Setup) -> None:
    signature, metadata = reference.seal(SECRET, "https://APP.example.com:443/guarded")
    status, _, _ = setup.request(target="/guarded/deeper", headers={"X-CF-Proxy-Signature": signature,
                                                                     "X-CF-Proxy-Metadata": metadata})
    assert status == 200
    # The root route accepts any path of its host that no longer context path takes.
    signature, metadata = reference.seal(SECRET, f"https://{HOST}/any/where")
    status, _, _ = setup.request(target="/any/where", route={rs_proxy.ROUTE_PATH_HEADER: "/"},
                                 headers={"X-CF-Proxy-Signature": signature, "X-CF-Proxy-Metadata": metadata})
    assert status == 200


def test_tampered_expired_and_incomplete_signatures_get_gorouters_answers(setup: Setup) -> None:
    url = f"https://{HOST}/guarded/x"
    signature, metadata = reference.seal(SECRET, url)
    tampered = signature[:4] + ("A" if signature[4] != "A" else "B") + signature[5:]

    def back(sig: str, meta: str):
        return setup.request(target="/guarded/x", headers={"X-CF-Proxy-Signature": sig, "X-CF-Proxy-Metadata": meta})

    _refusal(back(tampered, metadata), 502, "Failed to validate Route Service Signature: cipher: message authentication failed")
    _refusal(back(signature, ""), 502, "Failed to validate Route Service Signature: No metadata found")
    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=61)
    expired = reference.seal(SECRET, url, old)
    _refusal(back(*expired), 504, "Failed to validate Route Service Signature: route service request expired")
    assert setup.gateway.requests == [] and setup.service.requests == []


def test_without_a_secret_every_request_is_refused_as_unsupported(pki) -> None:
    gateway = Recorder()
    proxy = RouteServiceProxy(_config(gateway.port, pki, secret="")).start()
    try:
        result = Setup(proxy, Recorder(), gateway, "https://127.0.0.1:1/").request()
        _refusal(result, 502, "Support for route services is disabled.")
        assert result[1]["x-cf-routererror"] == "route_service_unsupported"
    finally:
        proxy.stop()
        gateway.stop()


def test_only_requests_with_the_routers_token_are_served(pki) -> None:
    # The job gives its Envoy and the proxy one token: another process on the VM cannot get signatures.
    service, gateway = Recorder(tls=(pki["server"].cert_path, pki["server"].key_path)), Recorder()
    proxy = RouteServiceProxy(_config(gateway.port, pki, local_token="t0ken")).start()
    try:
        setup = Setup(proxy, service, gateway, f"https://127.0.0.1:{service.port}/")
        _refusal(setup.request(), 500, "Route service request failed.")
        _refusal(setup.request(headers={rs_proxy.TOKEN_HEADER: "guess"}), 500, "Route service request failed.")
        signature, metadata = reference.seal(SECRET, f"https://{HOST}/guarded")
        _refusal(setup.request(target="/guarded", headers={"X-CF-Proxy-Signature": signature, "X-CF-Proxy-Metadata": metadata}),
                 500, "Route service request failed.")
        assert service.requests == [] and gateway.requests == []
        assert setup.request(headers={rs_proxy.TOKEN_HEADER: "t0ken"})[0] == 200
        assert rs_proxy.TOKEN_HEADER not in service.requests[0]["headers"]  # never passed on
    finally:
        proxy.stop()
        service.stop()
        gateway.stop()


def test_websocket_upgrades_are_refused(setup: Setup) -> None:
    result = setup.request(headers={"Upgrade": "websocket", "Connection": "Upgrade"})
    _refusal(result, 503, "Websocket requests are not supported for routes bound to Route Services.")
    assert result[1]["x-cf-routererror"] == "route_service_unsupported"


def test_a_request_without_its_routes_headers_fails(setup: Setup) -> None:
    _refusal(setup.request(route={rs_proxy.ROUTE_SERVICE_URL_HEADER: ""}), 500, "Route service request failed.")
    _refusal(setup.request(route={rs_proxy.ROUTE_SERVICE_URL_HEADER: "http://plain.example.com/"}), 500,
             "Route service request failed.")


def test_route_service_failures_answer_as_gorouter(setup: Setup, pki) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    status, headers, body = setup.request(route={rs_proxy.ROUTE_SERVICE_URL_HEADER: f"https://127.0.0.1:{port}/"})
    assert (status, body) == (502, b"502 Bad Gateway: Registered endpoint failed to handle the request.\n")
    assert headers["x-cf-routererror"].startswith("endpoint_failure (")
    for pair, expected_status, expected_body in (("untrusted", 526, b"526 Invalid SSL Certificate\n"),
                                                 ("misnamed", 503, b"503 Service Unavailable\n")):
        other = Recorder(tls=(pki[pair].cert_path, pki[pair].key_path))
        try:
            status, headers, body = setup.request(route={rs_proxy.ROUTE_SERVICE_URL_HEADER: f"https://127.0.0.1:{other.port}/"})
        finally:
            other.stop()
        assert (status, body) == (expected_status, expected_body), pair
        assert headers["x-cf-routererror"].startswith("endpoint_failure ("), headers
        assert other.requests == []


def test_skip_ssl_validation_accepts_any_certificate(pki) -> None:
    service, gateway = Recorder(tls=(pki["untrusted"].cert_path, pki["untrusted"].key_path)), Recorder()
    proxy = RouteServiceProxy(_config(gateway.port, pki, skip_ssl_validation=True)).start()
    try:
        assert Setup(proxy, service, gateway, f"https://127.0.0.1:{service.port}/").request()[0] == 200
    finally:
        proxy.stop()
        service.stop()
        gateway.stop()


def test_the_header_names_are_copilots() -> None:
    # Copilot's routes set these and the router filter strips client copies: the two packages must agree.
    assert (rs_proxy.ROUTE_HOST_HEADER, rs_proxy.ROUTE_PATH_HEADER, rs_proxy.ROUTE_SERVICE_URL_HEADER,
            rs_proxy.ROUTE_EXCLUDED_HEADER, rs_proxy.FORWARDED_PROTO_HEADER, rs_proxy.TOKEN_HEADER) == (
        builder.ROUTE_SERVICE_HOST_HEADER, builder.ROUTE_SERVICE_PATH_HEADER, builder.ROUTE_SERVICE_URL_HEADER,
        builder.ROUTE_SERVICE_EXCLUDED_HEADER, builder.ROUTE_SERVICE_FORWARDED_PROTO_HEADER, builder.ROUTE_SERVICE_TOKEN_HEADER)


# ---------------------------------------------------------------- config


def test_the_config_file_is_validated(tmp_path: Path) -> None:
    minimal = {"listen": "127.0.0.1:7070", "gateway": "127.0.0.1:7071"}
    config = parse({**minimal, "secret": "s"})
    assert (config.listen, config.gateway, config.timeout_seconds, config.recommend_https, config.max_attempts) == (
        ("127.0.0.1", 7070), ("127.0.0.1", 7071), 60.0, True, 3)
    for bad, key in (
        ({**minimal, "listen": "0.0.0.0:7070"}, "listen"),  # loopback only
        ({**minimal, "gateway": "10.0.0.1:7071"}, "gateway"),
        ({**minimal, "gateway": "127.0.0.1:7070"}, "gateway"),
        ({**minimal, "secret_decrypt_only": "old"}, "secret_decrypt_only"),
        ({**minimal, "timeout_seconds": 0}, "timeout_seconds"),
        ({**minimal, "ca_certs": ["not pem"]}, "ca_certs"),
        ({**minimal, "client_cert": str(tmp_path / "missing.crt"), "client_key": str(tmp_path / "missing.key")}, "client_cert"),
        ({**minimal, "client_cert": "x"}, "client_cert"),
        ({**minimal, "surprise": 1}, "surprise"),
        ({"gateway": "127.0.0.1:7071"}, "listen"),
    ):
        with pytest.raises(ConfigError, match=f"^{key}:"):
            parse(bad)


def test_the_cli_checks_a_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from route_services.__main__ import main

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"listen": "127.0.0.1:7070", "gateway": "127.0.0.1:7071", "secret": "s"}))
    assert main(["--config", str(path), "--check"]) == 0
    assert "route services on" in capsys.readouterr().out
    path.write_text("{")
    assert main(["--config", str(path), "--check"]) == 2
