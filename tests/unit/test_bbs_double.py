"""Tests for the BBS test double: mutual TLS, the protobuf endpoints and the hand-framed event stream."""

from __future__ import annotations

import base64
import json
import re
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from bbs_double.server import EVENTS_PATH, BBSDouble
from copilot.protos import bbs_pb2 as bbs
from devtools.certs import CA, CertPair, make_ca

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
    assert not first.HasField("routable")
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


def test_event_stream_framing_and_created_events(double: BBSDouble, stream: RawStream) -> None:
    assert stream.status_line == "HTTP/1.1 200 OK"
    assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert stream.headers["transfer-encoding"] == "chunked"

    double.desire_lrp("web", http_routes=[http_route("web.example.com")])
    guid = double.start_instance("web", 0, host_port=61000)

    event_id, event_type, data = stream.read_event()
    assert (event_id, event_type) == (0, "desired_lrp_created")
    assert bbs.DesiredLRPCreatedEvent.FromString(data).desired_lrp.process_guid == "web"

    event_id, event_type, data = stream.read_event()
    assert (event_id, event_type) == (1, "actual_lrp_instance_created")
    created = bbs.ActualLRPInstanceCreatedEvent.FromString(data).actual_lrp
    assert created.state == "RUNNING"
    assert created.actual_lrp_instance_key.instance_guid == guid
    assert created.actual_lrp_net_info.ports[0].host_port == 61000


def test_event_stream_lifecycle_events(double: BBSDouble, stream: RawStream) -> None:
    double.desire_lrp("web", http_routes=[http_route("a.example.com")])
    guid = double.start_instance("web", 0, host_port=61000)
    assert [stream.read_event()[1] for _ in range(2)] == ["desired_lrp_created", "actual_lrp_instance_created"]

    double.desire_lrp("web", http_routes=[http_route("b.example.com")])
    _, event_type, data = stream.read_event()
    assert event_type == "desired_lrp_changed"
    changed_desired = bbs.DesiredLRPChangedEvent.FromString(data)
    assert json.loads(changed_desired.before.routes.routes["cf-router"])[0]["hostnames"] == ["a.example.com"]
    assert json.loads(changed_desired.after.routes.routes["cf-router"])[0]["hostnames"] == ["b.example.com"]
    assert changed_desired.after.modification_tag.index == changed_desired.before.modification_tag.index + 1
    assert changed_desired.after.modification_tag.epoch == changed_desired.before.modification_tag.epoch

    double.set_routable("web", 0, False)
    _, event_type, data = stream.read_event()
    assert event_type == "actual_lrp_instance_changed"
    changed = bbs.ActualLRPInstanceChangedEvent.FromString(data)
    assert not changed.before.HasField("Routable")
    assert changed.after.HasField("Routable") and changed.after.Routable is False
    assert changed.actual_lrp_instance_key.instance_guid == guid

    double.crash_instance("web", 0)
    _, event_type, data = stream.read_event()
    assert event_type == "actual_lrp_crashed"
    crashed = bbs.ActualLRPCrashedEvent.FromString(data)
    assert crashed.crash_count == 1 and crashed.actual_lrp_instance_key.instance_guid == guid
    _, event_type, data = stream.read_event()
    assert event_type == "actual_lrp_instance_changed"
    changed = bbs.ActualLRPInstanceChangedEvent.FromString(data)
    assert (changed.before.state, changed.after.state) == ("RUNNING", "CRASHED")
    assert changed.after.crash_count == 1 and not changed.after.actual_lrp_net_info.ports
    assert changed.actual_lrp_instance_key.instance_guid == guid

    restarted = double.start_instance("web", 0, host_port=61005)
    assert restarted != guid
    _, event_type, data = stream.read_event()
    changed = bbs.ActualLRPInstanceChangedEvent.FromString(data)
    assert event_type == "actual_lrp_instance_changed"
    assert (changed.before.state, changed.after.state) == ("CRASHED", "RUNNING")
    assert changed.actual_lrp_instance_key.instance_guid == restarted
    assert changed.after.crash_count == 1

    double.evacuate_instance("web", 0)
    _, event_type, data = stream.read_event()
    changed = bbs.ActualLRPInstanceChangedEvent.FromString(data)
    assert event_type == "actual_lrp_instance_changed"
    assert (changed.before.presence, changed.after.presence) == (bbs.ActualLRP.ORDINARY, bbs.ActualLRP.EVACUATING)
    assert changed.after.state == "RUNNING" and changed.actual_lrp_instance_key.instance_guid == restarted
    assert [lrp.presence for lrp in double.actual_lrps()] == [bbs.ActualLRP.EVACUATING]

    replacement = double.start_instance("web", 0, host_port=61006, cell_id="cell-2")
    _, event_type, data = stream.read_event()
    assert event_type == "actual_lrp_instance_created"
    assert bbs.ActualLRPInstanceCreatedEvent.FromString(data).actual_lrp.actual_lrp_instance_key.instance_guid == replacement
    assert replacement != restarted

    double.remove_instance("web", 0, evacuating=True)
    _, event_type, data = stream.read_event()
    assert event_type == "actual_lrp_instance_removed"
    removed = bbs.ActualLRPInstanceRemovedEvent.FromString(data).actual_lrp
    assert removed.presence == bbs.ActualLRP.EVACUATING and removed.actual_lrp_instance_key.instance_guid == restarted

    double.remove_desired_lrp("web")
    assert stream.read_event()[1] == "desired_lrp_removed"
    assert [lrp.actual_lrp_instance_key.instance_guid for lrp in double.actual_lrps()] == [replacement]


def test_cell_filter_passes_desired_events_and_that_cells_instances(double: BBSDouble, pki: PKI) -> None:
    stream = RawStream(double, pki, bbs.EventsByCellId(cell_id="cell-2").SerializeToString())
    try:
        double.desire_lrp("web")
        double.start_instance("web", 0, host_port=61000, cell_id="cell-1")
        double.start_instance("web", 1, host_port=61001, cell_id="cell-2")
        assert stream.read_event()[1] == "desired_lrp_created"
        _, event_type, data = stream.read_event()
        assert event_type == "actual_lrp_instance_created"
        assert bbs.ActualLRPInstanceCreatedEvent.FromString(data).actual_lrp.actual_lrp_key.index == 1
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
