"""Platform routes (api, uaa, login, doppler, ...) registered by our route_registrar job instead of NATS.

An HTTPS endpoint with mutual TLS: `POST /v1/registrations` registers or renews, `DELETE` removes.
Body: {"registrations": [{"host", "path", "address", "port", "tls_port", "server_cert_domain_san",
"source", "ttl_seconds"}]}. A whole request is validated before anything changes (400 naming the
field). Registrations that are not renewed within their TTL expire, as gorouter pruned stale routes.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from copilot.model import InvalidRoute, Registration, normalize_hostname, normalize_path
from copilot.routing_table import RoutingTable

log = logging.getLogger(__name__)

MAX_TTL_SECONDS = 3600
MAX_BODY_BYTES = 4 << 20
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
        address = item.get("address")
        try:
            ipaddress.ip_address(address)
        except (ValueError, TypeError):
            raise InvalidRoute(f"{field}.address", f"{address!r} is not an IP address") from None
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
    """Serves the registration endpoint and expires what is not renewed."""

    def __init__(
        self, table: RoutingTable, on_change: Callable[[], None], address: str, *, cert: Path, key: Path, client_ca: Path
    ) -> None:
        self._table = table
        self._on_change = on_change
        self._stop = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                api._handle(self, register=True)

            def do_DELETE(self) -> None:  # noqa: N802
                api._handle(self, register=False)

            def log_message(self, *args: object) -> None:
                pass

        host, _, port = address.rpartition(":")
        self._server = ThreadingHTTPServer((host, int(port)), Handler)
        self._server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert, key)
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]

    def start(self) -> None:
        threading.Thread(target=self._server.serve_forever, name="registrar-api", daemon=True).start()
        threading.Thread(target=self._expire, name="registrar-expiry", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def _expire(self) -> None:
        while not self._stop.wait(1.0):
            expired = self._table.expire_registrations(time.monotonic())
            if expired:
                log.info("platform routes expired", extra={"count": expired})
                self._on_change()

    def _handle(self, request: BaseHTTPRequestHandler, *, register: bool) -> None:
        if request.path != "/v1/registrations":
            return _reply(request, 404, {"error": "not found"})
        length = int(request.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            return _reply(request, 413, {"error": f"body: larger than {MAX_BODY_BYTES} bytes"})
        try:
            registrations = parse_registrations(json.loads(request.rfile.read(length) or b"null"))
        except ValueError as error:  # InvalidRoute and JSON errors
            return _reply(request, 400, {"error": str(error)})
        now = time.monotonic()
        for registration, ttl in registrations:
            if register:
                self._table.register(registration, now + ttl)
            else:
                self._table.unregister(registration)
        self._on_change()
        _reply(request, 200, {"registered" if register else "unregistered": len(registrations)})


def _reply(request: BaseHTTPRequestHandler, code: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    request.send_response(code)
    request.send_header("Content-Type", "application/json")
    request.send_header("Content-Length", str(len(payload)))
    request.end_headers()
    request.wfile.write(payload)
