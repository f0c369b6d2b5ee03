"""The merged routing state: what each source (Diego BBS today) says, joined into routes per host.

Sources write their own slice; the table tracks which hosts a change touched so the Istio config
is rebuilt only for those ("dirty" hosts), which is what keeps one event cheap at 100k routes.

Instances are kept by what identifies them, as BBS and route-emitter do: process guid, index,
instance guid and presence. Two instances at one index (an evacuating copy and its replacement, or a
restarted instance whose predecessor's removal has not arrived yet) both serve, and removing one never
removes the other. Only serving instances are kept: an update saying an instance no longer serves
removes it.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from dataclasses import dataclass

from copilot.model import (
    PLATFORM_PROCESS_PREFIX,
    Backend,
    CCRoute,
    CCState,
    Destination,
    HttpRoute,
    Instance,
    ProcessRoutes,
    Registration,
    normalize_weights,
)

# An instance within its process: (index, instance guid, presence), presence as BBS's ORDINARY=0,
# EVACUATING=1, SUSPECT=2 (an evacuating copy has its instance's guid).
InstanceKey = tuple[int, str, int]


def instance_key(presence: int, instance: Instance) -> InstanceKey:
    """The key of an instance (with its presence) in the table and in `replace_bbs_state`'s listing."""
    return (instance.index, instance.instance_guid, presence)


@dataclass
class InternalService:
    """A container-to-container route: a host with its VIP, and the instances behind it (container addresses)."""

    host: str
    vip: str
    destinations: list[Destination]


@dataclass
class HostRoutes:
    """Everything needed to build the Istio config of one hostname."""

    host: str
    # path ("" for the root) -> weighted destinations, in a stable order
    paths: dict[str, list[Destination]]


@dataclass
class TcpPortRoutes:
    """A router TCP port (tcp-router's external port) and the instances its connections go to."""

    port: int
    backends: list[Backend]


class RoutingTable:
    """Routes and backends from every source; thread-safe; reports which hosts changed."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._desired: dict[str, ProcessRoutes] = {}
        self._instances: dict[str, dict[InstanceKey, Instance]] = defaultdict(dict)
        self._hosts: dict[str, set[str]] = defaultdict(set)  # host -> process guids routing to it
        self._dirty: set[str] = set()
        # Cloud Controller slice and its indexes
        self._cc_routes: dict[str, CCRoute] = {}
        self._cc_weights: dict[str, dict[str, int]] = defaultdict(dict)  # route guid -> CC process guid -> weight
        self._cc_associations: dict[str, tuple[str, ...]] = {}  # CC process guid -> Diego process guids
        self._cc_hosts: dict[str, set[str]] = defaultdict(set)  # external host -> CC route guids
        self._internal_hosts: dict[str, set[str]] = defaultdict(set)  # internal host -> CC route guids
        self._routes_by_capi: dict[str, set[str]] = defaultdict(set)
        self._capi_by_diego: dict[str, set[str]] = defaultdict(set)
        self._dirty_internal: set[str] = set()
        # platform routes registered by route_registrar jobs: registration -> expiry (monotonic seconds)
        self._registrations: dict[Registration, float] = {}
        self._registered_hosts: dict[str, set[Registration]] = defaultdict(set)
        # TCP routes: external port -> process guids routing it
        self._tcp_ports: dict[int, set[str]] = defaultdict(set)
        self._dirty_tcp: set[int] = set()

    # ---- BBS slice
    def upsert_process(self, process_guid: str, routes: ProcessRoutes) -> None:
        with self._lock:
            old = self._desired.get(process_guid)
            if old == routes:
                return
            self._unindex(process_guid, old)
            self._desired[process_guid] = routes
            self._index(process_guid, routes)
            # Only the hosts (and TCP ports) whose routes to this process changed need rebuilding.
            if old is not None and old.app_guid != routes.app_guid:
                self._dirty.update(route.host for route in set(old.http) | set(routes.http))
            else:
                self._dirty.update(route.host for route in set(old.http if old else ()) ^ set(routes.http))
            self._dirty_tcp.update(route.external_port for route in set(old.tcp if old else ()) ^ set(routes.tcp))
            self._touch_cc_of(process_guid)  # CC routes take their container port from these routes

    def remove_process(self, process_guid: str) -> None:
        with self._lock:
            old = self._desired.pop(process_guid, None)
            self._unindex(process_guid, old)
            self._touch(old)
            self._touch_cc_of(process_guid)  # CC routes mapped to it lose its backends (and its port)
            self._instances.pop(process_guid, None)

    def upsert_instance(self, presence: int, instance: Instance) -> None:
        """Records an instance as BBS reports it; one that does not serve (any more) is removed."""
        if not instance.serving:
            self.remove_instance(instance.process_guid, instance.index, presence, instance.instance_guid)
            return
        with self._lock:
            per_process = self._instances[instance.process_guid]
            key = instance_key(presence, instance)
            if per_process.get(key) == instance:
                return
            per_process[key] = instance
            self._touch_process(instance.process_guid)

    def remove_instance(self, process_guid: str, index: int, presence: int, instance_guid: str) -> None:
        """Removes that one instance; another one at the same index and presence stays."""
        with self._lock:
            per_process = self._instances.get(process_guid)
            if per_process and per_process.pop((index, instance_guid, presence), None) is not None:
                self._touch_process(process_guid)
                if not per_process:
                    del self._instances[process_guid]

    def replace_bbs_state(self, processes: dict[str, ProcessRoutes], instances: dict[str, dict[InstanceKey, Instance]]) -> None:
        """Makes the BBS slice exactly what a full listing says (its instances keyed by `instance_key`;
        those that do not serve are left out); only what differs becomes dirty."""
        listed = {}
        for guid, by_key in instances.items():
            serving = {key: instance for key, instance in by_key.items() if instance.serving}
            if serving:
                listed[guid] = serving
        with self._lock:
            for guid in list(self._desired):
                if guid not in processes:
                    self.remove_process(guid)
            for guid in list(self._instances):
                if guid not in listed:
                    self._touch_process(guid)
                    del self._instances[guid]
            for guid, routes in processes.items():
                self.upsert_process(guid, routes)
            for guid, by_key in listed.items():
                if self._instances.get(guid) != by_key:
                    self._instances[guid] = by_key
                    self._touch_process(guid)

    # ---- Cloud Controller slice (callers validate; see sources/cc_validation.py)
    def upsert_cc_route(self, route: CCRoute) -> None:
        with self._lock:
            old = self._cc_routes.get(route.guid)
            if old == route:
                return
            if old is not None:
                self._unindex_cc_route(old)
            self._cc_routes[route.guid] = route
            (self._internal_hosts if route.internal else self._cc_hosts)[route.host].add(route.guid)
            self._touch_cc_route(route.guid)

    def delete_cc_route(self, guid: str) -> None:
        with self._lock:
            old = self._cc_routes.pop(guid, None)
            if old is not None:
                self._unindex_cc_route(old)

    def map_route(self, route_guid: str, capi_guid: str, weight: int) -> None:
        with self._lock:
            if self._cc_weights[route_guid].get(capi_guid) == weight:
                return
            self._cc_weights[route_guid][capi_guid] = weight
            self._routes_by_capi[capi_guid].add(route_guid)
            self._touch_cc_route(route_guid)

    def unmap_route(self, route_guid: str, capi_guid: str) -> None:
        with self._lock:
            weights = self._cc_weights.get(route_guid, {})
            if weights.pop(capi_guid, None) is None:
                return
            if not weights:
                del self._cc_weights[route_guid]
            self._routes_by_capi[capi_guid].discard(route_guid)
            self._touch_cc_route(route_guid)

    def upsert_association(self, capi_guid: str, diego_guids: tuple[str, ...]) -> None:
        with self._lock:
            old = self._cc_associations.get(capi_guid, ())
            if old == diego_guids:
                return
            for guid in old:
                self._capi_by_diego[guid].discard(capi_guid)
            self._cc_associations[capi_guid] = diego_guids
            for guid in diego_guids:
                self._capi_by_diego[guid].add(capi_guid)
            for route_guid in self._routes_by_capi.get(capi_guid, ()):
                self._touch_cc_route(route_guid)

    def delete_association(self, capi_guid: str) -> None:
        with self._lock:
            for guid in self._cc_associations.pop(capi_guid, ()):
                self._capi_by_diego[guid].discard(capi_guid)
            for route_guid in self._routes_by_capi.get(capi_guid, ()):
                self._touch_cc_route(route_guid)

    def replace_cc_state(self, state: CCState) -> None:
        """Makes the CC slice exactly `state` (BulkSync), in one step under the lock."""
        with self._lock:
            for guid in list(self._cc_routes):
                if guid not in state.routes:
                    self.delete_cc_route(guid)
            for route_guid, capi_guid in [(r, c) for r, ws in self._cc_weights.items() for c in ws]:
                if (route_guid, capi_guid) not in state.mappings:
                    self.unmap_route(route_guid, capi_guid)
            for capi_guid in list(self._cc_associations):
                if capi_guid not in state.associations:
                    self.delete_association(capi_guid)
            for route in state.routes.values():
                self.upsert_cc_route(route)
            for (route_guid, capi_guid), weight in state.mappings.items():
                self.map_route(route_guid, capi_guid, weight)
            for capi_guid, diego_guids in state.associations.items():
                self.upsert_association(capi_guid, diego_guids)

    def cc_state(self) -> CCState:
        with self._lock:
            return CCState(
                dict(self._cc_routes),
                {(r, c): w for r, ws in self._cc_weights.items() for c, w in ws.items()},
                dict(self._cc_associations),
            )

    # ---- platform routes (route_registrar jobs)
    def register(self, registration: Registration, expires_at: float) -> None:
        with self._lock:
            if registration not in self._registrations:
                self._registered_hosts[registration.host].add(registration)
                self._dirty.add(registration.host)
            self._registrations[registration] = expires_at

    def unregister(self, registration: Registration) -> None:
        with self._lock:
            if self._registrations.pop(registration, None) is not None:
                self._drop_registration(registration)

    def expire_registrations(self, now: float) -> int:
        """Drops registrations whose expiry passed; returns how many."""
        with self._lock:
            expired = [r for r, expires_at in self._registrations.items() if expires_at <= now]
            for registration in expired:
                del self._registrations[registration]
                self._drop_registration(registration)
            return len(expired)

    def registrations(self) -> list[Registration]:
        with self._lock:
            return sorted(self._registrations)

    def _drop_registration(self, registration: Registration) -> None:
        hosts = self._registered_hosts[registration.host]
        hosts.discard(registration)
        if not hosts:
            del self._registered_hosts[registration.host]
        self._dirty.add(registration.host)

    # ---- reading
    def take_dirty_hosts(self) -> set[str]:
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            return dirty

    def take_dirty_internal_hosts(self) -> set[str]:
        with self._lock:
            dirty, self._dirty_internal = self._dirty_internal, set()
            return dirty

    def take_dirty_tcp_ports(self) -> set[int]:
        with self._lock:
            dirty, self._dirty_tcp = self._dirty_tcp, set()
            return dirty

    def tcp_ports(self) -> list[int]:
        with self._lock:
            return sorted(port for port, guids in self._tcp_ports.items() if guids)

    def tcp_routes(self, port: int) -> TcpPortRoutes | None:
        """The backends of a router TCP port (every process routing it, as tcp-router pools them), or None
        when no process routes it."""
        with self._lock:
            guids = self._tcp_ports.get(port)
            if not guids:
                return None
            backends: set[Backend] = set()
            for guid in guids:
                for route in self._desired[guid].tcp:
                    if route.external_port != port:
                        continue
                    for instance in self._instances.get(guid, {}).values():
                        backend = instance.backend_for(route.container_port)
                        if backend is not None:
                            backends.add(backend)
            return TcpPortRoutes(port, sorted(backends))

    def hosts(self) -> list[str]:
        with self._lock:
            return sorted(
                {h for h, guids in self._hosts.items() if guids}
                | {h for h, g in self._cc_hosts.items() if g}
                | set(self._registered_hosts)
            )

    def internal_hosts(self) -> list[str]:
        with self._lock:
            return sorted(h for h, guids in self._internal_hosts.items() if guids)

    def internal_service(self, host: str) -> InternalService | None:
        """The VIP and container-address backends of an internal host, or None when it has no route."""
        with self._lock:
            guids = self._internal_hosts.get(host)
            if not guids:
                return None
            route = self._cc_routes[min(guids)]
            destinations = self._cc_destinations(route, container=True)
            _normalize(destinations)
            return InternalService(host, route.vip, destinations)

    def internal_addresses(self) -> dict[str, list[str]]:
        """Service discovery's names (service_discovery.py): for every DesiredLRP `internal-router`
        hostname, its name and `<index>.<name>` mapped to the sorted container addresses of the
        RUNNING, routable instances (what route-emitter registered with service-discovery-controller).
        Names without such an instance are left out. Read-only; O(processes), the lock held only to
        copy what is needed (routes and instances are immutable)."""
        with self._lock:
            taken = [
                (routes.internal, list(self._instances.get(guid, {}).values()))
                for guid, routes in self._desired.items()
                if routes.internal
            ]
        names: dict[str, set[str]] = defaultdict(set)
        for internal, instances in taken:
            for instance in instances:
                if not instance.serving or not instance.instance_address:
                    continue
                for route in internal:
                    names[route.host].add(instance.instance_address)
                    names[f"{instance.index}.{route.host}"].add(instance.instance_address)
        return {name: sorted(addresses) for name, addresses in names.items()}

    def host_routes(self, host: str) -> HostRoutes | None:
        """The routes of one host with their backends, or None when no process routes to it."""
        with self._lock:
            paths: dict[str, list[Destination]] = defaultdict(list)
            services: dict[str, str] = {}
            for guid in sorted(self._hosts.get(host, ())):
                for route in self._desired[guid].http:
                    if route.host != host:
                        continue
                    paths[route.path].append(self._destination(guid, route))
                    if route.route_service_url:
                        services.setdefault(route.path, route.route_service_url)
            # Precedence: where Cloud Controller maps a host+path, its mappings (and weights) replace what
            # DesiredLRPs say for that host+path; elsewhere the DesiredLRP routes stand.
            for route_guid in sorted(self._cc_hosts.get(host, ())):
                route = self._cc_routes[route_guid]
                destinations = self._cc_destinations(route)
                if destinations:
                    paths[route.path] = destinations
            # Platform routes join whatever else serves the host+path, as NATS registrations did in gorouter.
            for path, destination in self._registered_destinations(host):
                paths[path].append(destination)
            if not paths:
                return None
            # A route service is bound to a route (host + path), whoever maps it: every destination of
            # that path carries it, Cloud Controller's mappings and platform registrations included.
            for path, url in services.items():
                for destination in paths.get(path, ()):
                    destination.route_service_url = url
            for destinations in paths.values():
                _normalize(destinations)
            return HostRoutes(host, dict(paths))

    def serving_instance_guids(self) -> set[str]:
        """The instance guids of every serving instance in the BBS slice."""
        with self._lock:
            return {key[1] for per in self._instances.values() for key in per if key[1]}

    def counts(self) -> tuple[int, int]:
        """(routes, backends): http routes known, and serving instances."""
        with self._lock:
            routes = sum(len(r.http) for r in self._desired.values())
            backends = sum(1 for per in self._instances.values() for i in per.values() if i.serving)
            return routes, backends

    # ---- internals
    def _registered_destinations(self, host: str) -> list[tuple[str, Destination]]:
        """One destination per (path, source, TLS name) of the host's registrations, with their VMs as backends."""
        groups: dict[tuple[str, str, str], list[Backend]] = defaultdict(list)
        for r in sorted(self._registered_hosts.get(host, ())):
            tls = bool(r.tls_port)
            san = r.server_cert_domain_san if tls else ""
            backend = Backend(r.address, r.tls_port if tls else r.port, r.tls_port)
            groups[(r.path, r.source, san)].append(backend)
        return [
            (path, Destination(f"{PLATFORM_PROCESS_PREFIX}{source}:{san}", 0, 1, "http1", sorted(backends), san))
            for (path, source, san), backends in sorted(groups.items())
        ]

    def _cc_destinations(self, route: CCRoute, *, container: bool = False) -> list[Destination]:
        """One destination per Diego process of each mapped CC process; a CC process's weight is split
        evenly between its Diego processes (two during a rolling deploy)."""
        shares: list[tuple[str, int, int]] = []
        for capi_guid, weight in sorted(self._cc_weights.get(route.guid, {}).items()):
            diego_guids = self._cc_associations.get(capi_guid, ())
            shares.extend((guid, weight, len(diego_guids)) for guid in diego_guids)
        if not shares:
            return []
        common = math.lcm(*(n for _, _, n in shares))
        destinations = []
        for diego_guid, weight, count in shares:
            process_route = self._process_route(diego_guid, route)
            destination = self._destination(diego_guid, process_route, container=container)
            destination.weight = weight * (common // count)
            destinations.append(destination)
        return destinations

    def _process_route(self, diego_guid: str, route: CCRoute) -> HttpRoute:
        """The container port, protocol and isolation segment a Diego process serves a CC route with:
        those of its own route for that host+path if it has one, else of its first HTTP route, else
        8080, http1 and shared."""
        routes = self._desired.get(diego_guid)
        http = routes.http if routes else ()
        found = next((c for c in http if c.host == route.host and c.path == route.path), http[0] if http else None)
        if found is None:
            return HttpRoute(route.host, route.path, 8080)
        return HttpRoute(route.host, route.path, found.container_port, found.protocol,
                         isolation_segment=found.isolation_segment)

    def _touch_cc_route(self, route_guid: str) -> None:
        route = self._cc_routes.get(route_guid)
        if route is not None:
            (self._dirty_internal if route.internal else self._dirty).add(route.host)

    def _touch_cc_of(self, diego_guid: str) -> None:
        for capi_guid in self._capi_by_diego.get(diego_guid, ()):
            for route_guid in self._routes_by_capi.get(capi_guid, ()):
                self._touch_cc_route(route_guid)

    def _unindex_cc_route(self, route: CCRoute) -> None:
        index = self._internal_hosts if route.internal else self._cc_hosts
        guids = index.get(route.host)
        if guids is not None:
            guids.discard(route.guid)
            if not guids:
                del index[route.host]
        (self._dirty_internal if route.internal else self._dirty).add(route.host)

    def _destination(self, guid: str, route: HttpRoute, *, container: bool = False) -> Destination:
        backends = set()  # one instance listed twice (ordinary and evacuating) is one backend
        for instance in self._instances.get(guid, {}).values():
            if container:
                backend = instance.container_backend_for(route.container_port)
            else:
                backend = instance.backend_for(route.container_port)
            if backend is not None:
                backends.add(backend)
        desired = self._desired.get(guid)
        app_guid = desired.app_guid if desired is not None else ""
        return Destination(
            guid, route.container_port, 1, route.protocol, sorted(backends), app_guid=app_guid,
            isolation_segment=route.isolation_segment,
        )

    def _index(self, guid: str, routes: ProcessRoutes | None) -> None:
        for route in routes.http if routes else ():
            self._hosts[route.host].add(guid)
        for tcp in routes.tcp if routes else ():
            self._tcp_ports[tcp.external_port].add(guid)

    def _unindex(self, guid: str, routes: ProcessRoutes | None) -> None:
        for route in routes.http if routes else ():
            guids = self._hosts.get(route.host)
            if guids is not None:
                guids.discard(guid)
                if not guids:
                    del self._hosts[route.host]
        for tcp in routes.tcp if routes else ():
            guids = self._tcp_ports.get(tcp.external_port)
            if guids is not None:
                guids.discard(guid)
                if not guids:
                    del self._tcp_ports[tcp.external_port]

    def _touch_process(self, guid: str) -> None:
        self._touch(self._desired.get(guid))
        self._touch_cc_of(guid)

    def _touch(self, routes: ProcessRoutes | None) -> None:
        for route in routes.http if routes else ():
            self._dirty.add(route.host)
        for tcp in routes.tcp if routes else ():
            self._dirty_tcp.add(tcp.external_port)


def _normalize(destinations: list[Destination]) -> None:
    for dest, weight in zip(destinations, normalize_weights([d.weight for d in destinations]), strict=True):
        dest.weight = weight
