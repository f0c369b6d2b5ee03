"""routing-api's router groups as Copilot serves them (copilot.router_groups_api): the JSON Cloud
Controller and the cf CLI read, ?name=, UAA-token authorization with routing-api's error JSON, the
validation of reservable_ports, writes refused unless they change nothing; the HTTPS listener (threaded,
handshakes off the accept thread, deadlines, a connection limit); the config section."""

from __future__ import annotations

import json
import socket
import ssl
import urllib.parse
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest
import requests

from copilot.config import DEFAULT_ROUTER_GROUPS, ConfigError, parse
from copilot.https_listener import ConnectionLimits, Request
from copilot.router_groups_api import (
    RouterGroupError,
    RouterGroupsApi,
    RouterGroupsServer,
    default_guid,
    parse_reservable_ports,
    router_group,
)
from copilot.uaa_token import NOT_AUTHORIZED, TokenValidator, load_public_keys
from devtools.certs import CertPair, make_ca
from devtools.uaa import TestUAA
from devtools.waiting import wait_until

ISSUER = "https://uaa.sys.example.com/oauth/token"
READ, WRITE = "routing.router_groups.read", "routing.router_groups.write"
TCP = router_group("default-tcp", "tcp", "1024-1033")
HTTP = router_group("default-http", "http", "", guid="8a6e6ecb-4b5f-4e5b-9c1e-0a2b3c4d5e6f")


@pytest.fixture(scope="module")
def uaa() -> TestUAA:
    return TestUAA(ISSUER)


@pytest.fixture(scope="module")
def api(uaa: TestUAA) -> RouterGroupsApi:
    return RouterGroupsApi([TCP, HTTP], TokenValidator(load_public_keys(uaa.public_key_pem), ISSUER))


def call(api: RouterGroupsApi, method: str, target: str, authorization: str | None = None, body: object = None):
    headers = Message()
    if authorization is not None:
        headers["Authorization"] = authorization
    raw = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    return api(Request(method, target, headers, raw))


# ---------------------------------------------------------------- reads


def test_router_groups_are_listed_as_routing_api_lists_them(api: RouterGroupsApi, uaa: TestUAA) -> None:
    response = call(api, "GET", "/routing/v1/router_groups", uaa.authorization([READ]))
    assert response.status == 200
    assert response.body == [
        {"guid": default_guid("default-tcp"), "name": "default-tcp", "type": "tcp", "reservable_ports": "1024-1033"},
        {"guid": HTTP.guid, "name": "default-http", "type": "http", "reservable_ports": ""},
    ]
    assert isinstance(response.body[0]["reservable_ports"], str)  # a string, as CC and the CLI read it


def test_a_guid_is_the_same_on_every_instance_and_start() -> None:
    assert router_group("default-tcp", "tcp", "1024-1033").guid == TCP.guid == default_guid("default-tcp")
    assert default_guid("default-tcp") != default_guid("other-tcp")
    assert router_group("default-tcp", "tcp", "1024", guid="abc-123").guid == "abc-123"  # kept from routing-api


def test_name_query_gives_one_group_or_routing_apis_404(api: RouterGroupsApi, uaa: TestUAA) -> None:
    response = call(api, "GET", "/routing/v1/router_groups?name=default-tcp", uaa.authorization([READ]))
    assert (response.status, [g["name"] for g in response.body]) == (200, ["default-tcp"])
    missing = call(api, "GET", "/routing/v1/router_groups?name=nope", uaa.authorization([READ]))
    assert (missing.status, missing.body) == (404, {"name": "ResourceNotFoundError", "message": "router group 'nope' not found"})
    # The name matches exactly (the CLI asks for the name the operator typed).
    assert call(api, "GET", "/routing/v1/router_groups?name=default", uaa.authorization([READ])).status == 404
    spaced = "/routing/v1/router_groups?" + urllib.parse.urlencode({"name": "a b"})
    assert call(api, "GET", spaced, uaa.authorization([READ])).body["message"] == "router group 'a b' not found"
    assert len(call(api, "GET", "/routing/v1/router_groups?name=", uaa.authorization([READ])).body) == 2


# ---------------------------------------------------------------- authorization


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no token", "No token in the Authorization header"),
        ("bad signature", "Token signature is invalid"),
        ("wrong issuer", "Token has an invalid issuer"),
        ("expired", "Token is expired"),
        ("missing scope", NOT_AUTHORIZED),
        ("write scope only", NOT_AUTHORIZED),
    ],
)
def test_every_call_needs_a_valid_uaa_token_with_its_scope(api: RouterGroupsApi, uaa: TestUAA, case: str, message: str) -> None:
    authorization = {
        "no token": None,
        "bad signature": TestUAA(ISSUER).authorization([READ]),
        "wrong issuer": uaa.authorization([READ], issuer="https://uaa.elsewhere.example.com/oauth/token"),
        "expired": uaa.authorization([READ], expires_in=-3600),
        "missing scope": uaa.authorization(["routing.routes.read", "openid"]),
        "write scope only": uaa.authorization([WRITE]),
    }[case]
    response = call(api, "GET", "/routing/v1/router_groups", authorization)
    assert (response.status, response.body) == (401, {"name": "UnauthorizedError", "message": message})


def test_writes_need_the_write_scope(api: RouterGroupsApi, uaa: TestUAA) -> None:
    read_only = uaa.authorization([READ])
    for method, target in [("POST", "/routing/v1/router_groups"), ("PUT", f"/routing/v1/router_groups/{TCP.guid}"),
                           ("DELETE", f"/routing/v1/router_groups/{TCP.guid}")]:
        response = call(api, method, target, read_only, {"reservable_ports": "1024-1033"})
        assert (response.status, response.body) == (401, {"name": "UnauthorizedError", "message": NOT_AUTHORIZED}), method


# ---------------------------------------------------------------- writes


@pytest.mark.parametrize(
    ("ports", "message"),
    [
        ("", "router group 'default-tcp' of type tcp needs reservable_ports"),
        ("80", "reservable_ports: port 80 is not between 1024 and 65535"),
        ("1024-70000", "reservable_ports: port 70000 is not between 1024 and 65535"),
        ("2000-1500", "reservable_ports: range 2000-1500 must start with its lower port"),
        ("1024-1033,1030", "reservable_ports: 1030 overlaps or comes before 1024-1033 (ranges must ascend without overlapping)"),
        ("2000,1500", "reservable_ports: 1500 overlaps or comes before 2000-2000 (ranges must ascend without overlapping)"),
        ("1024,,1026", "reservable_ports: '' is not a port or a range of ports (A-B)"),
        ("abc", "reservable_ports: 'abc' is not a port or a range of ports (A-B)"),
        ("1024 - 1030", "reservable_ports: '1024 - 1030' is not a port or a range of ports (A-B)"),
        (1024, 'reservable_ports: must be a string such as "1024-1033"'),
    ],
)
def test_put_validates_reservable_ports_with_process_request_error(api: RouterGroupsApi, uaa: TestUAA, ports, message) -> None:
    body = {"reservable_ports": ports}
    response = call(api, "PUT", f"/routing/v1/router_groups/{TCP.guid}", uaa.authorization([WRITE]), body)
    assert response.status == 400
    assert response.body == {"name": "ProcessRequestError", "message": f"Cannot process request: {message}"}


def test_put_body_and_guid_are_checked(api: RouterGroupsApi, uaa: TestUAA) -> None:
    write = uaa.authorization([WRITE])
    assert call(api, "PUT", f"/routing/v1/router_groups/{TCP.guid}", write, b"{nope").body == {
        "name": "ProcessRequestError", "message": "Cannot process request: the body is not JSON"}
    assert call(api, "PUT", f"/routing/v1/router_groups/{TCP.guid}", write, [1]).status == 400
    unknown = call(api, "PUT", "/routing/v1/router_groups/no-such-guid", write, {"reservable_ports": "1024"})
    assert (unknown.status, unknown.body["name"]) == (404, "ResourceNotFoundError")
    http = call(api, "PUT", f"/routing/v1/router_groups/{HTTP.guid}", write, {"reservable_ports": "1024"})
    assert http.body["message"] == "Cannot process request: router group 'default-http' of type http cannot have reservable_ports"


def test_a_put_that_changes_nothing_answers_like_routing_api(api: RouterGroupsApi, uaa: TestUAA) -> None:
    response = call(api, "PUT", f"/routing/v1/router_groups/{TCP.guid}", uaa.authorization([WRITE]),
                    {"reservable_ports": "1024-1033", "name": "ignored"})
    assert (response.status, response.body) == (200, TCP.to_json())
    assert "nothing was changed" in urllib.parse.unquote(response.headers["X-Cf-Warnings"])
    assert " " not in response.headers["X-Cf-Warnings"]  # URL-escaped, as routing-api sends it


def test_writes_that_would_change_router_groups_are_refused_naming_the_property(api: RouterGroupsApi, uaa: TestUAA) -> None:
    write = uaa.authorization([WRITE])
    changes = [
        call(api, "PUT", f"/routing/v1/router_groups/{TCP.guid}", write, {"reservable_ports": "1024-1040"}),
        call(api, "POST", "/routing/v1/router_groups", write, {"name": "more-tcp", "type": "tcp", "reservable_ports": "2000"}),
        call(api, "DELETE", f"/routing/v1/router_groups/{TCP.guid}", write),
    ]
    for response in changes:
        assert response.status == 405 and response.headers["Allow"] == "GET"
        assert response.body["name"] == "ReadOnlyError"
        assert "routing_api.router_groups" in response.body["message"]
    assert "'default-tcp'" in changes[0].body["message"] and "'more-tcp'" in changes[1].body["message"]
    assert call(api, "GET", "/routing/v1/router_groups", uaa.authorization([READ])).body[0] == TCP.to_json()  # unchanged


def test_post_of_an_existing_group_returns_it_and_post_is_validated(api: RouterGroupsApi, uaa: TestUAA) -> None:
    write = uaa.authorization([WRITE])
    existing = call(api, "POST", "/routing/v1/router_groups", write,
                    {"name": "default-tcp", "type": "tcp", "reservable_ports": "1024-1033"})
    assert (existing.status, existing.body) == (200, TCP.to_json())
    bad = call(api, "POST", "/routing/v1/router_groups", write, {"name": "x", "type": "udp"})
    assert (bad.status, bad.body["message"]) == (400, "Cannot process request: type must be one of tcp, http, not 'udp'")
    assert call(api, "POST", "/routing/v1/router_groups", write, {"type": "tcp"}).body["message"].endswith("name is required")
    assert call(api, "DELETE", "/routing/v1/router_groups/no-such-guid", write).status == 404


def test_paths_and_methods_routing_api_does_not_serve(api: RouterGroupsApi, uaa: TestUAA) -> None:
    read = uaa.authorization([READ, "routing.routes.read"])
    assert call(api, "GET", "/routing/v1/tcp_routes", read).status == 404  # TCP routes come from the BBS
    assert call(api, "GET", "/other", read).status == 404
    one = call(api, "GET", f"/routing/v1/router_groups/{TCP.guid}", read)
    assert one.status == 405 and one.headers["Allow"] == "PUT, DELETE"
    assert call(api, "PATCH", "/routing/v1/router_groups", read).status == 405


def test_reservable_ports_parse() -> None:
    assert parse_reservable_ports("1024-1033") == ((1024, 1033),)
    assert parse_reservable_ports("1024, 1030-1040,65535") == ((1024, 1024), (1030, 1040), (65535, 65535))
    with pytest.raises(RouterGroupError) as error:
        parse_reservable_ports("1023")
    assert error.value.field == "reservable_ports"


# ---------------------------------------------------------------- the HTTPS listener


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CertPair]:
    root = tmp_path_factory.mktemp("routing-api-pki")
    ca = make_ca(root, "routing-api-ca")
    return ca.cert_path, ca.issue("routing-api", root, dns_names=["routing-api.service.cf.internal"], client=False)


@pytest.fixture
def server(tls, uaa: TestUAA) -> Iterator[RouterGroupsServer]:
    _, pair = tls
    server = RouterGroupsServer(
        "127.0.0.1:0", [TCP], TokenValidator(load_public_keys(uaa.public_key_pem), ISSUER),
        cert=pair.cert_path, key=pair.key_path,
        limits=ConnectionLimits(handshake_timeout=1.0, request_timeout=1.0, max_connections=8),
    )
    server.start()
    yield server
    server.stop()


def _get(server: RouterGroupsServer, ca: Path, authorization: str, timeout: float = 5) -> requests.Response:
    session = requests.Session()
    session.mount("https://", _SNIAdapter())
    return session.get(f"https://127.0.0.1:{server.port}/routing/v1/router_groups", headers={"Authorization": authorization},
                       verify=str(ca), timeout=timeout)


class _SNIAdapter(requests.adapters.HTTPAdapter):
    """Verifies the server as the routers do: by the name routing-api.service.cf.internal, dialling an IP."""

    def init_poolmanager(self, *args, **kwargs):
        kwargs["assert_hostname"] = "routing-api.service.cf.internal"
        kwargs["server_hostname"] = "routing-api.service.cf.internal"
        return super().init_poolmanager(*args, **kwargs)


def test_the_listener_serves_https_and_closes_each_connection(server: RouterGroupsServer, tls, uaa: TestUAA) -> None:
    ca, _ = tls
    response = _get(server, ca, uaa.authorization([READ]))
    assert response.status_code == 200 and response.json() == [TCP.to_json()]
    assert response.headers["Content-Type"] == "application/json" and response.headers["Connection"] == "close"
    refused = _get(server, ca, uaa.authorization(["openid"]))
    assert (refused.status_code, refused.json()) == (401, {"name": "UnauthorizedError", "message": NOT_AUTHORIZED})


def test_a_silent_client_neither_blocks_others_nor_keeps_its_connection(server: RouterGroupsServer, tls, uaa: TestUAA) -> None:
    ca, _ = tls
    silent = socket.create_connection(("127.0.0.1", server.port))  # never sends a ClientHello
    context = ssl.create_default_context(cafile=str(ca))
    slow = context.wrap_socket(socket.create_connection(("127.0.0.1", server.port)),
                               server_hostname="routing-api.service.cf.internal")
    slow.sendall(b"GET /routing/v1/router_groups HTTP/1.1\r\n")  # and never finishes the request
    try:
        assert _get(server, ca, uaa.authorization([READ])).status_code == 200  # served meanwhile ...
        silent.setblocking(False)
        with pytest.raises(BlockingIOError):  # ... while the silent client still holds its connection
            silent.recv(1)
        silent.setblocking(True)
        silent.settimeout(5)
        assert silent.recv(1) == b""  # closed after the handshake timeout
        slow.settimeout(5)
        assert slow.recv(1) == b""  # closed after the request timeout, unanswered
    finally:
        silent.close()
        slow.close()
    wait_until(lambda: server.open_connections() == 0, timeout=5, message="every connection's slot released")


def test_connections_over_the_limit_are_closed_at_once(server: RouterGroupsServer, tls, uaa: TestUAA) -> None:
    ca, _ = tls
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(8)]
    try:
        wait_until(lambda: server.open_connections() == 8, timeout=5, message="eight connections held")
        extra = socket.create_connection(("127.0.0.1", server.port))
        extra.settimeout(5)
        try:
            assert extra.recv(1) == b""  # closed before any handshake, not queued
        except ConnectionResetError:
            pass
        finally:
            extra.close()
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: server.open_connections() == 0, timeout=5, message="the held slots released")
    assert _get(server, ca, uaa.authorization([READ])).status_code == 200


def test_bodies_need_a_bounded_content_length(server: RouterGroupsServer, tls, uaa: TestUAA) -> None:
    ca, _ = tls
    context = ssl.create_default_context(cafile=str(ca))

    def raw(head: str) -> str:
        with context.wrap_socket(socket.create_connection(("127.0.0.1", server.port), timeout=5),
                                 server_hostname="routing-api.service.cf.internal") as sock:
            sock.sendall(head.encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            return data.decode().split("\r\n", 1)[0]

    path = f"/routing/v1/router_groups/{TCP.guid}"
    assert raw(f"PUT {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n") == "HTTP/1.1 411 Length Required"
    assert raw(f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n") == "HTTP/1.1 413 Request Entity Too Large"


# ---------------------------------------------------------------- config


def _config(tmp_path: Path, tls, uaa: TestUAA, **routing_api) -> dict:
    _, pair = tls
    keys = tmp_path / "uaa_keys.pem"
    keys.write_text(uaa.public_key_pem)
    section = {"cert": str(pair.cert_path), "key": str(pair.key_path), "uaa_issuer": ISSUER,
               "uaa_verification_keys": str(keys), **routing_api}
    return {"routing_api": section}


def test_config_defaults_to_v58s_default_tcp_group(tmp_path: Path, tls, uaa: TestUAA) -> None:
    config = parse(_config(tmp_path, tls, uaa)).routing_api
    assert config is not None and config.listen == "0.0.0.0:3001" and config.uaa_issuer == ISSUER
    assert config.router_groups == DEFAULT_ROUTER_GROUPS
    assert [g.to_json() for g in config.router_groups] == [
        {"guid": default_guid("default-tcp"), "name": "default-tcp", "type": "tcp", "reservable_ports": "1024-1033"}]
    assert len(config.uaa_verification_keys) == 1
    assert parse({}).routing_api is None


def test_config_router_groups_as_routing_api_takes_them(tmp_path: Path, tls, uaa: TestUAA) -> None:
    groups = [{"name": "default-tcp", "type": "tcp", "reservable_ports": "1024-1033", "guid": "abc-123"},
              {"name": "more-tcp", "type": "tcp", "reservable_ports": 2000}, {"name": "web", "type": "http"}]
    config = parse(_config(tmp_path, tls, uaa, router_groups=groups)).routing_api
    assert config is not None
    assert [(g.guid, g.name, g.reservable_ports) for g in config.router_groups] == [
        ("abc-123", "default-tcp", "1024-1033"), (default_guid("more-tcp"), "more-tcp", "2000"), (default_guid("web"), "web", "")]
    assert parse(_config(tmp_path, tls, uaa, router_groups=[])).routing_api.router_groups == ()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("groups", "gateway", "error"),
    [
        ([{"name": "a", "type": "tcp"}], {}, "routing_api.router_groups[0].reservable_ports: router group 'a' of type tcp needs"),
        ([{"name": "a", "type": "tcp", "reservable_ports": "80"}], {}, "routing_api.router_groups[0].reservable_ports: port 80"),
        ([{"name": "a", "type": "udp", "reservable_ports": "2000"}], {}, "routing_api.router_groups[0].type: type must be"),
        ([{"type": "tcp", "reservable_ports": "2000"}], {}, "routing_api.router_groups[0].name: name is required"),
        ([{"name": "a", "type": "tcp", "reservable_ports": "2000", "bogus": 1}], {},
         "routing_api.router_groups[0].bogus: unknown key"),
        ([{"name": "a", "type": "tcp", "reservable_ports": "2000"}, {"name": "a", "type": "tcp", "reservable_ports": "3000"}],
         {}, "routing_api.router_groups[1].name: router group 'a' is given twice"),
        ([{"name": "a", "type": "tcp", "reservable_ports": "2000-3000"}, {"name": "b", "type": "tcp", "reservable_ports": "25"}],
         {}, "routing_api.router_groups[1].reservable_ports: port 25 is not between"),
        ([{"name": "a", "type": "tcp", "reservable_ports": "2000-3000"},
          {"name": "b", "type": "tcp", "reservable_ports": "2500"}],
         {}, "routing_api.router_groups[1].reservable_ports: 2500-2500 overlaps router group 'a'"),
        ([{"name": "a", "type": "tcp", "reservable_ports": "1024-9000"}], {"http_port": 8080},
         "routing_api.router_groups[0].reservable_ports: port 8080 is the routers' HTTP(S) port"),
    ],
)
def test_config_refuses_router_groups_naming_the_key(tmp_path: Path, tls, uaa: TestUAA, groups, gateway, error: str) -> None:
    data = {**_config(tmp_path, tls, uaa, router_groups=groups), "gateway": gateway}
    with pytest.raises(ConfigError) as raised:
        parse(data)
    assert error in str(raised.value)


def test_config_refuses_verification_keys_that_are_not_public_keys(tmp_path: Path, tls, uaa: TestUAA) -> None:
    data = _config(tmp_path, tls, uaa)
    Path(data["routing_api"]["uaa_verification_keys"]).write_text("not a key")
    with pytest.raises(ConfigError, match="routing_api.uaa_verification_keys: .*no PEM block"):
        parse(data)
    del data["routing_api"]["uaa_issuer"]
    Path(data["routing_api"]["uaa_verification_keys"]).write_text(uaa.public_key_pem)
    with pytest.raises(ConfigError, match="routing_api.uaa_issuer: is required"):
        parse(data)


def test_copilot_serves_the_router_groups_api_when_configured(tmp_path: Path, tls, uaa: TestUAA) -> None:
    from copilot.main import Copilot

    ca, _ = tls
    data = _config(tmp_path, tls, uaa, listen="127.0.0.1:0")
    copilot = Copilot(parse({**data, "mcp": {"listen": "127.0.0.1:0"}, "health": {"listen": "127.0.0.1:0"}}))
    copilot.start()
    try:
        assert copilot.routing_api is not None
        response = _get(copilot.routing_api, ca, uaa.authorization([READ]))  # type: ignore[arg-type]
        assert response.status_code == 200 and [g["name"] for g in response.json()] == ["default-tcp"]
    finally:
        copilot.stop()
