"""The publisher: routing-table changes become snapshot updates for the dirty hosts only."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from copilot import invalid_input
from copilot import publisher as publisher_module
from copilot.istio import kinds
from copilot.istio.builder import GatewaySettings, object_name
from copilot.model import HttpRoute, Instance, PortMapping, ProcessRoutes
from copilot.publisher import Publisher
from copilot.routing_table import RoutingTable
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
def setup() -> tuple[RoutingTable, Store, Publisher]:
    table, snapshot = RoutingTable(), Store()
    return table, snapshot, Publisher(table, snapshot, SETTINGS)


def test_gateway_is_published_from_the_start(setup) -> None:
    _, snapshot, _ = setup
    assert snapshot.names(GW) == ["cf/cf-ingress"]


def test_publish_builds_the_objects_of_dirty_hosts(setup) -> None:
    table, snapshot, publisher = setup
    table.upsert_process("p", process("a.example.com", "b.example.com"))
    table.upsert_instance(0, instance("p"))
    assert publisher.publish() == 2
    for type_url in (VS, DR, SE):
        router_objects = ["cf/cf-unknown-route"] if type_url == VS else []
        assert snapshot.names(type_url) == sorted([name("a.example.com"), name("b.example.com"), *router_objects])
    assert endpoints(snapshot, "a.example.com") == ["10.0.0.1:61000"]
    assert publisher.publish() == 0  # nothing dirty


def test_only_dirty_hosts_are_rebuilt(setup) -> None:
    table, snapshot, publisher = setup
    table.upsert_process("p", process("a.example.com"))
    table.upsert_process("q", process("b.example.com"))
    publisher.publish()
    before = {kind: snapshot.version(kind) for kind in (VS, DR, SE)}
    table.upsert_instance(0, instance("q"))
    assert publisher.publish() == 1
    moved = {kind for kind in (VS, DR, SE) if snapshot.version(kind) != before[kind]}
    assert moved == {SE}  # the VirtualService and DestinationRule did not change
    assert endpoints(snapshot, "b.example.com") == ["10.0.0.1:61000"]
    assert endpoints(snapshot, "a.example.com") == []


def test_removed_host_is_deleted(setup) -> None:
    table, snapshot, publisher = setup
    table.upsert_process("p", process("a.example.com", "b.example.com"))
    publisher.publish()
    table.upsert_process("p", process("a.example.com"))
    publisher.publish()
    for type_url in (VS, DR, SE):
        assert [n for n in snapshot.names(type_url) if n != "cf/cf-unknown-route"] == [name("a.example.com")]
    table.remove_process("p")
    publisher.publish()
    for type_url in (VS, DR, SE):
        assert [n for n in snapshot.names(type_url) if n != "cf/cf-unknown-route"] == []
    assert snapshot.names(GW) == ["cf/cf-ingress"]
    assert snapshot.names(VS) == ["cf/cf-unknown-route"]  # what answers unknown routes stays


def test_a_bad_instance_is_left_out_and_its_host_keeps_following_changes(setup) -> None:
    """One instance with an address istiod would refuse (one that reached the table without passing a
    source's check) costs only its own endpoint: its host still gets new instances and loses removed ones."""
    table, snapshot, publisher = setup
    table.upsert_process("p", process("a.example.com"))
    table.upsert_process("q", process("b.example.com"))
    table.upsert_instance(0, instance("p"))
    publisher.publish()
    invalid_input.forget()
    dropped = invalid_input.INVALID_INPUT.labels("builder", "endpoint.address")._value.get()
    table.upsert_instance(0, instance("p", 1, address="not-an-ip"))
    table.upsert_instance(0, instance("p", 2, address="10.0.0.2"))  # a new instance of the same app
    table.upsert_instance(0, instance("q"))
    publisher.publish()
    assert publisher.rejected_hosts == 0
    assert invalid_input.INVALID_INPUT.labels("builder", "endpoint.address")._value.get() == dropped + 1
    assert endpoints(snapshot, "a.example.com") == ["10.0.0.1:61000", "10.0.0.2:61002"]
    assert endpoints(snapshot, "b.example.com") == ["10.0.0.1:61000"]
    table.remove_instance("p", 0, 0, "p-0")
    publisher.publish()
    assert endpoints(snapshot, "a.example.com") == ["10.0.0.2:61002"]


def test_publish_everything_rebuilds_every_host(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    table, snapshot, publisher = setup
    table.upsert_process("p", process("a.example.com", "b.example.com", "c.example.com"))
    publisher.publish()
    version = snapshot.version(VS)
    readings = iter([100.0, 100.75])  # the publish's start and end on a test clock
    monkeypatch.setattr(publisher_module, "time", SimpleNamespace(perf_counter=lambda: next(readings)))
    assert publisher.publish(everything=True) == 3
    assert snapshot.version(VS) == version
    assert publisher.last_publish_seconds == 0.75  # how long the last publish took
