"""Diego records -> the route model: every payload is validated, bad entries are skipped, the rest kept;
and the real BBS's event sequences (from the BBS double, applied in every order BBS may deliver them)
route what route-emitter routes."""

from __future__ import annotations

import base64
import itertools
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bbs_double.server import BBSDouble
from copilot import invalid_input, metrics, model
from copilot.model import HttpRoute, InternalRoute, PortMapping, ProcessRoutes, TcpRoute
from copilot.protos import bbs_pb2 as bbs
from copilot.sources import bbs_translate
from copilot.sources.bbs_client import Event, decode_event
from copilot.sources.bbs_watcher import apply_event, translate_listing
from copilot.views import Views


@pytest.fixture(autouse=True)
def _fresh_reports() -> None:
    """Each test sees its bad input reported as new (Copilot reports an item once per process)."""
    invalid_input.forget()


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


# ---------------------------------------------------------------- real sequences -> the BBS slice and its views

HOST = "app.example.com"


class Feed:
    """The BBS double's events, taken straight off a subscriber queue (no network) and decoded as Copilot does."""

    def __init__(self) -> None:
        unused = Path("/nonexistent")
        self.double = BBSDouble(ca_cert=unused, server_cert=unused, server_key=unused)
        self._subscriber = self.double._subscribe("")
        assert self._subscriber is not None
        self.table = Views()

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
            apply_event(self.table.bbs, event)

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
    processes, instances = translate_listing(feed.double.desired_lrps(), [running, evacuating])
    feed.table.bbs.replace(processes, instances)
    assert list(instances["pg"]) == [(0, running.actual_lrp_instance_key.instance_guid, bbs.ActualLRP.EVACUATING)]
    assert feed.served() == [("10.0.0.1", 61000)]


# ---------------------------------------------------------------- bad input stays with its instance
#
# One instance with a bad address or port is dropped (counted once in copilot_invalid_input_total,
# logged once), and the process's other instances are routed as usual.


def invalid(field: str, source: str = "bbs") -> float:
    return invalid_input.INVALID_INPUT.labels(source, field)._value.get()


def running(index: int, guid: str, address: str = "10.0.0.5", *ports: bbs.PortMapping, **net: object) -> bbs.ActualLRP:
    """A RUNNING ORDINARY ActualLRP of process "pg" (host address, host ports)."""
    lrp = bbs.ActualLRP(state="RUNNING", presence=bbs.ActualLRP.ORDINARY)
    lrp.actual_lrp_key.CopyFrom(bbs.ActualLRPKey(process_guid="pg", index=index, domain="cf-apps"))
    lrp.actual_lrp_instance_key.CopyFrom(bbs.ActualLRPInstanceKey(instance_guid=guid, cell_id="cell-1"))
    mappings = list(ports) or [bbs.PortMapping(container_port=8080, host_port=61000 + index)]
    lrp.actual_lrp_net_info.CopyFrom(bbs.ActualLRPNetInfo(address=address, ports=mappings, **net))  # type: ignore[arg-type]
    return lrp


def listed(*lrps: bbs.ActualLRP) -> Views:
    """A table made from a listing of "pg" (routing HOST on 8080) with these instances."""
    desired_lrp = desired(cf_router=[{"hostnames": [HOST], "port": 8080}])
    desired_lrp.process_guid = "pg"
    table = Views()
    table.bbs.replace(*translate_listing([desired_lrp], list(lrps)))
    return table


def served_by(table: Views) -> list[tuple[str, str, int]]:
    routes = table.host_routes(HOST)
    assert routes is not None
    return sorted((b.instance_guid, b.address, b.port) for d in routes.paths[""] for b in d.backends)


def warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "copilot.sources.bbs_translate" and r.levelno == logging.WARNING]


@pytest.mark.parametrize(
    ("net", "field"),
    [
        ({"address": "not-an-ip"}, "actual_lrp_net_info.address"),
        ({"address": "999.1.1.1"}, "actual_lrp_net_info.address"),
        ({"address": "10.0.0.010"}, "actual_lrp_net_info.address"),  # leading zeros: istiod refuses them
        ({"address": "fd00::1%eth0"}, "actual_lrp_net_info.address"),  # a zone: not an endpoint address
        ({"address": "10.0.0.6", "instance_address": "not-an-ip"}, "actual_lrp_net_info.instance_address"),
        ({"address": "10.0.0.6", "instance_address": "999.1.1.1"}, "actual_lrp_net_info.instance_address"),
    ],
)
def test_an_instance_with_a_bad_address_is_dropped_and_the_others_routed(
    caplog: pytest.LogCaptureFixture, net: dict, field: str
) -> None:
    caplog.set_level(logging.WARNING, logger="copilot.sources.bbs_translate")
    before = invalid(field)
    address = net.pop("address")
    bad = running(1, "bad", address, **net)
    table = listed(running(0, "good-0"), bad, running(2, "good-2", "10.0.0.7"))
    assert served_by(table) == [("good-0", "10.0.0.5", 61000), ("good-2", "10.0.0.7", 61002)]
    instance = bbs_translate.instance(bad)
    assert not instance.serving and instance.rejected.startswith(f"{field}: ")
    assert instance.backend_for(8080) is None and instance.container_backend_for(8080) is None
    assert invalid(field) == before + 1
    [record] = warnings(caplog)
    assert (record.process_guid, record.index, record.instance_guid) == ("pg", 1, "bad")  # type: ignore[attr-defined]
    assert record.error.startswith(f"{field}: ")  # type: ignore[attr-defined]


def test_a_bad_instance_is_logged_and_counted_once_not_on_every_reconcile(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="copilot.sources.bbs_translate")
    field = "actual_lrp_net_info.address"
    before = invalid(field)
    bad = running(1, "bad", "not-an-ip")
    for _ in range(3):  # the first listing, two reconciles
        listed(running(0, "good-0"), bad)
    table = Views()
    apply_event(table.bbs, Event("1", "actual_lrp_instance_created", bbs.ActualLRPInstanceCreatedEvent(actual_lrp=bad)))
    apply_event(table.bbs, Event("2", "actual_lrp_instance_removed", bbs.ActualLRPInstanceRemovedEvent(actual_lrp=bad)))
    assert len(warnings(caplog)) == 1
    assert invalid(field) == before + 1
    listed(running(1, "bad", "not-an-ip-either"))  # another bad value is another offending item
    assert len(warnings(caplog)) == 2 and invalid(field) == before + 2


def test_an_instance_moving_to_a_bad_address_stops_being_routed_there() -> None:
    table = listed(running(0, "good-0"), running(1, "moving"))
    moved = running(1, "moving", "not-an-ip")
    change = bbs.ActualLRPInstanceChangedEvent(
        actual_lrp_key=moved.actual_lrp_key, actual_lrp_instance_key=moved.actual_lrp_instance_key
    )
    change.before.CopyFrom(bbs.ActualLRPInfo(state="RUNNING", actual_lrp_net_info=running(1, "moving").actual_lrp_net_info))
    change.after.CopyFrom(bbs.ActualLRPInfo(state="RUNNING", actual_lrp_net_info=moved.actual_lrp_net_info))
    apply_event(table.bbs, Event("1", "actual_lrp_instance_changed", change))
    assert served_by(table) == [("good-0", "10.0.0.5", 61000)]


@pytest.mark.parametrize(
    ("mapping", "field"),
    [
        ({"container_port": 8080, "host_port": 70000}, "actual_lrp_net_info.ports.host_port"),
        (
            {"container_port": 8080, "host_port": 61001, "host_tls_proxy_port": 70000},
            "actual_lrp_net_info.ports.host_tls_proxy_port",
        ),
        (
            {"container_port": 8080, "host_port": 61001, "container_tls_proxy_port": 65536},
            "actual_lrp_net_info.ports.container_tls_proxy_port",
        ),
        ({"container_port": 70000, "host_port": 61001}, "actual_lrp_net_info.ports.container_port"),
        ({"container_port": 0, "host_port": 61001}, "actual_lrp_net_info.ports.container_port"),
    ],
)
def test_a_port_mapping_with_a_port_istiod_refuses_is_dropped(
    caplog: pytest.LogCaptureFixture, mapping: dict, field: str
) -> None:
    caplog.set_level(logging.WARNING, logger="copilot.sources.bbs_translate")
    before = invalid(field)
    other = bbs.PortMapping(container_port=9090, host_port=61002)
    instance = bbs_translate.instance(running(1, "bad-port", "10.0.0.6", bbs.PortMapping(**mapping), other))
    assert instance.ports == (PortMapping(9090, 61002),)  # the instance's other mapping is kept
    assert instance.serving and instance.backend_for(8080) is None
    assert invalid(field) == before + 1
    [record] = warnings(caplog)
    assert record.error.startswith(f"{field}: ")  # type: ignore[attr-defined]
    table = listed(running(0, "good-0"), running(1, "bad-port", "10.0.0.6", bbs.PortMapping(**mapping)))
    assert served_by(table) == [("good-0", "10.0.0.5", 61000)]
    assert len(warnings(caplog)) == 1  # the same item: not logged again


def test_zero_is_an_unmapped_port_not_a_bad_one() -> None:
    before = sum(s.value for m in invalid_input.INVALID_INPUT.collect() for s in m.samples if s.name.endswith("_total"))
    v58 = bbs.PortMapping(container_port=8080, host_port=0, container_tls_proxy_port=61001, host_tls_proxy_port=40001)
    instance = bbs_translate.instance(running(0, "v58", "10.0.0.5", v58))
    assert instance.ports == (PortMapping(8080, 0, 61001, 40001),)
    backend = instance.backend_for(8080)
    assert backend is not None and (backend.port, backend.tls_port) == (0, 40001)
    after = sum(s.value for m in invalid_input.INVALID_INPUT.collect() for s in m.samples if s.name.endswith("_total"))
    assert after == before


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"hostnames": ["a.example.com"], "port": 70000}, "cf-router.port"),
        ({"hostnames": ["a.example.com"], "port": 0}, "cf-router.port"),
    ],
)
def test_a_route_with_a_port_istiod_refuses_is_skipped_and_counted(
    caplog: pytest.LogCaptureFixture, entry: dict, field: str
) -> None:
    caplog.set_level(logging.WARNING, logger="copilot.sources.bbs_translate")
    before = invalid(field)
    for _ in range(2):  # a listing and a reconcile
        routes = http(entry, {"hostnames": ["kept.example.com"], "port": 8080})
        assert routes.http == (HttpRoute("kept.example.com", "", 8080),)
    assert invalid(field) == before + 1
    assert len([r for r in caplog.records if r.getMessage() == "route skipped"]) == 1


def test_a_tcp_route_with_a_port_istiod_refuses_is_skipped_and_counted() -> None:
    before = invalid("tcp-router.external_port"), invalid("tcp-router.container_port")
    routes = bbs_translate.process_routes(
        desired(
            tcp_router=[
                {"external_port": 70000, "container_port": 8080},
                {"external_port": 61001, "container_port": 65536},
                {"external_port": 61002, "container_port": 8080},
            ]
        )
    )
    assert routes.tcp == (TcpRoute(61002, 8080),)
    assert (invalid("tcp-router.external_port"), invalid("tcp-router.container_port")) == (before[0] + 1, before[1] + 1)


# ---------------------------------------------------------------- addresses routes must not reach


@pytest.fixture
def allow_list() -> Iterator[Callable[[list[str]], None]]:
    yield model.allow_internal_networks
    model.allow_internal_networks(())


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "127.1.2.3", "::1", "169.254.169.254", "fe80::1", "febf::1", "0.0.0.0", "0.1.2.3", "::", "::ffff:127.0.0.1",
     "::ffff:169.254.169.254"],
)
def test_an_instance_on_a_loopback_link_local_or_unspecified_address_is_refused(
    caplog: pytest.LogCaptureFixture, address: str
) -> None:
    caplog.set_level(logging.WARNING, logger="copilot.sources.bbs_translate")
    field = "actual_lrp_net_info.address"
    before = invalid(field)
    table = listed(running(0, "good-0"), running(1, "internal", address))
    assert served_by(table) == [("good-0", "10.0.0.5", 61000)]
    assert invalid(field) == before + 1
    [record] = warnings(caplog)
    assert "backends.allowed_internal_networks" in record.error  # type: ignore[attr-defined]


def test_a_container_address_on_loopback_is_refused_too() -> None:
    instance = bbs_translate.instance(running(1, "internal", "10.0.0.6", instance_address="127.0.0.1"))
    assert not instance.serving and instance.rejected.startswith("actual_lrp_net_info.instance_address: ")


@pytest.mark.parametrize(
    "address", ["10.0.0.1", "192.168.1.1", "172.16.0.1", "100.64.0.1", "fd00::1", "2001:db8::1", "::ffff:10.0.0.1"]
)
def test_other_addresses_are_routed(address: str) -> None:
    assert bbs_translate.instance(running(0, "ok", address)).serving


def test_the_operators_allow_list_lets_named_internal_networks_through(allow_list: Callable[[list[str]], None]) -> None:
    allow_list(["127.0.0.0/8", "fe80::/64"])
    table = listed(
        running(0, "cell-local", "127.0.0.1", instance_address="127.1.0.5"),
        running(1, "mapped", "::ffff:127.0.0.2"),
        running(2, "link-local-v6", "fe80::5"),
        running(3, "metadata", "169.254.169.254"),  # not named: still refused
        running(4, "other-v6-link-local", "fe80:0:0:1::5"),  # outside fe80::/64
    )
    assert served_by(table) == [
        ("cell-local", "127.0.0.1", 61000),
        ("link-local-v6", "fe80::5", 61002),
        ("mapped", "::ffff:127.0.0.2", 61001),
    ]


# ---------------------------------------------------------------- instance identity


def lrp_event(kind: str, lrp: bbs.ActualLRP) -> Event:
    message = (bbs.ActualLRPInstanceCreatedEvent if kind == "created" else bbs.ActualLRPInstanceRemovedEvent)(actual_lrp=lrp)
    return Event("0", f"actual_lrp_instance_{kind}", message)


def test_two_instances_with_one_index_both_serve_from_events_and_each_is_removed_alone() -> None:
    desired_lrp = desired(cf_router=[{"hostnames": [HOST], "port": 8080}])
    desired_lrp.process_guid = "pg"
    table = Views()
    apply_event(table.bbs, Event("0", "desired_lrp_created", bbs.DesiredLRPCreatedEvent(desired_lrp=desired_lrp)))
    first, second = running(0, "first", "10.0.0.5"), running(0, "second", "10.0.0.6")
    apply_event(table.bbs, lrp_event("created", first))
    apply_event(table.bbs, lrp_event("created", second))
    assert served_by(table) == [("first", "10.0.0.5", 61000), ("second", "10.0.0.6", 61000)]
    apply_event(table.bbs, lrp_event("removed", first))
    assert served_by(table) == [("second", "10.0.0.6", 61000)]
    apply_event(table.bbs, lrp_event("created", first))
    apply_event(table.bbs, lrp_event("removed", second))
    assert served_by(table) == [("first", "10.0.0.5", 61000)]


def test_two_instances_with_one_index_in_a_listing_both_serve() -> None:
    table = listed(running(0, "first", "10.0.0.5"), running(0, "second", "10.0.0.6"))
    assert served_by(table) == [("first", "10.0.0.5", 61000), ("second", "10.0.0.6", 61000)]
    apply_event(table.bbs, lrp_event("removed", running(0, "first", "10.0.0.5")))
    assert served_by(table) == [("second", "10.0.0.6", 61000)]


def test_a_removed_event_for_one_presence_leaves_the_evacuating_copy() -> None:
    """The evacuating copy of an instance serves until its own removal, even if BBS also reports the
    removal of the instance's ORDINARY copy (same guid) in any order."""
    ordinary = running(0, "moving", "10.0.0.5")
    evacuating = bbs.ActualLRP()
    evacuating.CopyFrom(ordinary)
    evacuating.presence = bbs.ActualLRP.EVACUATING
    table = listed(ordinary)
    apply_event(table.bbs, lrp_event("created", evacuating))
    apply_event(table.bbs, lrp_event("removed", ordinary))
    assert served_by(table) == [("moving", "10.0.0.5", 61000)]
    apply_event(table.bbs, lrp_event("removed", evacuating))
    assert served_by(table) == []
