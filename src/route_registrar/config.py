"""The registrar's configuration file (JSON, rendered by the istio-route-registrar job); bad input names the key.

    {
      "copilot": {"addresses": ["10.0.1.5", "10.0.2.5"], "port": 9001,
                  "server_name": "copilot.service.cf.internal",
                  "ca_cert": "/path/ca.crt", "client_cert": "/path/client.crt", "client_key": "/path/client.key",
                  "request_timeout_seconds": 5},
      "address": "10.0.16.10",              # the IP registered as the backend (the VM's spec.ip)
      "instance_index": 0,                   # for prepend_instance_index
      "source": "api",                       # the instance group: routes are registered as <source>/<route name>
      "ttl_intervals": 3,                    # a registration expires after this many missed intervals
      "log_level": "info",
      "routes": [{"name": "api", "uris": ["api.sys.example.com"], "port": 9022, "tls_port": 9024,
                  "server_cert_domain_san": "api.sys.example.com", "registration_interval_seconds": 10,
                  "prepend_instance_index": false,
                  "health_check": {"name": "api-health", "script_path": "/path/check", "timeout_seconds": 6}}]
    }
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from daemon_kit.config import ConfigError, Section, default, read

MAX_TTL_SECONDS = 3600  # Copilot's registrar API refuses longer TTLs
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_RE = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*")


@dataclass(frozen=True)
class CopilotTarget:
    """Every Copilot instance the routes are registered with (each keeps its own routing table)."""

    addresses: tuple[str, ...]
    port: int
    server_name: str
    ca_cert: Path
    client_cert: Path
    client_key: Path
    request_timeout_seconds: float = 5.0


@dataclass(frozen=True)
class HealthCheck:
    """A route's health check: the script run before each registration (exit 0: healthy), killed
    after `timeout_seconds`; an unhealthy route is deregistered."""

    name: str
    script_path: str
    timeout_seconds: float


@dataclass(frozen=True)
class Route:
    """One entry of route_registrar.routes, normalised."""

    name: str
    uris: tuple[str, ...]
    port: int
    tls_port: int
    server_cert_domain_san: str
    registration_interval_seconds: float
    prepend_instance_index: bool = False
    health_check: HealthCheck | None = None


@dataclass(frozen=True)
class Config:
    copilot: CopilotTarget
    address: str
    instance_index: int
    source: str
    routes: tuple[Route, ...]
    ttl_intervals: float = 3.0
    log_level: str = "info"


def load(path: str | Path) -> Config:
    """The config file at `path`, read and parsed."""
    return parse(read(path))


def parse(data: object) -> Config:
    """The registrations a mapping (the decoded file) gives; raises ConfigError naming the first bad key."""
    root = Section(data, "")
    copilot = root.section("copilot")
    addresses = copilot.get("addresses", list)
    if not addresses or not all(isinstance(a, str) and a for a in addresses):
        raise ConfigError("copilot.addresses: must be a non-empty list of hosts")
    target = CopilotTarget(
        addresses=tuple(addresses),
        port=copilot.port("port"),
        server_name=copilot.string("server_name"),
        ca_cert=copilot.file("ca_cert"),
        client_cert=copilot.file("client_cert"),
        client_key=copilot.file("client_key"),
        request_timeout_seconds=_seconds(copilot, "request_timeout_seconds", default(CopilotTarget, "request_timeout_seconds")),
    )
    copilot.done()
    address = root.string("address")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ConfigError(f"address: {address!r} is not an IP address (Copilot registers IP backends)") from None
    index = root.get("instance_index", int, 0)
    if isinstance(index, bool) or index < 0:
        raise ConfigError("instance_index: must be a non-negative integer")
    routes_data = root.get("routes", list)
    routes = tuple(_route(item, f"routes[{i}]") for i, item in enumerate(routes_data))
    names = [r.name for r in routes]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate:
        raise ConfigError(f"routes: two routes are named {duplicate!r}")
    config = Config(
        copilot=target,
        address=address,
        instance_index=index,
        source=root.string("source"),
        routes=routes,
        ttl_intervals=_seconds(root, "ttl_intervals", default(Config, "ttl_intervals"), minimum=1.5),
        log_level=root.log_level(),
    )
    root.done()
    return config


def _route(data: object, prefix: str) -> Route:
    section = Section(data, prefix)
    name = section.string("name")
    uris = section.get("uris", list)
    if not uris:
        raise ConfigError(f"{prefix}.uris: must list at least one uri")
    for i, uri in enumerate(uris):
        if not isinstance(uri, str):
            raise ConfigError(f"{prefix}.uris[{i}]: must be a string")
        split_uri(uri, f"{prefix}.uris[{i}]")
    port = section.port("port", 0)
    tls_port = section.port("tls_port", 0)
    if not port and not tls_port:
        raise ConfigError(f"{prefix}: needs port or tls_port")
    san = section.string("server_cert_domain_san", "", empty=True)
    if tls_port and not san:
        raise ConfigError(f"{prefix}.server_cert_domain_san: is required with tls_port")
    interval = _seconds(section, "registration_interval_seconds")
    health_check = None
    if section.has("health_check") and section.get("health_check", object, None) is not None:
        hc = section.section("health_check")
        health_check = HealthCheck(
            name=hc.string("name"),
            script_path=hc.string("script_path"),
            timeout_seconds=_seconds(hc, "timeout_seconds", interval / 2),
        )
        if health_check.timeout_seconds >= interval:
            raise ConfigError(f"{prefix}.health_check.timeout_seconds: must be less than registration_interval_seconds")
        hc.done()
    prepend = section.get("prepend_instance_index", bool, False)
    if prepend and any(uri.strip().startswith("*.") for uri in uris):
        raise ConfigError(f"{prefix}.prepend_instance_index: cannot prefix a wildcard uri with the instance index")
    section.done()
    return Route(name, tuple(uris), port, tls_port, san, interval, prepend, health_check)


def _seconds(section: Section, name: str, default: object = ..., *, minimum: float | None = None) -> float:
    """A number greater than 0 (and at least `minimum`), as a float."""
    return float(section.number(name, default, above=0, minimum=minimum))


def split_uri(uri: str, key: str = "uri") -> tuple[str, str]:
    """`host[/path]` -> (host, "/path" or ""), lower-cased host; raises ConfigError when it is not a route."""
    host, sep, path = uri.strip().partition("/")
    host = host.lower().rstrip(".")
    if len(host) > 253 or not _HOST_RE.fullmatch(host):
        raise ConfigError(f"{key}: {uri!r} is not host[/path] with a valid hostname")
    path = ("/" + path).rstrip("/") if sep else ""
    if any(c in path for c in "?#"):
        raise ConfigError(f"{key}: {uri!r} has a query or fragment")
    return host, path
