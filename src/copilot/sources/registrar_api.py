"""Platform routes (api, uaa, login, doppler, ...) registered by our route_registrar job instead of NATS.

An HTTPS endpoint with mutual TLS: `POST /v1/registrations` registers or renews, `DELETE` removes.
Body: {"registrations": [{"host", "path", "address", "port", "tls_port", "server_cert_domain_san",
"source", "ttl_seconds"}]}. A whole request is validated before anything changes (400 naming the
field). Registrations that are not renewed within their TTL expire, as gorouter pruned stale routes.

The listener (`0.0.0.0:9003` in production) is open to every VM, so no client can hold it: each
connection runs in its own thread, its TLS handshake within `handshake_timeout` and its whole request
within `request_timeout` (one deadline, however slowly it trickles in); at most `max_connections`
connections are open at once and `max_connections_per_peer` from one address, and one over a limit is
closed at once (each closure counted in `copilot_registrar_connections_refused_total{reason}`). A body
needs exactly one Content-Length, digits only, of at most MAX_BODY_BYTES (else 400, 411 without one
or with a Transfer-Encoding, 413): reading stops at the Content-Length (and its 8 KiB read buffer).
"""

from __future__ import annotations

import collections
import io
import json
import logging
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from copilot import metrics
from copilot.model import InvalidRoute, Registration, check_backend_address, normalize_hostname, normalize_path
from copilot.routing_table import RoutingTable

log = logging.getLogger(__name__)

MAX_TTL_SECONDS = 3600
MAX_BODY_BYTES = 4 << 20
HANDSHAKE_TIMEOUT_SECONDS = 5.0  # a registrar's own request timeout is 5 s (request_timeout_seconds)
REQUEST_TIMEOUT_SECONDS = 10.0  # from the end of the handshake to the whole request read
MAX_CONNECTIONS = 128
MAX_CONNECTIONS_PER_PEER = 16  # a registrar opens one connection per route being renewed at once
_FIELDS = {"host", "path", "address", "port", "tls_port", "server_cert_domain_san", "source", "ttl_seconds"}


def parse_registrations(body: object) -> list[tuple[Registration, float]]:
    """Validates a request body; returns (registration, ttl seconds) pairs or raises InvalidRoute."""
    if not isinstance(body, dict) or not isinstance(body.get("registrations"), list):
        raise InvalidRoute("registrations", 'the body must be {"registrations": [...]}')
    result = []
    for i, item in enumerate(body["registrations"]):
        field = f"registrations[{i}]"
        if not isinstance(item, dict):
            raise InvalidRoute(field, "must be an object")
        unknown = sorted(set(item) - _FIELDS)
        if unknown:
            raise InvalidRoute(f"{field}.{unknown[0]}", "unknown field")
        host = normalize_hostname(item.get("host"), f"{field}.host")
        path = normalize_path(item.get("path") or "", f"{field}.path")
        # An IP address, and never loopback/link-local/unspecified unless backends.allowed_internal_networks
        # names it: a platform route must not reach the router's own admin API or a metadata service.
        address = check_backend_address(item.get("address"), f"{field}.address")
        port, tls_port = _port(item, "port", field), _port(item, "tls_port", field)
        if not port and not tls_port:
            raise InvalidRoute(f"{field}.port", "port or tls_port is required")
        san = item.get("server_cert_domain_san") or ""
        if tls_port and not (isinstance(san, str) and san):
            raise InvalidRoute(f"{field}.server_cert_domain_san", "is required with tls_port")
        ttl = item.get("ttl_seconds", 120)
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_TTL_SECONDS:
            raise InvalidRoute(f"{field}.ttl_seconds", f"{ttl!r} must be a number in (0, {MAX_TTL_SECONDS}]")
        source = item.get("source") or ""
        if not isinstance(source, str):
            raise InvalidRoute(f"{field}.source", "must be a string")
        result.append((Registration(host, path, address, port, tls_port, san if tls_port else "", source), float(ttl)))
    return result


def _port(item: dict, name: str, field: str) -> int:
    value = item.get(name) or 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 65536:
        raise InvalidRoute(f"{field}.{name}", f"{value!r} is not a port number")
    return value


class RegistrarApi:
    """Serves the registration endpoint and expires what is not renewed.

    Each connection is handled in its own thread: the TLS handshake must finish within
    `handshake_timeout` seconds and the whole request (line, headers, body) arrive within
    `request_timeout` seconds after it, or the connection is closed. At most `max_connections`
    connections are open at once, `max_connections_per_peer` from one address; a connection over
    either limit is closed at once, so a silent or slow client holds only its own slot.
    """

    def __init__(
        self,
        table: RoutingTable,
        on_change: Callable[[], None],
        address: str,
        *,
        cert: Path,
        key: Path,
        client_ca: Path,
        handshake_timeout: float = HANDSHAKE_TIMEOUT_SECONDS,
        request_timeout: float = REQUEST_TIMEOUT_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
        max_connections_per_peer: int = MAX_CONNECTIONS_PER_PEER,
    ) -> None:
        self._table = table
        self._on_change = on_change
        self._stop = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            timeout = request_timeout  # socket timeout of writes; reads share one deadline (setup)

            def setup(self) -> None:
                super().setup()
                self.rfile.close()  # the makefile() reader: replaced by one that keeps the deadline
                self.rfile = io.BufferedReader(_DeadlineReader(self.connection, request_timeout))

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                api._handle(self, register=True)

            def do_DELETE(self) -> None:  # noqa: N802
                api._handle(self, register=False)

            def log_message(self, *args: object) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert, key)
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
        host, _, port = address.rpartition(":")
        self._server = _TLSServer(
            (host, int(port)), Handler, context, handshake_timeout=handshake_timeout,
            max_connections=max_connections, max_connections_per_peer=max_connections_per_peer,
        )
        self.port = self._server.server_address[1]

    def start(self) -> None:
        threading.Thread(target=self._server.serve_forever, args=(0.1,), name="registrar-api", daemon=True).start()
        threading.Thread(target=self._expire, name="registrar-expiry", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def open_connections(self) -> int:
        """Connections being served now (handshaking, reading or answering)."""
        return self._server.open_connections()

    def _expire(self) -> None:
        while not self._stop.wait(1.0):
            expired = self._table.expire_registrations(time.monotonic())
            if expired:
                log.info("platform routes expired", extra={"count": expired})
                self._on_change()

    def _handle(self, request: BaseHTTPRequestHandler, *, register: bool) -> None:
        if request.path != "/v1/registrations":
            return _reply(request, 404, {"error": "not found"})
        length = _body_length(request)
        if isinstance(length, tuple):
            return _reply(request, length[0], {"error": length[1]})
        body = request.rfile.read(length)  # never more than the Content-Length, itself at most MAX_BODY_BYTES
        if len(body) < length:
            return _reply(request, 400, {"error": f"body: {len(body)} bytes received of a Content-Length of {length}"})
        try:
            registrations = parse_registrations(json.loads(body or b"null"))
        except ValueError as error:  # InvalidRoute and JSON errors
            return _reply(request, 400, {"error": str(error)})
        except RecursionError:
            return _reply(request, 400, {"error": "body: nested too deeply"})
        now = time.monotonic()
        for registration, ttl in registrations:
            if register:
                self._table.register(registration, now + ttl)
            else:
                self._table.unregister(registration)
        self._on_change()
        _reply(request, 200, {"registered" if register else "unregistered": len(registrations)})


def _body_length(request: BaseHTTPRequestHandler) -> int | tuple[int, str]:
    """The body's length from its one Content-Length (digits only, at most MAX_BODY_BYTES), or (status, error).
    A body without a length (none given, or Transfer-Encoding) is refused: it could be read without bound."""
    if request.headers.get("Transfer-Encoding") is not None:
        return 411, "Transfer-Encoding: not accepted, send the body with a Content-Length"
    values = request.headers.get_all("Content-Length") or []
    if not values:
        return 411, "Content-Length: is required"
    if len(values) > 1:
        return 400, "Content-Length: is given more than once"
    value = values[0].strip()
    if not value.isascii() or not value.isdigit():
        return 400, f"Content-Length: {value[:32]!r} is not a number of bytes"
    digits = value.lstrip("0") or "0"
    if len(digits) > len(str(MAX_BODY_BYTES)) or int(digits) > MAX_BODY_BYTES:
        return 413, f"body: larger than {MAX_BODY_BYTES} bytes"
    return int(digits)


def _reply(request: BaseHTTPRequestHandler, code: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    request.send_response(code)
    request.send_header("Content-Type", "application/json")
    request.send_header("Content-Length", str(len(payload)))
    request.end_headers()
    request.wfile.write(payload)


class _DeadlineReader(io.RawIOBase):
    """Reads a socket until one deadline: each read waits only for what is left of it, so a client that
    trickles a byte at a time cannot stretch a request past `seconds` (a per-read timeout would)."""

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self._sock = sock
        self._seconds = seconds
        self._deadline = time.monotonic() + seconds

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        remaining = self._deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError(f"the request was not received within {self._seconds:g}s")
            self._sock.settimeout(remaining)
            return self._sock.recv_into(buffer)
        except TimeoutError:
            _refused("request_timeout", self._sock)
            raise
        finally:
            self._sock.settimeout(self._seconds)  # what writes wait for


class _TLSServer(socketserver.ThreadingTCPServer):
    """Accepts plain TCP on the serving thread; the TLS handshake runs in the connection's own thread."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

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
        super().__init__(address, handler)
        self._context = context
        self._handshake_timeout = handshake_timeout
        self._max = max_connections
        self._max_per_peer = max_connections_per_peer
        self._lock = threading.Lock()
        self._open: collections.Counter[str] = collections.Counter()

    def open_connections(self) -> int:
        with self._lock:
            return sum(self._open.values())

    def verify_request(self, request, client_address) -> bool:  # type: ignore[override]
        """Takes a connection slot (on the serving thread, without reading): False closes the connection."""
        peer = client_address[0]
        with self._lock:
            if sum(self._open.values()) < self._max and self._open[peer] < self._max_per_peer:
                self._open[peer] += 1
                return True
        _refused("limit", request)
        return False

    def process_request(self, request, client_address) -> None:  # type: ignore[override]
        try:
            super().process_request(request, client_address)  # starts the connection's thread
        except BaseException:
            self._release(client_address[0])
            raise

    def process_request_thread(self, request, client_address) -> None:  # type: ignore[override]
        connection = request
        try:
            request.settimeout(self._handshake_timeout)  # ssl bounds a whole do_handshake() by it, not each read
            connection = self._context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
            try:
                connection.do_handshake()
            except (OSError, ValueError) as error:  # ssl.SSLError, TimeoutError, a reset
                _refused("handshake", connection, error)
                return
            self.finish_request(connection, client_address)
        except Exception:
            self.handle_error(connection, client_address)
        finally:
            self.shutdown_request(connection)
            self._release(client_address[0])

    def handle_error(self, request, client_address) -> None:  # type: ignore[override]
        log.warning("registrar api connection failed", exc_info=True, extra={"peer": client_address[0]})

    def _release(self, peer: str) -> None:
        with self._lock:
            self._open[peer] -= 1
            if self._open[peer] <= 0:
                del self._open[peer]


_REFUSED_LOG_INTERVAL = 10.0
_refused_lock = threading.Lock()
_refused_logged: dict[str, tuple[float, int]] = {}  # reason -> (when last logged, refused since)


def _refused(reason: str, sock: socket.socket, error: BaseException | None = None) -> None:
    """Counts a connection closed before it was answered; logs the first of a reason and then at most one
    line per interval with the number since (a flood of connections must not flood the log)."""
    metrics.REGISTRAR_CONNECTIONS_REFUSED.labels(reason).inc()
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
        "registrar api connection closed",
        extra={"reason": reason, "peer": peer, "error": str(error or ""), "also_closed_since_last_report": since},
    )
