"""Pure functions from routing state to Istio objects: one Gateway, and per host a VirtualService,
a DestinationRule (a subset per process and port) and a ServiceEntry with STATIC endpoints.

Names are derived from the host, so two Copilots fed the same state emit identical config.
"""

from __future__ import annotations

import functools
import hashlib
import re
import socket
from dataclasses import dataclass, field

from copilot.istio.kinds import DESTINATION_RULE, GATEWAY, SERVICE_ENTRY, VIRTUAL_SERVICE, IstioObject
from copilot.model import Destination, normalize_hostname
from copilot.protos import istio_networking_pb2 as pb
from copilot.routing_table import HostRoutes, InternalService

SERVICE_PORT = 8080
SERVICE_PORT_NAME = "http"
SUBSET_LABEL = "cf-subset"


@dataclass(frozen=True)
class GatewaySettings:
    """Where the router's Gateway lives and what it listens on."""

    namespace: str = "istio-system"
    name: str = "cf-ingress"
    selector: dict[str, str] = field(default_factory=lambda: {"app": "istio-router"})
    http_port: int = 80
    # The address the router's listeners bind ("" = every address, as a router behind a load balancer needs).
    bind: str = ""
    # CA bundle, as a path on the router, that verifies backends reached over TLS (platform routes with
    # a tls_port). Without it such backends are skipped rather than reached unverified.
    upstream_ca_file: str = ""

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@functools.lru_cache(maxsize=1 << 18)
def object_name(host: str) -> str:
    """A DNS-1123 name for a host's objects: readable prefix plus a hash so distinct hosts never collide."""
    readable = re.sub(r"[^a-z0-9.-]", "-", host.replace("*", "wildcard"))[:200].strip(".-")
    return f"{readable}-{hashlib.sha256(host.encode()).hexdigest()[:10]}"


def service_host(host: str) -> str:
    """The ServiceEntry host backing a route host (wildcards cannot be STATIC service hosts)."""
    if host.startswith("*."):
        return f"wildcard-{object_name(host)}.copilot.internal"
    return host


@functools.lru_cache(maxsize=1 << 18)
def subset_name(process_guid: str, container_port: int) -> str:
    return "p-" + hashlib.sha256(f"{process_guid}:{container_port}".encode()).hexdigest()[:16]


def build_gateway(settings: GatewaySettings) -> IstioObject:
    gateway = pb.Gateway(selector=settings.selector)
    gateway.servers.add(
        port=pb.Port(number=settings.http_port, protocol="HTTP", name="http"),
        hosts=["*"],
        name="http",
        bind=settings.bind,
    )
    return IstioObject(GATEWAY, f"{settings.namespace}/{settings.name}", gateway)


def build_host(settings: GatewaySettings, routes: HostRoutes) -> list[IstioObject]:
    """The VirtualService, DestinationRule and ServiceEntry for one host. Raises ValueError on bad input."""
    host = normalize_hostname(routes.host, "host")
    svc = service_host(host)
    name = f"{settings.namespace}/{object_name(host)}"

    vs = pb.VirtualService(hosts=[host], gateways=[settings.ref])
    # Context paths first, longest first; the root route last.
    for path in sorted(routes.paths, key=lambda p: (-len(p), p)):
        destinations = routes.paths[path]
        route = vs.http.add(name=path or "/")
        if path:
            route.match.add(uri=pb.StringMatch(exact=path))
            route.match.add(uri=pb.StringMatch(prefix=path + "/"))
        for dest in destinations:
            target = route.route.add(
                destination=pb.Destination(
                    host=svc,
                    subset=subset_name(dest.process_guid, dest.container_port),
                    port=pb.PortSelector(number=SERVICE_PORT),
                )
            )
            if len(destinations) > 1:
                target.weight = dest.weight

    dr = pb.DestinationRule(host=svc)
    se = pb.ServiceEntry(
        hosts=[svc],
        location=pb.ServiceEntry.MESH_INTERNAL,
        resolution=pb.ServiceEntry.STATIC,
    )
    se.ports.add(number=SERVICE_PORT, protocol="HTTP", name=SERVICE_PORT_NAME)
    seen: set[str] = set()
    for dest in _unique_destinations(routes):
        subset = subset_name(dest.process_guid, dest.container_port)
        if subset in seen:
            continue
        seen.add(subset)
        entry = dr.subsets.add(name=subset, labels={SUBSET_LABEL: subset})
        if dest.tls_san:
            if not settings.upstream_ca_file:
                raise ValueError("a backend needs TLS (tls_port) but gateway.upstream_ca_file is not configured")
            entry.traffic_policy.tls.CopyFrom(
                pb.ClientTLSSettings(
                    mode=pb.ClientTLSSettings.SIMPLE,
                    ca_certificates=settings.upstream_ca_file,
                    subject_alt_names=[dest.tls_san],
                    sni=dest.tls_san,
                )
            )
        for backend in dest.backends:
            _check_address(backend.address)
            se.endpoints.add(
                address=backend.address,
                ports={SERVICE_PORT_NAME: backend.port},
                labels={SUBSET_LABEL: subset},
                locality=backend.availability_zone,
            )
    return [
        IstioObject(VIRTUAL_SERVICE, name, vs),
        IstioObject(DESTINATION_RULE, name, dr),
        IstioObject(SERVICE_ENTRY, name, se),
    ]


def internal_object_name(settings: GatewaySettings, host: str) -> str:
    return f"{settings.namespace}/internal-{object_name(host)}"


def build_internal(settings: GatewaySettings, service: InternalService) -> list[IstioObject]:
    """A ServiceEntry for a container-to-container route: its VIP, and container address endpoints.
    It has no VirtualService, so it is never bound to the router's Gateway."""
    host = normalize_hostname(service.host, "host")
    _check_address(service.vip)
    se = pb.ServiceEntry(
        hosts=[host],
        addresses=[service.vip],
        location=pb.ServiceEntry.MESH_INTERNAL,
        resolution=pb.ServiceEntry.STATIC,
    )
    ports = sorted({dest.container_port for dest in service.destinations}) or [SERVICE_PORT]
    for port in ports:
        se.ports.add(number=port, protocol="TCP", name=f"tcp-{port}")
    for dest in service.destinations:
        for backend in dest.backends:
            _check_address(backend.address)
            se.endpoints.add(
                address=backend.address,
                ports={f"tcp-{dest.container_port}": backend.port},
                labels={SUBSET_LABEL: subset_name(dest.process_guid, dest.container_port)},
                locality=backend.availability_zone,
            )
    return [IstioObject(SERVICE_ENTRY, internal_object_name(settings, host), se)]


def host_object_names(settings: GatewaySettings, host: str) -> list[IstioObject]:
    """Empty placeholders naming the objects of a host, used to delete them when the host goes away."""
    name = f"{settings.namespace}/{object_name(host)}"
    return [IstioObject(kind, name, kind.message()) for kind in (VIRTUAL_SERVICE, DESTINATION_RULE, SERVICE_ENTRY)]


def _unique_destinations(routes: HostRoutes) -> list[Destination]:
    return [dest for path in sorted(routes.paths) for dest in routes.paths[path]]


def _check_address(address: str) -> None:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
    except OSError:
        raise ValueError(f"backend address {address!r} is not an IP address") from None
