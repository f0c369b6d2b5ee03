"""Copilot's service discovery (`*.apps.internal`): service-discovery-controller's lookup API as
bosh-dns-adapter calls it (exact bodies, mutual TLS, the not-warm answer), the BBS slice's
internal names, and the listener's robustness (handshakes off the accept thread, timeouts, limits)."""

from __future__ import annotations

import dataclasses
import http.client
import json
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from copilot import service_discovery
from copilot.config import ConfigError, parse
from copilot.model import Instance, InternalRoute, PortMapping, ProcessRoutes
from copilot.service_discovery import SERVER_NAME, AddressTable, ServiceDiscoveryServer
from copilot.settings import MutualTLSServerConfig
from copilot.views import Views
from devtools.certs import CertPair, make_ca
from devtools.waiting import wait_until

APP = "app.apps.internal"


@dataclass
class SdPKI:
    ca: Path  # cf_app_sd_ca
    server: CertPair  # cf_app_sd_server_tls
    client: CertPair  # cf_app_sd_client_tls
    stranger: CertPair  # a client certificate another CA signed


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> SdPKI:
    root = tmp_path_factory.mktemp("sd-pki")
    ca = make_ca(root, "cf_app_sd_ca")
    other = make_ca(root / "other", "other-ca")
    return SdPKI(
        ca=ca.cert_path,
        server=ca.issue("cf_app_sd_server_tls", root, dns_names=[SERVER_NAME], client=False),
        client=ca.issue("cf_app_sd_client_tls", root, dns_names=[SERVER_NAME], server=False),
        stranger=other.issue("stranger", root / "other", server=False),
    )


class FakeTable:
    """What the BBS slice's internal_addresses() answers, set by the test."""

    def __init__(self) -> None:
        self.names: dict[str, list[str]] = {}
        self.builds = 0

    def internal_addresses(self) -> dict[str, list[str]]:
        self.builds += 1
        return {name: list(ips) for name, ips in self.names.items()}


@dataclass
class Served:
    server: ServiceDiscoveryServer
    table: FakeTable
    warm: threading.Event

    @property
    def port(self) -> int:
        return self.server.port

    def changed(self, names: dict[str, list[str]]) -> None:
        """A source changes the table and reports it; returns once the answers have it."""
        self.table.names = names
        self.server.invalidate()
        wait_until(lambda: self.server.addresses.names() == names, message="the change in the snapshot")


def serve(pki: SdPKI, **options) -> Served:
    """A server whose table is rebuilt only when a change is reported (max_age: an hour)."""
    table, warm = FakeTable(), threading.Event()
    warm.set()
    addresses = AddressTable(table, warm.is_set, max_age=3600)
    limits = dataclasses.replace(service_discovery.LIMITS, **options)
    listen = MutualTLSServerConfig(listen="127.0.0.1:0", cert=pki.server.cert_path, key=pki.server.key_path, client_ca=pki.ca)
    server = ServiceDiscoveryServer(addresses, listen, limits)
    server.start()
    wait_until(lambda: addresses.warm, message="the first snapshot")
    return Served(server, table, warm)


@pytest.fixture
def served(pki: SdPKI) -> Iterator[Served]:
    s = serve(pki)
    try:
        yield s
    finally:
        s.server.stop()


def client_context(pki: SdPKI, cert: CertPair | None = None, *, trust: Path | None = None) -> ssl.SSLContext:
    """bosh-dns-adapter's TLS: its client certificate, the server's CA, the server name checked, TLS >= 1.2."""
    context = ssl.create_default_context(cafile=str(trust or pki.ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    chosen = pki.client if cert is None else cert
    context.load_cert_chain(chosen.cert_path, chosen.key_path)
    return context


def connect(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        return context.wrap_socket(sock, server_hostname=SERVER_NAME)
    except BaseException:
        sock.close()
        raise


def request(tls: ssl.SSLSocket, path: str, method: str = "GET") -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request as Go's http client (bosh-dns-adapter's) writes it, on an open connection."""
    tls.sendall(
        f"{method} {path} HTTP/1.1\r\nHost: {SERVER_NAME}:8054\r\nUser-Agent: Go-http-client/1.1\r\n"
        "Accept-Encoding: gzip\r\n\r\n".encode()
    )
    response = http.client.HTTPResponse(tls, method=method)  # type: ignore[arg-type]
    response.begin()
    return response.status, response.headers, response.read()


def get(served: Served | int, path: str, pki: SdPKI, method: str = "GET") -> tuple[int, http.client.HTTPMessage, bytes]:
    port = served if isinstance(served, int) else served.port
    with connect(port, client_context(pki)) as tls:
        return request(tls, path, method)


def host(ip: str) -> str:
    return (f'{{"ip_address":"{ip}","last_check_in":"","port":0,"revision":"","service":"",'
            '"service_repo_name":"","tags":{}}')


def body(*ips: str) -> bytes:
    return ('{"hosts":[' + ",".join(host(ip) for ip in ips) + '],"env":"","service":""}').encode()


# ---------------------------------------------------------------------------------------------- answers


def test_a_name_answers_the_controllers_body_byte_for_byte(served: Served, pki: SdPKI) -> None:
    served.changed({APP: ["10.255.12.7", "10.255.12.9"], f"0.{APP}": ["10.255.12.7"]})
    status, headers, content = get(served, f"/v1/registration/{APP}.", pki)
    assert status == 200
    assert content == body("10.255.12.7", "10.255.12.9")
    assert content == (b'{"hosts":[{"ip_address":"10.255.12.7","last_check_in":"","port":0,"revision":"","service":"",'
                       b'"service_repo_name":"","tags":{}},{"ip_address":"10.255.12.9","last_check_in":"","port":0,'
                       b'"revision":"","service":"","service_repo_name":"","tags":{}}],"env":"","service":""}')
    assert headers["Content-Type"] == "text/plain; charset=utf-8"  # what Go sniffs the controller's JSON as
    assert headers["Content-Length"] == str(len(content))


def test_index_names_case_and_the_trailing_dot(served: Served, pki: SdPKI) -> None:
    served.changed({APP: ["10.0.0.1", "10.0.0.2"], f"0.{APP}": ["10.0.0.1"], f"1.{APP}": ["10.0.0.2"]})
    for name in (f"1.{APP}.", f"1.{APP}", "1.App.Apps.INTERNAL.", "1.APP.APPS.INTERNAL"):
        assert get(served, f"/v1/registration/{name}", pki)[2] == body("10.0.0.2"), name
    for name in (APP, "APP.apps.internal."):
        assert get(served, f"/v1/registration/{name}", pki)[2] == body("10.0.0.1", "10.0.0.2"), name
    assert get(served, f"/v1/registration/{APP}..", pki)[2] == body()  # one trailing dot only, as the controller


def test_an_unknown_name_is_200_with_no_hosts(served: Served, pki: SdPKI) -> None:
    served.changed({APP: ["10.0.0.1"]})
    for name in ("nobody.apps.internal.", "2.app.apps.internal.", "app.apps.internal.example.com."):
        status, _, content = get(served, f"/v1/registration/{name}", pki)
        assert (status, content) == (200, b'{"hosts":[],"env":"","service":""}')


def test_not_warm_is_500_until_the_first_listing_and_only_then(served: Served, pki: SdPKI) -> None:
    served.warm.clear()
    served.changed({APP: ["10.0.0.1"]})
    for name in (f"{APP}.", "nobody.apps.internal."):
        status, headers, content = get(served, f"/v1/registration/{name}", pki)
        assert (status, content) == (500, b"address table is not warm\n")
        assert headers["Content-Type"] == "text/plain; charset=utf-8"
        assert headers["X-Content-Type-Options"] == "nosniff"
    served.warm.set()  # the first BBS listing applied: warm from the next rebuild on
    served.server.invalidate()
    wait_until(lambda: served.server.addresses.warm, message="warm")
    assert get(served, f"/v1/registration/{APP}.", pki)[:3:2] == (200, body("10.0.0.1"))


def test_routes_lists_every_name_with_its_trailing_dot(served: Served, pki: SdPKI) -> None:
    served.changed({f"0.{APP}": ["10.0.0.1"], APP: ["10.0.0.1", "10.0.0.2"]})
    status, _, content = get(served, "/routes", pki)
    assert status == 200
    assert content == (b'{"addresses":[{"hostname":"0.app.apps.internal.","ips":["10.0.0.1"]},'
                       b'{"hostname":"app.apps.internal.","ips":["10.0.0.1","10.0.0.2"]}]}')


def test_any_method_and_the_last_path_segment_as_the_controller(served: Served, pki: SdPKI) -> None:
    served.changed({APP: ["10.0.0.1"]})
    assert get(served, f"/v1/registration/{APP}.", pki, method="POST")[2] == body("10.0.0.1")
    assert get(served, f"/v1/registration/extra/{APP}/", pki)[2] == body("10.0.0.1")
    assert get(served, f"/v1/registration/{APP}.?type=1", pki)[2] == body("10.0.0.1")
    assert get(served, "/v1/registration/", pki)[2] == body()  # Go's path.Base: "registration"
    status, _, content = get(served, "/v1/other", pki)
    assert (status, content) == (404, b"404 page not found\n")


def test_a_reported_change_is_in_the_answers_at_once(served: Served, pki: SdPKI) -> None:
    """(The table is rebuilt only on a reported change here: `changed` waits for that rebuild.)"""
    served.changed({APP: ["10.0.0.1", "10.0.0.2"]})
    with connect(served.port, client_context(pki)) as tls:  # one kept-alive connection, as the adapter's
        assert request(tls, f"/v1/registration/{APP}.")[2] == body("10.0.0.1", "10.0.0.2")
        served.changed({APP: ["10.0.0.2"]})
        assert request(tls, f"/v1/registration/{APP}.")[2] == body("10.0.0.2")
        served.changed({})
        assert request(tls, f"/v1/registration/{APP}.")[2] == body()


def test_lookups_between_changes_do_not_rebuild_the_table(served: Served, pki: SdPKI) -> None:
    served.changed({APP: ["10.0.0.1"]})
    with connect(served.port, client_context(pki)) as tls:
        request(tls, f"/v1/registration/{APP}.")
        builds = served.table.builds
        for _ in range(20):
            request(tls, f"/v1/registration/{APP}.")
        request(tls, "/routes")
    assert served.table.builds == builds


def test_a_table_is_rebuilt_when_older_than_its_max_age() -> None:
    table = FakeTable()
    addresses = AddressTable(table, lambda: True, max_age=0.05)
    addresses.start()
    try:
        table.names = {APP: ["10.0.0.1"]}  # no change reported
        wait_until(lambda: addresses.lookup(APP) == ["10.0.0.1"], message="a rebuild without a reported change")
    finally:
        addresses.stop()


class _HeldPauses(threading.Event):
    """An AddressTable's stop event, whose timed wait is the refresher's pause after a rebuild: it records
    each pause asked for and holds the refresher in it until the test lets it go (or the table stops)."""

    def __init__(self) -> None:
        super().__init__()
        self.pauses: list[float] = []
        self._go = threading.Semaphore(0)

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is None:
            return super().wait()
        self.pauses.append(round(timeout, 6))
        self._go.acquire()
        return self.is_set()

    def let_go(self) -> None:
        self._go.release()

    def set(self) -> None:
        super().set()
        self._go.release()


def test_rebuilds_are_paced_by_their_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    """A busy BBS reporting changes all the time: a rebuild taking 50 ms is followed by a pause of 150 ms
    (PAUSE_FACTOR times its cost; a cheap one by MIN_PAUSE_SECONDS), the changes reported meanwhile wait
    for the pause to end and are then taken together, by one rebuild. The clock is the test's: a rebuild
    costs what the table says, no time passes for real."""
    now = [1000.0]
    monkeypatch.setattr(service_discovery, "time", SimpleNamespace(monotonic=lambda: now[0]))

    class CostlyTable(FakeTable):
        cost = 0.05  # the cost of a rebuild of a large table

        def internal_addresses(self) -> dict[str, list[str]]:
            now[0] += self.cost
            return super().internal_addresses()

    table = CostlyTable()
    addresses = AddressTable(table, lambda: True, max_age=3600)
    held = addresses._stopping = _HeldPauses()  # the refresher's pause, held by the test
    addresses.start()
    try:
        wait_until(lambda: held.pauses == [0.15], message="the pause after the first rebuild")
        for count in range(100):  # changes reported during the pause
            table.names = {APP: [f"10.0.0.{count}"]}
            addresses.invalidate()
        assert (addresses.rebuilds, addresses.names()) == (1, {})  # nothing rebuilt during the pause
        table.cost = 0.001
        held.let_go()
        wait_until(lambda: len(held.pauses) == 2, message="the second rebuild")
        assert (addresses.rebuilds, addresses.names()) == (2, {APP: ["10.0.0.99"]})  # one rebuild took them all
        assert held.pauses == [0.15, service_discovery.MIN_PAUSE_SECONDS]  # 3 x 1 ms is under the minimum
    finally:
        addresses.stop()


def test_a_failing_rebuild_keeps_the_last_snapshot() -> None:
    table = FakeTable()
    addresses = AddressTable(table, lambda: True, max_age=3600)
    table.names = {APP: ["10.0.0.1"]}
    addresses.refresh()
    table.internal_addresses = lambda: 1 / 0  # type: ignore[method-assign]
    addresses.start()
    try:
        addresses.invalidate()
        assert addresses.lookup(APP) == ["10.0.0.1"]
        table.internal_addresses = lambda: {}  # type: ignore[method-assign]
        addresses.invalidate()
        wait_until(lambda: addresses.lookup(APP) == [], message="the next rebuild")
    finally:
        addresses.stop()


# ---------------------------------------------------------------------------------------------- the BBS slice


def _instance(guid: str, index: int, ip: str, *, state: str = "RUNNING", routable: bool = True, iguid: str = "") -> Instance:
    return Instance(guid, index, iguid or f"{guid}-{index}", state, routable, "10.0.16.5", ip, False,
                    (PortMapping(8080, 61000, 61001, 61002),))


def test_the_bbs_slice_names_running_routable_instances_by_container_address() -> None:
    table = Views()
    table.bbs.upsert_process("backend", ProcessRoutes(internal=(InternalRoute(APP), InternalRoute("alias.apps.internal"))))
    table.bbs.upsert_process("web", ProcessRoutes())  # no internal route: not named
    table.bbs.upsert_instance(0, _instance("backend", 0, "10.255.0.1"))
    table.bbs.upsert_instance(0, _instance("backend", 1, "10.255.0.2"))
    table.bbs.upsert_instance(0, _instance("backend", 2, "10.255.0.3", state="CLAIMED"))
    table.bbs.upsert_instance(0, _instance("backend", 3, "10.255.0.4", routable=False))
    table.bbs.upsert_instance(0, _instance("backend", 4, ""))  # no container address reported
    table.bbs.upsert_instance(0, _instance("web", 0, "10.255.0.9"))
    assert table.bbs.internal_addresses() == {
        APP: ["10.255.0.1", "10.255.0.2"],
        f"0.{APP}": ["10.255.0.1"],
        f"1.{APP}": ["10.255.0.2"],
        "alias.apps.internal": ["10.255.0.1", "10.255.0.2"],
        "0.alias.apps.internal": ["10.255.0.1"],
        "1.alias.apps.internal": ["10.255.0.2"],
    }
    table.bbs.upsert_instance(1, _instance("backend", 1, "10.255.0.7", iguid="evacuating"))  # an evacuating copy still serves
    assert table.bbs.internal_addresses()[f"1.{APP}"] == ["10.255.0.2", "10.255.0.7"]
    table.bbs.remove_process("backend")
    assert table.bbs.internal_addresses() == {}


# ---------------------------------------------------------------------------------------------- TLS


def _handshake_refused(port: int, context: ssl.SSLContext) -> bool:
    """Whether the server refuses this client: at the handshake, or (TLS 1.3, where the client's
    certificate is checked after the client finished) at the first read."""
    try:
        with connect(port, context) as tls:
            request(tls, f"/v1/registration/{APP}.")
    except (ssl.SSLError, ConnectionError, http.client.HTTPException):
        return True
    return False


def test_a_client_certificate_is_required_and_verified(served: Served, pki: SdPKI) -> None:
    no_certificate = ssl.create_default_context(cafile=str(pki.ca))
    assert _handshake_refused(served.port, no_certificate)
    assert _handshake_refused(served.port, client_context(pki, pki.stranger))
    assert not _handshake_refused(served.port, client_context(pki))


def test_the_server_certificate_names_the_controller(served: Served, pki: SdPKI) -> None:
    with connect(served.port, client_context(pki)) as tls:
        names = [value for kind, value in tls.getpeercert()["subjectAltName"] if kind == "DNS"]
    assert names == [SERVER_NAME]
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=5)
    with pytest.raises(ssl.SSLCertVerificationError):
        client_context(pki).wrap_socket(sock, server_hostname="other.service.cf.internal")
    sock.close()


def test_tls_versions_ciphers_and_curves(served: Served, pki: SdPKI) -> None:
    def context(*, version: ssl.TLSVersion | None = None, ciphers: str | None = None, curve: str | None = None):
        c = client_context(pki)
        if version is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                c.minimum_version = c.maximum_version = version
            if version < ssl.TLSVersion.TLSv1_2:
                c.set_ciphers("DEFAULT:@SECLEVEL=0")
        if ciphers is not None:
            c.set_ciphers(ciphers)
        if curve is not None:
            c.set_ecdh_curve(curve)
        return c

    assert _handshake_refused(served.port, context(version=ssl.TLSVersion.TLSv1_1))
    assert _handshake_refused(served.port, context(version=ssl.TLSVersion.TLSv1_2, ciphers="AES128-GCM-SHA256"))
    assert _handshake_refused(served.port, context(version=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-RSA-CHACHA20-POLY1305"))
    assert _handshake_refused(served.port, context(curve="X25519"))
    for ciphers in ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384"):
        assert not _handshake_refused(served.port, context(version=ssl.TLSVersion.TLSv1_2, ciphers=ciphers))
    assert not _handshake_refused(served.port, context(curve="prime256v1"))
    assert not _handshake_refused(served.port, context(version=ssl.TLSVersion.TLSv1_3))


# ---------------------------------------------------------------------------------------------- robustness


def test_silent_and_half_handshaken_connections_do_not_block_lookups(served: Served, pki: SdPKI) -> None:
    served.changed({APP: ["10.0.0.1"]})
    silent = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(5)]
    half = socket.create_connection(("127.0.0.1", served.port))
    half.sendall(b"\x16\x03\x01\x00\xff")  # a TLS record header, then nothing
    try:
        assert get(served, f"/v1/registration/{APP}.", pki)[2] == body("10.0.0.1")
    finally:
        for sock in [*silent, half]:
            sock.close()


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return True
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError):
        return True


def test_slow_and_idle_connections_are_closed_after_their_timeouts(pki: SdPKI) -> None:
    s = serve(pki, handshake_timeout=0.3, request_timeout=0.4, idle_timeout=0.6)
    try:
        silent = socket.create_connection(("127.0.0.1", s.port))
        assert _closed_by_server(silent, 3.0)  # no handshake
        trickling = connect(s.port, client_context(pki))
        for byte in b"GET /v1/registration/":
            trickling.sendall(bytes([byte]))
            if _closed_by_server(trickling, 0.05):
                break
        else:
            raise AssertionError("a request trickled in byte by byte was never cut off")
        idle = connect(s.port, client_context(pki))
        request(idle, f"/v1/registration/{APP}.")
        assert not _closed_by_server(idle, 0.3)  # kept alive for the next request ...
        assert _closed_by_server(idle, 3.0)  # ... until the idle timeout
        for sock in (silent, trickling, idle):
            sock.close()
    finally:
        s.server.stop()


def test_connections_over_the_limits_are_closed_at_once(pki: SdPKI, wait_until) -> None:
    s = serve(pki, max_connections=4, max_connections_per_peer=2)
    try:
        held = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(2)]
        wait_until(lambda: s.server.open_connections() == 2, message="two connections open")
        third = socket.create_connection(("127.0.0.1", s.port))  # a third from the same address
        assert _closed_by_server(third, 3.0)
        for sock in held:
            sock.close()
        wait_until(lambda: s.server.open_connections() == 0, message="the slots released")
        assert get(s, "/routes", pki)[0] == 200
        third.close()
    finally:
        s.server.stop()


def test_stop_closes_kept_alive_connections(pki: SdPKI, wait_until) -> None:
    s = serve(pki)
    tls = connect(s.port, client_context(pki))
    request(tls, "/routes")
    s.server.stop()
    assert _closed_by_server(tls, 3.0)
    tls.close()
    wait_until(lambda: s.server.open_connections() == 0, message="the connection's slot released")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", s.port), timeout=1).close()


def test_many_clients_at_once(served: Served, pki: SdPKI) -> None:
    served.changed({f"{i}.{APP}": [f"10.0.0.{i}"] for i in range(20)})
    answers: dict[int, bytes] = {}

    def lookup(i: int) -> None:
        answers[i] = get(served, f"/v1/registration/{i}.{APP}.", pki)[2]

    threads = [threading.Thread(target=lookup, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert answers == {i: body(f"10.0.0.{i}") for i in range(20)}


# ---------------------------------------------------------------------------------------------- config


def test_config_section_defaults_and_keys(pki: SdPKI) -> None:
    files = {"cert": str(pki.server.cert_path), "key": str(pki.server.key_path), "client_ca": str(pki.ca)}
    config = parse({"service_discovery": files})
    assert config.service_discovery is not None
    assert config.service_discovery.listen == "0.0.0.0:8054"
    assert parse({}).service_discovery is None
    with pytest.raises(ConfigError, match=r"^service_discovery\.port: unknown key"):
        parse({"service_discovery": {**files, "port": 8054}})
    with pytest.raises(ConfigError, match=r"^service_discovery\.client_ca: is required"):
        parse({"service_discovery": {"cert": files["cert"], "key": files["key"]}})


# ---------------------------------------------------------------------------------------------- in Copilot


def _copilot(bbs_url: str, bbs_pki, pki: SdPKI):
    from copilot.main import Copilot

    config = parse({
        "bbs": {"url": bbs_url, "ca_cert": str(bbs_pki.client.ca_cert), "client_cert": str(bbs_pki.client.client_cert),
                "client_key": str(bbs_pki.client.client_key), "max_backoff_seconds": 0.1},
        "mcp": {"listen": "127.0.0.1:0"},
        "health": {"listen": "127.0.0.1:0"},
        "service_discovery": {"listen": "127.0.0.1:0", "cert": str(pki.server.cert_path), "key": str(pki.server.key_path),
                              "client_ca": str(pki.ca)},
    })
    return Copilot(config)


def _names(port: int, pki: SdPKI, name: str) -> tuple[int, list[str]]:
    status, _, content = get(port, f"/v1/registration/{name}", pki)
    if status != 200:
        return status, []
    return status, [h["ip_address"] for h in json.loads(content)["hosts"]]


def test_copilot_serves_bbs_internal_routes_and_drops_a_removed_instance_at_once(bbs_double, bbs_pki, pki, wait_until):
    bbs_double.desire_lrp("backend", internal_routes=[{"hostname": "Backend.apps.internal"}], instances=2)
    bbs_double.start_instance("backend", 0, address="10.0.16.5", host_port=61000, instance_address="10.255.1.1")
    bbs_double.start_instance("backend", 1, address="10.0.16.5", host_port=61000, instance_address="10.255.1.2")
    copilot = _copilot(bbs_double.url, bbs_pki, pki)
    copilot.start()
    try:
        port = copilot.service_discovery.port
        wait_until(lambda: _names(port, pki, "backend.apps.internal.") == (200, ["10.255.1.1", "10.255.1.2"]),
                   message="the listed instances")
        assert _names(port, pki, "1.backend.apps.internal.") == (200, ["10.255.1.2"])
        bbs_double.remove_instance("backend", 1)
        wait_until(lambda: _names(port, pki, "backend.apps.internal.") == (200, ["10.255.1.1"]), timeout=2,
                   message="the removed instance's address to go")
        assert _names(port, pki, "1.backend.apps.internal.") == (200, [])
        bbs_double.remove_desired_lrp("backend")
        wait_until(lambda: _names(port, pki, "backend.apps.internal.") == (200, []), timeout=2, message="the app to go")
    finally:
        copilot.stop()


def test_copilot_is_not_warm_until_bbs_has_been_listed(bbs_double, bbs_pki, pki, wait_until):
    bbs_double.desire_lrp("backend", internal_routes=[{"hostname": "backend.apps.internal"}])
    bbs_double.start_instance("backend", 0, address="10.0.16.5", host_port=61000, instance_address="10.255.1.1")
    listing = "/v1/desired_lrp_routing_infos/list"
    bbs_double.fail_requests(listing, count=1_000_000)
    copilot = _copilot(bbs_double.url, bbs_pki, pki)
    copilot.start()
    try:
        port = copilot.service_discovery.port
        wait_until(lambda: bbs_double.requests_received(listing) >= 2, message="Copilot to fail listing BBS twice")
        status, _, content = get(port, "/v1/registration/backend.apps.internal.", pki)
        assert (status, content) == (500, b"address table is not warm\n")
        assert _names(port, pki, "nobody.apps.internal.") == (500, [])
        bbs_double.clear_failures()
        wait_until(lambda: _names(port, pki, "backend.apps.internal.") == (200, ["10.255.1.1"]), message="warm after a listing")
        bbs_double.stop()  # BBS gone later: the last known names are still answered, never 500 again
        assert _names(port, pki, "backend.apps.internal.") == (200, ["10.255.1.1"])
    finally:
        copilot.stop()


def test_a_malformed_request_is_refused_and_its_connection_closed(served: Served, pki: SdPKI) -> None:
    with connect(served.port, client_context(pki)) as tls:
        tls.sendall(b"GET /routes HTTP/9.x\r\n\r\n")
        tls.settimeout(3)
        assert b" 400 " in tls.recv(4096).split(b"\r\n", 1)[0]
        assert _closed_by_server(tls, 3.0)
    assert get(served, "/routes", pki)[0] == 200
