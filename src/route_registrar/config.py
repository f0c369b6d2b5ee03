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
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_TTL_SECONDS = 3600  # Copilot's registrar API refuses longer TTLs
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_RE = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*")


class ConfigError(ValueError):
    """The configuration is invalid; the message starts with the offending key."""


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
    try:
        data = json.loads(Path(path).read_text())
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"config file {path} is not JSON: {error}") from None
    return parse(data)


def parse(data: object) -> Config:
    root = _Section(data, "")
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
        request_timeout_seconds=copilot.number("request_timeout_seconds", 5.0),
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
        ttl_intervals=root.number("ttl_intervals", 3.0, minimum=1.5),
        log_level=root.string("log_level", "info"),
    )
    if config.log_level not in LOG_LEVELS:
        raise ConfigError(f"log_level: {config.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    root.done()
    return config


def _route(data: object, prefix: str) -> Route:
    section = _Section(data, prefix)
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
    san = section.string("server_cert_domain_san", "") if section.has("server_cert_domain_san") else ""
    if tls_port and not san:
        raise ConfigError(f"{prefix}.server_cert_domain_san: is required with tls_port")
    interval = section.number("registration_interval_seconds")
    health_check = None
    if section.has("health_check") and section.get("health_check", object, None) is not None:
        hc = section.section("health_check")
        health_check = HealthCheck(
            name=hc.string("name"),
            script_path=hc.string("script_path"),
            timeout_seconds=hc.number("timeout_seconds", interval / 2),
        )
        if health_check.timeout_seconds >= interval:
            raise ConfigError(f"{prefix}.health_check.timeout_seconds: must be less than registration_interval_seconds")
        hc.done()
    prepend = section.get("prepend_instance_index", bool, False)
    if prepend and any(uri.strip().startswith("*.") for uri in uris):
        raise ConfigError(f"{prefix}.prepend_instance_index: cannot prefix a wildcard uri with the instance index")
    section.done()
    return Route(name, tuple(uris), port, tls_port, san, interval, prepend, health_check)


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


class _Section:
    """A mapping being read; remembers which keys were used so unknown keys are reported."""

    def __init__(self, data: object, prefix: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{prefix or 'config'}: must be a mapping")
        self._data: dict[str, Any] = data
        self._prefix = prefix
        self._used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self._prefix}.{name}" if self._prefix else name

    def has(self, name: str) -> bool:
        return name in self._data

    def get(self, name: str, kind: type, default: Any = ...) -> Any:
        self._used.add(name)
        if name not in self._data or self._data[name] is None:
            if default is ...:
                raise ConfigError(f"{self.key(name)}: is required")
            return default
        value = self._data[name]
        if kind is not object and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            raise ConfigError(f"{self.key(name)}: must be a {kind.__name__}")
        return value

    def section(self, name: str) -> _Section:
        return _Section(self.get(name, dict), self.key(name))

    def string(self, name: str, default: Any = ...) -> str:
        value = self.get(name, str, default)
        if not value and default is ...:
            raise ConfigError(f"{self.key(name)}: must be a non-empty string")
        return value

    def number(self, name: str, default: Any = ..., *, minimum: float = 0.0) -> float:
        """A number greater than 0 and at least `minimum`."""
        value = self.get(name, object, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0 or value < minimum:
            least = f" and at least {minimum:g}" if minimum else ""
            raise ConfigError(f"{self.key(name)}: must be a number greater than 0{least}")
        return float(value)

    def port(self, name: str, default: Any = ...) -> int:
        value = self.get(name, int, default)
        if not 0 <= value < 65536 or (default is ... and value == 0):
            raise ConfigError(f"{self.key(name)}: {value} is not a port number")
        return value

    def file(self, name: str) -> Path:
        path = Path(self.string(name))
        if not path.is_file():
            raise ConfigError(f"{self.key(name)}: file {path} does not exist")
        return path

    def done(self) -> None:
        unknown = sorted(set(self._data) - self._used)
        if unknown:
            raise ConfigError(f"{self.key(unknown[0])}: unknown key")
