"""A small HTTPS listener for Copilot's JSON APIs reached through the routers (the router-groups API).

One thread per connection: the accept thread only accepts and counts; the TLS handshake runs in the
connection's thread and must finish within `handshake_timeout`, and the request (line, headers and
body, one shared deadline however slowly it trickles in) within `request_timeout` after it. At most
`max_connections` connections are open at once; one over the limit is closed at once. Every response
closes its connection (`Connection: close`), so a kept-alive connection never outlives its deadline
under a client that would reuse it. Bodies need a Content-Length of at most `max_body_bytes`.

The application is a function of a `Request` returning a `Response`; it never sees sockets.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_SECONDS = 5.0
REQUEST_TIMEOUT_SECONDS = 10.0
MAX_CONNECTIONS = 256
MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # path and query, as sent
    headers: Mapping[str, str]  # case-insensitive (an email.message.Message)
    body: bytes = b""


@dataclass(frozen=True)
class Response:
    status: int
    body: object = None  # JSON-encoded; None sends no body
    headers: dict[str, str] = field(default_factory=dict)


Application = Callable[[Request], Response]


class HttpsListener:
    """Serves `app` over HTTPS (TLS 1.2+, no client certificate) on `address` (host:port, port 0 = any)."""

    def __init__(
        self,
        name: str,
        address: str,
        app: Application,
        *,
        cert: Path,
        key: Path,
        handshake_timeout: float = HANDSHAKE_TIMEOUT_SECONDS,
        request_timeout: float = REQUEST_TIMEOUT_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
        max_body_bytes: int = MAX_BODY_BYTES,
        on_refused: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.name = name
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert, key)
        context.set_alpn_protocols(["http/1.1"])
        refused = _Refusals(name, on_refused)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = request_timeout  # what writes wait for; reads share one deadline (setup)

            def setup(self) -> None:
                super().setup()
                self.rfile.close()  # makefile()'s reader, replaced by one keeping the request's deadline
                self.rfile = io.BufferedReader(_DeadlineReader(self.connection, request_timeout, refused))

            def _any(self) -> None:
                response = _respond(app, self, max_body_bytes)
                payload = b"" if response.body is None else json.dumps(response.body).encode()
                self.send_response(response.status)
                for name, value in response.headers.items():
                    self.send_header(name, value)
                if response.body is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _any  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        host, _, port = address.rpartition(":")
        self._server = _Server((host.strip("[]"), int(port)), Handler, context, handshake_timeout, max_connections, refused)
        self.port: int = self._server.server_address[1]

    def start(self) -> None:
        threading.Thread(target=self._server.serve_forever, name=self.name, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def open_connections(self) -> int:
        return self._server.open_connections()


def _respond(app: Application, handler: BaseHTTPRequestHandler, max_body_bytes: int) -> Response:
    """Reads the body (bounded) and runs the application; its failures answer 500, never a traceback."""
    if handler.headers.get("Transfer-Encoding") is not None:
        return _refuse(411, "send the body with a Content-Length")
    values = handler.headers.get_all("Content-Length") or []
    if len(values) > 1 or (values and not (values[0].strip().isascii() and values[0].strip().isdigit())):
        return _refuse(400, "bad Content-Length")
    length = int(values[0]) if values else 0
    if length > max_body_bytes:
        return _refuse(413, f"body larger than {max_body_bytes} bytes")
    body = handler.rfile.read(length) if length else b""
    if len(body) < length:
        return _refuse(400, "the body was cut short")
    try:
        return app(Request(handler.command, handler.path, handler.headers, body))
    except Exception:
        log.exception("request failed", extra={"method": handler.command, "path": handler.path.split("?", 1)[0]})
        return Response(500, {"name": "InternalServerError", "message": "internal error"})


def _refuse(status: int, message: str) -> Response:
    return Response(status, {"name": "ProcessRequestError", "message": f"Cannot process request: {message}"})


class _Refusals:
    """Counts connections closed unanswered and logs them, at most one line per reason per interval."""

    INTERVAL = 10.0

    def __init__(self, name: str, count: Callable[[str], None]) -> None:
        self._name = name
        self._count = count
        self._lock = threading.Lock()
        self._logged: dict[str, tuple[float, int]] = {}

    def __call__(self, reason: str, sock: socket.socket | None = None, error: BaseException | None = None) -> None:
        self._count(reason)
        now = time.monotonic()
        with self._lock:
            last, since = self._logged.get(reason, (-self.INTERVAL, 0))
            if now - last < self.INTERVAL:
                self._logged[reason] = (last, since + 1)
                return
            self._logged[reason] = (now, 0)
        try:
            peer = sock.getpeername()[0] if sock is not None else ""
        except OSError:
            peer = ""
        log.warning(
            "connection closed unanswered",
            extra={"listener": self._name, "reason": reason, "peer": peer, "error": str(error or ""),
                   "also_closed_since_last_report": since},
        )


class _DeadlineReader(io.RawIOBase):
    """Reads a socket until one deadline: each read waits only for what is left of it."""

    def __init__(self, sock: socket.socket, seconds: float, refused: _Refusals) -> None:
        self._sock = sock
        self._seconds = seconds
        self._deadline = time.monotonic() + seconds
        self._refused = refused

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
            self._refused("request_timeout", self._sock)
            raise
        finally:
            self._sock.settimeout(self._seconds)


class _Server(socketserver.ThreadingTCPServer):
    """Accepts plain TCP on the serving thread; the TLS handshake runs in the connection's own thread."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        context: ssl.SSLContext,
        handshake_timeout: float,
        max_connections: int,
        refused: _Refusals,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)
        self._context = context
        self._handshake_timeout = handshake_timeout
        self._max = max_connections
        self._refused = refused
        self._lock = threading.Lock()
        self._open = 0

    def open_connections(self) -> int:
        with self._lock:
            return self._open

    def verify_request(self, request, client_address) -> bool:  # type: ignore[override]
        with self._lock:
            if self._open < self._max:
                self._open += 1
                return True
        self._refused("limit", request)
        return False

    def process_request(self, request, client_address) -> None:  # type: ignore[override]
        try:
            super().process_request(request, client_address)  # starts the connection's thread
        except BaseException:
            self._release()
            raise

    def process_request_thread(self, request, client_address) -> None:  # type: ignore[override]
        connection = request
        try:
            request.settimeout(self._handshake_timeout)  # bounds the whole do_handshake()
            connection = self._context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
            try:
                connection.do_handshake()
            except (OSError, ValueError) as error:  # ssl.SSLError, TimeoutError, a reset
                self._refused("handshake", connection, error)
                return
            self.finish_request(connection, client_address)
        except Exception:
            log.warning("connection failed", exc_info=True, extra={"peer": client_address[0]})
        finally:
            self.shutdown_request(connection)
            self._release()

    def _release(self) -> None:
        with self._lock:
            self._open -= 1
