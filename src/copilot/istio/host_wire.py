"""Writes the common host's VirtualService and the common service's DestinationRule and ServiceEntry
straight as protobuf wire bytes: exactly the bytes builder.build_host_parts' and builder.build_service's
messages serialize to (deterministically, as the store serializes them), without building the messages.
Setting a field of a upb message from Python costs about a microsecond, and a host has some forty;
joining bytes costs a fraction of that.

The common host, nearly every host of a foundation: no router shards and no instance routing in the
settings; every path of the host has one destination with no route service and a positive weight. The
common service (a destination's objects): no instance routing, no platform TLS name, and no HTTP/2
policy (`http2` only while HTTP/2 is off). Route integrity is covered (the identity port, TLS ports and
the tls-hostname label). Any other is built by the builder; `build_host_encoded` and
`build_service_encoded` pick, so callers never choose.

The wire rules this relies on (proto3, as upb's deterministic serialization writes them):
- A message is the concatenation of its set fields in field-number order, whatever order they were set
  in. So a serialized prefix of higher-numbered fields can follow a lower-numbered one written here: the
  parts that depend on the settings alone (the DestinationRule's traffic policy, the ServiceEntry's
  port, location and resolution, the unknown-route answer) are serialized by the builder's own message
  code once per content (lru_cache keyed by the values they depend on, so never stale) and spliced in.
- A string, bytes or sub-message field is its tag (field number << 3 | 2), its length as a varint
  (seven bits a byte, low first: a length over 127 takes two bytes) and its bytes (strings in UTF-8). A
  repeated one of those is that, once per element, in order. A uint32 is tag (field number << 3 | 0)
  and the value as a varint. No packed repeated scalar occurs in these specs.
- A default value is not written: an empty string (an endpoint without a zone has no locality), a zero
  number, an unset message, an empty repeated field (a route without a context path has no match).
- A map field is a repeated entry message {key = 1, value = 2}; deterministic serialization writes the
  entries sorted by key (bytewise for string keys). The keys and values written here are never empty or
  zero, so each entry has both fields. The endpoint label keys are fixed, their order checked below.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

from copilot.istio.builder import (
    _LABEL_VALUE_RE,
    APPLICATION_ID_LABEL,
    INSTANCE_GUID_LABEL,
    INSTANCE_INDEX_LABEL,
    SERVICE_PORT_NAME,
    TLS_HOSTNAME_LABEL,
    HostParts,
    Service,
    _endpoint_ok,
    _host_rule_base,
    _host_service_entry_base,
    _Identity,
    _integrity,
    _routable_backends,
    application_label,
    build_host_parts,
    build_service,
    destination_service,
    host_unknown_route,
    object_name,
)
from copilot.istio.kinds import DESTINATION_RULE, SERVICE_ENTRY, VIRTUAL_SERVICE, EncodedObject, IstioObject
from copilot.model import HostRoutes, normalize_hostname
from copilot.protos import istio_networking_pb2 as pb
from copilot.settings import GatewaySettings
from copilot.xds.encoding import VARINTS, varint


def _tag(field_number: int, wire_type: int = 2) -> bytes:
    return varint(field_number << 3 | wire_type)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag, its length, its bytes."""
    return tag + varint(len(payload)) + payload


_LEN1, _LEN2, _LEN3, _LEN5, _LEN6, _LEN17 = (_tag(n) for n in (1, 2, 3, 5, 6, 17))
_NUM1, _NUM2 = _tag(1, 0), _tag(2, 0)
_V = VARINTS

# VirtualService: hosts 1, gateways 2, http 3. HTTPRoute: match 1, route 2, name 17.
# HTTPMatchRequest: uri 1. StringMatch: exact 1, prefix 2. HTTPRouteDestination: destination 1.
# Destination: host 1, port 3. PortSelector: number 1.
# DestinationRule: host 1, then the cached traffic policy (2). ServiceEntry: hosts 1, then the cached
# ports, location and resolution (3 to 5), endpoints 6. WorkloadEntry: address 1, ports 2
# (map<string, uint32>), labels 3 (map<string, string>), locality 5.
_PORT_KEY = _field(_LEN1, SERVICE_PORT_NAME.encode())
_APP_KEY, _GUID_KEY, _INDEX_KEY, _TLS_HOSTNAME_KEY = (
    _field(_LEN1, key.encode()) for key in (APPLICATION_ID_LABEL, INSTANCE_GUID_LABEL, INSTANCE_INDEX_LABEL, TLS_HOSTNAME_LABEL)
)
_GUID_KEY_LENGTH, _INDEX_KEY_LENGTH, _TLS_HOSTNAME_KEY_LENGTH = len(_GUID_KEY), len(_INDEX_KEY), len(_TLS_HOSTNAME_KEY)
_ROOT_NAME = _field(_LEN17, b"/")  # HTTPRoute.name of the root route
# The endpoint labels are written in this order: it must be the keys' sorted order (map entries).
_LABEL_ORDER = (APPLICATION_ID_LABEL, INSTANCE_GUID_LABEL, INSTANCE_INDEX_LABEL, TLS_HOSTNAME_LABEL)
if sorted(key.encode() for key in _LABEL_ORDER) != [key.encode() for key in _LABEL_ORDER]:
    raise RuntimeError(f"endpoint label keys {_LABEL_ORDER} are not written in map-entry order")


class _Pieces(NamedTuple):
    """The bytes of a host's VirtualService that depend on the settings alone."""

    gateways: bytes  # VirtualService.gateways: the first shard's Gateway
    unknown_route: bytes  # VirtualService.http: the unknown-route answer of a host without a root route


@functools.lru_cache(maxsize=16)
def _pieces(gateway: str) -> _Pieces:
    unknown = host_unknown_route(pb.HTTPRoute()).SerializeToString(deterministic=True)
    return _Pieces(_field(_LEN2, gateway.encode()), _field(_LEN3, unknown))


def build_host_encoded(
    settings: GatewaySettings, routes: HostRoutes, internal_route_service: Callable[[str], bool] | None = None
) -> HostParts:
    """builder.build_host_parts: the common host's VirtualService written as bytes, any other built as messages."""
    encoded = encode_host_parts(settings, routes)
    return encoded if encoded is not None else build_host_parts(settings, routes, internal_route_service)


def build_service_encoded(settings: GatewaySettings, service: Service) -> list[IstioObject] | list[EncodedObject]:
    """builder.build_service: the common service written as bytes, any other built as messages."""
    encoded = encode_service(settings, service)
    return encoded if encoded is not None else build_service(settings, service)


def encode_common_host(settings: GatewaySettings, routes: HostRoutes) -> list[EncodedObject] | None:
    """builder.build_host's objects as wire bytes if the host and every service it routes to have the
    common shape, else None (the whole host at once, as tests compare it)."""
    parts = encode_host_parts(settings, routes)
    if parts is None:
        return None
    services = [encode_service(settings, service) for service in parts.services]
    if any(objects is None for objects in services):
        return None
    return [*parts.objects, *(obj for objects in services for obj in objects)]  # type: ignore[misc, union-attr]


def encode_host_parts(settings: GatewaySettings, routes: HostRoutes) -> HostParts | None:
    """The host's VirtualService as wire bytes, and its services, if it has the common shape, else None.
    Raises ValueError on a bad host name, as the builder does."""
    if settings.sharded or settings.instance_routing or not routes.paths:
        return None
    for destinations in routes.paths.values():
        if len(destinations) != 1 or destinations[0].route_service_url or destinations[0].weight <= 0:
            return None
    host = normalize_hostname(routes.host, "host")
    try:
        virtual_service, services = _virtual_service(settings, host, routes)
    except IndexError:  # a field of 64 KiB or more (a path that long?): past the varint table, the builder's
        return None
    name = f"{settings.namespace}/{object_name(host)}"
    return HostParts([EncodedObject(VIRTUAL_SERVICE, name, virtual_service)], services)


def encode_service(settings: GatewaySettings, service: Service) -> list[EncodedObject] | None:
    """A service's DestinationRule and ServiceEntry as wire bytes if it has the common shape, else None."""
    dest = service.destination
    if settings.instance_routing or dest.tls_san or (settings.enable_http2 and dest.protocol == "http2"):
        return None
    integrity = _integrity(settings, dest)
    svc = service.host.encode()
    try:
        endpoints = _endpoints(settings, service, integrity)
    except IndexError:
        return None
    host_field = _LEN1 + _V[len(svc)] + svc
    rule = _host_rule_base(settings.outlier_detection, _Identity.of(settings) if integrity else None)
    return [
        EncodedObject(DESTINATION_RULE, service.name, host_field + rule),
        EncodedObject(SERVICE_ENTRY, service.name, host_field + _host_service_entry_base(service.port) + endpoints),
    ]


# The hot paths below write each field inline: its tag, its length looked up in the varint table
# (_V[n] for n below 65536: IndexError past it) and its bytes; a call per field would cost more than it.


def _virtual_service(settings: GatewaySettings, host: str, routes: HostRoutes) -> tuple[bytes, list[Service]]:
    """hosts, gateways, a route per path (longest first, the root last), the unknown route without a
    root; and the services the routes go to, each once, in the builder's order (paths sorted)."""
    pieces = _pieces(settings.ref)
    raw_host = host.encode()
    parts = [_LEN1, _V[len(raw_host)], raw_host, pieces.gateways]
    targets: dict[str, bytes] = {}
    paths = routes.paths
    if len(paths) == 1:
        [(path, [dest])] = paths.items()
        by_path = {path: destination_service(settings, host, dest)}
        services = list(by_path.values())
    else:
        by_path = {path: destination_service(settings, host, paths[path][0]) for path in sorted(paths)}
        first: dict[str, Service] = {}  # each service once, in the builder's order (first use, paths sorted)
        for service in by_path.values():
            first.setdefault(service.name, service)
        services = list(first.values())
    for path in sorted(paths, key=_path_order) if len(paths) > 1 else paths:
        service = by_path[path]
        target = targets.get(service.host)
        if target is None:  # HTTPRoute.route: one HTTPRouteDestination
            svc = service.host.encode()
            selector = _NUM1 + _V[service.port]  # PortSelector{number}
            destination = _LEN1 + _V[len(svc)] + svc + _LEN3 + _V[len(selector)] + selector
            destination = _LEN1 + _V[len(destination)] + destination  # HTTPRouteDestination.destination
            target = targets[service.host] = _LEN2 + _V[len(destination)] + destination
        if path:
            raw = path.encode()
            exact = _LEN1 + _V[len(raw)] + raw  # StringMatch{exact}
            exact = _LEN1 + _V[len(exact)] + exact  # HTTPMatchRequest{uri}
            prefix = _LEN2 + _V[len(raw) + 1] + raw + b"/"  # StringMatch{prefix}
            prefix = _LEN1 + _V[len(prefix)] + prefix
            route = b"".join((_LEN1, _V[len(exact)], exact, _LEN1, _V[len(prefix)], prefix, target, _LEN17, _V[len(raw)], raw))
        else:
            route = target + _ROOT_NAME
        parts += (_LEN3, _V[len(route)], route)
    if "" not in paths:
        parts.append(pieces.unknown_route)
    return b"".join(parts), services


def _path_order(path: str) -> tuple[int, str]:
    """Context paths first, longest first (in characters, as the builder sorts them); the root last."""
    return -len(path), path


def _endpoints(settings: GatewaySettings, service: Service, integrity: bool) -> bytes:
    """The ServiceEntry's endpoints: each routable instance with its port and labels, and its zone."""
    dest = service.destination
    port_key = len(_PORT_KEY) + 1  # the ports entry {key "http", value}: its length before the value's varint
    app_id = application_label(dest).encode()
    app_label = _field(_LEN3, _APP_KEY + _field(_LEN2, app_id)) if app_id else b""  # the same on every endpoint
    parts = []
    for address, plain_port, tls_port, guid, index, zone in _routable_backends(settings, dest):
        port = tls_port if integrity else plain_port
        if not _endpoint_ok(address, port):
            continue
        raw_address = address.encode()
        number = _V[port]
        entry = [_LEN1, _V[len(raw_address)], raw_address, _LEN2, _V[port_key + len(number)], _PORT_KEY, _NUM2, number, app_label]
        if guid and _LABEL_VALUE_RE.fullmatch(guid):
            raw = guid.encode()
            value = _LEN2 + _V[len(raw)] + raw
            index_label = _INDEX_LABELS[index] if 0 <= index < _INDEXED else _index_label(index)
            entry += (_LEN3, _V[_GUID_KEY_LENGTH + len(value)], _GUID_KEY, value, index_label)
            if integrity:
                entry += (_LEN3, _V[_TLS_HOSTNAME_KEY_LENGTH + len(value)], _TLS_HOSTNAME_KEY, value)
        if zone:
            raw_zone = zone.encode()
            entry += (_LEN5, _V[len(raw_zone)], raw_zone)
        body = b"".join(entry)
        parts += (_LEN6, _V[len(body)], body)
    return b"".join(parts)


def _index_label(index: int) -> bytes:
    """The instance-index label entry of an endpoint (WorkloadEntry.labels), written whole."""
    raw = str(index).encode()
    value = _LEN2 + _V[len(raw)] + raw
    return _LEN3 + _V[_INDEX_KEY_LENGTH + len(value)] + _INDEX_KEY + value


_INDEXED = 1024  # instance indexes whose label entry is written once, here
_INDEX_LABELS = [_index_label(index) for index in range(_INDEXED)]
