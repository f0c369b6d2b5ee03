"""Router shards (isolation segment routers): Copilot's gateway.router_shards, a route's isolation segment
from the DesiredLRP, and which Gateways (shards) route which of a host's destinations."""

from __future__ import annotations

import json

import pytest

from copilot import invalid_input
from copilot.config import ConfigError, parse
from copilot.istio import kinds
from copilot.istio.builder import (
    Certificate,
    GatewaySettings,
    RouteServiceSettings,
    build_host,
    build_router_objects,
    build_tcp,
    destination_service,
    host_object_names,
    object_name,
    tcp_object_names,
)
from copilot.istio.shards import DEFAULT_SHARDS, SHARD_LABEL, RouterShard
from copilot.model import Backend, Destination, HostRoutes, HttpRoute, Instance, PortMapping, ProcessRoutes, TcpPortRoutes
from copilot.protos import bbs_pb2 as bbs
from copilot.sources import bbs_translate
from copilot.views import Views

ISO = "persistent_isolation_segment"
SHARDS = (RouterShard("shared", "shared-and-segments"), RouterShard(ISO, "segments", (ISO,)))
SHARDED = GatewaySettings(router_shards=SHARDS)


@pytest.fixture(autouse=True)
def _fresh_reports() -> None:
    invalid_input.forget()


# ---------------------------------------------------------------- configuration


def shards_config(*shards: object) -> dict:
    return {"gateway": {"router_shards": list(shards)}}


def test_default_is_the_one_shard_all() -> None:
    assert parse({}).gateway.router_shards == DEFAULT_SHARDS == (RouterShard("all", "all", ()),)
    assert not parse({}).gateway.sharded


def test_shards_are_read() -> None:
    config = parse(
        shards_config(
            {"name": "shared", "routing_table_sharding_mode": "shared-and-segments", "isolation_segments": []},
            {"name": ISO, "routing_table_sharding_mode": "segments", "isolation_segments": [ISO], "bind": "127.0.0.3"},
        )
    )
    assert config.gateway.router_shards == (SHARDS[0], RouterShard(ISO, "segments", (ISO,), "127.0.0.3"))
    assert config.gateway.sharded


@pytest.mark.parametrize(
    ("shards", "message"),
    [
        ([], "gateway.router_shards: needs at least one shard"),
        ([{"name": "a b"}], "gateway.router_shards[0].name: 'a b' must be"),
        ([{"name": "-a"}], "gateway.router_shards[0].name:"),
        ([{"name": "a" * 41}], "gateway.router_shards[0].name:"),
        ([{}], "gateway.router_shards[0].name: is required"),
        ([{"name": "a"}, {"name": "a"}], "gateway.router_shards[1].name: router shard 'a' is given twice"),
        ([{"name": "a", "routing_table_sharding_mode": "some"}], "gateway.router_shards[0].routing_table_sharding_mode: 'some'"),
        (
            [{"name": "a", "routing_table_sharding_mode": "segments"}],
            "gateway.router_shards[0].isolation_segments: mode segments",
        ),
        ([{"name": "a", "isolation_segments": ["x"]}], "gateway.router_shards[0].isolation_segments: mode all"),
        ([{"name": "a", "routing_table_sharding_mode": "segments", "isolation_segments": ["x", "x"]}], "names a segment twice"),
        ([{"name": "a", "routing_table_sharding_mode": "segments", "isolation_segments": [""]}], "list of non-empty strings"),
        ([{"name": "a", "routing_table_sharding_mode": "segments", "isolation_segments": [" x"]}], "not an isolation segment"),
        ([{"name": "a", "routing_table_sharding_mode": "segments", "isolation_segments": "x"}], "list of non-empty strings"),
        ([{"name": "a", "segments": ["x"]}], "gateway.router_shards[0].segments: unknown key"),
        ([{"name": "a", "bind": "localhost"}], "gateway.router_shards[0].bind: 'localhost' is not an IP address"),
        ("shared", "gateway.router_shards: must be a list"),
    ],
)
def test_bad_shards_are_refused_naming_the_key(shards: object, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse({"gateway": {"router_shards": shards}})
    assert message in str(raised.value)


def test_modes_accept_as_gorouter_routes() -> None:
    everything, segments, shared = (
        RouterShard(),
        RouterShard("s", "segments", ("a",)),
        RouterShard("t", "shared-and-segments", ("a",)),
    )
    assert [everything.accepts(s) for s in ("", "a", "b")] == [True, True, True]
    assert [segments.accepts(s) for s in ("", "a", "b")] == [False, True, False]
    assert [shared.accepts(s) for s in ("", "a", "b")] == [True, True, False]
    assert (everything.serves_tcp, segments.serves_tcp, shared.serves_tcp) == (True, False, True)


# ---------------------------------------------------------------- BBS: the route's isolation segment


def process_routes(*entries: dict) -> ProcessRoutes:
    lrp = bbs.DesiredLRP(process_guid="pg-1", domain="cf-apps", instances=1)
    lrp.routes.routes["cf-router"] = json.dumps(list(entries)).encode()
    return bbs_translate.process_routes(lrp)


def test_isolation_segment_is_read_and_null_or_empty_is_shared() -> None:
    routes = process_routes(
        {"hostnames": ["a.example.com"], "port": 8080, "isolation_segment": ISO},
        {"hostnames": ["b.example.com"], "port": 8080, "isolation_segment": None},
        {"hostnames": ["c.example.com"], "port": 8080, "isolation_segment": ""},
        {"hostnames": ["d.example.com"], "port": 8080},
    )
    assert [(r.host, r.isolation_segment) for r in routes.http] == [
        ("a.example.com", ISO),
        ("b.example.com", ""),
        ("c.example.com", ""),
        ("d.example.com", ""),
    ]


@pytest.mark.parametrize("segment", [5, ["x"], "x" * 256, "bad\nname", " padded"])
def test_bad_isolation_segment_drops_the_entry_and_is_counted(segment: object) -> None:
    counter = invalid_input.INVALID_INPUT.labels("bbs", "cf-router.isolation_segment")
    before = counter._value.get()
    routes = process_routes(
        {"hostnames": ["bad.example.com"], "port": 8080, "isolation_segment": segment},
        {"hostnames": ["kept.example.com"], "port": 8080, "isolation_segment": ISO},
    )
    # Never routed as shared: the entry is gone, the process's other routes stay.
    assert routes.http == (HttpRoute("kept.example.com", "", 8080, isolation_segment=ISO),)
    assert counter._value.get() == before + 1


def test_the_views_carry_the_segment_to_destinations_and_cc_routes() -> None:
    from copilot.model import CCRoute

    table = Views()
    table.bbs.upsert_process("pg-iso", ProcessRoutes((HttpRoute("iso.example.com", "", 8080, isolation_segment=ISO),)))
    table.bbs.upsert_instance(0, Instance("pg-iso", 0, "i0", "RUNNING", True, "10.0.0.1", "", False, (PortMapping(8080, 61000),)))
    [destination] = table.host_routes("iso.example.com").paths[""]
    assert destination.isolation_segment == ISO
    # A Cloud Controller route mapped to the process takes the process's segment.
    table.cc.upsert_route(CCRoute("r1", "cc.example.com"))
    table.cc.upsert_association("capi-1", ("pg-iso",))
    table.cc.map_route("r1", "capi-1", 1)
    [mapped] = table.host_routes("cc.example.com").paths[""]
    assert mapped.isolation_segment == ISO


# ---------------------------------------------------------------- builder


def dest(guid: str, segment: str = "", weight: int = 1) -> Destination:
    return Destination(guid, 8080, weight, backends=[Backend("10.0.0.1", 61000)], isolation_segment=segment)


def svc(settings: GatewaySettings, guid: str, host: str) -> str:
    """The service host routes to process `guid` (port 8080) name."""
    return destination_service(settings, host, dest(guid)).host


def virtual_services(settings: GatewaySettings, routes: HostRoutes) -> dict[str, object]:
    return {o.name: o.spec for o in build_host(settings, routes) if o.kind is kinds.VIRTUAL_SERVICE}


def test_default_settings_emit_what_they_always_did() -> None:
    """One Gateway selected by gateway.selector alone, named gateway.name, and one VirtualService per host."""
    settings = GatewaySettings()
    objects = build_router_objects(settings)
    gateways = [o for o in objects if o.kind is kinds.GATEWAY]
    assert [(g.name, dict(g.spec.selector)) for g in gateways] == [("istio-system/cf-ingress", {"app": "istio-router"})]
    routes = HostRoutes("a.example.com", {"": [dest("p1", ISO), dest("p2")]})
    vs, *_ = build_host(settings, routes)
    assert (vs.name, list(vs.spec.gateways)) == (f"istio-system/{object_name('a.example.com')}", ["istio-system/cf-ingress"])
    assert len(vs.spec.http[0].route) == 2  # `all` routes every segment
    assert [o.name for o in host_object_names(settings, "a.example.com")] == [vs.name]
    tcp = build_tcp(settings, TcpPortRoutes(1024, [Backend("10.0.0.1", 61000)]))
    assert [o.name for o in tcp if o.kind is kinds.GATEWAY] == ["istio-system/cf-tcp-1024"]


def test_each_shard_has_its_gateways_selecting_its_routers_only() -> None:
    settings = GatewaySettings(router_shards=SHARDS, route_services=RouteServiceSettings())
    gateways = {o.name: dict(o.spec.selector) for o in build_router_objects(settings) if o.kind is kinds.GATEWAY}
    iso_suffix = next(n for n in gateways if n.startswith("istio-system/cf-ingress-")).removeprefix("istio-system/cf-ingress-")
    assert iso_suffix.startswith("persistent-isolation-segment-")  # DNS-1123: no underscores
    assert gateways == {
        "istio-system/cf-ingress": {"app": "istio-router", SHARD_LABEL: "shared"},
        f"istio-system/cf-ingress-{iso_suffix}": {"app": "istio-router", SHARD_LABEL: ISO},
        "istio-system/cf-route-services": {"app": "istio-router", SHARD_LABEL: "shared"},
        f"istio-system/cf-route-services-{iso_suffix}": {"app": "istio-router", SHARD_LABEL: ISO},
    }
    [unknown] = [o for o in build_router_objects(settings) if o.name.endswith("/cf-unknown-route")]
    assert list(unknown.spec.gateways) == ["istio-system/cf-ingress", f"istio-system/cf-ingress-{iso_suffix}"]
    [router_filter] = [o for o in build_router_objects(settings) if o.name == "istio-system/cf-router"]
    assert dict(router_filter.spec.workload_selector.labels) == {"app": "istio-router"}  # every router


def test_each_shard_shares_its_own_http_route_configuration_with_https() -> None:
    shards = (RouterShard("shared", "shared-and-segments"), RouterShard(ISO, "segments", (ISO,), bind="127.0.0.3"))
    certs = (Certificate("wildcard", ("*.example.com",)),)
    settings = GatewaySettings(router_shards=shards, https_port=443, certificates=certs, bind="127.0.0.2")
    filters = {
        o.name: o.spec for o in build_router_objects(settings) if o.kind is kinds.ENVOY_FILTER and "shared-routes" in o.name
    }
    rds = {dict(ef.workload_selector.labels)[SHARD_LABEL]: ef.config_patches[0].patch.value["typed_config"]["rds"]
           for ef in filters.values()}
    names = {shard: value["route_config_name"] for shard, value in rds.items()}
    assert len(filters) == 2 and names == {"shared": "http.80.127.0.0.2", ISO: "http.80.127.0.0.3"}


def test_a_host_in_one_segment_is_one_virtual_service_on_its_shard() -> None:
    iso = virtual_services(SHARDED, HostRoutes("iso.example.com", {"": [dest("p1", ISO)]}))
    shared = virtual_services(SHARDED, HostRoutes("shared.example.com", {"": [dest("p2")]}))
    [(iso_name, iso_vs)] = iso.items()
    [(shared_name, shared_vs)] = shared.items()
    assert iso_name == f"istio-system/{object_name('iso.example.com')}"
    assert list(iso_vs.gateways) == [SHARDED.shard_ref(1)]
    assert shared_name == f"istio-system/{object_name('shared.example.com')}"
    assert list(shared_vs.gateways) == [SHARDED.shard_ref(0)]


def test_a_host_no_shard_routes_has_no_objects() -> None:
    assert build_host(SHARDED, HostRoutes("other.example.com", {"": [dest("p1", "another-segment")]})) == []


def test_shards_routing_different_destinations_get_a_virtual_service_each() -> None:
    # Two apps share a host (a blue-green move between segments): each router routes only its own,
    # weights among them as ever (the shared app alone gets everything on the shared routers).
    routes = HostRoutes(
        "move.example.com", {"": [dest("shared-app", "", 3), dest("iso-app", ISO, 1)], "/api": [dest("api", ISO)]}
    )
    objects = build_host(SHARDED, routes)
    vss = {o.name: o.spec for o in objects if o.kind is kinds.VIRTUAL_SERVICE}
    base = f"istio-system/{object_name('move.example.com')}"
    further = f"istio-system/{object_name(f'move.example.com~{ISO}')}"  # named after the host and its shard
    assert set(vss) == {base, further}
    assert len(further) <= len(f"istio-system/{object_name('x' * 253)}")  # never longer than a host's names
    shared, iso = vss[base], vss[further]
    assert list(shared.gateways) == [SHARDED.shard_ref(0)]
    assert [r.name for r in shared.http] == ["/"]  # /api is in the segment: unknown on the shared routers
    host = "move.example.com"
    assert [(t.destination.host, t.weight) for t in shared.http[0].route] == [(svc(SHARDED, "shared-app", host), 0)]
    assert list(iso.gateways) == [SHARDED.shard_ref(1)]
    assert [r.name for r in iso.http] == ["/api", "/"]
    assert [t.destination.host for t in iso.http[1].route] == [svc(SHARDED, "iso-app", host)]
    # A service per destination some shard routes.
    rules = [o.spec for o in objects if o.kind is kinds.DESTINATION_RULE]
    assert {dr.host for dr in rules} == {svc(SHARDED, g, host) for g in ("shared-app", "iso-app", "api")}
    # Every name a host may use is known, so the publisher deletes those it no longer needs.
    assert set(vss) <= {o.name for o in host_object_names(SHARDED, "move.example.com") if o.kind is kinds.VIRTUAL_SERVICE}


def test_weights_among_a_shards_destinations_follow_the_weight_logic() -> None:
    shards = (RouterShard("shared", "shared-and-segments", (ISO,)), RouterShard(ISO, "segments", (ISO,)))
    settings = GatewaySettings(router_shards=shards)
    routes = HostRoutes("w.example.com", {"": [dest("a", "", 75), dest("b", ISO, 25)]})
    vss = virtual_services(settings, routes)
    both = vss[f"istio-system/{object_name('w.example.com')}"]
    [only_b] = [vs for name, vs in vss.items() if name != f"istio-system/{object_name('w.example.com')}"]
    assert [t.weight for t in both.http[0].route] == [75, 25]
    assert [(t.destination.host, t.weight) for t in only_b.http[0].route] == [(svc(settings, "b", "w.example.com"), 0)]


def test_a_shards_share_of_a_path_is_normalised_once_from_the_relative_weights() -> None:
    # Three apps on one path, one of them in the segment: the shared routers split between the other
    # two exactly as their weights say (1:1), never the rounding of a split among all three (34:33).
    shards = (RouterShard("shared", "shared-and-segments", ()), RouterShard(ISO, "segments", (ISO,)))
    views = Views()
    for guid, segment in (("a", ""), ("b", ""), ("c", ISO)):
        views.bbs.upsert_process(guid, ProcessRoutes((HttpRoute("n.example.com", "", 8080, isolation_segment=segment),)))
    vss = virtual_services(GatewaySettings(router_shards=shards), views.host_routes("n.example.com"))
    shared = vss[f"istio-system/{object_name('n.example.com')}"]
    assert [t.weight for t in shared.http[0].route] == [50, 50]


def test_shards_routing_the_same_destinations_share_one_virtual_service() -> None:
    shards = (
        RouterShard("a", "shared-and-segments"),
        RouterShard("b", "shared-and-segments"),
        RouterShard(ISO, "segments", (ISO,)),
    )
    settings = GatewaySettings(router_shards=shards)
    [vs] = virtual_services(settings, HostRoutes("s.example.com", {"": [dest("p")]})).values()
    assert list(vs.gateways) == [settings.shard_ref(0), settings.shard_ref(1)]


def test_route_service_routes_use_each_shards_own_loopback_gateway() -> None:
    settings = GatewaySettings(router_shards=SHARDS, route_services=RouteServiceSettings())
    bound = dest("p", ISO)
    bound.route_service_url = "https://rs.example.com"
    [vs] = virtual_services(settings, HostRoutes("rs.example.com", {"": [bound]})).values()
    assert list(vs.gateways) == [settings.shard_ref(1), settings.shard_route_services_ref(1)]
    gateways = {g for route in vs.http for match in route.match for g in match.gateways}
    assert gateways == {settings.shard_ref(1), settings.shard_route_services_ref(1)}


def test_tcp_ports_are_served_by_shards_that_route_shared_destinations() -> None:
    shards = (*SHARDS, RouterShard("more", "shared-and-segments", ("x",)))
    settings = GatewaySettings(router_shards=shards)
    objects = build_tcp(settings, TcpPortRoutes(1024, [Backend("10.0.0.1", 61000)]))
    gateways = {o.name: dict(o.spec.selector) for o in objects if o.kind is kinds.GATEWAY}
    assert gateways == {
        "istio-system/cf-tcp-1024": {"app": "istio-router", SHARD_LABEL: "shared"},
        "istio-system/cf-tcp-1024-more": {"app": "istio-router", SHARD_LABEL: "more"},
    }
    [vs] = [o.spec for o in objects if o.kind is kinds.VIRTUAL_SERVICE]
    assert list(vs.gateways) == list(gateways)
    assert {o.name for o in tcp_object_names(settings, 1024) if o.kind is kinds.GATEWAY} == set(gateways)
    only_segments = GatewaySettings(router_shards=(RouterShard(ISO, "segments", (ISO,)),))
    assert build_tcp(only_segments, TcpPortRoutes(1024, [Backend("10.0.0.1", 61000)])) == []


def test_publisher_deletes_the_virtual_services_a_host_no_longer_needs() -> None:
    from copilot.publisher import Publisher
    from copilot.xds.store import Store

    table = Views()
    snapshot = Store()
    publisher = Publisher(table, snapshot, SHARDED)
    host = "pub.example.com"

    def names() -> set[str]:
        return {n for n in snapshot.names(kinds.VIRTUAL_SERVICE) if n.startswith("istio-system/pub.example.com")}

    table.bbs.upsert_process("pg-a", ProcessRoutes((HttpRoute(host, "", 8080),)))
    table.bbs.upsert_process("pg-b", ProcessRoutes((HttpRoute(host, "", 8080, isolation_segment=ISO),)))
    publisher.publish()
    assert len(names()) == 2
    table.bbs.remove_process("pg-b")
    publisher.publish()
    assert names() == {f"istio-system/{object_name(host)}"}
    table.bbs.upsert_process("pg-a", ProcessRoutes((HttpRoute(host, "", 8080, isolation_segment="elsewhere"),)))
    publisher.publish()
    assert names() == set()


def test_destinations_no_shard_routes_are_left_out_of_the_host() -> None:
    routes = HostRoutes("part.example.com", {"": [dest("shared-app"), dest("elsewhere-app", "another-segment")]})
    vs, dr, se = build_host(SHARDED, routes)
    # only the shared app is routed by any shard: its service alone
    assert [t.destination.host for t in vs.spec.http[0].route] == [svc(SHARDED, "shared-app", "part.example.com")]
    assert dr.spec.host == svc(SHARDED, "shared-app", "part.example.com")
    assert len(se.spec.endpoints) == 1
