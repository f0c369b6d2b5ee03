"""Validation of what Cloud Controller sends: every problem names its field; hostnames are lower-cased.

Every field is bounded before it is looked at, so an oversized value is refused in time linear in the
bound and the refusal never repeats it: guids (MAX_GUID_LENGTH), hosts (a hostname's 253 characters),
paths (MAX_PATH_LENGTH), vips, the Diego process guids of an association (MAX_DIEGO_PROCESS_GUIDS), and
the entries of each list of a BulkSync (MAX_BULK_ENTRIES).
"""

from __future__ import annotations

import ipaddress

from copilot.model import CCRoute, InvalidRoute, normalize_hostname, normalize_path
from copilot.protos import cc_copilot_pb2 as api

MAX_WEIGHT = 128
# CC's guids are UUIDs (36 characters); a Diego process guid is "<process guid>-<process version>" (73).
MAX_GUID_LENGTH = 256
# A hostname's 253 characters, and the trailing dot of its absolute form.
MAX_HOST_LENGTH = 254
# A context path is a URL prefix matched by the router: generous, far beyond what apps route by.
MAX_PATH_LENGTH = 1024
MAX_VIP_LENGTH = 64  # an IPv6 address in its longest text form (45) with a zone
# One Diego process per version of a CC process: one, two during a restart or restage.
MAX_DIEGO_PROCESS_GUIDS = 1000
# Per list (routes, route_mappings, capi_diego_process_associations) of one BulkSync. 100,000 routes with
# 125,000 mappings and 100,000 associations serialize to about 31 MB (see cc_api.MAX_BULK_SYNC_BYTES).
MAX_BULK_ENTRIES = 1_000_000


def route(message: api.Route, field: str = "route") -> CCRoute:
    guid(message.guid, f"{field}.guid")
    if not message.host:
        raise InvalidRoute(f"{field}.host", "is required")
    _bounded(message.host, f"{field}.host", MAX_HOST_LENGTH)
    host = normalize_hostname(message.host, f"{field}.host")
    if host.startswith("*.") and message.internal:
        raise InvalidRoute(f"{field}.host", "an internal route cannot be a wildcard")
    _bounded(message.path, f"{field}.path", MAX_PATH_LENGTH)
    path = normalize_path(message.path, f"{field}.path")
    vip = message.vip
    if message.internal:
        if not vip:
            raise InvalidRoute(f"{field}.vip", "is required for an internal route")
        _bounded(vip, f"{field}.vip", MAX_VIP_LENGTH)
        try:
            ipaddress.ip_address(vip)
        except ValueError:
            raise InvalidRoute(f"{field}.vip", f"{vip!r} is not an IP address") from None
        if path:
            raise InvalidRoute(f"{field}.path", "an internal route cannot have a path")
    return CCRoute(message.guid, host, path, message.internal, vip if message.internal else "")


def mapping(message: api.RouteMapping, field: str = "route_mapping") -> tuple[str, str, int]:
    """(route_guid, capi_process_guid, weight)."""
    guid(message.capi_process_guid, f"{field}.capi_process_guid")
    guid(message.route_guid, f"{field}.route_guid")
    if not 1 <= message.route_weight <= MAX_WEIGHT:
        raise InvalidRoute(f"{field}.route_weight", f"{message.route_weight} is outside 1..{MAX_WEIGHT}")
    return message.route_guid, message.capi_process_guid, message.route_weight


def association(
    message: api.CapiDiegoProcessAssociation, field: str = "capi_diego_process_association"
) -> tuple[str, tuple[str, ...]]:
    guid(message.capi_process_guid, f"{field}.capi_process_guid")
    entries(len(message.diego_process_guids), f"{field}.diego_process_guids", MAX_DIEGO_PROCESS_GUIDS)
    guids = tuple(sorted(set(message.diego_process_guids)))
    if not guids or any(not g for g in guids):
        raise InvalidRoute(f"{field}.diego_process_guids", "at least one non-empty diego process guid is required")
    for value in guids:
        _bounded(value, f"{field}.diego_process_guids", MAX_GUID_LENGTH)
    return message.capi_process_guid, guids


def guid(value: str, field: str) -> str:
    """A required guid of at most MAX_GUID_LENGTH characters."""
    if not value:
        raise InvalidRoute(field, "is required")
    return _bounded(value, field, MAX_GUID_LENGTH)


def entries(count: int, field: str, limit: int = MAX_BULK_ENTRIES) -> None:
    if count > limit:
        raise InvalidRoute(field, f"{count} entries, more than {limit}")


def _bounded(value: str, field: str, limit: int) -> str:
    if len(value) > limit:
        raise InvalidRoute(field, f"{len(value)} characters, more than {limit}")
    return value
