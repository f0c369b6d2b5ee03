"""Copilot's one HTTPS listener kit: the threaded server its APIs on the network are served by (the
registrar API, service discovery for bosh-dns-adapter, the router-groups API).

One thread per connection: the accept thread only accepts and counts; the TLS handshake runs in the
connection's thread and must finish within `handshake_timeout`, and each request (line, headers and
any body, one shared deadline however slowly it trickles in) within `request_timeout` after it. At most
`max_connections` connections are open at once and, if given, `max_connections_per_peer` from one
address; one over a limit is closed at once, so a silent or slow client holds only its own slot.

TLS: a context the caller supplies, or one built from `cert` and `key` (`tls_context`): TLS 1.2 or
later, and with `client_ca` mutual TLS, a client certificate required and verified against it.

Connections: without `idle_timeout` every answer closes its connection (`Connection: close`); with it
a connection is kept alive and waits that long for its next request. Each answer leaves in one write.

Bodies: with `max_body_bytes` a request's body is read before the application runs; it needs exactly
one Content-Length, digits only, of at most `max_body_bytes` (else 400, 411 with a Transfer-Encoding or,
for a method in `length_required_for`, without a Content-Length, 413; `body_error` words the answer).
Without it bodies are never read, and a request announcing one closes its connection after the answer.

Connections closed unanswered (over a limit, a failed or too slow handshake, a request not received in
time; on a kept-alive connection an idle wait is not one) are passed to `on_refused` with the reason
(`limit`, `handshake`, `request_timeout`) and logged, at most one line per reason per 10 seconds.

The application is a function of a parsed `Request` returning a `Response`; it never sees sockets. Its
failures are logged and answered with `internal_error`, never a traceback.
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
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_SECONDS = 5.0
REQUEST_TIMEOUT_SECONDS = 10.0
MAX_CONNECTIONS = 256
MAX_BODY_BYTES = 64 * 1024
BACKLOG = 128


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # path and query, as sent
    headers: Mapping[str, str]  # case-insensitive (an email.message.Message)
    body: bytes = b""


@dataclass(frozen=True)
class Response:
    status: int
    body: object = None  # bytes are sent as they are; None sends no body; anything else as JSON
    headers: dict[str, str] = field(default_factory=dict)


Application = Callable[[Request], Response]
BodyError = Callable[[int, str], Response]  # (status, why) -> the answer to a body that is not read


def _plain_error(status: int, message: str) -> Response:
    return Response(status, {"error": message})


def tls_context(
    cert: Path, key: Path, client_ca: Path | None = None, *, ciphers: str | None = None, ecdh_curve: str | None = None
) -> ssl.SSLContext:
    """A server context: TLS 1.2 or later (TLS 1.2 limited to `ciphers` if given, key exchange on `ecdh_curve`
    if given), HTTP/1.1 by ALPN; with `client_ca`, a client certificate verified against it is required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ciphers is not None:
        context.set_ciphers(ciphers)
    if ecdh_curve is not None:
        context.set_ecdh_curve(ecdh_curve)
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["http/1.1"])
    return context


@dataclass(frozen=True)
class ConnectionLimits:
    """What keeps a slow, silent or greedy client to its own slots: the TLS handshake's and the request's
    time, how long a kept-alive connection may idle (None: one request per connection), how many
    connections may be open, and how many of them from one address (None: no limit of its own)."""

    handshake_timeout: float = HANDSHAKE_TIMEOUT_SECONDS
    request_timeout: float = REQUEST_TIMEOUT_SECONDS
    idle_timeout: float | None = None
    max_connections: int = MAX_CONNECTIONS
    max_connections_per_peer: int | None = None


DEFAULT_LIMITS = ConnectionLimits()


class HttpsListener:
    """Serves `app` over HTTPS on `address` (host:port, IPv6 hosts in brackets, port 0 = any); `start()`
    serves, `stop()` closes the listener and every open connection. The options: the module docstring."""

    def __init__(
        self,
        name: str,
        address: str,
        app: Application,
        *,
        context: ssl.SSLContext | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        client_ca: Path | None = None,
        limits: ConnectionLimits = DEFAULT_LIMITS,
        max_body_bytes: int | None = MAX_BODY_BYTES,
        length_required_for: Collection[str] = (),
        body_error: BodyError = _plain_error,
        internal_error: Response = Response(500, {"error": "internal error"}),  # noqa: B008 - frozen
        on_refused: Callable[[str], None] = lambda reason: None,
        backlog: int = BACKLOG,
    ) -> None:
        if context is None:
            if cert is None or key is None:
                raise ValueError("an HTTPS listener needs a TLS context or a certificate and key")
            context = tls_context(cert, key, client_ca)
        self.name = name
        refused = _Refusals(name, on_refused)
        answer = _Answers(app, max_body_bytes, frozenset(length_required_for), body_error, internal_error)
        handler = _handler(name, answer, refused, limits.request_timeout, limits.idle_timeout)
        host, _, port = address.rpartition(":")
        self._server = _Server(
            (host.strip("[]"), int(port)), handler, context, handshake_timeout=limits.handshake_timeout,
            max_connections=limits.max_connections, max_connections_per_peer=limits.max_connections_per_peer, refused=refused,
            backlog=backlog,
        )
        self.port: int = self._server.server_address[1]

    def start(self) -> None:
        threading.Thread(target=self._server.serve_forever, args=(0.1,), name=self.name, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()

    def open_connections(self) -> int:
        """Connections being served now (handshaking, waiting for or reading a request, or answering)."""
        return self._server.open_connections()


@dataclass(frozen=True)
class _Answers:
    """A parsed request's answer: its body read (or refused) as configured, then the application's."""

    app: Application
    max_body_bytes: int | None
    length_required_for: frozenset[str]
    body_error: BodyError
    internal_error: Response

    def __call__(self, handler: BaseHTTPRequestHandler) -> tuple[Response, bool]:
        """The response, and whether the connection must close after it (a body was left unread)."""
        headers = handler.headers
        body = b""
        if self.max_body_bytes is None:
            announced = headers.get("Transfer-Encoding") is not None or (headers.get("Content-Length") or "0").strip() != "0"
            unread = announced
        else:
            length = _body_length(headers, self.max_body_bytes, handler.command in self.length_required_for)
            if isinstance(length, tuple):
                return self.body_error(*length), True
            body = handler.rfile.read(length) if length else b""  # never more than the Content-Length
            if len(body) < length:
                return self.body_error(400, f"body: {len(body)} bytes received of a Content-Length of {length}"), True
            unread = False
        try:
            return self.app(Request(handler.command, handler.path, headers, body)), unread
        except Exception:
            log.exception("request failed", extra={"method": handler.command, "path": handler.path.split("?", 1)[0][:200]})
            return self.internal_error, unread


def _body_length(headers: Mapping[str, str], max_bytes: int, required: bool) -> int | tuple[int, str]:
    """The body's length from its one Content-Length (digits only, at most `max_bytes`), or (status, why).
    A body without a length (Transfer-Encoding) is refused: it could be read without bound."""
    if headers.get("Transfer-Encoding") is not None:
        return 411, "Transfer-Encoding: not accepted, send the body with a Content-Length"
    values = headers.get_all("Content-Length") or []  # type: ignore[attr-defined]
    if not values:
        return (411, "Content-Length: is required") if required else 0
    if len(values) > 1:
        return 400, "Content-Length: is given more than once"
    value = values[0].strip()
    if not value.isascii() or not value.isdigit():
        return 400, f"Content-Length: {value[:32]!r} is not a number of bytes"
    digits = value.lstrip("0") or "0"
    if len(digits) > len(str(max_bytes)) or int(digits) > max_bytes:
        return 413, f"body: larger than {max_bytes} bytes"
    return int(digits)


def _encode(response: Response) -> tuple[bytes, str | None]:
    """The payload and the Content-Type it needs (None: the application's headers name it, or no body)."""
    if response.body is None:
        return b"", None
    if isinstance(response.body, bytes):
        return response.body, None
    return json.dumps(response.body).encode(), "application/json"


def _handler(
    name: str, answer: _Answers, refused: _Refusals, request_timeout: float, idle_timeout: float | None
) -> type[BaseHTTPRequestHandler]:
    keep_alive = idle_timeout is not None

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
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
            self._reader.arm(idle_timeout if self._answered and idle_timeout is not None else request_timeout)
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
                response, unread = answer(self)
                self._send(response, close=unread or not keep_alive)
                self.wfile.flush()
                self._answered += 1
            except TimeoutError:
                self.close_connection = True
                # A request begun and not finished in time; with keep-alive, waiting for one is being idle.
                if self._reader.timed_out and (self._reader.received or not keep_alive):
                    refused("request_timeout", self.connection)

        def _send(self, response: Response, *, close: bool) -> None:
            payload, content_type = _encode(response)
            self.send_response_only(response.status)
            self.send_header("Date", self.date_time_string())
            for header, value in response.headers.items():
                self.send_header(header, value)
            if content_type is not None:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            if close:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base-class signature
            log.debug("request", extra={"listener": name, "peer": self.client_address[0], "request": format % args})

    return Handler


class _Refusals:
    """Reports connections closed unanswered to the caller's hook and logs them: the first of a reason,
    then at most one line per interval with the number since (a flood of connections must not flood the log)."""

    INTERVAL = 10.0

    def __init__(self, name: str, count: Callable[[str], None]) -> None:
        self.name = name
        self._count = count
        self._lock = threading.Lock()
        self._logged: dict[str, tuple[float, int]] = {}  # reason -> (when last logged, closed since)

    def __call__(self, reason: str, sock: socket.socket, error: BaseException | None = None) -> None:
        self._count(reason)
        now = time.monotonic()
        with self._lock:
            last, since = self._logged.get(reason, (-self.INTERVAL, 0))
            if now - last < self.INTERVAL:
                self._logged[reason] = (last, since + 1)
                return
            self._logged[reason] = (now, 0)
        try:
            peer = sock.getpeername()[0]
        except OSError:
            peer = ""
        log.warning(
            "connection closed unanswered",
            extra={"listener": self.name, "reason": reason, "peer": peer, "error": str(error or ""),
                   "also_closed_since_last_report": since},
        )


class _DeadlineReader(io.RawIOBase):
    """Reads a socket until a deadline set per request (`arm`): each read waits only for what is left of
    it, so a client trickling a byte at a time cannot stretch a request (a per-read timeout would let it)."""

    def __init__(self, sock: socket.socket, write_timeout: float) -> None:
        self._sock = sock
        self._write_timeout = write_timeout
        self._deadline = 0.0
        self._seconds = 0.0
        self.received = False  # whether bytes of the current request arrived
        self.timed_out = False  # whether the current request's deadline passed

    def arm(self, seconds: float) -> None:
        self._seconds = seconds
        self._deadline = time.monotonic() + seconds
        self.received = self.timed_out = False

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
        except TimeoutError:
            self.timed_out = True
            raise
        finally:
            self._sock.settimeout(self._write_timeout)


class _Server(socketserver.ThreadingTCPServer):
    """Accepts plain TCP on the serving thread; the TLS handshake and the requests run on the
    connection's own thread, within the connection limits."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        context: ssl.SSLContext,
        *,
        handshake_timeout: float,
        max_connections: int,
        max_connections_per_peer: int | None,
        refused: _Refusals,
        backlog: int,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.request_queue_size = backlog
        super().__init__(address, handler)
        self._context = context
        self._handshake_timeout = handshake_timeout
        self._max = max_connections
        self._max_per_peer = max_connections if max_connections_per_peer is None else max_connections_per_peer
        self._refused = refused
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
        self._refused("limit", request)
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
            request.settimeout(self._handshake_timeout)  # ssl bounds a whole do_handshake() by it, not each read
            connection = self._context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
            with self._lock:
                if request in self._sockets:
                    self._sockets[request] = connection  # wrap_socket took the accepted socket's descriptor over
            try:
                connection.do_handshake()
            except (OSError, ValueError) as error:  # ssl.SSLError (say, no or a wrong client certificate), a timeout, a reset
                self._refused("handshake", connection, error)
                return
            self.finish_request(connection, client_address)
        except (ConnectionError, ssl.SSLError, TimeoutError):
            pass  # the client went away or broke the connection mid-answer
        except Exception:
            log.warning("connection failed", exc_info=True, extra={"listener": self._refused.name, "peer": client_address[0]})
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
