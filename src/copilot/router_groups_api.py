"""routing-api's router groups, the part of routing-api Cloud Controller and the cf CLI call, served by
Copilot now that the Istio tier has no routing-api (docs/operating.md, "TCP domains and TCP routes").

This module owns the router groups: their model and JSON (`{"guid","name","type","reservable_ports"}`),
the validation of `reservable_ports`, and the HTTP semantics of `/routing/v1/router_groups` (GET, with
`?name=`; POST; PUT `/<guid>`; DELETE `/<guid>`) behind UAA-token authorization (uaa_token.py), served
by an HTTPS listener (https_listener.py). Cloud Controller reaches it as routing-api, at
`https://api.<system domain>/routing`, through the routers: a platform route to this listener.

Router groups are configuration: the copilot job's `routing_api.router_groups` property (routing-api's
property of the same name seeded its database once; here it is authoritative on every deploy, so every
Copilot instance serves the same groups and nothing is stored). A group's guid is the configured one, or
derived from its name, so it is the same on every instance and across restarts (Cloud Controller keeps
it in its domains). Writes are checked as routing-api checks them (scope, unknown guid, body) and then,
if they would change the groups, refused with 405 naming the property; a write that changes nothing
(a PUT of the current ports, a POST of an existing group) answers as routing-api does.

TCP routes themselves are not served here: Copilot reads them from the DesiredLRPs' `tcp-router` routes
in the BBS (route-emitter's and tcp-router's part), so `/routing/v1/tcp_routes` and the HTTP routes API
answer 404.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter

from copilot.https_listener import DEFAULT_LIMITS, ConnectionLimits, HttpsListener, Request, Response
from copilot.metrics import REGISTRY
from copilot.uaa_token import TokenError, TokenValidator

log = logging.getLogger(__name__)

READ_SCOPE = "routing.router_groups.read"
WRITE_SCOPE = "routing.router_groups.write"
TYPES = ("tcp", "http")
MIN_PORT, MAX_PORT = 1024, 65535
COLLECTION = "/routing/v1/router_groups"
# Guids of groups configured without one: uuid5(this namespace, name).
GUID_NAMESPACE = uuid.UUID("5d0c6f2e-7a8b-5c1d-9e3f-4a2b6c8d0e1f")
PROPERTY = "routing_api.router_groups"
_PORT_RE = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$")

REQUESTS = Counter(
    "copilot_routing_api_requests_total", "Router-groups API requests answered, by method and status",
    ["method", "code"], registry=REGISTRY,
)
CONNECTIONS_REFUSED = Counter(
    "copilot_routing_api_connections_refused_total",
    "Router-groups API connections closed unanswered (over the connection limit, TLS handshake failed or too "
    "slow, request not received in time)",
    ["reason"], registry=REGISTRY,
)


class RouterGroupError(ValueError):
    """A router group (or its reservable_ports) that routing-api would not accept: the field and why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class RouterGroup:
    guid: str
    name: str
    type: str
    reservable_ports: str

    @property
    def ports(self) -> tuple[tuple[int, int], ...]:
        return parse_reservable_ports(self.reservable_ports) if self.reservable_ports else ()

    def to_json(self) -> dict:
        return {"guid": self.guid, "name": self.name, "type": self.type, "reservable_ports": self.reservable_ports}


def default_guid(name: str) -> str:
    return str(uuid.uuid5(GUID_NAMESPACE, name))


def parse_reservable_ports(text: object) -> tuple[tuple[int, int], ...]:
    """`reservable_ports` ("1024-1033", "1024,1030-1040"): a comma list of ports and ranges, each within
    1024-65535, ascending and not overlapping. Returns the (first, last) ranges; raises RouterGroupError."""
    if not isinstance(text, str):
        raise _ports_error('must be a string such as "1024-1033"')
    ranges: list[tuple[int, int]] = []
    for entry in text.split(","):
        entry = entry.strip()
        match = _PORT_RE.fullmatch(entry)
        if not match:
            raise _ports_error(f"{entry[:40]!r} is not a port or a range of ports (A-B)")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) else first
        for port in (first, last):
            if not MIN_PORT <= port <= MAX_PORT:
                raise _ports_error(f"port {port} is not between {MIN_PORT} and {MAX_PORT}")
        if first > last:
            raise _ports_error(f"range {entry} must start with its lower port")
        if ranges and first <= ranges[-1][1]:
            previous = f"{ranges[-1][0]}-{ranges[-1][1]}"
            raise _ports_error(f"{entry} overlaps or comes before {previous} (ranges must ascend without overlapping)")
        ranges.append((first, last))
    return tuple(ranges)


def _ports_error(message: str) -> RouterGroupError:
    return RouterGroupError("reservable_ports", f"reservable_ports: {message}")


def router_group(name: object, type_: object, reservable_ports: object, guid: object = None) -> RouterGroup:
    """A validated router group: a tcp group needs reservable ports, an http group must have none."""
    if not isinstance(name, str) or not name.strip():
        raise RouterGroupError("name", "name is required")
    if type_ not in TYPES:
        raise RouterGroupError("type", f"type must be one of {', '.join(TYPES)}, not {str(type_)[:20]!r}")
    ports = "" if reservable_ports is None else reservable_ports
    if type_ == "tcp":
        if ports == "":
            raise RouterGroupError("reservable_ports", f"router group {name!r} of type tcp needs reservable_ports")
        parse_reservable_ports(ports)
    elif ports != "":
        raise RouterGroupError("reservable_ports", f"router group {name!r} of type http cannot have reservable_ports")
    if guid is None:
        guid = default_guid(name)
    elif not isinstance(guid, str) or not re.fullmatch(r"[A-Za-z0-9-]{1,64}", guid):
        raise RouterGroupError("guid", f"guid {str(guid)[:70]!r} must be letters, digits and '-'")
    assert isinstance(ports, str)
    return RouterGroup(guid, name, type_, ports)


def _error(status: int, name: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(status, {"name": name, "message": message}, headers or {})


def _process_error(message: str) -> Response:
    return _error(400, "ProcessRequestError", f"Cannot process request: {message}")


def _read_only(what: str) -> Response:
    return _error(
        405, "ReadOnlyError",
        f"Router groups are configuration on the Istio routing tier: {what} needs a change of the copilot job's "
        f"{PROPERTY} property and a deploy; this API does not change them",
        {"Allow": "GET"},
    )


class RouterGroupsApi:
    """The router-groups API as a function of a request (the listener calls it per request)."""

    def __init__(self, groups: Sequence[RouterGroup], validator: TokenValidator) -> None:
        self._groups = tuple(groups)
        self._validator = validator

    @property
    def groups(self) -> tuple[RouterGroup, ...]:
        return self._groups

    def __call__(self, request: Request) -> Response:
        response = self._handle(request)
        REQUESTS.labels(request.method, str(response.status)).inc()
        if response.status >= 400:
            log.debug("router groups request refused", extra={
                "method": request.method, "path": request.target.split("?", 1)[0][:200], "status": response.status,
                "error": (response.body or {}).get("message", "") if isinstance(response.body, dict) else "",
            })
        return response

    def _handle(self, request: Request) -> Response:
        target = urllib.parse.urlsplit(request.target)
        path = target.path
        if path == COLLECTION or path == COLLECTION + "/":
            if request.method == "GET":
                return self._authorized(request, READ_SCOPE) or self._list(target.query)
            if request.method == "POST":
                return self._authorized(request, WRITE_SCOPE) or self._create(request.body)
            return _error(
                405, "MethodNotAllowedError", f"{request.method} is not allowed on {COLLECTION}", {"Allow": "GET, POST"}
            )
        if path.startswith(COLLECTION + "/") and "/" not in path[len(COLLECTION) + 1:]:
            guid = urllib.parse.unquote(path[len(COLLECTION) + 1:])
            if request.method == "PUT":
                return self._authorized(request, WRITE_SCOPE) or self._update(guid, request.body)
            if request.method == "DELETE":
                return self._authorized(request, WRITE_SCOPE) or self._delete(guid)
            return _error(405, "MethodNotAllowedError", f"{request.method} is not allowed on a router group (routing-api has "
                          f"no GET of one router group: list {COLLECTION}?name=NAME)", {"Allow": "PUT, DELETE"})
        if path.startswith("/routing/"):
            return _error(404, "ResourceNotFoundError", f"{path[:200]} is not served by the Istio routing tier: only "
                          f"router groups are; TCP routes come from Diego's DesiredLRPs")
        return _error(404, "ResourceNotFoundError", "not found")

    def _authorized(self, request: Request, scope: str) -> Response | None:
        try:
            self._validator.check(request.headers.get("Authorization"), scope)
        except TokenError as error:
            return _error(401, "UnauthorizedError", str(error))
        return None

    def _list(self, query: str) -> Response:
        names = urllib.parse.parse_qs(query, keep_blank_values=True).get("name")
        if not names or names[0] == "":
            return Response(200, [group.to_json() for group in self._groups])
        name = names[0]
        found = [group.to_json() for group in self._groups if group.name == name]
        if not found:
            return _error(404, "ResourceNotFoundError", f"router group '{name}' not found")
        return Response(200, found)

    def _by_guid(self, guid: str) -> RouterGroup | None:
        return next((group for group in self._groups if group.guid == guid), None)

    def _update(self, guid: str, body: bytes) -> Response:
        group = self._by_guid(guid)
        if group is None:
            return _error(404, "ResourceNotFoundError", f"Router Group '{guid[:64]}' does not exist")
        data = _json_object(body)
        if isinstance(data, Response):
            return data
        ports = data.get("reservable_ports", "")
        try:
            wanted = router_group(group.name, group.type, ports, group.guid)
        except RouterGroupError as error:
            return _process_error(str(error))
        if wanted.ports != group.ports:
            return _read_only(f"changing the reservable ports of router group '{group.name}'")
        warning = f"router group '{group.name}' already has these reservable ports; nothing was changed"
        return Response(200, group.to_json(), {"X-Cf-Warnings": urllib.parse.quote(warning)})

    def _create(self, body: bytes) -> Response:
        data = _json_object(body)
        if isinstance(data, Response):
            return data
        try:
            wanted = router_group(data.get("name"), data.get("type"), data.get("reservable_ports"))
        except RouterGroupError as error:
            return _process_error(str(error))
        existing = next((g for g in self._groups if g.name == wanted.name and g.type == wanted.type), None)
        if existing is not None:
            return Response(200, existing.to_json())  # routing-api answers an existing name and type with it
        return _read_only(f"creating router group '{wanted.name}'")

    def _delete(self, guid: str) -> Response:
        group = self._by_guid(guid)
        if group is None:
            return _error(404, "ResourceNotFoundError", f"Router Group '{guid[:64]}' does not exist")
        return _read_only(f"deleting router group '{group.name}'")


def _json_object(body: bytes) -> dict | Response:
    try:
        data = json.loads(body or b"null")
    except (ValueError, RecursionError):
        return _process_error("the body is not JSON")
    if not isinstance(data, dict):
        return _process_error("the body must be a JSON object")
    return data


class RouterGroupsServer:
    """The router-groups API on its HTTPS listener."""

    def __init__(
        self,
        address: str,
        groups: Sequence[RouterGroup],
        validator: TokenValidator,
        *,
        cert: Path,
        key: Path,
        limits: ConnectionLimits = DEFAULT_LIMITS,
    ) -> None:
        self.api = RouterGroupsApi(groups, validator)
        self._listener = HttpsListener(
            "routing-api", address, self.api, cert=cert, key=key,
            body_error=lambda status, message: _error(status, "ProcessRequestError", f"Cannot process request: {message}"),
            internal_error=_error(500, "InternalServerError", "internal error"),
            on_refused=lambda reason: CONNECTIONS_REFUSED.labels(reason).inc(), limits=limits,
        )
        self.port = self._listener.port

    def start(self) -> None:
        self._listener.start()

    def stop(self) -> None:
        self._listener.stop()

    def open_connections(self) -> int:
        return self._listener.open_connections()
