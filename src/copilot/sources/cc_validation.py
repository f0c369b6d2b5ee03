"""Validation of what Cloud Controller sends: every problem names its field; hostnames are lower-cased."""

from __future__ import annotations

import ipaddress

from copilot.model import CCRoute, InvalidRoute, normalize_hostname, normalize_path
from copilot.protos import cc_copilot_pb2 as api

MAX_WEIGHT = 128


def route(message: api.Route, field: str = "route") -> CCRoute:
    if not message.guid:
        raise InvalidRoute(f"{field}.guid", "is required")
    if not message.host:
        raise InvalidRoute(f"{field}.host", "is required")
    host = normalize_hostname(message.host, f"{field}.host")
    if host.startswith("*.") and message.internal:
        raise InvalidRoute(f"{field}.host", "an internal route cannot be a wildcard")
    path = normalize_path(message.path, f"{field}.path")
    vip = message.vip
    if message.internal:
        if not vip:
            raise InvalidRoute(f"{field}.vip", "is required for an internal route")
        try:
            ipaddress.ip_address(vip)
        except ValueError:
            raise InvalidRoute(f"{field}.vip", f"{vip!r} is not an IP address") from None
        if path:
            raise InvalidRoute(f"{field}.path", "an internal route cannot have a path")
    return CCRoute(message.guid, host, path, message.internal, vip if message.internal else "")


def mapping(message: api.RouteMapping, field: str = "route_mapping") -> tuple[str, str, int]:
    """(route_guid, capi_process_guid, weight)."""
    if not message.capi_process_guid:
        raise InvalidRoute(f"{field}.capi_process_guid", "is required")
    if not message.route_guid:
        raise InvalidRoute(f"{field}.route_guid", "is required")
    if not 1 <= message.route_weight <= MAX_WEIGHT:
        raise InvalidRoute(f"{field}.route_weight", f"{message.route_weight} is outside 1..{MAX_WEIGHT}")
    return message.route_guid, message.capi_process_guid, message.route_weight


def association(
    message: api.CapiDiegoProcessAssociation, field: str = "capi_diego_process_association"
) -> tuple[str, tuple[str, ...]]:
    if not message.capi_process_guid:
        raise InvalidRoute(f"{field}.capi_process_guid", "is required")
    guids = tuple(sorted(set(message.diego_process_guids)))
    if not guids or any(not g for g in guids):
        raise InvalidRoute(f"{field}.diego_process_guids", "at least one non-empty diego process guid is required")
    return message.capi_process_guid, guids
