"""Router parity with gorouter and tcp-router (issue #7), through the real istiod and Envoy: TLS with SNI,
TCP routes, the headers apps rely on, unknown routes, HTTP/2 to apps, WebSockets, sticky sessions and
access logs. docs/gorouter-parity.md maps every gorouter feature to these tests."""

from __future__ import annotations

import collections
import http.client
import json
import re
import socket
import ssl
import threading
import time
import uuid

import pytest
import requests

from devtools.apps import AppInstance, H2cApp
from devtools.ports import free_port
from devtools.tier import Tier, wait_until
from devtools.websocket import WebSocketClient

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _start(tier: Tier, apps: list, process: str, index: int, guid: str, **kwargs) -> AppInstance:
    app = AppInstance(guid)
    apps.append(app)
    tier.bbs.start_instance(process, index, host_port=app.port, instance_guid=guid, **kwargs)
    return app


def _route(tier: Tier, apps: list, unique: str, *, instances: int = 1, host: str | None = None) -> tuple[str, str]:
    """An app (guid `<unique>-app`) with `instances` instances on `host`; waits until it serves."""
    host = host or f"{unique}.example.com"
    app_guid = f"{unique}-app"
    tier.bbs.desire_lrp(f"{unique}-pg", http_routes=[{"hostnames": [host], "port": 8080}], instances=instances,
                        log_guid=app_guid)
    for index in range(instances):
        _start(tier, apps, f"{unique}-pg", index, f"{unique}-i{index}")
    wait_until(lambda: tier.get(host).status_code == 200, message=f"{host} to serve")
    return host, app_guid


def _https_get(tier: Tier, host: str, path: str = "/", *, sni: str | None = None) -> tuple[int, dict[str, str], str]:
    sock = tier.tls_connect(sni or host, alpn=["http/1.1"])
    try:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read().decode()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        sock.close()


def _served_certificate(tier: Tier, sni: str | None) -> str:
    with tier.tls_connect(sni) as sock:
        return dict(item[0] for item in sock.getpeercert()["subject"])["commonName"]


# ---------------------------------------------------------------- TLS termination


def test_tls_certificate_is_chosen_by_sni_exact_name_before_wildcard(tier: Tier, apps, unique) -> None:
    host, _ = _route(tier, apps, unique)
    # The tier's router certificates: wildcard-example-com (*.example.com, listed first) and
    # app-example-com (app.example.com), both from job-style files served by router_sds over SDS.
    wait_until(lambda: _served_certificate(tier, host) == "wildcard-example-com", message="the HTTPS listener")
    assert _served_certificate(tier, "app.example.com") == "app-example-com"  # exact beats *.example.com
    assert _served_certificate(tier, "other.example.com") == "wildcard-example-com"
    # No or an unknown SNI: the first certificate, as gorouter does.
    assert _served_certificate(tier, None) == "wildcard-example-com"
    assert _served_certificate(tier, "unknown.example.org") == "wildcard-example-com"


def test_tls_1_1_is_refused_and_http2_is_offered_by_alpn(tier: Tier, apps, unique) -> None:
    _route(tier, apps, unique)
    with tier.tls_connect("app.example.com", version=ssl.TLSVersion.TLSv1_2) as sock:
        assert sock.version() == "TLSv1.2"
    try:
        legacy = tier.tls_connect("app.example.com", version=ssl.TLSVersion.TLSv1_1)
    except ssl.SSLError as error:
        # The router answers a TLS 1.1 hello with a protocol_version alert.
        assert "ALERT_PROTOCOL_VERSION" in str(error).upper(), error
    else:
        legacy.close()
        pytest.fail("a TLS 1.1 handshake succeeded")
    with tier.tls_connect("app.example.com", alpn=["h2", "http/1.1"]) as sock:
        assert sock.selected_alpn_protocol() == "h2"
    with tier.tls_connect("app.example.com", alpn=["http/1.1"]) as sock:
        assert sock.selected_alpn_protocol() == "http/1.1"


def test_https_and_http_serve_the_same_routes(tier: Tier, apps, unique) -> None:
    host, _ = _route(tier, apps, unique)
    status, _, body = _https_get(tier, host)
    assert (status, body.strip()) == (200, f"{unique}-i0")
    status, _, body = _https_get(tier, host, "/headers")
    assert status == 200 and json.loads(body)["x-forwarded-proto"] == "https"
    assert tier.get(host, "/headers").json()["x-forwarded-proto"] == "http"
    status, headers, _ = _https_get(tier, f"nobody-{unique}.example.com")
    assert (status, headers.get("x-cf-routererror")) == (404, "unknown_route")


# ---------------------------------------------------------------- TCP routes


def _tcp_get(port: int) -> str:
    """An HTTP request sent as plain bytes through a router TCP port: the answer names the instance."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: tcp\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.decode(errors="replace").rpartition("\r\n\r\n")[2].strip()


def _http_listener_updated(tier: Tier) -> str:
    dump = tier.envoy.config_dump()
    for config in dump["configs"]:
        for listener in config.get("dynamic_listeners", []):
            if listener["name"].endswith(f"_{tier.http_port}"):
                return listener["active_state"]["last_updated"]
    raise AssertionError("no HTTP listener in the config dump")


def test_tcp_route_forwards_connections_without_touching_http(tier: Tier, apps, unique) -> None:
    host, _ = _route(tier, apps, unique)
    http_listener = _http_listener_updated(tier)
    failures: list[str] = []
    stop = threading.Event()

    def http_traffic() -> None:
        with requests.Session() as session:  # one keep-alive connection through every change
            while not stop.is_set():
                try:
                    response = session.get(tier.router_url, headers={"Host": host}, timeout=5)
                    if response.status_code != 200:
                        failures.append(str(response.status_code))
                except requests.RequestException as error:
                    failures.append(type(error).__name__)
                time.sleep(0.01)

    worker = threading.Thread(target=http_traffic)
    worker.start()
    try:
        port, process = free_port(), f"{unique}-tcp"
        tier.bbs.desire_lrp(process, tcp_routes=[{"external_port": port, "container_port": 5000}], ports=[5000], instances=2)
        for index in range(2):
            _start(tier, apps, process, index, f"{unique}-tcp{index}", container_port=5000)
        seen: set[str] = set()

        def both_instances() -> bool:
            try:
                seen.add(_tcp_get(port))
            except OSError:
                return False
            return seen >= {f"{unique}-tcp0", f"{unique}-tcp1"}

        wait_until(both_instances, timeout=20, message="both instances behind the TCP port")
        tier.bbs.desire_lrp(process, tcp_routes=[], ports=[5000], instances=2)  # the route is removed

        def closed() -> bool:
            try:
                return _tcp_get(port) == ""
            except OSError:
                return True

        wait_until(closed, timeout=20, message="the TCP port to stop forwarding")
    finally:
        stop.set()
        worker.join()
    assert failures == [], collections.Counter(failures)
    assert _http_listener_updated(tier) == http_listener  # the HTTP listener was never replaced


# ---------------------------------------------------------------- headers and errors


def test_headers_apps_rely_on(tier: Tier, apps, unique) -> None:
    host, app_guid = _route(tier, apps, unique, instances=2)
    seen: dict[str, dict] = {}

    def both() -> bool:
        headers = requests.get(
            tier.router_url + "/headers",
            headers={"Host": host, "X-Forwarded-For": "203.0.113.9", "X-CF-InstanceID": "spoofed",
                     "X-CF-ApplicationID": "spoofed"},
            timeout=5,
        ).json()
        seen[headers.get("x-cf-instanceid", "")] = headers
        return {f"{unique}-i0", f"{unique}-i1"} <= set(seen)

    wait_until(both, timeout=20, message="both instances")
    for index in range(2):
        headers = seen[f"{unique}-i{index}"]
        assert headers["x-cf-instanceindex"] == str(index)
        assert headers["x-cf-applicationid"] == app_guid
        forwarded = [a.strip() for a in headers["x-forwarded-for"].split(",")]
        assert forwarded[0] == "203.0.113.9" and len(forwarded) == 2, forwarded  # the router appends its peer
        assert headers["x-forwarded-proto"] == "http"
        assert UUID_RE.match(headers["x-vcap-request-id"]), headers
        assert abs(int(headers["x-request-start"]) / 1000 - time.time()) < 60  # ms since the epoch


def test_app_instance_header_reaches_that_instance(tier: Tier, apps, unique) -> None:
    host, app_guid = _route(tier, apps, unique, instances=3)
    wait_until(lambda: tier.get(host).text.strip() != "", message="route up")

    def pinned() -> bool:
        answers = {
            requests.get(tier.router_url, headers={"Host": host, "X-CF-App-Instance": f"{app_guid}:2"}, timeout=5).text.strip()
            for _ in range(10)
        }
        return answers == {f"{unique}-i2"}

    wait_until(pinned, timeout=20, message="X-CF-App-Instance to pick instance 2")
    missing = requests.get(tier.router_url, headers={"Host": host, "X-CF-App-Instance": f"{app_guid}:7"}, timeout=5)
    assert (missing.status_code, missing.headers.get("X-Cf-Routererror")) == (400, "unknown_route")


def test_unknown_routes_get_404_with_router_error(tier: Tier, apps, unique) -> None:
    unknown = tier.get(f"nobody-{unique}.example.org")
    assert (unknown.status_code, unknown.headers.get("X-Cf-Routererror")) == (404, "unknown_route")
    # A known host without a route for the path: also gorouter's unknown route.
    host = f"{unique}.example.com"
    tier.bbs.desire_lrp(f"{unique}-api", http_routes=[{"hostnames": [f"{host}/api"], "port": 8080}])
    _start(tier, apps, f"{unique}-api", 0, f"{unique}-api")
    wait_until(lambda: tier.get(host, "/api").status_code == 200, message="/api to serve")
    other = tier.get(host, "/other")
    assert (other.status_code, other.headers.get("X-Cf-Routererror")) == (404, "unknown_route")


# ---------------------------------------------------------------- HTTP/2 and WebSockets


def test_http2_route_reaches_an_h2c_app(tier: Tier, apps, unique) -> None:
    h2 = H2cApp(f"{unique}-h2", tier.workdir / "h2c-apps")
    apps.append(h2)
    h2_host, h1_host = f"{unique}-h2.example.com", f"{unique}-h1.example.com"
    tier.bbs.desire_lrp(f"{unique}-h2", http_routes=[{"hostnames": [h2_host], "port": 8080, "protocol": "http2"}])
    tier.bbs.start_instance(f"{unique}-h2", 0, host_port=h2.port, instance_guid=f"{unique}-h2")
    wait_until(lambda: tier.get(h2_host).status_code == 200, message="the http2 route")
    response = tier.get(h2_host)  # HTTP/1.1 from the client, HTTP/2 cleartext to the app
    assert (response.text.strip(), response.headers["X-App-Protocol"]) == (f"{unique}-h2", "HTTP/2")
    # The same app behind an http1 route cannot be reached: the router really switched protocols.
    tier.bbs.desire_lrp(f"{unique}-h1", http_routes=[{"hostnames": [h1_host], "port": 8080}])
    tier.bbs.start_instance(f"{unique}-h1", 0, host_port=h2.port, instance_guid=f"{unique}-h1")
    wait_until(lambda: tier.get(h1_host).status_code != 404, message="the http1 route")
    assert tier.get(h1_host).status_code in (502, 503)


def test_websocket_upgrades_and_stays_open(tier: Tier, apps, unique) -> None:
    host, _ = _route(tier, apps, unique)
    client = WebSocketClient(("127.0.0.1", tier.http_port), host)
    try:
        assert client.accepted, (client.status, client.headers)
        client.send("hello")
        assert client.receive() == f"{unique}-i0:hello"
        time.sleep(3)  # idle, then used again: the router keeps the upgraded connection open
        client.send("again")
        assert client.receive() == f"{unique}-i0:again"
    finally:
        client.close()


# ---------------------------------------------------------------- sticky sessions


def test_jsessionid_pins_requests_to_one_instance(tier: Tier, apps, unique) -> None:
    host, _ = _route(tier, apps, unique, instances=3)
    wait_until(lambda: len({tier.get(host).text.strip() for _ in range(30)}) == 3, timeout=20, message="3 instances")
    plain = tier.get(host)
    assert "__VCAP_ID__" not in plain.headers.get("Set-Cookie", "")  # no session cookie, no pinning
    with requests.Session() as browser:
        first = browser.get(tier.router_url + "/session", headers={"Host": host}, timeout=5)
        assert {"JSESSIONID", "__VCAP_ID__"} <= set(browser.cookies.keys()), first.headers
        pinned = first.text.strip()
        answers = {browser.get(tier.router_url, headers={"Host": host}, timeout=5).text.strip() for _ in range(20)}
        assert answers == {pinned}
        # The pinned instance goes away: the session moves to another instance and stays there.
        tier.bbs.remove_instance(f"{unique}-pg", int(pinned.rpartition("-i")[2]))
        wait_until(
            lambda: browser.get(tier.router_url, headers={"Host": host}, timeout=5).text.strip() not in ("", pinned),
            timeout=20,
            message="the session to move",
        )
        moved = {browser.get(tier.router_url, headers={"Host": host}, timeout=5).text.strip() for _ in range(20)}
        assert len(moved) == 1 and pinned not in moved


# ---------------------------------------------------------------- access logs


def test_access_log_has_one_line_per_request(tier: Tier, apps, unique) -> None:
    host, app_guid = _route(tier, apps, unique)
    path = f"/{uuid.uuid4().hex}/headers"
    headers = tier.get(host, path).json()
    request_id = headers["x-vcap-request-id"]

    def lines() -> list[str]:
        log = tier.envoy.process.log_path.read_text()
        return [line for line in log.splitlines() if f'vcap_request_id:"{request_id}"' in line]

    wait_until(lines, timeout=10, message="the access log line")
    [line] = lines()
    assert line.startswith(f"{host} - [")
    assert f'"GET {path} HTTP/1.1" 200 0 ' in line
    bytes_sent = int(line.split('" 200 0 ')[1].split()[0])
    assert bytes_sent > 0
    assert re.search(r"response_time_ms:\d+ ", line)
    assert f'app_id:"{app_guid}"' in line and 'app_index:"0"' in line and f'instance_id:"{unique}-i0"' in line
