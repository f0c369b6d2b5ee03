"""The Cloud Controller slice of the RoutingTable: weighted mappings, the split of a CC process's weight
between its Diego processes, CC precedence over DesiredLRP routes, internal routes and dirty tracking."""

from __future__ import annotations

import pytest

from copilot.istio import kinds
from copilot.istio.builder import GatewaySettings, build_internal
from copilot.model import CCRoute, CCState, HttpRoute, Instance, PortMapping, ProcessRoutes
from copilot.protos import istio_networking_pb2 as pb
from copilot.routing_table import RoutingTable


def instance(guid: str, index: int = 0, *, address: str = "10.0.0.1", instance_address: str = "", port: int = 8080) -> Instance:
    return Instance(
        guid, index, f"{guid}-{index}", "RUNNING", True, address, instance_address, False, (PortMapping(port, 61000 + index),)
    )


def process(*routes: tuple[str, str, int]) -> ProcessRoutes:
    return ProcessRoutes(http=tuple(HttpRoute(host, path, port) for host, path, port in routes))


def weights(table: RoutingTable, host: str, path: str = "") -> list[tuple[str, int]]:
    return [(d.process_guid, d.weight) for d in table.host_routes(host).paths[path]]


@pytest.fixture
def table() -> RoutingTable:
    return RoutingTable()


# ---------------------------------------------------------------- weights


def test_weights_1_and_3_become_25_and_75(table: RoutingTable) -> None:
    table.upsert_cc_route(CCRoute("r", "a.example.com"))
    table.map_route("r", "c1", 1)
    table.map_route("r", "c2", 3)
    table.upsert_association("c1", ("d1",))
    table.upsert_association("c2", ("d2",))
    assert weights(table, "a.example.com") == [("d1", 25), ("d2", 75)]


def test_a_cc_process_with_two_diego_processes_splits_its_weight(table: RoutingTable) -> None:
    table.upsert_cc_route(CCRoute("r", "a.example.com"))
    table.map_route("r", "c1", 1)
    table.upsert_association("c1", ("c1-v1", "c1-v2"))  # a rolling deploy: old and new version both run
    assert weights(table, "a.example.com") == [("c1-v1", 50), ("c1-v2", 50)]
    table.map_route("r", "c2", 1)
    table.upsert_association("c2", ("c2-v1",))
    assert weights(table, "a.example.com") == [("c1-v1", 25), ("c1-v2", 25), ("c2-v1", 50)]


def test_uneven_splits_still_total_100(table: RoutingTable) -> None:
    table.upsert_cc_route(CCRoute("r", "a.example.com"))
    table.map_route("r", "c1", 2)
    table.map_route("r", "c2", 1)
    table.upsert_association("c1", ("c1-a", "c1-b", "c1-c"))
    table.upsert_association("c2", ("c2-a", "c2-b"))
    result = weights(table, "a.example.com")
    assert sum(w for _, w in result) == 100
    # c1 has two thirds of the route, split three ways; c2 a third, split two ways.
    assert [w for _, w in result] == [22, 22, 22, 17, 17]


def test_a_mapping_without_an_association_routes_nothing(table: RoutingTable) -> None:
    table.upsert_cc_route(CCRoute("r", "a.example.com"))
    table.map_route("r", "c1", 1)
    assert table.hosts() == ["a.example.com"]
    assert table.host_routes("a.example.com") is None


def test_cc_backends_are_the_diego_instances_on_their_own_route_port(table: RoutingTable) -> None:
    table.upsert_process("d1", process(("other.example.com", "", 9090), ("a.example.com", "/api", 8081)))
    table.upsert_instance(0, instance("d1", address="10.0.0.7", port=8081))
    table.upsert_cc_route(CCRoute("r", "A.example.com".lower(), "/api"))
    table.map_route("r", "c1", 1)
    table.upsert_association("c1", ("d1",))
    [dest] = table.host_routes("a.example.com").paths["/api"]
    assert (dest.container_port, [(b.address, b.port) for b in dest.backends]) == (8081, [("10.0.0.7", 61000)])


# ---------------------------------------------------------------- precedence


def test_cc_mappings_replace_desired_lrp_routes_for_the_same_host_and_path_only(table: RoutingTable) -> None:
    table.upsert_process(
        "lrp", process(("a.example.com", "", 8080), ("a.example.com", "/docs", 8080), ("b.example.com", "", 8080))
    )
    table.upsert_process("c1-v1", process())
    table.upsert_cc_route(CCRoute("r", "a.example.com"))
    table.map_route("r", "c1", 1)
    table.upsert_association("c1", ("c1-v1",))
    routes = table.host_routes("a.example.com")
    assert [d.process_guid for d in routes.paths[""]] == ["c1-v1"]  # CC wins on a.example.com/
    assert [d.process_guid for d in routes.paths["/docs"]] == ["lrp"]  # another path: DesiredLRP stands
    assert weights(table, "b.example.com") == [("lrp", 100)]  # another host: untouched
    table.unmap_route("r", "c1")
    assert [d.process_guid for d in table.host_routes("a.example.com").paths[""]] == ["lrp"]  # back to the LRP


def test_a_cc_route_with_no_usable_mapping_leaves_desired_lrp_routes(table: RoutingTable) -> None:
    table.upsert_process("lrp", process(("a.example.com", "", 8080)))
    table.upsert_cc_route(CCRoute("r", "a.example.com"))
    table.map_route("r", "c1", 1)  # c1 has no association yet
    assert weights(table, "a.example.com") == [("lrp", 100)]


# ---------------------------------------------------------------- internal routes


def test_internal_route_is_an_internal_service_on_container_addresses(table: RoutingTable) -> None:
    table.upsert_process("d1", process(("app.example.com", "", 8080)))
    table.upsert_instance(0, instance("d1", 0, address="10.0.0.1", instance_address="10.255.1.2"))
    table.upsert_instance(0, instance("d1", 1, address="10.0.0.2", instance_address="10.255.1.3"))
    table.upsert_instance(0, instance("d1", 2, address="10.0.0.3", instance_address=""))  # no container address
    table.upsert_cc_route(CCRoute("r", "app.apps.internal", "", True, "127.128.0.5"))
    table.map_route("r", "c1", 1)
    table.upsert_association("c1", ("d1",))

    assert table.hosts() == ["app.example.com"]  # internal hosts are not external hosts
    assert table.internal_hosts() == ["app.apps.internal"]
    service = table.internal_service("app.apps.internal")
    assert (service.host, service.vip) == ("app.apps.internal", "127.128.0.5")
    [dest] = service.destinations
    assert (dest.process_guid, dest.container_port, dest.weight) == ("d1", 8080, 100)
    assert [(b.address, b.port) for b in dest.backends] == [("10.255.1.2", 8080), ("10.255.1.3", 8080)]

    [obj] = build_internal(GatewaySettings(namespace="cf"), service)
    assert obj.kind == kinds.SERVICE_ENTRY
    assert list(obj.spec.addresses) == ["127.128.0.5"] and list(obj.spec.hosts) == ["app.apps.internal"]
    assert obj.spec.location == pb.ServiceEntry.MESH_INTERNAL
    assert sorted((e.address, dict(e.ports)) for e in obj.spec.endpoints) == [
        ("10.255.1.2", {"tcp-8080": 8080}),
        ("10.255.1.3", {"tcp-8080": 8080}),
    ]


def test_deleting_an_internal_route_removes_its_service(table: RoutingTable) -> None:
    table.upsert_cc_route(CCRoute("r", "app.apps.internal", "", True, "127.128.0.5"))
    table.take_dirty_internal_hosts()
    table.delete_cc_route("r")
    assert table.take_dirty_internal_hosts() == {"app.apps.internal"}
    assert table.internal_hosts() == [] and table.internal_service("app.apps.internal") is None


# ---------------------------------------------------------------- dirty tracking


@pytest.fixture
def mapped(table: RoutingTable) -> RoutingTable:
    """a.example.com (external) and app.apps.internal (internal), both mapped to c1 -> d1; b.example.com to c2 -> d2."""
    table.upsert_process("d1", process(("a.example.com", "", 8080)))
    table.upsert_process("d2", process(("b.example.com", "", 8080)))
    table.upsert_instance(0, instance("d1", instance_address="10.255.0.1"))
    table.upsert_instance(0, instance("d2"))
    table.upsert_cc_route(CCRoute("ra", "a.example.com", "/cc"))
    table.upsert_cc_route(CCRoute("ri", "app.apps.internal", "", True, "127.128.0.1"))
    table.upsert_cc_route(CCRoute("rb", "b.example.com", "/cc"))
    table.map_route("ra", "c1", 1)
    table.map_route("ri", "c1", 1)
    table.map_route("rb", "c2", 1)
    table.upsert_association("c1", ("d1",))
    table.upsert_association("c2", ("d2",))
    table.take_dirty_hosts()
    table.take_dirty_internal_hosts()
    return table


def dirty(table: RoutingTable) -> tuple[set[str], set[str]]:
    return table.take_dirty_hosts(), table.take_dirty_internal_hosts()


def test_association_change_of_a_mapped_process_dirties_its_routes(mapped: RoutingTable) -> None:
    mapped.upsert_association("c1", ("d1", "d3"))
    assert dirty(mapped) == ({"a.example.com"}, {"app.apps.internal"})
    mapped.upsert_association("c1", ("d1", "d3"))  # the same again: nothing
    assert dirty(mapped) == (set(), set())
    mapped.delete_association("c1")
    assert dirty(mapped) == ({"a.example.com"}, {"app.apps.internal"})


def test_association_of_an_unmapped_process_dirties_nothing(mapped: RoutingTable) -> None:
    mapped.upsert_association("c9", ("d1",))
    assert dirty(mapped) == (set(), set())


def test_instance_changes_of_an_associated_diego_process_dirty_its_cc_routes(mapped: RoutingTable) -> None:
    mapped.upsert_instance(0, instance("d1", 1, instance_address="10.255.0.2"))
    assert dirty(mapped) == ({"a.example.com"}, {"app.apps.internal"})
    mapped.remove_instance("d1", 1, 0, "d1-1")
    assert dirty(mapped) == ({"a.example.com"}, {"app.apps.internal"})
    mapped.upsert_instance(0, instance("d2", 0, address="10.0.0.9"))
    assert dirty(mapped) == ({"b.example.com"}, set())


def test_instances_of_a_diego_process_no_longer_associated_dirty_nothing_of_cc(mapped: RoutingTable) -> None:
    mapped.upsert_association("c1", ("d3",))
    dirty(mapped)
    mapped.upsert_instance(0, instance("d1", 1))
    assert dirty(mapped) == ({"a.example.com"}, set())  # only d1's own DesiredLRP host, not the internal route


def test_removing_an_associated_diego_process_dirties_its_cc_routes(mapped: RoutingTable) -> None:
    mapped.remove_process("d1")
    assert dirty(mapped) == ({"a.example.com"}, {"app.apps.internal"})
    assert mapped.host_routes("a.example.com").paths["/cc"][0].backends == []
    assert mapped.internal_service("app.apps.internal").destinations[0].backends == []


def test_a_bbs_resync_that_drops_an_associated_process_dirties_its_cc_routes(mapped: RoutingTable) -> None:
    mapped.replace_bbs_state({"d2": process(("b.example.com", "", 8080))}, {"d2": {(0, "d2-0", 0): instance("d2")}})
    hosts, internal = dirty(mapped)
    assert "a.example.com" in hosts and internal == {"app.apps.internal"}
    assert mapped.host_routes("a.example.com").paths["/cc"][0].backends == []


def test_mapping_changes_dirty_the_route_host(mapped: RoutingTable) -> None:
    mapped.map_route("ra", "c1", 5)
    assert dirty(mapped) == ({"a.example.com"}, set())
    mapped.map_route("ra", "c1", 5)
    assert dirty(mapped) == (set(), set())
    mapped.unmap_route("ri", "c1")
    assert dirty(mapped) == (set(), {"app.apps.internal"})


def test_a_route_moving_host_dirties_both_hosts(mapped: RoutingTable) -> None:
    mapped.upsert_cc_route(CCRoute("ra", "c.example.com", "/cc"))
    assert dirty(mapped) == ({"a.example.com", "c.example.com"}, set())


def test_a_mapping_that_arrives_before_its_route_counts_once_the_route_does(table: RoutingTable) -> None:
    table.upsert_process("d1", process())
    table.map_route("r", "c1", 1)
    table.upsert_association("c1", ("d1",))
    assert dirty(table) == (set(), set())
    table.upsert_cc_route(CCRoute("r", "late.example.com"))
    assert dirty(table) == ({"late.example.com"}, set())
    assert weights(table, "late.example.com") == [("d1", 100)]


def test_replace_cc_state_dirties_only_what_changed(mapped: RoutingTable) -> None:
    state = mapped.cc_state()
    mapped.replace_cc_state(state)
    assert dirty(mapped) == (set(), set())
    routes = dict(state.routes)
    del routes["rb"]
    mapped.replace_cc_state(CCState(routes, state.mappings, state.associations))
    assert dirty(mapped) == ({"b.example.com"}, set())
    assert mapped.cc_state().routes == routes


def test_a_route_service_bound_by_a_desired_lrp_stays_on_the_path_cc_maps(table: RoutingTable) -> None:
    # CC's mappings replace the DesiredLRP's destinations for a host+path, but not its route service:
    # the route (host + path) is bound, whoever maps it, so the router never serves around it.
    table.upsert_process(
        "lrp",
        ProcessRoutes(
            http=(
                HttpRoute("a.example.com", "", 8080, "http1", "https://rs.example.org"),
                HttpRoute("a.example.com", "/open", 8080),
            )
        ),
    )
    table.upsert_process("c1-v1", process())
    table.upsert_cc_route(CCRoute("r", "a.example.com"))
    table.map_route("r", "c1", 1)
    table.upsert_association("c1", ("c1-v1",))
    routes = table.host_routes("a.example.com")
    assert [(d.process_guid, d.route_service_url) for d in routes.paths[""]] == [("c1-v1", "https://rs.example.org")]
    assert [(d.process_guid, d.route_service_url) for d in routes.paths["/open"]] == [("lrp", "")]
