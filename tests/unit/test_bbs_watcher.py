"""The BBS watcher against the BBS double (mutual TLS on loopback): initial sync, incremental events,
malformed input, BBS going away (keep serving, report staleness) and coming back (resync)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bbs_double.server import BBSDouble
from copilot import metrics
from copilot.model import HttpRoute, ProcessRoutes, ViewKind
from copilot.settings import BBSConfig
from copilot.sources import bbs_watcher
from copilot.sources.bbs_client import BBSClient
from copilot.sources.bbs_watcher import BBSWatcher
from copilot.views import Views

pytestmark = pytest.mark.timeout(60)

HOST = "app.example.com"


def route(*hosts: str, port: int = 8080) -> list[dict]:
    return [{"hostnames": list(hosts), "port": port}]


def hosts(views: Views) -> list[str]:
    return sorted(views.keys(ViewKind.HOST))


def served(table: Views, host: str = HOST) -> list[tuple[str, int]]:
    """(address, port) of every backend of the host's root path, or [] when the host is unknown."""
    routes = table.host_routes(host)
    if routes is None or "" not in routes.paths:
        return []
    return sorted((b.address, b.port) for d in routes.paths[""] for b in d.backends)


def watcher_settings(url: str, **options: Any) -> BBSConfig:
    """The `bbs` settings a watcher follows, with `options` over their defaults (the watcher is handed its
    client, so the file paths are never read)."""
    return BBSConfig(url=url, ca_cert=Path("ca.crt"), client_cert=Path("client.crt"), client_key=Path("client.key"), **options)


class Harness:
    def __init__(self, double: BBSDouble, client: BBSClient, **watcher_options: Any) -> None:
        self.double = double
        self.table = Views()
        self.changes = 0
        self._lock = threading.Lock()
        options = {"reconcile_interval_seconds": 0.5, "max_backoff_seconds": 0.1, **watcher_options}
        self.watcher = BBSWatcher(client, self.table.bbs, self._changed, watcher_settings(double.url, **options))

    def _changed(self) -> None:
        with self._lock:
            self.changes += 1


class Clock:
    """The watcher's monotonic clock, driven by the test: real time shifted by what the test advanced it,
    or frozen (time stands still for the watcher until thawed)."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._frozen: float | None = None

    def monotonic(self) -> float:
        return self._frozen if self._frozen is not None else time.monotonic() + self._offset

    def advance(self, seconds: float) -> None:
        if self._frozen is not None:
            self._frozen += seconds
        else:
            self._offset += seconds

    def freeze(self) -> None:
        self._frozen = self.monotonic()

    def thaw(self) -> None:
        if self._frozen is not None:
            self._offset, self._frozen = self._frozen - time.monotonic(), None


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The clock of copilot.sources.bbs_watcher (its only use of `time`), for tests about durations."""
    clock = Clock()
    monkeypatch.setattr(bbs_watcher, "time", clock)
    return clock


def connection_errors() -> float:
    return metrics.BBS_ERRORS.labels("connection")._value.get()


@pytest.fixture
def make_harness(bbs_double: BBSDouble, bbs_pki) -> Iterator[Callable[..., Harness]]:
    """`make_harness(timeout=2, **bbs settings)`: a watcher of the double, stopped after the test."""
    made: list[Harness] = []

    def make(timeout: float = 2, **watcher_options: Any) -> Harness:
        made.append(Harness(bbs_double, BBSClient(bbs_double.url, bbs_pki.client, timeout=timeout), **watcher_options))
        return made[-1]

    yield make
    for harness in made:
        harness.watcher.stop()
        assert not [t.name for t in harness.watcher._threads if t.is_alive()], "stop() left threads running"


@pytest.fixture
def harness(make_harness: Callable[..., Harness]) -> Harness:
    return make_harness()


def start(harness: Harness, wait_until: Callable[..., None]) -> None:
    harness.watcher.start()
    assert harness.watcher.synced.wait(10), "no initial sync"
    wait_until(lambda: harness.double.subscriber_count() == 1, message="the event subscription")


def test_initial_sync(make_harness, clock: Clock, wait_until) -> None:
    clock.freeze()
    harness = make_harness()
    harness.double.desire_lrp("pg", http_routes=route(HOST, "www.example.com"), instances=2)
    harness.double.start_instance("pg", 0, address="10.0.0.1", host_port=61000)
    harness.double.start_instance("pg", 1, address="10.0.0.2", host_port=61001)
    clock.advance(42.5)
    assert harness.watcher.staleness() == 42.5  # never confirmed yet: stale since creation
    clock.thaw()
    start(harness, wait_until)
    assert served(harness.table) == [("10.0.0.1", 61000), ("10.0.0.2", 61001)]
    assert served(harness.table, "www.example.com") == [("10.0.0.1", 61000), ("10.0.0.2", 61001)]
    assert harness.changes >= 1
    wait_until(lambda: harness.watcher.staleness() == 0.0, timeout=5, message="staleness 0 while subscribed")


def test_events_are_applied_incrementally(harness: Harness, wait_until) -> None:
    start(harness, wait_until)
    double, table = harness.double, harness.table
    double.desire_lrp("pg", http_routes=route(HOST), instances=2)
    wait_until(lambda: table.host_routes(HOST) is not None, message="the route")
    assert served(table) == []

    double.start_instance("pg", 0, address="10.0.0.1", host_port=61000)
    wait_until(lambda: served(table) == [("10.0.0.1", 61000)], message="instance 0 to serve")

    double.start_instance("pg", 1, address="10.0.0.2", host_port=61001)
    wait_until(lambda: len(served(table)) == 2, message="instance 1 to serve")

    double.crash_instance("pg", 1)
    wait_until(lambda: served(table) == [("10.0.0.1", 61000)], message="the crashed instance to go")

    double.set_routable("pg", 0, False)
    wait_until(lambda: served(table) == [], message="the unroutable instance to go")
    double.set_routable("pg", 0, None)  # unset means routable
    wait_until(lambda: served(table) == [("10.0.0.1", 61000)], message="the instance to be routable again")

    # evacuation: the evacuating instance keeps serving until it is removed
    double.evacuate_instance("pg", 0)
    double.desire_lrp("marker", http_routes=route("marker.example.com"))  # events apply in order
    wait_until(lambda: table_has(table, "marker.example.com"), message="the events up to the marker")
    assert served(table) == [("10.0.0.1", 61000)]
    double.remove_desired_lrp("marker")
    double.start_instance("pg", 0, address="10.0.0.3", host_port=62000)
    wait_until(lambda: served(table) == [("10.0.0.1", 61000), ("10.0.0.3", 62000)], message="the replacement")
    double.remove_instance("pg", 0, evacuating=True)
    wait_until(lambda: served(table) == [("10.0.0.3", 62000)], message="the evacuated instance to go")

    double.remove_instance("pg", 0)
    wait_until(lambda: served(table) == [], message="the removed instance to go")

    # route changes
    double.start_instance("pg", 0, address="10.0.0.4", host_port=63000)
    double.desire_lrp("pg", http_routes=route("moved.example.com"))
    wait_until(lambda: table.host_routes(HOST) is None, message="the old host to go")
    wait_until(lambda: served(table, "moved.example.com") == [("10.0.0.4", 63000)], message="the new host")
    double.remove_desired_lrp("pg")
    wait_until(lambda: hosts(table) == [], message="the removed process's routes to go")


def test_events_are_applied_without_a_resync(make_harness, wait_until) -> None:
    harness = make_harness(reconcile_interval_seconds=3600)  # only events can bring changes in
    start(harness, wait_until)
    syncs = metrics.BBS_SYNCS._value.get()
    harness.double.desire_lrp("pg", http_routes=route(HOST))
    harness.double.start_instance("pg", 0, address="10.0.0.1", host_port=61000)
    wait_until(lambda: served(harness.table) == [("10.0.0.1", 61000)], timeout=5, message="the event to apply")
    assert metrics.BBS_SYNCS._value.get() == syncs


def test_events_apply_while_a_listing_is_translated_and_are_not_undone_by_it(
    harness: Harness, wait_until, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reconcile's translation takes seconds at 100,000 routes: events are applied meanwhile (none waits
    for the listing), and the listing, older than them, is applied with them applied again on top."""
    start(harness, wait_until)
    double, table = harness.double, harness.table
    double.desire_lrp("pg", http_routes=route(HOST), instances=2)
    double.start_instance("pg", 0, address="10.0.0.1", host_port=61000)
    wait_until(lambda: served(table) == [("10.0.0.1", 61000)], message="instance 0 to serve")
    translate = bbs_watcher.translate_listing
    during: list[list[tuple[str, int]]] = []

    def translating(desired, actual):
        if not during:  # the next reconcile's listing: it holds instance 0 only
            double.start_instance("pg", 1, address="10.0.0.2", host_port=61001)
            double.remove_instance("pg", 0)
            wait_until(lambda: served(table) == [("10.0.0.2", 61001)], message="the events, mid-translation")
            during.append(served(table))
        return translate(desired, actual)

    monkeypatch.setattr(bbs_watcher, "translate_listing", translating)
    syncs = metrics.BBS_SYNCS._value.get()
    wait_until(lambda: metrics.BBS_SYNCS._value.get() > syncs, message="a reconcile")
    assert during == [[("10.0.0.2", 61001)]]
    assert served(table) == [("10.0.0.2", 61001)]  # not instance 0 of the older listing


def test_survives_malformed_events(harness: Harness, wait_until) -> None:
    start(harness, wait_until)
    errors = metrics.BBS_ERRORS.labels("malformed_event")._value.get()
    connection_errors = metrics.BBS_ERRORS.labels("connection")._value.get()
    harness.double.inject_raw_event("desired_lrp_created", b"\xff\xff\xff\xff")
    harness.double.inject_raw_event("actual_lrp_instance_created", b"\x0a\x10truncated")
    harness.double.inject_raw_event("something_new", b"")
    harness.double.desire_lrp("pg", http_routes=route(HOST))
    harness.double.start_instance("pg", 0, address="10.0.0.1", host_port=61000)
    wait_until(lambda: served(harness.table) == [("10.0.0.1", 61000)], message="events after the malformed ones")
    assert metrics.BBS_ERRORS.labels("malformed_event")._value.get() == errors + 3
    assert metrics.BBS_ERRORS.labels("connection")._value.get() == connection_errors  # the stream was kept


def test_survives_a_bad_route_payload(harness: Harness, wait_until) -> None:
    harness.double.desire_lrp("good", http_routes=route("good.example.com"))
    harness.double.desire_lrp("bad", raw_routes={"cf-router": b"{this is not json"})
    start(harness, wait_until)
    assert hosts(harness.table) == ["good.example.com"]
    harness.double.desire_lrp(
        "bad", raw_routes={"cf-router": b'[{"hostnames": ["bad_host", "fixed.example.com"], "port": 8080}]'}
    )
    wait_until(lambda: "fixed.example.com" in hosts(harness.table), message="the fixed route")
    assert sorted(hosts(harness.table)) == ["fixed.example.com", "good.example.com"]


def test_bbs_outage_keeps_the_table_reports_staleness_and_resyncs(harness: Harness, clock: Clock, wait_until) -> None:
    double, table, watcher = harness.double, harness.table, harness.watcher
    double.desire_lrp("pg", http_routes=route(HOST))
    double.start_instance("pg", 0, address="10.0.0.1", host_port=61000)
    start(harness, wait_until)
    assert served(table) == [("10.0.0.1", 61000)]
    wait_until(lambda: watcher.staleness() == 0.0, timeout=5, message="staleness 0 while subscribed")

    double.stop()
    wait_until(lambda: watcher.staleness() > 0, message="staleness to be reported")
    clock.freeze()
    first = watcher.staleness()
    clock.advance(60)
    assert watcher.staleness() == pytest.approx(first + 60)  # it keeps growing while BBS is away
    clock.thaw()
    assert served(table) == [("10.0.0.1", 61000)]  # last known routes are kept
    assert watcher.synced.is_set()

    # changes made while Copilot cannot see them
    double.remove_instance("pg", 0)
    double.desire_lrp("new", http_routes=route("new.example.com"))
    double.start_instance("new", 0, address="10.0.0.9", host_port=61009)
    failed = connection_errors()
    wait_until(lambda: connection_errors() >= failed + 2, message="two more attempts to reach BBS to fail")
    assert served(table) == [("10.0.0.1", 61000)]

    double.start()  # same port
    wait_until(lambda: served(table, "new.example.com") == [("10.0.0.9", 61009)], message="the resync after the outage")
    assert served(table) == []
    wait_until(lambda: watcher.staleness() == 0.0, message="staleness back to 0")
    # and events flow again
    double.start_instance("pg", 0, address="10.0.0.2", host_port=61002)
    wait_until(lambda: served(table) == [("10.0.0.2", 61002)], message="events after the reconnect")


def test_event_stream_closed_by_bbs_reconnects_and_resyncs(harness: Harness, wait_until) -> None:
    start(harness, wait_until)
    syncs = metrics.BBS_SYNCS._value.get()
    harness.double.close_event_streams()
    wait_until(lambda: metrics.BBS_SYNCS._value.get() > syncs, message="a resync")
    wait_until(lambda: harness.double.subscriber_count() == 1, message="a new subscription")
    harness.double.desire_lrp("pg", http_routes=route(HOST))
    wait_until(lambda: table_has(harness.table, HOST), message="events on the new stream")


def table_has(table: Views, host: str) -> bool:
    return table.host_routes(host) is not None


def test_reconcile_repairs_drift(harness: Harness, wait_until) -> None:
    harness.double.desire_lrp("pg", http_routes=route(HOST))
    harness.double.start_instance("pg", 0, address="10.0.0.1", host_port=61000)
    start(harness, wait_until)
    # something (a lost event, a bug) made the table drift from BBS
    harness.table.bbs.remove_process("pg")
    harness.table.bbs.upsert_process("ghost", ProcessRoutes(http=(HttpRoute("ghost.example.com", "", 8080),)))
    wait_until(lambda: served(harness.table) == [("10.0.0.1", 61000)], timeout=5, message="the periodic reconcile")
    assert hosts(harness.table) == [HOST]


def test_never_reached_bbs_is_stale_and_unsynced(bbs_pki, clock: Clock, wait_until) -> None:
    from devtools.ports import free_port

    table = Views()
    clock.freeze()
    url = f"https://127.0.0.1:{free_port()}"
    settings = watcher_settings(url, max_backoff_seconds=0.1)
    watcher = BBSWatcher(BBSClient(url, bbs_pki.client, timeout=1), table.bbs, lambda: None, settings)
    failed = connection_errors()
    watcher.start()
    try:
        clock.advance(120)
        wait_until(lambda: connection_errors() >= failed + 3, message="three attempts to reach BBS to fail")
        assert not watcher.synced.is_set()
        assert watcher.staleness() == 120  # since start: failed attempts confirm nothing
    finally:
        watcher.stop()


def test_stop_ends_the_threads(harness: Harness, wait_until) -> None:
    start(harness, wait_until)
    harness.watcher.stop()
    assert not any(t.is_alive() for t in harness.watcher._threads)
    wait_until(lambda: harness.double.subscriber_count() == 0, message="the event stream closed")
    harness.double.desire_lrp("pg", http_routes=route(HOST))
    assert hosts(harness.table) == []  # no thread and no stream left to apply it


def test_staleness_grows_while_bbs_cannot_list(harness: Harness, wait_until) -> None:
    """BBS half-broken (events subscribe, listings fail): nothing confirms our state, so staleness must grow."""
    start(harness, wait_until)
    harness.double.fail_requests("/v1/actual_lrps/list", http_status=500, count=1_000_000, message="database unavailable")
    harness.double.close_event_streams()
    wait_until(lambda: harness.watcher.staleness() > 1.0, timeout=5, message="staleness to grow past 1s")
    harness.double.clear_failures()
    wait_until(lambda: harness.watcher.staleness() == 0.0, timeout=5, message="staleness back to 0 once BBS lists again")


# ---------------------------------------------------------------- anything BBS sends is survivable


@pytest.mark.parametrize("error_type", [29, 77])  # Unrecoverable; a number no Copilot knows
def test_an_error_type_it_does_not_know_never_kills_the_watcher(harness: Harness, wait_until, error_type: int) -> None:
    """BBS answers listings with an Error.Type the client cannot name: the watcher backs off, resubscribes,
    re-lists once BBS recovers, and routes converge (before the fix, the event thread died of a ValueError)."""
    double, table, watcher = harness.double, harness.table, harness.watcher
    double.desire_lrp("pg", http_routes=route(HOST))
    double.start_instance("pg", 0, address="10.0.0.1", host_port=61000)
    start(harness, wait_until)
    syncs = metrics.BBS_SYNCS._value.get()

    double.fail_requests("/v1/actual_lrps/list", error_type, count=3, message="the database is gone")
    double.close_event_streams()
    wait_until(lambda: double.pending_failures("/v1/actual_lrps/list") == 0, message="the failing listings to be tried")
    double.start_instance("pg", 1, address="10.0.0.2", host_port=61001)  # a change while Copilot was not live
    wait_until(lambda: served(table) == [("10.0.0.1", 61000), ("10.0.0.2", 61001)], message="routes to converge")
    wait_until(lambda: watcher.live and double.subscriber_count() == 1, message="a live subscription")
    assert metrics.BBS_SYNCS._value.get() > syncs
    assert all(t.is_alive() for t in watcher._threads)
    double.start_instance("pg", 2, address="10.0.0.3", host_port=61002)
    wait_until(lambda: len(served(table)) == 3, message="events on the new stream")


def test_an_unknown_error_type_at_the_first_listing_is_retried(harness: Harness, wait_until) -> None:
    harness.double.desire_lrp("pg", http_routes=route(HOST))
    harness.double.start_instance("pg", 0, address="10.0.0.1", host_port=61000)
    harness.double.fail_requests("/v1/desired_lrp_routing_infos/list", 77, count=2)
    start(harness, wait_until)
    assert harness.double.pending_failures("/v1/desired_lrp_routing_infos/list") == 0
    assert served(harness.table) == [("10.0.0.1", 61000)]


def test_a_failing_subscription_is_retried(harness: Harness, wait_until) -> None:
    from bbs_double.server import EVENTS_PATH

    harness.double.fail_requests(EVENTS_PATH, 77, count=2)
    start(harness, wait_until)
    harness.double.fail_requests(EVENTS_PATH, http_status=503, count=2)
    harness.double.close_event_streams()
    wait_until(lambda: harness.double.pending_failures(EVENTS_PATH) == 0, message="the failing subscriptions")
    wait_until(lambda: harness.watcher.live and harness.double.subscriber_count() == 1, message="a new subscription")
    harness.double.desire_lrp("pg", http_routes=route(HOST))
    wait_until(lambda: table_has(harness.table, HOST), message="events on the new stream")


def test_any_exception_applying_an_event_resubscribes_and_relists(
    harness: Harness, wait_until, monkeypatch: pytest.MonkeyPatch
) -> None:
    from copilot.sources import bbs_translate

    start(harness, wait_until)
    internal = metrics.BBS_ERRORS.labels("internal")._value.get()
    real = bbs_translate.instance_from_info
    calls = {"n": 0}

    def explode_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug nobody foresaw")
        return real(*args, **kwargs)

    monkeypatch.setattr(bbs_translate, "instance_from_info", explode_once)
    harness.double.desire_lrp("pg", http_routes=route(HOST))
    harness.double.start_instance("pg", 0, address="10.0.0.1", host_port=61000)
    wait_until(lambda: served(harness.table) == [("10.0.0.1", 61000)], message="the re-listing to bring the instance in")
    wait_until(lambda: harness.watcher.live, message="the watcher to be live again")
    assert metrics.BBS_ERRORS.labels("internal")._value.get() == internal + 1


def test_not_live_while_the_stream_is_down_but_routes_are_kept(harness: Harness, wait_until) -> None:
    harness.double.desire_lrp("pg", http_routes=route(HOST))
    harness.double.start_instance("pg", 0, address="10.0.0.1", host_port=61000)
    start(harness, wait_until)
    wait_until(lambda: harness.watcher.live, message="live")
    harness.double.fail_requests(count=1_000_000)  # every request fails from now on
    harness.double.close_event_streams()
    wait_until(lambda: not harness.watcher.live, message="not live once the stream is gone")
    assert served(harness.table) == [("10.0.0.1", 61000)]
    assert harness.watcher.synced.is_set()
    harness.double.clear_failures()
    wait_until(lambda: harness.watcher.live, message="live again once BBS recovers")


def test_real_sequences_route_like_route_emitter(harness: Harness, wait_until) -> None:
    """Crash-restart, evacuation, a vanished cell and retirement, end to end through the event stream."""
    start(harness, wait_until)
    double, table = harness.double, harness.table
    double.desire_lrp("pg", http_routes=route(HOST), instances=2)
    double.start_instance("pg", 0, address="10.0.0.1", host_port=61000, cell_id="c1")
    double.start_instance("pg", 1, address="10.0.0.2", host_port=61001, cell_id="c2")
    wait_until(lambda: served(table) == [("10.0.0.1", 61000), ("10.0.0.2", 61001)], message="two instances")

    double.crash_instance("pg", 1)
    wait_until(lambda: served(table) == [("10.0.0.1", 61000)], message="the crashed instance to go")
    double.start_instance("pg", 1, address="10.0.0.2", host_port=61005, cell_id="c2")
    wait_until(lambda: served(table) == [("10.0.0.1", 61000), ("10.0.0.2", 61005)], message="its restart")

    double.evacuate_instance("pg", 0)
    double.start_instance("pg", 0, address="10.0.0.3", host_port=62000, cell_id="c3")
    wait_until(lambda: len(served(table)) == 3, message="evacuating copy and replacement both routed")
    assert ("10.0.0.1", 61000) in served(table)
    double.remove_instance("pg", 0, evacuating=True)
    wait_until(lambda: served(table) == [("10.0.0.2", 61005), ("10.0.0.3", 62000)], message="the evacuated copy to go")

    double.lose_cell("c3")
    double.desire_lrp("marker", http_routes=route("marker.example.com"))
    wait_until(lambda: table_has(table, "marker.example.com"), message="the events before the marker")
    assert served(table) == [("10.0.0.2", 61005), ("10.0.0.3", 62000)]  # the SUSPECT copy still serves
    double.start_instance("pg", 0, address="10.0.0.4", host_port=63000, cell_id="c4")
    wait_until(lambda: served(table) == [("10.0.0.2", 61005), ("10.0.0.4", 63000)], message="the suspect copy to go")

    double.retire_instance("pg", 1)
    wait_until(lambda: served(table) == [("10.0.0.4", 63000)], message="the retired instance to go")


# ---------------------------------------------------------------- a hung BBS (no heartbeats on a real one)


def test_a_hung_bbs_makes_staleness_rise_and_is_resubscribed_once_it_answers(make_harness, wait_until) -> None:
    """Before the fix a hung BBS showed staleness 0 for as long as the reconcile took to notice (here: never)."""
    harness = make_harness(timeout=0.5, reconcile_interval_seconds=3600, liveness_check_interval_seconds=0.2)
    double, table, watcher = harness.double, harness.table, harness.watcher
    double.desire_lrp("pg", http_routes=route(HOST))
    double.start_instance("pg", 0, address="10.0.0.1", host_port=61000)
    start(harness, wait_until)
    wait_until(lambda: watcher.staleness() == 0.0, message="staleness 0 while subscribed")
    liveness_errors = metrics.BBS_ERRORS.labels("liveness")._value.get()

    double.hang()
    hung_at = time.monotonic()
    # within a ping interval and a ping timeout: the reconcile interval (an hour) would never see it
    wait_until(lambda: watcher.staleness() > 0.5, timeout=5, message="staleness to rise while BBS is hung")
    assert not watcher.live
    wait_until(lambda: watcher.staleness() > time.monotonic() - hung_at, timeout=5, message="staleness to keep rising")
    assert served(table) == [("10.0.0.1", 61000)]  # last known routes kept
    assert metrics.BBS_ERRORS.labels("liveness")._value.get() == liveness_errors + 1

    double.resume()
    wait_until(lambda: watcher.live and watcher.staleness() == 0.0, message="live again once BBS answers")
    double.start_instance("pg", 1, address="10.0.0.2", host_port=61001)
    wait_until(lambda: len(served(table)) == 2, message="events on the new stream")


def test_a_quiet_healthy_stream_is_never_torn_down(make_harness, wait_until) -> None:
    """Silence many request timeouts long: pings keep confirming BBS, the one subscription stays up."""
    from bbs_double.server import EVENTS_PATH

    harness = make_harness(timeout=0.3, reconcile_interval_seconds=3600, liveness_check_interval_seconds=0.1)
    start(harness, wait_until)
    subscriptions = harness.double.requests_received(EVENTS_PATH)
    syncs = metrics.BBS_SYNCS._value.get()
    pings = harness.double.requests_received("/v1/ping")
    wait_until(lambda: harness.double.requests_received("/v1/ping") >= pings + 15, message="15 pings (1.5 s of silence)")
    assert harness.double.requests_received(EVENTS_PATH) == subscriptions
    assert metrics.BBS_SYNCS._value.get() == syncs
    assert harness.watcher.live and harness.watcher.staleness() == 0.0
    harness.double.desire_lrp("pg", http_routes=route(HOST))
    wait_until(lambda: table_has(harness.table, HOST), message="the next event on the same stream")


# ---------------------------------------------------------------- a BBS that lost its state


def fill(double: BBSDouble, apps: int, instances: int) -> list[tuple[str, int]]:
    """`apps` processes of `instances` RUNNING instances each, app<n>.example.com; returns their backends."""
    backends = []
    for app in range(apps):
        double.desire_lrp(f"pg-{app}", http_routes=route(f"app{app}.example.com"), instances=instances)
        for index in range(instances):
            port = 61000 + app * 100 + index
            double.start_instance(f"pg-{app}", index, address="10.0.0.1", host_port=port, instance_guid=f"ig-{app}-{index}")
            backends.append(("10.0.0.1", port))
    return backends


def all_served(table: Views, apps: int) -> list[tuple[str, int]]:
    return sorted(b for app in range(apps) for b in served(table, f"app{app}.example.com"))


def holds(outcome: str) -> float:
    return metrics.BBS_WITHDRAWAL_HOLDS.labels(outcome)._value.get()


def test_what_events_brought_in_while_a_listing_was_taken_is_no_withdrawal(
    make_harness, wait_until, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Instances and apps that events created while a listing was translated are missing from that older
    listing: they are not counted as withdrawn (three new instances beside one would look like a BBS
    that lost its state to the guard), and the listing is applied."""
    harness = make_harness(withdrawal_hold_fraction=0.5, withdrawal_hold_minimum=2, withdrawal_hold_seconds=30)
    double, table = harness.double, harness.table
    double.desire_lrp("pg", http_routes=route(HOST), instances=1)
    double.start_instance("pg", 0, address="10.0.0.1", host_port=61000)
    start(harness, wait_until)
    translate = bbs_watcher.translate_listing
    during: list[bool] = []

    def translating(desired, actual):
        if not during:
            double.desire_lrp("late", http_routes=route("late.example.com"), instances=3)
            for index in range(3):
                double.start_instance("late", index, address=f"10.0.1.{index}", host_port=62000 + index)
            wait_until(lambda: len(served(table, "late.example.com")) == 3, message="the new instances, mid-translation")
            during.append(True)
        return translate(desired, actual)

    monkeypatch.setattr(bbs_watcher, "translate_listing", translating)
    syncs, held = metrics.BBS_SYNCS._value.get(), holds("held")
    wait_until(lambda: metrics.BBS_SYNCS._value.get() > syncs, message="the reconcile's listing applied")
    assert not harness.watcher.withdrawal_held and holds("held") == held
    assert len(served(table, "late.example.com")) == 3 and served(table) == [("10.0.0.1", 61000)]


def test_a_bbs_restarted_with_its_state_loses_nothing(make_harness, wait_until) -> None:
    harness = make_harness(withdrawal_hold_fraction=0.5, withdrawal_hold_minimum=2, withdrawal_hold_seconds=30)
    backends = fill(harness.double, apps=3, instances=2)
    start(harness, wait_until)
    assert all_served(harness.table, 3) == sorted(backends)
    syncs, held = metrics.BBS_SYNCS._value.get(), holds("held")
    harness.double.restart(keep_state=True)
    wait_until(lambda: metrics.BBS_SYNCS._value.get() > syncs and harness.watcher.live, message="the resync after the restart")
    assert all_served(harness.table, 3) == sorted(backends)
    assert not harness.watcher.withdrawal_held and holds("held") == held


def test_a_bbs_restarted_empty_is_held_then_applied_if_it_persists(make_harness, clock: Clock, wait_until) -> None:
    """Before the fix every route went the moment the empty BBS was listed. The hold's time is the test's."""
    hold = 30
    harness = make_harness(withdrawal_hold_fraction=0.5, withdrawal_hold_minimum=2, withdrawal_hold_seconds=hold)
    double, table, watcher = harness.double, harness.table, harness.watcher
    backends = fill(double, apps=3, instances=2)
    start(harness, wait_until)
    held, applied = holds("held"), holds("applied")

    double.restart(keep_state=False)
    wait_until(lambda: watcher.withdrawal_held, message="the empty listing to be held")
    assert all_served(table, 3) == sorted(backends)  # nothing withdrawn while held
    assert metrics.BBS_WITHDRAWAL_HELD._value.get() == 1 and holds("held") == held + 1
    details = watcher.held_withdrawal()
    assert details is not None
    assert (details["instances_withdrawn"], details["instances_known"]) == (6, 6)
    assert (details["desired_lrps_withdrawn"], details["desired_lrps_known"]) == (3, 3)
    assert 0 < details["applied_in_seconds"] <= hold
    assert watcher.live and watcher.staleness() == 0.0  # BBS answers: the hold is reported on its own

    # events still apply during the hold (the restarted BBS is being filled again)
    double.desire_lrp("pg-new", http_routes=route("new.example.com"))
    double.start_instance("pg-new", 0, address="10.0.0.9", host_port=62000)
    wait_until(lambda: served(table, "new.example.com") == [("10.0.0.9", 62000)], message="events during the hold")
    assert all_served(table, 3) == sorted(backends)

    # reconciles before the hold is over list the same: still held
    listings = double.requests_received("/v1/actual_lrps/list")
    wait_until(lambda: double.requests_received("/v1/actual_lrps/list") >= listings + 2, message="two more listings")
    assert watcher.withdrawal_held and all_served(table, 3) == sorted(backends)

    # the withdrawal persists: applied once the hold is over (at the latest a reconcile interval later)
    clock.advance(hold)
    wait_until(lambda: hosts(table) == ["new.example.com"], timeout=10, message="the persisting withdrawal to be applied")
    assert not watcher.withdrawal_held and metrics.BBS_WITHDRAWAL_HELD._value.get() == 0
    assert holds("applied") == applied + 1


def test_a_hold_ends_when_bbs_lists_its_state_again(make_harness, wait_until) -> None:
    """A BBS restored with its state after an empty restart: nothing was withdrawn, the hold is dropped."""
    harness = make_harness(withdrawal_hold_fraction=0.5, withdrawal_hold_minimum=2, withdrawal_hold_seconds=60)
    double, table, watcher = harness.double, harness.table, harness.watcher
    backends = fill(double, apps=2, instances=2)
    start(harness, wait_until)
    cleared = holds("cleared")
    double.restart(keep_state=False)
    wait_until(lambda: watcher.withdrawal_held, message="the empty listing to be held")
    fill(double, apps=2, instances=2)  # its state comes back (same instances)
    wait_until(lambda: not watcher.withdrawal_held, message="the next listing to end the hold")
    assert holds("cleared") == cleared + 1
    assert all_served(table, 2) == sorted(backends)


def test_a_real_mass_stop_converges_event_by_event(make_harness, wait_until) -> None:
    """Removal events are BBS saying what went: never held, however many."""
    harness = make_harness(withdrawal_hold_fraction=0.5, withdrawal_hold_minimum=2, withdrawal_hold_seconds=60)
    double, table, watcher = harness.double, harness.table, harness.watcher
    fill(double, apps=4, instances=3)
    start(harness, wait_until)
    held = holds("held")
    for app in range(4):
        for index in range(3):
            double.remove_instance(f"pg-{app}", index)
    wait_until(lambda: all_served(table, 4) == [], timeout=5, message="every stopped instance to go")
    for app in range(3):
        double.remove_desired_lrp(f"pg-{app}")
    wait_until(lambda: hosts(table) == ["app3.example.com"], timeout=5, message="the deleted apps' routes to go")
    syncs = metrics.BBS_SYNCS._value.get()
    wait_until(lambda: metrics.BBS_SYNCS._value.get() >= syncs + 2, message="two reconciles agreeing")
    assert not watcher.withdrawal_held and holds("held") == held


def test_a_small_withdrawal_by_listing_is_applied_at_once(make_harness, wait_until) -> None:
    """Below the minimum (or below the fraction) a listing is applied as it comes."""
    harness = make_harness(withdrawal_hold_fraction=0.5, withdrawal_hold_minimum=10, withdrawal_hold_seconds=60)
    fill(harness.double, apps=2, instances=2)
    start(harness, wait_until)
    held = holds("held")
    harness.double.restart(keep_state=False)
    wait_until(lambda: hosts(harness.table) == [], message="the listing to be applied")
    assert holds("held") == held and not harness.watcher.withdrawal_held
