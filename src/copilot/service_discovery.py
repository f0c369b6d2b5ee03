"""Container-to-container service discovery (`*.apps.internal`): the lookup API bosh-dns-adapter calls.

In cf-deployment, bosh-dns-adapter on every cell answers bosh-dns for the internal domains by asking
cf-networking's service-discovery-controller, which learned internal routes from route-emitter over
NATS. The Istio tier has neither NATS nor that controller; this module is what takes the controller's
place, inside Copilot, so bosh-dns-adapter runs unchanged. It owns:

- the address table: every DesiredLRP `internal-router` hostname from the BBS, as `<hostname>` and
  `<index>.<hostname>`, mapped to the container addresses (`instance_address`) of its RUNNING, routable
  instances (BbsSlice.internal_addresses), as a snapshot lookups read without waiting. A refresher
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

The listener is copilot.https_listener's: connections are accepted on the serving thread and handled,
TLS handshake included, on their own thread: the handshake must finish within `handshake_timeout`, each
request (line and headers; a body is never read, and closes its connection) arrive within
`request_timeout` (`idle_timeout` for the next one on a kept-alive connection), and at most
`max_connections` are open at once, `max_connections_per_peer` from one address, so a slow or silent
client holds only its own slot and never the listener. Each answer leaves in one write.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from copilot.https_listener import ConnectionLimits, HttpsListener, Request, Response, tls_context
from copilot.settings import MutualTLSServerConfig

log = logging.getLogger(__name__)

SERVER_NAME = "service-discovery-controller.service.cf.internal"
LIMITS = ConnectionLimits(
    handshake_timeout=5.0,  # bosh-dns-adapter's own TLS handshake timeout
    request_timeout=10.0,  # bosh-dns-adapter's request timeout
    idle_timeout=60.0,  # a kept-alive connection waits this long for its next request
    max_connections=1024,
    max_connections_per_peer=64,  # one bosh-dns-adapter per cell; it keeps connections alive
)
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
    """Where the names come from: the BBS slice (copilot.slices.bbs.BbsSlice)."""

    def internal_addresses(self) -> dict[str, list[str]]: ...


@dataclass(frozen=True)
class _Snapshot:
    names: dict[str, list[str]]
    warm: bool  # built after the first full BBS listing was applied


class AddressTable:
    """The BBS slice's internal names, as a snapshot that lookups read without waiting.

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
    return tls_context(cert, key, client_ca, ciphers=TLS12_CIPHERS, ecdh_curve=ECDH_CURVE)


class ServiceDiscoveryServer:
    """The HTTPS listener bosh-dns-adapter calls (the module docstring); `start()` serves, `stop()`
    closes the listener and every open connection."""

    def __init__(
        self,
        addresses: AddressTable,
        server: MutualTLSServerConfig,
        limits: ConnectionLimits = LIMITS,
    ) -> None:
        self.addresses = addresses
        self._listener = HttpsListener(
            "service-discovery", server.listen, self._answer, context=server_context(server.cert, server.key, server.client_ca),
            limits=limits, max_body_bytes=None, backlog=256,
        )
        self.port: int = self._listener.port

    def start(self) -> None:
        self.addresses.start()
        self._listener.start()

    def stop(self) -> None:
        self._listener.stop()
        self.addresses.stop()

    def invalidate(self) -> None:
        """The BBS slice changed: the next answer is built from it."""
        self.addresses.invalidate()

    def open_connections(self) -> int:
        """Connections being served now (handshaking, waiting for a request, or answering)."""
        return self._listener.open_connections()

    def _answer(self, request: Request) -> Response:
        """The controller's answers, whatever the method (the module docstring)."""
        path = unquote(urlsplit(request.target).path)
        if path.startswith("/v1/registration/"):
            if not self.addresses.warm:
                return _text(500, NOT_WARM, nosniff=True)
            return _text(200, registration_body(self.addresses.lookup(_last_segment(path))))
        if path == "/routes":
            return _text(200, routes_body(self.addresses.names()))
        return _text(404, NOT_FOUND, nosniff=True)


def _text(status: int, body: bytes, *, nosniff: bool = False) -> Response:
    headers = {"Content-Type": _TEXT}
    if nosniff:
        headers["X-Content-Type-Options"] = "nosniff"
    return Response(status, body, headers)


def _last_segment(path: str) -> str:
    """The name a /v1/registration/ path asks for: its last segment (as Go's path.Base takes it)."""
    stripped = path.rstrip("/")
    return stripped.rsplit("/", 1)[-1] if stripped else "/"
