"""The Istio builder: routing state in, Gateway / VirtualService / DestinationRule / ServiceEntry out:
a host's VirtualService routes to services, one DestinationRule and ServiceEntry per destination."""

from __future__ import annotations

import pytest

from copilot import invalid_input
from copilot.istio import kinds
from copilot.istio.builder import (
    IDENTITY_PLACEHOLDER_NAME,
    IDENTITY_SERVICE_PORT,
    INSTANCE_GUID_LABEL,
    INSTANCE_INDEX_LABEL,
    SERVICE_PORT,
    SERVICE_PORT_NAME,
    TLS_HOSTNAME_LABEL,
    GatewaySettings,
    build_gateway,
    build_host,
    build_host_parts,
    destination_service,
    host_object_names,
    object_name,
    service_id,
    subset_name,
)
from copilot.model import PLATFORM_PROCESS_PREFIX, Backend, Destination, HostRoutes
from copilot.protos import istio_networking_pb2 as pb

SETTINGS = GatewaySettings(namespace="cf", name="ingress", selector={"istio": "router"}, http_port=8000)


def dest(guid: str, port: int = 8080, weight: int = 100, *backends: Backend) -> Destination:
    return Destination(guid, port, weight, "http1", list(backends))


def build(routes: HostRoutes) -> tuple[pb.VirtualService, pb.DestinationRule, pb.ServiceEntry]:
    """A host with one destination: its VirtualService, and its one service's DestinationRule and ServiceEntry."""
    objects = build_host(SETTINGS, routes)
    assert [o.kind for o in objects] == [kinds.VIRTUAL_SERVICE, kinds.DESTINATION_RULE, kinds.SERVICE_ENTRY]
    assert objects[0].name == f"cf/{object_name(routes.host.lower().rstrip('.'))}"
    assert objects[1].name == objects[2].name != objects[0].name
    vs, dr, se = (o.spec for o in objects)
    return vs, dr, se  # type: ignore[return-value]


def services(settings: GatewaySettings, routes: HostRoutes) -> dict[str, tuple[pb.DestinationRule, pb.ServiceEntry]]:
    """Per service host, the DestinationRule and ServiceEntry of each service a host routes to."""
    objects = build_host(settings, routes)[len(build_host_parts(settings, routes).objects):]
    pairs = {}
    for dr, se in zip(objects[::2], objects[1::2], strict=True):
        assert (dr.kind, se.kind, dr.name) == (kinds.DESTINATION_RULE, kinds.SERVICE_ENTRY, se.name)
        assert list(se.spec.hosts) == [dr.spec.host]  # type: ignore[attr-defined]
        pairs[dr.spec.host] = (dr.spec, se.spec)  # type: ignore[attr-defined]
    return pairs  # type: ignore[return-value]


def svc(guid: str, port: int = 8080, settings: GatewaySettings = SETTINGS, host: str = "app.example.com") -> str:
    return destination_service(settings, host, dest(guid, port)).host


def sample() -> HostRoutes:
    return HostRoutes(
        "app.example.com",
        {
            "": [
                dest("web", 8080, 67, Backend("10.0.0.1", 61001, 0, "w0", 0, "z1"), Backend("10.0.0.2", 61002, 0, "w1", 1, "z2")),
                dest("canary", 8080, 33, Backend("10.0.0.3", 61003, 0, "c0", 0, "z1")),
            ],
            "/api": [dest("api", 9000, 100, Backend("10.0.1.1", 62001))],
            "/api/v2": [dest("api2", 9000, 100, Backend("10.0.1.2", 62002))],
            "/z": [dest("web", 8080, 100)],
        },
    )


def test_gateway() -> None:
    obj = build_gateway(SETTINGS)
    assert (obj.kind, obj.name) == (kinds.GATEWAY, "cf/ingress")
    gateway = obj.spec
    assert dict(gateway.selector) == {"istio": "router"}
    [server] = gateway.servers
    assert (server.port.number, server.port.protocol, list(server.hosts)) == (8000, "HTTP", ["*"])


def test_virtual_service_orders_paths_longest_first_root_last() -> None:
    vs = build_host(SETTINGS, sample())[0].spec
    assert list(vs.hosts) == ["app.example.com"]
    assert list(vs.gateways) == ["cf/ingress"]
    assert [r.name for r in vs.http] == ["/api/v2", "/api", "/z", "/"]
    api_v2 = vs.http[0]
    assert [(m.uri.exact, m.uri.prefix) for m in api_v2.match] == [("/api/v2", ""), ("", "/api/v2/")]
    assert [m.uri.WhichOneof("match_type") for m in api_v2.match] == ["exact", "prefix"]
    root = vs.http[-1]
    assert list(root.match) == []  # the root matches everything


def test_virtual_service_destinations_and_weights() -> None:
    vs = build_host(SETTINGS, sample())[0].spec
    root = vs.http[-1]
    # A weighted route names a service per destination, no subsets.
    assert [(d.destination.host, d.destination.subset, d.destination.port.number, d.weight) for d in root.route] == [
        (svc("web"), "", SERVICE_PORT, 67),
        (svc("canary"), "", SERVICE_PORT, 33),
    ]
    # a single destination carries no weight (Istio's default of 100)
    [single] = vs.http[1].route
    assert (single.destination.host, single.destination.subset, single.weight) == (svc("api", 9000), "", 0)


def test_each_process_and_port_is_a_service_of_its_own() -> None:
    routes = sample()
    routes.paths["/metrics"] = [dest("web", 9100, 100)]
    built = services(SETTINGS, routes)
    # "web":8080 serves two paths but is one service
    assert set(built) == {svc("web"), svc("canary"), svc("api", 9000), svc("api2", 9000), svc("web", 9100)}
    assert len(build_host(SETTINGS, routes)) == 1 + 2 * 5
    for host, (dr, _) in built.items():
        assert host.endswith(".copilot.internal")
        assert list(dr.subsets) == []  # its one cluster, the service's default
        assert dr.traffic_policy.outlier_detection.consecutive_local_origin_failures.value > 0


def test_hosts_routing_to_one_process_share_its_service() -> None:
    web = dest("web", 8080, 1, Backend("10.0.0.1", 61001, 0, "w0", 0))
    one = build_host(SETTINGS, HostRoutes("one.example.com", {"": [web]}))
    two = build_host(SETTINGS, HostRoutes("two.example.org", {"/x": [web], "": [dest("web", 8080, 3, *web.backends)]}))
    assert [(o.kind, o.name, o.spec) for o in one[1:]] == [(o.kind, o.name, o.spec) for o in two[1:]]
    assert one[0].name != two[0].name  # each host keeps its VirtualService
    assert {r.destination.host for route in two[0].spec.http for r in route.route} == {one[1].spec.host}  # type: ignore[attr-defined]


def test_a_service_is_named_by_what_its_content_depends_on_never_by_its_instances() -> None:
    base = Destination("web", 8080, 1, "http1", [Backend("10.0.0.1", 61001)], app_guid="app")
    same = [
        Destination("web", 8080, 7, "http1", [], app_guid="app", route_service_url="https://rs.example.com"),
        Destination("web", 8080, 1, "http1", [Backend("10.0.0.2", 61002)], app_guid="app", isolation_segment="iso"),
    ]
    other = [
        Destination("web", 8081, 1, "http1", [], app_guid="app"),
        Destination("web2", 8080, 1, "http1", [], app_guid="app"),
        Destination("web", 8080, 1, "http2", [], app_guid="app"),
        Destination("web", 8080, 1, "http1", [], app_guid="app", tls_san="san"),
        Destination("web", 8080, 1, "http1", [], app_guid="app2"),
    ]
    assert {service_id(h, d) for h in ("a.example.com", "b.example.com") for d in [base, *same]} == {service_id("a", base)}
    assert len({service_id("a", d) for d in [base, *other]}) == 1 + len(other)


def test_a_platform_destination_is_a_service_of_its_host() -> None:
    """A route registrar's registrations are grouped per host and path: their backends differ by host."""
    platform = Destination(f"{PLATFORM_PROCESS_PREFIX}registrar:", 0, 1, "http1", [Backend("10.0.0.1", 8080)])
    assert service_id("api.sys.example.com", platform) != service_id("uaa.sys.example.com", platform)


def test_subset_names_are_distinct_per_process_and_port() -> None:
    assert subset_name("web", 8080) != subset_name("web", 8081)
    assert subset_name("web", 8080) != subset_name("web2", 8080)
    assert subset_name("web", 8080) == subset_name("web", 8080)


def test_service_entries_have_static_endpoints_with_instance_labels() -> None:
    built = services(SETTINGS, sample())
    for _, se in built.values():
        assert se.resolution == pb.ServiceEntry.STATIC
        assert se.location == pb.ServiceEntry.MESH_INTERNAL
        assert [(p.number, p.protocol, p.name) for p in se.ports] == [(SERVICE_PORT, "HTTP", SERVICE_PORT_NAME)]
    endpoints = {
        host: [(e.address, dict(e.ports), dict(e.labels), e.locality) for e in se.endpoints] for host, (_, se) in built.items()
    }
    # App instances carry their guid and index for X-CF-InstanceID / X-CF-InstanceIndex (router_filter.py).
    assert endpoints == {
        svc("web"): [
            ("10.0.0.1", {"http": 61001}, {INSTANCE_GUID_LABEL: "w0", INSTANCE_INDEX_LABEL: "0"}, "z1"),
            ("10.0.0.2", {"http": 61002}, {INSTANCE_GUID_LABEL: "w1", INSTANCE_INDEX_LABEL: "1"}, "z2"),
        ],
        svc("canary"): [("10.0.0.3", {"http": 61003}, {INSTANCE_GUID_LABEL: "c0", INSTANCE_INDEX_LABEL: "0"}, "z1")],
        svc("api", 9000): [("10.0.1.1", {"http": 62001}, {}, "")],
        svc("api2", 9000): [("10.0.1.2", {"http": 62002}, {}, "")],
    }


def test_ipv6_backend_is_accepted() -> None:
    _, _, se = build(HostRoutes("v6.example.com", {"": [dest("p", 8080, 100, Backend("fd00::1", 61000))]}))
    assert [e.address for e in se.endpoints] == ["fd00::1"]


def test_wildcard_host_routes_to_a_synthetic_service_host() -> None:
    vs, dr, se = build(HostRoutes("*.example.com", {"": [dest("p", 8080, 100, Backend("10.0.0.9", 61000))]}))
    host = svc("p", host="*.example.com")
    assert "*" not in host and host.endswith(".copilot.internal")
    assert list(vs.hosts) == ["*.example.com"]
    assert vs.http[0].route[0].destination.host == host
    assert dr.host == host
    assert list(se.hosts) == [host]


def test_object_names_are_dns_labels_and_distinct() -> None:
    names = {
        object_name(h)
        for h in ("a.example.com", "A.example.com".lower(), "a-example.com", "*.example.com", "wildcard.example.com")
    }
    assert len(names) == 4
    for name in names:
        assert name == name.lower() and "*" not in name and not name.startswith(("-", "."))
    assert len(object_name("x" * 63 + "." + "y" * 63 + "." + "z" * 63 + ".example.com")) <= 253


def test_build_host_normalises_and_names_objects() -> None:
    objects = build_host(SETTINGS, HostRoutes("App.Example.com", {"": [dest("p")]}))
    assert objects[0].name == f"cf/{object_name('app.example.com')}"
    # A host owns its VirtualService; the service it routes to is shared (the publisher deletes it).
    assert [(o.kind, o.name) for o in host_object_names(SETTINGS, "app.example.com")] == [(objects[0].kind, objects[0].name)]
    assert {o.name for o in objects[1:]} == {destination_service(SETTINGS, "app.example.com", dest("p")).name}


def test_same_input_gives_identical_bytes() -> None:
    first = [o.spec.SerializeToString(deterministic=True) for o in build_host(SETTINGS, sample())]
    second = [o.spec.SerializeToString(deterministic=True) for o in build_host(SETTINGS, sample())]
    assert first == second
    # insertion order of the paths does not matter either
    shuffled = sample()
    shuffled.paths = dict(reversed(list(shuffled.paths.items())))
    assert [o.spec.SerializeToString(deterministic=True) for o in build_host(SETTINGS, shuffled)] == first


def test_changed_input_gives_different_bytes() -> None:
    changed = sample()
    changed.paths[""][0].backends.pop()
    assert build_host(SETTINGS, changed)[2].spec != build_host(SETTINGS, sample())[2].spec


def dropped(field: str) -> float:
    return invalid_input.INVALID_INPUT.labels("builder", field)._value.get()


@pytest.mark.parametrize(
    "address", ["", "not-an-ip", "999.1.1.1", "10.0.0", "10.0.0.256", "10.0.0.01", "example.com", "fd00::zz", "fd00::1%eth0"]
)
def test_an_endpoint_with_a_bad_address_is_left_out_and_the_host_built(address: str) -> None:
    """The last line of defence: one endpoint istiod would refuse never costs the host its other endpoints."""
    invalid_input.forget()
    before = dropped("endpoint.address")
    good = Backend("10.0.0.1", 61000, 0, "good", 0)
    routes = HostRoutes("bad.example.com", {"": [dest("p", 8080, 100, good, Backend(address, 61001, 0, "bad", 1))]})
    _, _, se = build(routes)
    assert [(e.address, e.ports[SERVICE_PORT_NAME]) for e in se.endpoints] == [("10.0.0.1", 61000)]
    assert dropped("endpoint.address") == before + 1
    build(routes)  # rebuilt: not counted again
    assert dropped("endpoint.address") == before + 1


@pytest.mark.parametrize(("port", "tls_port", "settings"), [(70000, 0, SETTINGS), (0, 70000, None), (61001, 65536, None)])
def test_an_endpoint_with_a_port_istiod_refuses_is_left_out(port: int, tls_port: int, settings: GatewaySettings | None) -> None:
    invalid_input.forget()
    settings = settings or INTEGRITY
    before = dropped("endpoint.port")
    good = Backend("10.0.0.1", 61000, 61443, "good", 0)
    routes = HostRoutes("bad.example.com", {"": [dest("p", 8080, 100, good, Backend("10.0.0.2", port, tls_port, "bad", 1))]})
    se = build_host(settings, routes)[2].spec
    assert [e.address for e in se.endpoints] == ["10.0.0.1"]  # type: ignore[attr-defined]
    assert dropped("endpoint.port") == before + 1


def test_tcp_and_internal_routes_leave_out_bad_endpoints_too() -> None:
    from copilot.istio.builder import build_internal, build_tcp
    from copilot.model import InternalService, TcpPortRoutes

    invalid_input.forget()
    backends = [Backend("10.0.0.1", 61000), Backend("not-an-ip", 61001), Backend("10.0.0.3", 70000)]
    tcp = build_tcp(SETTINGS, TcpPortRoutes(1024, backends))
    se = next(o.spec for o in tcp if o.kind == kinds.SERVICE_ENTRY)
    assert [(e.address, e.ports["tcp"]) for e in se.endpoints] == [("10.0.0.1", 61000)]  # type: ignore[attr-defined]
    destination = dest("p", 8080, 1, Backend("10.255.1.1", 8080), Backend("x", 8080))
    service = InternalService("app.apps.internal", "10.255.0.1", [destination])
    [internal] = build_internal(SETTINGS, service)
    assert [e.address for e in internal.spec.endpoints] == ["10.255.1.1"]  # type: ignore[attr-defined]


def test_bad_host_raises_value_error() -> None:
    with pytest.raises(ValueError, match="host"):
        build_host(SETTINGS, HostRoutes("bad_host", {"": [dest("p")]}))


# ---------------------------------------------------------------- route integrity (v58 cells)

INTEGRITY = GatewaySettings(
    namespace="cf",
    name="ingress",
    http_port=8000,
    instance_identity_ca_file="/certs/instance_identity_ca.crt",
    backend_client_certificate="backend-client",
    certificate_dir="/certs",
)


def test_route_integrity_is_one_cluster_per_process_with_each_endpoint_named_by_its_guid() -> None:
    # v58 cells: no plain host port, only the TLS proxy port (host_tls_proxy_port).
    routes = HostRoutes(
        "a.example.com",
        {"": [dest("web", 8080, 100, Backend("10.0.0.1", 0, 61010, "guid-b", 1), Backend("10.0.0.2", 0, 61020, "guid-a", 0))]},
    )
    vs, dr, se = (o.spec for o in build_host(INTEGRITY, routes))
    # One process: no subset (no cluster per instance, nor per process): the host's default cluster.
    assert list(dr.subsets) == []
    tls = dr.traffic_policy.tls
    assert tls.mode == pb.ClientTLSSettings.MUTUAL
    assert (tls.client_certificate, tls.private_key) == ("/certs/backend-client.crt", "/certs/backend-client.key")
    assert tls.ca_certificates == "/certs/instance_identity_ca.crt"
    # No instance in the DestinationRule (it does not change when instances do): the placeholder name,
    # which no certificate has, until the router filter checks each endpoint's own hostname.
    assert list(tls.subject_alt_names) == [IDENTITY_PLACEHOLDER_NAME] and tls.sni == IDENTITY_PLACEHOLDER_NAME
    assert [(dict(e.ports)[SERVICE_PORT_NAME], e.labels[TLS_HOSTNAME_LABEL]) for e in se.endpoints] == [
        (61010, "guid-b"), (61020, "guid-a"),
    ]
    assert [p.number for p in se.ports] == [IDENTITY_SERVICE_PORT]
    assert [(r.destination.subset, r.destination.port.number) for r in vs.http[0].route] == [("", IDENTITY_SERVICE_PORT)]


def test_route_integrity_with_several_processes_is_a_service_each_with_the_identity_check() -> None:
    routes = HostRoutes(
        "a.example.com",
        {
            "": [
                dest("blue", 8080, 1, Backend("10.0.0.1", 0, 61010, "guid-b", 0)),
                dest("green", 8080, 3, Backend("10.0.0.2", 0, 61020, "guid-g", 0)),
            ]
        },
    )
    vs = build_host(INTEGRITY, routes)[0].spec
    built = services(INTEGRITY, routes)
    blue, green = svc("blue", settings=INTEGRITY, host="a.example.com"), svc("green", settings=INTEGRITY, host="a.example.com")
    assert list(built) == [blue, green]
    for dr, se in built.values():
        assert list(dr.subsets) == []
        assert list(dr.traffic_policy.tls.subject_alt_names) == [IDENTITY_PLACEHOLDER_NAME]
        assert [p.number for p in se.ports] == [IDENTITY_SERVICE_PORT]
    assert [(r.destination.host, r.destination.subset, r.destination.port.number, r.weight) for r in vs.http[0].route] == [  # type: ignore[attr-defined]
        (blue, "", IDENTITY_SERVICE_PORT, 25),
        (green, "", IDENTITY_SERVICE_PORT, 75),
    ]


def test_route_integrity_never_falls_back_to_a_plain_port() -> None:
    # One instance has only a plain port (no TLS proxy) beside a proxied one: it gets no traffic.
    routes = HostRoutes(
        "a.example.com",
        {"": [dest("web", 8080, 100, Backend("10.0.0.1", 61001, 0, "guid-a", 0), Backend("10.0.0.2", 0, 61020, "guid-b", 1))]},
    )
    _, _, se = (o.spec for o in build_host(INTEGRITY, routes))
    assert [(e.address, dict(e.ports)[SERVICE_PORT_NAME]) for e in se.endpoints] == [("10.0.0.2", 61020)]


def test_the_destination_rule_does_not_change_when_instances_do() -> None:
    one = HostRoutes("a.example.com", {"": [dest("web", 8080, 100, Backend("10.0.0.1", 0, 61001, "guid-a", 0))]})
    two = HostRoutes(
        "a.example.com",
        {"": [dest("web", 8080, 100, Backend("10.0.0.1", 0, 61001, "guid-a", 0), Backend("10.0.0.2", 0, 61002, "guid-b", 1))]},
    )
    assert build_host(INTEGRITY, one)[1].spec == build_host(INTEGRITY, two)[1].spec


def test_without_a_client_certificate_the_router_offers_none() -> None:
    settings = GatewaySettings(instance_identity_ca_file="/certs/ca.crt")
    routes = HostRoutes("a.example.com", {"": [dest("web", 8080, 100, Backend("10.0.0.1", 0, 61001, "guid-a", 0))]})
    _, dr, _ = (o.spec for o in build_host(settings, routes))
    tls = dr.traffic_policy.tls
    assert tls.mode == pb.ClientTLSSettings.SIMPLE and not tls.client_certificate


def test_tcp_routes_reach_cells_over_tls_with_the_client_certificate() -> None:
    from copilot.istio.builder import build_tcp
    from copilot.model import TcpPortRoutes

    objects = build_tcp(INTEGRITY, TcpPortRoutes(1024, [Backend("10.0.0.1", 0, 61001, "guid-a", 0)]))
    se = next(o.spec for o in objects if o.kind == kinds.SERVICE_ENTRY)
    dr = next(o.spec for o in objects if o.kind == kinds.DESTINATION_RULE)
    assert [dict(e.ports) for e in se.endpoints] == [{"tcp": 61001}]
    # TCP clusters have no hostname per endpoint: the instances' guids are listed.
    assert dr.traffic_policy.tls.mode == pb.ClientTLSSettings.MUTUAL
    assert list(dr.traffic_policy.tls.subject_alt_names) == ["guid-a"]


def test_a_route_bound_to_a_route_service_is_refused_not_routed() -> None:
    bound = Destination("web", 8080, 100, "http1", [Backend("10.0.0.1", 61001)], route_service_url="https://rs.example.org")
    routes = HostRoutes("app.example.com", {"/guarded": [bound], "": [dest("web", 8080, 100, Backend("10.0.0.1", 61001))]})
    vs, _, _ = build(routes)
    # Route services off (the default): gorouter without route_services_secret answers 502 to every
    # request of the route, WebSocket upgrades included (it checks that route services are on first).
    [route] = [r for r in vs.http if r.name.startswith("/guarded")]
    assert route.name == "/guarded route service"
    assert list(route.route) == []  # no destination: the app is never reached
    assert route.direct_response.status == 502
    assert route.direct_response.body.string == "502 Bad Gateway: Support for route services is disabled.\n"
    assert dict(route.headers.response.set) == {"X-Cf-Routererror": "route_service_unsupported"}
    assert [(m.uri.exact, m.uri.prefix) for m in route.match] == [("/guarded", ""), ("", "/guarded/")]
    assert list(vs.gateways) == [SETTINGS.ref]
    assert [d.destination.host for d in vs.http[-1].route] == [svc("web")]  # "/" still served
