"""Diego's records -> the route model, with route-emitter's rules; every payload is validated here.

Instances: only a RUNNING instance whose `routable` is true or unset serves (`Instance.serving`);
UNCLAIMED and CLAIMED ones (no net info yet) and CRASHED ones are translated but never routed,
whatever their payload says (the BBS slice keeps only serving instances). Presence does not
affect serving: an EVACUATING copy keeps serving until it is removed, and so does a SUSPECT one (its
cell vanished) until BBS removes it once the replacement runs. A state or presence Copilot does not
know is reported (copilot_bbs_unrecognized_total) and handled as documented: an unknown state never
serves, an unknown presence is routed like any other.

Bad input stays with its item (see copilot.invalid_input: counted once in
copilot_invalid_input_total{source="bbs",field}, logged once): an instance whose address or
instance address is not an IP address, or is one routes must not reach (loopback, link-local,
unspecified, unless backends.allowed_internal_networks names it), is never routed (`rejected`); a
port mapping with a port outside 1..65535 (0 means "not mapped" for host and TLS proxy ports) is
dropped and the instance's other mappings kept; a bad route entry is skipped and the others kept
(a `cf-router` entry whose isolation_segment is not a name Cloud Controller could have given is one:
routing it as shared could expose an isolated app on the shared routers).
"""

from __future__ import annotations

import json
import logging

from copilot import invalid_input
from copilot.model import (
    PROTOCOLS,
    HttpRoute,
    Instance,
    InternalRoute,
    InvalidRoute,
    PortMapping,
    ProcessRoutes,
    TcpRoute,
    check_backend_address,
    normalize_hostname,
    split_route_hostname,
    validate_isolation_segment,
    validate_mapped_port,
    validate_port,
)
from copilot.protos import bbs_pb2
from copilot.sources.bbs_client import report_unrecognized

log = logging.getLogger(__name__)

STATES = ("UNCLAIMED", "CLAIMED", "RUNNING", "CRASHED")


def process_routes(desired: bbs_pb2.DesiredLRP) -> ProcessRoutes:
    """The routes a DesiredLRP asks for. Bad entries are logged and skipped; the rest are kept."""
    raw = desired.routes.routes
    http: list[HttpRoute] = []
    tcp: list[TcpRoute] = []
    internal: list[InternalRoute] = []
    for entry in _entries(desired.process_guid, raw, "cf-router"):
        hostnames = entry.get("hostnames")
        if not isinstance(hostnames, list):
            _skip(desired.process_guid, "cf-router", InvalidRoute("cf-router.hostnames", "must be a list"))
            continue
        try:
            port = validate_port(entry.get("port"), "cf-router.port")
            protocol = entry.get("protocol") or "http1"
            if protocol not in PROTOCOLS:
                raise InvalidRoute("cf-router.protocol", f"{protocol!r} is not one of {', '.join(PROTOCOLS)}")
            service = entry.get("route_service_url") or ""
            if not isinstance(service, str):
                raise InvalidRoute("cf-router.route_service_url", "must be a string")
            if service and not service.startswith("https"):
                # gorouter drops such a registration whole: never route around a route service.
                raise InvalidRoute("cf-router.route_service_url", f"{service[:200]!r} must be an https URL")
            segment = validate_isolation_segment(entry.get("isolation_segment"), "cf-router.isolation_segment")
        except InvalidRoute as error:
            _skip(desired.process_guid, "cf-router", error)
            continue
        for hostname in hostnames:
            try:
                host, path = split_route_hostname(hostname, "cf-router.hostnames")
            except InvalidRoute as error:
                _skip(desired.process_guid, "cf-router", error)
                continue
            http.append(HttpRoute(host, path, port, protocol, service, segment))
    for entry in _entries(desired.process_guid, raw, "tcp-router"):
        try:
            tcp.append(
                TcpRoute(
                    validate_port(entry.get("external_port"), "tcp-router.external_port"),
                    validate_port(entry.get("container_port"), "tcp-router.container_port"),
                    str(entry.get("router_group_guid") or ""),
                )
            )
        except InvalidRoute as error:
            _skip(desired.process_guid, "tcp-router", error)
    for entry in _entries(desired.process_guid, raw, "internal-router"):
        try:
            internal.append(InternalRoute(normalize_hostname(entry.get("hostname"), "internal-router.hostname")))
        except InvalidRoute as error:
            _skip(desired.process_guid, "internal-router", error)
    return ProcessRoutes(
        tuple(sorted(set(http))), tuple(sorted(set(tcp))), tuple(sorted(set(internal))), desired.log_guid
    )


def instance(actual: bbs_pb2.ActualLRP) -> Instance:
    """The Instance of a listed or created/removed ActualLRP."""
    _check(actual.actual_lrp_key, actual.state, actual.presence)
    return _instance(
        actual.actual_lrp_key,
        actual.actual_lrp_instance_key,
        actual.actual_lrp_net_info,
        actual.state,
        not actual.HasField("routable") or actual.routable,
        actual.availability_zone,
    )


def instance_from_info(
    key: bbs_pb2.ActualLRPKey, instance_key: bbs_pb2.ActualLRPInstanceKey, info: bbs_pb2.ActualLRPInfo
) -> Instance:
    """The Instance after a changed event (`info` is its `after`)."""
    _check(key, info.state, info.presence)
    return _instance(
        key,
        instance_key,
        info.actual_lrp_net_info,
        info.state,
        not info.HasField("Routable") or info.Routable,
        info.availability_zone,
    )


def _check(key: bbs_pb2.ActualLRPKey, state: str, presence: int) -> None:
    where = f"{key.process_guid}/{key.index}"
    if state not in STATES:
        report_unrecognized("ActualLRP.state", state[:64], where)
    if presence not in bbs_pb2.ActualLRP.Presence.values():
        report_unrecognized("ActualLRP.presence", presence, where)


def _instance(key, instance_key, net, state: str, routable: bool, az: str) -> Instance:
    guid = instance_key.instance_guid
    rejected = ""
    for name in ("address", "instance_address"):
        value = getattr(net, name)
        if not value:
            continue  # no net info yet (UNCLAIMED, CLAIMED, CRASHED) or no container address
        try:
            check_backend_address(value, f"actual_lrp_net_info.{name}")
        except InvalidRoute as error:
            rejected = rejected or str(error)
            _report(key, guid, error, value, "instance not routed")
    ports = []
    for mapping in net.ports:
        try:
            ports.append(_port_mapping(mapping))
        except InvalidRoute as error:
            _report(key, guid, error, (mapping.container_port, mapping.host_port, mapping.container_tls_proxy_port,
                                       mapping.host_tls_proxy_port), "port mapping skipped")
    return Instance(
        process_guid=key.process_guid,
        index=key.index,
        instance_guid=guid,
        state=state,
        routable=routable,
        address=net.address,
        instance_address=net.instance_address,
        prefer_instance_address=net.preferred_address == bbs_pb2.ActualLRPNetInfo.INSTANCE,
        ports=tuple(ports),
        availability_zone=az,
        rejected=rejected,
    )


def _port_mapping(mapping: bbs_pb2.PortMapping) -> PortMapping:
    """A port mapping whose every port istiod accepts; a container port is always required."""
    ports = (mapping.container_port, mapping.host_port, mapping.container_tls_proxy_port, mapping.host_tls_proxy_port)
    if ports[0] and max(ports) < 65536:  # the common case, cheap (uint32: never negative)
        return PortMapping(*ports)
    if mapping.container_port == 0:
        raise InvalidRoute("actual_lrp_net_info.ports.container_port", "0 is not a port number")
    ports = [
        validate_mapped_port(getattr(mapping, name), f"actual_lrp_net_info.ports.{name}")
        for name in ("container_port", "host_port", "container_tls_proxy_port", "host_tls_proxy_port")
    ]
    return PortMapping(*ports)


def _report(key: bbs_pb2.ActualLRPKey, guid: str, error: InvalidRoute, value: object, message: str) -> None:
    item = (key.process_guid[:256], key.index, guid[:256], value if isinstance(value, tuple) else str(value)[:256])
    if invalid_input.first_sight("bbs", error.field, item):
        log.warning(
            f"{message} (reported once)",
            extra={"process_guid": key.process_guid, "index": key.index, "instance_guid": guid, "error": str(error)},
        )


def _entries(process_guid: str, raw: dict, router: str) -> list[dict]:
    if router not in raw:
        return []
    try:
        value = json.loads(raw[router])
    except (ValueError, UnicodeDecodeError) as error:
        _skip(process_guid, router, InvalidRoute(router, f"not JSON: {error}"))
        return []
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        _skip(process_guid, router, InvalidRoute(router, "must be a JSON list of objects"))
        return []
    return value


def _skip(process_guid: str, router: str, error: InvalidRoute) -> None:
    """A route entry (or one of its hostnames) skipped: counted and logged the first time it is seen."""
    text = str(error)
    if invalid_input.first_sight("bbs", error.field, (process_guid[:256], text[:256], len(text))):
        if len(text) > 512:
            text = text[:509] + "..."
        log.warning("route skipped", extra={"process_guid": process_guid, "router": router, "error": text})
