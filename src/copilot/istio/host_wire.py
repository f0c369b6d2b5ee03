"""Writes the common host's three specs (VirtualService, DestinationRule, ServiceEntry) straight as
protobuf wire bytes: exactly the bytes builder.build_host's messages serialize to (deterministically, as
the store serializes them), without building the messages. Setting a field of a upb message from Python
costs about a microsecond, and a host has some forty; joining bytes costs a fraction of that.

The common host, nearly every host of a foundation: no router shards and no instance routing in the
settings; every path of the host has one destination, all of one process and port (so the
DestinationRule has no subset), with no route service, no platform TLS name, a positive weight, and no
HTTP/2 subset policy (`http2` only while HTTP/2 is off). Route integrity is covered (the identity port,
TLS ports and the tls-hostname label). Any other host is built by builder.build_host;
`build_host_encoded` picks, so callers never choose.

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
    _HEADER_VALUE_RE,
    _LABEL_VALUE_RE,
    IDENTITY_SERVICE_PORT,
    INSTANCE_GUID_LABEL,
    INSTANCE_INDEX_LABEL,
    SERVICE_PORT,
    SERVICE_PORT_NAME,
    SUBSET_LABEL,
    TLS_HOSTNAME_LABEL,
    _endpoint_ok,
    _host_rule_base,
    _host_service_entry_base,
    _Identity,
    _integrity,
    _routable_backends,
    build_host,
    host_unknown_route,
    object_name,
    service_host,
    subset_name,
)
from copilot.istio.kinds import DESTINATION_RULE, SERVICE_ENTRY, VIRTUAL_SERVICE, EncodedObject, IstioObject
from copilot.model import Destination, HostRoutes, normalize_hostname
from copilot.protos import istio_networking_pb2 as pb
from copilot.settings import GatewaySettings, OutlierDetection
from copilot.xds.encoding import VARINTS, varint

APPLICATION_ID_HEADER = "X-CF-ApplicationID"


def _tag(field_number: int, wire_type: int = 2) -> bytes:
    return varint(field_number << 3 | wire_type)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag, its length, its bytes."""
    return tag + varint(len(payload)) + payload


_LEN1, _LEN2, _LEN3, _LEN5, _LEN6, _LEN7, _LEN17 = (_tag(n) for n in (1, 2, 3, 5, 6, 7, 17))
_NUM1, _NUM2 = _tag(1, 0), _tag(2, 0)
_V = VARINTS

# VirtualService: hosts 1, gateways 2, http 3. HTTPRoute: match 1, route 2, name 17.
# HTTPMatchRequest: uri 1. StringMatch: exact 1, prefix 2. HTTPRouteDestination: destination 1,
# headers 7. Destination: host 1, port 3. PortSelector: number 1. Headers: request 1.
# HeaderOperations: set 1 (map<string, string>).
_APPLICATION_ID_KEY = _field(_LEN1, APPLICATION_ID_HEADER.encode())
# DestinationRule: host 1, then the cached traffic policy (2). ServiceEntry: hosts 1, then the cached
# ports, location and resolution (3 to 5), endpoints 6. WorkloadEntry: address 1, ports 2
# (map<string, uint32>), labels 3 (map<string, string>), locality 5.
_PORT_KEY = _field(_LEN1, SERVICE_PORT_NAME.encode())
_SUBSET_KEY, _GUID_KEY, _INDEX_KEY, _TLS_HOSTNAME_KEY = (
    _field(_LEN1, key.encode()) for key in (SUBSET_LABEL, INSTANCE_GUID_LABEL, INSTANCE_INDEX_LABEL, TLS_HOSTNAME_LABEL)
)
_GUID_KEY_LENGTH, _INDEX_KEY_LENGTH, _TLS_HOSTNAME_KEY_LENGTH = len(_GUID_KEY), len(_INDEX_KEY), len(_TLS_HOSTNAME_KEY)
_ROOT_NAME = _field(_LEN17, b"/")  # HTTPRoute.name of the root route
# The endpoint labels are written in this order: it must be the keys' sorted order (map entries).
_LABEL_ORDER = (SUBSET_LABEL, INSTANCE_GUID_LABEL, INSTANCE_INDEX_LABEL, TLS_HOSTNAME_LABEL)
if sorted(key.encode() for key in _LABEL_ORDER) != [key.encode() for key in _LABEL_ORDER]:
    raise RuntimeError(f"endpoint label keys {_LABEL_ORDER} are not written in map-entry order")


class _Pieces(NamedTuple):
    """The bytes of a host's specs that depend on the settings alone."""

    gateways: bytes  # VirtualService.gateways: the first shard's Gateway
    rule: bytes  # DestinationRule after its host: the traffic policy
    service_entry: bytes  # ServiceEntry after its host: port, location, resolution
    unknown_route: bytes  # VirtualService.http: the unknown-route answer of a host without a root route


@functools.lru_cache(maxsize=16)
def _pieces(gateway: str, outlier: OutlierDetection, identity: _Identity | None) -> _Pieces:
    port = SERVICE_PORT if identity is None else IDENTITY_SERVICE_PORT
    unknown = host_unknown_route(pb.HTTPRoute()).SerializeToString(deterministic=True)
    return _Pieces(
        _field(_LEN2, gateway.encode()),
        _host_rule_base(outlier, identity),
        _host_service_entry_base(port),
        _field(_LEN3, unknown),
    )


def build_host_encoded(
    settings: GatewaySettings, routes: HostRoutes, internal_route_service: Callable[[str], bool] | None = None
) -> list[IstioObject] | list[EncodedObject]:
    """builder.build_host's objects: the common host written as bytes, any other built as messages."""
    encoded = encode_common_host(settings, routes)
    return encoded if encoded is not None else build_host(settings, routes, internal_route_service)


def _common_destination(settings: GatewaySettings, routes: HostRoutes) -> Destination | None:
    """The destination whose endpoints the host's ServiceEntry gets (the first path's, in path order),
    if the host has the common shape; else None."""
    if settings.sharded or settings.instance_routing or not routes.paths:
        return None
    http2 = settings.enable_http2
    first = None
    for destinations in routes.paths.values():
        if len(destinations) != 1:
            return None
        dest = destinations[0]
        if dest.route_service_url or dest.tls_san or dest.weight <= 0 or (http2 and dest.protocol == "http2"):
            return None
        if first is None:
            first = dest
        elif dest.process_guid != first.process_guid or dest.container_port != first.container_port:
            return None
    return routes.paths[min(routes.paths)][0]


def encode_common_host(settings: GatewaySettings, routes: HostRoutes) -> list[EncodedObject] | None:
    """The host's VirtualService, DestinationRule and ServiceEntry as wire bytes if it has the common
    shape, else None. Raises ValueError on a bad host name, as the builder does."""
    dest = _common_destination(settings, routes)
    if dest is None:
        return None
    host = normalize_hostname(routes.host, "host")
    svc = service_host(host).encode()
    name = f"{settings.namespace}/{object_name(host)}"
    integrity = _integrity(settings, dest)
    port = IDENTITY_SERVICE_PORT if integrity else SERVICE_PORT
    pieces = _pieces(settings.ref, settings.outlier_detection, _Identity.of(settings) if integrity else None)
    try:
        virtual_service = _virtual_service(host.encode(), svc, port, routes, pieces)
        endpoints = _endpoints(settings, dest, integrity)
    except IndexError:  # a field of 64 KiB or more (a path that long?): past the varint table, the builder's
        return None
    host_field = _LEN1 + _V[len(svc)] + svc
    return [
        EncodedObject(VIRTUAL_SERVICE, name, virtual_service),
        EncodedObject(DESTINATION_RULE, name, host_field + pieces.rule),
        EncodedObject(SERVICE_ENTRY, name, host_field + pieces.service_entry + endpoints),
    ]


# The hot paths below write each field inline: its tag, its length looked up in the varint table
# (_V[n] for n below 65536: IndexError past it) and its bytes; a call per field would cost more than it.


def _virtual_service(host: bytes, svc: bytes, port: int, routes: HostRoutes, pieces: _Pieces) -> bytes:
    """hosts, gateways, a route per path (longest first, the root last), the unknown route without a root."""
    parts = [_LEN1, _V[len(host)], host, pieces.gateways]
    selector = _NUM1 + _V[port]  # PortSelector{number}
    destination = _LEN1 + _V[len(svc)] + svc + _LEN3 + _V[len(selector)] + selector
    destination = _LEN1 + _V[len(destination)] + destination  # HTTPRouteDestination.destination
    targets: dict[str, bytes] = {}
    paths = routes.paths
    for path in sorted(paths, key=_path_order) if len(paths) > 1 else paths:
        app_guid = paths[path][0].app_guid
        target = targets.get(app_guid)
        if target is None:  # HTTPRoute.route: one HTTPRouteDestination
            target = destination + _application_id(app_guid)
            target = targets[app_guid] = _LEN2 + _V[len(target)] + target
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
    return b"".join(parts)


def _path_order(path: str) -> tuple[int, str]:
    """Context paths first, longest first (in characters, as the builder sorts them); the root last."""
    return -len(path), path


def _application_id(app_guid: str) -> bytes:
    """The target's headers: request set X-CF-ApplicationID, when the app guid can be a header value."""
    if not _HEADER_VALUE_RE.fullmatch(app_guid):
        return b""
    value = app_guid.encode()
    entry = _APPLICATION_ID_KEY + _LEN2 + _V[len(value)] + value  # the map entry {key, value}
    operations = _LEN1 + _V[len(entry)] + entry  # HeaderOperations{set}
    headers = _LEN1 + _V[len(operations)] + operations  # Headers{request}
    return _LEN7 + _V[len(headers)] + headers


def _endpoints(settings: GatewaySettings, dest: Destination, integrity: bool) -> bytes:
    """The ServiceEntry's endpoints: each routable instance with its port and labels, and its zone."""
    subset = _SUBSET_KEY + _field(_LEN2, subset_name(dest.process_guid, dest.container_port).encode())
    subset = _LEN3 + _V[len(subset)] + subset  # labels: cf-subset (the first key)
    port_key = len(_PORT_KEY) + 1  # the ports entry {key "http", value}: its length before the value's varint
    parts = []
    for backend in _routable_backends(settings, dest):
        port = backend.tls_port if integrity else backend.port
        if not _endpoint_ok(backend.address, port):
            continue
        address = backend.address.encode()
        number = _V[port]
        entry = [_LEN1, _V[len(address)], address, _LEN2, _V[port_key + len(number)], _PORT_KEY, _NUM2, number, subset]
        guid = backend.instance_guid
        if guid and _LABEL_VALUE_RE.fullmatch(guid):
            raw = guid.encode()
            value = _LEN2 + _V[len(raw)] + raw
            index = str(backend.index).encode()
            index_value = _LEN2 + _V[len(index)] + index
            entry += (_LEN3, _V[_GUID_KEY_LENGTH + len(value)], _GUID_KEY, value)
            entry += (_LEN3, _V[_INDEX_KEY_LENGTH + len(index_value)], _INDEX_KEY, index_value)
            if integrity:
                entry += (_LEN3, _V[_TLS_HOSTNAME_KEY_LENGTH + len(value)], _TLS_HOSTNAME_KEY, value)
        if backend.availability_zone:
            zone = backend.availability_zone.encode()
            entry += (_LEN5, _V[len(zone)], zone)
        body = b"".join(entry)
        parts += (_LEN6, _V[len(body)], body)
    return b"".join(parts)
