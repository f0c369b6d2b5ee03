"""Platform routes (api, uaa, login, doppler, ...) registered by our route_registrar job instead of NATS.

An HTTPS endpoint with mutual TLS: `POST /v1/registrations` registers or renews, `DELETE` removes.
Body: {"registrations": [{"host", "path", "address", "port", "tls_port", "server_cert_domain_san",
"source", "ttl_seconds"}]}. A whole request is validated before anything changes (400 naming the
field). Registrations that are not renewed within their TTL expire, as gorouter pruned stale routes.

The listener (`0.0.0.0:9003` in production, copilot.https_listener) is open to every VM, so no client
can hold it: each connection runs in its own thread, its TLS handshake within `handshake_timeout` and
its whole request within `request_timeout` (one deadline, however slowly it trickles in); at most
`max_connections` connections are open at once and `max_connections_per_peer` from one address, and
one over a limit is closed at once (each closure counted in
`copilot_registrar_connections_refused_total{reason}`). Every answer closes its connection. A body
needs exactly one Content-Length, digits only, of at most MAX_BODY_BYTES (else 400, 411 without one
or with a Transfer-Encoding, 413): reading stops at the Content-Length (and its 8 KiB read buffer).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

from copilot import metrics
from copilot.https_listener import ConnectionLimits, HttpsListener, Request, Response
from copilot.model import InvalidRoute, Registration, check_backend_address, normalize_hostname, normalize_path
from copilot.settings import MutualTLSServerConfig
from copilot.slices.registrar import RegistrarSlice

log = logging.getLogger(__name__)

MAX_TTL_SECONDS = 3600
MAX_BODY_BYTES = 4 << 20
LIMITS = ConnectionLimits(
    handshake_timeout=5.0,  # a registrar's own request timeout is 5 s (request_timeout_seconds)
    request_timeout=10.0,  # from the end of the handshake to the whole request read
    max_connections=128,
    max_connections_per_peer=16,  # a registrar opens one connection per route being renewed at once
)
_METHODS = ("POST", "DELETE")  # register (or renew), remove
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
        registrations: RegistrarSlice,
        on_change: Callable[[], None],
        server: MutualTLSServerConfig,
        limits: ConnectionLimits = LIMITS,
    ) -> None:
        self._registrations = registrations
        self._on_change = on_change
        self._stop = threading.Event()
        self._listener = HttpsListener(
            "registrar-api", server.listen, self._answer, cert=server.cert, key=server.key, client_ca=server.client_ca,
            limits=limits, max_body_bytes=MAX_BODY_BYTES, length_required_for=_METHODS,
            on_refused=lambda reason: metrics.REGISTRAR_CONNECTIONS_REFUSED.labels(reason).inc(),
        )
        self.port = self._listener.port

    def start(self) -> None:
        self._listener.start()
        threading.Thread(target=self._expire, name="registrar-expiry", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._listener.stop()

    def open_connections(self) -> int:
        """Connections being served now (handshaking, reading or answering)."""
        return self._listener.open_connections()

    def _expire(self) -> None:
        while not self._stop.wait(1.0):
            expired = self._registrations.expire(time.monotonic())
            if expired:
                log.info("platform routes expired", extra={"count": expired})
                self._on_change()

    def _answer(self, request: Request) -> Response:
        """POST registers (or renews), DELETE removes; the body was read by the listener (at most MAX_BODY_BYTES)."""
        if request.method not in _METHODS:
            return Response(501, {"error": f"Unsupported method ({request.method!r})"})
        if request.target != "/v1/registrations":
            return Response(404, {"error": "not found"})
        try:
            registrations = parse_registrations(json.loads(request.body or b"null"))
        except ValueError as error:  # InvalidRoute and JSON errors
            return Response(400, {"error": str(error)})
        except RecursionError:
            return Response(400, {"error": "body: nested too deeply"})
        register = request.method == "POST"
        now = time.monotonic()
        for registration, ttl in registrations:
            if register:
                self._registrations.register(registration, now + ttl)
            else:
                self._registrations.unregister(registration)
        self._on_change()
        return Response(200, {"registered" if register else "unregistered": len(registrations)})

