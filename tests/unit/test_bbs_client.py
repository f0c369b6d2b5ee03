"""The BBS client against the BBS double: real HTTPS with mutual TLS on loopback."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator

import pytest

from bbs_double.server import BBSDouble
from copilot import metrics
from copilot.protos import bbs_pb2 as bbs
from copilot.sources.bbs_client import BBSClient, BBSError, Event, MalformedEvent, decode_event

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def client(bbs_double: BBSDouble, bbs_pki) -> Iterator[BBSClient]:
    client = BBSClient(bbs_double.url, bbs_pki.client, timeout=5)
    yield client
    client.close()


def next_item(iterator: Iterator, timeout: float = 5.0):
    """The next item of a blocking iterator, read in a thread so the wait is bounded."""
    box: list = []
    done = threading.Event()

    def read() -> None:
        try:
            box.append(next(iterator))
        except BaseException as error:  # noqa: BLE001 - handed to the test
            box.append(error)
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(timeout), f"nothing on the stream within {timeout}s"
    return box[0]


def test_ping(client: BBSClient) -> None:
    assert client.ping() is True


def test_lists(client: BBSClient, bbs_double: BBSDouble) -> None:
    assert client.desired_lrp_routing_infos() == []
    assert client.actual_lrps() == []
    bbs_double.desire_lrp("pg-1", http_routes=[{"hostnames": ["a.example.com"], "port": 8080}], instances=2)
    bbs_double.desire_lrp("pg-2", http_routes=[])
    bbs_double.start_instance("pg-1", 0, host_port=61000, instance_guid="ig-0")
    bbs_double.start_instance("pg-1", 1, host_port=61001, instance_guid="ig-1")
    desired = client.desired_lrp_routing_infos()
    assert [d.process_guid for d in desired] == ["pg-1", "pg-2"]
    assert b"a.example.com" in desired[0].routes.routes["cf-router"]
    actual = client.actual_lrps()
    assert [(a.actual_lrp_key.process_guid, a.actual_lrp_key.index, a.actual_lrp_instance_key.instance_guid) for a in actual] == [
        ("pg-1", 0, "ig-0"),
        ("pg-1", 1, "ig-1"),
    ]
    assert [a.actual_lrp_net_info.ports[0].host_port for a in actual] == [61000, 61001]


def test_events(client: BBSClient, bbs_double: BBSDouble) -> None:
    stream = client.open_events()
    try:
        events = iter(stream)
        bbs_double.desire_lrp("pg-1", http_routes=[{"hostnames": ["a.example.com"], "port": 8080}])
        created = next_item(events)
        assert isinstance(created, Event)
        assert created.type == "desired_lrp_created"
        assert isinstance(created.message, bbs.DesiredLRPCreatedEvent)
        assert created.message.desired_lrp.process_guid == "pg-1"
        bbs_double.start_instance("pg-1", 0, host_port=61000)
        instance = next_item(events)
        assert instance.type == "actual_lrp_instance_created"
        assert instance.message.actual_lrp.state == "UNCLAIMED"
        assert int(instance.id) == int(created.id) + 1
        assert next_item(events).message.after.state == "CLAIMED"
        running = next_item(events)
        assert running.type == "actual_lrp_instance_changed" and running.message.after.state == "RUNNING"
        assert running.message.after.actual_lrp_net_info.ports[0].host_port == 61000
    finally:
        stream.close()


def test_malformed_events_are_values_and_the_stream_goes_on(client: BBSClient, bbs_double: BBSDouble) -> None:
    stream = client.open_events()
    try:
        events = iter(stream)
        bbs_double.inject_raw_event("desired_lrp_created", b"\xff\xff\xff\xff")
        bbs_double.inject_raw_event("no_such_event", b"")
        bad_payload = next_item(events)
        assert isinstance(bad_payload, MalformedEvent) and "undecodable payload" in str(bad_payload)
        unknown = next_item(events)
        assert isinstance(unknown, MalformedEvent) and "unknown type 'no_such_event'" in str(unknown)
        bbs_double.desire_lrp("pg-ok", http_routes=[])
        assert next_item(events).type == "desired_lrp_created"
    finally:
        stream.close()


def test_close_unblocks_a_reader_in_another_thread(client: BBSClient) -> None:
    stream = client.open_events()
    finished = threading.Event()
    results: list[object] = []

    def read() -> None:
        try:
            results.extend(stream)
        except BBSError as error:
            results.append(error)
        finished.set()

    threading.Thread(target=read, daemon=True).start()
    assert not finished.wait(0.2)  # observed a while (an absence, not a wait): the reader stays blocked
    stream.close()
    assert finished.wait(5), "close() did not unblock the reader"
    assert not [r for r in results if isinstance(r, Event)]


def test_stream_ends_when_the_bbs_stops(client: BBSClient, bbs_double: BBSDouble) -> None:
    stream = client.open_events()
    events = iter(stream)
    bbs_double.close_event_streams()
    assert isinstance(next_item(events), StopIteration)  # a clean end (0-size chunk), not an error
    stream.close()


def test_wrong_ca_client_certificate_is_refused(bbs_double: BBSDouble, bbs_pki) -> None:
    stranger = BBSClient(bbs_double.url, bbs_pki.stranger, timeout=5)
    try:
        with pytest.raises(BBSError):
            stranger.ping()
        with pytest.raises(BBSError):
            stranger.actual_lrps()
        with pytest.raises(BBSError):
            stranger.open_events()
    finally:
        stranger.close()


def test_untrusted_server_is_refused(bbs_double: BBSDouble, bbs_pki) -> None:
    distrustful = BBSClient(bbs_double.url, bbs_pki.distrustful, timeout=5)
    try:
        with pytest.raises(BBSError, match="(?i)certificate"):
            distrustful.ping()
    finally:
        distrustful.close()


def test_environment_cannot_override_the_bbs_ca(
    bbs_double: BBSDouble, bbs_pki, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    bogus = tmp_path / "bundle.pem"
    bogus.write_text("not a bundle\n")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bogus))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    client = BBSClient(bbs_double.url, bbs_pki.client, timeout=5)
    try:
        assert client.ping()
    finally:
        client.close()


def test_unreachable_bbs(bbs_pki) -> None:
    from devtools.ports import free_port

    client = BBSClient(f"https://127.0.0.1:{free_port()}", bbs_pki.client, timeout=2)
    try:
        with pytest.raises(BBSError):
            client.ping()
        with pytest.raises(BBSError, match="cannot subscribe"):
            client.open_events()
    finally:
        client.close()


def test_http_errors_become_bbs_errors(bbs_double: BBSDouble, bbs_pki) -> None:
    client = BBSClient(bbs_double.url + "/nope", bbs_pki.client, timeout=5)
    try:
        with pytest.raises(BBSError, match="HTTP 404"):
            client.ping()
        with pytest.raises(BBSError, match="HTTP 404"):
            client.open_events()
    finally:
        client.close()


# ---------------------------------------------------------------- decoding


def _b64(message) -> str:
    return base64.b64encode(message.SerializeToString()).decode()


def test_decode_event() -> None:
    message = bbs.DesiredLRPRemovedEvent(desired_lrp=bbs.DesiredLRP(process_guid="pg"))
    event = decode_event("3", "desired_lrp_removed", _b64(message))
    assert event == Event("3", "desired_lrp_removed", message)


@pytest.mark.parametrize(
    ("event_type", "data", "problem"),
    [
        ("bogus", "", "unknown type"),
        ("desired_lrp_removed", "not base64!", "undecodable"),
        ("desired_lrp_removed", base64.b64encode(b"\xff\xff\xff").decode(), "undecodable"),
        ("actual_lrp_crashed", base64.b64encode(b"\x0a\x05ab").decode(), "undecodable"),  # truncated
    ],
)
def test_decode_bad_event(event_type: str, data: str, problem: str) -> None:
    result = decode_event("9", event_type, data)
    assert isinstance(result, MalformedEvent)
    assert problem in str(result) and "event 9" in str(result)


def test_bbs_error_field_becomes_bbs_error(bbs_double: BBSDouble, bbs_pki) -> None:
    bbs_double.fail_requests("/v1/actual_lrps/list", bbs.Error.Timeout, message="database is slow")
    client = BBSClient(bbs_double.url, bbs_pki.client, timeout=5)
    try:
        with pytest.raises(BBSError, match="Timeout: database is slow"):
            client.actual_lrps()
    finally:
        client.close()


def unrecognized(field: str) -> float:
    return metrics.BBS_UNRECOGNIZED.labels(field)._value.get()


@pytest.mark.parametrize("error_type", [0, 3, 13, 28, 29, 30, 31])
def test_every_real_error_type_is_a_bbs_error_named_by_its_type(
    bbs_double: BBSDouble, client: BBSClient, error_type: int
) -> None:
    bbs_double.fail_requests("/v1/actual_lrps/list", error_type, message="it failed")
    with pytest.raises(BBSError, match=f"{bbs.Error.Type.Name(error_type)}: it failed") as caught:
        client.actual_lrps()
    assert caught.value.error_type == error_type
    assert client.actual_lrps() == []  # the next request works


def test_unknown_error_type_is_a_bbs_error_reported_once(
    bbs_double: BBSDouble, client: BBSClient, caplog: pytest.LogCaptureFixture
) -> None:
    before = unrecognized("Error.type")
    bbs_double.fail_requests("/v1/desired_lrp_routing_infos/list", 4242, count=3, message="from the future")
    for _ in range(3):
        with pytest.raises(BBSError, match=r"Error.Type\(4242\): from the future") as caught:
            client.desired_lrp_routing_infos()
        assert caught.value.error_type == 4242
    assert unrecognized("Error.type") == before + 3
    reports = [r for r in caplog.records if getattr(r, "field", None) == "Error.type" and getattr(r, "value", None) == "4242"]
    assert len(reports) == 1  # logged once, counted every time


def test_failed_subscription_is_a_bbs_error_with_the_type(bbs_double: BBSDouble, client: BBSClient) -> None:
    from bbs_double.server import EVENTS_PATH

    bbs_double.fail_requests(EVENTS_PATH, 4243)
    with pytest.raises(BBSError, match=r"HTTP 500: Error.Type\(4243\)") as caught:
        client.open_events()
    assert caught.value.error_type == 4243
    bbs_double.fail_requests(EVENTS_PATH, http_status=503, message="migrations")
    with pytest.raises(BBSError, match="HTTP 503") as caught:
        client.open_events()
    assert caught.value.error_type is None
    client.open_events().close()  # and then it works


def test_unknown_event_type_is_counted_as_unrecognized(bbs_double: BBSDouble, client: BBSClient) -> None:
    before = unrecognized("event")
    result = decode_event("1", "actual_lrp_teleported", "")
    assert isinstance(result, MalformedEvent) and result.event_type == "actual_lrp_teleported"
    assert result.reason == "unknown type"
    assert unrecognized("event") == before + 1
    bad = decode_event("2", "desired_lrp_removed", "!!")
    assert isinstance(bad, MalformedEvent) and bad.reason == "undecodable payload"
    assert unrecognized("event") == before + 1


# ---------------------------------------------------------------- timeouts: a hung BBS, a quiet one


def in_thread(call, timeout: float):
    """`call()`'s result (or exception) if it returns within `timeout`; fails the test if it blocks."""
    box: list = []
    done = threading.Event()

    def run() -> None:
        try:
            box.append(call())
        except BaseException as error:  # noqa: BLE001 - handed to the test
            box.append(error)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(timeout), f"still blocked after {timeout}s"
    return box[0]


def test_subscribing_to_a_hung_bbs_fails_within_the_timeout(bbs_double: BBSDouble, bbs_pki) -> None:
    """A BBS that accepts the subscription but never answers must not hold the subscriber forever
    (before the fix the subscription had no read timeout at all)."""
    client = BBSClient(bbs_double.url, bbs_pki.client, timeout=0.5)
    try:
        bbs_double.hang()
        result = in_thread(client.open_events, timeout=5)
        assert isinstance(result, BBSError) and "read timeout=0.5)" in str(result)  # the client's timeout
        pinged = in_thread(lambda: client.ping(timeout=0.3), timeout=5)
        assert isinstance(pinged, BBSError) and "read timeout=0.3)" in str(pinged)  # the ping's own
        bbs_double.resume()
        client.open_events().close()
        assert client.ping() is True
    finally:
        client.close()


def test_an_idle_stream_outlives_the_request_timeout(bbs_double: BBSDouble, bbs_pki) -> None:
    """A real BBS sends nothing on an idle stream (no heartbeats): silence longer than the request
    timeout is not a failure, and the next event arrives on the same stream."""
    client = BBSClient(bbs_double.url, bbs_pki.client, timeout=0.3)
    stream = client.open_events()
    try:
        iterator = iter(stream)
        box: list = []
        done = threading.Event()

        def read() -> None:
            try:
                box.append(next(iterator))
            except BaseException as error:  # noqa: BLE001 - handed to the test
                box.append(error)
            done.set()

        threading.Thread(target=read, daemon=True).start()
        assert not done.wait(1.5), f"the idle stream ended: {box}"  # five request timeouts of silence
        bbs_double.desire_lrp("pg-1")
        assert done.wait(5) and isinstance(box[0], Event) and box[0].type == "desired_lrp_created"
        assert bbs_double.subscriber_count() == 1
    finally:
        stream.close()
        client.close()
