"""Tests for the BBS test double: mutual TLS, the protobuf endpoints and the hand-framed event stream."""

from __future__ import annotations

import base64
import json
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from bbs_double.server import EVENTS_PATH, BBSDouble
from copilot.protos import bbs_pb2 as bbs
from devtools.certs import CA, CertPair, make_ca
from devtools.waiting import wait_until

pytestmark = pytest.mark.timeout(30)

TIMEOUT = 5.0
CHUNK_HEADER = re.compile(rb"([0-9a-f]+);\r\n")


@dataclass
class PKI:
    ca: CA
    server: CertPair
    client: CertPair
    stranger: CertPair  # a client certificate from a CA the double does not trust


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    root = tmp_path_factory.mktemp("pki")
    ca = make_ca(root, "bbs-ca")
    other = make_ca(root / "other", "other-ca")
    return PKI(
        ca=ca,
        server=ca.issue("bbs", root, dns_names=["localhost"], ip_addresses=["127.0.0.1"], client=False),
        client=ca.issue("copilot", root, server=False),
        stranger=other.issue("stranger", root / "other", server=False),
    )


@pytest.fixture
def double(pki: PKI) -> Iterator[BBSDouble]:
    bbs_double = BBSDouble(ca_cert=pki.ca.cert_path, server_cert=pki.server.cert_path, server_key=pki.server.key_path)
    bbs_double.start()
    try:
        yield bbs_double
    finally:
        bbs_double.stop()


def post(double: BBSDouble, pki: PKI, path: str, body: bytes = b"", **kwargs: object) -> requests.Response:
    return requests.post(
        double.url + path,
        data=body,
        headers={"Content-Type": "application/x-protobuf"},
        cert=(str(pki.client.cert_path), str(pki.client.key_path)),
        verify=str(pki.ca.cert_path),
        timeout=TIMEOUT,
        **kwargs,  # type: ignore[arg-type]
    )


def client_context(pki: PKI) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca.cert_path))
    context.load_cert_chain(str(pki.client.cert_path), str(pki.client.key_path))
    return context


class RawStream:
    """An event stream read off a TLS socket byte by byte, so the chunk framing can be asserted."""

    def __init__(self, double: BBSDouble, pki: PKI, body: bytes = b"", context: ssl.SSLContext | None = None) -> None:
        raw = socket.create_connection(("127.0.0.1", double.port), timeout=TIMEOUT)
        self.sock = (context or client_context(pki)).wrap_socket(raw, server_hostname="127.0.0.1")
        self.buffer = b""
        request = (
            f"POST {EVENTS_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{double.port}\r\n"
            f"Content-Type: application/x-protobuf\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.sock.sendall(request)
        head = self._read_until(b"\r\n\r\n").decode()
        self.status_line, *header_lines = head.split("\r\n")
        self.headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in header_lines if line)}

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("stream closed")
        self.buffer += data

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self._fill()
        data, _, self.buffer = self.buffer.partition(marker)
        return data

    def _read_exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def read_chunk(self) -> bytes:
        """One chunk's payload, asserting the `%x;\\r\\n ... \\r\\n` framing; b"" for the last chunk."""
        while b"\r\n" not in self.buffer:
            self._fill()
        if self.buffer.startswith(b"0\r\n"):
            assert self._read_exact(5) == b"0\r\n\r\n"
            return b""
        match = CHUNK_HEADER.match(self.buffer)
        assert match, f"bad chunk header: {self.buffer[:20]!r}"
        self.buffer = self.buffer[match.end() :]
        payload = self._read_exact(int(match.group(1), 16))
        assert self._read_exact(2) == b"\r\n"
        return payload

    def read_event(self) -> tuple[int, str, bytes]:
        """(id, event type, decoded data) of the next chunk, which must hold exactly one SSE event."""
        payload = self.read_chunk()
        match = re.fullmatch(rb"id: (\d+)\nevent: ([a-z_]+)\ndata: ([A-Za-z0-9+/=]*)\n\n", payload)
        assert match, f"bad SSE event: {payload!r}"
        return int(match.group(1)), match.group(2).decode(), base64.standard_b64decode(match.group(3))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def stream(double: BBSDouble, pki: PKI) -> Iterator[RawStream]:
    raw_stream = RawStream(double, pki)
    try:
        yield raw_stream
    finally:
        raw_stream.close()


def http_route(host: str, port: int = 8080) -> dict[str, object]:
    return {"hostnames": [host], "port": port, "protocol": "http1"}


# ---------------------------------------------------------------------- TLS


def test_ping(double: BBSDouble, pki: PKI) -> None:
    response = post(double, pki, "/v1/ping")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/x-protobuf"
    assert bbs.PingResponse.FromString(response.content).available is True
    assert double.url == f"https://127.0.0.1:{double.port}" and double.port > 0


def test_client_without_certificate_is_refused(double: BBSDouble, pki: PKI) -> None:
    with pytest.raises(requests.exceptions.SSLError):
        requests.post(double.url + "/v1/ping", verify=str(pki.ca.cert_path), timeout=TIMEOUT)


def test_client_certificate_from_another_ca_is_refused(double: BBSDouble, pki: PKI) -> None:
    with pytest.raises(requests.exceptions.SSLError):
        requests.post(
            double.url + "/v1/ping",
            cert=(str(pki.stranger.cert_path), str(pki.stranger.key_path)),
            verify=str(pki.ca.cert_path),
            timeout=TIMEOUT,
        )


def test_tls_1_2_negotiates_an_ecdhe_rsa_gcm_suite(double: BBSDouble, pki: PKI) -> None:
    context = client_context(pki)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection(("127.0.0.1", double.port), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() == "TLSv1.2"
        assert "ECDHE-RSA-AES" in tls.cipher()[0]


def test_certificates_carry_the_expected_extensions(pki: PKI) -> None:
    ca = x509.load_pem_x509_certificate(pki.ca.cert_path.read_bytes())
    server = x509.load_pem_x509_certificate(pki.server.cert_path.read_bytes())
    client = x509.load_pem_x509_certificate(pki.client.cert_path.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert list(server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert list(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert server.public_key().key_size == 2048  # type: ignore[union-attr]
    assert server.issuer == ca.subject


# ---------------------------------------------------------------------- protobuf endpoints


def test_unknown_path_is_404(double: BBSDouble, pki: PKI) -> None:
    assert post(double, pki, "/v1/no_such_thing").status_code == 404


def test_garbage_request_body_is_an_invalid_protobuf_error(double: BBSDouble, pki: PKI) -> None:
    garbage = b"\xff\xff\xff\xff\xff"
    for path, response_type in [
        ("/v1/actual_lrps/list", bbs.ActualLRPsResponse),
        ("/v1/actual_lrps/list_by_process_guids", bbs.ActualLRPsResponse),
        ("/v1/desired_lrps/list.r3", bbs.DesiredLRPsResponse),
        ("/v1/desired_lrp_routing_infos/list", bbs.DesiredLRPsResponse),
    ]:
        response = post(double, pki, path, garbage)
        assert response.status_code == 200, path
        error = response_type.FromString(response.content).error
        assert error.type == bbs.Error.InvalidProtobufMessage, path
        assert error.message


def test_garbage_events_request_is_http_500(double: BBSDouble, pki: PKI) -> None:
    response = post(double, pki, EVENTS_PATH, b"\xff\xff\xff\xff\xff")
    assert response.status_code == 500
    assert bbs.Error.FromString(response.content).type == bbs.Error.InvalidProtobufMessage


def test_list_endpoints_return_what_was_desired_and_started(double: BBSDouble, pki: PKI) -> None:
    double.desire_lrp("web", http_routes=[http_route("web.example.com")], instances=2)
    double.desire_lrp(
        "worker",
        tcp_routes=[{"router_group_guid": "rg", "external_port": 1024, "container_port": 8080}],
        internal_routes=[{"hostname": "worker.apps.internal"}],
        domain="other",
    )
    web0 = double.start_instance("web", 0, host_port=61000, extra_ports=[(2222, 61002)], instance_address="10.0.0.5")
    double.start_instance("web", 1, host_port=61001, cell_id="cell-2", routable=False)
    double.start_instance("worker", 0, host_port=61010, instance_guid="fixed-guid")

    actual = bbs.ActualLRPsResponse.FromString(post(double, pki, "/v1/actual_lrps/list", b"").content)
    assert not actual.HasField("error")
    assert [(a.actual_lrp_key.process_guid, a.actual_lrp_key.index) for a in actual.actual_lrps] == [
        ("web", 0),
        ("web", 1),
        ("worker", 0),
    ]
    first = actual.actual_lrps[0]
    assert first.state == "RUNNING" and first.presence == bbs.ActualLRP.ORDINARY
    assert first.actual_lrp_instance_key.instance_guid == web0
    assert first.actual_lrp_instance_key.cell_id == "cell-1"
    assert first.actual_lrp_key.domain == "cf-apps"
    assert first.actual_lrp_net_info.address == "127.0.0.1"
    assert first.actual_lrp_net_info.instance_address == "10.0.0.5"
    assert first.actual_lrp_net_info.preferred_address == bbs.ActualLRPNetInfo.HOST
    assert [(p.container_port, p.host_port) for p in first.actual_lrp_net_info.ports] == [(8080, 61000), (2222, 61002)]
    assert first.HasField("routable") and first.routable is True  # a real BBS sets it explicitly
    assert actual.actual_lrps[1].HasField("routable") and actual.actual_lrps[1].routable is False
    assert actual.actual_lrps[2].actual_lrp_key.domain == "other"
    assert actual.actual_lrps[2].actual_lrp_instance_key.instance_guid == "fixed-guid"
    assert first.since > 0 and first.modification_tag.epoch

    def listed(request: bbs.ActualLRPsRequest) -> list[tuple[str, int]]:
        response = bbs.ActualLRPsResponse.FromString(
            post(double, pki, "/v1/actual_lrps/list", request.SerializeToString()).content
        )
        return [(a.actual_lrp_key.process_guid, a.actual_lrp_key.index) for a in response.actual_lrps]

    assert listed(bbs.ActualLRPsRequest(process_guid="web")) == [("web", 0), ("web", 1)]
    assert listed(bbs.ActualLRPsRequest(process_guid="web", index=1)) == [("web", 1)]
    assert listed(bbs.ActualLRPsRequest(index=0)) == [("web", 0), ("worker", 0)]
    assert listed(bbs.ActualLRPsRequest(cell_id="cell-2")) == [("web", 1)]
    assert listed(bbs.ActualLRPsRequest(domain="other")) == [("worker", 0)]

    by_guids = bbs.ActualLRPsResponse.FromString(
        post(
            double,
            pki,
            "/v1/actual_lrps/list_by_process_guids",
            bbs.ActualLRPsByProcessGuidsRequest(process_guids=["worker"]).SerializeToString(),
        ).content
    )
    assert [a.actual_lrp_key.process_guid for a in by_guids.actual_lrps] == ["worker"]

    desired = bbs.DesiredLRPsResponse.FromString(post(double, pki, "/v1/desired_lrps/list.r3", b"").content)
    assert [d.process_guid for d in desired.desired_lrps] == ["web", "worker"]
    web = desired.desired_lrps[0]
    assert web.instances == 2 and list(web.ports) == [8080] and web.domain == "cf-apps"
    assert json.loads(web.routes.routes["cf-router"]) == [http_route("web.example.com")]
    worker = desired.desired_lrps[1]
    assert json.loads(worker.routes.routes["internal-router"]) == [{"hostname": "worker.apps.internal"}]
    assert json.loads(worker.routes.routes["tcp-router"])[0]["external_port"] == 1024

    only_worker = bbs.DesiredLRPsRequest(process_guids=["worker"]).SerializeToString()
    infos = bbs.DesiredLRPsResponse.FromString(post(double, pki, "/v1/desired_lrp_routing_infos/list", only_worker).content)
    assert [d.process_guid for d in infos.desired_lrps] == ["worker"]
    assert infos.desired_lrps[0].routes == worker.routes
    assert infos.desired_lrps[0].modification_tag == worker.modification_tag


def test_raw_routes_are_stored_verbatim(double: BBSDouble, pki: PKI) -> None:
    double.desire_lrp("bad", http_routes=[http_route("x.example.com")], raw_routes={"cf-router": b"{not json"})
    (lrp,) = double.desired_lrps()
    assert lrp.routes.routes["cf-router"] == b"{not json"


def test_keep_alive_connection_serves_several_requests(double: BBSDouble, pki: PKI) -> None:
    with requests.Session() as session:
        session.cert = (str(pki.client.cert_path), str(pki.client.key_path))
        for _ in range(3):
            # verify per request: a session-level verify loses to REQUESTS_CA_BUNDLE in the environment
            response = session.post(double.url + "/v1/ping", data=b"", verify=str(pki.ca.cert_path), timeout=TIMEOUT)
            assert response.status_code == 200


# ---------------------------------------------------------------------- event stream


EVENT_MESSAGES = {
    "desired_lrp_created": bbs.DesiredLRPCreatedEvent,
    "desired_lrp_changed": bbs.DesiredLRPChangedEvent,
    "desired_lrp_removed": bbs.DesiredLRPRemovedEvent,
    "actual_lrp_instance_created": bbs.ActualLRPInstanceCreatedEvent,
    "actual_lrp_instance_changed": bbs.ActualLRPInstanceChangedEvent,
    "actual_lrp_instance_removed": bbs.ActualLRPInstanceRemovedEvent,
    "actual_lrp_crashed": bbs.ActualLRPCrashedEvent,
}


def read_events(stream: RawStream, count: int) -> list[tuple[str, Any]]:
    """The next `count` events as (type, decoded message)."""
    events = []
    for _ in range(count):
        _, event_type, data = stream.read_event()
        events.append((event_type, EVENT_MESSAGES[event_type].FromString(data)))
    return events


def assert_start_sequence(events: list[tuple[str, Any]], guid: str, *, cell_id: str = "cell-1", host_port: int) -> None:
    """created UNCLAIMED (routable false, no cell, no net info) -> CLAIMED -> RUNNING (routable true)."""
    assert [t for t, _ in events] == ["actual_lrp_instance_created", "actual_lrp_instance_changed", "actual_lrp_instance_changed"]
    created = events[0][1].actual_lrp
    assert created.state == "UNCLAIMED" and created.presence == bbs.ActualLRP.ORDINARY
    assert created.HasField("routable") and created.routable is False
    assert created.actual_lrp_instance_key.instance_guid == guid and created.actual_lrp_instance_key.cell_id == ""
    assert not created.actual_lrp_net_info.ports and not created.actual_lrp_net_info.address
    claimed, running = events[1][1], events[2][1]
    assert (claimed.before.state, claimed.after.state) == ("UNCLAIMED", "CLAIMED")
    assert claimed.actual_lrp_instance_key == bbs.ActualLRPInstanceKey(instance_guid=guid, cell_id=cell_id)
    assert not claimed.after.actual_lrp_net_info.ports and claimed.after.Routable is False
    assert (running.before.state, running.after.state) == ("CLAIMED", "RUNNING")
    assert running.actual_lrp_instance_key == bbs.ActualLRPInstanceKey(instance_guid=guid, cell_id=cell_id)
    assert running.after.HasField("Routable") and running.after.Routable is True
    assert running.after.actual_lrp_net_info.ports[0].host_port == host_port
    tags = [created.modification_tag, claimed.after.modification_tag, running.after.modification_tag]
    assert len({tag.epoch for tag in tags}) == 1 and [tag.index for tag in tags] == [0, 1, 2]


def test_event_stream_framing_and_the_start_sequence(double: BBSDouble, stream: RawStream) -> None:
    assert stream.status_line == "HTTP/1.1 200 OK"
    assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert stream.headers["transfer-encoding"] == "chunked"

    double.desire_lrp("web", http_routes=[http_route("web.example.com")])
    guid = double.start_instance("web", 0, host_port=61000)

    event_id, event_type, data = stream.read_event()
    assert (event_id, event_type) == (0, "desired_lrp_created")
    assert bbs.DesiredLRPCreatedEvent.FromString(data).desired_lrp.process_guid == "web"
    assert_start_sequence(read_events(stream, 3), guid, host_port=61000)
    (lrp,) = double.actual_lrps()
    assert lrp.state == "RUNNING" and lrp.routable is True and lrp.actual_lrp_instance_key.instance_guid == guid


def test_start_with_readiness_check_goes_routable_false_then_true(double: BBSDouble, stream: RawStream) -> None:
    double.desire_lrp("web")
    stream.read_event()
    double.start_instance("web", 0, host_port=61000, readiness_check=True)
    events = read_events(stream, 4)
    assert events[2][1].after.state == "RUNNING" and events[2][1].after.Routable is False
    ready = events[3][1]
    assert events[3][0] == "actual_lrp_instance_changed"
    assert (ready.before.state, ready.after.state) == ("RUNNING", "RUNNING")
    assert (ready.before.Routable, ready.after.Routable) == (False, True)


def test_start_unroutable_then_set_routable(double: BBSDouble, stream: RawStream) -> None:
    double.desire_lrp("web")
    stream.read_event()
    guid = double.start_instance("web", 0, host_port=61000, routable=False)
    events = read_events(stream, 3)
    assert events[2][1].after.state == "RUNNING" and events[2][1].after.Routable is False
    double.set_routable("web", 0, True)
    ((event_type, changed),) = read_events(stream, 1)
    assert event_type == "actual_lrp_instance_changed" and changed.after.Routable is True
    assert changed.actual_lrp_instance_key.instance_guid == guid
    double.set_routable("web", 0, None)  # as a BBS older than the field sends it
    ((_, changed),) = read_events(stream, 1)
    assert not changed.after.HasField("Routable")


def test_restarting_a_running_instance_with_the_same_net_info_emits_nothing(double: BBSDouble, stream: RawStream) -> None:
    double.desire_lrp("web")
    guid = double.start_instance("web", 0, host_port=61000)
    read_events(stream, 4)
    assert double.start_instance("web", 0, host_port=61000) == guid
    assert double.start_instance("web", 0, host_port=61001) == guid
    ((event_type, changed),) = read_events(stream, 1)
    assert event_type == "actual_lrp_instance_changed"
    assert changed.after.actual_lrp_net_info.ports[0].host_port == 61001


def test_crash_with_quick_restart_is_crashed_created_removed(double: BBSDouble, stream: RawStream) -> None:
    double.desire_lrp("web")
    guid = double.start_instance("web", 0, host_port=61000)
    read_events(stream, 4)
    double.crash_instance("web", 0)
    events = read_events(stream, 3)
    assert [t for t, _ in events] == ["actual_lrp_crashed", "actual_lrp_instance_created", "actual_lrp_instance_removed"]
    crashed, created, removed = (m for _, m in events)
    assert crashed.crash_count == 1 and crashed.actual_lrp_instance_key.instance_guid == guid and crashed.crash_reason
    new = created.actual_lrp
    assert new.state == "UNCLAIMED" and new.crash_count == 1 and new.routable is False
    assert new.actual_lrp_instance_key.instance_guid not in ("", guid) and not new.actual_lrp_net_info.ports
    assert removed.actual_lrp.actual_lrp_instance_key.instance_guid == guid and removed.actual_lrp.state == "RUNNING"
    (lrp,) = double.actual_lrps()
    assert lrp.state == "UNCLAIMED"

    # the cell claims and starts the new instance (its guid is kept)
    restarted = double.start_instance("web", 0, host_port=61005)
    assert restarted == new.actual_lrp_instance_key.instance_guid
    claimed, running = (m for _, m in read_events(stream, 2))
    assert (claimed.after.state, running.after.state) == ("CLAIMED", "RUNNING")
    assert running.after.crash_count == 1 and running.actual_lrp_instance_key.instance_guid == restarted


def test_crash_restart_with_a_chosen_guid_replaces_the_unclaimed_instance(double: BBSDouble, stream: RawStream) -> None:
    double.desire_lrp("web")
    double.start_instance("web", 0, host_port=61000)
    double.crash_instance("web", 0)
    events = read_events(stream, 7)
    unclaimed = events[5][1].actual_lrp.actual_lrp_instance_key.instance_guid
    assert double.start_instance("web", 0, host_port=61005, instance_guid="chosen") == "chosen"
    events = read_events(stream, 4)
    assert [t for t, _ in events] == [
        "actual_lrp_instance_created",
        "actual_lrp_instance_removed",
        "actual_lrp_instance_changed",
        "actual_lrp_instance_changed",
    ]
    assert events[0][1].actual_lrp.actual_lrp_instance_key.instance_guid == "chosen"
    assert events[1][1].actual_lrp.actual_lrp_instance_key.instance_guid == unclaimed
    assert events[3][1].after.state == "RUNNING" and events[3][1].actual_lrp_instance_key.instance_guid == "chosen"


def test_crash_beyond_the_immediate_restarts_is_crashed(double: BBSDouble, stream: RawStream) -> None:
    double.desire_lrp("web")
    double.start_instance("web", 0, host_port=61000)
    read_events(stream, 4)
    for _ in range(3):
        double.crash_instance("web", 0)
        double.start_instance("web", 0, host_port=61000)
        read_events(stream, 5)
    guid = double.actual_lrps()[0].actual_lrp_instance_key.instance_guid
    double.crash_instance("web", 0)  # the fourth crash waits for its backoff
    (_, crashed), (event_type, changed) = read_events(stream, 2)
    assert crashed.crash_count == 4 and event_type == "actual_lrp_instance_changed"
    assert (changed.before.state, changed.after.state) == ("RUNNING", "CRASHED")
    assert not changed.after.actual_lrp_net_info.ports and changed.actual_lrp_instance_key.instance_guid == guid
    with pytest.raises(ValueError):
        double.crash_instance("web", 0)  # a CRASHED instance cannot crash
    restarted = double.start_instance("web", 0, host_port=61001)
    assert restarted != guid
    assert [t for t, _ in read_events(stream, 4)] == [
        "actual_lrp_instance_created",
        "actual_lrp_instance_removed",
        "actual_lrp_instance_changed",
        "actual_lrp_instance_changed",
    ]


def test_evacuation_is_two_creates_and_later_a_remove(double: BBSDouble, stream: RawStream) -> None:
    double.desire_lrp("web")
    guid = double.start_instance("web", 0, host_port=61000)
    read_events(stream, 4)
    double.evacuate_instance("web", 0)
    (t1, evacuating), (t2, replacement) = read_events(stream, 2)
    assert (t1, t2) == ("actual_lrp_instance_created", "actual_lrp_instance_created")
    assert evacuating.actual_lrp.presence == bbs.ActualLRP.EVACUATING and evacuating.actual_lrp.state == "RUNNING"
    assert evacuating.actual_lrp.actual_lrp_instance_key.instance_guid == guid
    assert evacuating.actual_lrp.actual_lrp_net_info.ports[0].host_port == 61000
    new = replacement.actual_lrp
    assert new.presence == bbs.ActualLRP.ORDINARY and new.state == "UNCLAIMED"
    assert new.actual_lrp_instance_key.instance_guid not in ("", guid)
    assert [(lrp.presence, lrp.state) for lrp in double.actual_lrps()] == [
        (bbs.ActualLRP.ORDINARY, "UNCLAIMED"),
        (bbs.ActualLRP.EVACUATING, "RUNNING"),
    ]
    with pytest.raises(ValueError):
        double.evacuate_instance("web", 0)

    started = double.start_instance("web", 0, host_port=61006, cell_id="cell-2")
    assert started == new.actual_lrp_instance_key.instance_guid
    assert [m.after.state for _, m in read_events(stream, 2)] == ["CLAIMED", "RUNNING"]
    double.remove_instance("web", 0, evacuating=True)
    ((event_type, removed),) = read_events(stream, 1)
    assert event_type == "actual_lrp_instance_removed"
    assert (
        removed.actual_lrp.presence == bbs.ActualLRP.EVACUATING
        and removed.actual_lrp.actual_lrp_instance_key.instance_guid == guid
    )

    double.remove_desired_lrp("web")
    assert stream.read_event()[1] == "desired_lrp_removed"
    assert [lrp.actual_lrp_instance_key.instance_guid for lrp in double.actual_lrps()] == [started]


def test_a_vanished_cell_makes_its_instances_suspect_until_the_replacement_runs(double: BBSDouble, stream: RawStream) -> None:
    double.desire_lrp("web", instances=2)
    lost = double.start_instance("web", 0, host_port=61000, cell_id="cell-1")
    double.start_instance("web", 1, host_port=61001, cell_id="cell-2")
    read_events(stream, 7)
    assert double.lose_cell("cell-1") == [("web", 0)]
    (t1, suspect), (t2, replacement) = read_events(stream, 2)
    assert (t1, t2) == ("actual_lrp_instance_changed", "actual_lrp_instance_created")
    assert (suspect.before.presence, suspect.after.presence) == (bbs.ActualLRP.ORDINARY, bbs.ActualLRP.SUSPECT)
    assert suspect.after.state == "RUNNING" and suspect.actual_lrp_instance_key.instance_guid == lost
    assert replacement.actual_lrp.state == "UNCLAIMED" and replacement.actual_lrp.presence == bbs.ActualLRP.ORDINARY
    new = double.start_instance("web", 0, host_port=61002, cell_id="cell-3")
    events = read_events(stream, 3)
    assert [t for t, _ in events] == ["actual_lrp_instance_changed", "actual_lrp_instance_changed", "actual_lrp_instance_removed"]
    assert events[1][1].after.state == "RUNNING" and events[1][1].actual_lrp_instance_key.instance_guid == new
    removed = events[2][1].actual_lrp
    assert removed.presence == bbs.ActualLRP.SUSPECT and removed.actual_lrp_instance_key.instance_guid == lost
    assert [lrp.presence for lrp in double.actual_lrps()] == [bbs.ActualLRP.ORDINARY, bbs.ActualLRP.ORDINARY]


def test_retire_removes_twice(double: BBSDouble, stream: RawStream) -> None:
    double.desire_lrp("web")
    guid = double.start_instance("web", 0, host_port=61000)
    read_events(stream, 4)
    double.retire_instance("web", 0)
    events = read_events(stream, 2)
    assert [t for t, _ in events] == ["actual_lrp_instance_removed"] * 2
    assert all(m.actual_lrp.actual_lrp_instance_key.instance_guid == guid for _, m in events)
    assert double.actual_lrps() == []


def test_desired_lrp_changes(double: BBSDouble, stream: RawStream) -> None:
    double.desire_lrp("web", http_routes=[http_route("a.example.com")])
    double.desire_lrp("web", http_routes=[http_route("b.example.com")])
    assert stream.read_event()[1] == "desired_lrp_created"
    _, event_type, data = stream.read_event()
    assert event_type == "desired_lrp_changed"
    changed_desired = bbs.DesiredLRPChangedEvent.FromString(data)
    assert json.loads(changed_desired.before.routes.routes["cf-router"])[0]["hostnames"] == ["a.example.com"]
    assert json.loads(changed_desired.after.routes.routes["cf-router"])[0]["hostnames"] == ["b.example.com"]
    assert changed_desired.after.modification_tag.index == changed_desired.before.modification_tag.index + 1
    assert changed_desired.after.modification_tag.epoch == changed_desired.before.modification_tag.epoch


def test_cell_filter_passes_desired_events_and_that_cells_instances(double: BBSDouble, pki: PKI) -> None:
    stream = RawStream(double, pki, bbs.EventsByCellId(cell_id="cell-2").SerializeToString())
    try:
        double.desire_lrp("web")
        double.start_instance("web", 0, host_port=61000, cell_id="cell-1")
        double.start_instance("web", 1, host_port=61001, cell_id="cell-2")
        assert stream.read_event()[1] == "desired_lrp_created"
        # the UNCLAIMED instance has no cell yet: the first event for cell-2 is its claim
        _, event_type, data = stream.read_event()
        assert event_type == "actual_lrp_instance_changed"
        claimed = bbs.ActualLRPInstanceChangedEvent.FromString(data)
        assert claimed.actual_lrp_key.index == 1 and claimed.after.state == "CLAIMED"
        _, event_type, data = stream.read_event()
        assert bbs.ActualLRPInstanceChangedEvent.FromString(data).after.state == "RUNNING"
    finally:
        stream.close()


def test_inject_raw_event_sends_data_verbatim(double: BBSDouble, stream: RawStream) -> None:
    double.inject_raw_event("actual_lrp_instance_created", b"\x00not a protobuf")
    assert stream.read_event() == (0, "actual_lrp_instance_created", b"\x00not a protobuf")


def test_requests_can_read_the_stream_despite_the_chunk_extension(double: BBSDouble, pki: PKI) -> None:
    response = post(double, pki, EVENTS_PATH, b"", stream=True)
    try:
        assert response.status_code == 200
        double.desire_lrp("web")
        lines = response.iter_lines()
        assert [next(lines) for _ in range(3)] == [b"id: 0", b"event: desired_lrp_created", next_data_line(double)]
    finally:
        response.close()


def next_data_line(double: BBSDouble) -> bytes:
    (lrp,) = double.desired_lrps()
    return b"data: " + base64.standard_b64encode(bbs.DesiredLRPCreatedEvent(desired_lrp=lrp).SerializeToString())


def test_close_event_streams_ends_them_and_clients_can_resubscribe(double: BBSDouble, pki: PKI, stream: RawStream) -> None:
    double.close_event_streams()
    assert stream.read_chunk() == b""
    again = RawStream(double, pki)
    try:
        double.desire_lrp("web")
        assert again.read_event()[:2] == (0, "desired_lrp_created")
    finally:
        again.close()


def test_stop_ends_the_stream_and_restart_reuses_the_port(double: BBSDouble, pki: PKI, stream: RawStream) -> None:
    double.desire_lrp("web")
    assert stream.read_event()[1] == "desired_lrp_created"
    port = double.port
    double.stop()
    assert stream.read_chunk() == b""
    with pytest.raises(EOFError):
        stream.read_chunk()
    with pytest.raises(requests.exceptions.ConnectionError):
        post(double, pki, "/v1/ping")

    double.start()
    assert double.port == port
    assert bbs.PingResponse.FromString(post(double, pki, "/v1/ping").content).available
    assert [lrp.process_guid for lrp in double.desired_lrps()] == ["web"]  # state survives a restart


# ---------------------------------------------------------------------- injected failures

# Every Error.Type a real BBS sends (bbs@8a3588f); 1, 2, 10, 20, 22, 23 and 25 are retired.
REAL_ERROR_TYPES = {
    0: "UnknownError", 3: "InvalidRecord", 4: "InvalidRequest", 5: "InvalidResponse", 6: "InvalidProtobufMessage",
    7: "InvalidJSON", 8: "FailedToOpenEnvelope", 9: "InvalidStateTransition", 11: "ResourceConflict",
    12: "ResourceExists", 13: "ResourceNotFound", 14: "RouterError", 15: "ActualLRPCannotBeClaimed",
    16: "ActualLRPCannotBeStarted", 17: "ActualLRPCannotBeCrashed", 18: "ActualLRPCannotBeFailed",
    19: "ActualLRPCannotBeRemoved", 21: "ActualLRPCannotBeUnclaimed", 24: "RunningOnDifferentCell",
    26: "GUIDGeneration", 27: "Deserialize", 28: "Deadlock", 29: "Unrecoverable", 30: "LockCollision", 31: "Timeout",
}  # fmt: skip


def test_the_proto_knows_every_real_error_type() -> None:
    assert {v.number: v.name for v in bbs.Error.Type.DESCRIPTOR.values} == REAL_ERROR_TYPES


@pytest.mark.parametrize("error_type", [*REAL_ERROR_TYPES, 77])
def test_next_requests_fail_with_any_error_type(double: BBSDouble, pki: PKI, error_type: int) -> None:
    double.desire_lrp("web")
    double.fail_requests("/v1/desired_lrps/list.r3", error_type, count=2, message="boom")
    assert double.pending_failures("/v1/desired_lrps/list.r3") == 2
    for _ in range(2):
        response = post(double, pki, "/v1/desired_lrps/list.r3")
        assert response.status_code == 200
        answer = bbs.DesiredLRPsResponse.FromString(response.content)
        assert answer.HasField("error") and (answer.error.type, answer.error.message) == (error_type, "boom")
        assert not answer.desired_lrps
    assert double.pending_failures("/v1/desired_lrps/list.r3") == 0
    recovered = bbs.DesiredLRPsResponse.FromString(post(double, pki, "/v1/desired_lrps/list.r3").content)
    assert not recovered.HasField("error") and [d.process_guid for d in recovered.desired_lrps] == ["web"]


def test_failures_are_per_endpoint_or_for_any(double: BBSDouble, pki: PKI) -> None:
    double.fail_requests("/v1/actual_lrps/list", bbs.Error.Deadlock)
    assert not bbs.DesiredLRPsResponse.FromString(post(double, pki, "/v1/desired_lrp_routing_infos/list").content).HasField(
        "error"
    )
    error = bbs.ActualLRPsResponse.FromString(post(double, pki, "/v1/actual_lrps/list").content).error
    assert error.type == bbs.Error.Deadlock and "Deadlock" in error.message

    double.fail_requests(error_type=bbs.Error.Unrecoverable, count=3)
    assert bbs.PingResponse.FromString(post(double, pki, "/v1/ping").content).available is False
    assert bbs.ActualLRPsResponse.FromString(post(double, pki, "/v1/actual_lrps/list").content).error.type == 29
    events = post(double, pki, EVENTS_PATH)
    assert events.status_code == 500 and bbs.Error.FromString(events.content).type == 29
    assert post(double, pki, "/v1/no_such_thing").status_code == 404  # unknown paths stay 404, consuming nothing
    assert double.pending_failures() == 0
    assert bbs.PingResponse.FromString(post(double, pki, "/v1/ping").content).available is True

    double.fail_requests("/v1/actual_lrps/list", count=5)
    double.clear_failures()
    assert not bbs.ActualLRPsResponse.FromString(post(double, pki, "/v1/actual_lrps/list").content).HasField("error")
    with pytest.raises(ValueError):
        double.fail_requests("/v1/no_such_thing")


def test_failures_can_be_a_bare_http_status(double: BBSDouble, pki: PKI) -> None:
    double.fail_requests(EVENTS_PATH, http_status=503, message="migrations not finished", count=1)
    response = post(double, pki, EVENTS_PATH)
    assert response.status_code == 503 and response.headers["Content-Type"].startswith("text/plain")
    assert response.text == "migrations not finished\n"
    again = RawStream(double, pki)  # the next subscription works
    try:
        assert again.status_line == "HTTP/1.1 200 OK"
    finally:
        again.close()


def test_admin_api_drives_failures_and_the_new_lifecycle_calls(double: BBSDouble, pki: PKI) -> None:
    from bbs_double.admin import AdminServer

    admin = AdminServer(double)
    admin.start()
    try:

        def call(method: str, path: str, body: dict | None = None) -> requests.Response:
            return requests.request(method, f"http://127.0.0.1:{admin.port}{path}", json=body or {}, timeout=TIMEOUT)

        assert call("POST", "/desired_lrps", {"process_guid": "web", "instances": 2}).status_code == 200
        assert call("POST", "/instances", {"process_guid": "web", "index": 0, "host_port": 61000, "cell_id": "c1"}).ok
        assert call("POST", "/instances", {"process_guid": "web", "index": 1, "host_port": 61001, "readiness_check": True}).ok
        assert call("POST", "/cells/lose", {"cell_id": "c1"}).json() == {"suspect": [{"process_guid": "web", "index": 0}]}
        assert call("POST", "/instances/retire", {"process_guid": "web", "index": 1}).ok
        assert call("POST", "/instances/crash", {"process_guid": "web", "index": 1}).status_code == 400  # gone
        state = call("GET", "/state").json()["actual_lrps"]["web"]
        assert sorted((i["index"], i["presence"], i["state"]) for i in state) == [(0, 0, "UNCLAIMED"), (0, 2, "RUNNING")]

        assert call("POST", "/failures", {"path": "/v1/actual_lrps/list", "error_type": "Unrecoverable", "count": 1}).ok
        assert bbs.ActualLRPsResponse.FromString(post(double, pki, "/v1/actual_lrps/list").content).error.type == 29
        assert call("POST", "/failures", {"error_type": 77, "count": 4}).ok
        assert call("DELETE", "/failures").ok and double.pending_failures() == 0
        assert call("POST", "/failures", {"error_type": "NoSuchType"}).status_code == 400
    finally:
        admin.stop()


# ---------------------------------------------------------------------- faults: hang, restart


def _in_thread(call) -> tuple[threading.Event, list]:
    """Runs `call` in a thread; returns (done, [result or exception])."""
    done, box = threading.Event(), []

    def run() -> None:
        try:
            box.append(call())
        except BaseException as error:  # noqa: BLE001 - handed to the test
            box.append(error)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return done, box


def test_a_hung_double_accepts_but_answers_nothing_until_resumed(double: BBSDouble, pki: PKI, stream: RawStream) -> None:
    double.desire_lrp("before")
    assert stream.read_event()[1] == "desired_lrp_created"
    double.hang()
    assert double.hung
    pings = double.requests_received("/v1/ping")
    answered, box = _in_thread(lambda: post(double, pki, "/v1/ping"))
    wait_until(lambda: double.requests_received("/v1/ping") == pings + 1)  # received (TLS done), not answered
    double.desire_lrp("while-hung")  # an event for the open stream: held, as the answer is
    stream.sock.settimeout(0.5)
    with pytest.raises(TimeoutError):
        stream.read_chunk()
    assert not answered.is_set()
    stream.sock.settimeout(TIMEOUT)

    double.resume()
    assert answered.wait(TIMEOUT) and box[0].status_code == 200
    assert bbs.PingResponse.FromString(box[0].content).available is True
    event_id, event_type, data = stream.read_event()
    assert (event_id, event_type) == (1, "desired_lrp_created")
    assert bbs.DesiredLRPCreatedEvent.FromString(data).desired_lrp.process_guid == "while-hung"


def test_stopping_a_hung_double_ends_its_streams_and_held_requests(double: BBSDouble, pki: PKI, stream: RawStream) -> None:
    double.hang()
    answered, box = _in_thread(lambda: post(double, pki, "/v1/actual_lrps/list"))
    wait_until(lambda: double.requests_received("/v1/actual_lrps/list") == 1)
    double.stop()
    assert stream.read_chunk() == b""  # the stream's end
    assert answered.wait(TIMEOUT) and isinstance(box[0], requests.ConnectionError)  # cut, unanswered
    double.start()
    assert not double.hung


def test_restart_keeping_state_ends_streams_and_serves_the_same_lrps(double: BBSDouble, pki: PKI, stream: RawStream) -> None:
    double.desire_lrp("web", http_routes=[http_route("a.example.com")])
    double.start_instance("web", 0, host_port=61000, instance_guid="ig-0")
    before = bbs.ActualLRPsResponse.FromString(post(double, pki, "/v1/actual_lrps/list").content)
    port = double.port
    double.restart()
    while stream.read_chunk():  # the events so far, then the stream's end
        pass
    assert double.port == port
    after = bbs.ActualLRPsResponse.FromString(post(double, pki, "/v1/actual_lrps/list").content)
    assert after == before and len(after.actual_lrps) == 1


def test_restart_empty_loses_every_lrp_and_says_nothing_about_it(double: BBSDouble, pki: PKI) -> None:
    double.desire_lrp("web", http_routes=[http_route("a.example.com")])
    double.start_instance("web", 0, host_port=61000)
    double.fail_requests("/v1/desired_lrps/list.r3", http_status=503, count=1)
    first = RawStream(double, pki)
    try:
        double.restart(keep_state=False)
        assert first.read_chunk() == b""  # the old stream ends with nothing about the lost records
    finally:
        first.close()
    again = RawStream(double, pki)
    try:
        assert bbs.ActualLRPsResponse.FromString(post(double, pki, "/v1/actual_lrps/list").content).actual_lrps == []
        listing = post(double, pki, "/v1/desired_lrp_routing_infos/list")
        assert bbs.DesiredLRPsResponse.FromString(listing.content).desired_lrps == []
        assert post(double, pki, "/v1/desired_lrps/list.r3").status_code == 503  # injected failures survive
        again.sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            again.read_chunk()  # no event on the new stream either
    finally:
        again.close()
    with pytest.raises(requests.exceptions.SSLError):  # still mutual TLS only
        requests.post(double.url + "/v1/ping", verify=str(pki.ca.cert_path), timeout=TIMEOUT)


def test_requests_received_counts_per_path(double: BBSDouble, pki: PKI) -> None:
    start = double.requests_received()
    post(double, pki, "/v1/ping")
    post(double, pki, "/v1/ping")
    post(double, pki, "/v1/actual_lrps/list")
    assert double.requests_received("/v1/ping") == 2 and double.requests_received() == start + 3


def test_admin_client_drives_the_faults(double: BBSDouble, pki: PKI) -> None:
    from bbs_double.admin import AdminClient, AdminError, AdminServer

    admin = AdminServer(double)
    admin.start()
    try:
        client = AdminClient(f"http://127.0.0.1:{admin.port}", timeout=TIMEOUT)
        double.desire_lrp("web")
        client.hang()
        assert client.state()["hung"] is True and double.hung
        client.resume()
        assert client.state()["hung"] is False
        stream = RawStream(double, pki)
        try:
            wait_until(lambda: client.state()["subscribers"] == 1)
            client.close_event_streams()
            assert stream.read_chunk() == b""
        finally:
            stream.close()
        client.restart()
        assert list(client.state()["desired_lrps"]) == ["web"]
        client.restart(keep_state=False)
        assert client.state()["desired_lrps"] == {}
        assert post(double, pki, "/v1/ping").status_code == 200
        client.fail_requests("/v1/actual_lrps/list", "Deadlock", count=1)
        assert bbs.ActualLRPsResponse.FromString(post(double, pki, "/v1/actual_lrps/list").content).error.type == 28
        client.fail_requests(http_status=503, count=2)
        assert double.pending_failures() == 2
        client.clear_failures()
        assert double.pending_failures() == 0
        with pytest.raises(AdminError, match="400"):
            client.fail_requests(error_type="NoSuchType")
    finally:
        admin.stop()
