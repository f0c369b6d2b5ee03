"""Copilot's configuration file (YAML or JSON): `load` reads and decodes it, `parse` turns the mapping
into the settings objects of copilot.settings, validating every key with daemon_kit.config's strict
reader (a bad or unknown key is named in the ConfigError). Defaults live on the settings types, not
here. Files the config names are checked to exist, and the UAA verification keys decoded, while
parsing, so `copilot --check` catches them."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import yaml

from copilot.istio.router_filter import COOKIE_NAME_RE, STICKY_COOKIE
from copilot.istio.shards import DEFAULT_SHARDS, MODES, SHARD_NAME_RE, RouterShard
from copilot.model import InvalidRoute, normalize_hostname, validate_isolation_segment
from copilot.router_groups_api import RouterGroup, RouterGroupError, router_group
from copilot.settings import (
    DEFAULT_ROUTER_GROUPS,
    TLS_VERSIONS,
    BackendsConfig,
    BBSConfig,
    CCConfig,
    Certificate,
    Config,
    GatewaySettings,
    MutualTLSServerConfig,
    OutlierDetection,
    RegistrarConfig,
    RouteServiceSettings,
    RoutingApiConfig,
    ServiceDiscoveryConfig,
    TLSServerConfig,
)
from copilot.uaa_token import load_public_keys
from daemon_kit.config import ConfigError, Section, default, read

_CERT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def load(path: str | Path) -> Config:
    """The config file at `path` (YAML, or JSON, its subset), read and parsed; an empty file is the defaults."""
    data = read(path, yaml.safe_load, "YAML/JSON", (yaml.YAMLError,))
    return parse(data if data is not None else {})


def parse(data: object) -> Config:
    """The settings a mapping (the decoded file) gives; raises ConfigError naming the first bad key."""
    root = Section(data, "")
    bbs = _bbs(root.section("bbs")) if root.has("bbs") else None
    mcp = root.optional_section("mcp")
    mcp_listen = mcp.address("listen", default(Config, "mcp_listen"))
    mcp_tls = None
    if mcp.has("tls"):
        tls = mcp.section("tls")
        mcp_tls = TLSServerConfig(cert=tls.file("cert"), key=tls.file("key"))
        tls.done()
    service_removal_delay = mcp.number(
        "service_removal_delay_seconds", default(Config, "service_removal_delay"), minimum=0, maximum=3600
    )
    mcp.done()
    health = root.optional_section("health")
    health_listen = health.address("listen", default(Config, "health_listen"))
    health.done()
    gw = root.optional_section("gateway")
    gateway = _gateway(gw)
    gw.done()
    cc = _mutual_tls_server(root, "cc", CCConfig, "bulk_sync_hold_seconds")
    registrar = _mutual_tls_server(root, "registrar", RegistrarConfig)
    service_discovery = _mutual_tls_server(root, "service_discovery", ServiceDiscoveryConfig)
    backends_section = root.optional_section("backends")
    backends = BackendsConfig(_networks(backends_section, "allowed_internal_networks"))
    backends_section.done()
    routing_api = _routing_api(root.section("routing_api"), gateway) if root.has("routing_api") else None
    log_level = root.log_level()
    root.done()
    return Config(
        bbs=bbs,
        mcp_listen=mcp_listen,
        mcp_tls=mcp_tls,
        service_removal_delay=service_removal_delay,
        health_listen=health_listen,
        gateway=gateway,
        log_level=log_level,
        cc=cc,
        registrar=registrar,
        service_discovery=service_discovery,
        routing_api=routing_api,
        backends=backends,
    )


def _bbs(section: Section) -> BBSConfig:
    url = section.string("url")
    if not url.startswith("https://"):
        raise ConfigError(f"{section.key('url')}: {url!r} must be an https:// URL (BBS requires mutual TLS)")

    def number(name: str, **bounds: Any) -> Any:
        return section.number(name, default(BBSConfig, name), **bounds)

    bbs = BBSConfig(
        url=url,
        ca_cert=section.file("ca_cert"),
        client_cert=section.file("client_cert"),
        client_key=section.file("client_key"),
        reconcile_interval_seconds=number("reconcile_interval_seconds", minimum=1),
        max_backoff_seconds=number("max_backoff_seconds", minimum=0.1),
        liveness_check_interval_seconds=number("liveness_check_interval_seconds", minimum=0.1),
        withdrawal_hold_seconds=number("withdrawal_hold_seconds", minimum=0),
        withdrawal_hold_fraction=number("withdrawal_hold_fraction", minimum=0, maximum=1),
        withdrawal_hold_minimum=number("withdrawal_hold_minimum", minimum=1, integer=True),
    )
    section.done()
    return bbs


def _mutual_tls_server(root: Section, name: str, kind: type[MutualTLSServerConfig], *seconds: str) -> Any:
    """An optional HTTPS API section {listen, cert, key, client_ca} (mutual TLS), with the durations
    `seconds` (numbers of at least 0) its kind adds."""
    if not root.has(name):
        return None
    section = root.section(name)
    value = kind(
        listen=section.address("listen", default(kind, "listen")),
        cert=section.file("cert"),
        key=section.file("key"),
        client_ca=section.file("client_ca"),
        **{option: section.number(option, default(kind, option), minimum=0) for option in seconds},
    )
    section.done()
    return value


def _gateway(gw: Section) -> GatewaySettings:
    """The `gateway` section: where the routers' Gateway lives, its ports, TLS and routing behaviour."""
    defaults = GatewaySettings()
    certificates = _certificates(gw)
    https_port = gw.number("https_port", 443 if certificates else 0, minimum=0, maximum=65535, integer=True)
    if https_port and not certificates:
        raise ConfigError(f"{gw.key('https_port')}: HTTPS needs gateway.certificates")
    http_port = gw.number("http_port", defaults.http_port, minimum=1, maximum=65535, integer=True)
    if https_port == http_port:
        raise ConfigError(f"{gw.key('https_port')}: {https_port} is also gateway.http_port")
    certificate_dir = gw.string("certificate_dir", defaults.certificate_dir)
    if not certificate_dir.startswith("/"):
        raise ConfigError(f"{gw.key('certificate_dir')}: must be an absolute path (on the router)")
    tls_min_version = gw.one_of("tls_min_version", tuple(TLS_VERSIONS), defaults.tls_min_version)
    cookies = gw.string_list("sticky_session_cookies", list(defaults.sticky_session_cookies))
    for cookie in cookies:
        if not COOKIE_NAME_RE.fullmatch(cookie) or cookie == STICKY_COOKIE:
            raise ConfigError(f"{gw.key('sticky_session_cookies')}: {cookie!r} is not a usable cookie name")
    return GatewaySettings(
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
        trusted_proxy_hops=gw.number("trusted_proxy_hops", defaults.trusted_proxy_hops, minimum=0, maximum=10, integer=True),
        sticky_session_cookies=tuple(cookies),
        instance_routing=gw.boolean("instance_routing", defaults.instance_routing),
        backend_client_certificate=_certificate_name(gw, "backend_client_certificate"),
        outlier_detection=_outlier_detection(gw.section("outlier_detection") if gw.has("outlier_detection") else None),
        route_services=_route_services(gw, http_port, https_port),
        router_shards=_router_shards(gw),
    )


def _networks(section: Section, name: str) -> tuple[str, ...]:
    """A list of CIDRs (an address alone is its /32 or /128), normalised."""
    networks = []
    for value in section.string_list(name, []):
        try:
            networks.append(str(ipaddress.ip_network(value)))
        except ValueError as error:
            raise ConfigError(f"{section.key(name)}: {value!r} is not a network (CIDR): {error}") from None
    return tuple(networks)


def _routing_api(section: Section, gateway: GatewaySettings) -> RoutingApiConfig:
    """routing_api: {listen, cert, key, uaa_issuer, uaa_verification_keys (a PEM file of public keys or
    certificates), router_groups: [{name, type, reservable_ports, guid}]}."""
    keys_file = section.file("uaa_verification_keys")
    try:
        keys = load_public_keys(keys_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ConfigError(f"{section.key('uaa_verification_keys')}: {keys_file}: {error}") from None
    groups = _router_groups(section, gateway) if section.has("router_groups") else DEFAULT_ROUTER_GROUPS
    config = RoutingApiConfig(
        listen=section.address("listen", default(RoutingApiConfig, "listen")),
        cert=section.file("cert"),
        key=section.file("key"),
        uaa_issuer=section.string("uaa_issuer"),
        uaa_verification_keys=keys,
        router_groups=groups,
    )
    section.done()
    return config


def _router_groups(section: Section, gateway: GatewaySettings) -> tuple[RouterGroup, ...]:
    """Router groups as routing-api validates them, with unique names and guids; TCP groups' ports must not
    overlap (one router fleet serves every group) nor take the Gateway's HTTP(S) ports."""
    groups: list[RouterGroup] = []
    taken: list[tuple[int, int, str]] = []
    for index, entry in enumerate(section.list("router_groups")):
        item = Section(entry, f"{section.key('router_groups')}[{index}]")
        ports = item.get("reservable_ports", default="")
        ports = str(ports) if isinstance(ports, int) and not isinstance(ports, bool) else ports  # YAML: 1024
        try:
            name, kind, guid = (item.get(key, default=None) for key in ("name", "type", "guid"))
            group = router_group(name, kind, ports, guid)
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


def _route_services(gw: Section, http_port: int, https_port: int) -> RouteServiceSettings | None:
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


def _router_shards(gw: Section) -> tuple[RouterShard, ...]:
    """gateway.router_shards: [{name, routing_table_sharding_mode, isolation_segments, bind}], gorouter's
    sharding per group of routers (see istio/shards.py). Absent: the one shard `all`."""
    if not gw.has("router_shards"):
        return DEFAULT_SHARDS
    shards: list[RouterShard] = []
    for index, entry in enumerate(gw.list("router_shards")):
        item = Section(entry, f"{gw.key('router_shards')}[{index}]")
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


def _outlier_detection(section: Section | None) -> OutlierDetection:
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


def _certificates(gw: Section) -> tuple[Certificate, ...]:
    """gateway.certificates: [{name, hosts}]; names are files (<certificate_dir>/<name>.crt/.key) and SDS
    names on the router, hosts the SNI names each one serves (an exact name wins over a wildcard)."""
    raw = gw.list("certificates")
    certificates: list[Certificate] = []
    names: set[str] = set()
    hosts_seen: set[str] = set()
    for index, entry in enumerate(raw):
        section = Section(entry, f"{gw.key('certificates')}[{index}]")
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


def _certificate_name(section: Section, name: str) -> str:
    """An optional name of a certificate the routers hold in gateway.certificate_dir."""
    if not section.has(name):
        return ""
    value = section.string(name)
    if not _CERT_NAME_RE.fullmatch(value):
        raise ConfigError(f"{section.key(name)}: {value!r} is not a certificate name (letters, digits, . _ -)")
    return value


def _absolute(section: Section, name: str) -> str:
    """An optional absolute path on the router (not checked here: the file lives on the router VMs)."""
    if not section.has(name):
        return ""
    value = section.string(name)
    if not value.startswith("/"):
        raise ConfigError(f"{section.key(name)}: {value!r} must be an absolute path (on the router)")
    return value


def _ip(section: Section, name: str) -> str:
    value = section.string(name)
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(f"{section.key(name)}: {value!r} is not an IP address") from None
    return value
