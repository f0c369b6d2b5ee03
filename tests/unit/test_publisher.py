"""The publisher: what changed in the views becomes snapshot updates for the touched keys only, every
kind of view through one loop and one exit (`_emit`); the services hosts share are built once per
publish and deleted when their last host stops using them."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from copilot import invalid_input
from copilot import publisher as publisher_module
from copilot.istio import kinds
from copilot.istio.builder import object_name
from copilot.model import CCRoute, HttpRoute, Instance, PortMapping, ProcessRoutes, TcpRoute
from copilot.publisher import Publisher
from copilot.settings import GatewaySettings
from copilot.views import Views
from copilot.xds.store import Store

SETTINGS = GatewaySettings(namespace="cf")
VS, DR, SE, GW = kinds.VIRTUAL_SERVICE, kinds.DESTINATION_RULE, kinds.SERVICE_ENTRY, kinds.GATEWAY


def process(*hosts: str) -> ProcessRoutes:
    return ProcessRoutes(http=tuple(HttpRoute(h, "", 8080) for h in hosts))


def instance(guid: str, index: int = 0, address: str = "10.0.0.1") -> Instance:
    return Instance(guid, index, f"{guid}-{index}", "RUNNING", True, address, "", False, (PortMapping(8080, 61000 + index),))


def name(host: str) -> str:
    return f"cf/{object_name(host)}"


def service_names(snapshot: Store, host: str) -> list[str]:
    """The names of the services (DestinationRule and ServiceEntry) a host's VirtualService routes to."""
    vs = snapshot.get(VS, name(host))
    if vs is None:
        raise AssertionError(f"no VirtualService for {host}")
    hosts = dict.fromkeys(r.destination.host for route in vs.http for r in route.route)
    return [f"cf/{h.split('.')[0]}" for h in hosts]


def endpoints(snapshot: Store, host: str) -> list[str]:
    [service] = service_names(snapshot, host)
    se = snapshot.get(SE, service)
    if se is None:
        raise AssertionError(f"no ServiceEntry for {host}")
    return sorted(f"{e.address}:{e.ports['http']}" for e in se.endpoints)


def routed(snapshot: Store, kind: kinds.Kind) -> list[str]:
    return [n for n in snapshot.names(kind) if n != "cf/cf-unknown-route"]


@pytest.fixture
def setup() -> tuple[Views, Store, Publisher]:
    views, snapshot = Views(), Store()
    return views, snapshot, Publisher(views, snapshot, SETTINGS)


def test_gateway_is_published_from_the_start(setup) -> None:
    _, snapshot, _ = setup
    assert snapshot.names(GW) == ["cf/cf-ingress"]


def test_publish_builds_the_objects_of_dirty_hosts(setup) -> None:
    views, snapshot, publisher = setup
    views.bbs.upsert_process("p", process("a.example.com", "b.example.com"))
    views.bbs.upsert_instance(0, instance("p"))
    assert publisher.publish() == 2
    assert routed(snapshot, VS) == sorted([name("a.example.com"), name("b.example.com")])
    # Both hosts go to one process: one service (one Envoy cluster), named after it, not after a host.
    [service] = service_names(snapshot, "a.example.com")
    assert service_names(snapshot, "b.example.com") == [service]
    assert snapshot.names(DR) == snapshot.names(SE) == [service]
    assert endpoints(snapshot, "a.example.com") == ["10.0.0.1:61000"]
    assert publisher.publish() == 0  # nothing dirty


def test_only_dirty_hosts_are_rebuilt(setup) -> None:
    views, snapshot, publisher = setup
    views.bbs.upsert_process("p", process("a.example.com"))
    views.bbs.upsert_process("q", process("b.example.com"))
    publisher.publish()
    before = {kind: snapshot.version(kind) for kind in (VS, DR, SE)}
    views.bbs.upsert_instance(0, instance("q"))
    assert publisher.publish() == 1
    moved = {kind for kind in (VS, DR, SE) if snapshot.version(kind) != before[kind]}
    assert moved == {SE}  # the VirtualService and DestinationRule did not change
    assert endpoints(snapshot, "b.example.com") == ["10.0.0.1:61000"]
    assert endpoints(snapshot, "a.example.com") == []


def test_removed_host_is_deleted(setup) -> None:
    views, snapshot, publisher = setup
    views.bbs.upsert_process("p", process("a.example.com", "b.example.com"))
    publisher.publish()
    views.bbs.upsert_process("p", process("a.example.com"))
    publisher.publish()
    assert routed(snapshot, VS) == [name("a.example.com")]
    assert snapshot.names(DR) == snapshot.names(SE) == service_names(snapshot, "a.example.com")  # still used
    views.bbs.remove_process("p")
    publisher.publish()
    for type_url in (VS, DR, SE):
        assert routed(snapshot, type_url) == []
    assert snapshot.names(GW) == ["cf/cf-ingress"]
    assert snapshot.names(VS) == ["cf/cf-unknown-route"]  # what answers unknown routes stays


def test_a_bad_instance_is_left_out_and_its_host_keeps_following_changes(setup) -> None:
    """One instance with an address istiod would refuse (one that reached a slice without passing a
    source's check) costs only its own endpoint: its host still gets new instances and loses removed ones."""
    views, snapshot, publisher = setup
    views.bbs.upsert_process("p", process("a.example.com"))
    views.bbs.upsert_process("q", process("b.example.com"))
    views.bbs.upsert_instance(0, instance("p"))
    publisher.publish()
    invalid_input.forget()
    dropped = invalid_input.INVALID_INPUT.labels("builder", "endpoint.address")._value.get()
    views.bbs.upsert_instance(0, instance("p", 1, address="not-an-ip"))
    views.bbs.upsert_instance(0, instance("p", 2, address="10.0.0.2"))  # a new instance of the same app
    views.bbs.upsert_instance(0, instance("q"))
    publisher.publish()
    assert publisher.rejected_hosts == 0
    assert invalid_input.INVALID_INPUT.labels("builder", "endpoint.address")._value.get() == dropped + 1
    assert endpoints(snapshot, "a.example.com") == ["10.0.0.1:61000", "10.0.0.2:61002"]
    assert endpoints(snapshot, "b.example.com") == ["10.0.0.1:61000"]
    views.bbs.remove_instance("p", 0, 0, "p-0")
    publisher.publish()
    assert endpoints(snapshot, "a.example.com") == ["10.0.0.2:61002"]


def test_publish_everything_rebuilds_every_host(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    views, snapshot, publisher = setup
    views.bbs.upsert_process("p", process("a.example.com", "b.example.com", "c.example.com"))
    publisher.publish()
    version = snapshot.version(VS)
    readings = iter([100.0, 100.75])  # the publish's start and end on a test clock
    monkeypatch.setattr(publisher_module, "time", SimpleNamespace(perf_counter=lambda: next(readings)))
    assert publisher.publish(everything=True) == 3
    assert snapshot.version(VS) == version
    assert publisher.last_publish_seconds == 0.75  # how long the last publish took


def recorded_emits(publisher: Publisher, monkeypatch: pytest.MonkeyPatch) -> list[tuple[list, list]]:
    """Every `_emit` call from now on, as ([(kind name, object name)], [(kind name, object name)]), passed on."""
    calls: list[tuple[list, list]] = []
    emit = publisher._emit

    def recording(upserts, deletions):
        upserts = list(upserts)  # taken first: the deletions are complete once the upserts are
        calls.append(([(o.kind.name, o.name) for o in upserts], [(k.name, n) for k, n in deletions]))
        emit(upserts, deletions)

    monkeypatch.setattr(publisher, "_emit", recording)
    return calls


def test_one_publish_hands_every_kind_to_one_emit(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    views, snapshot, publisher = setup
    views.bbs.upsert_process("p", ProcessRoutes(http=(HttpRoute("a.example.com", "", 8080),), tcp=(TcpRoute(1025, 8080),)))
    views.bbs.upsert_instance(0, instance("p"))
    views.cc.upsert_route(CCRoute("r", "p.apps.internal", "", True, "127.128.0.1"))
    views.cc.map_route("r", "c", 1)
    views.cc.upsert_association("c", ("p",))
    calls = recorded_emits(publisher, monkeypatch)
    publisher.publish()
    [service] = service_names(snapshot, "a.example.com")
    [(upserts, deletions)] = calls  # one exit, so one snapshot update (one push) for the whole publish
    assert deletions == []
    assert sorted(kind for kind, _ in upserts) == sorted(
        ["VirtualService", "DestinationRule", "ServiceEntry"]  # the host
        + ["ServiceEntry"]  # the internal host
        + ["Gateway", "VirtualService", "ServiceEntry", "DestinationRule"]  # the TCP port
    )
    assert "cf/cf-tcp-1025" in snapshot.names(GW)
    views.bbs.remove_process("p")  # the host and the port go; the internal route keeps its VIP, without backends
    publisher.publish()
    [_, (upserts, deletions)] = calls
    assert sorted(deletions) == sorted(
        [
            ("VirtualService", name("a.example.com")),
            ("DestinationRule", service),
            ("ServiceEntry", service),
            ("Gateway", "cf/cf-tcp-1025"),
            ("VirtualService", "cf/cf-tcp-1025"),
            ("ServiceEntry", "cf/cf-tcp-1025"),
            ("DestinationRule", "cf/cf-tcp-1025"),
        ]
    )
    assert [kind for kind, _ in upserts] == ["ServiceEntry"]  # the internal host, now without endpoints
    assert snapshot.names(GW) == ["cf/cf-ingress"]


def test_a_large_publish_emits_once_and_builds_each_host_as_its_objects_are_taken(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    views, snapshot, publisher = setup
    hosts = [f"h{i}.example.com" for i in range(10)]
    views.bbs.upsert_process("p", process(*hosts))
    built: list[str] = []
    build_host = publisher_module.build_host_encoded
    monkeypatch.setattr(publisher_module, "build_host_encoded", lambda g, r, i: built.append(r.host) or build_host(g, r, i))
    taken: list[tuple[int, str]] = []  # (hosts built so far, the object's name) as the snapshot takes each
    emit = publisher._emit

    def taking(upserts, deletions):
        def watched():
            for obj in upserts:
                taken.append((len(built), obj.name))
                yield obj

        emit(watched(), deletions)

    monkeypatch.setattr(publisher, "_emit", taking)
    publisher.publish()
    # One emit for the whole publish (one snapshot update), yet never more than one host's messages
    # built ahead of what was taken: a host is built when its first object is asked for. The service
    # the hosts share goes out once, with the first host.
    [service] = service_names(snapshot, hosts[0])
    assert [n for _, n in taken] == [name(hosts[0]), service, service, *(name(h) for h in sorted(hosts)[1:])]
    assert [count for count, _ in taken] == [1, 1, 1, *range(2, 11)]
    assert snapshot.names(SE) == [service]


# ---------------------------------------------------------------- shared services


def cc_route(views: Views, route: str, host: str, *weights: tuple[str, int]) -> None:
    """A Cloud Controller route `host` mapped to apps (one Diego process each, named as the app) with weights."""
    views.cc.upsert_route(CCRoute(route, host))
    for app, weight in weights:
        views.cc.map_route(route, app, weight)
        views.cc.upsert_association(app, (app,))


def test_a_shared_service_stays_while_a_host_uses_it_and_goes_with_the_last(setup) -> None:
    views, snapshot, publisher = setup
    views.bbs.upsert_process("p", process())
    views.bbs.upsert_instance(0, instance("p"))
    cc_route(views, "r1", "one.example.com", ("p", 1))
    cc_route(views, "r2", "two.example.com", ("p", 1))
    publisher.publish()
    [service] = service_names(snapshot, "one.example.com")
    assert service_names(snapshot, "two.example.com") == [service]
    assert snapshot.names(DR) == snapshot.names(SE) == [service]
    views.cc.unmap_route("r1", "p")  # the first host unmapped: the other still uses the service
    publisher.publish()
    assert routed(snapshot, VS) == [name("two.example.com")]
    assert snapshot.names(DR) == snapshot.names(SE) == [service]
    assert endpoints(snapshot, "two.example.com") == ["10.0.0.1:61000"]
    views.cc.unmap_route("r2", "p")  # the last one: the service goes
    publisher.publish()
    assert routed(snapshot, VS) == snapshot.names(DR) == snapshot.names(SE) == []


def test_a_weighted_host_routes_to_a_service_per_process_shared_with_other_hosts(setup) -> None:
    views, snapshot, publisher = setup
    for guid in ("blue", "green"):
        views.bbs.upsert_process(guid, process())
        views.bbs.upsert_instance(0, instance(guid))
    cc_route(views, "w", "weighted.example.com", ("blue", 1), ("green", 3))
    cc_route(views, "b", "blue.example.com", ("blue", 1))
    publisher.publish()
    [blue] = service_names(snapshot, "blue.example.com")
    weighted = snapshot.get(VS, name("weighted.example.com"))
    targets = [(f"cf/{r.destination.host.split('.')[0]}", r.destination.subset, r.weight) for r in weighted.http[0].route]
    assert targets[0] == (blue, "", 25) and targets[1][1:] == ("", 75)
    green = targets[1][0]
    assert snapshot.names(DR) == snapshot.names(SE) == sorted([blue, green])
    views.cc.unmap_route("w", "green")  # green's only host stops using it; blue is still used twice
    publisher.publish()
    assert snapshot.names(SE) == [blue]
    assert service_names(snapshot, "weighted.example.com") == [blue]


def test_a_bbs_event_builds_the_shared_service_once(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    views, snapshot, publisher = setup
    hosts = [f"h{i}.example.com" for i in range(20)]
    views.bbs.upsert_process("p", process(*hosts))
    publisher.publish()
    built: list[str] = []
    build_service = publisher_module.build_service_encoded
    monkeypatch.setattr(publisher_module, "build_service_encoded", lambda g, s: built.append(s.name) or build_service(g, s))
    views.bbs.upsert_instance(0, instance("p"))  # a scale up: every host of the app is touched
    assert publisher.publish() == 20
    assert built == service_names(snapshot, hosts[0])
    assert endpoints(snapshot, hosts[7]) == ["10.0.0.1:61000"]


def test_a_host_moving_to_another_process_releases_the_old_service_unless_another_host_takes_it(
    setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    views, snapshot, publisher = setup
    for guid in ("p", "q"):
        views.bbs.upsert_process(guid, process())
    cc_route(views, "a", "a.example.com", ("p", 1))
    cc_route(views, "b", "b.example.com", ("q", 1))
    publisher.publish()
    [p], [q] = service_names(snapshot, "a.example.com"), service_names(snapshot, "b.example.com")
    # In one publish a (built first) leaves p for q, and b leaves q for p: both services stay.
    views.cc.unmap_route("a", "p")
    views.cc.map_route("a", "q", 1)
    views.cc.unmap_route("b", "q")
    views.cc.map_route("b", "p", 1)
    calls = recorded_emits(publisher, monkeypatch)
    publisher.publish()
    assert service_names(snapshot, "a.example.com") == [q] and service_names(snapshot, "b.example.com") == [p]
    assert snapshot.names(SE) == sorted([p, q])
    [(_, deletions)] = calls
    assert deletions == []


def test_a_full_rebuild_gives_what_the_incremental_ones_gave(setup) -> None:
    views, snapshot, publisher = setup
    views.bbs.upsert_process("p", process("a.example.com", "b.example.com"))
    views.bbs.upsert_process("q", process("c.example.com"))
    views.bbs.upsert_instance(0, instance("p"))
    publisher.publish()
    views.bbs.upsert_process("p", process("a.example.com"))
    views.bbs.upsert_instance(0, instance("q", address="10.0.0.9"))
    publisher.publish()
    state = {kind: {n: snapshot.get(kind, n) for n in snapshot.names(kind)} for kind in (VS, DR, SE)}
    fresh_views, fresh = Views(views.bbs, views.cc, views.registrar), Store()
    Publisher(fresh_views, fresh, SETTINGS).publish(everything=True)
    assert {kind: {n: fresh.get(kind, n) for n in fresh.names(kind)} for kind in (VS, DR, SE)} == state
    publisher.publish(everything=True)
    assert {kind: {n: snapshot.get(kind, n) for n in snapshot.names(kind)} for kind in (VS, DR, SE)} == state


def test_a_refused_host_keeps_its_shared_service_and_the_others_are_undisturbed(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    views, snapshot, publisher = setup
    views.bbs.upsert_process("p", process("a.example.com", "b.example.com"))
    publisher.publish()
    [service] = service_names(snapshot, "a.example.com")
    build_host = publisher_module.build_host_encoded

    def refusing(g, routes, i):  # type: ignore[no-untyped-def]
        if routes.host == "a.example.com":
            raise ValueError("refused")
        return build_host(g, routes, i)

    monkeypatch.setattr(publisher_module, "build_host_encoded", refusing)
    views.bbs.upsert_process("p", process("b.example.com"))  # b unmapped; a (refused) keeps what it had
    views.bbs.upsert_process("p", ProcessRoutes(http=(HttpRoute("a.example.com", "", 8081),)))  # a's view changes
    publisher.publish()
    assert publisher.rejected_hosts == 1
    assert routed(snapshot, VS) == [name("a.example.com")]
    assert snapshot.names(SE) == [service]  # a's last accepted build still uses it


def test_a_service_that_cannot_be_built_refuses_each_host_using_it_only(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    views, snapshot, publisher = setup
    views.bbs.upsert_process("p", process("a.example.com", "b.example.com"))
    views.bbs.upsert_process("q", process("c.example.com"))
    build_service = publisher_module.build_service_encoded
    built: list[str] = []

    def refusing(g, service):  # type: ignore[no-untyped-def]
        built.append(service.destination.process_guid)
        if service.destination.process_guid == "p":
            raise ValueError("refused")
        return build_service(g, service)

    monkeypatch.setattr(publisher_module, "build_service_encoded", refusing)
    publisher.publish()
    assert publisher.rejected_hosts == 2  # a and b, once each; the service was tried once
    assert built.count("p") == 1
    assert routed(snapshot, VS) == [name("c.example.com")]
    assert snapshot.names(SE) == service_names(snapshot, "c.example.com")
    monkeypatch.setattr(publisher_module, "build_service_encoded", build_service)
    publisher.publish(everything=True)
    assert routed(snapshot, VS) == sorted(name(h) for h in ("a.example.com", "b.example.com", "c.example.com"))
    assert len(snapshot.names(SE)) == 2


def test_a_host_whose_view_did_not_change_is_not_rebuilt(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cloud Controller mapping a host to the process its DesiredLRP route already goes to (its first
    BulkSync, for nearly every host) touches the host but leaves its view as it was: nothing is built
    again; a change of its view (CC's weights, an instance) is built, and `everything` builds it anyway."""
    views, snapshot, publisher = setup
    views.bbs.upsert_process("p", process("a.example.com"))
    views.bbs.upsert_process("q", process("b.example.com"))
    views.bbs.upsert_instance(0, instance("p"))
    publisher.publish()
    before = {kind: snapshot.version(kind) for kind in (VS, DR, SE)}
    build_host = publisher_module.build_host_encoded
    built: list[str] = []

    def counting(g, routes, i):  # type: ignore[no-untyped-def]
        built.append(routes.host)
        return build_host(g, routes, i)

    monkeypatch.setattr(publisher_module, "build_host_encoded", counting)
    views.cc.upsert_route(CCRoute("r-a", "a.example.com"))
    views.cc.map_route("r-a", "capi-p", 1)
    views.cc.upsert_association("capi-p", ("p",))
    assert publisher.publish() == 1  # touched
    assert built == []  # but its view is the one built before
    assert {kind: snapshot.version(kind) for kind in (VS, DR, SE)} == before
    views.cc.map_route("r-a", "capi-q", 3)
    views.cc.upsert_association("capi-q", ("q",))
    publisher.publish()
    assert built == ["a.example.com"]  # weighted between p and q now
    assert service_names(snapshot, "b.example.com")[0] in service_names(snapshot, "a.example.com")
    views.bbs.upsert_instance(0, instance("q", 1, "10.0.0.2"))  # b's (and a's) backends
    publisher.publish()
    assert built == ["a.example.com", "a.example.com", "b.example.com"]
    publisher.publish(everything=True)
    assert built[3:] == ["a.example.com", "b.example.com"]


def test_a_refused_host_is_built_again_when_touched_with_the_same_view(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    views, snapshot, publisher = setup
    views.bbs.upsert_process("p", process("a.example.com"))
    build_host = publisher_module.build_host_encoded

    def refusing(g, routes, i):  # type: ignore[no-untyped-def]
        raise ValueError("refused")

    monkeypatch.setattr(publisher_module, "build_host_encoded", refusing)
    publisher.publish()
    assert publisher.rejected_hosts == 1
    assert routed(snapshot, VS) == []
    monkeypatch.setattr(publisher_module, "build_host_encoded", build_host)
    views.bbs.upsert_instance(0, instance("p"))  # touches a
    views.bbs.remove_instance("p", 0, 0, "p-0")  # and leaves it as it was refused
    publisher.publish()
    assert routed(snapshot, VS) == [name("a.example.com")]


def test_a_host_going_from_two_services_to_one_and_none_releases_each(setup) -> None:
    views, snapshot, publisher = setup
    views.bbs.upsert_process("p", process("a.example.com"))
    views.bbs.upsert_process("q", process("q.example.com"))
    views.cc.upsert_route(CCRoute("r-a", "a.example.com"))
    for capi, diego in (("capi-p", "p"), ("capi-q", "q")):
        views.cc.map_route("r-a", capi, 1)
        views.cc.upsert_association(capi, (diego,))
    publisher.publish()
    both = service_names(snapshot, "a.example.com")
    [q_service] = service_names(snapshot, "q.example.com")
    assert len(both) == 2 and q_service in both
    views.bbs.remove_process("q")  # q.example.com goes; a keeps p and q's service (q has no instances)
    publisher.publish()
    assert snapshot.names(SE) == sorted(both)
    views.cc.unmap_route("r-a", "capi-q")  # a: p alone
    publisher.publish()
    assert snapshot.names(SE) == [s for s in both if s != q_service]
    views.bbs.remove_process("p")
    views.cc.delete_route("r-a")
    publisher.publish()
    assert snapshot.names(SE) == []


class Clock:
    """The publisher's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def delayed(delay: float = 10.0) -> tuple[Views, Store, Publisher, Clock]:
    views, snapshot, clock = Views(), Store(), Clock()
    return views, snapshot, Publisher(views, snapshot, SETTINGS, service_removal_delay=delay, clock=clock), clock


def test_with_a_removal_delay_the_route_goes_at_once_and_its_service_when_due() -> None:
    """A service is kept at least the delay (10 s here) and at most a fifth longer (12 s)."""
    views, snapshot, publisher, clock = delayed()
    views.bbs.upsert_process("p", process("a.example.com"))
    views.bbs.upsert_instance(0, instance("p"))
    publisher.publish()
    service = service_names(snapshot, "a.example.com")
    assert publisher.due() is None  # nothing waits
    views.bbs.remove_process("p")
    publisher.publish()
    assert routed(snapshot, VS) == []  # the route is gone in the same publish
    assert snapshot.names(DR) == snapshot.names(SE) == service  # its service waits
    assert publisher_module.metrics.UNUSED_SERVICES._value.get() == 1
    clock.now += 4
    assert publisher.due() == 8
    versions = {kind: snapshot.version(kind) for kind in (DR, SE)}
    publisher.publish()  # a publish before it is due keeps it
    assert snapshot.names(SE) == service and {kind: snapshot.version(kind) for kind in (DR, SE)} == versions
    clock.now += 6  # the delay has passed, the window not
    publisher.publish()
    assert snapshot.names(SE) == service
    clock.now += 2
    assert publisher.due() == 0
    publisher.publish()  # nothing dirty: the publish the loop makes when the removal is due
    assert snapshot.names(DR) == snapshot.names(SE) == []
    assert publisher.due() is None
    assert publisher_module.metrics.UNUSED_SERVICES._value.get() == 0


def test_a_service_used_again_within_the_delay_stays_and_is_released_afresh() -> None:
    views, snapshot, publisher, clock = delayed()
    views.bbs.upsert_process("p", process())
    views.bbs.upsert_instance(0, instance("p"))
    cc_route(views, "r1", "one.example.com", ("p", 1))
    publisher.publish()
    service = service_names(snapshot, "one.example.com")
    views.cc.unmap_route("r1", "p")
    publisher.publish()
    assert routed(snapshot, VS) == [] and snapshot.names(SE) == service
    clock.now += 5
    cc_route(views, "r2", "two.example.com", ("p", 1))  # another route to the same process
    publisher.publish()
    assert service_names(snapshot, "two.example.com") == service
    assert publisher.due() is None  # in use: no removal waits
    clock.now += 60
    publisher.publish()
    assert snapshot.names(SE) == service
    assert endpoints(snapshot, "two.example.com") == ["10.0.0.1:61000"]
    views.cc.unmap_route("r2", "p")
    publisher.publish()
    assert publisher.due() == 12  # a full delay (and window) from this release, not from the first
    clock.now += 12
    publisher.publish()
    assert snapshot.names(SE) == []


def test_services_left_unused_within_the_window_go_with_the_oldest_in_one_publish() -> None:
    """Removals are batched: once the oldest unused service is due (delay and window), every service
    unused for the whole delay by then goes in the same publish; later ones wait their own turn."""
    views, snapshot, publisher, clock = delayed()
    for guid in ("p", "q", "r"):
        views.bbs.upsert_process(guid, process(f"{guid}.example.com"))
    publisher.publish()
    [p, q, r] = (service_names(snapshot, f"{guid}.example.com")[0] for guid in ("p", "q", "r"))
    views.bbs.remove_process("p")
    publisher.publish()
    clock.now += 1.5
    views.bbs.remove_process("q")  # within p's window
    publisher.publish()
    clock.now += 6.5
    views.bbs.remove_process("r")  # not
    publisher.publish()
    assert snapshot.names(SE) == sorted([p, q, r])
    clock.now += 4  # p is due
    publisher.publish()
    assert snapshot.names(SE) == [r]  # p and q went together; r has 6 s of its delay left
    assert publisher.due() == 8  # r's delay and window
    clock.now += 8
    publisher.publish()
    assert snapshot.names(SE) == []


def test_the_publish_loop_publishes_when_a_removal_is_due_without_a_request() -> None:
    published = threading.Event()
    answers = iter([0.0])
    loop = publisher_module.PublishLoop(published.set, lambda: next(answers, None))
    try:
        assert published.wait(timeout=10)  # no request() was made
    finally:
        loop.stop()


def test_the_publish_loop_looks_again_when_nothing_was_due(monkeypatch: pytest.MonkeyPatch) -> None:
    """A publish on another thread (the first one, publish_now) may leave a removal waiting while the loop
    waits with none due: it looks again, and publishes once one is due, without a request."""
    monkeypatch.setattr(publisher_module, "_RECHECK_SECONDS", 0.05)
    published = threading.Event()
    answers = iter([None, None, 0.0])
    loop = publisher_module.PublishLoop(published.set, lambda: next(answers, None))
    try:
        assert published.wait(timeout=10)
    finally:
        loop.stop()
