"""Container-to-container service discovery (`*.apps.internal`): the lookup API bosh-dns-adapter calls.

In cf-deployment, bosh-dns-adapter on every cell answers bosh-dns for the internal domains by asking
cf-networking's service-discovery-controller, which learned internal routes from route-emitter over
NATS. The Istio tier has neither NATS nor that controller; this module is what takes the controller's
place, inside Copilot, so bosh-dns-adapter runs unchanged. It owns:

- the address table: every DesiredLRP `internal-router` hostname from the BBS, as `<hostname>` and
  `<index>.<hostname>`, mapped to the container addresses (`instance_address`) of its RUNNING, routable
  instances (RoutingTable.internal_addresses), as a snapshot lookups read without waiting. A refresher
  rebuilds it when a source reports a change (`invalidate()`), so a removed instance's address goes
  within one rebuild (milliseconds; about a tenth of a second at 100k processes), with no staleness
  window like the controller's 180 s pruning; rebuilds are paced to keep their CPU share bounded;
- the HTTPS listener, with the controller's API and mutual TLS:
  - `GET /v1/registration/<hostname>` (any method; the path's last segment; case-insensitive; the
    trailing dot optional): 200 with the controller's JSON body, byte for byte
    (`{"hosts":[{"ip_address":...,"last_check_in":"","port":0,"revision":"","service":"",`
    `"service_repo_name":"","tags":{}}],"env":"","service":""}`), `"hosts":[]` for a name nobody has;
    500 `address table is not warm` only until the first full BBS listing is applied;
  - `GET /routes`: every name (with its trailing dot) and its addresses, for debugging;
  - TLS: the configured server certificate (cf-deployment's `cf_app_sd_server_tls`, SAN
    service-discovery-controller.service.cf.internal), a client certificate required and verified
    against the configured CA (`cf_app_sd_ca`), TLS 1.2 or later; TLS 1.2 only with ECDHE-RSA-AES-GCM,
    key exchange on P-256 (of the controller's P-384/P-256, the one every TLS client offers: Python's
    ssl sets a single group).

Connections are accepted on the serving thread and handled, TLS handshake included, on their own
thread: the handshake must finish within `handshake_timeout`, each request (line and headers) arrive
within `request_timeout` (`idle_timeout` for the next one on a kept-alive connection), and at most
`max_connections` are open at once, `max_connections_per_peer` from one address, so a slow or silent
client holds only its own slot and never the listener.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import logging
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)

SERVER_NAME = "service-discovery-controller.service.cf.internal"
HANDSHAKE_TIMEOUT_SECONDS = 5.0  # bosh-dns-adapter's own TLS handshake timeout
REQUEST_TIMEOUT_SECONDS = 10.0  # bosh-dns-adapter's request timeout
IDLE_TIMEOUT_SECONDS = 60.0  # a kept-alive connection waits this long for its next request
MAX_CONNECTIONS = 1024
MAX_CONNECTIONS_PER_PEER = 64  # one bosh-dns-adapter per cell; it keeps connections alive
MAX_AGE_SECONDS = 5.0  # the address table is rebuilt at least this often, even without a change reported
MIN_PAUSE_SECONDS = 0.01  # between two rebuilds: changes in a burst are taken together
PAUSE_FACTOR = 3.0  # ... and at least 3 times as long as the last rebuild took: rebuilds use at most ~25% CPU
TLS12_CIPHERS = "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384"
ECDH_CURVE = "prime256v1"
NOT_WARM = b"address table is not warm\n"
NOT_FOUND = b"404 page not found\n"
_TEXT = "text/plain; charset=utf-8"  # what the controller's answers carry (Go sniffs its JSON as text)


def registration_body(addresses: list[str]) -> bytes:
    """The controller's answer to /v1/registration/<name>, byte for byte."""
    hosts = [
        {"ip_address": a, "last_check_in": "", "port": 0, "revision": "", "service": "", "service_repo_name": "", "tags": {}}
        for a in addresses
    ]
    return json.dumps({"hosts": hosts, "env": "", "service": ""}, separators=(",", ":")).encode()


def routes_body(names: dict[str, list[str]]) -> bytes:
    """The controller's /routes answer (names with their trailing dot), sorted by name."""
    addresses = [{"hostname": f"{name}.", "ips": ips} for name, ips in sorted(names.items())]
    return json.dumps({"addresses": addresses}, separators=(",", ":")).encode()


def lookup_key(name: str) -> str:
    """A looked-up name as the table keys it: lower case, one trailing dot dropped."""
    name = name.lower()
    return name[:-1] if name.endswith(".") else name


class InternalAddresses(Protocol):
    """Where the names come from: copilot.routing_table.RoutingTable."""

    def internal_addresses(self) -> dict[str, list[str]]: ...


@dataclass(frozen=True)
class _Snapshot:
    names: dict[str, list[str]]
    warm: bool  # built after the first full BBS listing was applied


class AddressTable:
    """The routing table's internal names, as a snapshot that lookups read without waiting.

    A refresher thread rebuilds the snapshot when a source reports a change (`invalidate()`, cheap:
    sources call it for every change) and at least every `max_age` seconds. Changes reported while it
    rebuilds are taken by the next rebuild; after each rebuild it pauses `pause_factor` times as long as
    the rebuild took (at least `min_pause`), so with a large table and a busy BBS the rebuilds (O(processes))
    take a bounded share of Copilot's CPU. A removed instance's address is gone from the answers about
    one rebuild after BBS reports it."""

    def __init__(
        self,
        table: InternalAddresses,
        warm: Callable[[], bool],
        *,
        max_age: float = MAX_AGE_SECONDS,
        min_pause: float = MIN_PAUSE_SECONDS,
        pause_factor: float = PAUSE_FACTOR,
    ) -> None:
        self._table = table
        self._warm = warm
        self._max_age = max_age
        self._min_pause = min_pause
        self._pause_factor = pause_factor
        self._snapshot = _Snapshot({}, False)
        self._changed = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.rebuilds = 0

    def start(self) -> None:
        self._changed.set()  # the first snapshot at once
        self._thread = threading.Thread(target=self._run, name="service-discovery-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._changed.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def invalidate(self) -> None:
        self._changed.set()

    def refresh(self) -> None:
        """Rebuilds the snapshot now (the refresher's work)."""
        warm = self._warm()  # read first: a listing applied after this is not in the names read next
        self._snapshot = _Snapshot(self._table.internal_addresses(), warm)
        self.rebuilds += 1

    @property
    def warm(self) -> bool:
        """False until a snapshot includes the first full BBS listing: answers would be wrong, not just empty."""
        return self._snapshot.warm

    def names(self) -> dict[str, list[str]]:
        return self._snapshot.names

    def lookup(self, name: str) -> list[str]:
        return list(self._snapshot.names.get(lookup_key(name), ()))

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._changed.wait(self._max_age)
            if self._stopping.is_set():
                return
            self._changed.clear()
            began = time.monotonic()
            try:
                self.refresh()
            except Exception:  # never fatal: the last snapshot stays, the next change or max_age retries
                log.exception("service discovery: rebuilding the address table failed")
            self._stopping.wait(max(self._min_pause, self._pause_factor * (time.monotonic() - began)))


def server_context(cert: Path, key: Path, client_ca: Path) -> ssl.SSLContext:
    """Mutual TLS as service-discovery-controller has it (the module docstring)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.set_ecdh_curve(ECDH_CURVE)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(client_ca)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class ServiceDiscoveryServer:
    """The HTTPS listener bosh-dns-adapter calls (the module docstring); `start()` serves, `stop()`
    closes the listener and every open connection."""

    def __init__(
        self,
        addresses: AddressTable,
        address: str,
        *,
        cert: Path,
        key: Path,
        client_ca: Path,
        handshake_timeout: float = HANDSHAKE_TIMEOUT_SECONDS,
        request_timeout: float = REQUEST_TIMEOUT_SECONDS,
        idle_timeout: float = IDLE_TIMEOUT_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
        max_connections_per_peer: int = MAX_CONNECTIONS_PER_PEER,
    ) -> None:
        self.addresses = addresses
        host, _, port = address.rpartition(":")
        self._server = _Server(
            (host.strip("[]"), int(port)),
            _handler(addresses, request_timeout, idle_timeout),
            server_context(cert, key, client_ca),
            handshake_timeout=handshake_timeout,
            max_connections=max_connections,
            max_connections_per_peer=max_connections_per_peer,
        )
        self.port: int = self._server.server_address[1]

    def start(self) -> None:
        self.addresses.start()
        threading.Thread(target=self._server.serve_forever, name="service-discovery", daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()
        self.addresses.stop()

    def invalidate(self) -> None:
        """A source changed the routing table: the next answer is built from it."""
        self.addresses.invalidate()

    def open_connections(self) -> int:
        """Connections being served now (handshaking, waiting for a request, or answering)."""
        return self._server.open_connections()


def _handler(addresses: AddressTable, request_timeout: float, idle_timeout: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: bosh-dns-adapter's client reuses its connections
        timeout = request_timeout  # the socket timeout of writes; reads have their deadline (_DeadlineReader)
        wbufsize = -1  # an answer leaves in one write (flushed per request), not its headers and body apart
        _reader: _DeadlineReader
        _answered = 0

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.rfile.close()  # the makefile() reader: replaced by one that keeps a deadline per request
            self._reader = _DeadlineReader(self.connection, request_timeout)
            self.rfile = io.BufferedReader(self._reader)

        def handle_one_request(self) -> None:
            self._reader.arm(idle_timeout if self._answered else request_timeout)
            try:
                self.raw_requestline = self.rfile.readline(65537)
                if len(self.raw_requestline) > 65536:
                    self.requestline, self.request_version, self.command = "", "", ""
                    self.send_error(414)
                    return
                if not self.raw_requestline:
                    self.close_connection = True
                    return
                if not self.parse_request():
                    return  # answered (400, 505, ...); finish() flushes it
                self._answer()
                self.wfile.flush()
                self._answered += 1
            except TimeoutError:
                self.close_connection = True
                if self._reader.received:  # a request begun and not finished in time (idle ones just close)
                    _refused("request_timeout", self.connection)

        def _answer(self) -> None:
            if self.headers.get("Transfer-Encoding") is not None or (self.headers.get("Content-Length") or "0").strip() != "0":
                self.close_connection = True  # a body is never read: it must not be taken for the next request
            path = unquote(urlsplit(self.path).path)
            if path.startswith("/v1/registration/"):
                if not addresses.warm:
                    return self._reply(500, NOT_WARM, nosniff=True)
                return self._reply(200, registration_body(addresses.lookup(_last_segment(path))))
            if path == "/routes":
                return self._reply(200, routes_body(addresses.names()))
            self._reply(404, NOT_FOUND, nosniff=True)

        def _reply(self, code: int, body: bytes, *, nosniff: bool = False) -> None:
            self.send_response_only(code)
            self.send_header("Content-Type", _TEXT)
            if nosniff:
                self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Date", self.date_time_string())
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base-class signature
            log.debug("service discovery request", extra={"peer": self.client_address[0], "request": format % args})

    return Handler


def _last_segment(path: str) -> str:
    """The name a /v1/registration/ path asks for: its last segment (as Go's path.Base takes it)."""
    stripped = path.rstrip("/")
    return stripped.rsplit("/", 1)[-1] if stripped else "/"


class _DeadlineReader(io.RawIOBase):
    """Reads a socket until a deadline set per request (`arm`): each read waits only for what is left of
    it, so a client trickling a byte at a time cannot stretch a request (a per-read timeout would let it)."""

    def __init__(self, sock: socket.socket, write_timeout: float) -> None:
        self._sock = sock
        self._write_timeout = write_timeout
        self._deadline = 0.0
        self._seconds = 0.0
        self.received = False  # whether bytes of the current request arrived

    def arm(self, seconds: float) -> None:
        self._seconds = seconds
        self._deadline = time.monotonic() + seconds
        self.received = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        remaining = self._deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError(f"no whole request within {self._seconds:g}s")
            self._sock.settimeout(remaining)
            count = self._sock.recv_into(buffer)
            self.received = self.received or count > 0
            return count
        finally:
            self._sock.settimeout(self._write_timeout)


class _Server(socketserver.ThreadingTCPServer):
    """Accepts plain TCP on the serving thread; the TLS handshake and the requests run on the
    connection's own thread, within the connection limits."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        context: ssl.SSLContext,
        *,
        handshake_timeout: float,
        max_connections: int,
        max_connections_per_peer: int,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)
        self._context = context
        self._handshake_timeout = handshake_timeout
        self._max = max_connections
        self._max_per_peer = max_connections_per_peer
        self._lock = threading.Lock()
        self._per_peer: collections.Counter[str] = collections.Counter()
        self._sockets: dict[socket.socket, socket.socket] = {}  # accepted socket -> the one in use (TLS once wrapped)

    def open_connections(self) -> int:
        with self._lock:
            return len(self._sockets)

    def verify_request(self, request, client_address) -> bool:  # type: ignore[override]
        """Takes a connection slot, on the serving thread and without reading: False closes the connection."""
        peer = client_address[0]
        with self._lock:
            if len(self._sockets) < self._max and self._per_peer[peer] < self._max_per_peer:
                self._per_peer[peer] += 1
                self._sockets[request] = request
                return True
        _refused("limit", request)
        return False

    def process_request(self, request, client_address) -> None:  # type: ignore[override]
        try:
            super().process_request(request, client_address)  # starts the connection's thread
        except BaseException:
            self._release(request, client_address[0])
            raise

    def process_request_thread(self, request, client_address) -> None:  # type: ignore[override]
        connection = request
        try:
            request.settimeout(self._handshake_timeout)  # bounds the whole do_handshake()
            connection = self._context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
            with self._lock:
                if request in self._sockets:
                    self._sockets[request] = connection  # wrap_socket took the accepted socket's descriptor over
            try:
                connection.do_handshake()
            except (OSError, ValueError) as error:  # ssl.SSLError (no or a wrong client certificate), a timeout, a reset
                _refused("handshake", connection, error)
                return
            self.finish_request(connection, client_address)
        except (ConnectionError, ssl.SSLError, TimeoutError):
            pass  # the client went away or broke the connection mid-answer
        except Exception:
            log.warning("service discovery connection failed", exc_info=True, extra={"peer": client_address[0]})
        finally:
            self.shutdown_request(connection)
            self._release(request, client_address[0])

    def close_connections(self) -> None:
        with self._lock:
            sockets = list(self._sockets.values())
        for sock in sockets:
            # The plain socket's shutdown, not SSLSocket's (which drops the TLS state under the thread
            # reading it): the connection's thread then reads end-of-file and closes.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def _release(self, request: socket.socket, peer: str) -> None:
        with self._lock:
            if self._sockets.pop(request, None) is not None:
                self._per_peer[peer] -= 1
                if self._per_peer[peer] <= 0:
                    del self._per_peer[peer]


_REFUSED_LOG_INTERVAL = 10.0
_refused_lock = threading.Lock()
_refused_logged: dict[str, tuple[float, int]] = {}  # reason -> (when last logged, closed since)


def _refused(reason: str, sock: socket.socket, error: BaseException | None = None) -> None:
    """Logs a connection closed before it was answered: the first of a reason, then at most one line per
    interval with the number closed since (a flood of connections must not flood the log)."""
    now = time.monotonic()
    with _refused_lock:
        last, since = _refused_logged.get(reason, (-_REFUSED_LOG_INTERVAL, 0))
        if now - last < _REFUSED_LOG_INTERVAL:
            _refused_logged[reason] = (last, since + 1)
            return
        _refused_logged[reason] = (now, 0)
    try:
        peer = sock.getpeername()[0]
    except OSError:
        peer = ""
    log.warning(
        "service discovery connection closed",
        extra={"reason": reason, "peer": peer, "error": str(error or ""), "also_closed_since_last_report": since},
    )
