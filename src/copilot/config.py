"""Copilot's configuration file (YAML or JSON): one validated object; bad input names the key."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from copilot.istio.builder import TLS_VERSIONS, Certificate, GatewaySettings, OutlierDetection, RouteServiceSettings
from copilot.istio.router_filter import COOKIE_NAME_RE, STICKY_COOKIE
from copilot.istio.shards import DEFAULT_SHARDS, MODES, SHARD_NAME_RE, RouterShard
from copilot.model import InvalidRoute, normalize_hostname, validate_isolation_segment
from copilot.router_groups_api import RouterGroup, RouterGroupError, router_group
from copilot.uaa_token import RSAPublicKey, load_public_keys

LOG_LEVELS = ("debug", "info", "warning", "error")
_CERT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


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
    liveness_check_interval_seconds: float = 5.0
    # A listing withdrawing more than `fraction` of the routed instances (or desired LRPs), and at
    # least `minimum` of them, is held this long (0: never) unless BBS lists its state again.
    withdrawal_hold_seconds: float = 120.0
    withdrawal_hold_fraction: float = 0.5
    withdrawal_hold_minimum: int = 3


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
class ServiceDiscoveryConfig:
    """The `*.apps.internal` lookup API bosh-dns-adapter calls (service-discovery-controller's, see
    service_discovery.py): HTTPS with mutual TLS, clients signed by client_ca."""

    listen: str
    cert: Path
    key: Path
    client_ca: Path


# routing-api's default router group in cf-deployment v58 (the copilot job spec's routing_api.router_groups).
DEFAULT_ROUTER_GROUPS = (router_group("default-tcp", "tcp", "1024-1033"),)


@dataclass(frozen=True)
class RoutingApiConfig:
    """routing-api's router groups for Cloud Controller and the cf CLI (router_groups_api.py): HTTPS,
    requests authorized by UAA tokens signed with one of `uaa_verification_keys` and issued by `uaa_issuer`."""

    cert: Path
    key: Path
    uaa_issuer: str
    uaa_verification_keys: tuple[RSAPublicKey, ...]
    listen: str = "0.0.0.0:3001"
    router_groups: tuple[RouterGroup, ...] = DEFAULT_ROUTER_GROUPS


@dataclass(frozen=True)
class BackendsConfig:
    """Which backend addresses routes may reach. Loopback, link-local and unspecified addresses are
    refused (copilot.model.INTERNAL_NETWORKS) unless one of `allowed_internal_networks` (CIDRs)
    contains them."""

    allowed_internal_networks: tuple[str, ...] = ()


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
    service_discovery: ServiceDiscoveryConfig | None = None
    routing_api: RoutingApiConfig | None = None
    backends: BackendsConfig = field(default_factory=BackendsConfig)


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
            liveness_check_interval_seconds=section.number("liveness_check_interval_seconds", 5.0, minimum=0.1),
            withdrawal_hold_seconds=section.number("withdrawal_hold_seconds", 120.0, minimum=0),
            withdrawal_hold_fraction=section.number("withdrawal_hold_fraction", 0.5, minimum=0, maximum=1),
            withdrawal_hold_minimum=int(section.number("withdrawal_hold_minimum", 3, minimum=1, integer=True)),
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
    certificates = _certificates(gw)
    https_port = int(gw.number("https_port", 443 if certificates else 0, minimum=0, maximum=65535, integer=True))
    if https_port and not certificates:
        raise ConfigError(f"{gw.key('https_port')}: HTTPS needs gateway.certificates")
    http_port = int(gw.number("http_port", defaults.http_port, minimum=1, maximum=65535, integer=True))
    if https_port == http_port:
        raise ConfigError(f"{gw.key('https_port')}: {https_port} is also gateway.http_port")
    certificate_dir = gw.string("certificate_dir", defaults.certificate_dir)
    if not certificate_dir.startswith("/"):
        raise ConfigError(f"{gw.key('certificate_dir')}: must be an absolute path (on the router)")
    tls_min_version = str(gw.string("tls_min_version", defaults.tls_min_version))
    if tls_min_version not in TLS_VERSIONS:
        raise ConfigError(f"{gw.key('tls_min_version')}: {tls_min_version!r} is not one of {', '.join(TLS_VERSIONS)}")
    cookies = gw.string_list("sticky_session_cookies", list(defaults.sticky_session_cookies))
    for cookie in cookies:
        if not COOKIE_NAME_RE.fullmatch(cookie) or cookie == STICKY_COOKIE:
            raise ConfigError(f"{gw.key('sticky_session_cookies')}: {cookie!r} is not a usable cookie name")
    gateway = GatewaySettings(
        namespace=gw.string("namespace", defaults.namespace),
        name=gw.string("name", defaults.name),
        selector=gw.string_map("selector", defaults.selector),
        http_port=http_port,
        upstream_ca_file=gw.string("upstream_ca_file", "") if gw.has("upstream_ca_file") else "",
        instance_identity_ca_file=_absolute(gw, "instance_identity_ca_file"),
        bind=_ip(gw, "bind") if gw.has("bind") else "",
        https_port=https_port,
        certificates=certificates,
        certificate_dir=certificate_dir,
        tls_min_version=tls_min_version,
        tls_cipher_suites=tuple(gw.string_list("tls_cipher_suites", [])),
        enable_http2=gw.boolean("enable_http2", defaults.enable_http2),
        trusted_proxy_hops=int(gw.number("trusted_proxy_hops", defaults.trusted_proxy_hops, minimum=0, maximum=10, integer=True)),
        sticky_session_cookies=tuple(cookies),
        instance_routing=gw.boolean("instance_routing", defaults.instance_routing),
        backend_client_certificate=_certificate_name(gw, "backend_client_certificate"),
        outlier_detection=_outlier_detection(gw.section("outlier_detection") if gw.has("outlier_detection") else None),
        route_services=_route_services(gw, http_port, https_port),
        router_shards=_router_shards(gw),
    )
    gw.done()
    cc = None
    if root.has("cc"):
        section = root.section("cc")
        cc = CCConfig(
            listen=section.address("listen", "0.0.0.0:9001"),  # the copilot job spec's cc.listen_address
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
            listen=section.address("listen", "0.0.0.0:9003"),  # registrar.listen_address
            cert=section.file("cert"),
            key=section.file("key"),
            client_ca=section.file("client_ca"),
        )
        section.done()
    service_discovery = None
    if root.has("service_discovery"):
        section = root.section("service_discovery")
        service_discovery = ServiceDiscoveryConfig(
            listen=section.address("listen", "0.0.0.0:8054"),  # service_discovery.listen_address
            cert=section.file("cert"),
            key=section.file("key"),
            client_ca=section.file("client_ca"),
        )
        section.done()
    backends_section = root.section("backends") if root.has("backends") else _Section({}, "backends")
    backends = BackendsConfig(_networks(backends_section, "allowed_internal_networks"))
    backends_section.done()
    routing_api = _routing_api(root.section("routing_api"), gateway) if root.has("routing_api") else None
    log_level = root.string("log_level", "info")
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"log_level: {log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    root.done()
    return Config(bbs, mcp_listen, mcp_tls, health_listen, gateway, log_level, cc, registrar, routing_api=routing_api,
                  service_discovery=service_discovery, backends=backends)


def _networks(section: _Section, name: str) -> tuple[str, ...]:
    """A list of CIDRs (an address alone is its /32 or /128), normalised."""
    networks = []
    for value in section.string_list(name, []):
        try:
            networks.append(str(ipaddress.ip_network(value)))
        except ValueError as error:
            raise ConfigError(f"{section.key(name)}: {value!r} is not a network (CIDR): {error}") from None
    return tuple(networks)


def _routing_api(section: _Section, gateway: GatewaySettings) -> RoutingApiConfig:
    """routing_api: {listen, cert, key, uaa_issuer, uaa_verification_keys (a PEM file of public keys or
    certificates), router_groups: [{name, type, reservable_ports, guid}]}."""
    keys_file = section.file("uaa_verification_keys")
    try:
        keys = load_public_keys(keys_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ConfigError(f"{section.key('uaa_verification_keys')}: {keys_file}: {error}") from None
    groups = _router_groups(section, gateway) if section.has("router_groups") else DEFAULT_ROUTER_GROUPS
    config = RoutingApiConfig(
        listen=section.address("listen", "0.0.0.0:3001"),  # the copilot job spec's routing_api.listen_address
        cert=section.file("cert"),
        key=section.file("key"),
        uaa_issuer=section.string("uaa_issuer"),
        uaa_verification_keys=keys,
        router_groups=groups,
    )
    section.done()
    return config


def _router_groups(section: _Section, gateway: GatewaySettings) -> tuple[RouterGroup, ...]:
    """Router groups as routing-api validates them, with unique names and guids; TCP groups' ports must not
    overlap (one router fleet serves every group) nor take the Gateway's HTTP(S) ports."""
    groups: list[RouterGroup] = []
    taken: list[tuple[int, int, str]] = []
    for index, entry in enumerate(section.list("router_groups")):
        item = _Section(entry, f"{section.key('router_groups')}[{index}]")
        ports = item._get("reservable_ports", "")
        ports = str(ports) if isinstance(ports, int) and not isinstance(ports, bool) else ports  # YAML: 1024
        try:
            group = router_group(item._get("name", None), item._get("type", None), ports, item._get("guid", None))
        except RouterGroupError as error:
            raise ConfigError(f"{item.key(error.field)}: {str(error).removeprefix(error.field + ': ')}") from None
        item.done()
        for other in groups:
            if other.name == group.name:
                raise ConfigError(f"{item.key('name')}: router group {group.name!r} is given twice")
            if other.guid == group.guid:
                raise ConfigError(f"{item.key('guid')}: {group.guid!r} is also the guid of router group {other.name!r}")
        for first, last in group.ports:
            for port in (gateway.http_port, gateway.https_port):
                if port and first <= port <= last:
                    raise ConfigError(f"{item.key('reservable_ports')}: port {port} is the routers' HTTP(S) port")
            for other_first, other_last, other in taken:
                if first <= other_last and other_first <= last:
                    raise ConfigError(
                        f"{item.key('reservable_ports')}: {first}-{last} overlaps router group {other!r}"
                        " (one router fleet serves every group)"
                    )
        taken += [(first, last, group.name) for first, last in group.ports]
        groups.append(group)
    return tuple(groups)


def _route_services(gw: _Section, http_port: int, https_port: int) -> RouteServiceSettings | None:
    """gateway.route_services: {proxy_port, gateway_port}, the routers' loopback ports of the
    route-service proxy and of the Gateway server it hands verified requests back to. Absent: off."""
    if not gw.has("route_services"):
        return None
    section = gw.section("route_services")
    defaults = RouteServiceSettings()
    proxy_port = int(section.number("proxy_port", defaults.proxy_port, minimum=1, maximum=65535, integer=True))
    gateway_port = int(section.number("gateway_port", defaults.gateway_port, minimum=1, maximum=65535, integer=True))
    if gateway_port == proxy_port:
        raise ConfigError(f"{section.key('gateway_port')}: {gateway_port} is also proxy_port")
    for name, port in (("proxy_port", proxy_port), ("gateway_port", gateway_port)):
        if port in (http_port, https_port):
            raise ConfigError(f"{section.key(name)}: {port} is a port of the router's Gateway")
    internal_lookup = section.boolean("internal_lookup", defaults.internal_lookup)
    allowlist = []
    for entry in section.string_list("internal_lookup_allowlist", []):
        try:  # an FQDN, or *.domain (gorouter's route_services_internal_lookup_allowlist)
            allowlist.append(normalize_hostname(entry, section.key("internal_lookup_allowlist")))
        except InvalidRoute as error:
            raise ConfigError(str(error)) from None
    section.done()
    return RouteServiceSettings(proxy_port, gateway_port, internal_lookup, tuple(allowlist))


def _router_shards(gw: _Section) -> tuple[RouterShard, ...]:
    """gateway.router_shards: [{name, routing_table_sharding_mode, isolation_segments, bind}], gorouter's
    sharding per group of routers (see istio/shards.py). Absent: the one shard `all`."""
    if not gw.has("router_shards"):
        return DEFAULT_SHARDS
    shards: list[RouterShard] = []
    for index, entry in enumerate(gw.list("router_shards")):
        item = _Section(entry, f"{gw.key('router_shards')}[{index}]")
        name = item.string("name")
        if not SHARD_NAME_RE.fullmatch(name):
            raise ConfigError(
                f"{item.key('name')}: {name!r} must be 1-40 letters, digits, '-', '_' or '.' (a label value),"
                " starting and ending with a letter or digit"
            )
        mode = item.string("routing_table_sharding_mode", "all")
        if mode not in MODES:
            raise ConfigError(f"{item.key('routing_table_sharding_mode')}: {mode!r} is not one of {', '.join(MODES)}")
        segments = item.string_list("isolation_segments", [])
        for segment in segments:
            try:
                validate_isolation_segment(segment, item.key("isolation_segments"))
            except InvalidRoute as error:
                raise ConfigError(str(error)) from None
        if len(set(segments)) != len(segments):
            raise ConfigError(f"{item.key('isolation_segments')}: names a segment twice")
        if mode == "all" and segments:
            raise ConfigError(f"{item.key('isolation_segments')}: mode all routes every segment; list none")
        if mode == "segments" and not segments:
            raise ConfigError(f"{item.key('isolation_segments')}: mode segments needs at least one segment")
        bind = _ip(item, "bind") if item.has("bind") else ""
        item.done()
        for other in shards:
            if other.name == name:
                raise ConfigError(f"{item.key('name')}: router shard {name!r} is given twice")
        shards.append(RouterShard(name, mode, tuple(segments), bind))
    if not shards:
        raise ConfigError(f"{gw.key('router_shards')}: needs at least one shard")
    return tuple(shards)


def _outlier_detection(section: _Section | None) -> OutlierDetection:
    """gateway.outlier_detection: {consecutive_failures (0: off), base_ejection_seconds,
    max_ejection_percent (1..100), min_health_percent (0..100)}; see builder.OutlierDetection."""
    defaults = OutlierDetection()
    if section is None:
        return defaults
    value = OutlierDetection(
        consecutive_failures=int(
            section.number("consecutive_failures", defaults.consecutive_failures, minimum=0, maximum=1000, integer=True)
        ),
        base_ejection_seconds=section.number("base_ejection_seconds", defaults.base_ejection_seconds, minimum=0.001),
        max_ejection_percent=int(
            section.number("max_ejection_percent", defaults.max_ejection_percent, minimum=1, maximum=100, integer=True)
        ),
        min_health_percent=int(
            section.number("min_health_percent", defaults.min_health_percent, minimum=0, maximum=100, integer=True)
        ),
    )
    section.done()
    return value


def _certificates(gw: _Section) -> tuple[Certificate, ...]:
    """gateway.certificates: [{name, hosts}]; names are files (<certificate_dir>/<name>.crt/.key) and SDS
    names on the router, hosts the SNI names each one serves (an exact name wins over a wildcard)."""
    raw = gw.list("certificates")
    certificates: list[Certificate] = []
    names: set[str] = set()
    hosts_seen: set[str] = set()
    for index, entry in enumerate(raw):
        section = _Section(entry, f"{gw.key('certificates')}[{index}]")
        name = section.string("name")
        if not _CERT_NAME_RE.fullmatch(name):
            raise ConfigError(f"{section.key('name')}: {name!r} must be letters, digits, '.', '_' or '-'")
        if name in names:
            raise ConfigError(f"{section.key('name')}: {name!r} is given twice")
        names.add(name)
        hosts = []
        for host in section.string_list("hosts"):
            try:
                host = normalize_hostname(host, section.key("hosts"))
            except InvalidRoute as error:
                raise ConfigError(str(error)) from None
            if host in hosts_seen:
                raise ConfigError(f"{section.key('hosts')}: {host!r} is served by two certificates")
            hosts_seen.add(host)
            hosts.append(host)
        if not hosts:
            raise ConfigError(f"{section.key('hosts')}: needs at least one SNI name")
        section.done()
        certificates.append(Certificate(name, tuple(hosts)))
    return tuple(certificates)


def _certificate_name(section: _Section, name: str) -> str:
    """An optional name of a certificate the routers hold in gateway.certificate_dir."""
    if not section.has(name):
        return ""
    value = section.string(name)
    if not _CERT_NAME_RE.fullmatch(value):
        raise ConfigError(f"{section.key(name)}: {value!r} is not a certificate name (letters, digits, . _ -)")
    return value


def _absolute(section: _Section, name: str) -> str:
    """An optional absolute path on the router (not checked here: the file lives on the router VMs)."""
    if not section.has(name):
        return ""
    value = section.string(name)
    if not value.startswith("/"):
        raise ConfigError(f"{section.key(name)}: {value!r} must be an absolute path (on the router)")
    return value


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

    def list(self, name: str) -> list:
        value = self._get(name, [], "a list")
        if not isinstance(value, list):
            raise ConfigError(f"{self.key(name)}: must be a list")
        return value

    def string_list(self, name: str, default: Any = ...) -> list[str]:
        value = self._get(name, default, "a list of strings")
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{self.key(name)}: must be a list of non-empty strings")
        return list(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self._get(name, default, "true or false")
        if not isinstance(value, bool):
            raise ConfigError(f"{self.key(name)}: must be true or false")
        return value

    def done(self) -> None:
        unknown = sorted(set(self._data) - self._used)
        if unknown:
            raise ConfigError(f"{self.key(unknown[0])}: unknown key")
