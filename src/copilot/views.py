"""Merges the sources' slices (copilot.slices) into the views the publisher builds Istio config from:
per external host its paths and weighted destinations (HostRoutes), per internal host its VIP and
destinations (InternalService), per router TCP port its backends (TcpPortRoutes).

It owns the rules that join sources: a route's backends are its process's instances (BBS); where Cloud
Controller maps a host+path, CC's mappings and weights replace what DesiredLRPs say for it, a CC
process's weight split evenly between its Diego processes; platform registrations join whatever else
serves a host+path; a route service bound to a host+path is carried by each of its destinations.
Weights stay relative here; the builder turns them into Istio's percentages once, per route it emits.

It also turns what the slices touched into the keys of each kind of view to rebuild (`take_dirty`),
which keeps one event cheap at 100k routes. A view is read with every slice's lock held, taken in one
order (BBS, CC, registrar): slices never take another's lock, so this cannot deadlock.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Set

from copilot.model import (
    PLATFORM_PROCESS_PREFIX,
    Backend,
    CCRoute,
    Destination,
    HostRoutes,
    HttpRoute,
    InternalService,
    TcpPortRoutes,
    View,
    ViewKind,
)
from copilot.slices.bbs import BbsSlice
from copilot.slices.cc import CcSlice
from copilot.slices.registrar import RegistrarSlice

Key = str | int  # a hostname, or a router TCP port
_DEFAULT_PORT = HttpRoute("", "", 8080)  # what a CC route goes to on a process without HTTP routes


class Views:
    """The slices of every source and the views merged from them; thread-safe (the slices' locks)."""

    def __init__(self, bbs: BbsSlice | None = None, cc: CcSlice | None = None, registrar: RegistrarSlice | None = None) -> None:
        self.bbs = bbs if bbs is not None else BbsSlice()
        self.cc = cc if cc is not None else CcSlice()
        self.registrar = registrar if registrar is not None else RegistrarSlice()

    def take_dirty(self) -> dict[ViewKind, Set[Key]]:
        """Per kind, the keys whose view may have changed since the last call (the caller's to keep)."""
        hosts, ports, processes = self.bbs.take_touched()
        external, internal = self.cc.take_touched(processes)
        registered = self.registrar.take_touched()
        return {
            ViewKind.HOST: hosts | external | registered if external or registered else hosts,
            ViewKind.INTERNAL_HOST: internal,
            ViewKind.TCP_PORT: ports,
        }

    def keys(self, kind: ViewKind) -> set[Key]:
        """Every key of `kind` that has a view."""
        if kind is ViewKind.HOST:
            return self.bbs.hosts() | self.cc.hosts() | self.registrar.hosts()
        if kind is ViewKind.INTERNAL_HOST:
            return self.cc.hosts(internal=True)
        return self.bbs.tcp_ports()

    def view(self, kind: ViewKind, key: Key) -> View | None:
        """The view of one key of `kind`, or None when nothing routes it."""
        if kind is ViewKind.HOST:
            return self.host_routes(key)  # type: ignore[arg-type]
        if kind is ViewKind.INTERNAL_HOST:
            return self.internal_service(key)  # type: ignore[arg-type]
        return self.tcp_routes(key)  # type: ignore[arg-type]

    def host_routes(self, host: str) -> HostRoutes | None:
        """The routes of one external host with their backends, or None when nothing routes it."""
        bbs, cc = self.bbs, self.cc
        with bbs.lock, cc.lock, self.registrar.lock:
            # Precedence: where Cloud Controller maps a host+path, its mappings (and weights) replace what
            # DesiredLRPs say for that host+path; elsewhere the DesiredLRP routes stand. (CC's first, so
            # a replaced DesiredLRP route costs no destination; the paths keep the order they had when
            # DesiredLRP routes came first and CC's replaced them.)
            mapped: dict[str, list[Destination]] = {}
            for cc_route in cc.routes_of_host(host):
                destinations = self._cc_destinations(cc_route)
                if destinations:
                    mapped[cc_route.path] = destinations
            paths: dict[str, list[Destination]] = defaultdict(list)
            services: dict[str, str] = {}
            for guid in sorted(bbs.processes_of_host(host)):
                for route in bbs.http_routes(guid, host):
                    path = route.path
                    if path in mapped:
                        paths.setdefault(path, mapped[path])
                    else:
                        paths[path].append(self._destination(guid, route))
                    if route.route_service_url:
                        services.setdefault(path, route.route_service_url)
            for path, destinations in mapped.items():
                paths[path] = destinations
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
            return HostRoutes(host, dict(paths))

    def internal_service(self, host: str) -> InternalService | None:
        """The VIP and container-address backends of an internal host, or None when it has no route."""
        with self.bbs.lock, self.cc.lock:
            routes = self.cc.routes_of_host(host, internal=True)
            if not routes:
                return None
            route = routes[0]
            return InternalService(host, route.vip, self._cc_destinations(route, container=True))

    def tcp_routes(self, port: int) -> TcpPortRoutes | None:
        """The backends of a router TCP port (every process routing it, as tcp-router pools them), or None
        when no process routes it."""
        bbs = self.bbs
        with bbs.lock:
            guids = bbs.processes_of_port(port)
            if not guids:
                return None
            backends: set[Backend] = set()
            for guid in guids:
                for route in bbs.routes(guid).tcp:  # type: ignore[union-attr] - indexed processes exist
                    if route.external_port != port:
                        continue
                    for instance in bbs.instances(guid):
                        backend = instance.backend_for(route.container_port)
                        if backend is not None:
                            backends.add(backend)
            return TcpPortRoutes(port, sorted(backends))

    # ---- internals (every slice's lock held)
    def _registered_destinations(self, host: str) -> list[tuple[str, Destination]]:
        """One destination per (path, source, TLS name) of the host's registrations, with their VMs as backends."""
        registrations = self.registrar.of_host(host)
        if not registrations:
            return []  # an app's host (nearly every host): nothing to group
        groups: dict[tuple[str, str, str], list[Backend]] = defaultdict(list)
        for r in registrations:
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
        evenly between its Diego processes (two during a rolling deploy): relative weights scaled by the
        least common multiple of the splits, so they stay integers."""
        shares = [(guid, weight, len(guids)) for weight, guids in self.cc.mapped_processes(route.guid) for guid in guids]
        if not shares:
            return []
        common = math.lcm(*(n for _, _, n in shares))
        destinations = []
        for diego_guid, weight, count in shares:
            destination = self._destination(diego_guid, self._process_route(diego_guid, route), container=container)
            destination.weight = weight * (common // count)
            destinations.append(destination)
        return destinations

    def _process_route(self, diego_guid: str, route: CCRoute) -> HttpRoute:
        """The route whose container port, protocol and isolation segment a Diego process serves a CC
        route with (all `_destination` takes of it): its own route for that host+path if it has one, else
        its first HTTP route, else 8080, http1 and shared."""
        routes = self.bbs.routes(diego_guid)
        http = routes.http if routes else ()
        if not http:
            return _DEFAULT_PORT
        if len(http) == 1:  # nearly every process: its one route, whether for this host+path or not
            return http[0]
        return next((c for c in http if c.host == route.host and c.path == route.path), http[0])

    def _destination(self, guid: str, route: HttpRoute, *, container: bool = False) -> Destination:
        backends = set()  # one instance listed twice (ordinary and evacuating) is one backend
        for instance in self.bbs.instances(guid):
            if container:
                backend = instance.container_backend_for(route.container_port)
            else:
                backend = instance.backend_for(route.container_port)
            if backend is not None:
                backends.add(backend)
        desired = self.bbs.routes(guid)
        return Destination(
            guid,
            route.container_port,
            1,
            route.protocol,
            sorted(backends),
            app_guid=desired.app_guid if desired is not None else "",
            isolation_segment=route.isolation_segment,
        )
