"""Turns routing-table changes into snapshot updates: rebuilds the Istio objects of dirty hosts only."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from copilot import metrics
from copilot.istio.builder import (
    GatewaySettings,
    build_host,
    build_internal,
    build_router_objects,
    build_tcp,
    host_object_names,
    internal_object_name,
    tcp_object_names,
)
from copilot.istio.kinds import SERVICE_ENTRY, IstioObject
from copilot.route_service_lookup import InternalLookup
from copilot.routing_table import HostRoutes, RoutingTable
from copilot.xds.store import Serialized, Store, serialize

log = logging.getLogger(__name__)


class PublishLoop:
    """Publishes on a thread of its own: sources ask with `request()` and return at once (a BulkSync
    answers Cloud Controller without waiting for 100k hosts to be rebuilt); requests that arrive while
    a publish runs are folded into the next one, so there is never more than one publish pending."""

    def __init__(self, publish: Callable[[], object]) -> None:
        self._publish = publish
        self._wanted = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._thread.start()

    def request(self) -> None:
        self._wanted.set()

    def stop(self) -> None:
        self._stopped = True
        self._wanted.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            if self._stopped:
                return
            self._wanted.clear()
            try:
                self._publish()
            except Exception:  # a bug in one publish must not stop every later one
                log.exception("publish failed")


class Publisher:
    """Owns the path table -> builder -> snapshot; one publish at a time."""

    def __init__(self, table: RoutingTable, snapshot: Store, gateway: GatewaySettings) -> None:
        self._table = table
        self._snapshot = snapshot
        self._gateway = gateway
        self._lock = threading.Lock()
        self.rejected_hosts = 0
        self.last_publish_seconds = 0.0
        rs = gateway.route_services
        # Route services' internal lookup: a host's routes depend on its route service's host too.
        self._lookup = InternalLookup(table.host_routes, rs.internal_lookup_allowlist) if rs and rs.internal_lookup else None
        self._apply(_encoded(build_router_objects(gateway)))

    def publish(self, *, everything: bool = False) -> int:
        """Rebuilds what changed since the last call (or every host); returns the number of hosts rebuilt."""
        with self._lock:
            started = time.perf_counter()
            hosts = self._table.take_dirty_hosts()
            if everything:
                hosts |= set(self._table.hosts())
            if self._lookup is not None:
                hosts |= self._lookup.dependents(hosts)
            # Objects are encoded as soon as they are built, so a full rebuild never holds 100k hosts'
            # worth of protobuf messages at once.
            objects: list[Serialized] = []
            deletions: list[IstioObject] = []
            for host in sorted(hosts):
                routes = self._table.host_routes(host)
                if self._lookup is not None:
                    self._lookup.record(host, _route_service_urls(routes))
                if routes is None:
                    deletions.extend(host_object_names(self._gateway, host))
                    continue
                internal = self._lookup.is_internal if self._lookup is not None else None
                try:
                    built = build_host(self._gateway, routes, internal)
                    objects.extend(_encoded(built))
                    if self._gateway.sharded:
                        # Router shards: the host may need fewer VirtualServices than before (or none).
                        emitted = {(obj.kind, obj.name) for obj in built}
                        deletions.extend(o for o in host_object_names(self._gateway, host) if (o.kind, o.name) not in emitted)
                except ValueError as error:
                    # One bad host never blocks the others; what it had before stays served.
                    self.rejected_hosts += 1
                    metrics.HOSTS_REJECTED.inc()
                    log.warning("route skipped", extra={"host": host, "error": str(error)})
            internal = self._table.take_dirty_internal_hosts()
            if everything:
                internal |= set(self._table.internal_hosts())
            for host in sorted(internal):
                service = self._table.internal_service(host)
                if service is None:
                    name = internal_object_name(self._gateway, host)
                    deletions.append(IstioObject(SERVICE_ENTRY, name, SERVICE_ENTRY.message()))
                    continue
                try:
                    objects.extend(_encoded(build_internal(self._gateway, service)))
                except ValueError as error:
                    self.rejected_hosts += 1
                    metrics.HOSTS_REJECTED.inc()
                    log.warning("internal route skipped", extra={"host": host, "error": str(error)})
            ports = self._table.take_dirty_tcp_ports()
            if everything:
                ports |= set(self._table.tcp_ports())
            for port in sorted(ports):
                tcp = self._table.tcp_routes(port)
                if tcp is None:
                    deletions.extend(tcp_object_names(self._gateway, port))
                    continue
                try:
                    built = build_tcp(self._gateway, tcp)
                    objects.extend(_encoded(built))
                    if not built:  # no router shard serves TCP ports
                        deletions.extend(tcp_object_names(self._gateway, port))
                except ValueError as error:
                    self.rejected_hosts += 1
                    metrics.HOSTS_REJECTED.inc()
                    log.warning("tcp route skipped", extra={"port": port, "error": str(error)})
            self._apply(objects, deletions)
            self.last_publish_seconds = time.perf_counter() - started
            return len(hosts)

    def _apply(self, objects: list[Serialized], deletions: list[IstioObject] = ()) -> None:
        self._snapshot.apply(objects, [(obj.kind, obj.name) for obj in deletions])


def _route_service_urls(routes: HostRoutes | None) -> list[str]:
    if routes is None:
        return []
    return [d.route_service_url for ds in routes.paths.values() for d in ds if d.route_service_url]


def _encoded(objects: list[IstioObject]) -> list[Serialized]:
    return [serialize(obj) for obj in objects]
