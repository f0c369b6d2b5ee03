"""The Diego cell double (devtools.cell): a real Envoy per instance, configured as cf-deployment v58's executor
configures a container proxy, reached the way gorouter reaches it (cell IP + Garden host port, ServerName =
instance guid, the router's client certificate). Loopback only."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from bbs_double.server import BBSDouble
from devtools.cell import Cell, CellInstance, CellPKI, PortMapping
from devtools.certs import CertPair, make_ca

GUID = "6b86b273-ff34-4fce-9b8e-instance-0"
INTERNAL = ("backend.apps.internal", "db.apps.internal")


@dataclass
class World:
    pki: CellPKI
    cell: Cell
    http: CellInstance
    echo: CellInstance
    stranger: CertPair  # a client certificate from a CA the cell does not trust
    intruder: CertPair  # from the trusted CA, but with a SAN outside verify_subject_alt_name


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("cell")
    pki = CellPKI.generate(root / "pki")
    assert pki.client_ca is not None
    stranger = make_ca(root / "other", "otherCA").issue("gorouter", root / "other", dns_names=["gorouter.service.cf.internal"])
    intruder = pki.client_ca.issue("intruder", root / "pki", dns_names=["intruder.service.cf.internal"], server=False)
    with Cell(root / "cell", pki) as cell:
        http = cell.start_instance(GUID, internal_hostnames=INTERNAL, ports=(8080, 2222))
        echo = cell.start_instance("echo-instance-0", app="tcp-echo")
        yield World(pki, cell, http, echo, stranger, intruder)


def _context(world: World, client: CertPair | None, *, tls12: bool = False, alpn: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(world.pki.root_ca_cert)  # the root only: the proxy must send the intermediate
    if client is not None:
        context.load_cert_chain(client.cert_path, client.key_path)
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def _router(world: World) -> CertPair:
    assert world.pki.router_client is not None
    return world.pki.router_client


def _connect(context: ssl.SSLContext, address: tuple[str, int], server_name: str) -> ssl.SSLSocket:
    raw = socket.create_connection(address, timeout=10)
    try:
        return context.wrap_socket(raw, server_hostname=server_name)
    except BaseException:
        raw.close()
        raise


def _get(tls: ssl.SSLSocket) -> bytes:
    tls.sendall(b"GET / HTTP/1.1\r\nHost: app.example.com\r\nConnection: close\r\n\r\n")
    answer = b""
    while chunk := tls.recv(65536):
        answer += chunk
    return answer


def _front(instance: CellInstance) -> tuple[str, int]:
    """Where gorouter dials: the cell IP and the Garden port of the TLS proxy."""
    return instance.cell_ip, instance.host_tls_proxy_port


def test_tls13_handshake_presents_the_instance_identity(world: World) -> None:
    with _connect(_context(world, _router(world)), _front(world.http), GUID) as tls:
        assert tls.version() == "TLSv1.3"
        peer = tls.getpeercert()
        answer = _get(tls)
    # check_hostname held: the DNS SAN names the guid, and the chain (leaf + intermediate) verified to the root.
    assert ("DNS", GUID) in peer["subjectAltName"]
    assert ("IP Address", world.http.container_ip) in peer["subjectAltName"]
    assert dict(item for rdn in peer["subject"] for item in rdn)["commonName"] == GUID
    assert answer.startswith(b"HTTP/1.1 200")
    assert answer.endswith(f"{GUID}\n".encode())


def test_tls12_negotiates_an_ecdhe_rsa_gcm_suite(world: World) -> None:
    with _connect(_context(world, _router(world), tls12=True), _front(world.http), GUID) as tls:
        assert tls.version() == "TLSv1.2"
        cipher = tls.cipher()
        assert cipher is not None
        assert cipher[0] in ("ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-AES128-GCM-SHA256")
        assert _get(tls).endswith(f"{GUID}\n".encode())


def test_alpn_offers_h2_and_http11(world: World) -> None:
    with _connect(_context(world, _router(world), alpn=["h2", "http/1.1"]), _front(world.http), GUID) as tls:
        assert tls.selected_alpn_protocol() == "h2"
    with _connect(_context(world, _router(world), alpn=["http/1.1"]), _front(world.http), GUID) as tls:
        assert tls.selected_alpn_protocol() == "http/1.1"


def _refusal(world: World, client: CertPair | None, *, tls12: bool = False) -> str:
    """The TLS alert the proxy refuses the router with (the reason OpenSSL reports), before any HTTP answer.
    In TLS 1.3 the client finishes first, so the alert may come with the first read instead of the handshake."""
    try:
        with _connect(_context(world, client, tls12=tls12), _front(world.http), GUID) as tls:
            answer = _get(tls)
    except ssl.SSLError as error:
        return str(error.reason)
    raise AssertionError(f"not refused; answer {answer[:80]!r}")


@pytest.mark.parametrize(
    ("tls12", "alert"),
    [(False, "TLSV13_ALERT_CERTIFICATE_REQUIRED"), (True, "SSLV3_ALERT_HANDSHAKE_FAILURE")],
    ids=["tls13", "tls12"],
)
def test_no_client_certificate_is_refused(world: World, tls12: bool, alert: str) -> None:
    assert _refusal(world, None, tls12=tls12) == alert  # alerts 116 / 40, as with Diego's Envoy


def test_client_certificate_from_another_ca_is_refused(world: World) -> None:
    assert _refusal(world, world.stranger) == "TLSV1_ALERT_UNKNOWN_CA"


def test_client_certificate_with_a_san_not_allowed_is_refused(world: World) -> None:
    assert _refusal(world, world.intruder) == "SSLV3_ALERT_CERTIFICATE_UNKNOWN"  # alert 46


def test_tcp_router_client_certificate_is_accepted(world: World) -> None:
    assert world.pki.tcp_router_client is not None
    with _connect(_context(world, world.pki.tcp_router_client), _front(world.echo), "echo-instance-0") as tls:
        tls.sendall(b"ping\n")
        assert tls.recv(100) == b"echo-instance-0:ping\n"


def test_c2c_listener_needs_no_client_certificate_and_names_internal_routes(world: World) -> None:
    context = _context(world, None, alpn=["h2", "http/1.1"])
    with _connect(context, (world.http.container_ip, 61443), GUID) as tls:
        peer = tls.getpeercert()
        assert tls.selected_alpn_protocol() is None
        answer = _get(tls)
    assert sorted(peer["subjectAltName"]) == sorted(("DNS", name) for name in (GUID, *INTERNAL))
    assert answer.endswith(f"{GUID}\n".encode())


def test_net_info_has_the_v58_shape(world: World, bbs_double: BBSDouble) -> None:
    instance = world.http
    info = instance.net_info()
    assert info == {
        "instance_guid": GUID,
        "address": "127.0.0.1",
        "instance_address": instance.container_ip,
        "preferred_address": "HOST",
        "container_port": 8080,
        "host_port": 0,
        "container_tls_proxy_port": 61001,
        "host_tls_proxy_port": instance.host_tls_proxy_port,
        "extra_ports": [(2222, 0)],
    }
    assert instance.host_tls_proxy_port not in (0, 61001)
    assert instance.port_mappings == (
        PortMapping(8080, 0, 61001, instance.host_tls_proxy_port),
        PortMapping(8080, 0, 61443, 0),
        PortMapping(2222, 0, 61002, instance.mapping(2222).host_tls_proxy_port),
    )
    assert instance.admin_port == 61003
    bbs_double.start_instance("process-guid", 0, **info)
    (actual,) = bbs_double.actual_lrps()
    assert actual.actual_lrp_instance_key.instance_guid == GUID
    assert actual.actual_lrp_net_info.ports[0].host_tls_proxy_port == instance.host_tls_proxy_port


def test_instances_get_their_own_container_ip_and_the_executors_files(world: World) -> None:
    ips = {world.http.container_ip, world.echo.container_ip}
    assert len(ips) == 2
    assert all(ip.startswith("127.1.") for ip in ips)
    config = world.http.config_dir
    bootstrap = yaml.safe_load((config / "envoy.yaml").read_text())
    assert bootstrap["node"] == {"id": f"sidecar~{world.http.container_ip}~{GUID}~x", "cluster": "proxy-cluster"}
    names = [listener["name"] for listener in bootstrap["static_resources"]["listeners"]]
    assert names == ["listener-8080-61001", "listener-8080-61443", "listener-2222-61002"]
    validation = yaml.safe_load((config / "sds-id-validation-context.yaml").read_text())
    (secret,) = validation["resources"]
    assert validation["version_info"] == "0"
    assert secret["name"] == "id-validation-context"
    assert [m["exact"] for m in secret["validation_context"]["match_subject_alt_names"]] == [
        "gorouter.service.cf.internal",
        "ssh-proxy.service.cf.internal",
        "tcp-router.service.cf.internal",
    ]
    identity = yaml.safe_load((config / "sds-id-cert-and-key.yaml").read_text())["resources"][0]
    chain = x509.load_pem_x509_certificates(identity["tls_certificate"]["certificate_chain"]["inline_string"].encode())
    assert [c.subject.rfc4514_string() for c in chain] == [f"CN={GUID}", "CN=instanceIdentityCA"]
    assert "BEGIN RSA PRIVATE KEY" in identity["tls_certificate"]["private_key"]["inline_string"]


def _closed(address: tuple[str, int]) -> Callable[[], bool]:
    def check() -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(address) != 0

    return check


def test_unproxied_mapping_without_client_certificates_and_graceful_stop(
    world: World, tmp_path: Path, wait_until: Callable[..., None]
) -> None:
    with Cell(
        tmp_path,
        world.pki,
        require_and_verify_client_certificates=False,
        enable_unproxied_port_mappings=True,
        enable_http2=False,
    ) as cell:
        instance = cell.start_instance("open-instance-0", app="h2c")
        assert instance.net_info()["host_port"] not in (0, 8080)
        with _connect(_context(world, None, alpn=["h2", "http/1.1"]), _front(instance), "open-instance-0") as tls:
            assert tls.selected_alpn_protocol() is None
            # The h2c app answers a prior-knowledge HTTP/2 preface with its SETTINGS frame (type 4).
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
            assert tls.recv(9)[3] == 4
        with socket.create_connection((instance.cell_ip, instance.host_port), timeout=10) as plain:
            plain.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
            assert plain.recv(9)[3] == 4
        front = _front(instance)
        instance.stop(graceful=True)
        assert not instance.envoy.running
        wait_until(_closed(front), timeout=10, message="Garden's host port to close")
        wait_until(_closed((instance.container_ip, 61001)), timeout=10, message="the proxy port to close")
        assert cell.instances == {}
