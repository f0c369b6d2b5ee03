"""The publisher: what changed in the views becomes snapshot updates for the touched keys only, every
kind of view through one loop and one exit (`_emit`)."""

from __future__ import annotations

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


def endpoints(snapshot: Store, host: str) -> list[str]:
    se = snapshot.get(SE, name(host))
    if se is None:
        raise AssertionError(f"no ServiceEntry for {host}")
    return sorted(f"{e.address}:{e.ports['http']}" for e in se.endpoints)


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
    for type_url in (VS, DR, SE):
        router_objects = ["cf/cf-unknown-route"] if type_url == VS else []
        assert snapshot.names(type_url) == sorted([name("a.example.com"), name("b.example.com"), *router_objects])
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
    for type_url in (VS, DR, SE):
        assert [n for n in snapshot.names(type_url) if n != "cf/cf-unknown-route"] == [name("a.example.com")]
    views.bbs.remove_process("p")
    publisher.publish()
    for type_url in (VS, DR, SE):
        assert [n for n in snapshot.names(type_url) if n != "cf/cf-unknown-route"] == []
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
            ("DestinationRule", name("a.example.com")),
            ("ServiceEntry", name("a.example.com")),
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
    # built ahead of what was taken: a host is built when its first object is asked for.
    assert [n for _, n in taken] == [n for h in sorted(hosts) for n in [name(h)] * 3]
    assert [count for count, _ in taken] == [i // 3 + 1 for i in range(30)]
    assert snapshot.names(SE) == sorted(name(h) for h in hosts)
