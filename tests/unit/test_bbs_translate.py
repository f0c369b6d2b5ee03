"""Diego records -> the route model: every payload is validated, bad entries are skipped, the rest kept;
and the real BBS's event sequences (from the BBS double, applied in every order BBS may deliver them)
route what route-emitter routes."""

from __future__ import annotations

import base64
import itertools
import json
import logging
from pathlib import Path

import pytest

from bbs_double.server import BBSDouble
from copilot import metrics
from copilot.model import HttpRoute, InternalRoute, PortMapping, ProcessRoutes, TcpRoute
from copilot.protos import bbs_pb2 as bbs
from copilot.routing_table import RoutingTable
from copilot.sources import bbs_translate
from copilot.sources.bbs_client import Event, decode_event
from copilot.sources.bbs_watcher import InstanceGuids, apply_event, translate_listing


def desired(**routes: object) -> bbs.DesiredLRP:
    """A DesiredLRP whose routes are given per router; str/bytes values are stored raw, others as JSON."""
    lrp = bbs.DesiredLRP(process_guid="pg-1", domain="cf-apps", instances=1)
    for router, value in routes.items():
        key = router.replace("_", "-")
        if isinstance(value, bytes):
            lrp.routes.routes[key] = value
        elif isinstance(value, str):
            lrp.routes.routes[key] = value.encode()
        else:
            lrp.routes.routes[key] = json.dumps(value).encode()
    return lrp


def http(*entries: dict) -> ProcessRoutes:
    return bbs_translate.process_routes(desired(cf_router=list(entries)))


# ---------------------------------------------------------------- cf-router


def test_cf_router_hostnames_with_and_without_paths() -> None:
    routes = http(
        {"hostnames": ["App.Example.com", "app.example.com/api/", "www.example.com."], "port": 8080},
        {"hostnames": ["admin.example.com"], "port": 9090, "protocol": "http2", "route_service_url": "https://rs.example.com"},
    )
    assert routes.http == (
        HttpRoute("admin.example.com", "", 9090, "http2", "https://rs.example.com"),
        HttpRoute("app.example.com", "", 8080),
        HttpRoute("app.example.com", "/api", 8080),
        HttpRoute("www.example.com", "", 8080),
    )
    assert routes.tcp == () and routes.internal == ()


def test_duplicate_hostnames_collapse() -> None:
    routes = http({"hostnames": ["a.example.com", "A.EXAMPLE.COM", "a.example.com."], "port": 8080})
    assert routes.http == (HttpRoute("a.example.com", "", 8080),)


def test_invalid_hostname_is_skipped_but_the_entrys_other_hostnames_kept(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="copilot.sources.bbs_translate")
    routes = http(
        {"hostnames": ["good.example.com", "bad_host.example.com", "also-good.example.com/x", "x.com/../y", 7], "port": 8080}
    )
    assert [(r.host, r.path) for r in routes.http] == [("also-good.example.com", "/x"), ("good.example.com", "")]
    skipped = [r for r in caplog.records if r.getMessage() == "route skipped"]
    assert len(skipped) == 3
    assert all(r.process_guid == "pg-1" and r.router == "cf-router" for r in skipped)  # type: ignore[attr-defined]
    assert all(r.error.startswith("cf-router.hostnames: ") for r in skipped)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"hostnames": ["a.example.com"], "port": 2222}, "cf-router.port"),
        ({"hostnames": ["a.example.com"], "port": "8080"}, "cf-router.port"),
        ({"hostnames": ["a.example.com"]}, "cf-router.port"),
        ({"hostnames": ["a.example.com"], "port": 8080, "protocol": "tcp"}, "cf-router.protocol"),
        ({"hostnames": ["a.example.com"], "port": 8080, "route_service_url": 5}, "cf-router.route_service_url"),
        (
            {"hostnames": ["a.example.com"], "port": 8080, "route_service_url": "http://rs.example.com"},
            "cf-router.route_service_url",
        ),
        ({"hostnames": "a.example.com", "port": 8080}, "cf-router.hostnames"),
        ({"port": 8080}, "cf-router.hostnames"),
    ],
)
def test_bad_cf_router_entry_is_skipped_and_others_kept(caplog: pytest.LogCaptureFixture, entry: dict, field: str) -> None:
    caplog.set_level(logging.WARNING, logger="copilot.sources.bbs_translate")
    routes = http(entry, {"hostnames": ["kept.example.com"], "port": 8080})
    assert routes.http == (HttpRoute("kept.example.com", "", 8080),)
    [record] = [r for r in caplog.records if r.getMessage() == "route skipped"]
    assert record.error.startswith(f"{field}: ")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"\xff\xfe", b'{"hostnames": ["a.example.com"], "port": 8080}', b'["a.example.com"]', b"42", b'"text"'],
)
def test_bad_json_for_one_router_is_skipped_others_kept(raw: bytes) -> None:
    routes = bbs_translate.process_routes(
        desired(
            cf_router=raw,
            tcp_router=[{"external_port": 61000, "container_port": 8080}],
            internal_router=[{"hostname": "app.apps.internal"}],
        )
    )
    assert routes.http == ()
    assert routes.tcp == (TcpRoute(61000, 8080),)
    assert routes.internal == (InternalRoute("app.apps.internal"),)


def test_null_and_missing_routers_mean_no_routes() -> None:
    assert bbs_translate.process_routes(desired(cf_router=b"null")) == ProcessRoutes()
    assert bbs_translate.process_routes(desired()) == ProcessRoutes()
    assert bbs_translate.process_routes(desired(cf_router=[])) == ProcessRoutes()


def test_unknown_routers_are_ignored() -> None:
    routes = bbs_translate.process_routes(
        desired(diego_ssh={"container_port": 2222}, cf_router=[{"hostnames": ["a.b"], "port": 8080}])
    )
    assert routes.http == (HttpRoute("a.b", "", 8080),)


# ---------------------------------------------------------------- tcp-router and internal-router


def test_tcp_router() -> None:
    routes = bbs_translate.process_routes(
        desired(
            tcp_router=[
                {"external_port": 61001, "container_port": 8080, "router_group_guid": "rg-1"},
                {"external_port": 61002, "container_port": 2222},  # SSH: refused
                {"external_port": 0, "container_port": 8080},  # bad external port
                {"external_port": 61003, "container_port": 9090},
                {"container_port": 9090},
            ]
        )
    )
    assert routes.tcp == (TcpRoute(61001, 8080, "rg-1"), TcpRoute(61003, 9090, ""))


def test_internal_router() -> None:
    routes = bbs_translate.process_routes(
        desired(
            internal_router=[{"hostname": "App.apps.internal"}, {"hostname": "bad host"}, {}, {"hostname": "b.apps.internal"}]
        )
    )
    assert routes.internal == (InternalRoute("app.apps.internal"), InternalRoute("b.apps.internal"))


# ---------------------------------------------------------------- instances


def actual(*, routable: bool | None = None, preferred: int = bbs.ActualLRPNetInfo.HOST) -> bbs.ActualLRP:
    lrp = bbs.ActualLRP(state="RUNNING", presence=bbs.ActualLRP.EVACUATING, availability_zone="z2")
    lrp.actual_lrp_key.CopyFrom(bbs.ActualLRPKey(process_guid="pg-1", index=2, domain="cf-apps"))
    lrp.actual_lrp_instance_key.CopyFrom(bbs.ActualLRPInstanceKey(instance_guid="ig-1", cell_id="cell-1"))
    lrp.actual_lrp_net_info.CopyFrom(
        bbs.ActualLRPNetInfo(
            address="10.0.0.5",
            instance_address="10.255.1.2",
            preferred_address=preferred,
            ports=[
                bbs.PortMapping(container_port=8080, host_port=61001, container_tls_proxy_port=61443, host_tls_proxy_port=61002),
                bbs.PortMapping(container_port=2222, host_port=61003),
            ],
        )
    )
    if routable is not None:
        lrp.routable = routable
    return lrp


def test_instance_from_actual_lrp() -> None:
    instance = bbs_translate.instance(actual())
    assert (instance.process_guid, instance.index, instance.instance_guid) == ("pg-1", 2, "ig-1")
    assert (instance.state, instance.address, instance.instance_address) == ("RUNNING", "10.0.0.5", "10.255.1.2")
    assert instance.prefer_instance_address is False
    assert instance.availability_zone == "z2"
    assert instance.ports == (PortMapping(8080, 61001, 61443, 61002), PortMapping(2222, 61003, 0, 0))
    backend = instance.backend_for(8080)
    assert backend is not None and (backend.address, backend.port, backend.tls_port) == ("10.0.0.5", 61001, 61002)
    assert instance.backend_for(2222) is None


def test_instance_prefers_instance_address() -> None:
    instance = bbs_translate.instance(actual(preferred=bbs.ActualLRPNetInfo.INSTANCE))
    assert instance.prefer_instance_address is True
    backend = instance.backend_for(8080)
    assert backend is not None and (backend.address, backend.port, backend.tls_port) == ("10.255.1.2", 8080, 61443)
    # UNKNOWN means the host address, as HOST does
    assert bbs_translate.instance(actual(preferred=bbs.ActualLRPNetInfo.UNKNOWN)).prefer_instance_address is False


@pytest.mark.parametrize(("routable", "expected"), [(None, True), (True, True), (False, False)])
def test_routable_unset_means_routable(routable: bool | None, expected: bool) -> None:
    instance = bbs_translate.instance(actual(routable=routable))
    assert instance.routable is expected
    assert (instance.backend_for(8080) is not None) is expected


@pytest.mark.parametrize(("routable", "expected"), [(None, True), (True, True), (False, False)])
def test_instance_from_changed_event_info(routable: bool | None, expected: bool) -> None:
    lrp = actual()
    info = bbs.ActualLRPInfo(state="RUNNING", presence=bbs.ActualLRP.ORDINARY, availability_zone="z3")
    info.actual_lrp_net_info.CopyFrom(lrp.actual_lrp_net_info)
    if routable is not None:
        info.Routable = routable
    instance = bbs_translate.instance_from_info(lrp.actual_lrp_key, lrp.actual_lrp_instance_key, info)
    assert (instance.process_guid, instance.index, instance.instance_guid, instance.availability_zone) == (
        "pg-1",
        2,
        "ig-1",
        "z3",
    )
    assert instance.routable is expected
    assert instance.ports[0] == PortMapping(8080, 61001, 61443, 61002)


@pytest.mark.parametrize("state", ["UNCLAIMED", "CLAIMED", "CRASHED"])
def test_only_running_instances_serve_whatever_their_payload(state: str) -> None:
    lrp = actual(routable=True)
    lrp.state = state  # even with net info (a real BBS sends none before RUNNING), it is not routed
    assert bbs_translate.instance(lrp).backend_for(8080) is None


@pytest.mark.parametrize("presence", [bbs.ActualLRP.ORDINARY, bbs.ActualLRP.EVACUATING, bbs.ActualLRP.SUSPECT])
def test_every_presence_of_a_running_instance_serves(presence: int) -> None:
    lrp = actual()
    lrp.presence = presence
    assert bbs_translate.instance(lrp).backend_for(8080) is not None


def unrecognized(field: str) -> float:
    return metrics.BBS_UNRECOGNIZED.labels(field)._value.get()


def test_unknown_state_is_reported_and_never_serves() -> None:
    before = unrecognized("ActualLRP.state")
    lrp = actual()
    lrp.state = "HIBERNATING"
    assert bbs_translate.instance(lrp).backend_for(8080) is None
    assert unrecognized("ActualLRP.state") == before + 1


def test_unknown_presence_is_reported_and_routed_like_any_other() -> None:
    before = unrecognized("ActualLRP.presence")
    lrp = actual()
    lrp.presence = 7  # type: ignore[assignment] - an open enum: a newer BBS may send it
    assert bbs_translate.instance(lrp).backend_for(8080) is not None
    info = bbs.ActualLRPInfo(state="RUNNING", presence=9)  # type: ignore[arg-type]
    bbs_translate.instance_from_info(lrp.actual_lrp_key, lrp.actual_lrp_instance_key, info)
    assert unrecognized("ActualLRP.presence") == before + 2


# ---------------------------------------------------------------- real sequences -> the routing table

HOST = "app.example.com"


class Feed:
    """The BBS double's events, taken straight off a subscriber queue (no network) and decoded as Copilot does."""

    def __init__(self) -> None:
        unused = Path("/nonexistent")
        self.double = BBSDouble(ca_cert=unused, server_cert=unused, server_key=unused)
        self._subscriber = self.double._subscribe("")
        assert self._subscriber is not None
        self.table = RoutingTable()
        self.guids: InstanceGuids = {}

    def take(self) -> list[Event]:
        events = []
        while not self._subscriber.events.empty():
            raw = self._subscriber.events.get()
            assert raw is not None
            event = decode_event(str(len(events)), raw.event_type, base64.b64encode(raw.data).decode())
            assert isinstance(event, Event)
            events.append(event)
        return events

    def apply(self, events: list[Event]) -> None:
        for event in events:
            apply_event(self.table, event, self.guids)

    def served(self) -> list[tuple[str, int]]:
        routes = self.table.host_routes(HOST)
        if routes is None or "" not in routes.paths:
            return []
        backends = [(b.address, b.port) for d in routes.paths[""] for b in d.backends]
        assert len(backends) == len(set(backends)), f"an instance is routed twice: {backends}"
        return sorted(backends)


@pytest.fixture
def feed() -> Feed:
    feed = Feed()
    feed.double.desire_lrp("pg", http_routes=[{"hostnames": [HOST], "port": 8080}], instances=2)
    feed.apply(feed.take())
    return feed


def test_start_sequence_routes_only_once_running(feed: Feed) -> None:
    feed.double.start_instance("pg", 0, address="10.0.0.1", host_port=61000, readiness_check=True)
    events = feed.take()
    assert [e.type for e in events] == ["actual_lrp_instance_created"] + ["actual_lrp_instance_changed"] * 3
    for event in events[:3]:  # UNCLAIMED, CLAIMED, RUNNING but routable=false
        feed.apply([event])
        assert feed.served() == []
    feed.apply(events[3:])
    assert feed.served() == [("10.0.0.1", 61000)]


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_crash_and_quick_restart_in_any_order(feed: Feed, order: tuple[int, ...]) -> None:
    feed.double.start_instance("pg", 0, address="10.0.0.1", host_port=61000)
    feed.double.start_instance("pg", 1, address="10.0.0.2", host_port=61001)
    feed.apply(feed.take())
    feed.double.crash_instance("pg", 0)
    crash = feed.take()
    assert [e.type for e in crash] == ["actual_lrp_crashed", "actual_lrp_instance_created", "actual_lrp_instance_removed"]
    feed.apply([crash[i] for i in order])
    assert feed.served() == [("10.0.0.2", 61001)]
    feed.double.start_instance("pg", 0, address="10.0.0.1", host_port=61005)
    feed.apply(feed.take())
    assert feed.served() == [("10.0.0.1", 61005), ("10.0.0.2", 61001)]


def test_removal_of_the_crashed_instance_arriving_late_keeps_its_running_successor(feed: Feed) -> None:
    feed.double.start_instance("pg", 0, address="10.0.0.1", host_port=61000)
    feed.apply(feed.take())
    feed.double.crash_instance("pg", 0)
    crashed, created, removed = feed.take()
    feed.double.start_instance("pg", 0, address="10.0.0.1", host_port=61005)
    feed.apply([crashed, created, *feed.take(), removed])  # the old instance's removal comes last
    assert feed.served() == [("10.0.0.1", 61005)]


@pytest.mark.parametrize("replacement_first", [False, True])
def test_evacuating_and_replacement_both_serve_until_the_remove(feed: Feed, replacement_first: bool) -> None:
    feed.double.start_instance("pg", 0, address="10.0.0.1", host_port=61000)
    feed.apply(feed.take())
    feed.double.evacuate_instance("pg", 0)
    evacuating, replacement = feed.take()
    for event in [replacement, evacuating] if replacement_first else [evacuating, replacement]:
        feed.apply([event])
        assert feed.served() == [("10.0.0.1", 61000)]  # the evacuating copy serves throughout, once
    feed.double.start_instance("pg", 0, address="10.0.0.3", host_port=62000, cell_id="cell-2")
    feed.apply(feed.take())
    assert feed.served() == [("10.0.0.1", 61000), ("10.0.0.3", 62000)]
    feed.double.remove_instance("pg", 0, evacuating=True)
    feed.apply(feed.take())
    assert feed.served() == [("10.0.0.3", 62000)]


def test_suspect_instance_serves_until_its_replacement_runs(feed: Feed) -> None:
    feed.double.start_instance("pg", 0, address="10.0.0.1", host_port=61000, cell_id="lost")
    feed.apply(feed.take())
    feed.double.lose_cell("lost")
    for event in feed.take():
        feed.apply([event])
        assert feed.served() == [("10.0.0.1", 61000)]
    feed.double.start_instance("pg", 0, address="10.0.0.3", host_port=62000, cell_id="cell-2")
    events = feed.take()
    assert events[-1].type == "actual_lrp_instance_removed"
    feed.apply(events[:-1])
    assert feed.served() == [("10.0.0.1", 61000), ("10.0.0.3", 62000)]
    feed.apply(events[-1:])
    assert feed.served() == [("10.0.0.3", 62000)]


def test_retire_double_remove_and_scale_down(feed: Feed) -> None:
    feed.double.start_instance("pg", 0, address="10.0.0.1", host_port=61000)
    feed.double.start_instance("pg", 1, address="10.0.0.2", host_port=61001)
    feed.apply(feed.take())
    feed.double.retire_instance("pg", 1)
    removals = feed.take()
    assert [e.type for e in removals] == ["actual_lrp_instance_removed"] * 2
    feed.apply(removals)
    assert feed.served() == [("10.0.0.1", 61000)]
    feed.double.remove_instance("pg", 0)
    feed.apply(feed.take())
    assert feed.served() == []


def test_a_listing_in_the_middle_of_an_evacuation_routes_the_instance_once(feed: Feed) -> None:
    feed.double.start_instance("pg", 0, address="10.0.0.1", host_port=61000)
    running = feed.double.actual_lrps()[0]
    evacuating = bbs.ActualLRP()
    evacuating.CopyFrom(running)
    evacuating.presence = bbs.ActualLRP.EVACUATING
    processes, instances, guids = translate_listing(feed.double.desired_lrps(), [running, evacuating])
    feed.table.replace_bbs_state(processes, instances)
    assert list(instances["pg"]) == [(0, bbs.ActualLRP.EVACUATING)]
    assert guids == {("pg", 0, bbs.ActualLRP.EVACUATING): (running.actual_lrp_instance_key.instance_guid, True)}
    assert feed.served() == [("10.0.0.1", 61000)]
