"""TCP domains on the Istio tier (issue 13): routing-api's router groups served by Copilot, reached as
Cloud Controller and the cf CLI reach routing-api, through the router at the platform route
api.<system domain>/routing (registered by the tier's istio-route-registrar, HTTPS to Copilot's listener
verified by name) with UAA tokens signed by the tier's uaa_jwt_signing_key; then a TCP route in that
router group, as Cloud Controller puts it in a DesiredLRP, reaches a v58 cell's instance through its TLS
proxy port with the router's client certificate."""

from __future__ import annotations

import http.client
import json
import socket

from devtools.tier import Tier, wait_until
from devtools.uaa import TestUAA
from local_tier import render

# manifests/local.yml: the platform route's host and UAA's issuer on the local tier.
ROUTING_API_HOST = "api.sys.local"
ISSUER = "https://uaa.sys.local/oauth/token"
READ, WRITE = "routing.router_groups.read", "routing.router_groups.write"


def _uaa(tier: Tier) -> TestUAA:
    """Signs as the tier's UAA would: with the private half of uaa_jwt_signing_key (the vars store)."""
    return TestUAA(ISSUER, render.variables(tier.layout)["uaa_jwt_signing_key"]["private_key"])


def _routing_api(tier: Tier, authorization: str | None, target: str = "/routing/v1/router_groups") -> tuple[int, object]:
    """A request to https://api.sys.local/routing/... through the router's HTTPS port, as Cloud Controller
    sends it (SNI and Host api.sys.local; the router's certificate chain checked against its CA)."""
    sock = tier.tls_connect(ROUTING_API_HOST, alpn=["http/1.1"])
    try:
        headers = f"Authorization: {authorization}\r\n" if authorization is not None else ""
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {ROUTING_API_HOST}\r\n{headers}Connection: close\r\n\r\n".encode())
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = response.read()
        if response.getheader("Content-Type") != "application/json":
            return response.status, body.decode(errors="replace")
        return response.status, json.loads(body)
    finally:
        sock.close()


def _tcp_echo(port: int, line: str) -> str:
    """One line through the router's TCP port to a tcp-echo instance; its answer `<guid>:<line>`."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(line.encode() + b"\n")
        data = b""
        while not data.endswith(b"\n") and (chunk := sock.recv(65536)):
            data += chunk
    return data.decode(errors="replace").strip()


def test_router_groups_through_the_router_then_a_tcp_route_in_the_group_reaches_a_cell(tier: Tier, apps, unique) -> None:
    uaa = _uaa(tier)
    cc_routing = uaa.authorization([READ], client_id="cc_routing")  # Cloud Controller's client in v58
    wait_until(lambda: _routing_api(tier, cc_routing)[0] == 200, timeout=30,
               message="the router groups API through the router (platform route api.sys.local/routing)")

    # Cloud Controller's call: the whole list.
    status, groups = _routing_api(tier, cc_routing)
    assert status == 200 and isinstance(groups, list), (status, groups)
    port = tier.ports["router_tcp_port"]
    assert [(g["name"], g["type"], g["reservable_ports"]) for g in groups] == [("default-tcp", "tcp", str(port))]
    group = groups[0]

    # The cf CLI's call for `cf create-shared-domain D --router-group default-tcp`, with the admin's token.
    admin = uaa.authorization([READ, WRITE, "cloud_controller.admin"], client_id="cf")
    assert _routing_api(tier, admin, "/routing/v1/router_groups?name=default-tcp") == (200, [group])
    assert _routing_api(tier, admin, "/routing/v1/router_groups?name=nope") == (
        404, {"name": "ResourceNotFoundError", "message": "router group 'nope' not found"})

    # The wrong scope, another signer, another issuer, no token: 401 with routing-api's error JSON.
    unauthorized = {"name": "UnauthorizedError", "message": "You are not authorized to perform the requested action"}
    assert _routing_api(tier, uaa.authorization(["routing.routes.read", "openid"])) == (401, unauthorized)
    assert _routing_api(tier, TestUAA(ISSUER).authorization([READ])) == (
        401, {"name": "UnauthorizedError", "message": "Token signature is invalid"})
    assert _routing_api(tier, uaa.authorization([READ], issuer="https://uaa.elsewhere.invalid/oauth/token"))[0] == 401
    assert _routing_api(tier, None)[0] == 401

    # `cf create-route tcp.example.com --port P`: Cloud Controller checks P against the group's reservable
    # ports and puts the route into the app's DesiredLRP as a tcp-router route with the group's guid.
    process = f"{unique}-tcp"
    tcp_route = {"router_group_guid": group["guid"], "external_port": port, "container_port": 8080}
    tier.bbs.desire_lrp(process, tcp_routes=[tcp_route], instances=1)
    try:
        # A tcp-echo instance on a v58 cell: reachable only on its TLS proxy port, with a client
        # certificate the cell accepts for the router (tcp-router's part) and its identity checked.
        apps.append(tier.start_instance(process, 0, f"{unique}-tcp0", app="tcp-echo"))

        def echoed() -> bool:
            try:
                return _tcp_echo(port, "ping") == f"{unique}-tcp0:ping"
            except TimeoutError:
                return False

        wait_until(echoed, timeout=30, message=f"the TCP route on router port {port} to reach the cell's instance")
    finally:
        tier.bbs.desire_lrp(process, tcp_routes=[], instances=1)  # the port is the tier's one reservable port
