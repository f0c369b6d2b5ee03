"""The views of the BBS slice: processes' routes joined with their instances, and which hosts changed."""

from __future__ import annotations

import pytest
from copilot_helpers import routed_weights

from copilot.model import Backend, HttpRoute, Instance, PortMapping, ProcessRoutes, ViewKind
from copilot.slices.bbs import INDEXED_ROUTES, instance_key
from copilot.views import Views

ORDINARY, EVACUATING = 0, 1


def routes(*specs: str | tuple[str, str, int]) -> ProcessRoutes:
    """ProcessRoutes from "host" (root path, port 8080) or (host, path, port) specs."""
    http = []
    for spec in specs:
        host, path, port = (spec, "", 8080) if isinstance(spec, str) else spec
        http.append(HttpRoute(host, path, port))
    return ProcessRoutes(http=tuple(sorted(http)))


def instance(guid: str, index: int = 0, *, host_port: int = 61000, state: str = "RUNNING", **kw: object) -> Instance:
    fields: dict[str, object] = {
        "process_guid": guid,
        "index": index,
        "instance_guid": f"{guid}-{index}",
        "state": state,
        "routable": True,
        "address": "10.0.0.1",
        "instance_address": "",
        "prefer_instance_address": False,
        "ports": (PortMapping(8080, host_port + index), PortMapping(9090, host_port + 100 + index)),
        "availability_zone": "",
    }
    fields.update(kw)
    return Instance(**fields)  # type: ignore[arg-type]


@pytest.fixture
def views() -> Views:
    views = Views()
    views.bbs.upsert_process("pa", routes("a.example.com", "shared.example.com"))
    views.bbs.upsert_process("pb", routes("b.example.com", "shared.example.com"))
    views.bbs.upsert_instance(ORDINARY, instance("pa", 0))
    views.bbs.upsert_instance(ORDINARY, instance("pb", 0, host_port=62000))
    views.take_dirty()
    return views


def backends(views: Views, host: str, path: str = "") -> list[tuple[str, list[Backend]]]:
    host_routes = views.host_routes(host)
    assert host_routes is not None
    return [(d.process_guid, d.backends) for d in host_routes.paths[path]]


# ---------------------------------------------------------------- dirty hosts


def test_new_process_marks_its_hosts(views: Views) -> None:
    views.bbs.upsert_process("pc", routes("c.example.com", ("d.example.com", "/api", 8080)))
    assert views.take_dirty()[ViewKind.HOST] == {"c.example.com", "d.example.com"}
    assert views.take_dirty()[ViewKind.HOST] == set()


def test_identical_upserts_mark_nothing(views: Views) -> None:
    views.bbs.upsert_process("pa", routes("shared.example.com", "a.example.com"))
    views.bbs.upsert_instance(ORDINARY, instance("pa", 0))
    assert views.take_dirty()[ViewKind.HOST] == set()


def test_changed_routes_mark_only_hosts_whose_routes_changed(views: Views) -> None:
    views.bbs.upsert_process("pa", routes("a2.example.com", "shared.example.com"))
    assert views.take_dirty()[ViewKind.HOST] == {"a.example.com", "a2.example.com"}
    views.bbs.upsert_process("pa", routes("a2.example.com", ("shared.example.com", "", 9090)))
    assert views.take_dirty()[ViewKind.HOST] == {"shared.example.com"}


def test_remove_process_marks_its_hosts(views: Views) -> None:
    views.bbs.remove_process("pb")
    assert views.take_dirty()[ViewKind.HOST] == {"b.example.com", "shared.example.com"}
    assert views.host_routes("b.example.com") is None
    assert [guid for guid, _ in backends(views, "shared.example.com")] == ["pa"]
    assert sorted(sorted(views.keys(ViewKind.HOST))) == ["a.example.com", "shared.example.com"]


def test_remove_unknown_process_marks_nothing(views: Views) -> None:
    views.bbs.remove_process("nope")
    assert views.take_dirty()[ViewKind.HOST] == set()


def test_instance_changes_mark_only_the_process_hosts(views: Views) -> None:
    views.bbs.upsert_instance(ORDINARY, instance("pa", 1))
    assert views.take_dirty()[ViewKind.HOST] == {"a.example.com", "shared.example.com"}
    views.bbs.upsert_instance(ORDINARY, instance("pb", 0, host_port=62000, state="CRASHED"))
    assert views.take_dirty()[ViewKind.HOST] == {"b.example.com", "shared.example.com"}
    views.bbs.remove_instance("pa", 1, ORDINARY, "pa-1")
    assert views.take_dirty()[ViewKind.HOST] == {"a.example.com", "shared.example.com"}


def test_removing_an_unknown_instance_marks_nothing(views: Views) -> None:
    views.bbs.remove_instance("pa", 7, ORDINARY, "pa-7")
    views.bbs.remove_instance("pa", 0, EVACUATING, "pa-0")
    views.bbs.remove_instance("pa", 0, ORDINARY, "another-guid")
    views.bbs.remove_instance("nope", 0, ORDINARY, "nope-0")
    assert views.take_dirty()[ViewKind.HOST] == set()
    assert views.bbs.counts() == (4, 2)


def test_instances_of_a_process_without_routes_mark_nothing() -> None:
    views = Views()
    views.bbs.upsert_instance(ORDINARY, instance("lonely", 0))
    assert views.take_dirty()[ViewKind.HOST] == set()
    # ...but are joined in once the process asks for a route
    views.bbs.upsert_process("lonely", routes("late.example.com"))
    assert views.take_dirty()[ViewKind.HOST] == {"late.example.com"}
    assert backends(views, "late.example.com") == [("lonely", [Backend("10.0.0.1", 61000, 0, "lonely-0", 0, "")])]


# ---------------------------------------------------------------- evacuation


def test_evacuating_and_ordinary_instances_are_distinct(views: Views) -> None:
    evacuating = instance("pa", 0, host_port=63000)
    views.bbs.upsert_instance(EVACUATING, evacuating)
    [(_, served)] = backends(views, "a.example.com")
    assert [b.port for b in served] == [61000, 63000]
    views.bbs.remove_instance("pa", 0, ORDINARY, "pa-0")
    [(_, served)] = backends(views, "a.example.com")
    assert [b.port for b in served] == [63000]
    views.bbs.remove_instance("pa", 0, EVACUATING, "pa-0")
    [(_, served)] = backends(views, "a.example.com")
    assert served == []


def test_one_instance_listed_ordinary_and_evacuating_is_one_backend(views: Views) -> None:
    views.bbs.upsert_instance(EVACUATING, instance("pa", 0))  # the same instance, address and ports
    [(_, served)] = backends(views, "a.example.com")
    assert [(b.instance_guid, b.port) for b in served] == [("pa-0", 61000)]


# ---------------------------------------------------------------- instance identity


def test_two_instances_at_one_index_both_serve_and_each_is_removed_alone(views: Views) -> None:
    """Instances are kept by instance guid, not by index alone: a second instance at index 0 (a restart
    whose predecessor's removal has not arrived, or a bad BBS) does not replace the first one."""
    second = instance("pa", 0, host_port=64000, instance_guid="pa-0-second")
    views.bbs.upsert_instance(ORDINARY, second)
    assert views.take_dirty()[ViewKind.HOST] == {"a.example.com", "shared.example.com"}
    [(_, served)] = backends(views, "a.example.com")
    assert sorted((b.instance_guid, b.port) for b in served) == [("pa-0", 61000), ("pa-0-second", 64000)]
    assert views.bbs.counts() == (4, 3)
    views.bbs.remove_instance("pa", 0, ORDINARY, "pa-0")
    [(_, served)] = backends(views, "a.example.com")
    assert [(b.instance_guid, b.port) for b in served] == [("pa-0-second", 64000)]
    views.bbs.upsert_instance(ORDINARY, instance("pa", 0))  # the first one back, then the second one removed
    views.bbs.remove_instance("pa", 0, ORDINARY, "pa-0-second")
    [(_, served)] = backends(views, "a.example.com")
    assert [(b.instance_guid, b.port) for b in served] == [("pa-0", 61000)]


def test_an_update_saying_an_instance_no_longer_serves_removes_only_that_instance(views: Views) -> None:
    views.bbs.upsert_instance(ORDINARY, instance("pa", 0, host_port=64000, instance_guid="pa-0-second"))
    views.bbs.upsert_instance(ORDINARY, instance("pa", 0, instance_guid="pa-0-second", state="CRASHED"))
    [(_, served)] = backends(views, "a.example.com")
    assert [b.instance_guid for b in served] == ["pa-0"]
    views.take_dirty()
    views.bbs.upsert_instance(ORDINARY, instance("pa", 0, instance_guid="pa-0-third", state="UNCLAIMED"))
    assert views.take_dirty()[ViewKind.HOST] == set()  # a new instance that does not serve yet changes nothing
    [(_, served)] = backends(views, "a.example.com")
    assert [b.instance_guid for b in served] == ["pa-0"]


def test_a_listing_with_two_instances_at_one_index_serves_both(views: Views) -> None:
    both = [instance("pa", 0), instance("pa", 0, host_port=64000, instance_guid="pa-0-second")]
    views.bbs.replace(
        {"pa": routes("a.example.com", "shared.example.com"), "pb": routes("b.example.com", "shared.example.com")},
        {"pa": {instance_key(ORDINARY, i): i for i in both}},
    )
    [(_, served)] = backends(views, "a.example.com")
    assert sorted(b.instance_guid for b in served) == ["pa-0", "pa-0-second"]


# ---------------------------------------------------------------- full listings


def test_replace_bbs_state_marks_only_what_differs(views: Views) -> None:
    processes = {
        "pa": routes("a.example.com", "shared.example.com"),  # unchanged
        "pc": routes("c.example.com"),  # new
    }  # pb is gone
    instances = {
        "pa": {(0, "pa-0", ORDINARY): instance("pa", 0)},  # unchanged
        "pc": {(0, "pc-0", ORDINARY): instance("pc", 0), (1, "pc-1", ORDINARY): instance("pc", 1, state="CRASHED")},
    }
    views.bbs.replace(processes, instances)
    assert views.take_dirty()[ViewKind.HOST] == {"b.example.com", "shared.example.com", "c.example.com"}
    assert sorted(sorted(views.keys(ViewKind.HOST))) == ["a.example.com", "c.example.com", "shared.example.com"]
    views.bbs.replace(processes, instances)
    assert views.take_dirty()[ViewKind.HOST] == set()


def test_replace_bbs_state_with_changed_instances_marks_their_hosts(views: Views) -> None:
    views.bbs.replace(
        {"pa": routes("a.example.com", "shared.example.com"), "pb": routes("b.example.com", "shared.example.com")},
        {"pa": {(0, "pa-0", ORDINARY): instance("pa", 0), (1, "pa-1", ORDINARY): instance("pa", 1)}},  # pb's instance gone
    )
    assert views.take_dirty()[ViewKind.HOST] == {"a.example.com", "b.example.com", "shared.example.com"}
    assert backends(views, "b.example.com") == [("pb", [])]
    [(_, served)] = backends(views, "a.example.com")
    assert [b.index for b in served] == [0, 1]


def test_replace_bbs_state_does_not_alias_the_listing(views: Views) -> None:
    listing = {"pa": {(0, "pa-0", ORDINARY): instance("pa", 0)}}
    views.bbs.replace({"pa": routes("a.example.com")}, listing)
    views.take_dirty()
    listing["pa"][(1, "pa-1", ORDINARY)] = instance("pa", 1)
    [(_, served)] = backends(views, "a.example.com")
    assert len(served) == 1


# ---------------------------------------------------------------- joining


def test_host_routes_join_instances_by_container_port() -> None:
    views = Views()
    views.bbs.upsert_process("p", routes(("x.example.com", "", 8080), ("x.example.com", "/metrics", 9090)))
    views.bbs.upsert_instance(ORDINARY, instance("p", 0, host_port=61000))
    views.bbs.upsert_instance(ORDINARY, instance("p", 1, host_port=61000))
    host_routes = views.host_routes("x.example.com")
    assert host_routes is not None
    assert host_routes.host == "x.example.com"
    [root] = host_routes.paths[""]
    [metrics] = host_routes.paths["/metrics"]
    assert (root.container_port, [(b.port, b.index) for b in root.backends]) == (8080, [(61000, 0), (61001, 1)])
    assert (metrics.container_port, [(b.port, b.index) for b in metrics.backends]) == (9090, [(61100, 0), (61101, 1)])


def test_host_routes_skip_instances_that_do_not_serve() -> None:
    views = Views()
    views.bbs.upsert_process("p", routes("x.example.com"))
    views.bbs.upsert_instance(ORDINARY, instance("p", 0))
    views.bbs.upsert_instance(ORDINARY, instance("p", 1, state="CRASHED"))
    views.bbs.upsert_instance(ORDINARY, instance("p", 2, routable=False))
    views.bbs.upsert_instance(ORDINARY, instance("p", 3, state="CLAIMED"))
    [(_, served)] = backends(views, "x.example.com")
    assert [b.index for b in served] == [0]
    assert views.bbs.counts() == (1, 1)


def test_weights_are_relative_in_the_views_and_normalised_per_path_once_built() -> None:
    views = Views()
    for guid in ("p1", "p2", "p3"):
        views.bbs.upsert_process(guid, routes("w.example.com"))
    views.bbs.upsert_process("p4", routes(("w.example.com", "/solo", 8080)))
    host_routes = views.host_routes("w.example.com")
    assert host_routes is not None
    assert [(d.process_guid, d.weight) for d in host_routes.paths[""]] == [("p1", 1), ("p2", 1), ("p3", 1)]
    assert routed_weights(views, "w.example.com") == [("p1", 34), ("p2", 33), ("p3", 33)]
    assert routed_weights(views, "w.example.com", "/solo") == [("p4", 100)]


def test_host_routes_of_unknown_host_is_none(views: Views) -> None:
    assert views.host_routes("unknown.example.com") is None


def test_counts(views: Views) -> None:
    assert views.bbs.counts() == (4, 2)
    views.bbs.upsert_instance(ORDINARY, instance("pa", 0, routable=False))
    assert views.bbs.counts() == (4, 1)


def test_the_bbs_slice_tells_its_watchers_of_every_change_and_only_of_changes(views: Views) -> None:
    # Service discovery's address table watches the BBS slice: its names are rebuilt after a change.
    calls: list[None] = []
    views.bbs.watch(lambda: calls.append(None))
    views.bbs.upsert_instance(ORDINARY, instance("pa", 0))  # the same instance again
    views.bbs.upsert_process("pa", routes("a.example.com", "shared.example.com"))  # the same routes again
    views.bbs.remove_instance("pa", 5, ORDINARY, "pa-5")  # nobody at that index
    assert calls == []
    views.bbs.upsert_instance(ORDINARY, instance("pa", 1))
    views.bbs.remove_instance("pa", 1, ORDINARY, "pa-1")
    views.bbs.upsert_process("pc", routes("c.example.com"))
    views.bbs.replace({"pc": routes("c.example.com")}, {})
    assert len(calls) == 4


def test_a_process_with_many_routes_gives_each_host_its_own_routes_in_order() -> None:
    """An app with many route hosts: a host's view reads that host's routes (indexed past INDEXED_ROUTES)."""
    views = Views()
    many = tuple(HttpRoute(f"h{i % (INDEXED_ROUTES + 2)}.example.com", f"/p{i}" if i > INDEXED_ROUTES else "", 8080)
                 for i in range(2 * INDEXED_ROUTES))
    for guid, routes in (("few", many[:3]), ("many", many)):
        views.bbs.upsert_process(guid, ProcessRoutes(http=routes))
    with views.bbs.lock:
        assert list(views.bbs.http_routes("many", "h1.example.com")) == [r for r in many if r.host == "h1.example.com"]
        assert list(views.bbs.http_routes("few", "h1.example.com")) == [many[1]]
        assert list(views.bbs.http_routes("many", "other.example.com")) == []
    host_routes = views.host_routes("h1.example.com")
    assert host_routes is not None and sorted(host_routes.paths) == ["", f"/p{INDEXED_ROUTES + 2 + 1}"]
    views.bbs.upsert_process("many", ProcessRoutes(http=many[2:]))  # h1's routes of "many" now start later
    with views.bbs.lock:
        assert list(views.bbs.http_routes("many", "h1.example.com")) == [r for r in many[2:] if r.host == "h1.example.com"]
    views.bbs.remove_process("many")
    with views.bbs.lock:
        assert list(views.bbs.http_routes("many", "h1.example.com")) == []
