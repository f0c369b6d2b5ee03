"""Pure functions from routing state to Istio objects: the router's Gateway (HTTP, and HTTPS with a
certificate per SNI name), a catch-all VirtualService answering unknown routes, the gorouter
compatibility EnvoyFilter (router_filter.py), an EnvoyFilter giving HTTPS the HTTP route configuration
(build_shared_routes_filter); per route host a VirtualService whose routes go to services, one per
destination (process and container port) however many hosts route to it: a DestinationRule (the
traffic policy of its one Envoy cluster; a subset per app instance with instance routing) and a
ServiceEntry with STATIC endpoints (destination_service, build_service); per router TCP port a Gateway,
a VirtualService and a ServiceEntry. With router shards (shards.py) a Gateway per shard, and a host's
VirtualService bound to the shards that route it (one per distinct subset of its destinations the
shards route).

Names are derived from the host, port or destination, so two Copilots fed the same state emit identical config.

A last line of defence: an endpoint istiod would refuse (an address that is not an IP, a port outside
1..65535) is left out, counted (copilot_invalid_input_total{source="builder"}) and logged once, and the
host is built with its other endpoints. The sources validate first, so this should never happen.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from collections.abc import Callable
from typing import NamedTuple

from copilot import invalid_input
from copilot.istio import router_filter
from copilot.istio.kinds import (
    DESTINATION_RULE,
    ENVOY_FILTER,
    GATEWAY,
    SERVICE_ENTRY,
    VIRTUAL_SERVICE,
    EncodedObject,
    IstioObject,
    Kind,
)
from copilot.istio.router_filter import (
    APPLICATION_ID_KEY,
    ENDPOINT_METADATA,
    IDENTITY_SERVICE_PORT,
    INSTANCE_ID_KEY,
    INSTANCE_INDEX_KEY,
    build_router_filter,
)
from copilot.istio.shards import suffix
from copilot.model import (
    Backend,
    Destination,
    HostRoutes,
    InternalService,
    InvalidRoute,
    TcpPortRoutes,
    normalize_hostname,
    normalize_weights,
    validate_ip,
)
from copilot.protos import istio_networking_pb2 as pb
from copilot.settings import (
    TLS_VERSIONS,
    Certificate,
    GatewaySettings,
    OutlierDetection,
    RouteServiceSettings,
)

SERVICE_PORT = 8080
SERVICE_PORT_NAME = "http"
# istiod (with the change scripts/build-go-tools makes) copies this endpoint label into the Envoy
# endpoint's hostname, which the router uses as SNI and as the SAN the instance's certificate must name.
TLS_HOSTNAME_LABEL = f"{ENDPOINT_METADATA}/tls-hostname"
# The SNI and SAN of identity-checked clusters until the router filter replaces both with the endpoint's
# hostname: no certificate names it, so without the filter nothing is accepted (fail closed).
IDENTITY_PLACEHOLDER_NAME = "instance-identity.copilot.invalid"
SUBSET_LABEL = "cf-subset"
INSTANCE_LABEL = "cf-instance"
# istiod (with the change scripts/build-go-tools makes) copies these endpoint labels into the Envoy
# endpoint's metadata (see router_filter.ENDPOINT_METADATA), from which the router filter sets
# X-CF-ApplicationID, X-CF-InstanceID and X-CF-InstanceIndex on the request to the instance. Every
# endpoint of a service has the same app guid (it is part of the service's key, _service_key).
APPLICATION_ID_LABEL = f"{ENDPOINT_METADATA}/{APPLICATION_ID_KEY}"
INSTANCE_GUID_LABEL = f"{ENDPOINT_METADATA}/{INSTANCE_ID_KEY}"
INSTANCE_INDEX_LABEL = f"{ENDPOINT_METADATA}/{INSTANCE_INDEX_KEY}"
APP_INSTANCE_HEADER = "x-cf-app-instance"
ROUTER_ERROR_HEADER = "X-Cf-Routererror"
ROUTE_SERVICE_UNSUPPORTED = "route_service_unsupported"
ROUTE_SERVICE_UNSUPPORTED_BODY = "502 Bad Gateway: Support for route services is disabled.\n"
ROUTE_SERVICE_WEBSOCKET_BODY = (
    "503 Service Unavailable: Websocket requests are not supported for routes bound to Route Services.\n"
)
# Route services (GatewaySettings.route_services): the loopback Gateway the route-service proxy hands
# verified requests back to, and the proxy itself as a service (the istio-router job's route-services
# process, on the router's loopback).
ROUTE_SERVICE_PROXY_NAME = "cf-route-service-proxy"
ROUTE_SERVICE_PROXY_HOST = "route-service-proxy.copilot.internal"
# What a route tells the proxy about itself (the proxy trusts them because it listens on loopback only;
# the router filter drops client-sent ones). Must equal route_services.proxy's *_HEADER names.
ROUTE_SERVICE_HOST_HEADER = "x-cf-rs-route-host"
ROUTE_SERVICE_PATH_HEADER = "x-cf-rs-route-path"
ROUTE_SERVICE_URL_HEADER = "x-cf-rs-route-service-url"
ROUTE_SERVICE_EXCLUDED_HEADER = "x-cf-rs-route-excluded-paths"
ROUTE_SERVICE_FORWARDED_PROTO_HEADER = "x-cf-rs-forwarded-proto"
# Internal lookup (RouteServiceSettings.internal_lookup): "true" when the route service is a route of
# this foundation; the proxy then sends the signed request to its own router's HTTP listener.
ROUTE_SERVICE_INTERNAL_HEADER = "x-cf-rs-route-service-internal"
# A token the istio-router job gives its Envoy (environment) and its proxy, which the proxy requires: no
# other process on the router VM can have requests signed.
ROUTE_SERVICE_TOKEN_HEADER = "x-cf-rs-local-token"
ROUTE_SERVICE_TOKEN_ENVIRONMENT = "CF_ROUTE_SERVICES_TOKEN"
_ROUTE_SERVICE_URL_RE = re.compile(r"^https://[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]{1,2040}$")
_CONTEXT_PATH_RE = re.compile(r"^/[A-Za-z0-9\-._~:/@!$&'()*+,;=%]{0,1000}$")
UNKNOWN_ROUTE_NAME = "cf-unknown-route"
# build_shared_routes_filter: the HTTPS connection managers use the HTTP route configuration.
SHARED_ROUTES_FILTER_NAME = "cf-shared-routes"
UNKNOWN_ROUTE_BODY = "404 Not Found: Requested route does not exist.\n"
_LABEL_VALUE_RE = re.compile(r"^(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$")
_HEADER_VALUE_RE = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")

log = logging.getLogger(__name__)


_NAME_UNSAFE_RE = re.compile(r"[^a-z0-9.-]")


@functools.lru_cache(maxsize=1 << 18)
def object_name(host: str) -> str:
    """A DNS-1123 name for a host's objects: readable prefix plus a hash so distinct hosts never collide."""
    readable = _NAME_UNSAFE_RE.sub("-", host.replace("*", "wildcard"))[:200].strip(".-")
    return f"{readable}-{hashlib.sha256(host.encode()).hexdigest()[:10]}"


SERVICE_DOMAIN = "copilot.internal"


class Service(NamedTuple):
    """The shared objects of one destination (a DestinationRule and a ServiceEntry, one Envoy cluster):
    every route host whose routes go to that destination names `host` in its VirtualService. `destination`
    is the one whose content they are built from (any of its hosts' gives the same, see service_id)."""

    name: str  # namespace/name of the DestinationRule and the ServiceEntry
    host: str  # the ServiceEntry's host: what routes name
    port: int  # the service port: IDENTITY_SERVICE_PORT under route integrity
    destination: Destination


def service_id(host: str, dest: Destination) -> str:
    """The name of a destination's shared objects, keyed by everything their content depends on apart
    from the backends (which follow from the process and container port): process, port, protocol (HTTP/2),
    TLS name and app guid (instance subsets). So it is stable while instances come and go, and every
    host routing to one process and port shares it. A platform destination (route registrar) groups
    registrations per host and path, so its backends may differ between hosts: its service is the host's."""
    return _service_id(_service_key(host, dest))


def _service_key(host: str, dest: Destination) -> str:
    """What a service's content depends on apart from its backends (service_id), joined: the one place it is listed."""
    return "\0".join(
        (dest.process_guid, str(dest.container_port), dest.protocol, dest.tls_san, dest.app_guid, "" if dest.on_diego else host)
    )


@functools.lru_cache(maxsize=1 << 18)
def _service_id(key: str) -> str:
    """A service's id from its key, once per destination (a string key and value: the cache holds no
    tuple per service, and a full rebuild leaves the cyclic GC 200,000 fewer objects to look at)."""
    return "s-" + hashlib.sha256(key.encode()).hexdigest()[:16]  # 64 bits: no collision among millions


def destination_service(settings: GatewaySettings, host: str, dest: Destination) -> Service:
    """The shared service a host's route to `dest` goes to."""
    integrity = _integrity(settings, dest)
    sid = _service_id(_service_key(host, dest))
    port = IDENTITY_SERVICE_PORT if integrity else SERVICE_PORT
    return Service(f"{settings.namespace}/{sid}", f"{sid}.{SERVICE_DOMAIN}", port, dest)


def service_object_names(name: str) -> list[tuple[Kind, str]]:
    """(kind, name) of a service's objects, to delete them when the last host stops using it."""
    return [(DESTINATION_RULE, name), (SERVICE_ENTRY, name)]


class HostParts(NamedTuple):
    """What a host is built into: its own objects (VirtualServices) and the shared services they route to,
    each once, in order of first use."""

    objects: list[IstioObject] | list[EncodedObject]
    services: list[Service]


@functools.lru_cache(maxsize=1 << 18)
def subset_name(process_guid: str, container_port: int) -> str:
    return "p-" + hashlib.sha256(f"{process_guid}:{container_port}".encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1 << 18)
def instance_subset_name(process_guid: str, container_port: int, instance_guid: str) -> str:
    return "i-" + hashlib.sha256(f"{process_guid}:{container_port}:{instance_guid}".encode()).hexdigest()[:16]


def build_gateway(settings: GatewaySettings, shard: int = 0) -> IstioObject:
    """The Gateway of one router shard (the first: gateway.name): HTTP, and HTTPS per certificate."""
    bind = settings.shard_bind(shard)
    gateway = pb.Gateway(selector=settings.shard_selector(shard))
    gateway.servers.add(
        port=pb.Port(number=settings.http_port, protocol="HTTP", name="http"),
        hosts=["*"],
        name="http",
        bind=bind,
    )
    if settings.https_port and settings.certificates:
        # Envoy picks the filter chain by SNI: an exact name before a wildcard, and the server with
        # hosts "*" (no SNI match) only when no other one matches.
        servers = [("https-fallback", ("*",), settings.certificates[0])]
        servers += [(f"https-cert-{cert.name}", cert.hosts, cert) for cert in settings.certificates]
        for name, hosts, cert in servers:
            gateway.servers.add(
                port=pb.Port(number=settings.https_port, protocol="HTTPS", name=name),
                hosts=list(hosts),
                name=name,
                bind=bind,
                tls=_server_tls(settings, cert),
            )
    return IstioObject(GATEWAY, settings.shard_ref(shard), gateway)


def http_route_config_name(settings: GatewaySettings, shard: int = 0) -> str:
    """istiod's name for the route configuration of a shard's HTTP server (`http.<port>[.<bind>]`)."""
    bind = settings.shard_bind(shard)
    return f"http.{settings.http_port}" + (f".{bind}" if bind else "")


def build_shared_routes_filter(settings: GatewaySettings, shard: int = 0) -> IstioObject | None:
    """One route configuration for HTTP and HTTPS: the connection managers of every filter chain on the
    shard's HTTPS port (the fallback one and one per certificate) are pointed at the HTTP server's route
    configuration. istiod names a route configuration per HTTPS server and fills each with the same
    virtual hosts (every VirtualService is bound to the whole Gateway and none matches on a port), so
    without this each route host is a virtual host two or three times over in every router, and in
    every full RDS push. What differs per scheme is on the connection manager, not in the routes:
    X-Forwarded-Proto (from the connection), client certificate details (forward_client_cert_details),
    the TLS context. None without HTTPS."""
    if not (settings.https_port and settings.certificates):
        return None
    ef = pb.EnvoyFilter(workload_selector=pb.WorkloadSelector(labels=settings.shard_selector(shard)))
    hcm = pb.EnvoyFilter.ListenerMatch.FilterMatch(name=router_filter._HCM)
    listener = pb.EnvoyFilter.ListenerMatch(
        port_number=settings.https_port, filter_chain=pb.EnvoyFilter.ListenerMatch.FilterChainMatch(filter=hcm)
    )
    value = {
        "name": router_filter._HCM,
        "typed_config": {
            "@type": router_filter._HCM_TYPE,
            "rds": {"route_config_name": http_route_config_name(settings, shard)},
        },
    }
    ef.config_patches.add(
        apply_to=pb.EnvoyFilter.NETWORK_FILTER,
        match=pb.EnvoyFilter.EnvoyConfigObjectMatch(context=pb.EnvoyFilter.GATEWAY, listener=listener),
        patch=pb.EnvoyFilter.Patch(operation=pb.EnvoyFilter.Patch.MERGE, value=router_filter._struct(value)),
    )
    name = SHARED_ROUTES_FILTER_NAME if shard == 0 else f"{SHARED_ROUTES_FILTER_NAME}-{suffix(settings.router_shards[shard])}"
    return IstioObject(ENVOY_FILTER, f"{settings.namespace}/{name}", ef)


def _server_tls(settings: GatewaySettings, cert: Certificate) -> pb.ServerTLSSettings:
    directory = settings.certificate_dir.rstrip("/")
    return pb.ServerTLSSettings(
        mode=pb.ServerTLSSettings.SIMPLE,
        server_certificate=f"{directory}/{cert.name}.crt",
        private_key=f"{directory}/{cert.name}.key",
        min_protocol_version=TLS_VERSIONS[settings.tls_min_version],
        cipher_suites=list(settings.tls_cipher_suites),
    )


def build_router_objects(settings: GatewaySettings) -> list[IstioObject]:
    """The objects that do not depend on routes: the Gateways (one per router shard), the unknown-route
    answer, the router filter (on every router: gateway.selector), with HTTPS a shared-routes filter per shard."""
    shards = range(len(settings.router_shards))
    objects = [
        *(build_gateway(settings, shard) for shard in shards),
        build_unknown_route(settings),
        build_router_filter(
            settings.namespace,
            settings.selector,
            settings.sticky_session_cookies,
            _http1_only(settings),
            trusted_proxy_hops=settings.trusted_proxy_hops,
        ),
    ]
    objects += filter(None, (build_shared_routes_filter(settings, shard) for shard in shards))
    if settings.route_services is not None:
        objects += build_route_service_objects(settings, settings.route_services)
    return objects


def _http1_only(settings: GatewaySettings) -> router_filter.Http1Only | None:
    """HTTP/2 off: the Gateway's HTTPS servers (build_gateway), each certificate's TLS without h2."""
    if settings.enable_http2:
        return None
    if not (settings.https_port and settings.certificates):
        return router_filter.Http1Only()
    directory = settings.certificate_dir.rstrip("/")
    return router_filter.Http1Only(
        https_port=settings.https_port,
        # The first certificate also serves the fallback server (no SNI match): its files come first.
        certificates=tuple((cert.hosts[0], f"{directory}/{cert.name}.crt", f"{directory}/{cert.name}.key")
                           for cert in settings.certificates),
        tls_min_version=settings.tls_min_version,
        tls_cipher_suites=settings.tls_cipher_suites,
    )


def build_route_service_objects(settings: GatewaySettings, route_services: RouteServiceSettings) -> list[IstioObject]:
    """The route-service proxy on the routers' loopback (a service routes can send requests to), and the
    loopback-only Gateway server it hands verified requests back to. Only hosts with a route service
    bind their VirtualService to that Gateway, so it holds their routes alone. Each router shard has
    its own (selecting its routers), as it has its own public Gateway."""
    gateways = []
    for shard in range(len(settings.router_shards)):
        gateway = pb.Gateway(selector=settings.shard_selector(shard))
        gateway.servers.add(
            port=pb.Port(number=route_services.gateway_port, protocol="HTTP", name="route-services"),
            hosts=["*"],
            name="route-services",
            bind="127.0.0.1",
        )
        gateways.append(IstioObject(GATEWAY, settings.shard_route_services_ref(shard), gateway))
    se = pb.ServiceEntry(
        hosts=[ROUTE_SERVICE_PROXY_HOST], location=pb.ServiceEntry.MESH_INTERNAL, resolution=pb.ServiceEntry.STATIC
    )
    se.ports.add(number=route_services.proxy_port, protocol="HTTP", name="http")
    se.endpoints.add(address="127.0.0.1")
    return [*gateways, IstioObject(SERVICE_ENTRY, f"{settings.namespace}/{ROUTE_SERVICE_PROXY_NAME}", se)]


def _unknown_route(route: pb.HTTPRoute, status: int, body: str, error: str = "unknown_route") -> pb.HTTPRoute:
    route.direct_response.CopyFrom(pb.HTTPDirectResponse(status=status, body=pb.HTTPBody(string=body)))
    route.headers.response.set[ROUTER_ERROR_HEADER] = error
    return route


def _add_route_service_refusal(vs: pb.VirtualService, path: str, path_matches: list) -> None:
    """A route bound to a route service fails closed when route services are off (or its route service
    URL cannot be passed on): it answers as gorouter does without route_services_secret, 502 with
    X-Cf-Routererror: route_service_unsupported (WebSocket upgrades too: gorouter checks that route
    services are on first), and never sends the request to the app."""
    route = vs.http.add(name=f"{path or '/'} route service")
    for uri in path_matches:
        if uri is not None:
            route.match.add(uri=uri)
    _unknown_route(route, 502, ROUTE_SERVICE_UNSUPPORTED_BODY, ROUTE_SERVICE_UNSUPPORTED)


def _envoy_literal(value: str) -> str:
    """A header value Envoy sets as it is: `%` starts a command operator in route header values."""
    return value.replace("%", "%%")


def _route_service_url(destinations: list[Destination]) -> str:
    return next((d.route_service_url for d in destinations if d.route_service_url), "")


def _add_route_service_routes(
    vs: pb.VirtualService,
    settings: GatewaySettings,
    route_services: RouteServiceSettings,
    host: str,
    path: str,
    destinations: list[Destination],
    excluded: list[str],
    shards: tuple[int, ...] = (0,),
    service_is_ours: bool = False,
) -> None:
    """gorouter's route service protocol for one route (host + context path), in three parts:

    1. a WebSocket upgrade is refused (503 route_service_unsupported), as gorouter does;
    2. on the loopback Gateway only, where the route-service proxy hands back requests whose signature it
       verified: the app, as any route (X-CF-App-Instance routes too), X-Forwarded-Proto restored;
    3. on the router's Gateway: the route-service proxy, told the route's host, path and service URL
       (and the longer context paths of the host, which are other routes). It signs and sends requests
       without a signature to the route service, checks those that come back with one.
    """
    public = [settings.shard_ref(shard) for shard in shards]
    internal = [settings.shard_route_services_ref(shard) for shard in shards]
    label = path or "/"
    path_matches = [pb.StringMatch(exact=path), pb.StringMatch(prefix=path + "/")] if path else [None]

    websocket = vs.http.add(name=f"{label} route service (websocket)")
    for uri in path_matches:
        match = websocket.match.add(headers={"upgrade": pb.StringMatch(regex="(?i)websocket")}, gateways=public)
        if uri is not None:
            match.uri.CopyFrom(uri)
    _unknown_route(websocket, 503, ROUTE_SERVICE_WEBSOCKET_BODY, ROUTE_SERVICE_UNSUPPORTED)

    if settings.instance_routing:
        first = len(vs.http)
        _add_instance_routes(vs, settings, host, path, path_matches, destinations)
        for route in vs.http[first:]:
            for match in route.match:
                match.gateways[:] = internal
    verified = vs.http.add(name=f"{label} route service (verified)")
    for uri in path_matches:
        match = verified.match.add(gateways=internal)
        if uri is not None:
            match.uri.CopyFrom(uri)
    _add_route_targets(verified, settings, host, destinations)
    # Envoy's loopback listener would say "http"; the proxy passes on what the router saw.
    verified.headers.request.set["x-forwarded-proto"] = f"%REQ({ROUTE_SERVICE_FORWARDED_PROTO_HEADER})%"

    to_proxy = vs.http.add(name=f"{label} route service")
    for uri in path_matches:
        match = to_proxy.match.add(gateways=public)
        if uri is not None:
            match.uri.CopyFrom(uri)
    to_proxy.route.add(
        destination=pb.Destination(host=ROUTE_SERVICE_PROXY_HOST, port=pb.PortSelector(number=route_services.proxy_port))
    )
    headers = to_proxy.headers.request.set
    headers[ROUTE_SERVICE_TOKEN_HEADER] = f"%ENVIRONMENT({ROUTE_SERVICE_TOKEN_ENVIRONMENT})%"
    headers[ROUTE_SERVICE_HOST_HEADER] = host
    headers[ROUTE_SERVICE_PATH_HEADER] = _envoy_literal(path or "/")
    headers[ROUTE_SERVICE_URL_HEADER] = _envoy_literal(_route_service_url(destinations))
    if excluded:
        headers[ROUTE_SERVICE_EXCLUDED_HEADER] = _envoy_literal(" ".join(excluded))
    if service_is_ours:  # internal lookup: the route service is a route of these routers
        headers[ROUTE_SERVICE_INTERNAL_HEADER] = "true"
    to_proxy.retries.SetInParent()  # attempts 0: a route service's answer (a 503 too) is passed on, never retried


def _route_service_ok(path: str, url: str, excluded: list[str]) -> bool:
    """Whether the route's service URL and context paths can be handed to the proxy as header values."""
    paths = [*excluded, *([path] if path else [])]
    return bool(_ROUTE_SERVICE_URL_RE.fullmatch(url)) and all(_CONTEXT_PATH_RE.fullmatch(p) for p in paths)


def build_unknown_route(settings: GatewaySettings) -> IstioObject:
    """A VirtualService for every host: Envoy prefers any exact or wildcard domain over "*", so only
    requests for hosts nobody routes land here: 404 with gorouter's X-Cf-Routererror. Bound to every
    router shard's Gateway: a host a shard does not route is unknown there."""
    vs = pb.VirtualService(hosts=["*"], gateways=[settings.shard_ref(s) for s in range(len(settings.router_shards))])
    _unknown_route(vs.http.add(name="unknown-route"), 404, UNKNOWN_ROUTE_BODY)
    return IstioObject(VIRTUAL_SERVICE, f"{settings.namespace}/{UNKNOWN_ROUTE_NAME}", vs)


def build_host(
    settings: GatewaySettings, routes: HostRoutes, internal_route_service: Callable[[str], bool] | None = None
) -> list[IstioObject]:
    """Every object of one host: its VirtualServices, then each service it routes to (DestinationRule,
    ServiceEntry). The publisher builds the services once per publish however many hosts share them
    (build_host_parts, build_service); this is the same, whole. Raises ValueError on bad input."""
    parts = build_host_parts(settings, routes, internal_route_service)
    return [*parts.objects, *(obj for service in parts.services for obj in build_service(settings, service))]  # type: ignore[misc]


def build_host_parts(
    settings: GatewaySettings, routes: HostRoutes, internal_route_service: Callable[[str], bool] | None = None
) -> HostParts:
    """The VirtualServices of one host and the services (one per destination) they route to. Raises
    ValueError on bad input. internal_route_service: with route services' internal lookup, whether a
    route service URL is a route of this foundation (copilot.route_service_lookup).

    A route's target is its destination's service (destination_service): one Envoy cluster per process
    and port, however many hosts route to it, and a weighted route names several services. With router
    shards, the VirtualService is bound to the Gateways of the shards that route at least one of the
    host's destinations, and holds only what they route; shards routing different subsets of the
    destinations get a VirtualService each (shard_groups). A host no shard routes has no objects."""
    host = normalize_hostname(routes.host, "host")
    name = f"{settings.namespace}/{object_name(host)}"
    groups = shard_groups(settings, routes)
    if not groups:
        return HostParts([], [])
    if settings.sharded:  # the services some shard routes
        routes = HostRoutes(routes.host, _union(routes, [group for _, group in groups]))
    services: dict[str, Service] = {}
    for dest in _unique_destinations(routes):
        service = destination_service(settings, host, dest)
        services.setdefault(service.name, service)
    objects = [
        IstioObject(VIRTUAL_SERVICE, name if i == 0 else _shard_virtual_service_name(settings, host, shards[0]),
                    _virtual_service(settings, host, group, shards, internal_route_service))
        for i, (shards, group) in enumerate(groups)
    ]
    return HostParts(objects, list(services.values()))


def shard_groups(settings: GatewaySettings, routes: HostRoutes) -> list[tuple[tuple[int, ...], HostRoutes]]:
    """The router shards (by index) that route something of the host, grouped by what they route (the
    host's paths with the destinations they accept, in the host's order), first shard first. One group
    in the common case (every destination of a host is in one isolation segment), and by default."""
    if not settings.sharded:
        return [((0,), routes)]
    groups: dict[tuple, tuple[list[int], HostRoutes]] = {}
    for index, shard in enumerate(settings.router_shards):
        accepted = {}
        for path, destinations in routes.paths.items():
            kept = [d for d in destinations if shard.accepts(d.isolation_segment)]
            if kept:
                accepted[path] = kept
        if not accepted:
            continue
        key = tuple((path, tuple(id(d) for d in kept)) for path, kept in accepted.items())
        if key in groups:
            groups[key][0].append(index)
        else:
            groups[key] = ([index], HostRoutes(routes.host, accepted))
    return [(tuple(indexes), group) for indexes, group in groups.values()]


def _union(routes: HostRoutes, groups: list[HostRoutes]) -> dict[str, list[Destination]]:
    """The host's destinations some shard routes (the DestinationRule's and ServiceEntry's), in order."""
    kept = {id(d) for group in groups for ds in group.paths.values() for d in ds}
    paths = {path: [d for d in ds if id(d) in kept] for path, ds in routes.paths.items()}
    return {path: ds for path, ds in paths.items() if ds}


def _shard_virtual_service_name(settings: GatewaySettings, host: str, shard: int) -> str:
    """A host's further VirtualService (its first is named as its other objects): named after the host
    and its first shard, as short as a host's names (object_name)."""
    return f"{settings.namespace}/{object_name(f'{host}~{settings.router_shards[shard].name}')}"


def _virtual_service(
    settings: GatewaySettings,
    host: str,
    routes: HostRoutes,
    shards: tuple[int, ...],
    internal_route_service: Callable[[str], bool] | None = None,
) -> pb.VirtualService:
    vs = pb.VirtualService(hosts=[host], gateways=[settings.shard_ref(s) for s in shards])
    route_services = settings.route_services
    if route_services is not None and any(_route_service_url(ds) for ds in routes.paths.values()):
        vs.gateways.extend(settings.shard_route_services_ref(s) for s in shards)
    # Context paths first, longest first; the root route last.
    for path in sorted(routes.paths, key=lambda p: (-len(p), p)):
        destinations = routes.paths[path]
        path_matches = [pb.StringMatch(exact=path), pb.StringMatch(prefix=path + "/")] if path else [None]
        if _route_service_url(destinations):
            # The longer context paths under this one are other routes: a signature for them is not this route's.
            excluded = sorted(p for p in routes.paths if p != path and (not path or p.startswith(path + "/")))
            if route_services is not None and _route_service_ok(path, _route_service_url(destinations), excluded):
                url = _route_service_url(destinations)
                ours = bool(route_services.internal_lookup and internal_route_service and internal_route_service(url))
                _add_route_service_routes(vs, settings, route_services, host, path, destinations, excluded, shards, ours)
            else:
                _add_route_service_refusal(vs, path, path_matches)
            continue
        if settings.instance_routing:
            _add_instance_routes(vs, settings, host, path, path_matches, destinations)
        route = vs.http.add(name=path or "/")
        for uri in path_matches:
            if uri is not None:
                route.match.add(uri=uri)
        _add_route_targets(route, settings, host, destinations)
    if "" not in routes.paths:
        host_unknown_route(vs.http.add())
    return vs


def host_unknown_route(route: pb.HTTPRoute) -> pb.HTTPRoute:
    """The last route of a host without a root route: the host is known but not this path, gorouter's
    unknown route (404 with X-Cf-Routererror: unknown_route)."""
    route.name = "unknown-route"
    return _unknown_route(route, 404, UNKNOWN_ROUTE_BODY)


def build_service(settings: GatewaySettings, service: Service) -> list[IstioObject]:
    """A destination's DestinationRule (its traffic policy on the service's default cluster: outlier
    detection, TLS to the instances, HTTP/2; with instance routing a subset per instance) and
    ServiceEntry (its endpoints). Raises ValueError on a destination that cannot be served."""
    dest = service.destination
    integrity = _integrity(settings, dest)
    dr = pb.DestinationRule()
    dr.MergeFromString(_host_rule_base(settings.outlier_detection, _Identity.of(settings) if integrity else None))
    dr.host = service.host
    se = pb.ServiceEntry()
    se.MergeFromString(_host_service_entry_base(service.port))
    se.hosts.append(service.host)
    policy = _traffic_policy(settings, dest, integrity)
    if policy is not None:
        # Each part replaces what the base set there (its outlier detection stays).
        for part, value in policy.ListFields():
            getattr(dr.traffic_policy, part.name).CopyFrom(value)
    app_id = application_label(dest)
    for backend in _routable_backends(settings, dest):
        if not _endpoint_ok(backend.address, backend.tls_port if integrity else backend.port):
            continue
        # Map fields are set item by item: a dict handed to a constructor takes Python's generic
        # MutableMapping path, twice as slow (this runs for every instance of every destination).
        endpoint = se.endpoints.add(address=backend.address, locality=backend.availability_zone)
        endpoint.ports[SERVICE_PORT_NAME] = backend.tls_port if integrity else backend.port
        labels = endpoint.labels
        if app_id:
            labels[APPLICATION_ID_LABEL] = app_id
        if backend.instance_guid and _LABEL_VALUE_RE.fullmatch(backend.instance_guid):
            labels[INSTANCE_GUID_LABEL] = backend.instance_guid
            labels[INSTANCE_INDEX_LABEL] = str(backend.index)
            if integrity:
                labels[TLS_HOSTNAME_LABEL] = backend.instance_guid
        if backend.instance_guid and settings.instance_routing and dest.app_guid:
            instance = instance_subset_name(dest.process_guid, dest.container_port, backend.instance_guid)
            labels[INSTANCE_LABEL] = instance
            instance_entry = dr.subsets.add(name=instance)
            instance_entry.labels[INSTANCE_LABEL] = instance
            if policy is not None:
                instance_entry.traffic_policy.CopyFrom(policy)
    return [IstioObject(DESTINATION_RULE, service.name, dr), IstioObject(SERVICE_ENTRY, service.name, se)]


def application_label(dest: Destination) -> str:
    """The value of a destination's endpoints' APPLICATION_ID_LABEL: its app guid, or "" when it has none
    (a platform route) or istiod would refuse it as a label value; such a guid is counted and logged once
    (copilot_invalid_input_total{source="builder",field="app_guid"}), and its routes work without
    X-CF-ApplicationID."""
    app_guid = dest.app_guid
    if not app_guid or _LABEL_VALUE_RE.fullmatch(app_guid):
        return app_guid
    if invalid_input.first_sight("builder", "app_guid", (dest.process_guid[:64], app_guid[:64])):
        log.warning(
            "app guid is not a label value: no X-CF-ApplicationID for its routes (reported once)",
            extra={"process_guid": dest.process_guid, "app_guid": app_guid[:256]},
        )
    return ""


def _add_route_targets(route: pb.HTTPRoute, settings: GatewaySettings, host: str, destinations: list[Destination]) -> None:
    """A route's destinations: each one's service (weighted when several). X-CF-ApplicationID comes from
    the endpoint the router picks (application_label), not from the route."""
    targets = _route_targets(destinations)
    for dest, weight in targets:
        service = destination_service(settings, host, dest)
        target = route.route.add()
        destination = target.destination  # set in place: a message handed to add() would be copied
        destination.host = service.host
        destination.port.number = service.port
        if len(targets) > 1:
            target.weight = weight


def _integrity(settings: GatewaySettings, dest: Destination) -> bool:
    """Whether a destination's instances are reached on their TLS proxy ports with their identity checked:
    every Diego process's once the identity CA is configured, decided by the settings alone, so a host's
    objects do not change shape when its first instances arrive (only its endpoints change)."""
    return bool(settings.instance_identity_ca_file) and not dest.tls_san and dest.on_diego


def _routable_backends(settings: GatewaySettings, dest: Destination) -> list[Backend]:
    """The backends a destination's subset gets: under route integrity only instances with a TLS proxy
    port and a guid to check (fail closed: never the plain port beside them, nor a guid that cannot be a
    label); otherwise those with a plain port (a TLS proxy port alone cannot be verified without the
    identity CA)."""
    if _integrity(settings, dest):
        return [b for b in dest.backends if b.tls_port and _LABEL_VALUE_RE.fullmatch(b.instance_guid)]
    return [b for b in dest.backends if b.port]


def _route_targets(destinations: list[Destination]) -> list[tuple[Destination, int]]:
    """(destination, weight) for a route: its relative weight (copilot.views) turned into Istio's
    percentage: the one place weights are normalised, after a router shard kept what it routes."""
    weights = normalize_weights([dest.weight for dest in destinations]) if destinations else []
    return list(zip(destinations, weights, strict=True))


class _Identity(NamedTuple):
    """The settings TLS to instances' proxy ports depends on (route integrity): a content key."""

    ca_file: str
    certificate_dir: str
    client_certificate: str

    @classmethod
    def of(cls, settings: GatewaySettings) -> _Identity:
        return cls(settings.instance_identity_ca_file, settings.certificate_dir, settings.backend_client_certificate)


def _identity_tls(identity: _Identity, instance_guids: list[str] | None = None) -> pb.ClientTLSSettings:
    """TLS to instances' proxy ports (Diego's instance identity): the certificate must chain to the
    identity CA, and the router presents its backend client certificate. Which name it must carry:
    `instance_guids` (a cluster whose endpoints carry no hostname, as TCP routes), else the endpoint's
    own hostname (its instance guid) through the router filter, which replaces the placeholder name."""
    tls = pb.ClientTLSSettings(
        mode=pb.ClientTLSSettings.SIMPLE,
        ca_certificates=identity.ca_file,
        subject_alt_names=instance_guids or [IDENTITY_PLACEHOLDER_NAME],
        sni=IDENTITY_PLACEHOLDER_NAME if instance_guids is None else "",
    )
    if identity.client_certificate:
        directory = identity.certificate_dir.rstrip("/")
        tls.mode = pb.ClientTLSSettings.MUTUAL
        tls.client_certificate = f"{directory}/{identity.client_certificate}.crt"
        tls.private_key = f"{directory}/{identity.client_certificate}.key"
    return tls


@functools.lru_cache(maxsize=16)
def _placeholder_identity_tls(identity: _Identity) -> bytes:
    """_identity_tls for the endpoints' own hostnames, serialized: the same for every host (of the same settings)."""
    return _identity_tls(identity).SerializeToString(deterministic=True)


@functools.lru_cache(maxsize=16)
def _host_rule_base(outlier: OutlierDetection, identity: _Identity | None) -> bytes:
    """What every host's DestinationRule has before its host and subsets, serialized (its traffic
    policy: outlier detection, and on the identity port TLS to the instances): built once per content."""
    dr = pb.DestinationRule()
    _add_outlier_detection(outlier, dr)  # every subset inherits it (none sets its own)
    if identity is not None:
        # istiod's default cluster of the host (no subset) is on the identity port too: it gets the same
        # TLS, so the router filter's identity check has a validation context there as well.
        dr.traffic_policy.tls.MergeFromString(_placeholder_identity_tls(identity))
    return dr.SerializeToString(deterministic=True)


@functools.lru_cache(maxsize=4)
def _host_service_entry_base(port: int) -> bytes:
    """What every host's ServiceEntry has before its host and endpoints, serialized (STATIC, in the
    mesh, its one port): built once per port."""
    se = pb.ServiceEntry(location=pb.ServiceEntry.MESH_INTERNAL, resolution=pb.ServiceEntry.STATIC)
    se.ports.add(number=port, protocol="HTTP", name=SERVICE_PORT_NAME)
    return se.SerializeToString(deterministic=True)


def _add_outlier_detection(od: OutlierDetection, dr: pb.DestinationRule) -> None:
    """Ejects an endpoint after consecutive locally originated failures only (settings.outlier_detection).
    Istio would otherwise apply Envoy's default of 5 consecutive 5xx responses: its 5xx detector is
    turned off explicitly (a present wrapper holding 0), its gateway-error one stays off (unset)."""
    if od.consecutive_failures <= 0:
        return
    out = dr.traffic_policy.outlier_detection
    out.split_external_local_origin_errors = True
    out.consecutive_local_origin_failures.value = od.consecutive_failures
    out.consecutive_5xx_errors.SetInParent()  # 0: responses never eject
    out.base_ejection_time.FromMilliseconds(round(od.base_ejection_seconds * 1000))
    # Ejections end at the first sweep after their time: sweep at least every 10 s (Envoy's default).
    out.interval.FromMilliseconds(round(min(od.base_ejection_seconds, 10.0) * 1000))
    out.max_ejection_percent = od.max_ejection_percent
    out.min_health_percent = od.min_health_percent


def _traffic_policy(settings: GatewaySettings, dest: Destination, integrity: bool = False) -> pb.TrafficPolicy | None:
    """A subset's policy: TLS to backends that need it (a platform backend's SAN, or under route
    integrity each instance's identity), HTTP/2 to processes whose route says http2 (unless HTTP/2 is
    off: gorouter then reaches them over HTTP/1.1)."""
    http2 = dest.protocol == "http2" and settings.enable_http2
    if not dest.tls_san and not http2 and not integrity:
        return None  # the common case without route integrity, kept cheap: no policy
    policy = pb.TrafficPolicy()
    if dest.tls_san:
        if not settings.upstream_ca_file:
            raise ValueError("a backend needs TLS (tls_port) but gateway.upstream_ca_file is not configured")
        policy.tls.CopyFrom(
            pb.ClientTLSSettings(
                mode=pb.ClientTLSSettings.SIMPLE,
                ca_certificates=settings.upstream_ca_file,
                subject_alt_names=[dest.tls_san],
                sni=dest.tls_san,
            )
        )
    elif integrity:
        policy.tls.MergeFromString(_placeholder_identity_tls(_Identity.of(settings)))
    if http2:
        policy.connection_pool.http.h2_upgrade_policy = pb.ConnectionPoolSettings.HTTPSettings.UPGRADE
    return policy if policy.ListFields() else None


def _instance_targets(destinations: list[Destination]) -> list[tuple[str, Destination, Backend]]:
    """(X-CF-App-Instance value, destination, backend) for every app instance, first one per value."""
    targets: dict[str, tuple[Destination, Backend]] = {}
    for dest in destinations:
        if not _HEADER_VALUE_RE.fullmatch(dest.app_guid):
            continue
        for backend in dest.backends:
            if backend.instance_guid and _LABEL_VALUE_RE.fullmatch(backend.instance_guid):
                targets.setdefault(f"{dest.app_guid}:{backend.index}", (dest, backend))
    return [(value, dest, backend) for value, (dest, backend) in sorted(targets.items())]


def _add_instance_routes(
    vs: pb.VirtualService, settings: GatewaySettings, host: str, path: str, path_matches: list, destinations: list[Destination]
) -> None:
    """X-CF-App-Instance: <app guid>:<index> goes to that instance; an instance the route does not have
    gets 400 with X-Cf-Routererror: unknown_route, as in gorouter."""
    targets = _instance_targets(destinations)
    if not targets:
        return
    for value, dest, backend in targets:
        route = vs.http.add(name=f"{path or '/'} instance {value}")
        for uri in path_matches:
            match = route.match.add(headers={APP_INSTANCE_HEADER: pb.StringMatch(exact=value)})
            if uri is not None:
                match.uri.CopyFrom(uri)
        service = destination_service(settings, host, dest)
        route.route.add(
            destination=pb.Destination(
                host=service.host,
                subset=instance_subset_name(dest.process_guid, dest.container_port, backend.instance_guid),
                port=pb.PortSelector(number=service.port),
            )
        )
    route = vs.http.add(name=f"{path or '/'} unknown instance")
    for uri in path_matches:
        match = route.match.add(headers={APP_INSTANCE_HEADER: pb.StringMatch()})  # present
        if uri is not None:
            match.uri.CopyFrom(uri)
    _unknown_route(route, 400, "400 Bad Request: Requested instance does not exist for this route.\n")


def tcp_object_name(settings: GatewaySettings, port: int) -> str:
    return f"{settings.namespace}/cf-tcp-{port}"


def tcp_gateway_names(settings: GatewaySettings, port: int) -> list[tuple[int, str]]:
    """(shard, Gateway name) of a router TCP port: one per shard serving TCP (RouterShard.serves_tcp),
    the first named as the port's other objects, so the default configuration has just that one."""
    name = tcp_object_name(settings, port)
    serving = [i for i, shard in enumerate(settings.router_shards) if shard.serves_tcp]
    return [(i, name if n == 0 else f"{name}-{suffix(settings.router_shards[i])}") for n, i in enumerate(serving)]


def tcp_service_host(port: int) -> str:
    return f"tcp-{port}.copilot.internal"


def build_tcp(settings: GatewaySettings, routes: TcpPortRoutes) -> list[IstioObject]:
    """A router TCP port (tcp-router's external port): its own Gateway, so adding or removing one never
    touches the HTTP(S) listeners; a VirtualService forwarding it; a ServiceEntry with the instances."""
    port = routes.port
    if port in (settings.http_port, settings.https_port):
        raise ValueError(f"TCP port {port} is the router's HTTP(S) port")
    name = tcp_object_name(settings, port)
    svc = tcp_service_host(port)
    if not tcp_gateway_names(settings, port):
        return []  # every shard routes isolation segments only: no router serves TCP ports
    gateways = []
    for shard, gateway_name in tcp_gateway_names(settings, port):
        gateway = pb.Gateway(selector=settings.shard_selector(shard))
        gateway.servers.add(
            port=pb.Port(number=port, protocol="TCP", name=f"tcp-{port}"),
            hosts=["*"],
            name=f"tcp-{port}",
            bind=settings.shard_bind(shard),
        )
        gateways.append(IstioObject(GATEWAY, gateway_name, gateway))
    vs = pb.VirtualService(hosts=["*"], gateways=[gateway_name for _, gateway_name in tcp_gateway_names(settings, port)])
    tcp = vs.tcp.add()
    tcp.match.add(port=port)
    tcp.route.add(destination=pb.Destination(host=svc, port=pb.PortSelector(number=port)))
    se = pb.ServiceEntry(hosts=[svc], location=pb.ServiceEntry.MESH_INTERNAL, resolution=pb.ServiceEntry.STATIC)
    se.ports.add(number=port, protocol="TCP", name="tcp")
    # Under route integrity the instances are reached on their TLS proxy ports, as tcp-router does with
    # v58 cells: the router presents its client certificate and checks the instances' identity.
    integrity = bool(settings.instance_identity_ca_file) and any(b.tls_port for b in routes.backends)
    backends = [b for b in routes.backends if (b.tls_port and b.instance_guid if integrity else b.port)]
    backends = [b for b in backends if _endpoint_ok(b.address, b.tls_port if integrity else b.port)]
    for backend in backends:
        se.endpoints.add(
            address=backend.address,
            ports={"tcp": backend.tls_port if integrity else backend.port},
            locality=backend.availability_zone,
        )
    dr = pb.DestinationRule(host=svc)
    _add_outlier_detection(settings.outlier_detection, dr)
    if integrity:
        dr.traffic_policy.tls.CopyFrom(_identity_tls(_Identity.of(settings), sorted({b.instance_guid for b in backends})))
    return [
        *gateways,
        IstioObject(VIRTUAL_SERVICE, name, vs),
        IstioObject(SERVICE_ENTRY, name, se),
        IstioObject(DESTINATION_RULE, name, dr),
    ]


def tcp_object_names(settings: GatewaySettings, port: int) -> list[IstioObject]:
    name = tcp_object_name(settings, port)
    gateways = [IstioObject(GATEWAY, n, GATEWAY.message()) for _, n in tcp_gateway_names(settings, port)]
    return [*gateways, *(IstioObject(kind, name, kind.message()) for kind in (VIRTUAL_SERVICE, SERVICE_ENTRY, DESTINATION_RULE))]


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
            if not _endpoint_ok(backend.address, backend.port):
                continue
            se.endpoints.add(
                address=backend.address,
                ports={f"tcp-{dest.container_port}": backend.port},
                labels={SUBSET_LABEL: subset_name(dest.process_guid, dest.container_port)},
                locality=backend.availability_zone,
            )
    return [IstioObject(SERVICE_ENTRY, internal_object_name(settings, host), se)]


def host_object_names(settings: GatewaySettings, host: str) -> list[IstioObject]:
    """Empty placeholders naming a host's own objects (its VirtualServices; the services it routes to are
    shared, the publisher deletes each when its last host stops using it), to delete them when the host goes away."""
    name = f"{settings.namespace}/{object_name(host)}"
    names = [IstioObject(VIRTUAL_SERVICE, name, VIRTUAL_SERVICE.message())]
    for index in range(1, len(settings.router_shards)):  # the further VirtualServices shards may need
        names.append(IstioObject(VIRTUAL_SERVICE, _shard_virtual_service_name(settings, host, index), VIRTUAL_SERVICE.message()))
    return names


def _unique_destinations(routes: HostRoutes) -> list[Destination]:
    return [dest for path in sorted(routes.paths) for dest in routes.paths[path]]


def _check_address(address: str) -> None:
    """Raises ValueError (InvalidRoute) unless `address` is an IP address istiod accepts."""
    validate_ip(address, "address")


def _endpoint_ok(address: str, port: int) -> bool:
    """Whether istiod accepts an endpoint with this address and port; one it would refuse is counted and
    logged once, and the caller leaves it out (never the whole host)."""
    try:
        validate_ip(address, "endpoint.address")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise InvalidRoute("endpoint.port", f"{port!r} is not in 1..65535")
    except InvalidRoute as error:
        if invalid_input.first_sight("builder", error.field, (str(address)[:64], port)):
            log.warning("endpoint left out (reported once)", extra={"error": str(error)})
        return False
    return True
