"""Copilot's configuration file (YAML or JSON): one validated object; bad input names the key."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from copilot.istio.builder import GatewaySettings

LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """The configuration is invalid; the message starts with the offending key."""


@dataclass(frozen=True)
class TLSServerConfig:
    cert: Path
    key: Path


@dataclass(frozen=True)
class BBSConfig:
    url: str
    ca_cert: Path
    client_cert: Path
    client_key: Path
    reconcile_interval_seconds: float = 30.0
    max_backoff_seconds: float = 10.0


@dataclass(frozen=True)
class CCConfig:
    """The Cloud Controller API (api.CloudControllerCopilot): mutual TLS, clients signed by client_ca."""

    listen: str
    cert: Path
    key: Path
    client_ca: Path
    bulk_sync_hold_seconds: float = 60.0


@dataclass(frozen=True)
class RegistrarConfig:
    """Where our route_registrar jobs register platform routes: HTTPS with mutual TLS."""

    listen: str
    cert: Path
    key: Path
    client_ca: Path


@dataclass(frozen=True)
class Config:
    bbs: BBSConfig | None
    mcp_listen: str = "127.0.0.1:15030"
    mcp_tls: TLSServerConfig | None = None
    health_listen: str = "127.0.0.1:8787"
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    log_level: str = "info"
    cc: CCConfig | None = None
    registrar: RegistrarConfig | None = None


def load(path: str | Path) -> Config:
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not YAML/JSON: {error}") from None
    return parse(data if data is not None else {})


def parse(data: object) -> Config:
    root = _Section(data, "")
    bbs = None
    if root.has("bbs"):
        section = root.section("bbs")
        bbs = BBSConfig(
            url=section.url("url"),
            ca_cert=section.file("ca_cert"),
            client_cert=section.file("client_cert"),
            client_key=section.file("client_key"),
            reconcile_interval_seconds=section.number("reconcile_interval_seconds", 30.0, minimum=1),
            max_backoff_seconds=section.number("max_backoff_seconds", 10.0, minimum=0.1),
        )
        section.done()
    mcp_tls = None
    mcp = root.section("mcp") if root.has("mcp") else _Section({}, "mcp")
    mcp_listen = mcp.address("listen", "127.0.0.1:15030")
    if mcp.has("tls"):
        tls = mcp.section("tls")
        mcp_tls = TLSServerConfig(tls.file("cert"), tls.file("key"))
        tls.done()
    mcp.done()
    health = root.section("health") if root.has("health") else _Section({}, "health")
    health_listen = health.address("listen", "127.0.0.1:8787")
    health.done()
    gw = root.section("gateway") if root.has("gateway") else _Section({}, "gateway")
    defaults = GatewaySettings()
    gateway = GatewaySettings(
        namespace=gw.string("namespace", defaults.namespace),
        name=gw.string("name", defaults.name),
        selector=gw.string_map("selector", defaults.selector),
        http_port=int(gw.number("http_port", defaults.http_port, minimum=1, maximum=65535, integer=True)),
        upstream_ca_file=gw.string("upstream_ca_file", "") if gw.has("upstream_ca_file") else "",
        bind=_ip(gw, "bind") if gw.has("bind") else "",
    )
    gw.done()
    cc = None
    if root.has("cc"):
        section = root.section("cc")
        cc = CCConfig(
            listen=section.address("listen", "127.0.0.1:9000"),
            cert=section.file("cert"),
            key=section.file("key"),
            client_ca=section.file("client_ca"),
            bulk_sync_hold_seconds=section.number("bulk_sync_hold_seconds", 60.0, minimum=0),
        )
        section.done()
    registrar = None
    if root.has("registrar"):
        section = root.section("registrar")
        registrar = RegistrarConfig(
            listen=section.address("listen", "127.0.0.1:9001"),
            cert=section.file("cert"),
            key=section.file("key"),
            client_ca=section.file("client_ca"),
        )
        section.done()
    log_level = root.string("log_level", "info")
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"log_level: {log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    root.done()
    return Config(bbs, mcp_listen, mcp_tls, health_listen, gateway, log_level, cc, registrar)


def _ip(section: _Section, name: str) -> str:
    value = section.string(name)
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(f"{section.key(name)}: {value!r} is not an IP address") from None
    return value


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

    def _get(self, name: str, default: Any = ..., kind: str = "a value") -> Any:
        self._used.add(name)
        if name not in self._data or self._data[name] is None:
            if default is ...:
                raise ConfigError(f"{self.key(name)}: is required ({kind})")
            return default
        return self._data[name]

    def section(self, name: str) -> _Section:
        return _Section(self._get(name, kind="a mapping"), self.key(name))

    def string(self, name: str, default: Any = ...) -> str:
        value = self._get(name, default, "a string")
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self.key(name)}: must be a non-empty string")
        return value

    def url(self, name: str) -> str:
        value = self.string(name)
        if not value.startswith("https://"):
            raise ConfigError(f"{self.key(name)}: {value!r} must be an https:// URL (BBS requires mutual TLS)")
        return value

    def file(self, name: str) -> Path:
        path = Path(self.string(name))
        if not path.is_file():
            raise ConfigError(f"{self.key(name)}: file {path} does not exist")
        return path

    def address(self, name: str, default: str) -> str:
        value = self.string(name, default)
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(f"{self.key(name)}: {value!r} must be host:port")
        return value

    def number(self, name: str, default: float, *, minimum: float, maximum: float | None = None, integer: bool = False) -> float:
        value = self._get(name, default, "a number")
        if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
            raise ConfigError(f"{self.key(name)}: must be {'an integer' if integer else 'a number'}")
        if value < minimum or (maximum is not None and value > maximum):
            raise ConfigError(f"{self.key(name)}: {value} is out of range")
        return value

    def string_map(self, name: str, default: dict[str, str]) -> dict[str, str]:
        value = self._get(name, default, "a mapping of strings")
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise ConfigError(f"{self.key(name)}: must be a mapping of strings to strings")
        return dict(value)

    def done(self) -> None:
        unknown = sorted(set(self._data) - self._used)
        if unknown:
            raise ConfigError(f"{self.key(unknown[0])}: unknown key")
