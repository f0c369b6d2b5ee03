"""The route model: the one source of truth for what a route, a backend and a weight are, and how they are
validated; and the views (HostRoutes, InternalService, TcpPortRoutes) copilot.views merges from the
sources' slices and the Istio builder takes as input."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

SSH_PORT = 2222
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME_RE = re.compile(rf"^(?:\*\.)?{_LABEL}(?:\.{_LABEL})*$")
_PATH_SEGMENT_RE = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:@%]+$")
PROTOCOLS = ("http1", "http2")
_MAX_IP_LENGTH = 45  # the longest textual IPv6 address (with an embedded IPv4 address)


class InvalidRoute(ValueError):
    """A route that cannot be served; the message names the offending field."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}")
        self.field = field_name


def normalize_hostname(value: object, field_name: str = "hostname") -> str:
    """Lower-cases and checks an RFC 1123 hostname (an optional leading `*.` wildcard is allowed)."""
    if not isinstance(value, str) or not value:
        raise InvalidRoute(field_name, "must be a non-empty string")
    host = value.strip().lower().rstrip(".")
    if len(host) > 253 or not _HOSTNAME_RE.fullmatch(host):
        raise InvalidRoute(field_name, f"{value!r} is not a valid hostname")
    return host


def normalize_path(value: object, field_name: str = "path") -> str:
    """Returns "" for no path, else `/seg/seg` without a trailing slash; rejects queries, fragments and dot segments."""
    if value is None or value == "" or value == "/":
        return ""
    if not isinstance(value, str):
        raise InvalidRoute(field_name, "must be a string")
    if not value.startswith("/"):
        raise InvalidRoute(field_name, f"{value!r} must start with '/'")
    segments = value.rstrip("/").split("/")[1:]
    if not segments:
        return ""  # only slashes: the root, like "/"
    for segment in segments:
        if segment in ("", ".", "..") or not _PATH_SEGMENT_RE.fullmatch(segment):
            raise InvalidRoute(field_name, f"{value!r} is not a valid context path")
    return "/" + "/".join(segments)


def split_route_hostname(value: object, field_name: str = "hostnames") -> tuple[str, str]:
    """Splits a Diego `cf-router` hostname, which may carry a context path (`host/path`), into (host, path)."""
    if not isinstance(value, str):
        raise InvalidRoute(field_name, "must be a string")
    host, sep, path = value.partition("/")
    return normalize_hostname(host, field_name), normalize_path(sep + path if sep else "", field_name)


MAX_ISOLATION_SEGMENT_LENGTH = 255  # Cloud Controller's names (its database column)


def validate_isolation_segment(value: object, field_name: str) -> str:
    """A route's isolation segment as Cloud Controller writes it into the DesiredLRP: null or "" for
    the shared segment, else a name of at most 255 printable characters (compared as it is with the
    router shards' isolation_segments)."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise InvalidRoute(field_name, f"{_shown(value)} must be a string")
    if len(value) > MAX_ISOLATION_SEGMENT_LENGTH or not value.isprintable() or value != value.strip():
        raise InvalidRoute(field_name, f"{_shown(value)} is not an isolation segment name")
    return value


def validate_port(value: object, field_name: str) -> int:
    """A TCP port 1..65535 that is not Diego's SSH port."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise InvalidRoute(field_name, f"{value!r} is not a port number")
    if value == SSH_PORT:
        raise InvalidRoute(field_name, "port 2222 is Diego's SSH port and is never routed")
    return value


def validate_ip(value: object, field_name: str) -> str:
    """An IPv4 or IPv6 address as istiod and Envoy take an endpoint's: no zone, no leading zeros, no name."""
    if _packed(value) is None:
        raise InvalidRoute(field_name, f"{_shown(value)} is not an IP address")
    return value  # type: ignore[return-value] - _packed accepts only strings


def _packed(value: object) -> bytes | None:
    """The address in network byte order, or None if `value` is not an IP address. inet_pton (C, cheap:
    it runs for every instance of every listing) accepts what Go's netip.ParseAddr does, minus zones."""
    if not isinstance(value, str) or not value or len(value) > _MAX_IP_LENGTH:
        return None
    try:
        return socket.inet_pton(socket.AF_INET6 if ":" in value else socket.AF_INET, value)
    except (OSError, ValueError):
        return None


def validate_mapped_port(value: object, field_name: str) -> int:
    """A port of a Diego port mapping: 1..65535, or 0 where BBS means "none" (a host port or TLS proxy
    port the cell did not map). Anything else istiod would refuse (`port number ... must be in the
    range 1..65535`), so it never gets that far."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 65536:
        raise InvalidRoute(field_name, f"{_shown(value)} is not a port number")
    return value


# Addresses a route must not reach unless the operator allows them (copilot's
# backends.allowed_internal_networks): the router's own host (loopback, where its admin API listens;
# the unspecified address, which connects there too) and link-local addresses (a cloud's metadata
# service at 169.254.169.254). An IPv4-mapped IPv6 address is judged as its IPv4 address.
INTERNAL_NETWORKS = tuple(
    ipaddress.ip_network(n) for n in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "::/128", "::1/128", "fe80::/10")
)
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_IPV4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"


def _masks(networks: Iterable[IPNetwork]) -> tuple[tuple[int, int, int], ...]:
    """(address length, network, netmask) as integers: membership is one AND per network."""
    return tuple((n.max_prefixlen // 8, int(n.network_address), int(n.netmask)) for n in networks)


_INTERNAL = _masks(INTERNAL_NETWORKS)


class BackendAddresses:
    """Which backend addresses may be routed: any valid IP except INTERNAL_NETWORKS, unless an allowed
    network (the operator's allow-list) contains it."""

    def __init__(self, allowed: Iterable[str | IPNetwork] = ()) -> None:
        self.allowed: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in allowed)
        self._allowed = _masks(self.allowed)

    def check(self, value: object, field_name: str) -> str:
        """`value` if it is an IP address a route may reach; else InvalidRoute naming `field_name`."""
        packed = _packed(value)
        if packed is None:
            raise InvalidRoute(field_name, f"{_shown(value)} is not an IP address")
        if packed[:12] == _IPV4_MAPPED_PREFIX:
            packed = packed[12:]
        if not _maybe_internal(packed):
            return value  # type: ignore[return-value] - _packed accepts only strings
        size, ip = len(packed), int.from_bytes(packed, "big")
        internal = next((i for i, (n, net, mask) in enumerate(_INTERNAL) if n == size and ip & mask == net), None)
        if internal is not None and not any(n == size and ip & mask == net for n, net, mask in self._allowed):
            raise InvalidRoute(
                field_name,
                f"{value} is in {INTERNAL_NETWORKS[internal]}, which routes never reach (loopback, link-local or "
                "unspecified) unless backends.allowed_internal_networks names it",
            )
        return value  # type: ignore[return-value]


def _maybe_internal(packed: bytes) -> bool:
    """A cheap first look (true for every address in INTERNAL_NETWORKS): 0/8, 127/8, 169.254/16; ::/127
    (:: and ::1) and fe80::/10. Most addresses stop here; the others are checked against the networks."""
    if len(packed) == 4:
        return packed[0] in (0, 127) or packed[:2] == b"\xa9\xfe"
    return (packed[0] == 0xFE and packed[1] & 0xC0 == 0x80) or packed[:15] == bytes(15)


# The process-wide policy, set from Copilot's configuration at start (`allow_internal_networks`).
_backend_addresses = BackendAddresses()


def allow_internal_networks(networks: Iterable[str | IPNetwork]) -> None:
    """Sets the operator's allow-list (backends.allowed_internal_networks) every source checks against."""
    global _backend_addresses
    _backend_addresses = BackendAddresses(networks)


def check_backend_address(value: object, field_name: str) -> str:
    """`value` if it is an IP address a route may reach under the configured allow-list, else InvalidRoute."""
    return _backend_addresses.check(value, field_name)


def _shown(value: object) -> str:
    """A value for an error message, cut short: bad input can be large."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True, order=True, slots=True)
class HttpRoute:
    """An HTTP route a process asks for: requests for host[/path] go to the process's container port."""

    host: str
    path: str
    container_port: int
    protocol: str = "http1"
    route_service_url: str = ""
    # The isolation segment of the process's space ("" = shared), which router shards route it.
    isolation_segment: str = ""


@dataclass(frozen=True, order=True, slots=True)
class TcpRoute:
    """A TCP route: connections to the router's external port go to the process's container port."""

    external_port: int  # the router's port (one of its router group's reservable ports)
    container_port: int
    # The routing-api router group the DesiredLRP's tcp-router route names ("" when it names none); kept
    # as BBS reports it, the router serves every TCP port it is given.
    router_group_guid: str = ""


@dataclass(frozen=True, order=True, slots=True)
class InternalRoute:
    """A container-to-container route (e.g. app.apps.internal)."""

    host: str


@dataclass(frozen=True)
class ProcessRoutes:
    """Every route one Diego process (DesiredLRP) asks for, and the app it belongs to (its log guid,
    which route-emitter reports to gorouter as the app id)."""

    http: tuple[HttpRoute, ...] = ()
    tcp: tuple[TcpRoute, ...] = ()
    internal: tuple[InternalRoute, ...] = ()
    app_guid: str = ""


@dataclass(frozen=True, order=True, slots=True)
class CCRoute:
    """A route as Cloud Controller knows it: external (host[/path]) or internal (host with a VIP)."""

    guid: str
    host: str
    path: str = ""  # "" for a route without a context path
    internal: bool = False  # a container-to-container route (apps.internal), served by a VIP, not the routers
    vip: str = ""  # an internal route's virtual IP, from Cloud Controller


@dataclass(frozen=True)
class CCState:
    """Cloud Controller's slice: routes by guid, weights by (route guid, CC process guid), and each CC
    process's Diego process guids (`<process guid>-<version>`)."""

    routes: dict[str, CCRoute] = field(default_factory=dict)
    mappings: dict[tuple[str, str], int] = field(default_factory=dict)
    associations: dict[str, tuple[str, ...]] = field(default_factory=dict)


class Backend(NamedTuple):
    """One reachable instance of a process on one container port. A named tuple (immutable, ordered
    and hashed field by field, as a frozen ordered dataclass would be): a view makes one per instance,
    and a tuple is made, hashed and sorted in C (a third of the dataclass's cost)."""

    address: str
    port: int
    tls_port: int = 0
    instance_guid: str = ""
    index: int = 0
    availability_zone: str = ""


@dataclass(frozen=True, slots=True)
class PortMapping:
    container_port: int
    host_port: int
    container_tls_proxy_port: int = 0
    host_tls_proxy_port: int = 0


@dataclass(frozen=True, slots=True)
class Instance:
    """What Copilot keeps of a Diego ActualLRP: enough to decide whether and where to route."""

    process_guid: str
    index: int
    instance_guid: str
    state: str
    routable: bool
    address: str
    instance_address: str
    prefer_instance_address: bool
    ports: tuple[PortMapping, ...] = ()
    availability_zone: str = ""
    # Why Copilot refuses to route this instance although BBS may say it serves (an address that is
    # not an IP, or one routes must not reach); "" when nothing is wrong.
    rejected: str = ""

    @property
    def serving(self) -> bool:
        return self.state == "RUNNING" and self.routable and not self.rejected

    def container_backend_for(self, container_port: int) -> Backend | None:
        """The container address and port, for container-to-container (internal) routes."""
        if not self.serving or container_port == SSH_PORT or not self.instance_address:
            return None
        for mapping in self.ports:
            if mapping.container_port == container_port:
                return Backend(
                    self.instance_address,
                    container_port,
                    mapping.container_tls_proxy_port,
                    self.instance_guid,
                    self.index,
                    self.availability_zone,
                )
        return None

    def backend_for(self, container_port: int) -> Backend | None:
        """The backend for a container port, honouring the preferred address; None if not exposed."""
        if not self.serving or container_port == SSH_PORT:
            return None
        for mapping in self.ports:
            if mapping.container_port != container_port:
                continue
            if self.prefer_instance_address and self.instance_address:
                address, port, tls = self.instance_address, mapping.container_port, mapping.container_tls_proxy_port
            else:
                address, port, tls = self.address, mapping.host_port, mapping.host_tls_proxy_port
            if not address or not (port or tls):  # cells may map only the TLS proxy port
                return None
            return Backend(address, port, tls, self.instance_guid, self.index, self.availability_zone)
        return None


# The process guid prefix of destinations that are platform VMs registered by route registrars, not
# Diego processes.
PLATFORM_PROCESS_PREFIX = "platform:"


@dataclass
class Destination:
    """A weighted target of a route: a process on one of its container ports."""

    process_guid: str
    container_port: int
    weight: int = 1
    protocol: str = "http1"
    backends: list[Backend] = field(default_factory=list)
    # When set, the router reaches these backends over TLS and checks their certificate names this SAN.
    tls_san: str = ""
    # The app (Diego log guid) the process belongs to: X-CF-ApplicationID, and X-CF-App-Instance's guid.
    app_guid: str = ""
    # The route service bound to the route (host + path) this destination serves, "" when none: the
    # router must never send such a route's requests straight to the app.
    route_service_url: str = ""
    # The process's isolation segment ("" = shared, as every platform route): which router shards
    # route this destination (istio/shards.py).
    isolation_segment: str = ""

    @property
    def on_diego(self) -> bool:
        """Whether the backends are Diego app instances (not platform VMs a route registrar registered)."""
        return not self.process_guid.startswith(PLATFORM_PROCESS_PREFIX)

    def content(self) -> tuple:
        """Every field as a hashable tuple (HostRoutes.fingerprint): one entry per field, in field order."""
        return (
            self.process_guid,
            self.container_port,
            self.weight,
            self.protocol,
            tuple(self.backends),
            self.tls_san,
            self.app_guid,
            self.route_service_url,
            self.isolation_segment,
        )


@dataclass(frozen=True, order=True, slots=True)
class Registration:
    """A platform route (api, uaa, ...) registered by our route_registrar job for one VM; it expires
    unless renewed."""

    host: str
    path: str
    address: str
    port: int
    tls_port: int = 0
    server_cert_domain_san: str = ""
    source: str = ""


class ViewKind(Enum):
    """The kinds of view, each keyed by its own key: what the publisher rebuilds when a key is touched."""

    HOST = "host"  # an external hostname the routers serve: HostRoutes
    INTERNAL_HOST = "internal host"  # a container-to-container hostname with a VIP: InternalService
    TCP_PORT = "tcp port"  # a router TCP port: TcpPortRoutes


@dataclass
class HostRoutes:
    """The view of one external hostname: everything needed to build its Istio config."""

    host: str
    # path ("" for the root) -> weighted destinations, in a stable order; weights are relative (the
    # builder turns them into Istio's percentages, for the destinations a router actually routes)
    paths: dict[str, list[Destination]]

    def fingerprint(self) -> int:
        """A hash of everything the view holds (host, paths in order, every field of every destination):
        two views with one fingerprint are equal but for a collision of 64-bit hashes (strings' are keyed
        per process; a tuple's hash changes whenever one element's does, so a change of one number alone,
        a port, a weight, an index, never collides). The publisher skips a host whose view has the
        fingerprint of the one its objects were last built from."""
        return hash((self.host, tuple((path, tuple(d.content() for d in ds)) for path, ds in self.paths.items())))


@dataclass
class InternalService:
    """The view of a container-to-container route: a host with its VIP, and the instances behind it
    (container addresses)."""

    host: str
    vip: str
    destinations: list[Destination]


@dataclass
class TcpPortRoutes:
    """The view of a router TCP port (tcp-router's external port): the instances its connections go to."""

    port: int
    backends: list[Backend]


View = HostRoutes | InternalService | TcpPortRoutes


def normalize_weights(weights: list[int]) -> list[int]:
    """Scales positive weights to integers summing to exactly 100 (largest remainder, ties in the given order).

    With more than 100 destinations some would round to 0; every destination keeps at least 1, so the
    sum is then the number of destinations.
    """
    if not weights:
        return []
    if any(w <= 0 for w in weights):
        raise ValueError("weights must be positive")
    if len(weights) == 1:
        return [100]  # the common case (one destination): what the general way below gives, without its cost
    if len(weights) >= 100:
        return [1] * len(weights)
    # Shares below 1 are raised to 1 and the others split what is left, until no share falls below 1.
    floored: set[int] = set()
    while True:
        budget = 100 - len(floored)
        total = sum(w for i, w in enumerate(weights) if i not in floored)
        exact = {i: w * budget / total for i, w in enumerate(weights) if i not in floored}
        low = {i for i, x in exact.items() if x < 1}
        if not low:
            break
        floored |= low
    result = [1 if i in floored else int(exact[i]) for i in range(len(weights))]
    # Largest remainder over the shares that were not floored; ties go to the earlier destination.
    shortfall = 100 - sum(result)
    for i in sorted(exact, key=lambda i: (-(exact[i] - int(exact[i])), i))[:shortfall]:
        result[i] += 1
    return result
