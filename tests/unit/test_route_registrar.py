"""The istio-route-registrar program (src/route_registrar) against a real Copilot registrar API,
in-process over mutual TLS with a throwaway PKI: registration, renewal, health checks (exit status
and timeout), prepend_instance_index, several Copilots, deregistration on stop and on SIGTERM, config
validation."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from copilot.model import Registration
from copilot.settings import MutualTLSServerConfig
from copilot.sources import registrar_api
from copilot.sources.registrar_api import RegistrarApi
from copilot.views import Views
from devtools.certs import CertPair, make_ca
from devtools.peers import REPO
from devtools.waiting import wait_until
from route_registrar.config import ConfigError, parse, split_uri
from route_registrar.registrar import CopilotClient, Registrar, expand_uris, registrations, run_health_check

SERVER_NAME = "copilot.service.cf.internal"


@dataclass
class PKI:
    ca: Path
    server: CertPair
    client: CertPair
    stranger: CertPair  # a client certificate from a CA Copilot does not trust


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> PKI:
    root = tmp_path_factory.mktemp("registrar-pki")
    ca = make_ca(root, "internal-ca")
    registrar_ca = make_ca(root, "registrar-ca")
    other = make_ca(root / "other", "other-ca")
    server = ca.issue("copilot", root, dns_names=[SERVER_NAME], client=False)
    client = registrar_ca.issue("istio-route-registrar", root, server=False)
    stranger = other.issue("stranger", root / "other", server=False)
    (root / "client-ca.crt").write_bytes(registrar_ca.cert_path.read_bytes())
    return PKI(ca.cert_path, server, client, stranger)


class Copilot:
    """A Views behind Copilot's real RegistrarApi on loopback."""

    def __init__(self, pki: PKI, address: str = "127.0.0.1:0", **limits: float) -> None:
        self.table = Views()
        self.changes = 0
        listen = MutualTLSServerConfig(
            listen=address,
            cert=pki.server.cert_path,
            key=pki.server.key_path,
            client_ca=pki.client.cert_path.parent / "client-ca.crt",
        )
        self.api = RegistrarApi(self.table.registrar, self._changed, listen, dataclasses.replace(registrar_api.LIMITS, **limits))
        self.api.start()
        self.port = self.api.port

    def _changed(self) -> None:
        self.changes += 1

    def registered(self) -> set[tuple[str, str, str, int, int, str, str]]:
        return {(r.host, r.path, r.address, r.port, r.tls_port, r.server_cert_domain_san, r.source)
                for r in self.table.registrar.registrations()}


@pytest.fixture
def copilots(pki) -> Iterator[list[Copilot]]:
    started = [Copilot(pki), Copilot(pki)]
    yield started
    for copilot in started:
        copilot.api.stop()


def config_data(pki: PKI, ports: list[int], routes: list[dict], *, client: CertPair | None = None, **overrides) -> dict:
    client = client or pki.client
    data = {
        "copilot": {"addresses": ["127.0.0.1"] * len(ports), "port": ports[0], "server_name": SERVER_NAME,
                    "ca_cert": str(pki.ca), "client_cert": str(client.cert_path), "client_key": str(client.key_path),
                    "request_timeout_seconds": 2},
        "address": "10.0.16.10",
        "instance_index": 2,
        "source": "api",
        "routes": routes,
    }
    data.update(overrides)
    return data


def route(name: str = "api", **overrides) -> dict:
    base = {"name": name, "uris": [f"{name}.sys.example.com"], "port": 9022, "tls_port": 0, "server_cert_domain_san": "",
            "registration_interval_seconds": 0.2, "prepend_instance_index": False}
    base.update(overrides)
    return base


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_registers_renews_and_deregisters_on_stop(pki, copilots):
    copilot = copilots[0]
    tls = route("uaa", uris=["uaa.sys.example.com", "*.login.sys.example.com", "api.sys.example.com/networking"], port=0,
                tls_port=8443, server_cert_domain_san="uaa.service.cf.internal")
    config = parse(config_data(pki, [copilot.port], [route(), tls]))
    registrar = Registrar(config)
    registrar.start()
    try:
        wait_until(lambda: len(copilot.registered()) == 4)
        assert copilot.registered() == {
            ("api.sys.example.com", "", "10.0.16.10", 9022, 0, "", "api/api"),
            ("uaa.sys.example.com", "", "10.0.16.10", 0, 8443, "uaa.service.cf.internal", "api/uaa"),
            ("*.login.sys.example.com", "", "10.0.16.10", 0, 8443, "uaa.service.cf.internal", "api/uaa"),
            ("api.sys.example.com", "/networking", "10.0.16.10", 0, 8443, "uaa.service.cf.internal", "api/uaa"),
        }
        changes = copilot.changes
        wait_until(lambda: registrar.cycles["api"] >= 3)
        assert copilot.changes > changes  # renewed every interval
    finally:
        registrar.stop()
    assert copilot.registered() == set()


def test_registrations_expire_when_not_renewed(pki, copilots):
    copilot = copilots[0]
    config = parse(config_data(pki, [copilot.port], [route(registration_interval_seconds=0.6)], ttl_intervals=2))
    assert registrations(config.routes[0], config)[0]["ttl_seconds"] == pytest.approx(1.2)
    client = CopilotClient(config.copilot)
    assert client.send("POST", registrations(config.routes[0], config)) == []
    assert len(copilot.registered()) == 1
    wait_until(lambda: not copilot.registered(), timeout=5)  # Copilot's expiry runs every second


def test_health_check_failure_deregisters_and_recovery_registers_again(pki, copilots, tmp_path):
    copilot = copilots[0]
    flag = tmp_path / "healthy"
    flag.write_text("")
    check = script(tmp_path, "check", f'test -e "{flag}" || {{ echo "not healthy"; exit 3; }}')
    config = parse(config_data(pki, [copilot.port], [
        route(health_check={"name": "api-health", "script_path": check, "timeout_seconds": 0.15}),
        route("always", port=8080),
    ]))
    registrar = Registrar(config)
    registrar.start()
    try:
        wait_until(lambda: len(copilot.registered()) == 2)
        flag.unlink()
        wait_until(lambda: {r[0] for r in copilot.registered()} == {"always.sys.example.com"}
                 and set(registrar.registered()) == {"always"})
        flag.write_text("")
        wait_until(lambda: len(copilot.registered()) == 2)
    finally:
        registrar.stop()
    assert copilot.registered() == set()


def test_health_check_timeout_kills_the_script_and_counts_as_unhealthy(tmp_path):
    from route_registrar.config import HealthCheck

    marker, child_pid = tmp_path / "child-survived", tmp_path / "child.pid"
    # A child holding the output pipe: unless the whole process group is killed, the call blocks until the
    # child has touched the marker (30 s later) and returns with the marker there.
    slow = script(tmp_path, "slow", f'(sleep 30; touch "{marker}") & echo $! > "{child_pid}"; sleep 30')
    healthy, reason = run_health_check(HealthCheck("slow", slow, 0.2))
    assert not healthy and "timed out after 0.2s" in reason
    assert not marker.exists()
    child = int(child_pid.read_text())
    wait_until(lambda: not _running(child), timeout=5, message="the script's child killed with its process group")
    assert run_health_check(HealthCheck("missing", str(tmp_path / "nope"), 1)) == (False, f"cannot run {tmp_path / 'nope'}: "
                                                                                   "No such file or directory")
    ok = script(tmp_path, "ok", "exit 0")
    assert run_health_check(HealthCheck("ok", ok, 1)) == (True, "ok")


def _running(pid: int) -> bool:
    """Whether process `pid` exists and has not exited (a zombie not yet reaped has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_prepend_instance_index(pki):
    config = parse(config_data(pki, [1], [route("proxy", uris=["proxy.sys.example.com"], prepend_instance_index=True)]))
    assert expand_uris(config.routes[0], 2) == ["2-proxy.sys.example.com"]
    assert [r["host"] for r in registrations(config.routes[0], config)] == ["2-proxy.sys.example.com"]


def test_registers_with_every_copilot_and_survives_one_being_down(pki):
    """Copilots share no state: one registrar registers with each (same port, one address per VM, as the
    copilot link gives them); a Copilot that is down does not stop the others."""
    first = Copilot(pki)
    second = Copilot(pki, f"127.0.0.2:{first.port}")
    data = config_data(pki, [first.port], [route()])
    data["copilot"]["addresses"] = ["127.0.0.1", "127.0.0.3", "127.0.0.2"]  # nothing listens on 127.0.0.3
    registrar = Registrar(parse(data))
    registrar.start()
    try:
        # The registrar records a route once its round (every Copilot, the unreachable one too) is done.
        wait_until(lambda: first.registered() and second.registered() and registrar.registered())
        assert first.registered() == second.registered()
        assert set(registrar.registered()) == {"api"}
    finally:
        registrar.stop()
        assert not first.registered() and not second.registered()
        first.api.stop()
        second.api.stop()


def test_copilot_rejects_a_client_it_does_not_trust_and_the_registrar_says_why(pki, copilots):
    copilot = copilots[0]
    config = parse(config_data(pki, [copilot.port], [route()], client=pki.stranger))
    errors = CopilotClient(config.copilot).send("POST", registrations(config.routes[0], config))
    assert len(errors) == 1 and errors[0].startswith(f"127.0.0.1:{copilot.port}: ")
    assert copilot.registered() == set()


def test_the_server_name_is_verified(pki, copilots):
    copilot = copilots[0]
    data = config_data(pki, [copilot.port], [route()])
    data["copilot"]["server_name"] = "someone-else.example.com"
    config = parse(data)
    errors = CopilotClient(config.copilot).send("POST", registrations(config.routes[0], config))
    assert len(errors) == 1 and "certificate" in errors[0].lower()


def test_copilot_validation_errors_are_reported(pki, copilots):
    copilot = copilots[0]
    config = parse(config_data(pki, [copilot.port], [route()]))
    bad = registrations(config.routes[0], config)
    bad[0]["address"] = "not-an-ip"
    errors = CopilotClient(config.copilot).send("POST", bad)
    assert len(errors) == 1 and "answered 400" in errors[0] and "address" in errors[0]


def test_sigterm_deregisters_and_exits_zero(pki, copilots, tmp_path):
    copilot = copilots[0]
    config_path = tmp_path / "registrar.json"
    config_path.write_text(json.dumps(config_data(pki, [copilot.port], [route(registration_interval_seconds=30)])))
    process = subprocess.Popen([sys.executable, "-m", "route_registrar", "--config", str(config_path)],
                               env={**os.environ, "PYTHONPATH": str(REPO / "src")}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: copilot.registered(), timeout=10)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert copilot.registered() == set()
    assert "deregistered 1 uris on stop" in output


def test_check_prints_the_registrations(pki, tmp_path):
    config_path = tmp_path / "registrar.json"
    config_path.write_text(json.dumps(config_data(pki, [9001], [route()])))
    result = subprocess.run([sys.executable, "-m", "route_registrar", "--config", str(config_path), "--check"],
                            capture_output=True, text=True, env={"PYTHONPATH": str(REPO / "src")}, timeout=30)
    assert result.returncode == 0
    assert result.stdout.splitlines() == ["api.sys.example.com -> 10.0.16.10 port 9022 every 0.2s", "config ok (1 routes)"]
    config_path.write_text("{}")
    result = subprocess.run([sys.executable, "-m", "route_registrar", "--config", str(config_path), "--check"],
                            capture_output=True, text=True, env={"PYTHONPATH": str(REPO / "src")}, timeout=30)
    assert result.returncode == 2 and "copilot: is required" in result.stderr


@pytest.mark.parametrize(("change", "message"), [
    ({"address": "api.internal"}, "address: 'api.internal' is not an IP address"),
    ({"routes": [route(port=0)]}, r"routes\[0\]: needs port or tls_port"),
    ({"routes": [route(tls_port=8443)]}, r"routes\[0\].server_cert_domain_san: is required with tls_port"),
    ({"routes": [route(uris=[])]}, r"routes\[0\].uris: must list at least one uri"),
    ({"routes": [route(uris=["bad_host!"])]}, r"routes\[0\].uris\[0\]: 'bad_host!' is not host\[/path\]"),
    ({"routes": [route(registration_interval_seconds=0)]},
     r"registration_interval_seconds: 0 is out of range \(must be greater than 0\)"),
    ({"routes": [route(health_check={"name": "h", "script_path": "/x", "timeout_seconds": 1})]},
     "timeout_seconds: must be less than registration_interval_seconds"),
    ({"routes": [route(), route()]}, "two routes are named 'api'"),
    ({"routes": [route(uris=["*.x.example.com"], prepend_instance_index=True)]}, "cannot prefix a wildcard uri"),
    ({"routes": [route(color="blue")]}, r"routes\[0\].color: unknown key"),
    ({"ttl_intervals": 1}, r"ttl_intervals: 1 is out of range \(must be greater than 0 and at least 1.5\)"),
    ({"log_level": "loud"}, "log_level: 'loud' is not one of"),
])
def test_invalid_config_names_the_key(pki, change, message):
    with pytest.raises(ConfigError, match=message):
        parse({**config_data(pki, [9001], [route()]), **change})


def test_split_uri():
    assert split_uri("API.Sys.Example.com/networking/") == ("api.sys.example.com", "/networking")
    assert split_uri("*.uaa.sys.example.com") == ("*.uaa.sys.example.com", "")
    with pytest.raises(ConfigError):
        split_uri("api.sys.example.com/x?y=1")


def test_registration_model_matches_copilot():
    """What the registrar sends is what Copilot's registrar API parses into its Registration model."""
    from copilot.sources.registrar_api import parse_registrations

    item = {"host": "api.sys.example.com", "path": "", "address": "10.0.0.1", "port": 9022, "tls_port": 9024,
            "server_cert_domain_san": "api.sys.example.com", "source": "api/api", "ttl_seconds": 30.0}
    [(registration, ttl)] = parse_registrations({"registrations": [item]})
    assert registration == Registration("api.sys.example.com", "", "10.0.0.1", 9022, 9024, "api.sys.example.com", "api/api")
    assert ttl == 30.0


# ---------------------------------------------------------------- the API's connections and bodies


def client_hello() -> bytes:
    """The first flight of a real TLS client (its ClientHello record), without a socket."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname=SERVER_NAME)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed the connection (end of stream or reset); never blocks."""
    sock.setblocking(False)
    try:
        while True:
            if not sock.recv(4096):  # an alert the server sent first is read past
                return True
    except (BlockingIOError, ssl.SSLWantReadError):
        return False
    except OSError:  # a reset, or a TLS alert on an ssl socket
        return True
    finally:
        sock.setblocking(True)


def tls_connect(pki: PKI, port: int, client: CertPair | None) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=pki.ca)
    if client is not None:
        context.load_cert_chain(client.cert_path, client.key_path)
    return context.wrap_socket(connect(port), server_hostname=SERVER_NAME)


def refused(reason: str) -> float:
    from copilot.metrics import REGISTRY

    return REGISTRY.get_sample_value("copilot_registrar_connections_refused_total", {"reason": reason}) or 0.0


def exchange(pki: PKI, port: int, head: bytes, body: bytes = b"") -> tuple[int, dict]:
    """Sends a hand-written request over mutual TLS; returns the status and the JSON answer (the server closes)."""
    with tls_connect(pki, port, pki.client) as tls:
        tls.sendall(head + body)
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


def test_idle_and_half_handshaken_connections_do_not_stop_registration(pki, wait_until):
    """Silent TCP connections and one that sent half a ClientHello are each waited for in their own thread,
    while a registrar registers and renews as usual (before the fix its first request waited behind them)."""
    copilot = Copilot(pki, handshake_timeout=60)  # long: they are still held while the registrar is served
    idle = [connect(copilot.port) for _ in range(12)]
    hello = client_hello()
    partial = connect(copilot.port)
    partial.sendall(hello[: len(hello) // 2])
    try:
        wait_until(lambda: copilot.api.open_connections() == 13, message="the idle connections accepted")
        config = parse(config_data(pki, [copilot.port], [route()]))
        client = CopilotClient(config.copilot)  # 2 s request timeout
        for _ in range(3):  # register, then renew twice
            assert client.send("POST", registrations(config.routes[0], config)) == []
        assert len(copilot.registered()) == 1 and copilot.changes == 3
        assert not any(closed_by_server(s) for s in [*idle, partial])
    finally:
        for s in [*idle, partial]:
            s.close()
        copilot.api.stop()


def test_idle_slow_and_trickling_connections_are_closed_after_their_timeout(pki, wait_until):
    copilot = Copilot(pki, handshake_timeout=0.5, request_timeout=1.0)
    handshakes, requests = refused("handshake"), refused("request_timeout")
    hello = client_hello()
    try:
        idle = [connect(copilot.port) for _ in range(3)]
        partial = connect(copilot.port)
        partial.sendall(hello[: len(hello) // 2])
        # A ClientHello a byte at a time: the handshake has one deadline, not one per read.
        trickle = connect(copilot.port)
        for byte in hello[:200]:
            if closed_by_server(trickle):
                break
            trickle.sendall(bytes([byte]))
            time.sleep(0.05)  # the trickle's pace (200 bytes would take 10 s), not a wait for the server
        assert closed_by_server(trickle)  # long before the last byte: a per-read timeout would never fire
        wait_until(lambda: all(closed_by_server(s) for s in [*idle, partial]), message="the idle connections closed")
        wait_until(lambda: refused("handshake") >= handshakes + 5, message="the handshake timeouts counted")

        # Handshaken with a good certificate, then headers that never end: closed after request_timeout.
        slow = tls_connect(pki, copilot.port, pki.client)
        slow.sendall(b"POST /v1/registrations HTTP/1.1\r\nHost: copilot\r\n")
        for _ in range(100):
            try:
                slow.sendall(b"X")
            except OSError:
                break
            if closed_by_server(slow):
                break
            time.sleep(0.05)  # a header trickled as slowloris sends it (100 bytes would take 5 s), not a wait
        assert closed_by_server(slow)  # before the trickle ends: one deadline for the whole request
        wait_until(lambda: refused("request_timeout") == requests + 1, message="the request timeout counted")
        wait_until(lambda: copilot.api.open_connections() == 0, message="every slot released")
        assert copilot.registered() == set()
    finally:
        copilot.api.stop()


def test_connections_over_the_limits_are_closed_at_once(pki, wait_until):
    """A peer holds at most max_connections_per_peer slots, everyone at most max_connections."""
    copilot = Copilot(pki, max_connections=5, max_connections_per_peer=3)
    limited = refused("limit")
    held = []
    try:
        held = [connect(copilot.port, "127.0.0.2") for _ in range(3)]
        extra = connect(copilot.port, "127.0.0.2")
        wait_until(lambda: closed_by_server(extra), message="the peer's fourth connection closed")
        assert refused("limit") == limited + 1
        config = parse(config_data(pki, [copilot.port], [route()]))
        assert CopilotClient(config.copilot).send("POST", registrations(config.routes[0], config)) == []  # another peer
        # its connection gone before the next two, or it holds a slot one of them needs (a race under load)
        wait_until(lambda: copilot.api.open_connections() == 3, message="the other peer's connection closed")
        held += [connect(copilot.port, "127.0.0.3") for _ in range(2)]
        wait_until(lambda: copilot.api.open_connections() == 5, message="five connections held")
        late = connect(copilot.port)
        wait_until(lambda: closed_by_server(late), message="a sixth connection closed")
        assert refused("limit") == limited + 2
        assert not any(closed_by_server(s) for s in held)
    finally:
        for s in held:
            s.close()
        copilot.api.stop()


def test_a_client_without_a_certificate_is_refused(pki, copilots):
    copilot = copilots[0]
    body = json.dumps({"registrations": [{"host": "evil.example.com", "address": "10.0.0.9", "port": 80}]}).encode()
    head = f"POST /v1/registrations HTTP/1.1\r\nHost: copilot\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    # The handshake fails (TLS 1.2), or the server's alert arrives on the first read (TLS 1.3).
    with pytest.raises(OSError), tls_connect(pki, copilot.port, None) as tls:
        tls.sendall(head + body)
        tls.recv(1024)
    assert copilot.registered() == set()
    assert exchange(pki, copilot.port, head, body)[0] == 200  # the same request with the certificate


def head(headers: str, method: str = "POST") -> bytes:
    return f"{method} /v1/registrations HTTP/1.1\r\nHost: copilot\r\n{headers}\r\n".encode()


BODY = json.dumps({"registrations": [{"host": "api.example.com", "address": "10.0.0.1", "port": 80}]}).encode()


@pytest.mark.parametrize(("headers", "status", "error"), [
    ("Content-Length: -1\r\n", 400, "Content-Length: '-1' is not a number of bytes"),
    ("Content-Length: +44\r\n", 400, "Content-Length: '+44' is not a number of bytes"),
    ("Content-Length: 0x2c\r\n", 400, "Content-Length: '0x2c' is not a number of bytes"),
    ("Content-Length: 44\r\nContent-Length: 44\r\n", 400, "Content-Length: is given more than once"),
    ("", 411, "Content-Length: is required"),
    ("Transfer-Encoding: chunked\r\n", 411, "Transfer-Encoding: not accepted, send the body with a Content-Length"),
    ("Transfer-Encoding: chunked\r\nContent-Length: 44\r\n", 411, "Transfer-Encoding: not accepted"),
    (f"Content-Length: {4 << 20 | 1}\r\n", 413, f"body: larger than {4 << 20} bytes"),
    (f"Content-Length: {'9' * 5000}\r\n", 413, f"body: larger than {4 << 20} bytes"),
])
def test_a_body_without_a_usable_length_is_refused_unread(pki, copilots, headers, status, error):
    copilot = copilots[0]
    answer = exchange(pki, copilot.port, head(headers), BODY)  # the body is sent (and ends) regardless
    assert answer == (status, {"error": answer[1]["error"]})
    assert answer[1]["error"].startswith(error)
    assert copilot.registered() == set()
    assert exchange(pki, copilot.port, head(f"Content-Length: {len(BODY)}\r\n"), BODY)[0] == 200
    assert len(copilot.registered()) == 1


def test_a_body_shorter_than_its_length_is_refused(pki, copilots, wait_until):
    copilot = copilots[0]
    with tls_connect(pki, copilot.port, pki.client) as tls:
        tls.sendall(head("Content-Length: 1000\r\n") + BODY)  # valid JSON, then the connection ends
    wait_until(lambda: copilot.api.open_connections() == 0, message="the request handled")
    assert copilot.registered() == set()


def test_a_body_is_read_to_its_length_and_no_further(pki, copilots):
    copilot = copilots[0]
    assert exchange(pki, copilot.port, head(f"Content-Length: {len(BODY)}\r\n"), BODY + b"garbage past the length") == (
        200, {"registered": 1})
    nested = b"[" * 100_000
    assert exchange(pki, copilot.port, head(f"Content-Length: {len(nested)}\r\n"), nested) == (
        400, {"error": "body: nested too deeply"})
