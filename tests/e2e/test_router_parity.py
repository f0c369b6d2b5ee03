"""Router parity with gorouter and tcp-router (issue #7), through the real istiod and Envoy and Diego v58
cells (every instance behind its cell's TLS proxy, reached with the router's client certificate and its
instance identity checked): TLS with SNI, TCP routes, the headers apps rely on, unknown routes, HTTP/2 to
apps, WebSockets, sticky sessions and access logs. docs/gorouter-parity.md maps every gorouter feature to
these tests."""

from __future__ import annotations

import collections
import http.client
import ipaddress
import json
import math
import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import requests

from devtools.cell import CellInstance
from devtools.ports import free_port
from devtools.tier import Tier, start_tier_with_ops, wait_until
from devtools.websocket import WebSocketClient

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# The properties these tests need that are not defaults, on one extra tier (each tier costs a start):
# - gateway.instance_routing (copilot): X-CF-App-Instance is off by default (a subset per instance);
# - access_log.file (pilot-discovery): the job's default is "" (no access log); /dev/stdout lands in the
#   router's supervised log, tier.log_path("istio-router", "envoy"), as bpm puts it in envoy.stdout.log.
_OVERLAY_OPS = """
- type: replace
  path: /instance_groups/name=local/jobs/name=copilot/properties/gateway/instance_routing?
  value: true
- type: replace
  path: /instance_groups/name=local/jobs/name=pilot-discovery/properties/access_log?/file
  value: /dev/stdout
"""


@pytest.fixture(scope="module")
def overlay_tier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tier]:
    """A tier with instance routing and the access log on (see _OVERLAY_OPS)."""
    tier = start_tier_with_ops(tmp_path_factory.mktemp("tier-parity-overlay"), "instance-routing-and-access-log", _OVERLAY_OPS)
    yield tier
    tier.stop()


def _route(
    tier: Tier, apps: list, unique: str, *, instances: int = 1, host: str | None = None
) -> tuple[str, str, list[CellInstance]]:
    """An app (guid `<unique>-app`) with `instances` instances (guids `<unique>-i<index>`) on cells, routed
    on `host`; waits until it serves."""
    host = host or f"{unique}.example.com"
    app_guid = f"{unique}-app"
    tier.bbs.desire_lrp(f"{unique}-pg", http_routes=[{"hostnames": [host], "port": 8080}], instances=instances, log_guid=app_guid)
    started = []
    for index in range(instances):
        instance = tier.start_instance(f"{unique}-pg", index, f"{unique}-i{index}")
        apps.append(instance)
        started.append(instance)
    wait_until(lambda: tier.get(host).status_code == 200, message=f"{host} to serve")
    return host, app_guid, started


def _answer(tier: Tier, host: str, session: requests.Session | None = None) -> str:
    """The instance guid a request to `host` reached ("" if the router did not answer 200)."""
    response = (session or requests).get(tier.router_url, headers={"Host": host}, timeout=5)
    return response.text.strip() if response.status_code == 200 else ""


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
    host, _, _ = _route(tier, apps, unique)
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
    host, _, _ = _route(tier, apps, unique)
    status, _, body = _https_get(tier, host)
    assert (status, body.strip()) == (200, f"{unique}-i0")
    status, _, body = _https_get(tier, host, "/headers")
    assert status == 200 and json.loads(body)["x-forwarded-proto"] == "https"
    assert tier.get(host, "/headers").json()["x-forwarded-proto"] == "http"
    status, headers, _ = _https_get(tier, f"nobody-{unique}.example.com")
    assert (status, headers.get("x-cf-routererror")) == (404, "unknown_route")
    # Every HTTPS filter chain (the exact certificate's, the fallback for an unknown SNI) routes by Host
    # as gorouter does, from the one route configuration the HTTP listener uses too: each host is one
    # virtual host in the router, not one per Gateway server.
    for sni in ("app.example.com", "unknown.example.org"):
        status, _, body = _https_get(tier, host, "/headers", sni=sni)
        assert status == 200 and json.loads(body)["x-forwarded-proto"] == "https"
    routes = requests.get(f"http://127.0.0.1:{tier.envoy.port}/config_dump?resource=dynamic_route_configs", timeout=10).json()
    holding = [c["route_config"]["name"] for c in routes["configs"]
               if any(host in vh["domains"] for vh in c["route_config"].get("virtual_hosts", []))]
    assert holding == [f"http.{tier.http_port}.127.0.0.1"]


# ---------------------------------------------------------------- TCP routes


def _tcp_echo(port: int, line: str) -> str:
    """One line sent through a router TCP port to a tcp-echo instance; its answer `<guid>:<line>` (""
    if the connection closed without one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(line.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n") and (chunk := sock.recv(65536)):
            data += chunk
    return data.decode(errors="replace").strip()


def _http_listener_updated(tier: Tier) -> str:
    dump = tier.envoy.config_dump()
    for config in dump["configs"]:
        for listener in config.get("dynamic_listeners", []):
            if listener["name"].endswith(f"_{tier.http_port}"):
                return listener["active_state"]["last_updated"]
    raise AssertionError("no HTTP listener in the config dump")


def test_tcp_route_forwards_connections_without_touching_http(tier: Tier, apps, unique) -> None:
    host, _, _ = _route(tier, apps, unique)
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
                stop.wait(0.01)  # pacing, not waiting for anything

    worker = threading.Thread(target=http_traffic)
    worker.start()
    try:
        # tcp-echo instances on the cell: the router reaches each one's TLS proxy (host_tls_proxy_port)
        # with its client certificate and checks the instance identity, as tcp-router does with v58 cells.
        port, process = free_port(), f"{unique}-tcp"
        tier.bbs.desire_lrp(process, tcp_routes=[{"external_port": port, "container_port": 8080}], instances=2)
        for index in range(2):
            apps.append(tier.start_instance(process, index, f"{unique}-tcp{index}", app="tcp-echo"))
        seen: set[str] = set()
        lines = iter(range(1_000_000))

        def both_instances() -> bool:
            line = f"ping-{next(lines)}"
            answer = _tcp_echo(port, line)
            guid, _, echoed = answer.partition(":")
            if answer and echoed != line:
                raise AssertionError(f"the TCP route answered {answer!r} to {line!r}")
            if answer:
                seen.add(guid)
            return seen >= {f"{unique}-tcp0", f"{unique}-tcp1"}

        wait_until(both_instances, timeout=30, message="both instances behind the TCP port")
        assert seen == {f"{unique}-tcp0", f"{unique}-tcp1"}
        tier.bbs.desire_lrp(process, tcp_routes=[], instances=2)  # the route is removed

        def closed() -> bool:
            try:
                return _tcp_echo(port, "after-removal") == ""
            except TimeoutError:
                return False  # accepted and silent is not closed
            except OSError:
                return True  # refused or reset

        wait_until(closed, timeout=30, message="the TCP port to stop forwarding")
    finally:
        stop.set()
        worker.join()
    assert failures == [], collections.Counter(failures)
    assert _http_listener_updated(tier) == http_listener  # the HTTP listener was never replaced


# ---------------------------------------------------------------- headers and errors


def test_headers_apps_rely_on(tier: Tier, apps, unique) -> None:
    host, app_guid, _ = _route(tier, apps, unique, instances=2)
    seen: dict[str, tuple[dict, int, int]] = {}

    def both() -> bool:
        before_ms = math.floor(time.time() * 1000)
        headers = requests.get(
            tier.router_url + "/headers",
            headers={
                "Host": host,
                "X-Forwarded-For": "203.0.113.9",
                "X-CF-InstanceID": "spoofed",
                "X-CF-ApplicationID": "spoofed",
            },
            timeout=5,
        ).json()
        seen[headers.get("x-cf-instanceid", "")] = (headers, before_ms, math.ceil(time.time() * 1000))
        return {f"{unique}-i0", f"{unique}-i1"} <= set(seen)

    wait_until(both, timeout=20, message="both instances")
    assert set(seen) == {f"{unique}-i0", f"{unique}-i1"}  # the client's X-CF-InstanceID never got through
    for index in range(2):
        headers, before_ms, after_ms = seen[f"{unique}-i{index}"]
        assert headers["x-cf-instanceindex"] == str(index)
        assert headers["x-cf-applicationid"] == app_guid
        forwarded = [a.strip() for a in headers["x-forwarded-for"].split(",")]
        # The router appends its peer (Envoy appends the machine's own address for a loopback peer).
        assert forwarded[0] == "203.0.113.9" and len(forwarded) == 2, forwarded
        ipaddress.ip_address(forwarded[1])
        assert headers["x-forwarded-proto"] == "http"
        assert UUID_RE.match(headers["x-vcap-request-id"]), headers
        # Milliseconds since the epoch at the request's start: between the client's clock before and after.
        assert before_ms <= int(headers["x-request-start"]) <= after_ms, (headers["x-request-start"], before_ms, after_ms)


def test_app_instance_header_reaches_that_instance(overlay_tier: Tier, apps, unique) -> None:
    # X-CF-App-Instance needs gateway.instance_routing, not a default: the overlay tier has it.
    tier = overlay_tier
    host, app_guid, _ = _route(tier, apps, unique, instances=3)

    def pinned() -> bool:
        answers = {
            requests.get(tier.router_url, headers={"Host": host, "X-CF-App-Instance": f"{app_guid}:2"}, timeout=5).text.strip()
            for _ in range(10)
        }
        return answers == {f"{unique}-i2"}

    wait_until(pinned, timeout=20, message="X-CF-App-Instance to pick instance 2")
    # Without the header the route still spreads over all three instances.
    tier.wait_for_every_instance(host, {f"{unique}-i{i}" for i in range(3)}, timeout=20)
    missing = requests.get(tier.router_url, headers={"Host": host, "X-CF-App-Instance": f"{app_guid}:7"}, timeout=5)
    assert (missing.status_code, missing.headers.get("X-Cf-Routererror")) == (400, "unknown_route")


def test_unknown_routes_get_404_with_router_error(tier: Tier, apps, unique) -> None:
    unknown = tier.get(f"nobody-{unique}.example.org")
    assert (unknown.status_code, unknown.headers.get("X-Cf-Routererror")) == (404, "unknown_route")
    # A known host without a route for the path: also gorouter's unknown route.
    host = f"{unique}.example.com"
    tier.bbs.desire_lrp(f"{unique}-api", http_routes=[{"hostnames": [f"{host}/api"], "port": 8080}])
    apps.append(tier.start_instance(f"{unique}-api", 0, f"{unique}-api"))
    wait_until(lambda: tier.get(host, "/api").status_code == 200, message="/api to serve")
    assert tier.get(host, "/api").text.strip() == f"{unique}-api"
    other = tier.get(host, "/other")
    assert (other.status_code, other.headers.get("X-Cf-Routererror")) == (404, "unknown_route")


# ---------------------------------------------------------------- HTTP/2 and WebSockets


def test_http2_route_reaches_an_h2c_app(tier: Tier, apps, unique) -> None:
    # h2c apps (HTTP/2 only) behind cell proxies offering ALPN "h2,http/1.1": for an http2 route the router
    # must speak HTTP/2 through the TLS proxy; for an http1 route it must not (the app then cannot answer).
    h2_host, h1_host = f"{unique}-h2.example.com", f"{unique}-h1.example.com"
    tier.bbs.desire_lrp(f"{unique}-h2", http_routes=[{"hostnames": [h2_host], "port": 8080, "protocol": "http2"}])
    apps.append(tier.start_instance(f"{unique}-h2", 0, f"{unique}-h2", app="h2c"))
    wait_until(lambda: tier.get(h2_host).status_code == 200, message="the http2 route")
    response = tier.get(h2_host)  # HTTP/1.1 from the client, HTTP/2 over the cell's TLS proxy to the app
    assert (response.text.strip(), response.headers["X-App-Protocol"]) == (f"{unique}-h2", "HTTP/2")
    # An h2c app behind an http1 route cannot be reached: the router really switched protocols, and does
    # not send HTTP/2 to an http1 route although the cell proxy offers h2.
    tier.bbs.desire_lrp(f"{unique}-h1", http_routes=[{"hostnames": [h1_host], "port": 8080}])
    apps.append(tier.start_instance(f"{unique}-h1", 0, f"{unique}-h1", app="h2c"))
    wait_until(lambda: tier.get(h1_host).status_code != 404, message="the http1 route")
    for _ in range(5):
        failed = tier.get(h1_host)
        assert failed.status_code in (502, 503), (failed.status_code, failed.headers, failed.text)
        assert "X-Cf-Routererror" in failed.headers and f"{unique}-h1" not in failed.text


def test_websocket_upgrades_and_stays_open(tier: Tier, apps, unique) -> None:
    host, _, _ = _route(tier, apps, unique)
    client = WebSocketClient(("127.0.0.1", tier.http_port), host)
    try:
        assert client.accepted, (client.status, client.headers)
        client.send("hello")
        assert client.receive() == f"{unique}-i0:hello"
        time.sleep(3)  # an idle period (the stimulus, not a wait): the router keeps the upgraded connection open
        client.send("again")
        assert client.receive() == f"{unique}-i0:again"
    finally:
        client.close()


# ---------------------------------------------------------------- sticky sessions


def test_jsessionid_pins_requests_to_one_instance(tier: Tier, apps, unique) -> None:
    host, _, instances = _route(tier, apps, unique, instances=3)
    everyone = {f"{unique}-i{i}" for i in range(3)}
    tier.wait_for_every_instance(host, everyone, timeout=20)
    plain = tier.get(host)
    assert "__VCAP_ID__" not in plain.headers.get("Set-Cookie", "")  # no session cookie, no pinning
    with requests.Session() as browser:
        first = browser.get(tier.router_url + "/session", headers={"Host": host}, timeout=5)
        assert {"JSESSIONID", "__VCAP_ID__"} <= set(browser.cookies.keys()), first.headers
        pinned = first.text.strip()
        assert pinned in everyone
        answers = {_answer(tier, host, browser) for _ in range(20)}
        assert answers == {pinned}
        # The pinned instance goes away (its container stops, the rep removes it): the session moves to
        # another instance and stays there.
        index = int(pinned.rpartition("-i")[2])
        tier.bbs.remove_instance(f"{unique}-pg", index)
        instances[index].stop()
        wait_until(lambda: _answer(tier, host, browser) not in ("", pinned), timeout=20, message="the session to move")
        moved = {_answer(tier, host, browser) for _ in range(20)}
        assert len(moved) == 1 and moved <= everyone - {pinned}, moved


# ---------------------------------------------------------------- access logs


def test_access_log_has_one_line_per_request(overlay_tier: Tier, apps, unique) -> None:
    # pilot-discovery's access_log.file is off by default: the overlay tier sets /dev/stdout, which lands in
    # the router's supervised log.
    tier = overlay_tier
    host, app_guid, [instance] = _route(tier, apps, unique)
    path = f"/{uuid.uuid4().hex}/headers"
    headers = tier.get(host, path).json()
    request_id = headers["x-vcap-request-id"]
    log = tier.log_path("istio-router", "envoy")

    def lines() -> list[str]:
        return [line for line in log.read_text().splitlines() if f'vcap_request_id:"{request_id}"' in line]

    wait_until(lines, timeout=10, message="the access log line")
    [line] = lines()
    assert line.startswith(f"{host} - [")
    assert f'"GET {path} HTTP/1.1" 200 0 ' in line
    bytes_sent = int(line.split('" 200 0 ')[1].split()[0])
    assert bytes_sent > 0
    assert re.search(r"response_time_ms:\d+ ", line)
    # The request went to the instance's TLS proxy port on its cell (route integrity), not the app port.
    assert f'"{instance.cell_ip}:{instance.host_tls_proxy_port}"' in line, line
    assert f'app_id:"{app_guid}"' in line and 'app_index:"0"' in line and f'instance_id:"{unique}-i0"' in line

