"""The Cloud Controller slice as the views merge it: weighted mappings, the split of a CC process's weight
between its Diego processes, CC precedence over DesiredLRP routes, internal routes and dirty tracking."""

from __future__ import annotations

import pytest
from copilot_helpers import routed_weights

from copilot.istio import kinds
from copilot.istio.builder import build_internal
from copilot.model import CCRoute, CCState, HttpRoute, Instance, PortMapping, ProcessRoutes, ViewKind
from copilot.protos import istio_networking_pb2 as pb
from copilot.settings import GatewaySettings
from copilot.views import Views


def instance(guid: str, index: int = 0, *, address: str = "10.0.0.1", instance_address: str = "", port: int = 8080) -> Instance:
    return Instance(
        guid, index, f"{guid}-{index}", "RUNNING", True, address, instance_address, False, (PortMapping(port, 61000 + index),)
    )


def process(*routes: tuple[str, str, int]) -> ProcessRoutes:
    return ProcessRoutes(http=tuple(HttpRoute(host, path, port) for host, path, port in routes))


def weights(views: Views, host: str, path: str = "") -> list[tuple[str, int]]:
    return routed_weights(views, host, path)


@pytest.fixture
def views() -> Views:
    return Views()


# ---------------------------------------------------------------- weights


def test_weights_1_and_3_become_25_and_75(views: Views) -> None:
    views.cc.upsert_route(CCRoute("r", "a.example.com"))
    views.cc.map_route("r", "c1", 1)
    views.cc.map_route("r", "c2", 3)
    views.cc.upsert_association("c1", ("d1",))
    views.cc.upsert_association("c2", ("d2",))
    assert weights(views, "a.example.com") == [("d1", 25), ("d2", 75)]


def test_a_cc_process_with_two_diego_processes_splits_its_weight(views: Views) -> None:
    views.cc.upsert_route(CCRoute("r", "a.example.com"))
    views.cc.map_route("r", "c1", 1)
    views.cc.upsert_association("c1", ("c1-v1", "c1-v2"))  # a rolling deploy: old and new version both run
    assert weights(views, "a.example.com") == [("c1-v1", 50), ("c1-v2", 50)]
    views.cc.map_route("r", "c2", 1)
    views.cc.upsert_association("c2", ("c2-v1",))
    assert weights(views, "a.example.com") == [("c1-v1", 25), ("c1-v2", 25), ("c2-v1", 50)]


def test_uneven_splits_still_total_100(views: Views) -> None:
    views.cc.upsert_route(CCRoute("r", "a.example.com"))
    views.cc.map_route("r", "c1", 2)
    views.cc.map_route("r", "c2", 1)
    views.cc.upsert_association("c1", ("c1-a", "c1-b", "c1-c"))
    views.cc.upsert_association("c2", ("c2-a", "c2-b"))
    result = weights(views, "a.example.com")
    assert sum(w for _, w in result) == 100
    # c1 has two thirds of the route, split three ways; c2 a third, split two ways.
    assert [w for _, w in result] == [22, 22, 22, 17, 17]


def test_a_mapping_without_an_association_routes_nothing(views: Views) -> None:
    views.cc.upsert_route(CCRoute("r", "a.example.com"))
    views.cc.map_route("r", "c1", 1)
    assert sorted(views.keys(ViewKind.HOST)) == ["a.example.com"]
    assert views.host_routes("a.example.com") is None


def test_cc_backends_are_the_diego_instances_on_their_own_route_port(views: Views) -> None:
    views.bbs.upsert_process("d1", process(("other.example.com", "", 9090), ("a.example.com", "/api", 8081)))
    views.bbs.upsert_instance(0, instance("d1", address="10.0.0.7", port=8081))
    views.cc.upsert_route(CCRoute("r", "A.example.com".lower(), "/api"))
    views.cc.map_route("r", "c1", 1)
    views.cc.upsert_association("c1", ("d1",))
    [dest] = views.host_routes("a.example.com").paths["/api"]
    assert (dest.container_port, [(b.address, b.port) for b in dest.backends]) == (8081, [("10.0.0.7", 61000)])


# ---------------------------------------------------------------- precedence


def test_cc_mappings_replace_desired_lrp_routes_for_the_same_host_and_path_only(views: Views) -> None:
    views.bbs.upsert_process(
        "lrp", process(("a.example.com", "", 8080), ("a.example.com", "/docs", 8080), ("b.example.com", "", 8080))
    )
    views.bbs.upsert_process("c1-v1", process())
    views.cc.upsert_route(CCRoute("r", "a.example.com"))
    views.cc.map_route("r", "c1", 1)
    views.cc.upsert_association("c1", ("c1-v1",))
    routes = views.host_routes("a.example.com")
    assert [d.process_guid for d in routes.paths[""]] == ["c1-v1"]  # CC wins on a.example.com/
    assert [d.process_guid for d in routes.paths["/docs"]] == ["lrp"]  # another path: DesiredLRP stands
    assert weights(views, "b.example.com") == [("lrp", 100)]  # another host: untouched
    views.cc.unmap_route("r", "c1")
    assert [d.process_guid for d in views.host_routes("a.example.com").paths[""]] == ["lrp"]  # back to the LRP


def test_a_cc_route_with_no_usable_mapping_leaves_desired_lrp_routes(views: Views) -> None:
    views.bbs.upsert_process("lrp", process(("a.example.com", "", 8080)))
    views.cc.upsert_route(CCRoute("r", "a.example.com"))
    views.cc.map_route("r", "c1", 1)  # c1 has no association yet
    assert weights(views, "a.example.com") == [("lrp", 100)]


# ---------------------------------------------------------------- internal routes


def test_internal_route_is_an_internal_service_on_container_addresses(views: Views) -> None:
    views.bbs.upsert_process("d1", process(("app.example.com", "", 8080)))
    views.bbs.upsert_instance(0, instance("d1", 0, address="10.0.0.1", instance_address="10.255.1.2"))
    views.bbs.upsert_instance(0, instance("d1", 1, address="10.0.0.2", instance_address="10.255.1.3"))
    views.bbs.upsert_instance(0, instance("d1", 2, address="10.0.0.3", instance_address=""))  # no container address
    views.cc.upsert_route(CCRoute("r", "app.apps.internal", "", True, "127.128.0.5"))
    views.cc.map_route("r", "c1", 1)
    views.cc.upsert_association("c1", ("d1",))

    assert sorted(views.keys(ViewKind.HOST)) == ["app.example.com"]  # internal hosts are not external hosts
    assert sorted(views.keys(ViewKind.INTERNAL_HOST)) == ["app.apps.internal"]
    service = views.internal_service("app.apps.internal")
    assert (service.host, service.vip) == ("app.apps.internal", "127.128.0.5")
    [dest] = service.destinations
    assert (dest.process_guid, dest.container_port, dest.weight) == ("d1", 8080, 1)  # CC's weight, unused
    assert [(b.address, b.port) for b in dest.backends] == [("10.255.1.2", 8080), ("10.255.1.3", 8080)]

    [obj] = build_internal(GatewaySettings(namespace="cf"), service)
    assert obj.kind == kinds.SERVICE_ENTRY
    assert list(obj.spec.addresses) == ["127.128.0.5"] and list(obj.spec.hosts) == ["app.apps.internal"]
    assert obj.spec.location == pb.ServiceEntry.MESH_INTERNAL
    assert sorted((e.address, dict(e.ports)) for e in obj.spec.endpoints) == [
        ("10.255.1.2", {"tcp-8080": 8080}),
        ("10.255.1.3", {"tcp-8080": 8080}),
    ]


def test_deleting_an_internal_route_removes_its_service(views: Views) -> None:
    views.cc.upsert_route(CCRoute("r", "app.apps.internal", "", True, "127.128.0.5"))
    views.take_dirty()
    views.cc.delete_route("r")
    assert views.take_dirty()[ViewKind.INTERNAL_HOST] == {"app.apps.internal"}
    assert sorted(views.keys(ViewKind.INTERNAL_HOST)) == [] and views.internal_service("app.apps.internal") is None


# ---------------------------------------------------------------- dirty tracking


@pytest.fixture
def mapped(views: Views) -> Views:
    """a.example.com (external) and app.apps.internal (internal), both mapped to c1 -> d1; b.example.com to c2 -> d2."""
    views.bbs.upsert_process("d1", process(("a.example.com", "", 8080)))
    views.bbs.upsert_process("d2", process(("b.example.com", "", 8080)))
    views.bbs.upsert_instance(0, instance("d1", instance_address="10.255.0.1"))
    views.bbs.upsert_instance(0, instance("d2"))
    views.cc.upsert_route(CCRoute("ra", "a.example.com", "/cc"))
    views.cc.upsert_route(CCRoute("ri", "app.apps.internal", "", True, "127.128.0.1"))
    views.cc.upsert_route(CCRoute("rb", "b.example.com", "/cc"))
    views.cc.map_route("ra", "c1", 1)
    views.cc.map_route("ri", "c1", 1)
    views.cc.map_route("rb", "c2", 1)
    views.cc.upsert_association("c1", ("d1",))
    views.cc.upsert_association("c2", ("d2",))
    views.take_dirty()
    return views


def dirty(views: Views) -> tuple[set[str], set[str]]:
    dirty = views.take_dirty()
    return dirty[ViewKind.HOST], dirty[ViewKind.INTERNAL_HOST]


def test_association_change_of_a_mapped_process_dirties_its_routes(mapped: Views) -> None:
    mapped.cc.upsert_association("c1", ("d1", "d3"))
    assert dirty(mapped) == ({"a.example.com"}, {"app.apps.internal"})
    mapped.cc.upsert_association("c1", ("d1", "d3"))  # the same again: nothing
    assert dirty(mapped) == (set(), set())
    mapped.cc.delete_association("c1")
    assert dirty(mapped) == ({"a.example.com"}, {"app.apps.internal"})


def test_association_of_an_unmapped_process_dirties_nothing(mapped: Views) -> None:
    mapped.cc.upsert_association("c9", ("d1",))
    assert dirty(mapped) == (set(), set())


def test_instance_changes_of_an_associated_diego_process_dirty_its_cc_routes(mapped: Views) -> None:
    mapped.bbs.upsert_instance(0, instance("d1", 1, instance_address="10.255.0.2"))
    assert dirty(mapped) == ({"a.example.com"}, {"app.apps.internal"})
    mapped.bbs.remove_instance("d1", 1, 0, "d1-1")
    assert dirty(mapped) == ({"a.example.com"}, {"app.apps.internal"})
    mapped.bbs.upsert_instance(0, instance("d2", 0, address="10.0.0.9"))
    assert dirty(mapped) == ({"b.example.com"}, set())


def test_instances_of_a_diego_process_no_longer_associated_dirty_nothing_of_cc(mapped: Views) -> None:
    mapped.cc.upsert_association("c1", ("d3",))
    dirty(mapped)
    mapped.bbs.upsert_instance(0, instance("d1", 1))
    assert dirty(mapped) == ({"a.example.com"}, set())  # only d1's own DesiredLRP host, not the internal route


def test_removing_an_associated_diego_process_dirties_its_cc_routes(mapped: Views) -> None:
    mapped.bbs.remove_process("d1")
    assert dirty(mapped) == ({"a.example.com"}, {"app.apps.internal"})
    assert mapped.host_routes("a.example.com").paths["/cc"][0].backends == []
    assert mapped.internal_service("app.apps.internal").destinations[0].backends == []


def test_a_bbs_resync_that_drops_an_associated_process_dirties_its_cc_routes(mapped: Views) -> None:
    mapped.bbs.replace({"d2": process(("b.example.com", "", 8080))}, {"d2": {(0, "d2-0", 0): instance("d2")}})
    hosts, internal = dirty(mapped)
    assert "a.example.com" in hosts and internal == {"app.apps.internal"}
    assert mapped.host_routes("a.example.com").paths["/cc"][0].backends == []


def test_mapping_changes_dirty_the_route_host(mapped: Views) -> None:
    mapped.cc.map_route("ra", "c1", 5)
    assert dirty(mapped) == ({"a.example.com"}, set())
    mapped.cc.map_route("ra", "c1", 5)
    assert dirty(mapped) == (set(), set())
    mapped.cc.unmap_route("ri", "c1")
    assert dirty(mapped) == (set(), {"app.apps.internal"})


def test_a_route_moving_host_dirties_both_hosts(mapped: Views) -> None:
    mapped.cc.upsert_route(CCRoute("ra", "c.example.com", "/cc"))
    assert dirty(mapped) == ({"a.example.com", "c.example.com"}, set())


def test_a_mapping_that_arrives_before_its_route_counts_once_the_route_does(views: Views) -> None:
    views.bbs.upsert_process("d1", process())
    views.cc.map_route("r", "c1", 1)
    views.cc.upsert_association("c1", ("d1",))
    assert dirty(views) == (set(), set())
    views.cc.upsert_route(CCRoute("r", "late.example.com"))
    assert dirty(views) == ({"late.example.com"}, set())
    assert weights(views, "late.example.com") == [("d1", 100)]


def test_replace_cc_state_dirties_only_what_changed(mapped: Views) -> None:
    state = mapped.cc.state()
    mapped.cc.replace(state)
    assert dirty(mapped) == (set(), set())
    routes = dict(state.routes)
    del routes["rb"]
    mapped.cc.replace(CCState(routes, state.mappings, state.associations))
    assert dirty(mapped) == ({"b.example.com"}, set())
    assert mapped.cc.state().routes == routes


def test_a_route_service_bound_by_a_desired_lrp_stays_on_the_path_cc_maps(views: Views) -> None:
    # CC's mappings replace the DesiredLRP's destinations for a host+path, but not its route service:
    # the route (host + path) is bound, whoever maps it, so the router never serves around it.
    views.bbs.upsert_process(
        "lrp",
        ProcessRoutes(
            http=(
                HttpRoute("a.example.com", "", 8080, "http1", "https://rs.example.org"),
                HttpRoute("a.example.com", "/open", 8080),
            )
        ),
    )
    views.bbs.upsert_process("c1-v1", process())
    views.cc.upsert_route(CCRoute("r", "a.example.com"))
    views.cc.map_route("r", "c1", 1)
    views.cc.upsert_association("c1", ("c1-v1",))
    routes = views.host_routes("a.example.com")
    assert [(d.process_guid, d.route_service_url) for d in routes.paths[""]] == [("c1-v1", "https://rs.example.org")]
    assert [(d.process_guid, d.route_service_url) for d in routes.paths["/open"]] == [("lrp", "")]
